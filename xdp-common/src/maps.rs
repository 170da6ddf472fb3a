//! Map names (what `bpftool map list` and the pin directory show) and the
//! layouts of the victim and allowlist tables.
//!
//! ## IPv4 victims: a two-level direct table instead of an LPM trie
//! An LPM trie lookup costs ~80 ns with 100,000 prefixes (shared/docs/PERF-FACTS.md),
//! four times a trivial program. ampguard expands the prefixes into two arrays
//! (the DIR-16-16 scheme of Gupta et al., "Routing lookups in hardware at memory
//! access speeds", 1998), so a lookup is one or two array reads:
//! - `AG_V4_L1`, 65,536 × u64, indexed by the top 16 bits of the destination:
//!   low 32 bits = policy slot of the longest victim prefix of length <= 16 that
//!   covers this /16 (0 = none); high 32 bits = 1 + index of a level-2 chunk when
//!   victim prefixes longer than /16 exist inside it (0 = no chunk).
//! - `AG_V4_L2`, chunks × 65,536 × u32, indexed by chunk * 65,536 + low 16 bits:
//!   slot of the longest victim prefix longer than /16 covering the address, or
//!   0 to fall back to the level-1 slot.
//!
//! The controller paints the entries on every change (longest prefix wins).
//!
//! ## IPv6 victims: a hash table at pivot lengths, the trie for the rest
//! An IPv6 LPM trie lookup cost +114 ns over a bare program (IPv4's path: +24).
//! ampguard keeps the lengths operators use (RIPE-690's /48, /56, /64, /128,
//! ISP blocks /32 - /44, point-to-point /127; [`crate::v6::TREE`] plus /128)
//! in one exact-match hash table and searches it by binary search on prefix
//! lengths with markers (Waldvogel, Varghese, Turner, Plattner, "Scalable
//! High Speed IP Routing Lookups", SIGCOMM 1997):
//! - `AG_V6_BUCKETS`: a plain ARRAY (mmapable) of 64-byte buckets, one cache
//!   line each, two entries a bucket; an entry is four u64 words: meta (leaf
//!   flag, length, best prefix's length and policy slot; 0 = empty), the
//!   masked prefix's high and low halves, unused. A key (length, masked
//!   prefix) hashes (multiply-shift, a splitmix64 finaliser) to two buckets
//!   (two-choice bucketised cuckoo hashing, Pagh and Rodler 2001; DPDK's
//!   rte_hash layout): a probe reads one bucket, two when the key is not in
//!   the first.
//! - A lookup probes /128 first (a hit there is final: nothing is longer, so
//!   /128s need no markers), then walks the tree over the other 14 lengths,
//!   rooted at /64, at most 5 probes: a hit (a prefix, or a marker that a
//!   longer prefix leaves on its way down) records the entry's precomputed
//!   best answer and goes longer, a miss goes shorter. An entry flagged leaf
//!   (no longer tree prefix under it) ends the search, so a /64 victim costs two
//!   probes and a /128 one. The cost depends on the lengths, not the count.
//! - Other lengths (/0 - /31, /33 ...) go to the LPM trie `AG_V6_VICTIMS`
//!   (value: length << 32 | slot); the program reads it only while
//!   `AG_V6_META.trie_prefixes` is not 0, and the longer answer wins.
//! - Memory: [`crate::v6::buckets_for`] sizes the table from `max_v6_victims`
//!   for the worst case (every prefix with its own [`crate::v6::MAX_MARKERS`]
//!   = 2 markers) at 85% of the entries: 64 x 3 / 1.7 = ~113 bytes per prefix
//!   of capacity (11.3 MB at 100,000), O(prefixes); plus the trie's nodes for
//!   the other lengths in use.
//! - Updates never show a torn entry: the controller writes the table through
//!   a shared mapping, word by word. An answer change (best prefix, leaf flag)
//!   is one aligned u64 store; a key change (an entry filled, emptied, or
//!   moved by the cuckoo path: copied first, cleared after) is bracketed by
//!   `AG_V6_META.seq` (odd while under way), and a lookup that saw it odd or
//!   changed retries ([`crate::v6::RETRIES`] times, then fails open: no
//!   policy). Writes are ordered so each state in between answers every
//!   address with the old or the new longest prefix (markers first, then
//!   answers, then the prefix; the reverse on removal). The reads rely on x86's
//!   ordered loads (volatile reads keep the compiler's order).
//!
//! ## Allowlist: a bitmap in front of LPM tries
//! The allowlist is checked only on packets that met a policy. `AG_ALLOW_BITS`
//! holds one bit per /24 of IPv4 space (index = top 24 bits) then one bit per
//! /24 of IPv6 space (its top 24 bits), set where any allowlist prefix overlaps;
//! only then does the program consult the exact LPM trie. In front of those
//! 4 MiB, a summary bit per /16 (16 KiB, cache-resident): attack sources are
//! spread over the internet, so almost all of them cost one read of it.

