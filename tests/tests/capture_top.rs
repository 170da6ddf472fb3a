//! Packet samples and the live view: `ampguard capture` writes a pcapng of
//! the attack whose per-packet comments (verdict, vector, policy, victim)
//! tshark prints, or with `--format pcap` a classic pcap that tcpdump reads;
//! `ampguard top` shows the victim and its dropped rate while the attack flows.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ampguard_tests::{
    daemon::Daemon,
    lab::{sa, send_udp, Lab},
    require_root,
};

/// Run `f` while memcached attack traffic flows to 203.0.113.10 (bounded: 20 s).
fn under_attack<T>(lab: &Lab, f: impl FnOnce() -> T) -> T {
    under_attack_of(lab, &["203.0.113.10:40001"], f)
}

/// Run `f` while memcached attack traffic flows to each of `victims` (bounded: 20 s).
fn under_attack_of<T>(lab: &Lab, victims: &[&str], f: impl FnOnce() -> T) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let t = Instant::now();
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(20) {
                for v in victims {
                    send_udp(&lab.wan, sa("198.51.100.7:11211"), sa(v), 20, 400).unwrap();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        out
    })
}

#[test]
fn capture_writes_a_pcapng_whose_comments_tshark_shows_verdict_vector_policy_and_victim() {
    require_root();
    let lab = Lab::new("capng").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    let (s, dropped) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap();
    assert_eq!(s, 201);
    let (s, monitored) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.20", "mode": "monitor"}"#)).unwrap();
    assert_eq!(s, 201);
    let file = d.dir.join("attack.pcapng");
    let out = under_attack_of(&lab, &["203.0.113.10:40001", "203.0.113.20:40002"], || {
        d.cli(&["capture", "--out", file.to_str().unwrap(), "--count", "60", "--victim", "203.0.113.0/24", "--seconds", "15"], None)
            .unwrap()
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote 60 packets"), "{}", String::from_utf8_lossy(&out.stdout));
    let ts = std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&file)
        .args(["-T", "fields", "-E", "separator=|", "-e", "frame.comment", "-e", "ip.dst", "-e", "udp.srcport", "-e", "frame.time_epoch"])
        .output()
        .expect("tshark (cargo xtask setup installs it)");
    assert!(ts.status.success(), "tshark -r failed: {}", String::from_utf8_lossy(&ts.stderr));
    let text = String::from_utf8_lossy(&ts.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 60, "{text}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let (mut to_dropped, mut to_monitored) = (0, 0);
    for l in &lines {
        let f: Vec<&str> = l.split('|').collect();
        assert_eq!(f.len(), 4, "{l}");
        let (comment, dst, sport) = (f[0], f[1], f[2]);
        assert_eq!(sport, "11211", "{l}");
        // Nanosecond timestamps read as such: the packet is from the last minute.
        let t: f64 = f[3].parse().unwrap();
        assert!((now - 60.0..=now + 1.0).contains(&t), "time {t} vs now {now}: {l}");
        let expected = match dst {
            "203.0.113.10" => {
                to_dropped += 1;
                format!("verdict=dropped vector=memcached policy={} victim=203.0.113.10/32", dropped["id"].as_str().unwrap())
            }
            "203.0.113.20" => {
                to_monitored += 1;
                format!("verdict=monitored vector=memcached policy={} victim=203.0.113.20/32", monitored["id"].as_str().unwrap())
            }
            other => panic!("a packet to {other}: {l}"),
        };
        assert_eq!(comment, expected, "{l}");
    }
    assert!(to_dropped > 0 && to_monitored > 0, "both victims sampled: {to_dropped} / {to_monitored}\n{text}");
}

#[test]
fn capture_format_pcap_writes_a_classic_pcap_that_tcpdump_reads() {
    require_root();
    let lab = Lab::new("cap").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    let pcap = d.dir.join("attack.pcap");
    let out = under_attack(&lab, || {
        d.cli(
            &[
                "capture",
                "--format",
                "pcap",
                "--out",
                pcap.to_str().unwrap(),
                "--count",
                "30",
                "--victim",
                "203.0.113.0/24",
                "--seconds",
                "15",
            ],
            None,
        )
        .unwrap()
    });
    assert_eq!(&std::fs::read(&pcap).unwrap()[..4], &0xa1b2c3d4u32.to_le_bytes(), "classic pcap magic");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote 30 packets"), "{}", String::from_utf8_lossy(&out.stdout));
    let td = std::process::Command::new("tcpdump").args(["-nn", "-r"]).arg(&pcap).output().expect("tcpdump");
    assert!(td.status.success(), "tcpdump -r failed: {}", String::from_utf8_lossy(&td.stderr));
    let text = String::from_utf8_lossy(&td.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 30, "{text}");
    assert!(lines.iter().all(|l| l.contains("198.51.100.7.11211 > 203.0.113.10.40001: UDP")), "{text}");

    // Outside the victim filter: nothing is captured (bounded by --seconds).
    let other = d.dir.join("other.pcap");
    let out = under_attack(&lab, || {
        d.cli(&["capture", "--out", other.to_str().unwrap(), "--count", "5", "--victim", "192.0.2.0/24", "--seconds", "2"], None).unwrap()
    });
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote 0 packets"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn top_shows_the_victim_under_attack() {
    require_root();
    let lab = Lab::new("top").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    let out = under_attack(&lab, || d.cli(&["top", "--iterations", "2", "--interval", "1"], None).unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row = text.lines().rev().find(|l| l.starts_with("203.0.113.10/32")).unwrap_or_else(|| panic!("no victim row:\n{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "memcached", "{row}");
    let drop_pps: f64 = cols[2].parse().unwrap();
    // ~20 packets every ~10 ms: well over 500/s.
    assert!(drop_pps > 500.0, "dropped rate {drop_pps} in {row}");
}
