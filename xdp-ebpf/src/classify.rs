//! Classification: which vector a packet belongs to, and which victim policy
//! (if any) covers its destination.

use aya_ebpf::maps::lpm_trie::Key;
use xdp_common::{maps, policy::NO_SLOT, vector};

use crate::{
    maps::{AG_PORTS, AG_V4_L1, AG_V4_L2, AG_V6_VICTIMS},
    parse::L3,
};

/// Vector of a UDP source port (`vector::NONE` for ordinary ports): one array read.
#[inline(always)]
pub fn port_vector(sport: u16) -> u8 {
    match AG_PORTS.get(sport as u32) {
        Some(v) => *v,
        None => vector::NONE,
    }
}

/// Policy slot of the longest victim prefix covering the destination.
#[inline(always)]
pub fn victim_slot(l3: &L3) -> u32 {
    if l3.v6 {
        match AG_V6_VICTIMS.get(Key::new(128, l3.dst6())) {
            Some(slot) => *slot,
            None => NO_SLOT,
        }
    } else {
        victim_slot_v4(u32::from_be_bytes(l3.dst4()))
    }
}

/// Two array reads at most; see `xdp_common::maps` for the table layout.
#[inline(always)]
fn victim_slot_v4(dst: u32) -> u32 {
    let Some(l1) = AG_V4_L1.get(dst >> 16) else { return NO_SLOT };
    let l1 = *l1;
    if let Some(chunk) = maps::l1_chunk(l1) {
        if let Some(slot) = AG_V4_L2.get(chunk * maps::CHUNK_ENTRIES + (dst & 0xffff)) {
            if *slot != NO_SLOT {
                return *slot;
            }
        }
    }
    maps::l1_slot(l1)
}
