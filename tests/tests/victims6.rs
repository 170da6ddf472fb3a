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
const VECTORS: &[(&str, u16)] =
    &[("memcached", 11211), ("chargen", 19), ("qotd", 17), ("ssdp", 1900), ("cldap", 389), ("ntp", 123), ("dns", 53)];

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
    let lens: Vec<u8> = vec![0, 16, 31, 32, 33, 36, 40, 44, 47, 48, 52, 56, 57, 60, 63, 64, 65, 80, 96, 100, 112, 120, 125, 126, 127, 128];
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
            let near = base ^ (rnd() as u128) ^ (((rnd() as u128) << 64) & ((1u128 << 90) - 1));
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

/// Per-packet cost of the IPv6 attack path against the IPv4 one under
/// BPF_PROG_TEST_RUN, with 10,000 and 100,000 IPv6 victim prefixes of mixed
/// lengths (the bench's mix, tests/src/bench/tables.rs, plus /127 and /32 -
/// /44 provider blocks) and 10,000 IPv4 ones. A measurement, not a check:
/// `cargo test -p ampguard-tests --test victims6 -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_ipv6_cost() {
    require_root();
    let cpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) - 1;
    // Safety: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
    let mut base = aya::Ebpf::load(ampguard::dataplane::BASELINE_OBJECT).expect("baseline");
    let bare: &mut aya::programs::Xdp = base.program_mut("xdp_pass").unwrap().try_into().unwrap();
    bare.load().unwrap();
    let bare: &aya::programs::Xdp = base.program("xdp_pass").unwrap().try_into().unwrap();
    let run = |prog: &aya::programs::Xdp, pkt: &[u8], repeat: u32| -> (u32, f64) {
        let r = prog.test_run(aya::programs::TestRunOptions { data_in: Some(pkt), repeat, ..Default::default() }).expect("test run");
        (r.return_value, r.duration.as_nanos() as f64)
    };
    let drop = policy(Enforce, 0, &[("memcached", Drop)]);
    let mut seed = 0x616d_7067_7561_7264u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let totals: Vec<u32> = match std::env::var("V6_TOTALS") {
        Ok(v) => v.split(',').map(|t| t.parse().expect("V6_TOTALS: numbers")).collect(),
        Err(_) => vec![10_000, 100_000],
    };
    for v6_total in totals {
        let cap = Capacity { max_policies: v6_total + 20_000, max_v6_victims: v6_total + 16, ..Capacity::default() };
        let mut dp = DataPlane::load(&cap).expect("load");
        dp.set_vectors(&ampguard::vectors::default_port_table()).expect("vectors");
        let t0 = std::time::Instant::now();
        for i in 0..10_000u32 {
            let a = std::net::Ipv4Addr::from(u32::from_be_bytes([100, 64, 0, 0]) + (i * 7));
            dp.upsert_policy(format!("{a}/32").parse().unwrap(), &drop).unwrap();
        }
        // Per 10,000: /32-/44 provider blocks 5, /48 200, /56 800, /64 5,000, /127 500, the rest /128.
        let mix: &[(u8, u32)] = &[(32, 1), (36, 1), (40, 1), (44, 2), (48, 200), (56, 800), (64, 5_000), (127, 500)];
        let mut added = std::collections::HashSet::new();
        let mut push = |dp: &mut DataPlane, len: u8, rnd: &mut dyn FnMut() -> u64| -> bool {
            // Inside 2001:db8::/32 but clear of 2001:db8:0::/40 (the bench's own victims live there).
            let r = ((rnd() as u128) << 64 | rnd() as u128) & ((1u128 << 96) - 1);
            let a = (0x2001_0db8u128 << 96 | r) & (u128::MAX << (128 - len as u32));
            let third = (a >> 88) as u8;
            if (len >= 40 && third == 0) || len < 40 && len > 32 && third < 16 || !added.insert((a, len)) {
                return false;
            }
            dp.upsert_policy(format!("{}/{len}", Ipv6Addr::from(a)).parse().unwrap(), &drop).unwrap();
            true
        };
        let mut n = 0u32;
        for &(len, share) in mix {
            let want = share * v6_total / 10_000;
            let mut made = 0;
            for _ in 0..want * 100 {
                if made == want || len == 32 {
                    break;
                }
                made += push(&mut dp, len, &mut rnd) as u32;
            }
            n += made;
        }
        while n < v6_total - 3 {
            n += push(&mut dp, 128, &mut rnd) as u32;
        }
        // The measured victims (memcached dropped): a /128, a /127, a /64 and a /48.
        for v in ["2001:db8:2::10/128", "2001:db8:3::/127", "2001:db8:4::/64"] {
            dp.upsert_policy(v.parse().unwrap(), &drop).unwrap();
        }
        dp.upsert_policy("203.0.113.10/32".parse().unwrap(), &drop).unwrap();
        eprintln!("{v6_total} IPv6 prefixes loaded in {:.1?}", t0.elapsed());
        let m = |dst: &str| P::udp6("[2001:db8:1::7]:11211", &format!("[{dst}]:4000")).build();
        let subjects: Vec<(&str, Vec<u8>, u32)> = vec![
            ("IPv4 attack (/32), dropped", P::udp4("198.51.100.7:11211", "203.0.113.10:4000").build(), XDP_DROP),
            ("IPv6 attack (/128), dropped", m("2001:db8:2::10"), XDP_DROP),
            ("IPv6 attack (/127), dropped", m("2001:db8:3::1"), XDP_DROP),
            ("IPv6 attack (/64), dropped", m("2001:db8:4::99"), XDP_DROP),
            ("IPv6 memcached, no victim", m("2001:db8:5::1"), XDP_PASS),
            ("IPv4 no vector (parse only)", P::udp4("198.51.100.7:4444", "203.0.113.10:4000").build(), XDP_PASS),
            ("IPv6 no vector (parse only)", P::udp6("[2001:db8:1::7]:4444", "[2001:db8:2::10]:4000").build(), XDP_PASS),
        ];
        let rounds: usize = std::env::var("ROUNDS").map(|r| r.parse().expect("ROUNDS: a number")).unwrap_or(7);
        let repeat = 1_000_000u32;
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); subjects.len() + 1];
        for round in 0..rounds {
            for k in 0..=subjects.len() {
                let i = (k + round) % (subjects.len() + 1);
                if i == 0 {
                    times[0].push(run(bare, &subjects[0].1, repeat).1);
                } else {
                    let (ret, ns) = run(dp.program(), &subjects[i - 1].1, repeat);
                    assert_eq!(ret, subjects[i - 1].2, "{}", subjects[i - 1].0);
                    times[i].push(ns);
                }
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let bare_ns = med(&mut times[0]);
        let v4_over = med(&mut times[1].clone()) - bare_ns;
        eprintln!("{v6_total} IPv6 prefixes: bare {bare_ns} ns");
        for (i, s) in subjects.iter().enumerate() {
            let over = med(&mut times[i + 1]) - bare_ns;
            eprintln!("  {:32} +{over:.0} ns over bare, {:.2}x the IPv4 attack path's", s.0, over / v4_over);
        }
    }
}
