//! Built-in detection's meters in the loaded program (BPF_PROG_TEST_RUN):
//! the sketch finds a victim inside a storm of spoofed destinations, a
//! tracked destination is counted exactly and a reused one inherits nothing,
//! and only what reaches a protected victim is metered.

mod common;
use ampguard::dataplane::{Capacity, DataPlane};
use aya::programs::{TestRun, TestRunOptions};
use common::*;
use ipnet::IpNet;
use xdp_common::{
    counters::Counter,
    meter::{MeterCfg, MeterEvent, MeterKey, EPOCH_SHIFT},
    vector::MAX_VECTORS,
};

const TRIGGER: u32 = 50;

fn detection_dp(max_tracked: u32) -> DataPlane {
    require_root();
    let cap = Capacity { detection: true, max_tracked, ..Capacity::default() };
    let mut dp = DataPlane::load(&cap).expect("load");
    dp.set_vectors(&ampguard::vectors::default_port_table()).unwrap();
    let nets: Vec<IpNet> = ["203.0.113.0/24", "2001:db8:2::/48"].iter().map(|n| n.parse().unwrap()).collect();
    dp.set_protected(&nets).unwrap();
    let mut weights = [0u16; MAX_VECTORS];
    weights[v("memcached") as usize] = 1;
    weights[v("ntp") as usize] = 5;
    dp.set_meter_cfg(MeterCfg { enabled: 1, cols_mask: 0, trigger: TRIGGER, _pad: 0, weights }).unwrap();
    // One discovery window for the whole test.
    dp.set_time_override(1000 << EPOCH_SHIFT).unwrap();
    dp
}

fn run_n(dp: &DataPlane, pkt: &[u8], n: u32) -> u32 {
    dp.program().test_run(TestRunOptions { data_in: Some(pkt), repeat: n, ..Default::default() }).expect("BPF_PROG_TEST_RUN").return_value
}

fn events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<MeterEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const MeterEvent) });
    }
    out
}

fn v6_key(addr: &str) -> MeterKey {
    let a: std::net::Ipv6Addr = addr.parse().unwrap();
    MeterKey::v6((u128::from(a) >> 64) as u64)
}

fn v4_key(addr: &str) -> MeterKey {
    MeterKey::v4(u32::from(addr.parse::<std::net::Ipv4Addr>().unwrap()))
}

#[test]
fn a_victim_is_found_inside_a_storm_of_spoofed_slash_64s() {
    let mut dp = detection_dp(64);
    let mut ring = dp.take_meter_events().unwrap();
    // 40,000 replies, each to a different /64 of the protected /48, and 100 to
    // one victim among them (one in 400 of the packets).
    let victim = P::udp6("[2001:db8:1::7]:11211", "[2001:db8:2:77::10]:40000").build();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in 0..40_000u32 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let dst = format!("[2001:db8:2:{:x}::1]:40000", (rng as u16) | 1);
        assert_eq!(run_n(&dp, &P::udp6("[2001:db8:1::7]:11211", &dst).build(), 1), XDP_PASS);
        if i % 400 == 0 {
            assert_eq!(run_n(&dp, &victim, 1), XDP_PASS);
        }
    }
    let evs = events(&mut ring);
    let want = v6_key("2001:db8:2:77::10");
    assert!(evs.iter().any(|e| e.key == want && e.units >= TRIGGER), "the victim reached the trigger: {} events", evs.len());
    // The storm's keys average 40,000 / 65,536 of a packet each and share
    // cells (2 x 2,048): a few of them may reach the trigger, never many.
    let storm: std::collections::BTreeSet<_> = evs.iter().map(|e| e.key).filter(|k| *k != want).collect();
    assert!(storm.len() <= 20, "{} storm destinations sent to the daemon", storm.len());
    // Memory is what was configured, whatever arrived: the sketch has no keys,
    // and nothing was tracked (only the daemon tracks).
    assert_eq!(dp.tracked_count(), 0);
}

