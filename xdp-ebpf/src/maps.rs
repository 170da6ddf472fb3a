//! The maps. Names are `xdp_common::maps` constants' values (bpftool shows them).
//! Who writes what: the controller writes everything except the counters and
//! the limiters' bucket state, which only this program writes.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, PerCpuArray, RingBuf},
};
use xdp_common::{
    bucket::Limiter,
    counters::{reason, CacheEntry, Counter, RuleCounts, VerdictCounters, CACHE_ENTRIES},
    maps::*,
    meter::{MeterCfg, MeterKey, SketchCell, Tracked, DEFAULT_MAX_TRACKED, DEFAULT_SKETCH_COLS, EVENTS_RING_BYTES, SKETCH_ROWS},
    policy::{ClockCache, Config, Policy, RuleEntry, SamplerState},
    v6::{buckets_for, Bucket, V6Meta},
    vector::MAX_VECTORS,
};

/// Program settings (test clock). Written by the controller.
#[map]
pub static AG_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Sampled dropped/limited/monitored packets, read by `ampguard capture`.
#[map]
pub static AG_SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLES_RING_BYTES, 0);

/// Per CPU: how many samples this second (see verdict::sample).
#[map]
pub static AG_SAMPLER: PerCpuArray<SamplerState> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the coarse clock and the jiffies it was read at (see verdict::now_ns).
#[map]
pub static AG_CLOCK: PerCpuArray<ClockCache> = PerCpuArray::with_max_entries(1, 0);

/// UDP source port -> vector id. Written by the controller.
#[map]
pub static AG_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

/// IPv4 victims, level 1: top 16 bits -> (chunk + 1) << 32 | slot.
#[map]
pub static AG_V4_L1: Array<u64> = Array::with_max_entries(V4_L1_ENTRIES, 0);

/// IPv4 victims, level 2: chunk * 65536 + low 16 bits -> slot (0 = use level 1).
#[map]
pub static AG_V4_L2: Array<u32> = Array::with_max_entries(DEFAULT_V4_CHUNKS * CHUNK_ENTRIES, 0);

/// IPv6 victims at pivot lengths: buckets of the hash table (xdp_common::v6).
#[map]
pub static AG_V6_BUCKETS: Array<Bucket> = Array::with_max_entries(buckets_for(DEFAULT_MAX_V6_VICTIMS), MAP_MMAPABLE);

/// IPv6 victims: change sequence, number of trie prefixes, table shape.
#[map]
pub static AG_V6_META: Array<V6Meta> = Array::with_max_entries(1, MAP_MMAPABLE);

/// IPv6 victim prefixes of other lengths -> length << 32 | policy slot.
#[map]
pub static AG_V6_VICTIMS: LpmTrie<[u8; 16], u64> = LpmTrie::with_max_entries(DEFAULT_MAX_V6_VICTIMS, 0);

/// Policy slot -> policy (mode, expiry, plain drops, rule entry per vector).
#[map]
pub static AG_POLICIES: Array<Policy> = Array::with_max_entries(DEFAULT_MAX_POLICIES, 0);

/// Rule entry -> rule and limiter. Written by the controller.
#[map]
pub static AG_RULES: Array<RuleEntry> = Array::with_max_entries(DEFAULT_MAX_POLICIES * DEFAULT_RULES_PER_POLICY, 0);

/// Rule entry -> shared packets/bytes per verdict: folded in from
/// `AG_COUNT_CACHE` by every CPU with atomic adds (see xdp_common::counters).
#[map]
pub static AG_RULE_COUNTS: Array<RuleCounts> = Array::with_max_entries(DEFAULT_MAX_POLICIES * DEFAULT_RULES_PER_POLICY, 0);

/// Per CPU: counts not yet folded into `AG_RULE_COUNTS`, direct-mapped by rule entry.
#[map]
pub static AG_COUNT_CACHE: PerCpuArray<CacheEntry> = PerCpuArray::with_max_entries(CACHE_ENTRIES, 0);

/// Token buckets of `limit` rules: config by the controller, state by us.
#[map]
pub static AG_LIMITERS: Array<Limiter> = Array::with_max_entries(DEFAULT_MAX_LIMITERS, 0);

/// One bit per /24 (IPv4, then IPv6 top 24 bits) overlapping the allowlist.
#[map]
pub static AG_ALLOW_BITS: Array<u64> = Array::with_max_entries(ALLOW_BITS_WORDS, 0);

/// Allowlisted IPv4 source prefixes -> allowlist id.
#[map]
pub static AG_ALLOW_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_ALLOW, 0);

/// Allowlisted IPv6 source prefixes -> allowlist id.
#[map]
pub static AG_ALLOW_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_ALLOW, 0);

/// Per CPU, vector -> packets/bytes per verdict, over all policies.
#[map]
pub static AG_VEC_COUNTERS: PerCpuArray<VerdictCounters> = PerCpuArray::with_max_entries(MAX_VECTORS as u32, 0);

/// Per CPU, reason -> packets/bytes that met no policy.
#[map]
pub static AG_REASONS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(reason::COUNT as u32, 0);

/// Detection's settings (xdp_common::meter). Written by the controller.
#[map]
pub static AG_METER_CFG: Array<MeterCfg> = Array::with_max_entries(1, 0);

/// One bit per /24 of the protected networks (IPv4, then IPv6's top 24 bits).
#[map]
pub static AG_PROTECT_BITS: Array<u64> = Array::with_max_entries(ALLOW_BITS_WORDS, 0);

/// Per CPU: the discovery sketch, SKETCH_ROWS rows of cols cells.
#[map]
pub static AG_METER_SKETCH: PerCpuArray<SketchCell> = PerCpuArray::with_max_entries(SKETCH_ROWS * DEFAULT_SKETCH_COLS, 0);

/// Tracked destination -> its rule entries. Written by the controller.
#[map]
pub static AG_METER_TRACKED: HashMap<MeterKey, Tracked> = HashMap::with_max_entries(DEFAULT_MAX_TRACKED, 0);

/// Destinations that reached the discovery trigger, for the controller.
#[map]
pub static AG_METER_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
