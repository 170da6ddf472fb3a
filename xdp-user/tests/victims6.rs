//! IPv6 victims of every length through the loaded program (BPF_PROG_TEST_RUN):
//! the hash table at pivot lengths and the trie for the others must give the
//! longest prefix, as the model does, while prefixes come and go; and a full
//! table refuses a victim with the capacity error and keeps the rest.

mod common;
use std::net::Ipv6Addr;

use ampguard::dataplane::{Capacity, DataPlane, DpError};
use aya::programs::TestRun;
use common::*;

/// The vectors whose rules tell the prefixes apart: each prefix gets its own
/// pattern of Drop/Pass over them, so a packet's verdicts name the prefix.
const VECTORS: &[(&str, u16)] = &[("memcached", 11211), ("chargen", 19), ("qotd", 17), ("ssdp", 1900), ("cldap", 389), ("ntp", 123), ("dns", 53)];

fn pattern_policy(pattern: u32) -> ampguard::dataplane::rules::DpPolicy {
    let rules: Vec<(&str, ampguard::dataplane::rules::Rule)> =
        VECTORS.iter().enumerate().map(|(i, (n, _))| (*n, if pattern >> i & 1 == 1 { Drop } else { Pass })).collect();
    policy(Enforce, 0, &rules)
}

fn pkts(dst: Ipv6Addr) -> Vec<Vec<u8>> {
    VECTORS.iter().map(|(_, port)| P::udp6(&format!("[2001:db8:1::7]:{port}"), &format!("[{dst}]:4000")).build()).collect()
}

/// Program and model agree on every vector for `dst`; returns the actions.
fn check(f: &mut Fixture, dst: Ipv6Addr, what: &str) -> Vec<u32> {
    pkts(dst)
        .iter()
        .map(|p| {
            let got = f.run(p);
            let want = f.model.decide(p).action();
            assert_eq!(got, want, "{what}: {dst}");
            got
        })
        .collect()
}

/// The address that matches every nested prefix up to `len` and none longer.
fn probe_for(base: u128, len: u8) -> Ipv6Addr {
    Ipv6Addr::from(if len < 128 { base ^ (1u128 << (127 - len)) } else { base })
}

#[test]
fn every_length_longest_prefix_wins_through_the_program() {
    let mut f = Fixture::new();
    let base = u128::from("2001:db8:7700:1234:5678:9abc:def0:1357".parse::<Ipv6Addr>().unwrap());
    // Every pivot length (hash table) and lengths between them (trie).
    let lens: Vec<u8> =
        vec![0, 16, 31, 32, 33, 36, 40, 44, 47, 48, 52, 56, 57, 60, 63, 64, 65, 80, 96, 100, 112, 120, 125, 126, 127, 128];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut patterns = Vec::new();
    for &len in &lens {
        let net = format!("{}/{len}", Ipv6Addr::from(if len == 0 { 0 } else { base & (u128::MAX << (128 - len as u32)) }));
        let pattern = (rnd() as u32) & ((1 << VECTORS.len()) - 1);
        f.policy(&net, pattern_policy(pattern));
        patterns.push((net, pattern));
    }
    // Each length is the longest match of its probe, and its pattern shows.
    for (i, &len) in lens.iter().enumerate() {
        let got = check(&mut f, probe_for(base, len), &format!("/{len} installed"));
        let want: Vec<u32> = (0..VECTORS.len()).map(|v| if patterns[i].1 >> v & 1 == 1 { XDP_DROP } else { XDP_PASS }).collect();
        assert_eq!(got, want, "/{len}: the verdicts are its own policy's");
    }
    // Remove them in a shuffled order, re-adding some with new policies;
    // after each change every probe agrees with the model.
    let mut order: Vec<usize> = (0..lens.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rnd() as usize % (i + 1));
    }
    for (step, &i) in order.iter().enumerate() {
        let net = patterns[i].0.clone();
        if step % 4 == 1 {
            f.policy(&net, pattern_policy(rnd() as u32 & 0x7f));
        }
        f.remove(&net);
        for &len in &lens {
            check(&mut f, probe_for(base, len), &format!("after removing {net}"));
        }
        for _ in 0..8 {
            let near = base ^ (rnd() as u128) ^ ((rnd() as u128) << 64 & (1u128 << 90) - 1);
            check(&mut f, Ipv6Addr::from(near), &format!("near, after removing {net}"));
        }
    }
    for &len in &lens {
        let got = check(&mut f, probe_for(base, len), "all removed");
        assert!(got.iter().all(|&a| a == XDP_PASS));
    }
}

#[test]
fn a_full_ipv6_table_refuses_with_the_capacity_error_and_keeps_the_rest() {
    require_root();
    let cap = Capacity { max_v6_victims: 4, ..Capacity::default() };
    let mut dp = DataPlane::load(&cap).expect("load");
    dp.set_vectors(&ampguard::vectors::default_port_table()).expect("vectors");
    let drop = policy(Enforce, 0, &[("memcached", Drop)]);
    // Two in the hash table, two in the trie.
    for v in ["2001:db8:5::/48", "2001:db8:5::10/128", "2001:db8:6::/50", "2001:db8:6::10/126"] {
        dp.upsert_policy(v.parse().unwrap(), &drop).expect("within capacity");
    }
    for v in ["2001:db8:7::/64", "2001:db8:7::/65"] {
        match dp.upsert_policy(v.parse().unwrap(), &drop) {
            Err(e @ DpError::Full { .. }) => assert!(e.to_string().contains("max_v6_victims"), "{e}"),
            other => panic!("{v}: expected the IPv6 table to be full, got {other:?}"),
        }
    }
    let run = |dp: &DataPlane, dst: &str| {
        let pkt = P::udp6("[2001:db8:1::7]:11211", &format!("[{dst}]:4000")).build();
        dp.program()
            .test_run(aya::programs::TestRunOptions { data_in: Some(&pkt), repeat: 1, ..Default::default() })
            .expect("test run")
            .return_value
    };
    for dst in ["2001:db8:5::1", "2001:db8:5::10", "2001:db8:6::1", "2001:db8:6::11"] {
        assert_eq!(run(&dp, dst), XDP_DROP, "{dst}: installed before the table filled");
    }
    assert_eq!(run(&dp, "2001:db8:7::1"), XDP_PASS, "the refused victim is not enforced");
    dp.remove_policy(&"2001:db8:6::/50".parse().unwrap()).expect("remove");
    dp.upsert_policy("2001:db8:7::/64".parse().unwrap(), &drop).expect("room again");
    assert_eq!(run(&dp, "2001:db8:7::1"), XDP_DROP);
    assert_eq!(run(&dp, "2001:db8:6::1"), XDP_PASS);
}
