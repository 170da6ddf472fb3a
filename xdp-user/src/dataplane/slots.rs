//! Policy slots, rule entries and limiter indexes: which victim prefix holds
//! which, the free pools, and the changes that install and remove a policy.
//!
//! A change takes what it needs into a `Reservation`; on error the
//! reservation goes back to its pools (`release`) and rule entries already
//! rewritten are written back, so "on error nothing changes"
//! (tests/tests/rollback.rs injects a failure at every write).

use std::collections::{HashMap, VecDeque};

use aya::maps::{Array, IterableMap, MapData};
use ipnet::IpNet;
use xdp_common::{
    bucket::Limiter,
    maps as names,
    policy::{action, Policy, RuleCfg, RuleEntry, NO_CELL},
    vector::MAX_VECTORS,
};

use super::{
    batch,
    loader::{take, Capacity},
    rules::DpPolicy,
    DataPlane, DpError, Faults,
};

pub(super) struct Slots {
    /// Victim prefix -> what its policy holds.
    installed: HashMap<IpNet, Installed>,
    slots: Pool,
    limiters: Pool,
    cells: CellPool,
    /// The last policy generation handed out (0 is never used).
    gen: u32,
    /// `AG_POLICIES`: slot -> policy.
    policy_map: Array<MapData, Policy>,
    /// `AG_RULES`: rule entry -> rule and limiter.
    rule_map: Array<MapData, RuleEntry>,
    /// `AG_LIMITERS`: limiter index -> bucket.
    limiter_map: Array<MapData, Limiter>,
}

