//! Loading the program, taking a typed handle on each map once, and pinning.
//!
//! Every map the controller writes or reads is taken out of the `Ebpf` at
//! load into the concern that owns it (settings, slots, victims, allowlist,
//! counters); a map missing from the object, or of another type, is a
//! start-up error. The program-private maps (clock, sampler) and the sample
//! ring buffer (until `take_samples`) stay in the `Ebpf`.

use std::path::Path;

use aya::{
    maps::{Map, MapData, MapError},
    pin::PinError,
    programs::Xdp,
    EbpfLoader,
};
use xdp_common::{
    maps as names,
    meter::{MeterCfg, EVENTS_RING_BYTES, SKETCH_ROWS},
    policy::Config,
    vector::MAX_VECTORS,
};

use super::{
    allowlist::Allowlist, counters::Counters, meters::Meters, settings::Settings, slots::Slots, victims::Victims, DataPlane, DpError,
    Faults, XDP_OBJECT,
};

/// Sizes of the tables (the maps are created with these): the config's
/// `[capacity]` table, so an operator and the data plane count alike.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Victim policies. The policy table has one more entry: slot 0 means
    /// "no policy" and is never handed out.
    pub max_policies: u32,
    /// Token-bucket entries (one per limited vector per policy).
    pub max_limiters: u32,
    /// Rule entries: one per vector a policy names, plus one per policy for
    /// the vectors it does not name. Unset: 20 per policy (the default profile's need).
    pub max_rules: Option<u32>,
    /// IPv4 level-2 chunks (one per /16 that holds victims longer than /16).
    pub v4_chunks: u32,
    /// IPv6 victim prefixes: sizes the hash table for the worst case (every
    /// prefix with its most markers, `xdp_common::v6::buckets_for`) and the trie.
    pub max_v6_victims: u32,
    pub max_allow: u32,
    /// Destinations built-in detection meters exactly at once (32 rule
    /// entries, 2.5 KiB, each); used only while detection is enabled.
    pub max_tracked: u32,
    /// Columns of each row of detection's discovery sketch (a power of two;
    /// 8 bytes x 2 rows each, per CPU).
    pub meter_columns: u32,
    /// Whether the detection maps get their configured sizes (set from
    /// `[detection] enabled`, not from `[capacity]`): off, they take a few
    /// bytes and the program meters nothing.
    #[serde(skip)]
    pub detection: bool,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_policies: names::DEFAULT_MAX_POLICIES,
            max_limiters: names::DEFAULT_MAX_LIMITERS,
            max_rules: None,
            v4_chunks: names::DEFAULT_V4_CHUNKS,
            max_v6_victims: names::DEFAULT_MAX_V6_VICTIMS,
            max_allow: names::DEFAULT_MAX_ALLOW,
            max_tracked: xdp_common::meter::DEFAULT_MAX_TRACKED,
            meter_columns: xdp_common::meter::DEFAULT_SKETCH_COLS,
            detection: false,
        }
    }
}

impl Capacity {
    /// Entries of the policy table (slot 0 included).
    pub(super) fn policy_slots(&self) -> u32 {
        self.max_policies + 1
    }

    /// Rule entries a policy can use on average (`max_rules`, or the default
    /// per policy).
    pub fn max_rules(&self) -> u32 {
        self.max_rules.unwrap_or(self.max_policies.saturating_mul(names::DEFAULT_RULES_PER_POLICY))
    }

    /// Rule entries for policies (entry 0 included, never handed out); the
    /// detection meters' follow them in the same tables.
    pub(super) fn rule_entries(&self) -> u32 {
        self.max_rules().saturating_add(1)
    }

    /// Rule entries of the detection meters (MAX_VECTORS per tracked destination).
    pub(super) fn meter_cells(&self) -> u32 {
        if self.detection {
            self.max_tracked.saturating_mul(MAX_VECTORS as u32)
        } else {
            0
        }
    }

    /// Size of `AG_RULES` and `AG_RULE_COUNTS`.
    fn rule_table(&self) -> u32 {
        self.rule_entries().saturating_add(self.meter_cells())
    }