#[test]
fn a_tracked_destination_is_counted_exactly_and_its_reuse_inherits_nothing() {
    let mut dp = detection_dp(1);
    let mut ring = dp.take_meter_events().unwrap();
    let (a, b) = (v4_key("203.0.113.10"), v4_key("203.0.113.20"));
    let ta = dp.track(a).unwrap();
    let mc = P::udp4("198.51.100.7:11211", "203.0.113.10:40000").build();
    let ntp = P::udp4("198.51.100.123:123", "203.0.113.10:40000").payload(200).build();
    assert_eq!(run_n(&dp, &mc, 1_000), XDP_PASS);
    assert_eq!(run_n(&dp, &ntp, 7), XDP_PASS);
    let c = dp.meter_counts(ta, &[v("memcached"), v("ntp")]).unwrap();
    assert_eq!(c[v("memcached") as usize], Counter { packets: 1_000, bytes: 1_000 * mc.len() as u64 });
    assert_eq!(c[v("ntp") as usize], Counter { packets: 7, bytes: 7 * ntp.len() as u64 });
    assert!(events(&mut ring).is_empty(), "a tracked destination bypasses the sketch");
    // The table holds one: full until a is untracked.
    assert!(matches!(dp.track(b), Err(ampguard::dataplane::DpError::Full { .. })));
    assert!(dp.untrack(&a).unwrap());
    let tb = dp.track(b).unwrap();
    assert_eq!(tb.base, ta.base, "b reuses a's meters");
    assert_ne!(tb.gen, ta.gen);
    let c = dp.meter_counts(tb, &[v("memcached"), v("ntp")]).unwrap();
    assert_eq!((c[v("memcached") as usize].packets, c[v("ntp") as usize].packets), (0, 0), "nothing of a's still cached");
    let mc_b = P::udp4("198.51.100.7:11211", "203.0.113.20:40000").build();
    assert_eq!(run_n(&dp, &mc_b, 3), XDP_PASS);
    assert_eq!(dp.meter_counts(tb, &[v("memcached")]).unwrap()[v("memcached") as usize].packets, 3);
}

#[test]
fn only_what_reaches_a_protected_victim_is_metered() {
    let mut f = Fixture::new();
    drop(std::mem::replace(&mut f.dp, detection_dp(8)));
    let t = f.dp.track(v4_key("203.0.113.10")).unwrap();
    let mc = |src: &str, dst: &str| P::udp4(src, dst).build();
    let count = |dp: &DataPlane| dp.meter_counts(t, &[v("memcached"), v("ntp")]).unwrap()[v("memcached") as usize].packets;
    // Not from an amplification port: not metered.
    assert_eq!(f.run(&P::udp4("198.51.100.7:4000", "203.0.113.10:40000").build()), XDP_PASS);
    assert_eq!(count(&f.dp), 0);
    // From one, no policy: metered.
    assert_eq!(f.run(&mc("198.51.100.7:11211", "203.0.113.10:40000")), XDP_PASS);
    assert_eq!(count(&f.dp), 1);
    // A monitor policy lets it through: metered.
    f.policy("203.0.113.10/32", policy(Monitor, 0, &[("memcached", Drop)]));
    assert_eq!(f.run(&mc("198.51.100.7:11211", "203.0.113.10:40000")), XDP_PASS);
    assert_eq!(count(&f.dp), 2);
    // A policy that drops it: in the policy's counters, not the meter.
    f.policy("203.0.113.10/32", policy(Enforce, 0, &[("memcached", Drop)]));
    assert_eq!(f.run(&mc("198.51.100.7:11211", "203.0.113.10:40000")), XDP_DROP);
    assert_eq!(count(&f.dp), 2);
    f.remove("203.0.113.10/32");
    // An allowlisted source: never metered (the victim's own servers).
    f.allow("198.51.100.7/32");
    assert_eq!(f.run(&mc("198.51.100.7:11211", "203.0.113.10:40000")), XDP_PASS);
    assert_eq!(count(&f.dp), 2);
    // Metering off: nothing.
    f.dp.set_meter_cfg(MeterCfg::OFF).unwrap();
    assert_eq!(f.run(&mc("198.51.100.53:11211", "203.0.113.10:40000")), XDP_PASS);
    assert_eq!(count(&f.dp), 2);
}

#[test]
fn unprotected_destinations_and_a_data_plane_without_detection_are_refused_or_ignored() {
    let mut dp = detection_dp(8);
    let mut ring = dp.take_meter_events().unwrap();
    // 198.51.100.0/24 is not protected: a flood there sends nothing.
    assert_eq!(run_n(&dp, &P::udp4("192.0.2.7:11211", "198.51.100.99:40000").build(), 500), XDP_PASS);
    assert!(events(&mut ring).is_empty());
    // A flood to a protected one is sent once per window.
    assert_eq!(run_n(&dp, &P::udp4("192.0.2.7:11211", "203.0.113.99:40000").build(), 500), XDP_PASS);
    let evs = events(&mut ring);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].key, v4_key("203.0.113.99"));
    // Loaded without detection's maps: the controller says so.
    let mut plain = DataPlane::load(&Capacity::default()).unwrap();
    let e = plain.track(v4_key("203.0.113.99")).unwrap_err().to_string();
    assert!(e.contains("without detection"), "{e}");
    assert!(plain.set_protected(&["203.0.113.0/24".parse().unwrap()]).is_err());
}
