//! Verdict table: each case is a packet and the outcome a user relies on,
//! checked against the loaded XDP program (BPF_PROG_TEST_RUN) and the model.

mod common;
use common::*;

struct Case {
    what: &'static str,
    pkt: Vec<u8>,
    expect: Expect,
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    Reason(usize),
    /// victim prefix index in `Slots`, vector name, verdict
    Verdict(usize, &'static str, usize),
}

fn case(what: &'static str, pkt: P, expect: Expect) -> Case {
    Case { what, pkt: pkt.build(), expect }
}

#[test]
fn verdict_table() {
    let mut f = Fixture::new();
    f.set_now(100 * SEC);
    let slots = [
        f.policy(
            "203.0.113.0/24",
            policy(Enforce, 0, &[("memcached", Drop), ("chargen", Drop), ("dns", Pass), ("ntp", limit_pps(1000, 3)), ("fragment", Drop)]),
        ),
        f.policy("203.0.113.10/32", policy(Enforce, 0, &[("memcached", Drop), ("dns", Drop)])),
        f.policy("203.0.113.20/32", policy(Monitor, 0, &[("memcached", Drop), ("ntp", limit_pps(10, 1))])),
        f.policy("203.0.113.30/32", policy(Enforce, 50 * SEC, &[("memcached", Drop)])),
        f.policy("2001:db8:2::/64", policy(Enforce, 0, &[("memcached", Drop), ("fragment", Drop), ("ssdp", Drop)])),
        f.policy("192.0.2.128/25", policy(Enforce, 200 * SEC, &[("ssdp", Drop)])),
    ];
    f.allow("198.51.100.53/32");
    f.allow("2001:db8:1::53/128");
    use Expect::*;
    let cases = vec![
        case(
            "memcached reply to a /24 victim is dropped",
            P::udp4("198.51.100.7:11211", "203.0.113.5:40001"),
            Verdict(0, "memcached", verdict::DROPPED),
        ),
        case(
            "the /32 wins over the /24 (dns dropped there)",
            P::udp4("198.51.100.7:53", "203.0.113.10:40001"),
            Verdict(1, "dns", verdict::DROPPED),
        ),
        case("dns to the /24 passes by rule", P::udp4("198.51.100.7:53", "203.0.113.5:40001"), Verdict(0, "dns", verdict::PASSED)),
        case(
            "a vector with no rule passes (ssdp on the /24)",
            P::udp4("198.51.100.7:1900", "203.0.113.5:1"),
            Verdict(0, "ssdp", verdict::PASSED),
        ),
        case(
            "vector port as destination only: not a vector",
            P::udp4("198.51.100.7:40001", "203.0.113.5:11211"),
            Reason(reason::NO_VECTOR),
        ),
        case("ordinary UDP passes without a lookup", P::udp4("198.51.100.7:40000", "203.0.113.5:443"), Reason(reason::NO_VECTOR)),
        case("TCP from port 11211 is not UDP", P::udp4("198.51.100.7:11211", "203.0.113.5:40001").protocol(6), Reason(reason::NOT_UDP)),
        case("memcached to an address with no policy", P::udp4("198.51.100.7:11211", "192.0.2.10:40001"), Reason(reason::NO_POLICY)),
        case("allowlisted source passes", P::udp4("198.51.100.53:11211", "203.0.113.5:40001"), Reason(reason::ALLOWLISTED)),
        case(
            "monitor mode counts and passes",
            P::udp4("198.51.100.7:11211", "203.0.113.20:40001"),
            Verdict(2, "memcached", verdict::MONITORED),
        ),
        case("expired policy stops acting", P::udp4("198.51.100.7:11211", "203.0.113.30:40001"), Reason(reason::EXPIRED)),
        case("unexpired policy with expiry acts", P::udp4("198.51.100.7:1900", "192.0.2.200:1"), Verdict(5, "ssdp", verdict::DROPPED)),
        case(
            "IPv4 non-first fragment is the fragment vector",
            P::udp4("198.51.100.7:11211", "203.0.113.5:1").fragment_offset(185),
            Verdict(0, "fragment", verdict::DROPPED),
        ),
        case(
            "IPv4 first fragment is classified by port",
            P::udp4("198.51.100.7:53", "203.0.113.5:1").more_fragments(),
            Verdict(0, "dns", verdict::PASSED),
        ),
        case(
            "IPv4 with options",
            P::udp4("198.51.100.7:11211", "203.0.113.5:1").ipv4_options(10),
            Verdict(0, "memcached", verdict::DROPPED),
        ),
        case(
            "802.1Q tagged",
            P::udp4("198.51.100.7:11211", "203.0.113.5:1").vlans(&[(0x8100, 100)]),
            Verdict(0, "memcached", verdict::DROPPED),
        ),
        case(
            "802.1ad + 802.1Q (QinQ)",
            P::udp4("198.51.100.7:11211", "203.0.113.5:1").vlans(&[(0x88a8, 10), (0x8100, 100)]),
            Verdict(0, "memcached", verdict::DROPPED),
        ),
        case(
            "three VLAN tags: parse error, passed",
            P::udp4("198.51.100.7:11211", "203.0.113.5:1").vlans(&[(0x88a8, 1), (0x8100, 2), (0x8100, 3)]),
            Reason(reason::PARSE_ERROR),
        ),
        case(
            "IPv6 memcached dropped",
            P::udp6("[2001:db8:1::7]:11211", "[2001:db8:2::10]:40001"),
            Verdict(4, "memcached", verdict::DROPPED),
        ),
        case(
            "IPv6 through hop-by-hop, routing, dest-opts",
            P::udp6("[2001:db8:1::7]:1900", "[2001:db8:2::10]:1").ext_headers(&[0, 43, 60]),
            Verdict(4, "ssdp", verdict::DROPPED),
        ),
        case(
            "IPv6 non-first fragment",
            P::udp6("[2001:db8:1::7]:11211", "[2001:db8:2::10]:1").fragment_offset(100),
            Verdict(4, "fragment", verdict::DROPPED),
        ),
        case(
            "IPv6 first fragment classified by port",
            P::udp6("[2001:db8:1::7]:11211", "[2001:db8:2::10]:1").more_fragments(),
            Verdict(4, "memcached", verdict::DROPPED),
        ),
        case("IPv6 allowlisted source", P::udp6("[2001:db8:1::53]:11211", "[2001:db8:2::10]:1"), Reason(reason::ALLOWLISTED)),
        case("IPv6 outside the victim prefix", P::udp6("[2001:db8:1::7]:11211", "[2001:db8:3::10]:1"), Reason(reason::NO_POLICY)),
        case(
            "IPv6 through 8 extension headers (the most promised)",
            P::udp6("[2001:db8:1::7]:1900", "[2001:db8:2::10]:1").ext_headers(&[0, 43, 60, 60, 60, 60, 60, 60]),
            Verdict(4, "ssdp", verdict::DROPPED),
        ),
        case(
            "IPv6 8 extension headers ending in a fragment header",
            P::udp6("[2001:db8:1::7]:1900", "[2001:db8:2::10]:1").ext_headers(&[0, 43, 60, 60, 60, 60, 60, 44]),
            Verdict(4, "ssdp", verdict::DROPPED),
        ),
        case(
            "IPv6 9 extension headers: parse error, passed",
            P::udp6("[2001:db8:1::7]:11211", "[2001:db8:2::10]:1").ext_headers(&[60; 9]),
            Reason(reason::PARSE_ERROR),
        ),
        case(
            "IPv6 9th extension header a non-first fragment: still a parse error, not the fragment vector",
            P::udp6("[2001:db8:1::7]:11211", "[2001:db8:2::10]:1").ext_headers(&[0, 43, 60, 60, 60, 60, 60, 60]).fragment_offset(100),
            Reason(reason::PARSE_ERROR),
        ),
        case("IPv6 ESP is not UDP", P::udp6("[2001:db8:1::7]:11211", "[2001:db8:2::10]:1").protocol(50), Reason(reason::NOT_UDP)),
        case("rate limit: 1st in burst", P::udp4("198.51.100.123:123", "203.0.113.5:1"), Verdict(0, "ntp", verdict::PASSED)),
        case("rate limit: 2nd in burst", P::udp4("198.51.100.123:123", "203.0.113.5:1"), Verdict(0, "ntp", verdict::PASSED)),
        case("rate limit: 3rd in burst", P::udp4("198.51.100.123:123", "203.0.113.5:1"), Verdict(0, "ntp", verdict::PASSED)),
        case("rate limit: over the burst", P::udp4("198.51.100.123:123", "203.0.113.5:1"), Verdict(0, "ntp", verdict::RATE_LIMITED)),
        case(
            "monitor + limit: 1st is within the burst",
            P::udp4("198.51.100.123:123", "203.0.113.20:1"),
            Verdict(2, "ntp", verdict::PASSED),
        ),
        case(
            "monitor + limit: 2nd is over, monitored and passed",
            P::udp4("198.51.100.123:123", "203.0.113.20:1"),
            Verdict(2, "ntp", verdict::MONITORED),
        ),
    ];
    let mut truncated = P::udp4("198.51.100.7:11211", "203.0.113.5:1").build();
    truncated.truncate(14 + 20 + 1);
    let mut bad_ihl = P::udp4("198.51.100.7:11211", "203.0.113.5:1").build();
    bad_ihl[14] = 0x44;
    let mut bad_version = P::udp4("198.51.100.7:11211", "203.0.113.5:1").build();
    bad_version[14] = 0x65;
    let extra = [
        Case { what: "UDP header cut off: parse error, passed", pkt: truncated, expect: Expect::Reason(reason::PARSE_ERROR) },
        Case { what: "IHL 4: parse error, passed", pkt: bad_ihl, expect: Expect::Reason(reason::PARSE_ERROR) },
        Case { what: "IPv4 ethertype with version 6: parse error", pkt: bad_version, expect: Expect::Reason(reason::PARSE_ERROR) },
        Case {
            what: "ARP is not UDP",
            pkt: {
                let mut p = vec![0u8; 60];
                p[12] = 0x08;
                p[13] = 0x06;
                p
            },
            expect: Expect::Reason(reason::NOT_UDP),
        },
    ];

    let mut failures = Vec::new();
    for c in cases.iter().chain(extra.iter()) {
        let expected = match c.expect {
            Expect::Reason(r) => Outcome::Reason(r),
            Expect::Verdict(i, vec, verdict) => Outcome::Verdict { slot: slots[i], vector: v(vec), verdict },
        };
        let model = f.model.decide(&c.pkt);
        let got = f.run(&c.pkt);
        if model != expected || got != expected.action() {
            failures.push(format!("{}: expected {expected:?} (action {}), program {got}, model {model:?}", c.what, expected.action()));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));

    // Counters: every case was counted once, under its reason or verdict.
    let reasons = f.dp.reason_counters().unwrap();
    for (r, name) in reason::NAMES.iter().enumerate() {
        let want = cases.iter().chain(extra.iter()).filter(|c| matches!(c.expect, Expect::Reason(x) if x == r)).count() as u64;
        assert_eq!(reasons[r].packets, want, "reason {name}");
    }
    let per_vec = f.dp.vector_counters().unwrap();
    let drops = per_vec.iter().map(|c| c.by_verdict[verdict::DROPPED].packets).sum::<u64>();
    let want = cases.iter().filter(|c| matches!(c.expect, Expect::Verdict(_, _, verdict::DROPPED))).count() as u64;
    assert_eq!(drops, want, "dropped packets over all vectors");
    let pol = f.dp.policy_counters(slots[0]).unwrap();
    assert_eq!(pol[v("ntp") as usize].by_verdict[verdict::RATE_LIMITED].packets, 1);
    assert_eq!(pol[v("ntp") as usize].by_verdict[verdict::PASSED].packets, 3);
}

/// The default profile against real-format replies: attack replies are dropped
/// by signature, the victim's own DNS and NTP answers pass.
#[test]
fn signatures_with_the_default_profile() {
    use ampguard::{dataplane::rules::DpPolicy, profiles::builtin_default};
    use ampguard_test_support::payloads::*;
    let mut f = Fixture::new();
    f.set_now(100 * SEC);
    let rules = builtin_default().iter().map(|(name, spec)| (v(name), spec.resolve().unwrap())).collect();
    let slot = f.policy("203.0.113.10/32", DpPolicy { mode: Enforce, expires_ns: 0, rules });
    let pkt =
        |sport: u16, payload: Vec<u8>| P::udp4(&format!("198.51.100.7:{sport}"), "203.0.113.10:40001").payload_bytes(&payload).build();
    let cases: Vec<(&str, Vec<u8>, &str, usize)> = vec![
        ("NTP monlist reply (440 B, mode 7)", pkt(123, ntp_monlist_reply()), "ntp", verdict::DROPPED),
        ("NTP mode 6 control reply", pkt(123, ntp_mode6_reply()), "ntp", verdict::DROPPED),
        ("NTP mode 4 server reply (48 B)", pkt(123, ntp_mode4_reply()), "ntp", verdict::PASSED),
        ("DNS ANY answer over 1,000 B", pkt(53, dns_any_answer()), "dns", verdict::DROPPED),
        ("DNS answer with 12 records", pkt(53, dns_response("example.com", 1, 12, 0)), "dns", verdict::DROPPED),
        ("small DNS A answer", pkt(53, dns_a_answer()), "dns", verdict::PASSED),
        ("memcached STAT reply", pkt(11211, memcached_stat_reply()), "memcached", verdict::DROPPED),
        ("memcached VALUE reply", pkt(11211, memcached_value_reply()), "memcached", verdict::DROPPED),
        ("SSDP 200 OK", pkt(1900, ssdp_ok_reply()), "ssdp", verdict::DROPPED),
        ("CLDAP searchResEntry", pkt(389, cldap_search_res_entry()), "cldap", verdict::DROPPED),
        ("SNMP GetResponse over 512 B", pkt(161, snmp_get_response(40)), "snmp", verdict::DROPPED),
        ("small SNMP GetResponse", pkt(161, snmp_get_response(2)), "snmp", verdict::PASSED),
        ("chargen", pkt(19, chargen_reply()), "chargen", verdict::DROPPED),
        ("qotd", pkt(17, qotd_reply()), "qotd", verdict::DROPPED),
    ];
    let mut failures = Vec::new();
    for (what, p, vec, want) in &cases {
        let expected = Outcome::Verdict { slot, vector: v(vec), verdict: *want };
        let model = f.model.decide(p);
        let got = f.run(p);
        if model != expected || got != expected.action() {
            failures.push(format!("{what}: expected {expected:?}, program {got}, model {model:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A policy added into a slot a removed one used starts from zero on every
/// vector and verdict: `policy_counters` is what the API, `top` and /metrics
/// show for it (the counters are zeroed with one batched write).
#[test]
fn a_reused_slot_starts_with_zero_counters() {
    let mut f = Fixture::new();
    let rules = &[("memcached", Drop), ("dns", Pass), ("ntp", limit_pps(1000, 3))];
    let old = f.policy("203.0.113.10/32", policy(Enforce, 0, rules));
    for (sport, n) in [(11211, 5), (53, 3), (123, 7)] {
        for _ in 0..n {
            f.run(&P::udp4(&format!("198.51.100.7:{sport}"), "203.0.113.10:40001").build());
        }
    }
    let counted: u64 = f.dp.policy_counters(old).unwrap().iter().flat_map(|c| c.by_verdict.iter()).map(|x| x.packets).sum();
    assert_eq!(counted, 15, "the old policy counted its packets");
    f.remove("203.0.113.10/32");
    let new = f.policy("203.0.113.20/32", policy(Enforce, 0, rules));
    assert_eq!(new, old, "the free list hands the slot out again");
    let left: Vec<_> =
        f.dp.policy_counters(new)
            .unwrap()
            .into_iter()
            .enumerate()
            .filter(|(_, c)| c.by_verdict.iter().any(|x| x.packets != 0 || x.bytes != 0))
            .collect();
    assert!(left.is_empty(), "counters carried over into the new policy: {left:?}");
    assert_eq!(f.run(&P::udp4("198.51.100.7:11211", "203.0.113.20:40001").build()), XDP_DROP);
    assert_eq!(f.dp.policy_counters(new).unwrap()[v("memcached") as usize].by_verdict[verdict::DROPPED].packets, 1);
}