/// Program-wide settings ([`crate::policy::Config`]), 1 entry.
pub const CONFIG: &str = "AG_CONFIG";
/// Ring buffer of sampled dropped/limited/monitored packets ([`crate::policy::Sample`]).
pub const SAMPLES: &str = "AG_SAMPLES";
/// Per CPU: sampling budget (program-private).
pub const SAMPLER: &str = "AG_SAMPLER";
/// Ring buffer size in bytes (~1,600 samples).
pub const SAMPLES_RING_BYTES: u32 = 256 * 1024;
/// Per CPU: cached coarse clock (program-private).
pub const CLOCK: &str = "AG_CLOCK";
/// UDP source port -> vector id (u8), 65,536 entries.
pub const PORTS: &str = "AG_PORTS";
/// IPv4 victims, level 1 (see module docs).
pub const V4_L1: &str = "AG_V4_L1";
/// IPv4 victims, level-2 chunks.
pub const V4_L2: &str = "AG_V4_L2";
/// IPv6 victims at pivot lengths: the hash table's buckets (see module docs).
pub const V6_BUCKETS: &str = "AG_V6_BUCKETS";
/// IPv6 victims: the table's change sequence, shape and trie flag ([`crate::v6::V6Meta`]).
pub const V6_META: &str = "AG_V6_META";
/// IPv6 victim prefixes of other lengths -> (length << 32 | policy slot) (LPM trie).
pub const V6_VICTIMS: &str = "AG_V6_VICTIMS";
/// Policy slot -> [`crate::policy::Policy`].
pub const POLICIES: &str = "AG_POLICIES";
/// Rule entry -> [`crate::policy::RuleEntry`] (the rule of one (policy, vector)).
pub const RULES: &str = "AG_RULES";
/// Rule entry -> [`crate::counters::RuleCounts`] (its shared totals).
pub const RULE_COUNTS: &str = "AG_RULE_COUNTS";
/// Per CPU: [`crate::counters::CACHE_ENTRIES`] x [`crate::counters::CacheEntry`]
/// (counts not yet folded into `AG_RULE_COUNTS`).
pub const COUNT_CACHE: &str = "AG_COUNT_CACHE";
/// Limiter index -> [`crate::bucket::Limiter`].
pub const LIMITERS: &str = "AG_LIMITERS";
/// Allowlist prefilter bitmap (u64 words).
pub const ALLOW_BITS: &str = "AG_ALLOW_BITS";
/// IPv4 allowlisted source prefixes (LPM trie, value: allowlist id).
pub const ALLOW_V4: &str = "AG_ALLOW_V4";
/// IPv6 allowlisted source prefixes (LPM trie, value: allowlist id).
pub const ALLOW_V6: &str = "AG_ALLOW_V6";
/// Per CPU: vector -> [`crate::counters::VerdictCounters`], summed over policies.
pub const VECTOR_COUNTERS: &str = "AG_VEC_COUNTERS";
/// Per CPU: reason -> [`crate::counters::Counter`].
pub const REASONS: &str = "AG_REASONS";

/// Detection: the meters' settings ([`crate::meter::MeterCfg`], 1 entry).
pub const METER_CFG: &str = "AG_METER_CFG";
/// Detection: one bit per /24 of the protected networks (the allowlist bitmap's layout).
pub const PROTECT_BITS: &str = "AG_PROTECT_BITS";
/// Detection: per CPU, the discovery sketch ([`crate::meter::SketchCell`]s).
pub const METER_SKETCH: &str = "AG_METER_SKETCH";
/// Detection: tracked destination ([`crate::meter::MeterKey`]) -> its meters ([`crate::meter::Tracked`]).
pub const METER_TRACKED: &str = "AG_METER_TRACKED";
/// Detection: candidates for tracking ([`crate::meter::MeterEvent`], ring buffer).
pub const METER_EVENTS: &str = "AG_METER_EVENTS";

