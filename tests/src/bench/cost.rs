//! Part 1: per-packet cost through BPF_PROG_TEST_RUN.
//!
//! Every subject (the bare XDP_PASS program, the count-and-drop program and
//! one ampguard path per packet kind) runs `repeat` times per call; the kernel
//! reports the mean ns per run (integer ns, truncated). Rounds interleave the
//! subjects, rotating which goes first, so slow phases of a noisy machine hit
//! all of them; the figure is the median over rounds, and the ratio is that
//! median over the bare program's median from the same run.
//!
//! Each ampguard path is checked, not assumed: the verdict of the last run,
//! and the counter that path increments must have moved by exactly the number
//! of runs (so every repeat took the path being timed).

use ampguard::{
    clock,
    dataplane::{
        rules::{CondRule, Conditions, DpPolicy, Limit, Mode, Rule, Verb},
        DataPlane,
    },
};
use ampguard_test_support::{packet::PacketBuilder as P, payloads};
use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use ipnet::IpNet;
use xdp_common::{
    bucket,
    counters::{reason, verdict},
    vector,
};

use super::tables::vid;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The bench's own victims, added to the realistic tables.
/// Drop memcached; the policy has an expiry (every API and alert policy has a TTL).
pub const V_DROP: &str = "203.0.113.10/32";
pub const V_LIMITED: &str = "203.0.113.11/32";
pub const V_UNDER: &str = "203.0.113.12/32";
pub const V_FRAG: &str = "203.0.113.13/32";
pub const V_ALLOW: &str = "203.0.113.14/32";
/// Drop memcached; the policy has no expiry (`ttl_secs: 0`).
pub const V_DROP_NO_TTL: &str = "203.0.113.15/32";
/// NTP and DNS: drop on the reflection signature, else limit (a limit that never runs out).
pub const V_SIG: &str = "203.0.113.16/32";
pub const V6_DROP: &str = "2001:db8:2::10/128";
/// Expiry of the bench's policies that have one: a day after the bench starts.
pub const TTL_NS: u64 = 24 * 3600 * 1_000_000_000;
/// The allowlisted source of the "allowlisted" path (the lab's client).
pub const ALLOWED_SRC: &str = "192.0.2.10/32";
/// The limit of the rate-limited path, also used by the nftables rule of part 2.
pub const LIMIT_PPS: u64 = 10_000;
pub const LIMIT_BURST: u64 = 100;

pub const BENCH_V4_VICTIMS: usize = 7;
pub const BENCH_V6_VICTIMS: usize = 1;
pub const BENCH_ALLOW: usize = 1;

/// Payload that makes a 64-byte IPv4/UDP frame (14 + 20 + 8 + 22).
pub const PAYLOAD_64: usize = 22;

/// Slots of the bench's victims.
pub struct BenchSlots {
    pub drop: u32,
    pub drop_no_ttl: u32,
    pub sig: u32,
    pub limited: u32,
    pub under: u32,
    pub frag: u32,
    pub v6: u32,
}

fn base_rules() -> Vec<(u8, Rule)> {
    let mut r: Vec<(u8, Rule)> = ["memcached", "chargen", "qotd", "ssdp", "cldap"].iter().map(|n| (vid(n), Rule::Drop)).collect();
    r.push((vector::FRAGMENT, Rule::Drop));
    r
}

fn with(extra: (u8, Rule)) -> DpPolicy {
    let mut rules = base_rules();
    rules.retain(|(v, _)| *v != extra.0);
    rules.push(extra);
    DpPolicy { mode: Mode::Enforce, expires_ns: 0, rules }
}

/// The bench's IPv4 victims (for the table histogram and chunk count).
pub const BENCH_V4: [&str; BENCH_V4_VICTIMS] = [V_DROP, V_LIMITED, V_UNDER, V_FRAG, V_ALLOW, V_DROP_NO_TTL, V_SIG];

/// `Rule::Cond`: drop when the vector's reflection signature matches, else
/// limit (the default profile's rule for DNS and NTP; here with a bucket that
/// never runs out, so the "else" packets pass and are counted as passed).
pub fn signature_rule() -> Rule {
    Rule::Cond(CondRule {
        when: Conditions { signature: true, min_bytes: None, max_bytes: None },
        on_match: Verb::Drop,
        otherwise: Verb::Limit,
        limit: Some(Limit { pps: bucket::MAX_RATE, bytes_per_sec: 0, burst_packets: bucket::MAX_BURST, burst_bytes: 0 }),
    })
}

