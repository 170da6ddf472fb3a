//! Policy slots and limiter indexes: which victim prefix holds which slot and
//! buckets, the free pools, and the changes that install and remove a policy.
//!
//! A change takes what it needs into a `Reservation`; on error the
//! reservation goes back to its pools (`release`), so "on error nothing
//! changes" (xdp-user/tests/rollback.rs injects a failure at every write).

use std::collections::HashMap;

use aya::maps::{Array, IterableMap, MapData};
use ipnet::IpNet;
use xdp_common::{bucket::Limiter, maps as names, policy::Policy, vector::MAX_VECTORS};

use super::{
    loader::{take, Capacity},
    rules::DpPolicy,
    DataPlane, DpError, Faults,
};

pub(super) struct Slots {
    /// Victim prefix -> what its policy holds.
    installed: HashMap<IpNet, Installed>,
    slots: Pool,
    limiters: Pool,
    /// `AG_POLICIES`: slot -> policy.
    policy_map: Array<MapData, Policy>,
    /// `AG_LIMITERS`: limiter index -> bucket.
    limiter_map: Array<MapData, Limiter>,
}

struct Installed {
    slot: u32,
    /// Limiter index per vector. A replacement whose limit equals the one
    /// in the limiter's map entry reuses it, so the bucket keeps its state.
    limiters: Limiters,
}

/// A policy's handful of (vector, limiter index): 8 bytes each in a boxed
/// slice. (A HashMap of (vector -> index, limit) cost ~400 bytes a policy,
/// 40 MB at 100,000; the limit is read back from the map when needed.)
#[derive(Default)]
struct Limiters(Box<[(u8, u32)]>);

impl Limiters {
    fn get(&self, v: u8) -> Option<u32> {
        self.0.iter().find(|(k, _)| *k == v).map(|(_, i)| *i)
    }
    fn iter(&self) -> impl Iterator<Item = (u8, u32)> + '_ {
        self.0.iter().copied()
    }
}

/// A free list over 1..capacity (0 is reserved for "none").
struct Pool {
    free: Vec<u32>,
}

impl Pool {
    fn new(capacity: u32) -> Self {
        Self { free: (1..capacity).rev().collect() }
    }
    fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }
    fn give(&mut self, i: u32) {
        self.free.push(i);
    }
    fn available(&self) -> usize {
        self.free.len()
    }
}

/// Pool entries a change has taken and not yet handed to a policy.
#[derive(Default)]
struct Reservation {
    slot: Option<u32>,
    limiters: Vec<u32>,
}

impl Slots {
    pub(super) fn take(ebpf: &mut aya::Ebpf, c: &Capacity) -> Result<Self, DpError> {
        Ok(Self {
            installed: HashMap::new(),
            slots: Pool::new(c.policy_slots()),
            limiters: Pool::new(c.max_limiters),
            policy_map: take(ebpf, names::POLICIES)?,
            limiter_map: take(ebpf, names::LIMITERS)?,
        })
    }

    pub(super) fn map_named(&self, name: &str) -> Option<&MapData> {
        match name {
            names::POLICIES => Some(self.policy_map.map()),
            names::LIMITERS => Some(self.limiter_map.map()),
            _ => None,
        }
    }

    fn write_policy(&mut self, faults: &mut Faults, slot: u32, policy: Policy) -> Result<(), DpError> {
        faults.point()?;
        self.policy_map.set(slot, policy, 0)?;
        Ok(())
    }

    /// Give back what a failed change had reserved.
    fn release(&mut self, taken: Reservation) {
        if let Some(s) = taken.slot {
            self.slots.give(s);
        }
        for idx in taken.limiters {
            self.limiters.give(idx);
        }
    }
}

impl DataPlane {
    /// Free entries in the (policy slot, limiter, IPv4 level-2 chunk) pools.
    pub fn free_entries(&self) -> (usize, usize, u32) {
        (self.slots.slots.available(), self.slots.limiters.available(), self.capacity.v4_chunks - self.victims.v4_chunks_in_use())
    }

    pub fn policy_count(&self) -> usize {
        self.slots.installed.len()
    }

    /// Slot of the policy for exactly this victim prefix.
    pub fn slot_of(&self, victim: &IpNet) -> Option<u32> {
        self.slots.installed.get(victim).map(|p| p.slot)
    }

    /// Add a policy for a victim prefix, or replace the one it has. On error
    /// nothing changes: what the change reserved (a slot, limiters) goes back
    /// to its pool, and a victim table left half-painted is painted back.
    /// Returns the policy's slot.
    pub fn upsert_policy(&mut self, victim: IpNet, p: &DpPolicy) -> Result<u32, DpError> {
        let mut taken = Reservation::default();
        let result = self.try_upsert(victim.trunc(), p, &mut taken);
        if result.is_err() {
            self.slots.release(taken);
        }
        result
    }

