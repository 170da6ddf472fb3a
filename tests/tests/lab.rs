//! The lab itself: namespaces come up, traffic flows both address families,
//! and nothing is left behind.

use ampguard_tests::lab::{send_udp, Lab, UdpSink};
use ampguard_tests::require_root;
use std::net::SocketAddr;
use std::time::Duration;

fn netns_list() -> String {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn roundtrip(lab: &Lab, src: &str, dst: &str) -> (usize, usize) {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    let sink = UdpSink::bind(&lab.edge, dst).expect("bind sink");
    let sent = send_udp(&lab.wan, src, dst, 100, 64).expect("send");
    let got = sink.drain(Duration::from_millis(300), Duration::from_secs(5));
    (sent, got)
}

#[test]
fn udp_flows_wan_to_edge_v4_and_v6() {
    require_root();
    let lab = Lab::new("flow").expect("lab");
    assert!(lab.edge_ifindex().unwrap() > 0);
    assert_eq!(roundtrip(&lab, "198.51.100.7:11211", "203.0.113.10:40001"), (100, 100));
    assert_eq!(roundtrip(&lab, "[2001:db8:1::7]:53", "[2001:db8:2::10]:40001"), (100, 100));
    // A client source and the second victim too.
    assert_eq!(roundtrip(&lab, "192.0.2.10:5000", "203.0.113.20:40002"), (100, 100));
}

#[test]
fn no_default_route_anywhere() {
    require_root();
    let lab = Lab::new("route").expect("lab");
    for ns in [&lab.wan, &lab.edge] {
        for fam in ["-4", "-6"] {
            let out = ns.ip(&[fam, "route", "show", "default"]).unwrap();
            assert!(out.stdout.is_empty(), "{} has a default route: {}", ns.name, String::from_utf8_lossy(&out.stdout));
        }
    }
}

#[test]
fn in_ns_restores_the_thread_namespace() {
    require_root();
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let lab = Lab::new("enter").expect("lab");
    let inside = Lab::in_ns(&lab.edge, || std::fs::read_link("/proc/thread-self/ns/net").unwrap()).unwrap();
    assert_ne!(inside, before);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lab.edge.enter(|| panic!("boom")).unwrap();
    }));
    assert!(r.is_err());
    assert_eq!(std::fs::read_link("/proc/thread-self/ns/net").unwrap(), before);
    let out = Lab::exec(&lab.edge, &["ip", "-br", "link", "show", "edge0"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("edge0"));
}

#[test]
fn dropping_the_lab_deletes_its_namespaces() {
    require_root();
    let lab = Lab::new("drop").expect("lab");
    let names = [lab.wan.name.clone(), lab.edge.name.clone()];
    let listed = netns_list();
    for n in &names {
        assert!(listed.contains(n.as_str()), "{n} not in `ip netns list`: {listed}");
    }
    drop(lab);
    let listed = netns_list();
    for n in &names {
        assert!(!listed.contains(n.as_str()), "{n} still in `ip netns list` after drop: {listed}");
    }
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    require_root();
    // A pid above pid_max can never be alive.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let name = format!("ag-stale-wan-{}", pid_max + 1);
    let st = std::process::Command::new("ip").args(["netns", "add", &name]).status().unwrap();
    assert!(st.success());
    let deleted = ampguard_tests::lab::cleanup_stale();
    assert!(deleted.contains(&name), "{deleted:?}");
    assert!(!netns_list().contains(name.as_str()));
}
