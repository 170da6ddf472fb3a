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
    /// Rule action per vector id ([`action`]).
    pub actions: [u8; MAX_VECTORS],
    /// For `action::LIMIT`: index into `AG_LIMITERS`.
    pub limiters: [u32; MAX_VECTORS],
}

impl Policy {
    pub const fn unused() -> Self {
        Self {
            expires_ns: 0,
            mode: mode::UNUSED,
            _pad: [0; 7],
            actions: [action::PASS; MAX_VECTORS],
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// When non-zero, the program uses this as "now" instead of the kernel clock:
    /// makes expiry and token buckets deterministic under BPF_PROG_TEST_RUN.
    /// Always 0 in production.
    pub time_override_ns: u64,
}

/// Per-CPU cache of the coarse clock, keyed by jiffies (program-private).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockCache {
    pub jiffies: u64,
    pub ns: u64,
}
