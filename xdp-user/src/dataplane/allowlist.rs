//! Allowlisted source prefixes: the exact LPM tries and the `allowbits`
//! prefilter bitmap in front of them.

use std::collections::BTreeMap;

use aya::maps::{lpm_trie::Key, Array, IterableMap, LpmTrie, MapData};
use ipnet::IpNet;
use xdp_common::maps as names;

use super::{
    allowbits::AllowBits,
    loader::{take, Capacity},
    DataPlane, DpError,
};

pub(super) struct Allowlist {
    /// Prefix -> allowlist id (the tries' value).
    prefixes: BTreeMap<IpNet, u32>,
    next_id: u32,
    max: u32,
    /// Mirror of `AG_ALLOW_BITS`.
    bits: AllowBits,
    bits_map: Array<MapData, u64>,
    /// `AG_ALLOW_V4`, `AG_ALLOW_V6`.
    v4: LpmTrie<MapData, [u8; 4], u32>,
    v6: LpmTrie<MapData, [u8; 16], u32>,
}

impl Allowlist {
    pub(super) fn take(ebpf: &mut aya::Ebpf, c: &Capacity) -> Result<Self, DpError> {
        Ok(Self {
            prefixes: BTreeMap::new(),
            next_id: 1,
            max: c.max_allow,
            bits: AllowBits::default(),
            bits_map: take(ebpf, names::ALLOW_BITS)?,
            v4: take(ebpf, names::ALLOW_V4)?,
            v6: take(ebpf, names::ALLOW_V6)?,
        })
    }

    pub(super) fn map_named(&self, name: &str) -> Option<&MapData> {
        match name {
            names::ALLOW_BITS => Some(self.bits_map.map()),
            names::ALLOW_V4 => Some(self.v4.map()),
            names::ALLOW_V6 => Some(self.v6.map()),
            _ => None,
        }
    }

    fn set_trie(&mut self, prefix: &IpNet, id: Option<u32>) -> Result<(), DpError> {
        match prefix {
            IpNet::V4(n) => {
                let key = Key::new(n.prefix_len() as u32, n.network().octets());
                match id {
                    Some(id) => self.v4.insert(&key, id, 0)?,
                    None => self.v4.remove(&key)?,
                }
            }
            IpNet::V6(n) => {
                let key = Key::new(n.prefix_len() as u32, n.network().octets());
                match id {
                    Some(id) => self.v6.insert(&key, id, 0)?,
                    None => self.v6.remove(&key)?,
                }
            }
        }
        Ok(())
    }

    /// Recompute the bits `changed` covers and write the words that differ.
    fn update_bits(&mut self, changed: &IpNet) -> Result<(), DpError> {
        for (w, v) in self.bits.update(changed, self.prefixes.keys()) {
            self.bits_map.set(w, v, 0)?;
        }
        Ok(())
    }
}

impl DataPlane {
    /// Add a source prefix that no policy ever touches.
    pub fn add_allow(&mut self, prefix: IpNet) -> Result<(), DpError> {
        let a = &mut self.allow;
        let prefix = prefix.trunc();
        if a.prefixes.contains_key(&prefix) {
            return Ok(());
        }
        if a.prefixes.len() as u32 >= a.max {
            return Err(DpError::Full { what: "the allowlist", capacity: a.max, knob: "max_allow" });
        }
        let id = a.next_id;
        a.set_trie(&prefix, Some(id))?;
        a.next_id += 1;
        a.prefixes.insert(prefix, id);
        a.update_bits(&prefix)
    }

    pub(crate) fn remove_allow(&mut self, prefix: &IpNet) -> Result<bool, DpError> {
        let a = &mut self.allow;
        let prefix = prefix.trunc();
        if a.prefixes.remove(&prefix).is_none() {
            return Ok(false);
        }
        // Bits first: a stale bit only costs a trie lookup, a missing one would
        // skip a real entry.
        a.update_bits(&prefix)?;
        a.set_trie(&prefix, None)?;
        Ok(true)
    }

    pub fn allowlist(&self) -> impl Iterator<Item = &IpNet> {
        self.allow.prefixes.keys()
    }
}
