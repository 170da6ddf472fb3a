//! Policies as the XDP program reads them: one per victim prefix, stored in the
//! `AG_POLICIES` array at a slot the controller allocates.

use crate::vector::MAX_VECTORS;

/// What a rule does with a packet of its vector.
pub mod action {
    pub const PASS: u8 = 0;
    pub const DROP: u8 = 1;
    /// Token bucket; the limiter index sits beside the action in [`super::Policy`].
    pub const LIMIT: u8 = 2;
}

/// Policy modes. A slot whose mode is [`mode::UNUSED`] is treated as no policy.
pub mod mode {
    pub const UNUSED: u8 = 0;
    pub const ENFORCE: u8 = 1;
    /// Dry run: count what would have been dropped or limited, pass everything.
    pub const MONITOR: u8 = 2;
}

/// Conditions a rule can test (`RuleCfg::flags`).
pub mod cond {
    /// The vector's reflection signature matches (see `crate::signature`).
    pub const SIGNATURE: u8 = 1;
    /// The UDP payload length is within [min_len, max_len].
    pub const SIZE: u8 = 2;
}

/// One vector's rule: if the conditions hold (or there are none), `on_match`,
/// else `otherwise`. A plain rule has no flags and the same action twice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCfg {
    pub on_match: u8,
    pub otherwise: u8,
    pub flags: u8,
    pub _pad: u8,
    /// UDP payload length bounds for `cond::SIZE` (from the UDP header).
    pub min_len: u16,
    pub max_len: u16,
}

impl RuleCfg {
    pub const fn plain(action: u8) -> Self {
        Self { on_match: action, otherwise: action, flags: 0, _pad: 0, min_len: 0, max_len: u16::MAX }
    }
}

/// Slot 0 of every victim table means "no policy".
pub const NO_SLOT: u32 = 0;

/// One victim's policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Expiry on the kernel's CLOCK_MONOTONIC (what `bpf_ktime_get_coarse_ns`
    /// reads), in ns; 0 = never. The program itself stops applying an expired
    /// policy, so expiry holds even while the controller is down.
    pub expires_ns: u64,
    pub mode: u8,
    pub _pad: [u8; 7],
    /// Rule per vector id.
    pub rules: [RuleCfg; MAX_VECTORS],
    /// For rules with `action::LIMIT` on either branch: index into `AG_LIMITERS`.
    pub limiters: [u32; MAX_VECTORS],
}

impl Policy {
    pub const fn unused() -> Self {
        Self {
            expires_ns: 0,
            mode: mode::UNUSED,
            _pad: [0; 7],
            rules: [RuleCfg::plain(action::PASS); MAX_VECTORS],
            limiters: [0; MAX_VECTORS],
        }
    }

    /// Whether the policy has expired at `now_ns` (same clock as `expires_ns`).
    #[inline(always)]
    pub fn expired(&self, now_ns: u64) -> bool {
        self.expires_ns != 0 && now_ns >= self.expires_ns
    }
}

/// Program-wide settings, one entry in `AG_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// When non-zero, the program uses this as "now" instead of the kernel clock:
    /// makes expiry and token buckets deterministic under BPF_PROG_TEST_RUN.
    /// Always 0 in production.
    pub time_override_ns: u64,
    /// DNS signature: a response with a UDP payload over this many bytes.
    pub dns_large_bytes: u16,
    /// DNS signature: a response with at least this many answer records.
    pub dns_many_answers: u16,
    /// Most dropped/limited/monitored packets per second and CPU copied to
    /// `AG_SAMPLES` (0 = sampling off: the default, turned on by captures).
    pub samples_per_sec: u32,
}

impl Config {
    pub const DEFAULT: Config = Config { time_override_ns: 0, dns_large_bytes: 512, dns_many_answers: 10, samples_per_sec: 0 };
}

/// Bytes of each sampled packet copied to the ring buffer.
pub const SAMPLE_BYTES: usize = 128;

/// One sampled packet in `AG_SAMPLES` (written by the program).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// CLOCK_MONOTONIC (coarse), ns.
    pub ts_ns: u64,
    pub slot: u32,
    pub ifindex: u32,
    /// Length of the frame (linear part).
    pub orig_len: u32,
    /// Bytes of `data` that are valid.
    pub cap_len: u16,
    pub vector: u8,
    pub verdict: u8,
    pub data: [u8; SAMPLE_BYTES],
}

/// Per-CPU sampling budget (program-private).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SamplerState {
    pub window_ns: u64,
    pub count: u64,
}

/// Per-CPU cache of the coarse clock, keyed by jiffies (program-private).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockCache {
    pub jiffies: u64,
    pub ns: u64,
}
