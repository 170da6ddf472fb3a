//! The decision: given a parsed packet, pass or drop, and count why.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_xdp_load_bytes},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use core::{
    ptr::{read_volatile, write_volatile},
    sync::atomic::{compiler_fence, Ordering},
};

use xdp_common::{
    bucket::{self, BucketState, LimitCfg, Rate},
    counters::{cache_index, reason, verdict, Counter},
    maps,
    policy::{action, cond, mode, Config, RuleCfg, Sample, NO_CELL, NO_SLOT, SAMPLE_BYTES},
    vector::{self, MAX_VECTORS},
};

use crate::{
    classify::{port_vector, victim_slot},
    maps::*,
    meter::meter,
    parse::{be16, parse, read, Parsed, L3},
    signature,
};

#[inline(always)]
pub fn decide(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (l3, l4, vector) = match parse(ctx) {
        Parsed::Udp { l3, l4, sport } => {
            let v = port_vector(sport);
            if v == vector::NONE {
                return pass(reason::NO_VECTOR, len);
            }
            (l3, Some(l4), v)
        }
        Parsed::Fragment { l3 } => (l3, None, vector::FRAGMENT),
        Parsed::NotUdp => return pass(reason::NOT_UDP, len),
        Parsed::ParseError => return pass(reason::PARSE_ERROR, len),
    };
    let vector = vector as usize;
    if vector >= MAX_VECTORS {
        return pass(reason::NO_VECTOR, len);
    }

    let slot = victim_slot(&l3);
    let found = if slot == NO_SLOT { None } else { AG_POLICIES.get(slot) };
    let policy = match found {
        Some(p) if p.mode != mode::UNUSED => p,
        _ => {
            meter(&l3, vector, len, None, false);
            return pass(reason::NO_POLICY, len);
        }
    };
    if allowlisted(&l3) {
        return pass(reason::ALLOWLISTED, len);
    }
    // The settings, read once for the signature thresholds, the test clock and
    // the sampler (each used to look the entry up again).
    let cfg = AG_CONFIG.get(0);
    let cell = policy.cells[vector];
    // A plain drop is a bit of the policy: no rule entry to read.
    let (action, limiter) = if policy.drop_mask & (1u32 << vector) != 0 {
        (action::DROP, 0)
    } else {
        match AG_RULES.get(cell) {
            Some(e) => {
                let rule = e.rule;
                let hold = rule.flags == 0 || conditions_hold(ctx, &rule, vector as u8, l4, cfg);
                (if hold { rule.on_match } else { rule.otherwise }, e.limiter)
            }
            None => (action::PASS, 0),
        }
    };
    // The clock only where it is needed: a policy with an expiry, or a limit.
    let now = if policy.expires_ns != 0 || action == action::LIMIT { now_ns(cfg) } else { 0 };
    if policy.expired(now) {
        meter(&l3, vector, len, cfg, true);
        return pass(reason::EXPIRED, len);
    }

    let mut v = match action {
        action::DROP => verdict::DROPPED,
        action::LIMIT => match AG_LIMITERS.get_ptr_mut(limiter) {
            // Safety: a valid map value pointer; CPUs share it through
            // compare-and-swap only (see limit_admits).
            Some(l) => unsafe {
                if limit_admits(&(*l).cfg, &mut (*l).state, now, len) {
                    verdict::PASSED
                } else {
                    verdict::RATE_LIMITED
                }
            },
            None => verdict::PASSED,
        },
        _ => verdict::PASSED,
    };
    if policy.mode == mode::MONITOR && v != verdict::PASSED {
        v = verdict::MONITORED;
    }

    count_rule(cell, policy.gen, v, len);
    count_vector(vector, v, len);
    if v != verdict::PASSED {
        sample(ctx, cfg, slot, vector as u8, v as u8, len);
    }
    // What reaches the victim is metered for detection; what a policy drops
    // is in the policy's counters.
    if v == verdict::PASSED || v == verdict::MONITORED {
        meter(&l3, vector, len, cfg, true);
    }
    if v == verdict::DROPPED || v == verdict::RATE_LIMITED {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// Copy the first bytes of a dropped, limited or monitored packet to the ring
/// buffer, at most `samples_per_sec` a second per CPU. Off (one test of the
/// settings) unless a capture is running.
#[inline(always)]
fn sample(ctx: &XdpContext, cfg: Option<&Config>, slot: u32, vector: u8, v: u8, len: u64) {
    let limit = match cfg {
        Some(c) if c.samples_per_sec != 0 => c.samples_per_sec as u64,
        _ => return,
    };
    let now = now_ns(cfg);
    let Some(st) = AG_SAMPLER.get_ptr_mut(0) else { return };
    unsafe {
        if now.wrapping_sub((*st).window_ns) >= 1_000_000_000 {
            (*st).window_ns = now;
            (*st).count = 0;
        }
        if (*st).count >= limit {
            return;
        }
        (*st).count += 1;
    }
    let Some(mut e) = AG_SAMPLES.reserve::<Sample>(0) else { return };
    let cap = if len < SAMPLE_BYTES as u64 { len as u32 } else { SAMPLE_BYTES as u32 };
    // Same value for 1..=128 (frames are never empty), written so the verifier
    // can see the length is never 0.
    let cap = (cap.wrapping_sub(1) & (SAMPLE_BYTES as u32 - 1)) + 1;
    let p = e.as_mut_ptr();
    // Safety: p points to a reserved Sample; the helper bounds the copy by cap.
    let copied = unsafe {
        (*p).ts_ns = now;
        (*p).slot = slot;
        (*p).ifindex = (*ctx.ctx).ingress_ifindex;
        (*p).orig_len = len as u32;
        (*p).cap_len = cap as u16;
        (*p).vector = vector;
        (*p).verdict = v;
        bpf_xdp_load_bytes(ctx.ctx, 0, (*p).data.as_mut_ptr() as *mut _, cap) == 0
    };
    if copied {
        e.submit(0);
    } else {
        e.discard(0);
    }
}

/// A conditional rule's test: payload size within bounds, and the vector's
/// reflection signature. Non-first fragments have no UDP header: payload 0,
/// no signature.
#[inline(always)]
fn conditions_hold(ctx: &XdpContext, rule: &RuleCfg, vector: u8, l4: Option<usize>, cfg: Option<&Config>) -> bool {
    let (p, plen) = match l4.and_then(|o| be16(ctx, o + 4).map(|ul| (o + 8, ul))) {
        Some((p, ul)) if read::<[u8; 8]>(ctx, p - 8).is_some() => (p, (ul as usize).saturating_sub(8)),
        _ => (0, 0),
    };
    if rule.flags & cond::SIZE != 0 && (plen < rule.min_len as usize || plen > rule.max_len as usize) {
        return false;
    }
    if rule.flags & cond::SIGNATURE != 0 {
        let cfg = match cfg {
            Some(c) => *c,
            None => Config::DEFAULT,
        };
        return p != 0 && signature::matches(ctx, vector, p, plen, &cfg);
    }
    true
}

/// The clock for expiry and buckets: CLOCK_MONOTONIC, coarse (it advances once
/// per tick), or the test clock when one is set in `cfg` (AG_CONFIG).
///
/// `bpf_ktime_get_coarse_ns` costs ~14 ns (PERF-FACTS.md), most of an attack
/// packet's budget. The coarse clock only changes when jiffies do, so each CPU
/// caches it and asks again only when `bpf_jiffies64` (a plain load) has moved.
/// The cache can lag by at most one tick (jiffies and the coarse clock are
/// updated one after the other in the same tick handler): expiry may be up to
/// a tick late, and a bucket refills a tick later, never by less.
#[inline(always)]
pub(crate) fn now_ns(cfg: Option<&Config>) -> u64 {
    if let Some(cfg) = cfg {
        if cfg.time_override_ns != 0 {
            return cfg.time_override_ns;
        }
    }
    let j = unsafe { bpf_jiffies64() };
    match AG_CLOCK.get_ptr_mut(0) {
        Some(c) => unsafe {
            if (*c).jiffies != j || (*c).ns == 0 {
                (*c).ns = bpf_ktime_get_coarse_ns();
                (*c).jiffies = j;
            }
            (*c).ns
        },
        None => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

/// Source in the allowlist? The /16 summary answers "no" for almost every
/// attack source with one read of a cache-resident word; the /24 bitmap
/// and the exact LPM trie decide the rest.
#[inline(always)]
pub(crate) fn allowlisted(l3: &L3) -> bool {
    if l3.v6 {
        let src = l3.src6();
        let b = maps::allow_bit_v6(u32::from_be_bytes([src[0], src[1], src[2], src[3]]));
        bit_set(maps::allow_summary_bit(b)) && bit_set(b) && AG_ALLOW_V6.get(Key::new(128, src)).is_some()
    } else {
        let src = l3.src4();
        let b = maps::allow_bit_v4(u32::from_be_bytes(src));
        bit_set(maps::allow_summary_bit(b)) && bit_set(b) && AG_ALLOW_V4.get(Key::new(32, src)).is_some()
    }
}

#[inline(always)]
fn bit_set(bit: u32) -> bool {
    match AG_ALLOW_BITS.get(bit >> 6) {
        Some(w) => *w & (1u64 << (bit & 63)) != 0,
        None => false,
    }
}

#[inline(always)]
fn pass(why: usize, len: u64) -> u32 {
    if let Some(c) = AG_REASONS.get_ptr_mut(why as u32) {
        unsafe { (*c).add(len) };
    }
    XDP_PASS
}

/// Count a packet of a rule entry in this CPU's cache (see
/// xdp_common::counters): a hit adds to the cached counts; a miss folds
/// what the cache entry holds into the shared totals, then takes it over.
#[inline(always)]
pub(crate) fn count_rule(cell: u32, gen: u32, v: usize, len: u64) {
    if cell == NO_CELL {
        return;
    }
    let Some(e) = AG_COUNT_CACHE.get_ptr_mut(cache_index(cell)) else { return };
    // Safety: a valid per-CPU map value; only this CPU writes it, and XDP
    // does not nest on a CPU.
    unsafe {
        if (*e).cell == cell && (*e).gen == gen {
            (*e).by_verdict[v].add(len);
            return;
        }
        // Odd while folding: the controller's read retries over it. The
        // fences keep the compiler from moving the stores across each other.
        write_volatile(&mut (*e).seq, (*e).seq.wrapping_add(1));
        compiler_fence(Ordering::SeqCst);
        let (old_cell, old_gen) = ((*e).cell, (*e).gen);
        if old_gen != 0 {
            if let (Some(r), Some(t)) = (AG_RULES.get_ptr(old_cell), AG_RULE_COUNTS.get_ptr_mut(old_cell)) {
                // Only into the totals of the policy the counts belong to.
                if read_volatile(&(*r).gen) == old_gen {
                    for i in 0..verdict::COUNT {
                        let c = (*e).by_verdict[i];
                        if c.packets != 0 {
                            atomic_add(&mut (*t).by_verdict[i].packets, c.packets);
                            atomic_add(&mut (*t).by_verdict[i].bytes, c.bytes);
                        }
                    }
                }
            }
        }
        compiler_fence(Ordering::SeqCst);
        (*e).cell = cell;
        (*e).gen = gen;
        (*e).by_verdict = [Counter::default(); verdict::COUNT];
        (*e).by_verdict[v] = Counter { packets: 1, bytes: len };
        compiler_fence(Ordering::SeqCst);
        write_volatile(&mut (*e).seq, (*e).seq.wrapping_add(1));
    }
}

/// Compare-and-swap attempts on one limiter dimension before the packet is
/// refused (each failure means another CPU admitted one in between).
const CAS_TRIES: usize = 8;

/// GCRA (xdp_common::bucket) on a limiter shared by every CPU: a packet that
/// does not conform writes nothing; one that does moves each dimension's
/// theoretical arrival time with one compare-and-swap, so two CPUs never
/// spend the same token. If the byte dimension refuses after the packet
/// dimension took its token, the token is given back.
#[inline(always)]
unsafe fn limit_admits(cfg: &LimitCfg, st: *mut BucketState, now_ns: u64, len: u64) -> bool {
    let now = bucket::ticks(now_ns);
    if cfg.packets.rate != 0 && !take(&cfg.packets, &mut (*st).tat_packets, now, 1) {
        return false;
    }
    if cfg.bytes.rate != 0 && !take(&cfg.bytes, &mut (*st).tat_bytes, now, len) {
        if cfg.packets.rate != 0 {
            atomic_add(&mut (*st).tat_packets, cfg.packets.cost(1).wrapping_neg());
        }
        return false;
    }
    true
}

#[inline(always)]
unsafe fn take(rate: &Rate, tat: *mut u64, now: u64, n: u64) -> bool {
    let mut cur = read_volatile(tat);
    for _ in 0..CAS_TRIES {
        let Some(next) = rate.admit(cur, now, n) else { return false };
        let (seen, swapped) = core::intrinsics::atomic_cxchg::<
            u64,
            { core::intrinsics::AtomicOrdering::Relaxed },
            { core::intrinsics::AtomicOrdering::Relaxed },
        >(tat, cur, next);
        if swapped {
            return true;
        }
        cur = seen;
    }
    false
}

#[inline(always)]
fn count_vector(vector: usize, v: usize, len: u64) {
    if let Some(c) = AG_VEC_COUNTERS.get_ptr_mut(vector as u32) {
        unsafe { (*c).by_verdict[v].add(len) };
    }
}

/// `*dst += v` as one atomic instruction (BPF_ATOMIC | BPF_ADD, the `lock
/// xadd` of every BPF CPU version; the result is not used, so no BPF_FETCH).
/// (BPF_CMPXCHG, in `take`, needs the v3 instruction set: LLVM 22's default.)
/// core's AtomicU64 has no fetch_add here: the target declares no
/// compare-and-swap.
#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, v: u64) {
    core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(dst, v);
}