/// Limiters the bench's own victims use.
pub const BENCH_LIMITERS: u32 = 4;

pub fn limit_rule(pps: u64, burst: u64) -> Rule {
    Rule::Limit(Limit { pps, bytes_per_sec: 0, burst_packets: burst, burst_bytes: 0 })
}

/// Installs the bench's victims and the allowlisted source.
pub fn install(dp: &mut DataPlane) -> Result<BenchSlots> {
    let up = |dp: &mut DataPlane, v: &str, p: DpPolicy| -> Result<u32> {
        let net: IpNet = v.parse().expect("bench victim");
        dp.upsert_policy(net, &p).with_context(|| format!("policy for {v}"))
    };
    let ntp = vid("ntp");
    let expires_ns = clock::monotonic_ns() + TTL_NS;
    let mut sig = with((ntp, signature_rule()));
    sig.rules.push((vid("dns"), signature_rule()));
    let slots = BenchSlots {
        drop: up(dp, V_DROP, DpPolicy { expires_ns, ..with((vid("memcached"), Rule::Drop)) })?,
        drop_no_ttl: up(dp, V_DROP_NO_TTL, with((vid("memcached"), Rule::Drop)))?,
        sig: up(dp, V_SIG, sig)?,
        limited: up(dp, V_LIMITED, with((ntp, limit_rule(LIMIT_PPS, LIMIT_BURST))))?,
        under: up(dp, V_UNDER, with((ntp, limit_rule(bucket::MAX_RATE, bucket::MAX_BURST))))?,
        frag: up(dp, V_FRAG, with((vector::FRAGMENT, Rule::Drop)))?,
        v6: up(dp, V6_DROP, with((vid("memcached"), Rule::Drop)))?,
    };
    up(dp, V_ALLOW, with((vid("memcached"), Rule::Drop)))?;
    dp.add_allow(ALLOWED_SRC.parse().expect("allow prefix")).context("allowlist entry")?;
    Ok(slots)
}

/// Which counter a path must move.
#[derive(Clone, Copy)]
pub enum Check {
    Reason(usize),
    Verdict { slot: u32, vector: u8, verdict: usize },
}

impl Check {
    fn read(&self, dp: &DataPlane) -> Result<u64> {
        Ok(match *self {
            Check::Reason(r) => dp.reason_counters()?[r].packets,
            Check::Verdict { slot, vector, verdict } => dp.policy_counters(slot)?[vector as usize].by_verdict[verdict].packets,
        })
    }
}

pub struct Path {
    pub label: &'static str,
    pub what: String,
    pub pkt: Vec<u8>,
    pub expect: u32,
    pub check: Check,
    /// A second counter whose runs also count (the few packets a rate-limited
    /// path lets through as the bucket refills).
    pub also: Option<Check>,
    /// Target ratio to the bare program, if the issue sets one.
    pub target: Option<f64>,
}

