//! The program's counters: per rule entry (one (policy, vector), or a
//! policy's shared `pass`), per vector over all policies, and per reason for
//! packets that met no policy.
//!
//! Rule entries count into shared totals through a per-CPU cache
//! (xdp_common::counters explains the scheme and why); a read adds every
//! CPU's cached counts to the totals, and retries when the program was
//! folding that entry while it read, so it is exact once traffic stops and
//! never lower than an earlier read while traffic flows.

use std::{collections::HashMap, sync::Mutex};

use aya::maps::{Array, IterableMap, MapData, PerCpuArray, PerCpuValues};
use xdp_common::{
    counters::{cache_index, reason, CacheEntry, Counter, RuleCounts, VerdictCounters},
    maps as names,
    policy::NO_CELL,
    vector::MAX_VECTORS,
};

use super::{batch, loader::take, DataPlane, DpError, Faults};

/// Reads of one rule entry before settling for what was read.
const READ_TRIES: usize = 64;

pub(super) struct Counters {
    /// `AG_RULE_COUNTS`: rule entry -> shared totals.
    totals: Array<MapData, RuleCounts>,
    /// `AG_COUNT_CACHE`: per CPU, counts not yet folded into the totals.
    cache: PerCpuArray<MapData, CacheEntry>,
    /// `AG_VEC_COUNTERS`: vector.
    vector: PerCpuArray<MapData, VerdictCounters>,
    /// `AG_REASONS`: reason.
    reasons: PerCpuArray<MapData, Counter>,
    /// The last value returned for a (rule entry, generation) whose read kept
    /// overlapping folds and settled: later reads never return less. Almost
    /// always empty; an entry goes when its rule entry is freed.
    settled: Mutex<HashMap<(u32, u32), VerdictCounters>>,
}

/// A policy's counters: per vector it names (or named since it was
/// installed), and summed over the vectors it does not name (all passed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    /// By vector id; zero for the vectors in `unlisted`.
    pub by_vector: Vec<VerdictCounters>,
    pub unlisted: VerdictCounters,
}

