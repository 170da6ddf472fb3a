//! Differential test: generated packets (random, and mutations of valid ones:
//! truncated at every offset, corrupted headers, odd VLAN stacks, IPv6 header
//! chains, fragments, every vector) go through the loaded XDP program via
//! BPF_PROG_TEST_RUN and through the reference model; every verdict must agree,
//! and so must the counters at the end. Policies change while it runs, and so
//! does the (injected) clock, so expiry and token buckets are covered too.
//!
//! AMPGUARD_DIFF_PACKETS sets the count (default 150,000; `cargo xtask
//! fuzz-xdp` runs millions), AMPGUARD_SEED the seed (printed on failure).

mod common;
use common::*;
use std::collections::{HashMap, HashSet};

use ampguard::{
    dataplane::rules::{CondRule, Conditions, Limit, Rule, Verb},
    vectors,
};
use ampguard_test_support::payloads;
use rand::{rngs::SmallRng, seq::IndexedRandom, Rng, SeedableRng};
use xdp_common::vector::BUILTIN;

const REFLECTORS4: &[&str] = &["198.51.100.7", "198.51.100.53", "198.51.100.200", "192.0.2.1", "203.0.113.99"];
const VICTIMS4: &[&str] =
    &["203.0.113.5", "203.0.113.10", "203.0.113.20", "203.0.113.130", "192.0.2.77", "198.18.4.4", "198.19.200.1", "100.64.0.1"];
const REFLECTORS6: &[&str] = &["2001:db8:1::7", "2001:db8:1::53", "2001:db8:ffff::1"];
const VICTIMS6: &[&str] = &["2001:db8:2::10", "2001:db8:2::11", "2001:db8:2:1::10", "2001:db8:3::1"];
const VICTIM_PREFIXES: &[&str] = &[
    "203.0.113.0/24",
    "203.0.113.10/32",
    "203.0.113.128/25",
    "203.0.113.20/31",
    "192.0.2.64/26",
    "198.18.0.0/15",
    "198.19.200.0/24",
    "100.64.0.0/10",
    "2001:db8:2::/64",
    "2001:db8:2::10/128",
    "2001:db8::/32",
    "2001:db8:2:1::/64",
];

fn rand_limit(rng: &mut SmallRng) -> Limit {
    let mut l = Limit {
        pps: *[0u64, 1, 5, 100].choose(rng).unwrap(),
        bytes_per_sec: *[0u64, 2_000, 100_000].choose(rng).unwrap(),
        burst_packets: rng.random_range(1..5),
        burst_bytes: rng.random_range(1_600..5_000),
    };
    if l.pps == 0 && l.bytes_per_sec == 0 {
        l.pps = 3;
    }
    l
}

fn rand_verb(rng: &mut SmallRng) -> Verb {
    *[Verb::Pass, Verb::Drop, Verb::Drop, Verb::Limit].choose(rng).unwrap()
}

fn rand_rule(rng: &mut SmallRng) -> Rule {
    match rng.random_range(0..6) {
        0 => Pass,
        1 | 2 => Drop,
        4 | 5 => {
            let (on_match, otherwise) = (rand_verb(rng), rand_verb(rng));
            let limit = (on_match == Verb::Limit || otherwise == Verb::Limit).then(|| rand_limit(rng));
            let min = rng.random_bool(0.3).then(|| rng.random_range(0..1500));
            let max = rng.random_bool(0.2).then(|| rng.random_range(min.unwrap_or(0)..2000));
            Rule::Cond(CondRule {
                when: Conditions { signature: rng.random_bool(0.8), min_bytes: min, max_bytes: max },
                on_match,
                otherwise,
                limit,
            })
        }
        _ => Rule::Limit(Limit {
            pps: *[0u64, 1, 5, 100].choose(rng).unwrap(),
            bytes_per_sec: *[0u64, 2_000, 100_000].choose(rng).unwrap(),
            burst_packets: rng.random_range(1..5),
            burst_bytes: rng.random_range(1_600..5_000),
        }),
    }
}