pub fn paths(s: &BenchSlots) -> Vec<Path> {
    let memcached = vid("memcached");
    let ntp = vid("ntp");
    let v4 = |src: &str, dst: &str| P::udp4(src, dst).payload(PAYLOAD_64);
    vec![
        Path {
            label: "not UDP",
            what: "TCP 198.51.100.7:443 -> 203.0.113.10 (a protected victim)".into(),
            pkt: v4("198.51.100.7:443", "203.0.113.10:40001").protocol(6).build(),
            expect: XDP_PASS,
            check: Check::Reason(reason::NOT_UDP),
            also: None,
            target: Some(1.2),
        },
        Path {
            label: "UDP, non-vector port",
            what: "UDP 198.51.100.7:40000 -> 203.0.113.10".into(),
            pkt: v4("198.51.100.7:40000", "203.0.113.10:40001").build(),
            expect: XDP_PASS,
            check: Check::Reason(reason::NO_VECTOR),
            also: None,
            target: Some(1.2),
        },
        Path {
            label: "attack, dropped",
            what: "memcached 198.51.100.7:11211 -> 203.0.113.10/32 (drop; the policy expires in 24 h, so the clock is read: jiffies, then the per-CPU cache)".into(),
            pkt: v4("198.51.100.7:11211", "203.0.113.10:40001").build(),
            expect: XDP_DROP,
            check: Check::Verdict { slot: s.drop, vector: memcached, verdict: verdict::DROPPED },
            also: None,
            target: Some(2.0),
        },
        Path {
            label: "attack, dropped, policy without expiry",
            what: "memcached 198.51.100.7:11211 -> 203.0.113.15/32 (drop; no expiry: the clock is not read)".into(),
            pkt: v4("198.51.100.7:11211", "203.0.113.15:40001").build(),
            expect: XDP_DROP,
            check: Check::Verdict { slot: s.drop_no_ttl, vector: memcached, verdict: verdict::DROPPED },
            also: None,
            target: Some(2.0),
        },
        Path {
            label: "attack, rate-limited",
            what: format!("ntp 198.51.100.123:123 -> 203.0.113.11/32 (limit {LIMIT_PPS}/s burst {LIMIT_BURST}, bucket empty)"),
            pkt: v4("198.51.100.123:123", "203.0.113.11:40001").build(),
            expect: XDP_DROP,
            check: Check::Verdict { slot: s.limited, vector: ntp, verdict: verdict::RATE_LIMITED },
            also: Some(Check::Verdict { slot: s.limited, vector: ntp, verdict: verdict::PASSED }),
            target: Some(3.0),
        },
        Path {
            label: "attack, passed under the limit",
            what: "ntp 198.51.100.123:123 -> 203.0.113.12/32 (limit 10^11/s burst 10^10: never runs out)".into(),
            pkt: v4("198.51.100.123:123", "203.0.113.12:40001").build(),
            expect: XDP_PASS,
            check: Check::Verdict { slot: s.under, vector: ntp, verdict: verdict::PASSED },
            also: None,
            target: None,
        },
        Path {
            label: "NTP monlist reply dropped by signature",
            what: format!(
                "ntp 198.51.100.123:123 -> 203.0.113.16/32, mode 7 MON_GETLIST_1 reply ({} B payload); rule: drop on signature, else limit",
                payloads::ntp_monlist_reply().len()
            ),
            pkt: P::udp4("198.51.100.123:123", "203.0.113.16:40001").payload_bytes(&payloads::ntp_monlist_reply()).build(),
            expect: XDP_DROP,
            check: Check::Verdict { slot: s.sig, vector: ntp, verdict: verdict::DROPPED },
            also: None,
            target: None,
        },
        Path {
            label: "NTP mode 4 reply under a signature rule (passes the limit)",
            what: format!(
                "ntp 198.51.100.123:123 -> 203.0.113.16/32, mode 4 server reply ({} B); no signature, so the limit (never runs out) passes it",
                payloads::ntp_mode4_reply().len()
            ),
            pkt: P::udp4("198.51.100.123:123", "203.0.113.16:40001").payload_bytes(&payloads::ntp_mode4_reply()).build(),
            expect: XDP_PASS,
            check: Check::Verdict { slot: s.sig, vector: ntp, verdict: verdict::PASSED },
            also: None,
            target: None,
        },
        Path {
            label: "DNS ANY answer dropped by signature",
            what: format!(
                "dns 198.51.100.53:53 -> 203.0.113.16/32, ANY answer ({} B: over 512 B, matched by size before the question is walked); drop on signature, else limit",
                payloads::dns_any_answer().len()
            ),
            pkt: P::udp4("198.51.100.53:53", "203.0.113.16:40001").payload_bytes(&payloads::dns_any_answer()).build(),
            expect: XDP_DROP,
            check: Check::Verdict { slot: s.sig, vector: vid("dns"), verdict: verdict::DROPPED },
            also: None,
            target: None,
        },
        Path {
            label: "small DNS A answer under the signature rule",
            what: format!(
                "dns 198.51.100.53:53 -> 203.0.113.16/32, one A record for www.example.com ({} B; the signature walks its 3 labels to QTYPE 1: no match), passes the limit",
                payloads::dns_a_answer().len()
            ),
            pkt: P::udp4("198.51.100.53:53", "203.0.113.16:40001").payload_bytes(&payloads::dns_a_answer()).build(),
            expect: XDP_PASS,
            check: Check::Verdict { slot: s.sig, vector: vid("dns"), verdict: verdict::PASSED },
            also: None,
            target: None,
        },
        Path {
            label: "non-first fragment",
            what: "IPv4 fragment (offset 1480) 198.51.100.7 -> 203.0.113.13/32 (drop fragments)".into(),
            pkt: v4("198.51.100.7:11211", "203.0.113.13:40001").fragment_offset(185).build(),
            expect: XDP_DROP,
            check: Check::Verdict { slot: s.frag, vector: vector::FRAGMENT, verdict: verdict::DROPPED },
            also: None,
            target: None,
        },
        Path {
            label: "IPv6 attack, dropped",
            what: "memcached [2001:db8:1::7]:11211 -> 2001:db8:2::10/128 (drop; the IPv6 hash table of 10,000 prefixes, /128 probed first)".into(),
            pkt: P::udp6("[2001:db8:1::7]:11211", "[2001:db8:2::10]:40001").payload(PAYLOAD_64).build(),
            expect: XDP_DROP,
            check: Check::Verdict { slot: s.v6, vector: memcached, verdict: verdict::DROPPED },
            also: None,
            target: None,
        },
        Path {
            label: "allowlisted source",
            what: "memcached 192.0.2.10:11211 -> 203.0.113.14/32 (drop, but source allowlisted)".into(),
            pkt: v4("192.0.2.10:11211", "203.0.113.14:40001").build(),
            expect: XDP_PASS,
            check: Check::Reason(reason::ALLOWLISTED),
            also: None,
            target: None,
        },
    ]
}

