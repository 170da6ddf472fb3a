//! Rate limits for `limit` rules: GCRA, the Generic Cell Rate Algorithm (ITU-T
//! I.371; the "virtual scheduling" form), pure fixed-point maths shared by the
//! XDP program and the reference model, unit-tested on the host.
//!
//! A dimension (packets, or bytes) keeps one number, the theoretical arrival
//! time (TAT): when the bucket would be full again. A packet of cost c (1, or
//! its length) conforms if `max(TAT, now) + c * interval - now <= tolerance`
//! (`interval` = 1 / rate, `tolerance` = burst * interval); then TAT moves to
//! `max(TAT, now) + c * interval`. It is the token bucket of rate and burst,
//! with two properties the program needs on every core:
//! - a packet that does not conform writes nothing: only the CPUs that admit
//!   touch the shared state;
//! - an admission is one compare-and-swap of TAT per dimension
//!   (BPF_CMPXCHG), so CPUs racing on one limiter each spend their own share:
//!   the limit is exact however many CPUs the flood lands on.
//!
//! Units: time in ticks of 1/16 ns (a u64 holds 36 years of CLOCK_MONOTONIC);
//! `interval` in ticks with 20 fractional bits, so rates up to [`MAX_RATE`]
//! keep 6 significant digits. Fresh state (TAT 0) is a full bucket. Time going
//! backwards (the test clock, or a CPU whose cached coarse clock lags another's
//! by a tick) refills nothing: TAT stays ahead of it.

/// Ticks per ns.
pub const TICKS_PER_NS: u64 = 16;
/// Fractional bits of [`Rate::interval_fp`].
pub const INTERVAL_FRAC_BITS: u32 = 20;
/// Largest accepted rate, per second (packets or bytes): 10^11 (800 Gbit/s).
pub const MAX_RATE: u64 = 100_000_000_000;
/// Largest accepted bucket depth (packets or bytes): 10^10.
pub const MAX_BURST: u64 = 10_000_000_000;
/// Tolerances are capped here (about 9 years): sums with TAT never overflow.
pub const MAX_TOLERANCE: u64 = 1 << 62;

/// One dimension of a limit: a rate and a bucket depth. `rate == 0` = unlimited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    /// Tokens per second.
    pub rate: u64,
    /// Bucket depth in tokens.
    pub burst: u64,
    /// Ticks per token, `16e9 / rate`, with [`INTERVAL_FRAC_BITS`] fractional bits.
    pub interval_fp: u64,
    /// Ticks a full bucket holds: `burst * interval`, at most [`MAX_TOLERANCE`].
    pub tolerance: u64,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate { rate: 0, burst: 0, interval_fp: 0, tolerance: 0 };

    /// A rate with its interval and tolerance precomputed. Callers validate
    /// `rate <= MAX_RATE` and `1 <= burst <= MAX_BURST` first.
    pub const fn new(rate: u64, burst: u64) -> Self {
        if rate == 0 {
            return Self::UNLIMITED;
        }
        // Rounded up: a packet never costs less than its share, so the limit
        // is never exceeded by rounding.
        let interval_fp = (((TICKS_PER_NS * 1_000_000_000) as u128) << INTERVAL_FRAC_BITS).div_ceil(rate as u128);
        let tol = (burst as u128 * interval_fp) >> INTERVAL_FRAC_BITS;
        let tolerance = if tol > MAX_TOLERANCE as u128 { MAX_TOLERANCE } else { tol as u64 };
        Self { rate, burst, interval_fp: interval_fp as u64, tolerance }
    }

    /// Ticks `n` tokens are worth (n <= 65,535; no overflow: the integer part
    /// of the interval is at most 1.6e10 ticks).
    #[inline(always)]
    pub const fn cost(&self, n: u64) -> u64 {
        let whole = self.interval_fp >> INTERVAL_FRAC_BITS;
        let frac = self.interval_fp & ((1 << INTERVAL_FRAC_BITS) - 1);
        n * whole + ((n * frac) >> INTERVAL_FRAC_BITS)
    }

    /// The TAT after a packet of `n` tokens at `now` (ticks), if it conforms.
    #[inline(always)]
    pub const fn admit(&self, tat: u64, now: u64, n: u64) -> Option<u64> {
        let base = if tat > now { tat } else { now };
        let next = base.saturating_add(self.cost(n));
        if next - now <= self.tolerance {
            Some(next)
        } else {
            None
        }
    }
}

