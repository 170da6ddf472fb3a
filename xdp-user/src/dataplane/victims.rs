//! Victim prefix -> policy slot: the IPv4 two-level direct table (painted
//! from the `victims4` mirror), the IPv6 hash table at pivot lengths (painted
//! from the `victims6` mirror through a shared mapping) and the IPv6 LPM trie
//! for other lengths. Pointing and unpointing leave the tables as they were
//! on error.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{lpm_trie::Key, Array, IterableMap, LpmTrie, MapData};
use ipnet::IpNet;
use xdp_common::{
    maps as names,
    v6::{self, Bucket, V6Meta},
};

use super::{
    loader::{take, Capacity},
    victims4::{Victims4, Write},
    victims6::{self, Victims6},
    DpError, Faults,
};

/// A map's values mapped into our memory (`BPF_F_MMAPABLE`), as u64 words.
struct Mapped {
    ptr: *mut AtomicU64,
    words: usize,
    bytes: usize,
}

// Safety: the mapping is owned by this value and only touched through atomics.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    fn new(map: &MapData, value_bytes: usize, entries: u32) -> Result<Self, DpError> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (value_bytes * entries as usize).div_ceil(page) * page;
        // Safety: a shared read-write mapping of an mmapable array's values;
        // the kernel checks the size and the flag.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, map.fd().as_fd().as_raw_fd(), 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(DpError::Io(std::io::Error::other(format!("mapping the IPv6 victim table: {}", std::io::Error::last_os_error()))));
        }
        Ok(Self { ptr: ptr.cast(), words: value_bytes * entries as usize / 8, bytes })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.words, "word {i} of {}", self.words);
        // Safety: in bounds of the live mapping; u64-aligned (page-aligned base).
        unsafe { &*self.ptr.add(i) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // Safety: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

/// Word offsets in `V6Meta`.
const META_SEQ: usize = 0;
const META_TRIE_PREFIXES: usize = 1;

pub(super) struct Victims {
    v4: Victims4,
    /// Every IPv6 victim (hash-resident or in the trie) -> slot.
    v6: BTreeMap<IpNet, u32>,
    max_v6: u32,
    /// The pivot-length prefixes and their markers (mirror of `AG_V6_BUCKETS`).
    v6_hash: Victims6,
    /// `AG_V6_BUCKETS`, `AG_V6_META`: the handles (for pinning) and their mappings.
    v6_buckets: Array<MapData, Bucket>,
    v6_meta: Array<MapData, V6Meta>,
    buckets_mem: Mapped,
    meta_mem: Mapped,
    /// `AG_V4_L1`, `AG_V4_L2`: the IPv4 table's two levels.
    l1: Array<MapData, u64>,
    l2: Array<MapData, u32>,
    /// `AG_V6_VICTIMS`: prefixes of other lengths -> length << 32 | slot.
    v6_trie: LpmTrie<MapData, [u8; 16], u64>,
}

impl Victims {
    pub(super) fn take(ebpf: &mut aya::Ebpf, c: &Capacity) -> Result<Self, DpError> {
        let nbuckets = v6::buckets_for(c.max_v6_victims);
        let v6_buckets: Array<MapData, Bucket> = take(ebpf, names::V6_BUCKETS)?;
        let mut v6_meta: Array<MapData, V6Meta> = take(ebpf, names::V6_META)?;
        // Before the program can run: the table's shape, then only mapped writes.
        v6_meta.set(0, V6Meta::new(nbuckets), 0)?;
        Ok(Self {
            v4: Victims4::new(c.v4_chunks),
            v6: BTreeMap::new(),
            max_v6: c.max_v6_victims,
            v6_hash: Victims6::new(nbuckets),
            buckets_mem: Mapped::new(v6_buckets.map(), size_of::<Bucket>(), nbuckets)?,
            meta_mem: Mapped::new(v6_meta.map(), size_of::<V6Meta>(), 1)?,
            v6_buckets,
            v6_meta,
            l1: take(ebpf, names::V4_L1)?,
            l2: take(ebpf, names::V4_L2)?,
            v6_trie: take(ebpf, names::V6_VICTIMS)?,
        })
    }

    pub(super) fn map_named(&self, name: &str) -> Option<&MapData> {
        match name {
            names::V4_L1 => Some(self.l1.map()),
            names::V4_L2 => Some(self.l2.map()),
            names::V6_BUCKETS => Some(self.v6_buckets.map()),
            names::V6_META => Some(self.v6_meta.map()),
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
                let (addr, len) = (u128::from(n.network()), n.prefix_len());
                if v6::is_pivot(len) {
                    let writes = self.v6_hash.insert(addr, len, slot).map_err(|victims6::TableFull(_)| self.v6_full())?;
                    self.apply_v6(&writes);
                } else {
                    let fresh = !self.v6.contains_key(victim);
                    // Count first: the program reads the trie only while the count is not 0.
                    if fresh {
                        self.add_trie_prefixes(1);
                    }
                    if let Err(e) = self.v6_trie.insert(&Key::new(len as u32, n.network().octets()), v6::trie_value(len, slot), 0) {
                        if fresh {
                            self.add_trie_prefixes(-1);
                        }
                        return Err(e.into());
                    }
                }
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
                let (addr, len) = (u128::from(n.network()), n.prefix_len());
                if v6::is_pivot(len) {
                    if let Some(writes) = self.v6_hash.remove(addr, len) {
                        self.apply_v6(&writes);
                    }
                } else if self.v6.contains_key(victim) {
                    self.v6_trie.remove(&Key::new(len as u32, n.network().octets()))?;
                    self.add_trie_prefixes(-1);
                }
                self.v6.remove(victim);
                Ok(())
            }
        }
    }

    fn v6_full(&self) -> DpError {
        DpError::Full { what: "the IPv6 victim table", capacity: self.max_v6, knob: "max_v6_victims" }
    }

    fn add_trie_prefixes(&self, delta: i64) {
        self.meta_mem.word(META_TRIE_PREFIXES).fetch_add(delta as u64, Ordering::SeqCst);
    }

    /// Apply writes to the mapped IPv6 table. A key change is bracketed by the
    /// change sequence (odd while it is under way), so a lookup that overlaps
    /// it retries; an answer change is one store. Memory writes: cannot fail.
    fn apply_v6(&self, writes: &[victims6::Write]) {
        let seq = self.meta_mem.word(META_SEQ);
        let t = &self.buckets_mem;
        let word = |pos: u32, i: usize| t.word(pos as usize * v6::ENTRY_WORDS + i);
        for w in writes {
            match *w {
                victims6::Write::Put { pos, meta, hi, lo } => {
                    seq.fetch_add(1, Ordering::SeqCst);
                    word(pos, 1).store(hi, Ordering::Release);
                    word(pos, 2).store(lo, Ordering::Release);
                    word(pos, 0).store(meta, Ordering::Release);
                    seq.fetch_add(1, Ordering::SeqCst);
                }
                victims6::Write::Answer { pos, meta } => word(pos, 0).store(meta, Ordering::Release),
                victims6::Write::Clear { pos } => {
                    seq.fetch_add(1, Ordering::SeqCst);
                    for i in 0..3 {
                        word(pos, i).store(0, Ordering::Release);
                    }
                    seq.fetch_add(1, Ordering::SeqCst);
                }
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
