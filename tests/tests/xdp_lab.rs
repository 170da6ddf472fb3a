//! The XDP program attached to the edge veth of a lab: attack packets sent
//! across from the wan side are dropped as the policy says, ordinary traffic
//! to the same victim arrives, and removing the policy restores everything.

use ampguard::{
    dataplane::{
        rules::{DpPolicy, Mode, Rule},
        Capacity, DataPlane,
    },
    vectors,
};
use ampguard_tests::{
    lab::{deliver, Lab},
    require_root,
};
use aya::programs::XdpMode;

fn attack_dropped_ordinary_passes(mode: XdpMode, tag: &str) {
    require_root();
    let lab = Lab::new(tag).expect("lab");
    let mut dp = DataPlane::load(&Capacity::default()).expect("load");
    dp.set_vectors(&vectors::default_port_table()).unwrap();
    let prog = dp.program_mut();
    lab.edge.enter(|| prog.attach(&lab.edge_if, mode)).expect("enter edge ns").expect("attach XDP to edge0");

    // No policy yet: everything arrives.
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 200), 200);

    let memcached = vectors::id_of("memcached").unwrap();
    let ntp = vectors::id_of("ntp").unwrap();
    let policy = DpPolicy { mode: Mode::Enforce, expires_ns: 0, rules: vec![(memcached, Rule::Drop), (ntp, Rule::Drop)] };
    dp.upsert_policy("203.0.113.10/32".parse().unwrap(), &policy).unwrap();
    dp.upsert_policy("2001:db8:2::10/128".parse().unwrap(), &policy).unwrap();

    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 200), 0, "memcached attack dropped");
    assert_eq!(deliver(&lab, "198.51.100.123:123", "203.0.113.10:40002", 200), 0, "ntp attack dropped");
    assert_eq!(deliver(&lab, "[2001:db8:1::7]:11211", "[2001:db8:2::10]:40001", 200), 0, "IPv6 attack dropped");
    assert_eq!(deliver(&lab, "198.51.100.7:40000", "203.0.113.10:40003", 200), 200, "ordinary UDP to the victim arrives");
    assert_eq!(deliver(&lab, "198.51.100.53:53", "203.0.113.10:40004", 200), 200, "a vector without a rule arrives");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.20:40001", 200), 200, "another victim is untouched");

    dp.remove_policy(&"203.0.113.10/32".parse().unwrap()).unwrap();
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 200), 200, "policy removed: traffic restored");
}

#[test]
fn native_xdp_on_veth() {
    attack_dropped_ordinary_passes(XdpMode::Driver, "drv");
}

#[test]
fn generic_xdp_on_veth() {
    attack_dropped_ordinary_passes(XdpMode::Skb, "skb");
}
