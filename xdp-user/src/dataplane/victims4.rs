//! The IPv4 victim table in userspace: the set of victim prefixes and the
//! writes that keep the kernel's two-level direct table (`AG_V4_L1`,
//! `AG_V4_L2`; layout in `xdp_common::maps`) equal to "longest prefix wins".
//!
//! Pure logic (no syscalls): `insert` and `remove` return the map writes to
//! apply, in an order that never shows a packet a half-built chunk. Unit tests
//! check every entry against a naive longest-prefix match.

use std::collections::{BTreeMap, HashMap};

use xdp_common::{maps, policy::NO_SLOT};

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    L1 { index: u32, value: u64 },
    L2 { index: u32, slot: u32 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the IPv4 victim table has no free level-2 chunk ({0} in use, one per /16 that holds prefixes longer than /16); raise `v4_chunks` in the config")]
pub struct ChunksExhausted(pub u32);

pub struct Victims4 {
    /// (network address, prefix length) -> slot.
    prefixes: BTreeMap<(u32, u8), u32>,
    /// Mirror of `AG_V4_L1`.
    l1: Vec<u64>,
    /// /16 index -> (chunk, number of prefixes longer than /16 inside it).
    chunks: HashMap<u32, (u32, u32)>,
    free_chunks: Vec<u32>,
    total_chunks: u32,
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

impl Victims4 {
    pub fn new(total_chunks: u32) -> Self {
        Self {
            prefixes: BTreeMap::new(),
            l1: vec![0; maps::V4_L1_ENTRIES as usize],
            chunks: HashMap::new(),
            free_chunks: (0..total_chunks).rev().collect(),
            total_chunks,
        }
    }

    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    pub fn chunks_in_use(&self) -> u32 {
        self.total_chunks - self.free_chunks.len() as u32
    }

    /// Longest-prefix match by brute force (the reference for the tests).
    #[cfg(test)]
    pub fn lookup(&self, addr: u32) -> u32 {
        (0..=32u8).rev().find_map(|len| self.prefixes.get(&(addr & mask(len), len)).copied()).unwrap_or(NO_SLOT)
    }

    fn best_in(&self, addr: u32, lens: std::ops::RangeInclusive<u8>) -> u32 {
        lens.rev().find_map(|len| self.prefixes.get(&(addr & mask(len), len)).copied()).unwrap_or(NO_SLOT)
    }

    /// Add a prefix or change its slot. `addr` must have no host bits set.
    pub fn insert(&mut self, addr: u32, len: u8, slot: u32) -> Result<Vec<Write>, ChunksExhausted> {
        assert!(len <= 32 && addr & !mask(len) == 0 && slot != NO_SLOT);
        let mut writes = Vec::new();
        if len <= 16 {
            self.prefixes.insert((addr, len), slot);
            self.paint_l1(addr, len, &mut writes);
            return Ok(writes);
        }
        let hi = addr >> 16;
        let new_chunk = !self.chunks.contains_key(&hi);
        if new_chunk {
            let chunk = self.free_chunks.pop().ok_or(ChunksExhausted(self.total_chunks))?;
            self.chunks.insert(hi, (chunk, 0));
        }
        if self.prefixes.insert((addr, len), slot).is_none() {
            self.chunks.get_mut(&hi).expect("chunk").1 += 1;
        }
        self.paint_l2(addr, len, &mut writes);
        if new_chunk {
            // Attach the chunk only once its entries are written.
            self.set_l1(hi, &mut writes);
        }
        Ok(writes)
    }

    /// Remove a prefix; returns None when it was not there.
    pub fn remove(&mut self, addr: u32, len: u8) -> Option<Vec<Write>> {
        self.prefixes.remove(&(addr, len))?;
        let mut writes = Vec::new();
        if len <= 16 {
            self.paint_l1(addr, len, &mut writes);
            return Some(writes);
        }
        let hi = addr >> 16;
        let entry = self.chunks.get_mut(&hi).expect("chunk of a long prefix");
        entry.1 -= 1;
        if entry.1 == 0 {
            // Last long prefix of this /16: detach the chunk first, then zero
            // what it painted, so the chunk is clean when reused.
            let (chunk, _) = self.chunks.remove(&hi).expect("chunk");
            self.set_l1(hi, &mut writes);
            let start = addr & 0xffff;
            for j in start..start + (1u32 << (32 - len)) {
                writes.push(Write::L2 { index: chunk * maps::CHUNK_ENTRIES + j, slot: NO_SLOT });
            }
            self.free_chunks.push(chunk);
        } else {
            self.paint_l2(addr, len, &mut writes);
        }
        Some(writes)
    }

    fn set_l1(&mut self, hi: u32, writes: &mut Vec<Write>) {
        let slot = self.best_in(hi << 16, 0..=16);
        let value = maps::l1_entry(slot, self.chunks.get(&hi).map(|c| c.0));
        if self.l1[hi as usize] != value {
            self.l1[hi as usize] = value;
            writes.push(Write::L1 { index: hi, value });
        }
    }

    fn paint_l1(&mut self, addr: u32, len: u8, writes: &mut Vec<Write>) {
        let start = addr >> 16;
        for hi in start..start + (1u32 << (16 - len)) {
            self.set_l1(hi, writes);
        }
    }

    fn paint_l2(&mut self, addr: u32, len: u8, writes: &mut Vec<Write>) {
        let hi = addr >> 16;
        let chunk = self.chunks[&hi].0;
        let start = addr & 0xffff;
        for j in start..start + (1u32 << (32 - len)) {
            let slot = self.best_in((hi << 16) | j, 17..=32);
            writes.push(Write::L2 { index: chunk * maps::CHUNK_ENTRIES + j, slot });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies writes to an in-memory copy of the kernel tables and looks up the
    /// way the XDP program does.
    struct Kernel {
        l1: Vec<u64>,
        l2: Vec<u32>,
    }

    impl Kernel {
        fn new(chunks: u32) -> Self {
            Self { l1: vec![0; 1 << 16], l2: vec![0; (chunks * maps::CHUNK_ENTRIES) as usize] }
        }
        fn apply(&mut self, writes: &[Write]) {
            for w in writes {
                match *w {
                    Write::L1 { index, value } => self.l1[index as usize] = value,
                    Write::L2 { index, slot } => self.l2[index as usize] = slot,
                }
            }
        }
        fn lookup(&self, addr: u32) -> u32 {
            let l1 = self.l1[(addr >> 16) as usize];
            if let Some(c) = maps::l1_chunk(l1) {
                let s = self.l2[(c * maps::CHUNK_ENTRIES + (addr & 0xffff)) as usize];
                if s != NO_SLOT {
                    return s;
                }
            }
            maps::l1_slot(l1)
        }
    }

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    fn check_all(t: &Victims4, k: &Kernel, probes: &[u32]) {
        for &a in probes {
            assert_eq!(k.lookup(a), t.lookup(a), "address {}", std::net::Ipv4Addr::from(a));
        }
    }

    #[test]
    fn longest_prefix_wins_across_levels() {
        let mut t = Victims4::new(4);
        let mut k = Kernel::new(4);
        k.apply(&t.insert(ip("203.0.0.0"), 8, 1).unwrap());
        k.apply(&t.insert(ip("203.0.113.0"), 24, 2).unwrap());
        k.apply(&t.insert(ip("203.0.113.10"), 32, 3).unwrap());
        k.apply(&t.insert(ip("203.0.0.0"), 16, 4).unwrap());
        assert_eq!(k.lookup(ip("203.0.113.10")), 3);
        assert_eq!(k.lookup(ip("203.0.113.11")), 2);
        assert_eq!(k.lookup(ip("203.0.114.1")), 4);
        assert_eq!(k.lookup(ip("203.1.0.1")), 1);
        assert_eq!(k.lookup(ip("198.51.100.1")), NO_SLOT);
        k.apply(&t.remove(ip("203.0.113.0"), 24).unwrap());
        assert_eq!(k.lookup(ip("203.0.113.11")), 4);
        assert_eq!(k.lookup(ip("203.0.113.10")), 3);
        k.apply(&t.remove(ip("203.0.113.10"), 32).unwrap());
        assert_eq!(k.lookup(ip("203.0.113.10")), 4);
        assert_eq!(t.chunks_in_use(), 0, "chunk freed with its last long prefix");
        assert!(k.l2.iter().all(|&s| s == 0), "freed chunk is clean");
        k.apply(&t.remove(ip("203.0.0.0"), 16).unwrap());
        assert_eq!(k.lookup(ip("203.0.113.10")), 1);
    }

    #[test]
    fn replacing_a_slot_repaints() {
        let mut t = Victims4::new(1);
        let mut k = Kernel::new(1);
        k.apply(&t.insert(ip("192.0.2.0"), 25, 7).unwrap());
        k.apply(&t.insert(ip("192.0.2.0"), 25, 9).unwrap());
        assert_eq!(k.lookup(ip("192.0.2.1")), 9);
        assert_eq!(t.chunks_in_use(), 1);
        k.apply(&t.remove(ip("192.0.2.0"), 25).unwrap());
        assert_eq!(k.lookup(ip("192.0.2.1")), NO_SLOT);
    }

    #[test]
    fn chunk_exhaustion_is_an_error_and_changes_nothing() {
        let mut t = Victims4::new(1);
        t.insert(ip("192.0.2.1"), 32, 1).unwrap();
        let err = t.insert(ip("198.51.100.1"), 32, 2).unwrap_err();
        assert_eq!(err, ChunksExhausted(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(ip("198.51.100.1")), NO_SLOT);
        // Same /16 still fits.
        t.insert(ip("192.0.2.2"), 32, 3).unwrap();
    }

    #[test]
    fn random_churn_matches_brute_force() {
        // Deterministic pseudo-random prefixes inside 198.18.0.0/15 and
        // 203.0.112.0/20 so that lengths from /8 to /32 overlap a lot.
        let mut seed = 0x2545F4914F6CDD1Du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let bases = [ip("198.18.0.0"), ip("203.0.112.0")];
        let mut t = Victims4::new(8);
        let mut k = Kernel::new(8);
        let mut live: Vec<(u32, u8)> = Vec::new();
        for round in 0..2000 {
            let r = rnd();
            if r % 3 == 0 && !live.is_empty() {
                let (a, l) = live.swap_remove((r >> 8) as usize % live.len());
                k.apply(&t.remove(a, l).unwrap());
            } else {
                let len = [8u8, 12, 15, 16, 17, 20, 23, 24, 28, 31, 32][(r >> 3) as usize % 11];
                let base = bases[(r >> 12) as usize % 2];
                let addr = (base | ((r >> 20) as u32 & 0x1ffff)) & mask(len);
                if let Ok(w) = t.insert(addr, len, 1 + (round % 500)) {
                    k.apply(&w);
                    if !live.contains(&(addr, len)) {
                        live.push((addr, len));
                    }
                }
            }
            if round % 100 == 0 {
                let probes: Vec<u32> = (0..500).map(|_| bases[rnd() as usize % 2] | (rnd() as u32 & 0x1ffff)).collect();
                check_all(&t, &k, &probes);
            }
        }
    }
}