struct Installed {
    slot: u32,
    /// Limiter index per vector. A replacement whose limit equals the one
    /// in the limiter's map entry reuses it, so the bucket keeps its state.
    /// (The policy's generation and rule entries are read back from its
    /// `Policy` in the map when a change needs them: 152 bytes a policy of
    /// userspace memory saved, 15 MB at 100,000.)
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

/// The rule entries of a policy as the map holds them: (vector, entry) for
/// each vector with one of its own, and the shared `pass` entry.
fn held_cells(p: &Policy) -> Vec<(u8, u32)> {
    p.cells.iter().enumerate().filter(|(_, c)| **c != NO_CELL && **c != p.pass_cell).map(|(v, c)| (v as u8, *c)).collect()
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

/// Rule entries: the never used first, then the least recently freed. A freed
/// entry's generation is cleared at once (so counts a CPU still caches for it
/// are discarded when folded), and by the time it is handed out again no CPU
/// is still in the middle of folding into it. Userspace memory is O(freed),
/// not O(capacity): 2.6 million entries at 131,072 policies would be 10 MB of
/// free list.
struct CellPool {
    /// Entries `next..capacity` were never handed out.
    next: u32,
    capacity: u32,
    freed: VecDeque<u32>,
}

impl CellPool {
    fn new(capacity: u32) -> Self {
        Self { next: 1, capacity, freed: VecDeque::new() }
    }
    fn take(&mut self) -> Option<u32> {
        if self.next < self.capacity {
            self.next += 1;
            return Some(self.next - 1);
        }
        self.freed.pop_front()
    }
    /// Back after use: the end of the queue.
    fn give(&mut self, i: u32) {
        self.freed.push_back(i);
    }
    /// Back unused (a change that failed): as if never taken.
    fn untake(&mut self, i: u32) {
        if i + 1 == self.next {
            self.next -= 1;
        } else {
            self.freed.push_front(i);
        }
    }
    fn available(&self) -> usize {
        (self.capacity - self.next) as usize + self.freed.len()
    }
}

/// Pool entries a change has taken and not yet handed to a policy, and the
/// rule entries it rewrote (with their old values) in a live policy.
#[derive(Default)]
struct Reservation {
    slot: Option<u32>,
    limiters: Vec<u32>,
    cells: Vec<u32>,
    rewritten: Vec<(u32, RuleEntry)>,
}

impl Slots {
    pub(super) fn take(ebpf: &mut aya::Ebpf, c: &Capacity) -> Result<Self, DpError> {
        Ok(Self {
            installed: HashMap::new(),
            slots: Pool::new(c.policy_slots()),
            limiters: Pool::new(c.max_limiters),
            cells: CellPool::new(c.rule_entries()),
            gen: 0,
            policy_map: take(ebpf, names::POLICIES)?,
            rule_map: take(ebpf, names::RULES)?,
            limiter_map: take(ebpf, names::LIMITERS)?,
        })
    }

    pub(super) fn map_named(&self, name: &str) -> Option<&MapData> {
        match name {
            names::POLICIES => Some(self.policy_map.map()),
            names::RULES => Some(self.rule_map.map()),
            names::LIMITERS => Some(self.limiter_map.map()),
            _ => None,
        }
    }

    fn write_policy(&mut self, faults: &mut Faults, slot: u32, policy: Policy) -> Result<(), DpError> {
        faults.point()?;
        self.policy_map.set(slot, policy, 0)?;
        Ok(())
    }

    fn write_rule(&mut self, faults: &mut Faults, cell: u32, entry: RuleEntry) -> Result<(), DpError> {
        faults.point()?;
        self.rule_map.set(cell, entry, 0)?;
        Ok(())
    }

    /// Rule entries no packet reaches yet, in one write.
    fn write_new_rules(&mut self, faults: &mut Faults, entries: &[(u32, RuleEntry)]) -> Result<(), DpError> {
        faults.point()?;
        batch::update_all(self.rule_map.map(), entries)
    }

    /// Rule entries of detection's meters: `pass` under `gen` (0 frees them), in one write.
    pub(super) fn write_meter_rules(&mut self, cells: std::ops::Range<u32>, gen: u32) -> Result<(), DpError> {
        let entries: Vec<_> = cells.map(|c| (c, RuleEntry::pass(gen))).collect();
        batch::update_all(self.rule_map.map(), &entries)
    }

    /// The policy in a slot, as the program reads it.
    pub(super) fn policy_at(&self, slot: u32) -> Result<Policy, DpError> {
        Ok(self.policy_map.get(&slot, 0)?)
    }

    /// A generation no policy of this data plane has had.
    pub(super) fn next_gen(&mut self) -> u32 {
        self.gen = self.gen.wrapping_add(1).max(1);
        self.gen
    }

    /// Give back what a failed change had reserved, and write back the rule
    /// entries it had rewritten (best effort: the write that failed was one
    /// of the change's, and array writes to valid indexes do not fail).
    fn release(&mut self, taken: Reservation) {
        if let Some(s) = taken.slot {
            self.slots.give(s);
        }
        for idx in taken.limiters {
            self.limiters.give(idx);
        }
        for cell in taken.cells.into_iter().rev() {
            self.cells.untake(cell);
        }
        for (cell, old) in taken.rewritten.into_iter().rev() {
            if let Err(e) = self.rule_map.set(cell, old, 0) {
                tracing::error!(cell, "writing back a rule entry after a failed change: {e}");
            }
        }
    }
}

impl DataPlane {
    /// Free entries in the (policy slot, limiter, IPv4 level-2 chunk, rule
    /// entry) pools.
    pub fn free_entries(&self) -> (usize, usize, u32, usize) {
        let s = &self.slots;
        (s.slots.available(), s.limiters.available(), self.capacity.v4_chunks - self.victims.v4_chunks_in_use(), s.cells.available())
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
    /// order keeps each step invisible to packets until a map write makes it
    /// live: a new policy's slot, rule entries, counters and limiters are
    /// written before any victim entry points at them. A replacement rewrites
    /// the rule entries of the vectors it keeps (each packet sees its vector's
    /// old or new rule), then the policy (mode, expiry, plain drops) with one
    /// write.
    fn try_upsert(&mut self, victim: IpNet, p: &DpPolicy, taken: &mut Reservation) -> Result<u32, DpError> {
        for (v, _) in &p.rules {
            if *v as usize >= MAX_VECTORS {
                return Err(DpError::BadVector(*v));
            }
        }
        let s = &mut self.slots;
        // A replacement: what the policy holds, from its map entry.
        let existing = match s.installed.get(&victim) {
            Some(e) => Some((e.slot, Limiters(e.limiters.0.clone()), s.policy_map.get(&e.slot, 0)?)),
            None => None,
        };
        let held: Vec<(u8, u32)> = existing.as_ref().map(|(_, _, cur)| held_cells(cur)).unwrap_or_default();
        // Limiters: keep the ones whose limit is unchanged, allocate the rest.
        // Rule entries: keep every one the policy holds, add one per newly
        // named vector (and the shared `pass` one for a new policy).
        let mut keep: HashMap<u8, u32> = HashMap::new();
        let mut needed = 0usize;
        let mut new_cells = usize::from(existing.is_none());
        for (v, r) in &p.rules {
            if !held.iter().any(|(k, _)| k == v) {
                new_cells += 1;
            }
            if let Some(l) = r.limit() {
                match existing.as_ref().and_then(|e| e.1.get(*v)) {
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
        if new_cells > s.cells.available() {
            return Err(DpError::Full { what: "the rule table", capacity: self.capacity.rule_entries() - 1, knob: "max_rules" });
        }
        let (slot, gen, pass_cell, fresh) = match &existing {
            Some((slot, _, cur)) => (*slot, cur.gen, cur.pass_cell, false),
            None => {
                self.victims.check_room(&victim)?;
                let slot = s.slots.take().ok_or(DpError::Full {
                    what: "the policy table",
                    capacity: self.capacity.max_policies,
                    knob: "max_policies",
                })?;
                taken.slot = Some(slot);
                let cell = s.cells.take().expect("counted above");
                taken.cells.push(cell);
                (slot, s.next_gen(), cell, true)
            }
        };

        let mut policy = Policy::unused();
        policy.mode = p.mode.raw();
        policy.expires_ns = p.expires_ns;
        policy.gen = gen;
        policy.pass_cell = pass_cell;
        policy.cells = [pass_cell; MAX_VECTORS];
        let rules: HashMap<u8, _> = p.rules.iter().map(|(v, r)| (*v, r)).collect();
        let entry_of = |v: u8, limiter: u32| match rules.get(&v) {
            Some(r) => RuleEntry { rule: r.cfg(), limiter, gen },
            None => RuleEntry::pass(gen),
        };
        let mut limiters: Vec<(u8, u32)> = Vec::new();
        let mut limiter_of = |s: &mut Slots, faults: &mut Faults, v: u8, taken: &mut Reservation| -> Result<u32, DpError> {
            let Some(l) = rules.get(&v).and_then(|r| r.limit()) else { return Ok(0) };
            let idx = match keep.get(&v) {
                Some(idx) => *idx,
                None => {
                    let idx = s.limiters.take().expect("counted above");
                    taken.limiters.push(idx);
                    faults.point()?;
                    s.limiter_map.set(idx, Limiter { cfg: l.to_cfg(), state: Default::default() }, 0)?;
                    idx
                }
            };
            limiters.push((v, idx));
            Ok(idx)
        };
        // New rule entries (no packet reaches them yet): counters, then rules,
        // each in one write.
        let mut fresh_rules: Vec<(u32, RuleEntry)> = Vec::new();
        if fresh {
            fresh_rules.push((pass_cell, RuleEntry::pass(gen)));
        }
        for (v, _) in &p.rules {
            if held.iter().any(|(k, _)| k == v) {
                continue;
            }
            let cell = s.cells.take().expect("counted above");
            taken.cells.push(cell);
            let limiter = limiter_of(s, &mut self.faults, *v, taken)?;
            fresh_rules.push((cell, entry_of(*v, limiter)));
            policy.cells[*v as usize] = cell;
        }
        let new_cells: Vec<u32> = fresh_rules.iter().map(|(c, _)| *c).collect();
        self.counters.claim(&mut self.faults, &new_cells)?;
        s.write_new_rules(&mut self.faults, &fresh_rules)?;
        // Entries the policy keeps (a vector it no longer names passes), then
        // the policy itself: one write each.
        for (v, cell) in &held {
            let limiter = limiter_of(s, &mut self.faults, *v, taken)?;
            let entry = entry_of(*v, limiter);
            policy.cells[*v as usize] = *cell;
            let old = s.rule_map.get(cell, 0)?;
            if old != entry {
                s.write_rule(&mut self.faults, *cell, entry)?;
                taken.rewritten.push((*cell, old));
            }
        }
        for (v, cell) in policy.cells.iter().enumerate() {
            if *cell != pass_cell && rules.get(&(v as u8)).is_some_and(|r| r.cfg() == RuleCfg::plain(action::DROP)) {
                policy.drop_mask |= 1 << v;
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
        limiters.sort_unstable();
        if let Some(old) = s.installed.insert(victim, Installed { slot, limiters: Limiters(limiters.into_boxed_slice()) }) {
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
        // Its rule entries, to free once nothing points at it.
        let policy = s.policy_map.get(&slot, 0)?;
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
        let mut cells: Vec<u32> = held_cells(&policy).into_iter().map(|(_, c)| c).collect();
        if policy.pass_cell != NO_CELL {
            cells.push(policy.pass_cell);
        }
        // Generation 0: what CPUs still cache for these entries is discarded.
        let cleared: Vec<_> = cells.iter().map(|c| (*c, RuleEntry::pass(0))).collect();
        if let Err(e) = batch::update_all(s.rule_map.map(), &cleared) {
            tracing::warn!(?cells, "clearing the rule entries of a removed policy: {e}");
        }
        self.counters.free(&cells);
        for c in cells {
            s.cells.give(c);
        }
        Ok(true)
    }
}