    /// The body of `upsert_policy`: every `?` here ends in its rollback. The
    /// order keeps each step invisible to packets until one map write makes it
    /// live: a new policy's slot, counters and limiters are written before any
    /// victim entry points at them; a replacement goes live with the single
    /// write of its slot.
    fn try_upsert(&mut self, victim: IpNet, p: &DpPolicy, taken: &mut Reservation) -> Result<u32, DpError> {
        for (v, _) in &p.rules {
            if *v as usize >= MAX_VECTORS {
                return Err(DpError::BadVector(*v));
            }
        }
        let s = &mut self.slots;
        let existing = s.installed.get(&victim);
        // Limiters: keep the ones whose limit is unchanged, allocate the rest.
        let mut keep: HashMap<u8, u32> = HashMap::new();
        let mut needed = 0usize;
        for (v, r) in &p.rules {
            if let Some(l) = r.limit() {
                match existing.and_then(|e| e.limiters.get(*v)) {
                    Some(idx) if s.limiter_map.get(&idx, 0)?.cfg == l.to_cfg() => {
                        keep.insert(*v, idx);
                    }
                    _ => needed += 1,
                }
            }
        }
        if needed > s.limiters.available() {
            return Err(DpError::Full { what: "the limiter table", capacity: self.capacity.max_limiters, knob: "max_limiters" });
        }
        let (slot, fresh) = match existing {
            Some(e) => (e.slot, false),
            None => {
                self.victims.check_room(&victim)?;
                let slot = s.slots.take().ok_or(DpError::Full {
                    what: "the policy table",
                    capacity: self.capacity.max_policies,
                    knob: "max_policies",
                })?;
                taken.slot = Some(slot);
                (slot, true)
            }
        };
        if fresh {
            self.counters.reset(&mut self.faults, slot)?;
        }

        let mut policy = Policy::unused();
        policy.mode = p.mode.raw();
        policy.expires_ns = p.expires_ns;
        let mut installed: Vec<(u8, u32)> = Vec::new();
        for (v, r) in &p.rules {
            policy.rules[*v as usize] = r.cfg();
            if let Some(l) = r.limit() {
                let idx = match keep.get(v) {
                    Some(idx) => *idx,
                    None => {
                        let idx = s.limiters.take().expect("counted above");
                        taken.limiters.push(idx);
                        self.faults.point()?;
                        s.limiter_map.set(idx, Limiter { cfg: l.to_cfg(), state: Default::default() }, 0)?;
                        idx
                    }
                };
                policy.limiters[*v as usize] = idx;
                installed.push((*v, idx));
            }
        }
        s.write_policy(&mut self.faults, slot, policy)?;
        if fresh {
            if let Err(e) = self.victims.point(&mut self.faults, &victim, slot) {
                // Nothing points at the slot; clear it for tidiness (a reuse rewrites it anyway).
                let _ = s.write_policy(&mut self.faults, slot, Policy::unused());
                return Err(e);
            }
        }
        // Live: what was reserved now belongs to the policy.
        *taken = Reservation::default();
        let installed = Limiters(installed.into_boxed_slice());
        if let Some(old) = s.installed.insert(victim, Installed { slot, limiters: installed }) {
            for (v, idx) in old.limiters.iter() {
                if keep.get(&v) != Some(&idx) {
                    s.limiters.give(idx);
                }
            }
        }
        Ok(slot)
    }

    /// Remove the policy of a victim prefix. Returns false if it had none. On
    /// error nothing changes: the victim still points at its policy, and the
    /// record of it stays, so the removal can be retried.
    pub fn remove_policy(&mut self, victim: &IpNet) -> Result<bool, DpError> {
        let victim = victim.trunc();
        let s = &mut self.slots;
        let Some(slot) = s.installed.get(&victim).map(|i| i.slot) else { return Ok(false) };
        self.victims.unpoint(&mut self.faults, &victim, slot)?;
        let inst = s.installed.remove(&victim).expect("looked up above");
        // No packet reaches the slot any more; clearing it is tidiness (a reuse
        // rewrites every field), so a failure here does not undo the removal.
        if let Err(e) = s.write_policy(&mut self.faults, inst.slot, Policy::unused()) {
            tracing::warn!(slot, "clearing the slot of a removed policy: {e}");
        }
        s.slots.give(inst.slot);
        for (_, idx) in inst.limiters.iter() {
            s.limiters.give(idx);
        }
        Ok(true)
    }
}
