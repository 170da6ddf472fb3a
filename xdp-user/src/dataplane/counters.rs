//! The program's per-CPU counters: per policy slot and vector, per vector
//! over all policies, and per reason for packets that met no policy. Reads
//! sum over CPUs; a fresh policy's slot is zeroed with one batched write.

use aya::{
    maps::{IterableMap, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use xdp_common::{
    counters::{reason, Counter, VerdictCounters},
    maps as names,
    vector::MAX_VECTORS,
};

use super::{batch, loader::take, DataPlane, DpError, Faults};

pub(super) struct Counters {
    /// `AG_POL_COUNTERS`: slot * MAX_VECTORS + vector.
    policy: PerCpuArray<MapData, VerdictCounters>,
    /// `AG_VEC_COUNTERS`: vector.
    vector: PerCpuArray<MapData, VerdictCounters>,
    /// `AG_REASONS`: reason.
    reasons: PerCpuArray<MapData, Counter>,
}

impl Counters {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DpError> {
        Ok(Self {
            policy: take(ebpf, names::POLICY_COUNTERS)?,
            vector: take(ebpf, names::VECTOR_COUNTERS)?,
            reasons: take(ebpf, names::REASONS)?,
        })
    }

    pub(super) fn map_named(&self, name: &str) -> Option<&MapData> {
        match name {
            names::POLICY_COUNTERS => Some(self.policy.map()),
            names::VECTOR_COUNTERS => Some(self.vector.map()),
            names::REASONS => Some(self.reasons.map()),
            _ => None,
        }
    }

    /// Zero a slot's counters for every vector and CPU: one batched write.
    pub(super) fn reset(&mut self, faults: &mut Faults, slot: u32) -> Result<(), DpError> {
        let ncpu = nr_cpus().map_err(|(_, e)| e)?;
        // Per-CPU values are rounded up to 8 bytes each; VerdictCounters already is.
        const _: () = assert!(std::mem::size_of::<VerdictCounters>().is_multiple_of(8));
        let value_size = std::mem::size_of::<VerdictCounters>() * ncpu;
        let keys: Vec<u32> = (0..MAX_VECTORS as u32).map(|v| slot * MAX_VECTORS as u32 + v).collect();
        let zeros = vec![0u8; keys.len() * value_size];
        faults.point()?;
        batch::update(self.policy.map(), &keys, &zeros, value_size)
    }
}

impl DataPlane {
    /// Per-vector counters of one policy slot, summed over CPUs.
    pub fn policy_counters(&self, slot: u32) -> Result<Vec<VerdictCounters>, DpError> {
        let c = &self.counters.policy;
        (0..MAX_VECTORS as u32).map(|v| Ok(sum_verdicts(&c.get(&(slot * MAX_VECTORS as u32 + v), 0)?))).collect()
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

fn sum_verdicts(per_cpu: &PerCpuValues<VerdictCounters>) -> VerdictCounters {
    let mut out = VerdictCounters::default();
    for c in per_cpu.iter() {
        for (o, i) in out.by_verdict.iter_mut().zip(c.by_verdict.iter()) {
            o.packets += i.packets;
            o.bytes += i.bytes;
        }
    }
    out
}
