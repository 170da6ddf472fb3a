//! Packet samples and the live view: `ampguard capture` writes a pcap of the
//! dropped attack that tcpdump reads; `ampguard top` shows the victim and its
//! dropped rate while the attack flows.

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
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let t = Instant::now();
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(20) {
                send_udp(&lab.wan, sa("198.51.100.7:11211"), sa("203.0.113.10:40001"), 20, 400).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        out
    })
}

#[test]
fn capture_writes_a_pcap_of_the_dropped_attack_that_tcpdump_reads() {
    require_root();
    let lab = Lab::new("cap").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    let pcap = d.dir.join("attack.pcap");
    let out = under_attack(&lab, || {
        d.cli(&["capture", "--out", pcap.to_str().unwrap(), "--count", "30", "--victim", "203.0.113.0/24", "--seconds", "15"], None)
            .unwrap()
    });
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
