//! Built-in detection's side of the data plane (layout and reasoning:
//! `xdp_common::meter`): the protected networks' bitmap, the sketch's
//! settings, the tracked destinations and their exact meters, and the ring
//! buffer of candidates (handed to the detector's reader task).

use std::collections::{HashMap, VecDeque};

use aya::maps::{Array, HashMap as BpfHashMap, IterableMap, MapData, RingBuf};
use ipnet::IpNet;
use xdp_common::{
    counters::{verdict, Counter},
    maps as names,
    meter::{MeterCfg, MeterKey, Tracked},
    vector::MAX_VECTORS,
};

use super::{allowbits::AllowBits, loader::take, loader::Capacity, DataPlane, DpError};

pub(super) struct Meters {
    /// `AG_METER_CFG`, one entry.
    pub(super) cfg: Array<MapData, MeterCfg>,
    /// `AG_PROTECT_BITS` and its mirror.
    bits_map: Array<MapData, u64>,
    bits: AllowBits,
    protected: Vec<IpNet>,
    /// `AG_METER_TRACKED` and its mirror.
    tracked_map: BpfHashMap<MapData, MeterKey, Tracked>,
    tracked: HashMap<MeterKey, Tracked>,
    /// First rule entry of the meters' range, and the bases never handed
    /// out (`next..end`, in steps of MAX_VECTORS) then the least recently freed.
    next: u32,
    end: u32,
    freed: VecDeque<u32>,
    enabled: bool,
}

impl Meters {
    pub(super) fn take(ebpf: &mut aya::Ebpf, c: &Capacity) -> Result<Self, DpError> {
        let first = c.rule_entries();
        Ok(Self {
            cfg: take(ebpf, names::METER_CFG)?,
            bits_map: take(ebpf, names::PROTECT_BITS)?,
            bits: AllowBits::default(),
            protected: Vec::new(),
            tracked_map: take(ebpf, names::METER_TRACKED)?,
            tracked: HashMap::new(),
            next: first,
            end: first + c.meter_cells(),
            freed: VecDeque::new(),
            enabled: c.detection,
        })
    }

    pub(super) fn map_named(&self, name: &str) -> Option<&MapData> {
        match name {
            names::METER_CFG => Some(self.cfg.map()),
            names::PROTECT_BITS => Some(self.bits_map.map()),
            names::METER_TRACKED => Some(self.tracked_map.map()),
            _ => None,
        }
    }

    fn take_base(&mut self) -> Option<u32> {
        if self.next < self.end {
            self.next += MAX_VECTORS as u32;
            return Some(self.next - MAX_VECTORS as u32);
        }
        self.freed.pop_front()
    }
}

impl DataPlane {
    fn check_detection(&self) -> Result<(), DpError> {
        if !self.meters.enabled {
            return Err(DpError::Io(std::io::Error::other("the data plane was loaded without detection's maps (capacity.detection)")));
        }
        Ok(())
    }

    /// The sketch's settings (weights per vector, trigger); `MeterCfg::OFF` stops metering.
    pub fn set_meter_cfg(&mut self, mut cfg: MeterCfg) -> Result<(), DpError> {
        if cfg.enabled != 0 {
            self.check_detection()?;
        }
        cfg.cols_mask = self.capacity.meter_columns - 1;
        self.meters.cfg.set(0, cfg, 0)?;
        Ok(())
    }

    /// Replace the protected networks (the bitmap the program reads first).
    pub fn set_protected(&mut self, networks: &[IpNet]) -> Result<(), DpError> {
        if !networks.is_empty() {
            self.check_detection()?;
        }
        let m = &mut self.meters;
        let old = std::mem::replace(&mut m.protected, networks.to_vec());
        let mut writes = Vec::new();
        for n in old.iter().chain(networks) {
            writes.extend(m.bits.update(n, m.protected.iter()));
        }
        // Later writes of a word supersede earlier ones: keep the last.
        let mut last: HashMap<u32, u64> = HashMap::new();
        for (w, v) in writes {
            last.insert(w, v);
        }
        let mut words: Vec<_> = last.into_iter().collect();
        words.sort_unstable();
        super::batch::update_all(m.bits_map.map(), &words)
    }

    /// Start metering a destination exactly; returns its meters (the same if
    /// it is tracked already). Full: `DpError::Full`.
    pub fn track(&mut self, key: MeterKey) -> Result<Tracked, DpError> {
        self.check_detection()?;
        if let Some(t) = self.meters.tracked.get(&key) {
            return Ok(*t);
        }
        let Some(base) = self.meters.take_base() else {
            return Err(DpError::Full {
                what: "the tracked destinations",
                capacity: self.capacity.max_tracked,
                knob: "capacity.max_tracked",
            });
        };
        let gen = self.slots.next_gen();
        let cells: Vec<u32> = (base..base + MAX_VECTORS as u32).collect();
        let t = Tracked { base, gen };
        let r = self
            .counters
            .zero(&cells)
            .and_then(|()| self.slots.write_meter_rules(base..base + MAX_VECTORS as u32, gen))
            .and_then(|()| Ok(self.meters.tracked_map.insert(key, t, 0)?));
        if let Err(e) = r {
            self.meters.freed.push_front(base);
            return Err(e);
        }
        self.meters.tracked.insert(key, t);
        Ok(t)
    }

    /// Stop metering a destination; its rule entries go back to the pool.
    pub fn untrack(&mut self, key: &MeterKey) -> Result<bool, DpError> {
        let Some(t) = self.meters.tracked.get(key).copied() else { return Ok(false) };
        self.meters.tracked_map.remove(key)?;
        self.meters.tracked.remove(key);
        // Generation 0: counts CPUs still cache for these entries are discarded.
        self.slots.write_meter_rules(t.base..t.base + MAX_VECTORS as u32, 0)?;
        let cells: Vec<u32> = (t.base..t.base + MAX_VECTORS as u32).collect();
        self.counters.free(&cells);
        self.meters.freed.push_back(t.base);
        Ok(true)
    }

    /// A tracked destination's meters.
    pub fn tracked(&self, key: &MeterKey) -> Option<Tracked> {
        self.meters.tracked.get(key).copied()
    }

    pub fn tracked_count(&self) -> usize {
        self.meters.tracked.len()
    }

    /// A tracked destination's packets and bytes per vector id, since it was
    /// tracked; only the vectors in `vectors` are read (each read is a few
    /// syscalls).
    pub fn meter_counts(&self, t: Tracked, vectors: &[u8]) -> Result<[Counter; MAX_VECTORS], DpError> {
        let mut out = [Counter::default(); MAX_VECTORS];
        for &v in vectors {
            if (v as usize) < MAX_VECTORS {
                out[v as usize] = self.counters.rule_counts(t.base + v as u32, t.gen)?.by_verdict[verdict::PASSED];
            }
        }
        Ok(out)
    }

    /// The ring buffer of candidates, for the detector's reader (can be taken once).
    pub fn take_meter_events(&mut self) -> Result<RingBuf<MapData>, DpError> {
        take(&mut self.ebpf, names::METER_EVENTS)
    }
}
