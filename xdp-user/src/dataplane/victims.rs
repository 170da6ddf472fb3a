//! Victim prefix -> policy slot: the IPv4 two-level direct table (painted
//! from the `victims4` mirror) and the IPv6 LPM trie. Pointing and unpointing
//! leave the tables as they were on error.

use std::collections::BTreeMap;

use aya::maps::{lpm_trie::Key, Array, IterableMap, LpmTrie, MapData};
use ipnet::IpNet;
use xdp_common::maps as names;

use super::{
    loader::{take, Capacity},
    victims4::{Victims4, Write},
    DpError, Faults,
};

pub(super) struct Victims {
    v4: Victims4,
    v6: BTreeMap<IpNet, u32>,
    max_v6: u32,
    /// `AG_V4_L1`, `AG_V4_L2`: the IPv4 table's two levels.
    l1: Array<MapData, u64>,
    l2: Array<MapData, u32>,
    /// `AG_V6_VICTIMS`.
    v6_trie: LpmTrie<MapData, [u8; 16], u32>,
}

impl Victims {
    pub(super) fn take(ebpf: &mut aya::Ebpf, c: &Capacity) -> Result<Self, DpError> {
        Ok(Self {
            v4: Victims4::new(c.v4_chunks),
            v6: BTreeMap::new(),
            max_v6: c.max_v6_victims,
            l1: take(ebpf, names::V4_L1)?,
            l2: take(ebpf, names::V4_L2)?,
            v6_trie: take(ebpf, names::V6_VICTIMS)?,
        })
    }

    pub(super) fn map_named(&self, name: &str) -> Option<&MapData> {
        match name {
            names::V4_L1 => Some(self.l1.map()),
            names::V4_L2 => Some(self.l2.map()),
            names::V6_VICTIMS => Some(self.v6_trie.map()),
            _ => None,
        }
    }

    pub(super) fn v4_chunks_in_use(&self) -> u32 {
        self.v4.chunks_in_use()
    }

    /// Whether a new victim prefix fits (IPv4 chunks are checked by `point`).
    pub(super) fn check_room(&self, victim: &IpNet) -> Result<(), DpError> {
        if let IpNet::V6(_) = victim {
            if self.v6.len() as u32 >= self.max_v6 {
                return Err(DpError::Full { what: "the IPv6 victim table", capacity: self.max_v6, knob: "max_v6_victims" });
            }
        }
        Ok(())
    }

    /// Point a new victim prefix at `slot`. On error the victim tables are
    /// as they were.
    pub(super) fn point(&mut self, faults: &mut Faults, victim: &IpNet, slot: u32) -> Result<(), DpError> {
        match victim {
            IpNet::V4(n) => {
                let (addr, len) = (u32::from(n.network()), n.prefix_len());
                let writes = self.v4.insert(addr, len, slot)?;
                if let Err(e) = self.apply_v4(faults, &writes) {
                    let undo = self.v4.remove(addr, len).expect("just inserted");
                    self.repaint_v4(faults, &undo, victim);
                    return Err(e);
                }
                Ok(())
            }
            IpNet::V6(n) => {
                faults.point()?;
                self.v6_trie.insert(&Key::new(n.prefix_len() as u32, n.network().octets()), slot, 0)?;
                self.v6.insert(*victim, slot);
                Ok(())
            }
        }
    }

    /// Stop a victim prefix pointing at `slot`. On error the victim tables
    /// are as they were.
    pub(super) fn unpoint(&mut self, faults: &mut Faults, victim: &IpNet, slot: u32) -> Result<(), DpError> {
        match victim {
            IpNet::V4(n) => {
                let (addr, len) = (u32::from(n.network()), n.prefix_len());
                if let Some(writes) = self.v4.remove(addr, len) {
                    if let Err(e) = self.apply_v4(faults, &writes) {
                        let redo = self.v4.insert(addr, len, slot).expect("the chunk it just gave back");
                        self.repaint_v4(faults, &redo, victim);
                        return Err(e);
                    }
                }
                Ok(())
            }
            IpNet::V6(n) => {
                faults.point()?;
                self.v6_trie.remove(&Key::new(n.prefix_len() as u32, n.network().octets()))?;
                self.v6.remove(victim);
                Ok(())
            }
        }
    }

    /// Write the kernel's IPv4 table back to the mirror after a failed
    /// change. If this fails too the kernel and the mirror disagree: say so.
    fn repaint_v4(&mut self, faults: &mut Faults, writes: &[Write], victim: &IpNet) {
        if let Err(e) = self.apply_v4(faults, writes) {
            tracing::error!(%victim, "rolling back the IPv4 victim table failed too ({e}); restart the daemon to rebuild it from the state file");
        }
    }

    fn apply_v4(&mut self, faults: &mut Faults, writes: &[Write]) -> Result<(), DpError> {
        for w in writes {
            faults.point()?;
            match *w {
                Write::L1 { index, value } => self.l1.set(index, value, 0)?,
                Write::L2 { index, slot } => self.l2.set(index, slot, 0)?,
            }
        }
        Ok(())
    }
}
