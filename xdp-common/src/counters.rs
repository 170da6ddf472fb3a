//! Counters the XDP program keeps, and how the controller reads them.
//!
//! Per vector and per reason: per-CPU arrays of a few dozen entries, summed by
//! the controller. Per rule entry (one (policy, vector), see
//! [`crate::policy::Policy`]): a per-CPU array per entry would make kernel
//! memory O(policies x CPUs) (12 GiB at 100,000 policies on 64 CPUs), so the
//! totals are shared and each CPU writes back into them through a small cache,
//! the pattern of the kernel's lib/percpu_counter.c:
//!
//! - `AG_RULE_COUNTS[cell]` ([`RuleCounts`]): the shared totals, 64 bytes (one
//!   cache line); the generation of the policy that owns the entry (0 = free)
//!   is in its rule, `AG_RULES[cell]`.
//! - `AG_COUNT_CACHE` ([`CacheEntry`], per CPU, [`CACHE_ENTRIES`] entries,
//!   direct-mapped by [`cache_index`]): the counts this CPU has not yet added
//!   to the totals, for the one (cell, generation) it holds. A packet of that
//!   entry adds to it (a per-CPU write: nothing shared is touched); a packet
//!   of another entry first folds the held counts into the shared totals
//!   with atomic adds, then takes the entry over.
//! - A fold adds only if the totals' generation still equals the cached one,
//!   so counts of a removed policy never reach the policy that reuses its
//!   entries, however long they wait in a cache.
//! - The fold is bracketed by `seq` (odd while folding): the controller's
//!   read (shared totals plus every CPU's cached counts of the entry) retries
//!   when a fold of that entry overlapped it, so a read never counts a packet
//!   twice or misses one it had already seen: exact once traffic stops,
//!   never lower than an earlier read while it flows.

/// Entries of `AG_COUNT_CACHE` per CPU (a power of two).
pub const CACHE_ENTRIES: u32 = 2048;

/// The cache entry a rule entry's counts go through.
#[inline(always)]
pub const fn cache_index(cell: u32) -> u32 {
    cell & (CACHE_ENTRIES - 1)
}

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

/// Shared totals of one rule entry (`AG_RULE_COUNTS`), folded in by every
/// CPU with atomic adds, zeroed by the controller before it hands the entry
/// to a policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounts {
    pub by_verdict: [Counter; verdict::COUNT],
}

/// One CPU's not-yet-folded counts of one rule entry (`AG_COUNT_CACHE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheEntry {
    /// Odd while the program folds this entry into the shared totals.
    pub seq: u32,
    /// Generation of the policy the counts belong to; 0 = empty.
    pub gen: u32,
    pub cell: u32,
    pub _pad: u32,
    pub by_verdict: [Counter; verdict::COUNT],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_index_stays_in_the_cache() {
        assert!(CACHE_ENTRIES.is_power_of_two());
        for cell in [0, 1, CACHE_ENTRIES - 1, CACHE_ENTRIES, u32::MAX] {
            assert!(cache_index(cell) < CACHE_ENTRIES);
        }
        assert_eq!(cache_index(CACHE_ENTRIES + 5), 5);
    }

    #[test]
    fn layouts_are_what_the_program_and_memory_table_assume() {
        assert_eq!(core::mem::size_of::<RuleCounts>(), 64);
        assert_eq!(core::mem::size_of::<CacheEntry>(), 80);
    }
}