    /// (protect bitmap words, sketch cells, tracked entries, event ring bytes):
    /// the configured sizes with detection on, the least the kernel takes off.
    fn detection_maps(&self) -> (u32, u32, u32, u32) {
        if self.detection {
            (names::ALLOW_BITS_WORDS, SKETCH_ROWS * self.meter_columns, self.max_tracked, EVENTS_RING_BYTES)
        } else {
            (1, SKETCH_ROWS, 1, 4096)
        }
    }
}

/// Pins at `path`, removing what a previous run pinned there.
fn replace_pin(path: &Path, pin: impl FnOnce(&Path) -> Result<(), PinError>) -> Result<(), DpError> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    pin(path).map_err(|e| std::io::Error::other(format!("pin {}: {e}", path.display())))?;
    Ok(())
}

/// Takes map `name` out of the loaded object as a typed handle.
pub(super) fn take<M: TryFrom<Map, Error = MapError>>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<M, DpError> {
    Ok(M::try_from(ebpf.take_map(name).ok_or(DpError::MissingMap(name))?)?)
}

impl DataPlane {
    /// Load the program and create its maps. The program is loaded into the
    /// kernel but not attached.
    pub fn load(c: &Capacity) -> Result<Self, DpError> {
        let (protect_words, sketch_cells, tracked, events_bytes) = c.detection_maps();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::POLICIES, c.policy_slots())
            .map_max_entries(names::RULES, c.rule_table())
            .map_max_entries(names::RULE_COUNTS, c.rule_table())
            .map_max_entries(names::PROTECT_BITS, protect_words)
            .map_max_entries(names::METER_SKETCH, sketch_cells)
            .map_max_entries(names::METER_TRACKED, tracked)
            .map_max_entries(names::METER_EVENTS, events_bytes)
            .map_max_entries(names::LIMITERS, c.max_limiters)
            .map_max_entries(names::V4_L2, c.v4_chunks * names::CHUNK_ENTRIES)
            .map_max_entries(names::V6_BUCKETS, xdp_common::v6::buckets_for(c.max_v6_victims))
            .map_max_entries(names::V6_VICTIMS, c.max_v6_victims)
            .map_max_entries(names::ALLOW_V4, c.max_allow)
            .map_max_entries(names::ALLOW_V6, c.max_allow);
        let mut ebpf = loader.load(XDP_OBJECT)?;
        let program: &mut Xdp = ebpf.program_mut(names::PROGRAM).ok_or(DpError::MissingMap(names::PROGRAM))?.try_into()?;
        program.load()?;
        let mut settings = Settings::take(&mut ebpf)?;
        settings.config.set(0, Config::DEFAULT, 0)?;
        let mut meters = Meters::take(&mut ebpf, c)?;
        meters.cfg.set(0, MeterCfg::OFF, 0)?;
        Ok(Self {
            meters,
            settings,
            slots: Slots::take(&mut ebpf, c)?,
            victims: Victims::take(&mut ebpf, c)?,
            allow: Allowlist::take(&mut ebpf, c)?,
            counters: Counters::take(&mut ebpf)?,
            ebpf,
            faults: Faults::default(),
            capacity: c.clone(),
        })
    }

    /// The handle of a map taken at load, by name.
    fn taken_map(&self, name: &str) -> Option<&MapData> {
        self.settings
            .map_named(name)
            .or_else(|| self.slots.map_named(name))
            .or_else(|| self.victims.map_named(name))
            .or_else(|| self.allow.map_named(name))
            .or_else(|| self.counters.map_named(name))
            .or_else(|| self.meters.map_named(name))
    }

    /// Pin every map under `dir` (replacing pins of a previous run), so
    /// bpftool and operators can inspect what is enforced. Maps handed out
    /// with `take_samples` are no longer here to pin.
    pub fn pin_maps(&self, dir: &Path) -> Result<(), DpError> {
        std::fs::create_dir_all(dir)?;
        for name in names::ALL {
            let path = dir.join(name);
            if let Some(m) = self.ebpf.map(name) {
                replace_pin(&path, |p| m.pin(p))?;
            } else if let Some(m) = self.taken_map(name) {
                replace_pin(&path, |p| m.pin(p))?;
            }
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

    /// The ring buffer of samples, for a reader task (can be taken once).
    pub fn take_samples(&mut self) -> Result<aya::maps::RingBuf<MapData>, DpError> {
        take(&mut self.ebpf, names::SAMPLES)
    }
}
