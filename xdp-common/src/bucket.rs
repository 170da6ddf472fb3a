//! Token buckets for `limit` rules: pure fixed-point maths shared by the XDP
//! program and the reference model, unit-tested on the host.
//!
//! Tokens are kept in micro-units (1 packet = 1,000,000 µtokens; 1 byte =
//! 1,000,000 µtokens) so that refilling after `e` ns at `r` per second adds
//! exactly `e * r / 1000` µtokens: the truncation loses less than one µtoken per
//! refill (at 10 Mpps of refills: under 10 packets/s of drift), where whole-token
//! maths would lose everything between two closely spaced packets.
//!
//! Overflow bound: the elapsed time is capped at `fill_ns` (the time to fill an
//! empty bucket, computed by the controller), so `e * r <= burst * 1e9 + r`.
//! The controller refuses `burst > MAX_BURST` and `rate > MAX_RATE`, which keeps
//! that product below 2^64.

/// µtokens per token.
pub const MICRO: u64 = 1_000_000;
/// Largest accepted rate, per second (packets or bytes): 10^11 (800 Gbit/s).
pub const MAX_RATE: u64 = 100_000_000_000;
/// Largest accepted bucket depth (packets or bytes): 10^10.
pub const MAX_BURST: u64 = 10_000_000_000;

/// One dimension of a limit: a rate and a bucket depth. `rate == 0` = unlimited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    /// Tokens per second.
    pub rate: u64,
    /// Bucket depth in tokens.
    pub burst: u64,
    /// ns to fill an empty bucket: `ceil(burst * 1e9 / rate)`; see [`Rate::new`].
    pub fill_ns: u64,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate { rate: 0, burst: 0, fill_ns: 0 };

    /// A rate with its fill time precomputed. Callers validate `rate <= MAX_RATE`
    /// and `1 <= burst <= MAX_BURST` first.
    pub const fn new(rate: u64, burst: u64) -> Self {
        if rate == 0 {
            return Self::UNLIMITED;
        }
        let fill = (burst as u128 * 1_000_000_000).div_ceil(rate as u128);
        Self { rate, burst, fill_ns: fill as u64 }
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
    /// Time of the last refill; 0 = never used (the first packet finds the
    /// bucket full, because its elapsed time is capped at `fill_ns`).
    pub last_ns: u64,
    pub packet_utokens: u64,
    pub byte_utokens: u64,
}

/// One entry of `AG_LIMITERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limiter {
    pub cfg: LimitCfg,
    pub state: BucketState,
}

#[inline(always)]
fn refill(tokens: u64, rate: &Rate, elapsed_ns: u64) -> u64 {
    let e = if elapsed_ns < rate.fill_ns { elapsed_ns } else { rate.fill_ns };
    let full = rate.burst * MICRO;
    let t = tokens + e * rate.rate / 1000;
    if t < full {
        t
    } else {
        full
    }
}

/// Refill the bucket up to `now_ns`, then take one packet of `len` bytes if both
/// dimensions have enough tokens. Returns whether the packet conforms.
///
/// A packet that does not conform takes nothing (it is dropped, so it must not
/// eat the budget of the packets that follow). Time going backwards (a test
/// clock, or two CPUs racing) refills nothing.
#[inline(always)]
pub fn admit(cfg: &LimitCfg, st: &mut BucketState, now_ns: u64, len: u64) -> bool {
    let elapsed = now_ns.saturating_sub(st.last_ns);
    if now_ns > st.last_ns {
        st.last_ns = now_ns;
    }
    let mut ok = true;
    if cfg.packets.rate != 0 {
        st.packet_utokens = refill(st.packet_utokens, &cfg.packets, elapsed);
        ok &= st.packet_utokens >= MICRO;
    }
    if cfg.bytes.rate != 0 {
        st.byte_utokens = refill(st.byte_utokens, &cfg.bytes, elapsed);
        ok &= st.byte_utokens >= len * MICRO;
    }
    if ok {
        if cfg.packets.rate != 0 {
            st.packet_utokens -= MICRO;
        }
        if cfg.bytes.rate != 0 {
            st.byte_utokens -= len * MICRO;
        }
    }
    ok
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
        assert!(!admit(&cfg, &mut st, 9 * SEC, 1));
        assert_eq!(st.last_ns, 10 * SEC);
    }
}
