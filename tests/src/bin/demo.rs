//! `cargo xtask demo`: ampguard doing its job, in a lab of network namespaces.
//!
//! A victim (203.0.113.10) behind the edge is hit by a memcached reflection
//! flood while its DNS answers and ordinary clients keep arriving. A FastNetMon
//! alert (its exact notify-script call) bans the attack; the flood stops at the
//! edge, the legitimate traffic does not; the unban restores everything.
//! Everything runs inside namespaces the demo creates and removes.

use std::{net::SocketAddr, time::Duration};

use ampguard_tests::{
    daemon::Daemon,
    lab::{send_udp, send_udp_payload, Lab, UdpSink},
    require_root,
};

const ATTACK: (&str, usize, usize) = ("198.51.100.7:11211", 3000, 1200); // memcached replies, 1,200 bytes
const DNS: (&str, usize, usize) = ("198.51.100.53:53", 200, 120); // the victim's resolver answering
const CLIENT: (&str, usize, usize) = ("192.0.2.10:40000", 500, 300); // an ordinary client

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Send the three flows to the victim and print what arrived.
fn traffic(lab: &Lab, title: &str) -> anyhow::Result<()> {
    println!("\n--- {title}");
    println!("    {:<34} {:>6} {:>9}", "flow to 203.0.113.10", "sent", "arrived");
    for (what, (src, n, size), port) in [
        ("memcached flood (sport 11211)", ATTACK, 41001),
        ("DNS answers (sport 53)", DNS, 41002),
        ("ordinary client (sport 40000)", CLIENT, 41003),
    ] {
        let dst = sa(&format!("203.0.113.10:{port}"));
        let sink = UdpSink::bind(&lab.edge, dst)?;
        let sent = if src.ends_with(":53") {
            send_udp_payload(&lab.wan, sa(src), dst, n, &[0x12u8; 120][..size.min(120)])?
        } else {
            send_udp(&lab.wan, sa(src), dst, n, size)?
        };
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

    traffic(&lab, "with the policy: the flood dies at the edge, DNS is rate-limited (2,000 pps), clients pass")?;
    show(&d, &["policy", "show", "p-1"], None)?;

    println!("\n--- the attack is over: FastNetMon unbans");
    show(&d, &["alert", "fastnetmon", "203.0.113.10", "incoming", "3209", "unban"], None)?;
    traffic(&lab, "after the unban: everything passes again")?;

    let metrics = d.call("GET", "/v1/status", None)?.1;
    println!("\nunmatched traffic the XDP program saw, by reason: {}", metrics["unmatched_packets"]);
    println!("\ndone; the lab namespaces and pins are removed on exit.");
    Ok(())
}