fn rand_policy(rng: &mut SmallRng, now: u64) -> ampguard::dataplane::rules::DpPolicy {
    let mut rules = Vec::new();
    for b in BUILTIN {
        if rng.random_bool(0.7) {
            let mut r = rand_rule(rng);
            if let Rule::Limit(l) = &mut r {
                if l.pps == 0 && l.bytes_per_sec == 0 {
                    l.pps = 3;
                }
            }
            rules.push((b.id, r));
        }
    }
    ampguard::dataplane::rules::DpPolicy {
        mode: if rng.random_bool(0.25) { Monitor } else { Enforce },
        expires_ns: match rng.random_range(0..4) {
            0 => now + rng.random_range(1..20) * SEC,
            _ => 0,
        },
        rules,
    }
}

fn valid_packet(rng: &mut SmallRng) -> P {
    let sport: u16 = if rng.random_bool(0.8) {
        let v = BUILTIN.choose(rng).unwrap();
        *v.ports.first().unwrap_or(&11211)
    } else {
        rng.random()
    };
    let dport: u16 = rng.random();
    let v6 = rng.random_bool(0.3);
    let mut b = if v6 {
        P::udp6(&format!("[{}]:{sport}", REFLECTORS6.choose(rng).unwrap()), &format!("[{}]:{dport}", VICTIMS6.choose(rng).unwrap()))
    } else {
        P::udp4(&format!("{}:{sport}", REFLECTORS4.choose(rng).unwrap()), &format!("{}:{dport}", VICTIMS4.choose(rng).unwrap()))
    };
    b = match rng.random_range(0..3) {
        0 => b.payload(rng.random_range(0..1400)),
        _ => b.payload_bytes(&real_payload(rng, sport)),
    };
    if rng.random_bool(0.2) {
        let tags: Vec<(u16, u16)> =
            (0..rng.random_range(1..4)).map(|_| (*[0x8100u16, 0x88a8].choose(rng).unwrap(), rng.random_range(1..4095))).collect();
        b = b.vlans(&tags);
    }
    if rng.random_bool(0.1) {
        b = b.protocol(*[6u8, 1, 50, 58, 132].choose(rng).unwrap());
    }
    if v6 {
        if rng.random_bool(0.3) {
            let n = rng.random_range(1..10);
            let chain: Vec<u8> = (0..n).map(|_| *[0u8, 43, 60, 60, 44].choose(rng).unwrap()).collect();
            b = b.ext_headers(&chain);
        }
    } else if rng.random_bool(0.2) {
        b = b.ipv4_options(rng.random_range(1..=10));
    }
    if rng.random_bool(0.15) {
        b = b.fragment_offset(if rng.random_bool(0.7) { rng.random_range(1..8000) } else { 0 });
    }
    if rng.random_bool(0.1) {
        b = b.more_fragments();
    }
    b
}

/// A reply of the port's protocol, attack or ordinary, possibly truncated.
fn real_payload(rng: &mut SmallRng, sport: u16) -> Vec<u8> {
    let mut p = match sport {
        53 => [
            payloads::dns_a_answer(),
            payloads::dns_any_answer(),
            payloads::dns_query(),
            payloads::dns_response("a.example", 255, 1, 0),
            payloads::dns_response("b.example.org", 1, rng.random_range(0..30), 0),
        ]
        .choose(rng)
        .unwrap()
        .clone(),
        123 => [payloads::ntp_mode4_reply(), payloads::ntp_monlist_reply(), payloads::ntp_mode6_reply()].choose(rng).unwrap().clone(),
        11211 => [payloads::memcached_stat_reply(), payloads::memcached_value_reply()].choose(rng).unwrap().clone(),
        1900 => payloads::ssdp_ok_reply(),
        389 => payloads::cldap_search_res_entry(),
        161 => payloads::snmp_get_response(rng.random_range(0..40)),
        19 => payloads::chargen_reply(),
        17 => payloads::qotd_reply(),
        _ => (0..rng.random_range(0..200)).map(|_| rng.random()).collect(),
    };
    if rng.random_bool(0.2) {
        p.truncate(rng.random_range(0..=p.len()));
    }
    if rng.random_bool(0.2) && !p.is_empty() {
        let i = rng.random_range(0..p.len().min(80));
        p[i] ^= 1 << rng.random_range(0..8);
    }
    p
}

