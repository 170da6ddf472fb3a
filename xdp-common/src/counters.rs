//! Counters the XDP program keeps (per CPU; the controller sums them).

/// What happened to a packet that met a policy. Index into [`VerdictCounters`].
pub mod verdict {
    pub const PASSED: usize = 0;
    pub const DROPPED: usize = 1;
    pub const RATE_LIMITED: usize = 2;
    /// Monitor mode: the rule would have dropped or limited it; it passed.
    pub const MONITORED: usize = 3;
    pub const COUNT: usize = 4;
    pub const NAMES: [&str; COUNT] = ["passed", "dropped", "rate_limited", "monitored"];
}

/// Why a packet met no policy (it passed). Index into `AG_REASONS`.
pub mod reason {
    pub const NOT_UDP: usize = 0;
    pub const NO_VECTOR: usize = 1;
    pub const NO_POLICY: usize = 2;
    pub const ALLOWLISTED: usize = 3;
    pub const EXPIRED: usize = 4;
    pub const PARSE_ERROR: usize = 5;
    pub const COUNT: usize = 6;
    pub const NAMES: [&str; COUNT] = ["not_udp", "no_vector", "no_policy", "allowlisted", "expired", "parse_error"];
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    #[inline(always)]
    pub fn add(&mut self, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
    }
}

/// Packets and bytes per verdict, for one (policy, vector) or one vector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounters {
    pub by_verdict: [Counter; verdict::COUNT],
}
