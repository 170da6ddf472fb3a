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

/// One victim's policy: what the program reads first for every packet that
/// meets it, kept small (152 bytes) so the kernel's memory is O(policies).
///
/// Each vector the policy names has a *rule entry* of its own (`cells[v]`, an
/// index into `AG_RULES` and `AG_RULE_COUNTS`); the vectors it does not name
/// all share one more entry of the policy's, whose rule is `pass`. A plain
/// `drop` is also a bit of `drop_mask`, so dropping never reads `AG_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Expiry on the kernel's CLOCK_MONOTONIC (what `bpf_ktime_get_coarse_ns`
    /// reads), in ns; 0 = never. The program itself stops applying an expired
    /// policy, so expiry holds even while the controller is down.
    pub expires_ns: u64,
    /// The policy's generation: a number no earlier policy had, tagging what
    /// the program caches for its rule entries (see `crate::counters`).
    pub gen: u32,
    /// Vectors (bit = vector id) whose rule is a plain drop.
    pub drop_mask: u32,
    pub mode: u8,
    pub _pad: [u8; 3],
    /// The rule entry (`pass`) shared by every vector the policy does not
    /// name (for the controller: the program reads only `cells`).
    pub pass_cell: u32,
    /// Rule entry per vector id (never 0 in a live policy).
    pub cells: [u32; MAX_VECTORS],
}

impl Policy {
    pub const fn unused() -> Self {
        Self { expires_ns: 0, gen: 0, drop_mask: 0, mode: mode::UNUSED, _pad: [0; 3], pass_cell: 0, cells: [0; MAX_VECTORS] }
    }

    /// Whether the policy has expired at `now_ns` (same clock as `expires_ns`).
    #[inline(always)]
    pub fn expired(&self, now_ns: u64) -> bool {
        self.expires_ns != 0 && now_ns >= self.expires_ns
    }
}

/// One rule entry of `AG_RULES`: the rule of one (policy, vector), or the
/// `pass` shared by the vectors a policy does not name. Written by the
/// controller only; the entry's counters are in `AG_RULE_COUNTS` at the same
/// index, so rewriting a rule never races with counting.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleEntry {
    pub rule: RuleCfg,
    /// For rules with `action::LIMIT` on either branch: index into `AG_LIMITERS`.
    pub limiter: u32,
    /// Generation of the policy that owns the entry; 0 = free. The program
    /// folds cached counts into `AG_RULE_COUNTS` only while this still equals
    /// the generation they were cached under.
    pub gen: u32,
}

impl RuleEntry {
    /// The `pass` of the vectors a policy does not name.
    pub const fn pass(gen: u32) -> Self {
        RuleEntry { rule: RuleCfg::plain(action::PASS), limiter: 0, gen }
    }
}

// A plain drop is a bit of a u32 per vector id.
const _: () = assert!(MAX_VECTORS <= 32);

/// Rule entry 0 is never handed out: a `cells` value of 0 means "none".
pub const NO_CELL: u32 = 0;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_and_rule_entry_sizes() {
        // The memory table in BENCHMARKS.md and the README count these.
        assert_eq!(core::mem::size_of::<Policy>(), 152);
        assert_eq!(core::mem::size_of::<RuleEntry>(), 16);
    }
}