/// What a limiter is configured to let through (written by the controller only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitCfg {
    pub packets: Rate,
    pub bytes: Rate,
}

/// A limiter's mutable state (written by the XDP program only, after creation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    /// Theoretical arrival time of the packet dimension, ticks; 0 = fresh.
    pub tat_packets: u64,
    /// Theoretical arrival time of the byte dimension, ticks; 0 = fresh.
    pub tat_bytes: u64,
}

/// One entry of `AG_LIMITERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limiter {
    pub cfg: LimitCfg,
    pub state: BucketState,
}

/// `now` in ticks.
#[inline(always)]
pub const fn ticks(now_ns: u64) -> u64 {
    now_ns.saturating_mul(TICKS_PER_NS)
}

/// The state after a packet of `len` bytes at `now_ns`, if both dimensions
/// conform; None (and nothing to write) if either does not.
#[inline(always)]
pub fn decide(cfg: &LimitCfg, st: &BucketState, now_ns: u64, len: u64) -> Option<BucketState> {
    let now = ticks(now_ns);
    let mut next = *st;
    if cfg.packets.rate != 0 {
        next.tat_packets = cfg.packets.admit(st.tat_packets, now, 1)?;
    }
    if cfg.bytes.rate != 0 {
        next.tat_bytes = cfg.bytes.admit(st.tat_bytes, now, len)?;
    }
    Some(next)
}

