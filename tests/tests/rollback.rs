//! "On error nothing changes" for the data plane: a map write made to fail at
//! every step of an add, a replacement and a removal must leave the pools,
//! the victim tables and what packets meet exactly as they were, and the same
//! change must then succeed. (Fault injection: `inject_write_failure`.)

mod common;
use common::*;

fn memcached_to(dst: &str) -> Vec<u8> {
    if dst.contains(':') {
        P::udp6("[2001:db8:99::7]:11211", &format!("[{dst}]:40001")).build()
    } else {
        P::udp4("198.51.100.7:11211", &format!("{dst}:40001")).build()
    }
}

/// Runs `change` with a write failure injected at step 0, 1, 2, ... until it
/// succeeds; after each failure `unchanged` must hold. Returns the number of
/// failures seen (each a different step of the change).
fn fail_every_step(
    f: &mut Fixture,
    what: &str,
    mut change: impl FnMut(&mut Fixture) -> Result<(), String>,
    unchanged: impl Fn(&Fixture),
) -> u32 {
    for n in 0..64 {
        f.dp.inject_write_failure(n);
        match change(f) {
            Ok(()) => {
                f.dp.inject_write_failure(u32::MAX); // disarm what was not reached
                return n;
            }
            Err(e) => {
                assert!(e.contains("injected"), "{what}: step {n} failed with something else: {e}");
                unchanged(f);
            }
        }
    }
    panic!("{what}: still failing after 64 injected failures");
}

#[test]
fn a_failed_add_leaves_nothing_behind() {
    let mut f = Fixture::new();
    f.policy("203.0.113.0/24", policy(Enforce, 0, &[("memcached", Pass)]));
    f.policy("2001:db8:5::/48", policy(Enforce, 0, &[("memcached", Pass)]));
    for victim in ["203.0.113.77/32", "192.0.2.77/32", "2001:db8:5::77/128"] {
        let before = f.dp.free_entries();
        let count = f.dp.policy_count();
        let host = victim.split('/').next().unwrap();
        let pkt = memcached_to(host);
        let verdict_before = f.run(&pkt);
        let p = policy(Enforce, 0, &[("memcached", Drop), ("ntp", limit_pps(100, 10)), ("dns", limit_pps(50, 5))]);
        let net: ipnet::IpNet = victim.parse().unwrap();
        let failures = fail_every_step(
            &mut f,
            victim,
            |f| f.dp.upsert_policy(net, &p).map(|_| ()).map_err(|e| e.to_string()),
            |f| {
                assert_eq!(f.dp.free_entries(), before, "{victim}: pools after a failed add");
                assert_eq!(f.dp.policy_count(), count, "{victim}: policies after a failed add");
                assert_eq!(f.dp.slot_of(&net), None, "{victim}: a failed add left a slot");
                assert_eq!(f.run(&pkt), verdict_before, "{victim}: a packet met a half-made policy");
            },
        );
        assert!(failures >= 4, "{victim}: only {failures} steps could fail; the test covers too little");
        assert_eq!(f.run(&pkt), XDP_DROP, "{victim}: the add, once it succeeded, enforces");
    }
}

#[test]
fn a_failed_replacement_keeps_the_old_policy() {
    let mut f = Fixture::new();
    let victim: ipnet::IpNet = "203.0.113.9/32".parse().unwrap();
    f.dp.upsert_policy(victim, &policy(Enforce, 0, &[("memcached", Drop), ("ntp", limit_pps(100, 10))])).unwrap();
    let before = f.dp.free_entries();
    let ssdp = P::udp4("198.51.100.7:1900", "203.0.113.9:40001").build();
    assert_eq!(f.run(&ssdp), XDP_PASS);
    let new = policy(Enforce, 0, &[("memcached", Drop), ("ssdp", Drop), ("ntp", limit_pps(200, 10)), ("dns", limit_pps(5, 1))]);
    let failures = fail_every_step(
        &mut f,
        "replacement",
        |f| f.dp.upsert_policy(victim, &new).map(|_| ()).map_err(|e| e.to_string()),
        |f| {
            assert_eq!(f.dp.free_entries(), before, "pools after a failed replacement");
            assert_eq!(f.run(&ssdp), XDP_PASS, "a failed replacement changed what packets meet");
        },
    );
    assert!(failures >= 2, "only {failures} steps could fail");
    assert_eq!(f.run(&ssdp), XDP_DROP, "the replacement, once it succeeded, enforces");
    // Two limiters changed or appeared, one went away: net one more in use.
    assert_eq!(f.dp.free_entries().1, before.1 - 1);
}

#[test]
fn a_failed_removal_keeps_enforcing_and_can_be_retried() {
    let mut f = Fixture::new();
    f.policy("203.0.113.0/24", policy(Enforce, 0, &[("memcached", Pass)]));
    for victim in ["203.0.113.5/32", "198.51.100.0/28", "2001:db8:7::/64"] {
        let net: ipnet::IpNet = victim.parse().unwrap();
        f.dp.upsert_policy(net, &policy(Enforce, 0, &[("memcached", Drop), ("ntp", limit_pps(10, 1))])).unwrap();
        let before = f.dp.free_entries();
        let host = net.network().to_string();
        let pkt = memcached_to(&host);
        assert_eq!(f.run(&pkt), XDP_DROP);
        let failures = fail_every_step(
            &mut f,
            victim,
            |f| f.dp.remove_policy(&net).map(|_| ()).map_err(|e| e.to_string()),
            |f| {
                assert_eq!(f.dp.free_entries(), before, "{victim}: pools after a failed removal");
                assert!(f.dp.slot_of(&net).is_some(), "{victim}: a failed removal lost the record of an enforcing policy");
                assert_eq!(f.run(&pkt), XDP_DROP, "{victim}: a failed removal changed what packets meet");
            },
        );
        assert!(failures >= 1, "{victim}: no step could fail");
        assert_eq!(f.run(&pkt), XDP_PASS, "{victim}: removed");
        assert!(f.dp.free_entries().0 > before.0);
    }
}

#[test]
fn a_capture_that_fails_to_start_sampling_is_not_counted() {
    let mut f = Fixture::new();
    let hub = ampguard::capture::CaptureHub::default();
    f.dp.inject_write_failure(0);
    assert!(hub.start(&mut f.dp, 100).is_err(), "the injected failure reaches the caller");
    assert_eq!(hub.active(), 0, "a capture that never started is still counted");
    assert_eq!(f.dp.sampling().unwrap(), 0);
    // The next capture turns sampling on (before the fix the count stayed at 1
    // and no later capture ever switched it on again).
    hub.start(&mut f.dp, 100).unwrap();
    assert_eq!(f.dp.sampling().unwrap(), 100);
    hub.start(&mut f.dp, 100).unwrap();
    hub.stop(&mut f.dp);
    assert_eq!(f.dp.sampling().unwrap(), 100, "off while a capture still runs");
    hub.stop(&mut f.dp);
    assert_eq!(f.dp.sampling().unwrap(), 0, "still on after the last capture");
}
