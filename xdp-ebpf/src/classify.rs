//! Classification: which vector a packet belongs to, and which victim policy
//! (if any) covers its destination.

use aya_ebpf::maps::lpm_trie::Key;
use xdp_common::{maps, policy::NO_SLOT, v6, vector};

use crate::{
    maps::{AG_PORTS, AG_V4_L1, AG_V4_L2, AG_V6_BUCKETS, AG_V6_META, AG_V6_VICTIMS},
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
        victim_slot_v6(l3)
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

/// The hash table at pivot lengths (at most 4 probes of one or two cache
/// lines), then the trie only while it holds prefixes of other lengths; the
/// longer answer wins. See `xdp_common::maps` for the layout.
#[inline(always)]
fn victim_slot_v6(l3: &L3) -> u32 {
    let Some(meta) = AG_V6_META.get(0) else { return NO_SLOT };
    // The trie's key, built first; the halves are read back from it as u32s
    // (else the compiler stores 64-bit halves at the key's 4-aligned offset,
    // which the verifier refuses).
    let key = Key::new(128, l3.dst6());
    let word = |i: usize| -> u64 {
        // Safety: `data` is at offset 4 of a 4-aligned struct; i < 4.
        u32::from_be(unsafe { core::ptr::read_volatile((key.data.as_ptr() as *const u32).add(i)) }) as u64
    };
    let (hi, lo) = (word(0) << 32 | word(1), word(2) << 32 | word(3));
    let nbuckets = meta.nbuckets;
    let mut best = 0u64;
    let mut tries = 0;
    while tries < v6::RETRIES {
        // Safety: reads of a valid map value; volatile so they stay in order
        // around the search (a seqlock read side).
        let seq = unsafe { core::ptr::read_volatile(&meta.seq) };
        if seq & 1 == 0 {
            let m = v6::search(hi, lo, &meta.pivots, nbuckets, |b| AG_V6_BUCKETS.get(b));
            if unsafe { core::ptr::read_volatile(&meta.seq) } == seq {
                best = m;
                break;
            }
        }
        tries += 1;
    }
    let mut slot = v6::meta_slot(best);
    // Safety: as above.
    if v6::meta_best_len(best) < 128 && unsafe { core::ptr::read_volatile(&meta.trie_prefixes) } != 0 {
        if let Some(v) = AG_V6_VICTIMS.get(key) {
            // Lengths in the two are disjoint; a /0 in the trie beats "none".
            if slot == NO_SLOT || (*v >> 32) as u8 > v6::meta_best_len(best) {
                slot = *v as u32;
            }
        }
    }
    slot
}