/// One packet through a limiter owned by one thread (the reference model and
/// tests): whether it conforms, updating `st` if it does.
pub fn admit(cfg: &LimitCfg, st: &mut BucketState, now_ns: u64, len: u64) -> bool {
    match decide(cfg, st, now_ns, len) {
        Some(next) => {
            *st = next;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn pkts(rate: u64, burst: u64) -> LimitCfg {
        LimitCfg { packets: Rate::new(rate, burst), bytes: Rate::UNLIMITED }
    }

    #[test]
    fn fresh_bucket_is_full_then_refuses_past_burst() {
        let cfg = pkts(100, 10);
        let mut st = BucketState::default();
        let now = 5 * SEC;
        let passed = (0..50).filter(|_| admit(&cfg, &mut st, now, 100)).count();
        assert_eq!(passed, 10, "a burst of 10 at one instant");
    }

    #[test]
    fn steady_rate_matches_configuration() {
        // 1,000 pps, burst 50, offered 10,000 pps for 10 s: 50 + 10,000 pass.
        let cfg = pkts(1000, 50);
        let mut st = BucketState::default();
        let mut passed = 0u64;
        for i in 0..100_000u64 {
            let now = SEC + i * 100_000; // every 100 µs
            passed += admit(&cfg, &mut st, now, 64) as u64;
        }
        // 10 s of refill (minus the first interval) plus the initial burst.
        assert!((10_040..=10_051).contains(&passed), "passed {passed}");
    }

    #[test]
    fn closely_spaced_packets_still_refill() {
        // 1 pps: refills of 1 ns must add up rather than truncate to nothing.
        let cfg = pkts(1, 1);
        let mut st = BucketState::default();
        assert!(admit(&cfg, &mut st, SEC, 1));
        let mut passed = 0;
        for i in 1..=3_000_000u64 {
            passed += admit(&cfg, &mut st, SEC + i * 1000, 1) as u32; // 3 s, 1 µs apart
        }
        assert_eq!(passed, 3);
    }

    #[test]
    fn byte_limit_accounts_for_size() {
        let cfg = LimitCfg { packets: Rate::UNLIMITED, bytes: Rate::new(10_000, 3_000) };
        let mut st = BucketState::default();
        assert!(admit(&cfg, &mut st, SEC, 1_500));
        assert!(admit(&cfg, &mut st, SEC, 1_500));
        assert!(!admit(&cfg, &mut st, SEC, 64), "bucket empty");
        assert!(admit(&cfg, &mut st, SEC + SEC / 10, 1_000), "100 ms refills 1,000 bytes");
    }

    #[test]
    fn both_dimensions_must_conform_and_refusal_costs_nothing() {
        let cfg = LimitCfg { packets: Rate::new(10, 2), bytes: Rate::new(1_000, 1_000) };
        let mut st = BucketState::default();
        assert!(!admit(&cfg, &mut st, SEC, 2_000), "too big for the byte bucket");
        assert!(admit(&cfg, &mut st, SEC, 500));
        assert!(admit(&cfg, &mut st, SEC, 500));
        assert!(!admit(&cfg, &mut st, SEC, 1), "packet bucket empty");
    }

    #[test]
    fn interval_and_tolerance_keep_precision() {
        // 10,000 pps: 100 µs = 1,600,000 ticks a packet, exactly.
        let r = Rate::new(10_000, 500);
        assert_eq!(r.cost(1), 1_600_000);
        assert_eq!(r.tolerance, 500 * 1_600_000);
        // 3 pps: 333,333,333.3 ns; 3 packets cost 1 s within a tick.
        let r = Rate::new(3, 1);
        assert!(r.cost(3).abs_diff(16_000_000_000) <= 1, "{}", r.cost(3));
        // 10^11 bytes/s: 0.16 ticks a byte; a 1,500-byte packet 240 ticks.
        let r = Rate::new(MAX_RATE, MAX_BURST);
        assert_eq!(r.cost(1_500), 240);
        // A slow rate with a deep bucket is capped, not overflowed.
        assert_eq!(Rate::new(1, MAX_BURST).tolerance, MAX_TOLERANCE);
    }

    #[test]
    fn a_refused_packet_leaves_the_state_as_it_was() {
        let cfg = LimitCfg { packets: Rate::new(10, 2), bytes: Rate::new(1_000, 1_000) };
        let st = BucketState { tat_packets: ticks(SEC), tat_bytes: ticks(SEC) };
        assert_eq!(decide(&cfg, &st, SEC, 2_000), None, "too big for the byte bucket");
        let full = BucketState { tat_packets: ticks(SEC) + cfg.packets.tolerance, tat_bytes: 0 };
        assert_eq!(decide(&cfg, &full, SEC, 1), None, "packet bucket empty");
    }

    #[test]
    fn extremes_do_not_overflow() {
        let cfg = LimitCfg { packets: Rate::new(MAX_RATE, MAX_BURST), bytes: Rate::new(MAX_RATE, MAX_BURST) };
        let mut st = BucketState::default();
        assert!(admit(&cfg, &mut st, u64::MAX / 2, 65_535));
        assert!(admit(&cfg, &mut st, u64::MAX - 1, 65_535));
        let slow = pkts(1, MAX_BURST);
        let mut st = BucketState::default();
        assert!(admit(&slow, &mut st, u64::MAX - 1, 1));
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let cfg = pkts(1000, 1);
        let mut st = BucketState::default();
        assert!(admit(&cfg, &mut st, 10 * SEC, 1));
        let after = st;
        assert!(!admit(&cfg, &mut st, 9 * SEC, 1));
        assert_eq!(st, after, "a refusal writes nothing");
        assert!(admit(&cfg, &mut st, 10 * SEC + 1_000_000, 1), "1 ms later: one token");
    }
}
