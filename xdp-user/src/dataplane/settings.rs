//! Program-wide settings: the one `Config` entry (sampling, DNS signature
//! thresholds, test clock) and the UDP source port -> vector table.

use aya::maps::{Array, IterableMap, MapData};
use xdp_common::{maps as names, policy::Config, vector::MAX_VECTORS};

use super::{loader::take, DataPlane, DpError};

pub(super) struct Settings {
    /// `AG_CONFIG`, one entry.
    pub(super) config: Array<MapData, Config>,
    /// `AG_PORTS`, 65,536 entries.
    ports: Array<MapData, u8>,
}

impl Settings {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DpError> {
        Ok(Self { config: take(ebpf, names::CONFIG)?, ports: take(ebpf, names::PORTS)? })
    }

    pub(super) fn map_named(&self, name: &str) -> Option<&MapData> {
        match name {
            names::CONFIG => Some(self.config.map()),
            names::PORTS => Some(self.ports.map()),
            _ => None,
        }
    }
}

impl DataPlane {
    /// Replace the whole UDP source port -> vector table.
    pub fn set_vectors(&mut self, ports: &[(u16, u8)]) -> Result<(), DpError> {
        let mut table = vec![0u8; 65536];
        for &(port, id) in ports {
            if id as usize >= MAX_VECTORS {
                return Err(DpError::BadVector(id));
            }
            table[port as usize] = id;
        }
        let arr = &mut self.settings.ports;
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
        self.faults.point()?;
        let cfg = &mut self.settings.config;
        let mut c = cfg.get(&0, 0)?;
        change(&mut c);
        cfg.set(0, c, 0)?;
        Ok(())
    }

    /// Sample at most `per_sec` dropped/limited/monitored packets a second
    /// per CPU into the ring buffer (0 = off).
    pub(crate) fn set_sampling(&mut self, per_sec: u32) -> Result<(), DpError> {
        self.update_config(|c| c.samples_per_sec = per_sec)
    }

    /// Samples a second per CPU now configured (0 = off).
    pub fn sampling(&self) -> Result<u32, DpError> {
        Ok(self.settings.config.get(&0, 0)?.samples_per_sec)
    }

    /// Thresholds of the DNS signature.
    pub(crate) fn set_dns_signature(&mut self, large_bytes: u16, many_answers: u16) -> Result<(), DpError> {
        self.update_config(|c| {
            c.dns_large_bytes = large_bytes;
            c.dns_many_answers = many_answers;
        })
    }
}