impl Counters {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DpError> {
        Ok(Self {
            totals: take(ebpf, names::RULE_COUNTS)?,
            cache: take(ebpf, names::COUNT_CACHE)?,
            vector: take(ebpf, names::VECTOR_COUNTERS)?,
            reasons: take(ebpf, names::REASONS)?,
            settled: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn map_named(&self, name: &str) -> Option<&MapData> {
        match name {
            names::RULE_COUNTS => Some(self.totals.map()),
            names::COUNT_CACHE => Some(self.cache.map()),
            names::VECTOR_COUNTERS => Some(self.vector.map()),
            names::REASONS => Some(self.reasons.map()),
            _ => None,
        }
    }

    /// Zero the totals of rule entries about to be handed to a policy (one
    /// write). Only counts cached under its generation, which its rule entries
    /// carry once written, are folded into them from then on.
    pub(super) fn claim(&mut self, faults: &mut Faults, cells: &[u32]) -> Result<(), DpError> {
        faults.point()?;
        self.zero(cells)
    }

    /// Zero the shared totals of rule entries (see `claim`).
    pub(super) fn zero(&mut self, cells: &[u32]) -> Result<(), DpError> {
        let entries: Vec<_> = cells.iter().map(|c| (*c, RuleCounts::default())).collect();
        batch::update_all(self.totals.map(), &entries)
    }

    /// Forget what was read of rule entries taken back (their rule entries'
    /// generation is cleared by the slots, so the program discards what CPUs
    /// still cache for them instead of folding it in).
    pub(super) fn free(&mut self, cells: &[u32]) {
        let mut settled = self.settled.lock().expect("not poisoned");
        if !settled.is_empty() {
            settled.retain(|(c, _), _| !cells.contains(c));
        }
    }

    /// One rule entry's counts: the shared totals plus what each CPU caches
    /// for (cell, gen). Read as: every CPU's cache entry (A), the totals, the
    /// cache again (B), and again (C). A CPU whose entry was mid-fold at A,
    /// or that held this rule entry and folded between A and C, may have
    /// moved counts into the totals after they were read, or counted them in
    /// both: read again. Otherwise B's counts plus the totals are a
    /// consistent sum (folds only move counts from a cache into the totals).
    pub(super) fn rule_counts(&self, cell: u32, gen: u32) -> Result<VerdictCounters, DpError> {
        let idx = cache_index(cell);
        let mine = |e: &CacheEntry| e.cell == cell && e.gen == gen;
        let mut last = VerdictCounters::default();
        for _ in 0..READ_TRIES {
            let a = self.cache.get(&idx, 0)?;
            let totals = self.totals.get(&cell, 0)?;
            let b = self.cache.get(&idx, 0)?;
            let c = self.cache.get(&idx, 0)?;
            let mut sum = VerdictCounters { by_verdict: totals.by_verdict };
            let mut settled = true;
            for ((a, b), c) in a.iter().zip(b.iter()).zip(c.iter()) {
                if a.seq & 1 == 1 || ((mine(a) || mine(b) || mine(c)) && a.seq != c.seq) {
                    settled = false;
                    break;
                }
                if mine(b) {
                    add(&mut sum, &VerdictCounters { by_verdict: b.by_verdict });
                }
            }
            last = sum;
            if settled {
                return Ok(self.at_least_settled(cell, gen, sum, false));
            }
        }
        Ok(self.at_least_settled(cell, gen, last, true))
    }

    /// `sum`, or the value returned when a read of this entry last settled
    /// for an inconsistent read, if that is more (recorded when `record`).
    fn at_least_settled(&self, cell: u32, gen: u32, mut sum: VerdictCounters, record: bool) -> VerdictCounters {
        let mut settled = self.settled.lock().expect("not poisoned");
        if settled.is_empty() && !record {
            return sum;
        }
        if let Some(prev) = settled.get(&(cell, gen)) {
            for (s, p) in sum.by_verdict.iter_mut().zip(prev.by_verdict.iter()) {
                s.packets = s.packets.max(p.packets);
                s.bytes = s.bytes.max(p.bytes);
            }
        }
        if record {
            settled.insert((cell, gen), sum);
        }
        sum
    }
}

impl DataPlane {
    /// Per-vector counters of the policy in a slot (zero for the vectors it
    /// does not name: see `policy_counts`).
    pub fn policy_counters(&self, slot: u32) -> Result<Vec<VerdictCounters>, DpError> {
        Ok(self.policy_counts(slot)?.by_vector)
    }

    /// The counters of the policy in a slot: per vector it names, and summed
    /// over the vectors it does not name. A slot without a policy reads zero.
    pub fn policy_counts(&self, slot: u32) -> Result<PolicyCounts, DpError> {
        let p = self.slots.policy_at(slot)?;
        let mut out = PolicyCounts { by_vector: vec![VerdictCounters::default(); MAX_VECTORS], unlisted: VerdictCounters::default() };
        if p.gen == 0 {
            return Ok(out);
        }
        for (v, &cell) in p.cells.iter().enumerate() {
            if cell != NO_CELL && cell != p.pass_cell {
                out.by_vector[v] = self.counters.rule_counts(cell, p.gen)?;
            }
        }
        if p.pass_cell != NO_CELL {
            out.unlisted = self.counters.rule_counts(p.pass_cell, p.gen)?;
        }
        Ok(out)
    }

    /// Per-vector counters over all policies, summed over CPUs.
    pub fn vector_counters(&self) -> Result<Vec<VerdictCounters>, DpError> {
        let c = &self.counters.vector;
        (0..MAX_VECTORS as u32).map(|v| Ok(sum_verdicts(&c.get(&v, 0)?))).collect()
    }

    /// Packets that met no policy, by reason, summed over CPUs.
    pub fn reason_counters(&self) -> Result<[Counter; reason::COUNT], DpError> {
        let mut out = [Counter::default(); reason::COUNT];
        for (i, o) in out.iter_mut().enumerate() {
            for v in self.counters.reasons.get(&(i as u32), 0)?.iter() {
                o.packets += v.packets;
                o.bytes += v.bytes;
            }
        }
        Ok(out)
    }
}

fn add(into: &mut VerdictCounters, c: &VerdictCounters) {
    for (o, i) in into.by_verdict.iter_mut().zip(c.by_verdict.iter()) {
        o.packets += i.packets;
        o.bytes += i.bytes;
    }
}

fn sum_verdicts(per_cpu: &PerCpuValues<VerdictCounters>) -> VerdictCounters {
    let mut out = VerdictCounters::default();
    for c in per_cpu.iter() {
        add(&mut out, c);
    }
    out
}