/// Every map, for pinning and adoption.
pub const ALL: &[&str] = &[
    CONFIG,
    CLOCK,
    SAMPLES,
    SAMPLER,
    PORTS,
    V4_L1,
    V4_L2,
    V6_BUCKETS,
    V6_META,
    V6_VICTIMS,
    POLICIES,
    RULES,
    RULE_COUNTS,
    COUNT_CACHE,
    LIMITERS,
    ALLOW_BITS,
    ALLOW_V4,
    ALLOW_V6,
    VECTOR_COUNTERS,
    REASONS,
    METER_CFG,
    PROTECT_BITS,
    METER_SKETCH,
    METER_TRACKED,
    METER_EVENTS,
];

/// Name of the XDP program (its ELF symbol and bpftool name).
pub const PROGRAM: &str = "ampguard";

/// Default capacities; the controller may resize the maps at load time
/// (`set_max_entries`), the program reads only what exists.
pub const DEFAULT_MAX_POLICIES: u32 = 8192;
pub const DEFAULT_MAX_LIMITERS: u32 = 8192 * 6;
/// Rule entries per policy when `max_rules` is not configured: one per vector
/// the policy names plus its shared `pass`; the default profile names all 19
/// built-in vectors.
pub const DEFAULT_RULES_PER_POLICY: u32 = 20;
pub const DEFAULT_V4_CHUNKS: u32 = 64;
pub const DEFAULT_MAX_V6_VICTIMS: u32 = 16384;
pub const DEFAULT_MAX_ALLOW: u32 = 4096;

/// `BPF_F_MMAPABLE`: the controller writes the IPv6 table through a shared
/// mapping, word by word in the order the program's reads rely on.
pub const MAP_MMAPABLE: u32 = 1 << 10;

pub const V4_L1_ENTRIES: u32 = 1 << 16;
pub const CHUNK_ENTRIES: u32 = 1 << 16;
/// 2^24 bits for IPv4 then 2^24 bits for IPv6 (one per /24-sized block),
/// then the summary: 2^16 + 2^16 bits (one per /16-sized block), in u64 words.
pub const ALLOW_BITS_WORDS: u32 = ((2 << 24) + (2 << 16)) / 64;
/// Bit offset of the IPv6 half of `AG_ALLOW_BITS`.
pub const ALLOW_BITS_V6: u32 = 1 << 24;
/// Bit offset of the summary: bit `ALLOW_SUMMARY + (b >> 8)` is set iff any
/// of the 256 block bits `b` of its /16 is. Its 16 KiB stay in cache where
/// the 4 MiB of block bits cannot, with reflectors spread over the internet.
pub const ALLOW_SUMMARY: u32 = 2 << 24;

/// Level-1 entry: the slot for the /16 and the chunk, if any.
#[inline(always)]
pub const fn l1_entry(slot: u32, chunk: Option<u32>) -> u64 {
    let c = match chunk {
        Some(c) => c as u64 + 1,
        None => 0,
    };
    (c << 32) | slot as u64
}

#[inline(always)]
pub const fn l1_slot(entry: u64) -> u32 {
    entry as u32
}

/// The chunk of a level-1 entry, if it has one.
#[inline(always)]
pub const fn l1_chunk(entry: u64) -> Option<u32> {
    match (entry >> 32) as u32 {
        0 => None,
        c => Some(c - 1),
    }
}

/// The bit of `AG_ALLOW_BITS` for an address's top 24 bits.
#[inline(always)]
pub const fn allow_bit_v4(addr: u32) -> u32 {
    addr >> 8
}

#[inline(always)]
pub const fn allow_bit_v6(top32: u32) -> u32 {
    ALLOW_BITS_V6 + (top32 >> 8)
}

/// The summary bit in front of a block bit.
#[inline(always)]
pub const fn allow_summary_bit(block_bit: u32) -> u32 {
    ALLOW_SUMMARY + (block_bit >> 8)
}