/// One BPF_PROG_TEST_RUN call: (return value of the last run, mean ns per run).
///
/// The kernel's mean, which times the loop alone: it is truncated to whole ns
/// (±0.12 of a ratio when the bare program takes 8 ns, as on this machine's
/// Xeon), but the call's wall time is worse: on this machine kind each call
/// has 16-24 ms of fixed cost outside the loop (measured: 160-240 ns a run at
/// 100,000 repeats, against the kernel's 8-12), 8-12 ns a run at 2,000,000.
pub fn run(prog: &Xdp, pkt: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let r = prog.test_run(TestRunOptions { data_in: Some(pkt), repeat, ..Default::default() }).context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as f64))
}

pub struct Measured {
    pub label: String,
    pub what: String,
    pub frame_len: usize,
    /// Mean ns per run, one per round.
    pub samples: Vec<f64>,
    /// The bare program's mean, measured right before each sample: the
    /// machine's slow phases last seconds, so a pair meets the same one.
    pub paired_bare: Vec<f64>,
    pub target: Option<f64>,
    /// How the path was verified.
    pub checked: String,
}

impl Measured {
    pub fn median(&self) -> f64 {
        median(&self.samples)
    }

    /// Median over rounds of sample / its paired bare run.
    pub fn ratio(&self) -> f64 {
        median(&self.samples.iter().zip(&self.paired_bare).map(|(s, b)| s / b.max(1.0)).collect::<Vec<_>>())
    }