/// Corrupt a valid packet the way broken or hostile traffic does.
fn mutate(rng: &mut SmallRng, mut p: Vec<u8>) -> Vec<u8> {
    match rng.random_range(0..5) {
        0 => {
            // Flip bytes in the header area.
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..p.len().min(120));
                p[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => {
            // Interesting values at header positions (IHL/version nibbles,
            // ethertypes, next headers, ext lengths).
            let i = rng.random_range(12..p.len().min(100));
            p[i] = *[0x00, 0x04, 0x06, 0x11, 0x2c, 0x3c, 0x2b, 0x45, 0x4f, 0x60, 0x81, 0x88, 0xa8, 0xff].choose(rng).unwrap();
        }
        2 => {
            let cut = rng.random_range(14..=p.len());
            p.truncate(cut);
        }
        3 => {
            // Random bytes after a valid Ethernet header.
            let n = rng.random_range(0..200);
            p.truncate(14);
            p.extend((0..n).map(|_| rng.random::<u8>()));
            if rng.random_bool(0.5) {
                p[12..14].copy_from_slice(&[0x08, 0x00]);
            } else {
                p[12..14].copy_from_slice(&[0x86, 0xdd]);
            }
        }
        _ => {}
    }
    p
}

#[test]
fn program_agrees_with_model() {
    let total: usize = std::env::var("AMPGUARD_DIFF_PACKETS").ok().and_then(|s| s.parse().ok()).unwrap_or(150_000);
    let seed: u64 = std::env::var("AMPGUARD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut f = Fixture::new();
    let mut now = 1_000 * SEC;
    f.set_now(now);
    f.allow("198.51.100.53/32");
    f.allow("2001:db8:1::53/128");
    f.allow("192.0.2.0/28");

    let mut mismatches = Vec::new();
    let mut tally = std::collections::HashMap::new();
    let mut sent = 0usize;
    let mut truncations = 0usize;
    let (mut cond_matched, mut cond_unmatched) = (0u64, 0u64);
    // Per installed policy (by slot): the vectors it has named since it was
    // added, and the model's outcomes for it, to check its counters.
    let mut per_policy: HashMap<u32, (HashSet<u8>, HashMap<(u8, usize), u64>)> = HashMap::new();
    while sent < total {
        // Every 2,000 packets: policy churn and the clock moves on.
        if sent.is_multiple_of(2_000) {
            for _ in 0..rng.random_range(1..4) {
                let victim = *VICTIM_PREFIXES.choose(&mut rng).unwrap();
                if rng.random_bool(0.25) {
                    if let Some(slot) = f.dp.slot_of(&victim.parse().unwrap()) {
                        per_policy.remove(&slot);
                    }
                    f.remove(victim);
                } else {
                    let p = rand_policy(&mut rng, now);
                    let named: Vec<u8> = p.rules.iter().map(|(v, _)| *v).collect();
                    let slot = f.policy(victim, p);
                    per_policy.entry(slot).or_default().0.extend(named);
                }
            }
        }
        if sent.is_multiple_of(50) {
            now += rng.random_range(0..SEC / 2);
            f.set_now(now);
        }
        let base = valid_packet(&mut rng).build();
        let pkts: Vec<Vec<u8>> = if rng.random_bool(0.01) {
            // Truncated at every offset.
            truncations += 1;
            (14..=base.len().min(200)).map(|cut| base[..cut].to_vec()).collect()
        } else if rng.random_bool(0.5) {
            vec![mutate(&mut rng, base)]
        } else {
            vec![base]
        };
        for p in pkts {
            if let Some(m) = f.model.cond_would_match(&p) {
                if m {
                    cond_matched += 1;
                } else {
                    cond_unmatched += 1;
                }
            }
            let want = f.model.decide(&p);
            let got = f.run(&p);
            *tally.entry(want).or_insert(0u64) += 1;
            if let Outcome::Verdict { slot, vector, verdict } = want {
                // A vector not named yet counts with the policy's unlisted ones.
                let (named, outcomes) = per_policy.get_mut(&slot).expect("a verdict names an installed policy");
                let key = if named.contains(&vector) { vector } else { UNLISTED };
                *outcomes.entry((key, verdict)).or_default() += 1;
            }
            if got != want.action() && mismatches.len() < 10 {
                mismatches.push(format!("model {want:?}, program {got}, {} bytes: {}", p.len(), hex(&p)));
            }
            sent += 1;
        }
    }
    assert!(mismatches.is_empty(), "seed {seed}: program and model disagree:\n{}", mismatches.join("\n"));

    // Coverage: the run must have reached every kind of outcome.
    let reasons: Vec<usize> = tally
        .keys()
        .filter_map(|o| match o {
            Outcome::Reason(r) => Some(*r),
            _ => None,
        })
        .collect();
    for r in [reason::NOT_UDP, reason::NO_VECTOR, reason::NO_POLICY, reason::ALLOWLISTED, reason::EXPIRED, reason::PARSE_ERROR] {
        assert!(reasons.contains(&r), "seed {seed}: no packet reached reason {}", reason::NAMES[r]);
    }
    // Dropped by a signature: the conditional rules were exercised both ways.
    assert!(cond_matched > 100 && cond_unmatched > 100, "seed {seed}: signature rules matched {cond_matched}, not {cond_unmatched}");
    for vd in [verdict::PASSED, verdict::DROPPED, verdict::RATE_LIMITED, verdict::MONITORED] {
        assert!(
            tally.keys().any(|o| matches!(o, Outcome::Verdict { verdict, .. } if *verdict == vd)),
            "seed {seed}: no {}",
            verdict::NAMES[vd]
        );
    }
    for b in BUILTIN {
        assert!(
            tally.keys().any(|o| matches!(o, Outcome::Verdict { vector, .. } if *vector == b.id)),
            "seed {seed}: vector {} never met a policy",
            b.name
        );
    }
    assert!(truncations > 0);

    // The counters in the maps equal the model's tally by reason.
    let counted = f.dp.reason_counters().unwrap();
    for (r, c) in counted.iter().enumerate() {
        let want: u64 = tally.iter().filter(|(o, _)| **o == Outcome::Reason(r)).map(|(_, n)| n).sum();
        assert_eq!(c.packets, want, "seed {seed}: reason {}", reason::NAMES[r]);
    }
    let per_vec = f.dp.vector_counters().unwrap();
    for vd in 0..verdict::COUNT {
        let want: u64 = tally.iter().filter(|(o, _)| matches!(o, Outcome::Verdict { verdict, .. } if *verdict == vd)).map(|(_, n)| n).sum();
        let got: u64 = per_vec.iter().map(|c| c.by_verdict[vd].packets).sum();
        assert_eq!(got, want, "seed {seed}: verdict {}", verdict::NAMES[vd]);
    }
    // Every installed policy's counters equal the model's outcomes for it since
    // it was added: per vector from when it was first named, and summed over
    // the vectors not (yet) named.
    for (slot, (named, outcomes)) in &per_policy {
        let got = f.dp.policy_counts(*slot).unwrap();
        for vd in 0..verdict::COUNT {
            let want = |pick: &dyn Fn(u8) -> bool| outcomes.iter().filter(|((v, d), _)| *d == vd && pick(*v)).map(|(_, n)| n).sum::<u64>();
            for v in named {
                assert_eq!(
                    got.by_vector[*v as usize].by_verdict[vd].packets,
                    want(&|x| x == *v),
                    "seed {seed}: slot {slot} vector {v} {}",
                    verdict::NAMES[vd]
                );
            }
            assert_eq!(
                got.unlisted.by_verdict[vd].packets,
                want(&|x| x == UNLISTED),
                "seed {seed}: slot {slot} unlisted {}",
                verdict::NAMES[vd]
            );
        }
    }
    eprintln!(
        "differential: {sent} packets agreed (seed {seed}), {} vectors, {} policies' counters",
        vectors::default_port_table().len(),
        per_policy.len()
    );
}

/// Key of the vectors a policy has not named, in the per-policy tally.
const UNLISTED: u8 = u8::MAX;

fn hex(p: &[u8]) -> String {
    p.iter().take(160).map(|b| format!("{b:02x}")).collect::<String>() + if p.len() > 160 { "..." } else { "" }
}

/// The contract's limits, one packet each side of every edge, through both the
/// program and the model: random packets reach some edges only rarely (the
/// ninth IPv6 header being a non-first fragment header did, once in a few
/// runs, and the two disagreed).
#[test]
fn program_and_model_agree_at_the_limits() {
    let mut f = Fixture::new();
    f.set_now(1_000 * SEC);
    let sig_drop = Rule::Cond(CondRule {
        when: Conditions { signature: true, min_bytes: None, max_bytes: None },
        on_match: Verb::Drop,
        otherwise: Verb::Pass,
        limit: None,
    });
    let p = policy(Enforce, 0, &[("fragment", Drop), ("dns", sig_drop), ("snmp", sig_drop), ("cldap", sig_drop)]);
    f.policy("2001:db8:2::/64", p.clone());
    f.policy("203.0.113.0/24", p);

    let v6 = |sport: u16, chain: &[u8]| P::udp6(&format!("[2001:db8:1::7]:{sport}"), "[2001:db8:2::10]:4000").ext_headers(chain);
    let v4 = |sport: u16, payload: &[u8]| P::udp4(&format!("198.51.100.7:{sport}"), "203.0.113.10:4000").payload_bytes(payload).build();
    let dns_any = |labels: usize| v4(53, &payloads::dns_response(&vec!["a"; labels].join("."), 255, 1, 0));
    let snmp = |community: usize| {
        let mut b = vec![0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x01, 0x04, community as u8];
        b.extend(std::iter::repeat_n(b'c', community));
        b.extend([0xa2, 0x82, 0x00, 0xf0]);
        b.resize(300, 0);
        v4(161, &b)
    };
    let cldap = |id_len: u8| {
        let mut b = vec![0x30, 0x84, 0, 0, 0, 0x40, 0x02, id_len];
        b.extend(std::iter::repeat_n(1, id_len as usize));
        b.extend([0x64, 0x84, 0, 0, 0, 0x30]);
        b.resize(80, 0);
        v4(389, &b)
    };
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("IPv6: 7 headers, then a non-first fragment header", v6(53, &[0, 60, 43, 60, 60, 43, 60]).fragment_offset(185).build(), XDP_DROP),
        (
            "IPv6: 8 headers, then a non-first fragment header (9: refused)",
            v6(53, &[0, 60, 43, 60, 60, 43, 60, 60]).fragment_offset(185).build(),
            XDP_PASS,
        ),
        ("IPv6: 9 headers, the last a first fragment", v6(53, &[0, 60, 43, 60, 60, 43, 60, 60, 44]).build(), XDP_PASS),
        ("DNS ANY, 16 labels", dns_any(16), XDP_DROP),
        ("DNS ANY, 17 labels (not walked)", dns_any(17), XDP_PASS),
        ("SNMP GetResponse, 48-byte community", snmp(48), XDP_DROP),
        ("SNMP GetResponse, 49-byte community", snmp(49), XDP_PASS),
        ("CLDAP searchResEntry, 4-byte messageID", cldap(4), XDP_DROP),
        ("CLDAP searchResEntry, 5-byte messageID", cldap(5), XDP_PASS),
    ];
    for (what, pkt, want) in cases {
        let model = f.model.decide(&pkt);
        assert_eq!(model.action(), want, "{what}: the model says {model:?}");
        assert_eq!(f.run(&pkt), want, "{what}: the program disagrees with the model ({model:?}): {}", hex(&pkt));
    }
}
