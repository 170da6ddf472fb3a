//! The data-plane handle: the only code that touches the XDP program's maps.
//!
//! It loads the program (or adopts pinned maps), owns policy slots and
//! limiter indexes, keeps userspace mirrors of the victim and allowlist tables,
//! and offers typed operations: set the vector table, upsert/remove a policy
//! for a victim prefix, add/remove allowlist prefixes, read counters.

pub mod allowbits;
pub mod attach;
mod batch;
mod linkinfo;
pub mod netdev;
pub mod rules;
pub mod victims4;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, PerCpuArray, PerCpuValues},
    programs::Xdp,
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use ipnet::IpNet;
use xdp_common::{
    bucket::Limiter,
    counters::{reason, Counter, VerdictCounters},
    maps as names,
    policy::{Config, Policy, NO_SLOT},
    vector::MAX_VECTORS,
};

use self::{
    allowbits::AllowBits,
    rules::DpPolicy,
    victims4::{Victims4, Write},
};

/// The XDP object built by build.rs.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf"));

/// Baseline programs (`xdp_pass`, `xdp_count_drop`) for benchmarks.
pub static BASELINE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-baseline"));

#[derive(Debug, thiserror::Error)]
pub enum DpError {
    #[error("loading the XDP program failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("map operation failed: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("program operation failed: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("the XDP object has no map {0} (built from another version?)")]
    MissingMap(&'static str),
    #[error("{what} is full ({capacity} entries); raise `{knob}` in the config")]
    Full { what: &'static str, capacity: u32, knob: &'static str },
    #[error(transparent)]
    Chunks(#[from] victims4::ChunksExhausted),
    #[error("vector id {0} is out of range (0..{max})", max = MAX_VECTORS)]
    BadVector(u8),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Sizes of the tables (maps are created with these unless adopted from pins).
#[derive(Clone, Debug)]
pub struct Capacity {
    pub max_policies: u32,
    pub max_limiters: u32,
    pub v4_chunks: u32,
    pub max_v6_victims: u32,
    pub max_allow: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_policies: names::DEFAULT_MAX_POLICIES,
            max_limiters: names::DEFAULT_MAX_LIMITERS,
            v4_chunks: names::DEFAULT_V4_CHUNKS,
            max_v6_victims: names::DEFAULT_MAX_V6_VICTIMS,
            max_allow: names::DEFAULT_MAX_ALLOW,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub capacity: Capacity,
    /// Pin (or adopt) every map under this bpffs directory.
    pub pin_dir: Option<PathBuf>,
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

pub struct DataPlane {
    ebpf: Ebpf,
    capacity: Capacity,
    v4: Victims4,
    v6: BTreeMap<IpNet, u32>,
    policies: HashMap<IpNet, Installed>,
    slots: Pool,
    limiters: Pool,
    allow: BTreeMap<IpNet, u32>,
    allow_bits: AllowBits,
    next_allow_id: u32,
    /// Fault injection: the map write this many writes from now fails.
    fail_write_in: Option<u32>,
}

/// Pool entries a change has taken and not yet handed to a policy.
#[derive(Default)]
struct Reservation {
    slot: Option<u32>,
    limiters: Vec<u32>,
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map, DpError> {
    ebpf.map_mut(name).ok_or(DpError::MissingMap(name))
}

fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, DpError> {
    ebpf.map(name).ok_or(DpError::MissingMap(name))
}

impl DataPlane {
    /// Load the program and create (or adopt, with `pin_dir`) its maps. The
    /// program is loaded into the kernel but not attached.
    pub fn load(opts: &LoadOptions) -> Result<Self, DpError> {
        let c = &opts.capacity;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::POLICIES, c.max_policies)
            .map_max_entries(names::POLICY_COUNTERS, c.max_policies * MAX_VECTORS as u32)
            .map_max_entries(names::LIMITERS, c.max_limiters)
            .map_max_entries(names::V4_L2, c.v4_chunks * names::CHUNK_ENTRIES)
            .map_max_entries(names::V6_VICTIMS, c.max_v6_victims)
            .map_max_entries(names::ALLOW_V4, c.max_allow)
            .map_max_entries(names::ALLOW_V6, c.max_allow);
        let pins: Vec<(&str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                names::ALL.iter().map(|n| (*n, dir.join(n))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(XDP_OBJECT)?;
        let program: &mut Xdp = ebpf.program_mut(names::PROGRAM).ok_or(DpError::MissingMap(names::PROGRAM))?.try_into()?;
        program.load()?;
        let mut cfg: Array<_, Config> = Array::try_from(map_mut(&mut ebpf, names::CONFIG)?)?;
        cfg.set(0, Config::DEFAULT, 0)?;
        Ok(Self {
            ebpf,
            v4: Victims4::new(c.v4_chunks),
            v6: BTreeMap::new(),
            policies: HashMap::new(),
            slots: Pool::new(c.max_policies),
            limiters: Pool::new(c.max_limiters),
            allow: BTreeMap::new(),
            allow_bits: AllowBits::default(),
            next_allow_id: 1,
            fail_write_in: None,
            capacity: c.clone(),
        })
    }

    /// Pin every map under `dir` (replacing pins of a previous run), so
    /// bpftool and operators can inspect what is enforced. Maps handed out
    /// with `take_samples` are no longer here to pin.
    pub fn pin_maps(&self, dir: &std::path::Path) -> Result<(), DpError> {
        std::fs::create_dir_all(dir)?;
        for name in names::ALL {
            let Some(m) = self.ebpf.map(name) else { continue };
            let path = dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            m.pin(&path).map_err(|e| std::io::Error::other(format!("pin {}: {e}", path.display())))?;
        }
        Ok(())
    }

    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// The XDP program, to attach or to test-run.
    pub fn program(&self) -> &Xdp {
        self.ebpf.program(names::PROGRAM).expect("loaded").try_into().expect("xdp")
    }

    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf.program_mut(names::PROGRAM).expect("loaded").try_into().expect("xdp")
    }

    /// Replace the whole UDP source port -> vector table.
    pub fn set_vectors(&mut self, ports: &[(u16, u8)]) -> Result<(), DpError> {
        let mut table = vec![0u8; 65536];
        for &(port, id) in ports {
            if id as usize >= MAX_VECTORS {
                return Err(DpError::BadVector(id));
            }
            table[port as usize] = id;
        }
        let mut arr: Array<_, u8> = Array::try_from(map_mut(&mut self.ebpf, names::PORTS)?)?;
        for (port, id) in table.iter().enumerate() {
            // Only non-zero entries and entries that change need writing.
            if *id != 0 || arr.get(&(port as u32), 0)? != 0 {
                arr.set(port as u32, id, 0)?;
            }
        }
        Ok(())
    }

    /// Use a fixed "now" (ns) instead of the kernel clock; 0 restores the clock.
    /// For tests only: makes expiry and token buckets deterministic.
    pub fn set_time_override(&mut self, now_ns: u64) -> Result<(), DpError> {
        self.update_config(|c| c.time_override_ns = now_ns)
    }

    /// Read-modify-write of the program's one `Config` entry.
    fn update_config(&mut self, change: impl FnOnce(&mut Config)) -> Result<(), DpError> {
        self.fault_point()?;
        let mut cfg: Array<_, Config> = Array::try_from(map_mut(&mut self.ebpf, names::CONFIG)?)?;
        let mut c = cfg.get(&0, 0)?;
        change(&mut c);
        cfg.set(0, c, 0)?;
        Ok(())
    }

    /// Sample at most `per_sec` dropped/limited/monitored packets a second
    /// per CPU into the ring buffer (0 = off).
    pub fn set_sampling(&mut self, per_sec: u32) -> Result<(), DpError> {
        self.update_config(|c| c.samples_per_sec = per_sec)
    }

    /// Samples a second per CPU now configured (0 = off).
    pub fn sampling(&self) -> Result<u32, DpError> {
        let cfg: Array<_, Config> = Array::try_from(map(&self.ebpf, names::CONFIG)?)?;
        Ok(cfg.get(&0, 0)?.samples_per_sec)
    }

    /// The ring buffer of samples, for a reader task (can be taken once).
    pub fn take_samples(&mut self) -> Result<aya::maps::RingBuf<MapData>, DpError> {
        let m = self.ebpf.take_map(names::SAMPLES).ok_or(DpError::MissingMap(names::SAMPLES))?;
        Ok(aya::maps::RingBuf::try_from(m)?)
    }

    /// The victim prefix whose policy sits in `slot`.
    pub fn victim_of_slot(&self, slot: u32) -> Option<IpNet> {
        self.policies.iter().find(|(_, p)| p.slot == slot).map(|(v, _)| *v)
    }

    /// Thresholds of the DNS signature.
    pub fn set_dns_signature(&mut self, large_bytes: u16, many_answers: u16) -> Result<(), DpError> {
        self.update_config(|c| {
            c.dns_large_bytes = large_bytes;
            c.dns_many_answers = many_answers;
        })
    }

    /// Free entries in the (policy slot, limiter, IPv4 level-2 chunk) pools.
    pub fn free_entries(&self) -> (usize, usize, u32) {
        (self.slots.available(), self.limiters.available(), self.capacity.v4_chunks - self.v4.chunks_in_use())
    }

    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Slot of the policy for exactly this victim prefix.
    pub fn slot_of(&self, victim: &IpNet) -> Option<u32> {
        self.policies.get(victim).map(|p| p.slot)
    }

    /// Add a policy for a victim prefix, or replace the one it has. On error
    /// nothing changes: what the change reserved (a slot, limiters) goes back
    /// to its pool, and a victim table left half-painted is painted back.
    /// Returns the policy's slot.
    pub fn upsert_policy(&mut self, victim: IpNet, p: &DpPolicy) -> Result<u32, DpError> {
        let mut taken = Reservation::default();
        let result = self.try_upsert(victim.trunc(), p, &mut taken);
        if result.is_err() {
            self.release(taken);
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
        let existing = self.policies.get(&victim);
        // Limiters: keep the ones whose limit is unchanged, allocate the rest.
        let mut keep: HashMap<u8, u32> = HashMap::new();
        let mut needed = 0usize;
        {
            let limiter_map: Array<&MapData, Limiter> = Array::try_from(map(&self.ebpf, names::LIMITERS)?)?;
            for (v, r) in &p.rules {
                if let Some(l) = r.limit() {
                    match existing.and_then(|e| e.limiters.get(*v)) {
                        Some(idx) if limiter_map.get(&idx, 0)?.cfg == l.to_cfg() => {
                            keep.insert(*v, idx);
                        }
                        _ => needed += 1,
                    }
                }
            }
        }
        if needed > self.limiters.available() {
            return Err(DpError::Full { what: "the limiter table", capacity: self.capacity.max_limiters, knob: "max_limiters" });
        }
        let (slot, fresh) = match existing {
            Some(e) => (e.slot, false),
            None => {
                self.check_victim_room(&victim)?;
                let s = self.slots.take().ok_or(DpError::Full {
                    what: "the policy table",
                    capacity: self.capacity.max_policies,
                    knob: "max_policies",
                })?;
                taken.slot = Some(s);
                (s, true)
            }
        };
        if fresh {
            self.reset_counters(slot)?;
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
                        let idx = self.limiters.take().expect("counted above");
                        taken.limiters.push(idx);
                        self.fault_point()?;
                        let mut limiter_map: Array<_, Limiter> = Array::try_from(map_mut(&mut self.ebpf, names::LIMITERS)?)?;
                        limiter_map.set(idx, Limiter { cfg: l.to_cfg(), state: Default::default() }, 0)?;
                        idx
                    }
                };
                policy.limiters[*v as usize] = idx;
                installed.push((*v, idx));
            }
        }
        self.write_policy(slot, policy)?;
        if fresh {
            if let Err(e) = self.point_victim(&victim, slot) {
                // Nothing points at the slot; clear it for tidiness (a reuse rewrites it anyway).
                let _ = self.write_policy(slot, Policy::unused());
                return Err(e);
            }
        }
        // Live: what was reserved now belongs to the policy.
        *taken = Reservation::default();
        let installed = Limiters(installed.into_boxed_slice());
        if let Some(old) = self.policies.insert(victim, Installed { slot, limiters: installed }) {
            for (v, idx) in old.limiters.iter() {
                if keep.get(&v) != Some(&idx) {
                    self.limiters.give(idx);
                }
            }
        }
        Ok(slot)
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

    /// Remove the policy of a victim prefix. Returns false if it had none. On
    /// error nothing changes: the victim still points at its policy, and the
    /// record of it stays, so the removal can be retried.
    pub fn remove_policy(&mut self, victim: &IpNet) -> Result<bool, DpError> {
        let victim = victim.trunc();
        let Some(slot) = self.policies.get(&victim).map(|i| i.slot) else { return Ok(false) };
        self.unpoint_victim(&victim, slot)?;
        let inst = self.policies.remove(&victim).expect("looked up above");
        // No packet reaches the slot any more; clearing it is tidiness (a reuse
        // rewrites every field), so a failure here does not undo the removal.
        if let Err(e) = self.write_policy(inst.slot, Policy::unused()) {
            tracing::warn!(slot, "clearing the slot of a removed policy: {e}");
        }
        self.slots.give(inst.slot);
        for (_, idx) in inst.limiters.iter() {
            self.limiters.give(idx);
        }
        Ok(true)
    }

    /// Make the `n`th map write from now fail (0 = the next one), once. For
    /// fault-injection tests of "on error nothing changes".
    #[doc(hidden)]
    pub fn inject_write_failure(&mut self, n: u32) {
        self.fail_write_in = Some(n);
    }

    fn fault_point(&mut self) -> Result<(), DpError> {
        match self.fail_write_in {
            Some(0) => {
                self.fail_write_in = None;
                Err(DpError::Io(std::io::Error::other("injected map write failure")))
            }
            Some(n) => {
                self.fail_write_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn write_policy(&mut self, slot: u32, policy: Policy) -> Result<(), DpError> {
        self.fault_point()?;
        let mut policies: Array<_, Policy> = Array::try_from(map_mut(&mut self.ebpf, names::POLICIES)?)?;
        policies.set(slot, policy, 0)?;
        Ok(())
    }

    fn check_victim_room(&self, victim: &IpNet) -> Result<(), DpError> {
        if let IpNet::V6(_) = victim {
            if self.v6.len() as u32 >= self.capacity.max_v6_victims {
                return Err(DpError::Full {
                    what: "the IPv6 victim table",
                    capacity: self.capacity.max_v6_victims,
                    knob: "max_v6_victims",
                });
            }
        }
        Ok(())
    }

    /// Point a new victim prefix at `slot`. On error the victim tables are
    /// as they were.
    fn point_victim(&mut self, victim: &IpNet, slot: u32) -> Result<(), DpError> {
        match victim {
            IpNet::V4(n) => {
                let (addr, len) = (u32::from(n.network()), n.prefix_len());
                let writes = self.v4.insert(addr, len, slot)?;
                if let Err(e) = self.apply_v4(&writes) {
                    let undo = self.v4.remove(addr, len).expect("just inserted");
                    self.repaint_v4(&undo, victim);
                    return Err(e);
                }
                Ok(())
            }
            IpNet::V6(n) => {
                self.fault_point()?;
                let mut trie: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(map_mut(&mut self.ebpf, names::V6_VICTIMS)?)?;
                trie.insert(&Key::new(n.prefix_len() as u32, n.network().octets()), slot, 0)?;
                self.v6.insert(*victim, slot);
                Ok(())
            }
        }
    }

    /// Stop a victim prefix pointing at `slot`. On error the victim tables
    /// are as they were.
    fn unpoint_victim(&mut self, victim: &IpNet, slot: u32) -> Result<(), DpError> {
        match victim {
            IpNet::V4(n) => {
                let (addr, len) = (u32::from(n.network()), n.prefix_len());
                if let Some(writes) = self.v4.remove(addr, len) {
                    if let Err(e) = self.apply_v4(&writes) {
                        let redo = self.v4.insert(addr, len, slot).expect("the chunk it just gave back");
                        self.repaint_v4(&redo, victim);
                        return Err(e);
                    }
                }
                Ok(())
            }
            IpNet::V6(n) => {
                self.fault_point()?;
                let mut trie: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(map_mut(&mut self.ebpf, names::V6_VICTIMS)?)?;
                trie.remove(&Key::new(n.prefix_len() as u32, n.network().octets()))?;
                self.v6.remove(victim);
                Ok(())
            }
        }
    }

    /// Write the kernel's IPv4 table back to the mirror after a failed
    /// change. If this fails too the kernel and the mirror disagree: say so.
    fn repaint_v4(&mut self, writes: &[Write], victim: &IpNet) {
        if let Err(e) = self.apply_v4(writes) {
            tracing::error!(%victim, "rolling back the IPv4 victim table failed too ({e}); restart the daemon to rebuild it from the state file");
        }
    }

    fn apply_v4(&mut self, writes: &[Write]) -> Result<(), DpError> {
        for w in writes {
            self.fault_point()?;
            let [l1, l2] = self.ebpf.maps_disjoint_mut([names::V4_L1, names::V4_L2]);
            match *w {
                Write::L1 { index, value } => {
                    Array::<_, u64>::try_from(l1.ok_or(DpError::MissingMap(names::V4_L1))?)?.set(index, value, 0)?
                }
                Write::L2 { index, slot } => {
                    Array::<_, u32>::try_from(l2.ok_or(DpError::MissingMap(names::V4_L2))?)?.set(index, slot, 0)?
                }
            }
        }
        Ok(())
    }

    /// Zero a slot's counters for every vector and CPU: one batched write.
    fn reset_counters(&mut self, slot: u32) -> Result<(), DpError> {
        let ncpu = nr_cpus().map_err(|(_, e)| e)?;
        // Per-CPU values are rounded up to 8 bytes each; VerdictCounters already is.
        const _: () = assert!(std::mem::size_of::<VerdictCounters>().is_multiple_of(8));
        let value_size = std::mem::size_of::<VerdictCounters>() * ncpu;
        let keys: Vec<u32> = (0..MAX_VECTORS as u32).map(|v| slot * MAX_VECTORS as u32 + v).collect();
        let zeros = vec![0u8; keys.len() * value_size];
        self.fault_point()?;
        batch::update(map(&self.ebpf, names::POLICY_COUNTERS)?, &keys, &zeros, value_size)
    }

    /// Victim prefix -> slot, longest prefix first semantics (for the model).
    pub fn victim_slot(&self, dst: IpAddr) -> u32 {
        match dst {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self
                .v6
                .iter()
                .filter(|(n, _)| n.contains(&IpAddr::V6(a)))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|(_, s)| *s)
                .unwrap_or(NO_SLOT),
        }
    }

    /// Add a source prefix that no policy ever touches.
    pub fn add_allow(&mut self, prefix: IpNet) -> Result<(), DpError> {
        let prefix = prefix.trunc();
        if self.allow.contains_key(&prefix) {
            return Ok(());
        }
        if self.allow.len() as u32 >= self.capacity.max_allow {
            return Err(DpError::Full { what: "the allowlist", capacity: self.capacity.max_allow, knob: "max_allow" });
        }
        let id = self.next_allow_id;
        self.set_allow_trie(&prefix, Some(id))?;
        self.next_allow_id += 1;
        self.allow.insert(prefix, id);
        let writes = self.allow_bits.update(&prefix, self.allow.keys());
        self.apply_allow_bits(&writes)
    }

    pub fn remove_allow(&mut self, prefix: &IpNet) -> Result<bool, DpError> {
        let prefix = prefix.trunc();
        if self.allow.remove(&prefix).is_none() {
            return Ok(false);
        }
        // Bits first: a stale bit only costs a trie lookup, a missing one would
        // skip a real entry.
        let writes = self.allow_bits.update(&prefix, self.allow.keys());
        self.apply_allow_bits(&writes)?;
        self.set_allow_trie(&prefix, None)?;
        Ok(true)
    }

    pub fn allowlist(&self) -> impl Iterator<Item = &IpNet> {
        self.allow.keys()
    }

    /// Whether a source address is allowlisted (for the model).
    pub fn is_allowlisted(&self, src: IpAddr) -> bool {
        self.allow.keys().any(|n| n.contains(&src))
    }

    fn set_allow_trie(&mut self, prefix: &IpNet, id: Option<u32>) -> Result<(), DpError> {
        match prefix {
            IpNet::V4(n) => {
                let mut t: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(map_mut(&mut self.ebpf, names::ALLOW_V4)?)?;
                let key = Key::new(n.prefix_len() as u32, n.network().octets());
                match id {
                    Some(id) => t.insert(&key, id, 0)?,
                    None => t.remove(&key)?,
                }
            }
            IpNet::V6(n) => {
                let mut t: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(map_mut(&mut self.ebpf, names::ALLOW_V6)?)?;
                let key = Key::new(n.prefix_len() as u32, n.network().octets());
                match id {
                    Some(id) => t.insert(&key, id, 0)?,
                    None => t.remove(&key)?,
                }
            }
        }
        Ok(())
    }

    fn apply_allow_bits(&mut self, writes: &[(u32, u64)]) -> Result<(), DpError> {
        let mut bits: Array<_, u64> = Array::try_from(map_mut(&mut self.ebpf, names::ALLOW_BITS)?)?;
        for (w, v) in writes {
            bits.set(*w, v, 0)?;
        }
        Ok(())
    }

    /// Per-vector counters of one policy slot, summed over CPUs.
    pub fn policy_counters(&self, slot: u32) -> Result<Vec<VerdictCounters>, DpError> {
        let c: PerCpuArray<_, VerdictCounters> = PerCpuArray::try_from(map(&self.ebpf, names::POLICY_COUNTERS)?)?;
        (0..MAX_VECTORS as u32).map(|v| Ok(sum_verdicts(&c.get(&(slot * MAX_VECTORS as u32 + v), 0)?))).collect()
    }

    /// Per-vector counters over all policies, summed over CPUs.
    pub fn vector_counters(&self) -> Result<Vec<VerdictCounters>, DpError> {
        let c: PerCpuArray<_, VerdictCounters> = PerCpuArray::try_from(map(&self.ebpf, names::VECTOR_COUNTERS)?)?;
        (0..MAX_VECTORS as u32).map(|v| Ok(sum_verdicts(&c.get(&v, 0)?))).collect()
    }

    /// Packets that met no policy, by reason, summed over CPUs.
    pub fn reason_counters(&self) -> Result<[Counter; reason::COUNT], DpError> {
        let c: PerCpuArray<_, Counter> = PerCpuArray::try_from(map(&self.ebpf, names::REASONS)?)?;
        let mut out = [Counter::default(); reason::COUNT];
        for (i, o) in out.iter_mut().enumerate() {
            for v in c.get(&(i as u32), 0)?.iter() {
                o.packets += v.packets;
                o.bytes += v.bytes;
            }
        }
        Ok(out)
    }

    /// Bucket state of a policy's limiter for a vector (tests and debugging).
    pub fn limiter(&self, victim: &IpNet, vector: u8) -> Result<Option<Limiter>, DpError> {
        let Some(idx) = self.policies.get(&victim.trunc()).and_then(|p| p.limiters.get(vector)) else {
            return Ok(None);
        };
        let m: Array<&MapData, Limiter> = Array::try_from(map(&self.ebpf, names::LIMITERS)?)?;
        Ok(Some(m.get(&idx, 0)?))
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