    /// Median over rounds of sample - its paired bare run, in ns.
    pub fn over_bare(&self) -> f64 {
        median(&self.samples.iter().zip(&self.paired_bare).map(|(s, b)| s - b).collect::<Vec<_>>())
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_unstable_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Label of the peer's row (see `peer.rs`).
pub const PEER_LABEL: &str = "xdp-filter (peer), memcached dropped";

/// Runs every subject `rounds` times (interleaved) and checks each path.
/// Returns the bare program first, then count-and-drop, then the peer
/// (xdp-filter, with the packet of "attack, dropped"), then the paths.
pub fn measure(
    dp: &DataPlane,
    bare: &Xdp,
    count_drop: &Xdp,
    peer: (&Xdp, &super::peer::Stats),
    paths: &[Path],
    rounds: usize,
    repeat: u32,
) -> Result<Vec<Measured>> {
    let ref_pkt = P::udp4("198.51.100.7:11211", "203.0.113.10:40001").payload(PAYLOAD_64).build();
    // Warm up (and empty the rate-limited bucket), then check each verdict once.
    for (prog, pkt) in [(bare, &ref_pkt), (count_drop, &ref_pkt)] {
        run(prog, pkt, repeat / 10)?;
    }
    let (peer, peer_stats) = peer;
    let (ret, _) = run(peer, &ref_pkt, repeat / 10)?;
    if ret != XDP_DROP {
        bail!("xdp-filter returned XDP action {ret} for the memcached packet, expected XDP_DROP: is `port 11211 -m src` configured?");
    }
    let peer_before = peer_stats.dropped()?;
    let ampguard = dp.program();
    for p in paths {
        let (ret, _) = run(ampguard, &p.pkt, repeat / 10)?;
        if ret != p.expect {
            bail!("path {:?}: XDP action {ret}, expected {}", p.label, p.expect);
        }
    }
    let before: Vec<(u64, u64)> =
        paths.iter().map(|p| Ok((p.check.read(dp)?, p.also.map(|c| c.read(dp)).transpose()?.unwrap_or(0)))).collect::<Result<_>>()?;

    const FIRST_PATH: usize = 3;
    let n = paths.len() + FIRST_PATH;
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); n];
    let mut paired: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (k + round) % n;
            paired[i].push(run(bare, &ref_pkt, repeat)?.1);
            let (ret, ns) = match i {
                0 => run(bare, &ref_pkt, repeat)?,
                1 => run(count_drop, &ref_pkt, repeat)?,
                2 => run(peer, &ref_pkt, repeat)?,
                _ => run(ampguard, &paths[i - FIRST_PATH].pkt, repeat)?,
            };
            if i == 2 && ret != XDP_DROP {
                bail!("xdp-filter: XDP action {ret} in round {round}");
            }
            if i >= FIRST_PATH && ret != paths[i - FIRST_PATH].expect {
                bail!("path {:?}: XDP action {ret} in round {round}", paths[i - FIRST_PATH].label);
            }
            samples[i].push(ns);
        }
        eprint!(".");
    }
    eprintln!();

    let runs = rounds as u64 * repeat as u64;
    let mut out = vec![
        Measured {
            label: "bare XDP_PASS (xdp_pass)".into(),
            what: "baseline: returns XDP_PASS, reads nothing".into(),
            frame_len: ref_pkt.len(),
            samples: samples[0].clone(),
            paired_bare: paired[0].clone(),
            target: None,
            checked: "-".into(),
        },
        Measured {
            label: "count and drop (xdp_count_drop)".into(),
            what: "baseline: per-CPU counter + XDP_DROP".into(),
            frame_len: ref_pkt.len(),
            samples: samples[1].clone(),
            paired_bare: paired[1].clone(),
            target: None,
            checked: "-".into(),
        },
    ];
    let peer_dropped = peer_stats.dropped()? - peer_before;
    if peer_dropped != runs {
        bail!("xdp-filter's XDP_DROP statistics moved by {peer_dropped} for {runs} runs");
    }
    out.push(Measured {
        label: PEER_LABEL.into(),
        what: format!("xdp-filter from xdp-tools (`{}`), the packet of \"attack, dropped\"", super::peer::COMMANDS),
        frame_len: ref_pkt.len(),
        samples: samples[2].clone(),
        paired_bare: paired[2].clone(),
        target: None,
        checked: format!("all {runs} runs in its XDP_DROP statistics"),
    });
    for (i, p) in paths.iter().enumerate() {
        let main = p.check.read(dp)? - before[i].0;
        let also = match p.also {
            Some(c) => c.read(dp)? - before[i].1,
            None => 0,
        };
        if main + also != runs {
            bail!("path {:?}: its counters moved by {} for {runs} runs: not every run took this path", p.label, main + also);
        }
        let checked = if p.also.is_some() {
            format!("{main} of {runs} runs limited, {also} passed as the bucket refilled")
        } else {
            format!("all {runs} runs counted")
        };
        out.push(Measured {
            label: p.label.into(),
            what: p.what.clone(),
            frame_len: p.pkt.len(),
            samples: samples[i + FIRST_PATH].clone(),
            paired_bare: paired[i + FIRST_PATH].clone(),
            target: p.target,
            checked,
        });
    }
    Ok(out)
}
