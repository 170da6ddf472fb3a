//! `cargo xtask demo`: ampguard doing its job, in a lab of network namespaces.
//!
//! A victim (203.0.113.10) behind the edge is hit by memcached, DNS ANY and NTP
//! monlist reflection floods while its own DNS answers, NTP replies and
//! ordinary clients keep arriving. A FastNetMon alert (its exact notify-script
//! call) bans the attack; the floods stop at the edge, the legitimate traffic
//! does not (DNS and NTP are told apart by their reflection signatures); the
//! unban restores everything.
//! Everything runs inside namespaces the demo creates and removes.

use std::{net::SocketAddr, time::Duration};

use ampguard_test_support::payloads;
use ampguard_tests::{
    daemon::Daemon,
    lab::{send_udp_payload, Lab, UdpSink},
    require_root,
};

/// (what, source, count, payload): two floods and three legitimate flows.
fn flows() -> Vec<(&'static str, &'static str, usize, Vec<u8>)> {
    vec![
        ("memcached flood (STAT replies)", "198.51.100.7:11211", 3000, payloads::memcached_stat_reply()),
        ("DNS ANY flood (1,100 B answers)", "198.51.100.53:53", 2000, payloads::dns_any_answer()),
        ("NTP monlist flood (440 B)", "198.51.100.123:123", 1000, payloads::ntp_monlist_reply()),
        ("DNS answers (small A records)", "198.51.100.53:53", 200, payloads::dns_a_answer()),
        ("NTP server replies (mode 4)", "198.51.100.123:123", 50, payloads::ntp_mode4_reply()),
        ("ordinary client (sport 40000)", "192.0.2.10:40000", 500, vec![0x42; 300]),
    ]
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Send every flow to the victim and print what arrived.
fn traffic(lab: &Lab, title: &str) -> anyhow::Result<()> {
    println!("\n--- {title}");
    println!("    {:<34} {:>6} {:>9}", "flow to 203.0.113.10", "sent", "arrived");
    for (i, (what, src, n, payload)) in flows().into_iter().enumerate() {
        let dst = sa(&format!("203.0.113.10:{}", 41001 + i));
        let sink = UdpSink::bind(&lab.edge, dst)?;
        let sent = send_udp_payload(&lab.wan, sa(src), dst, n, &payload)?;
        let got = sink.drain(Duration::from_millis(300), Duration::from_secs(5));
        println!("    {what:<34} {sent:>6} {got:>9}");
    }
    Ok(())
}

fn show(d: &Daemon, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    println!("\n$ ampguard {}", args.join(" "));
    let out = d.cli(args, stdin)?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "ampguard {} failed", args.join(" "));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    require_root();
    println!("ampguard demo: a lab of two network namespaces joined by a veth pair");
    println!("  wan  (reflectors 198.51.100.0/24, client 192.0.2.10) --wan0==edge0--> edge (victim 203.0.113.10)");
    println!("  ampguard runs in the edge namespace with its XDP program on edge0.");
    let lab = Lab::new("demo")?;
    let d = Daemon::start(&lab, "")?;
    show(&d, &["status"], None)?;

    traffic(&lab, "under attack, no policy yet: everything reaches the victim")?;

    println!("\n--- FastNetMon detects the flood and calls its notify script (ampguard alert fastnetmon):");
    let details = include_str!("../../../xdp-user/tests/fixtures/fastnetmon/attack_details-stdin.txt");
    show(&d, &["alert", "fastnetmon", "203.0.113.10", "incoming", "3209", "attack_details"], Some(details))?;
    show(&d, &["policy", "list"], None)?;

    traffic(&lab, "with the default profile: memcached dropped, DNS and NTP replies dropped by their reflection signature; the victim's own DNS and NTP answers and its clients pass")?;
    show(&d, &["policy", "show", "p-1"], None)?;

    println!("\n--- the attack is over: FastNetMon unbans");
    show(&d, &["alert", "fastnetmon", "203.0.113.10", "incoming", "3209", "unban"], None)?;
    traffic(&lab, "after the unban: everything passes again")?;

    let metrics = d.call("GET", "/v1/status", None)?.1;
    println!("\nunmatched traffic the XDP program saw, by reason: {}", metrics["unmatched_packets"]);
    println!("\ndone; the lab namespaces and pins are removed on exit.");
    Ok(())
}
