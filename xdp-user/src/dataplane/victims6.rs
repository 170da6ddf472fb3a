//! The IPv6 victim hash table in userspace: the victim prefixes at pivot
//! lengths, their markers, and the writes that keep the kernel's table
//! (`AG_V6_BUCKETS`; layout in `xdp_common::maps` and `xdp_common::v6`) equal
//! to "longest prefix wins". Prefixes of other lengths live in the trie
//! (`victims.rs`), not here.
//!
//! Pure logic (no syscalls): `insert` and `remove` return the writes to apply,
//! in an order where every state in between answers each address with the old
//! or the new longest prefix. Unit tests check every answer against a
//! brute-force longest-prefix match, and every intermediate state.
//!
//! Placement is a two-choice cuckoo table of 2-way buckets: a key that finds
//! both its buckets full moves others to their other bucket along the
//! shortest path (breadth-first) to a free entry; a move copies the entry
//! first and clears the old place after, so a lookup that overlaps it sees
//! the change sequence move and retries.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use xdp_common::{policy::NO_SLOT, v6};

/// One write to the kernel table; `pos` = bucket * WAYS + way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// A key enters entry `pos`: its key words, then its meta (the applier
    /// brackets this with the change sequence).
    Put { pos: u32, meta: u64, hi: u64, lo: u64 },
    /// A live entry's answer changes: one store of its meta word.
    Answer { pos: u32, meta: u64 },
    /// Entry `pos` empties: meta 0, then its key words (in the change sequence).
    Clear { pos: u32 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the IPv6 victim hash table found no free entry for this prefix ({0} buckets, sized from `max_v6_victims`); raise `max_v6_victims` in the config")]
pub struct TableFull(pub u32);

/// (length, network address with no host bits).
type Key = (u8, u128);

struct Entry {
    /// The prefix itself (1) plus the prefixes it is a marker for.
    refs: u32,
    pos: u32,
    meta: u64,
}

pub struct Victims6 {
    /// Hash-resident victim prefixes -> slot.
    real: BTreeMap<Key, u32>,
    /// Prefixes per length, to skip empty lengths in `best`.
    per_len: [u32; 129],
    /// Every key in the kernel table (prefixes and markers).
    entries: BTreeMap<Key, Entry>,
    /// Mirror of the table: entry position -> key.
    table: Vec<Option<Key>>,
    nbuckets: u32,
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

fn halves(a: u128) -> (u64, u64) {
    ((a >> 64) as u64, a as u64)
}

fn bucket_pair(k: Key, nbuckets: u32) -> (u32, u32) {
    let (hi, lo) = halves(k.1);
    v6::buckets(k.0, hi, lo, nbuckets)
}

/// Every hash-resident length: the tree's, then /128.
fn lengths() -> impl DoubleEndedIterator<Item = u8> {
    v6::TREE.iter().copied().chain(std::iter::once(v6::HOST))
}

/// The keys a prefix needs: its markers (shortest first), then itself.
fn needed(addr: u128, len: u8) -> Vec<Key> {
    let (lens, n) = v6::marker_lengths(len);
    lens[..n].iter().map(|&q| (q, addr & mask(q))).chain(std::iter::once((len, addr))).collect()
}

impl Victims6 {
    pub fn new(nbuckets: u32) -> Self {
        Self {
            real: BTreeMap::new(),
            per_len: [0; 129],
            entries: BTreeMap::new(),
            table: vec![None; nbuckets as usize * v6::WAYS],
            nbuckets,
        }
    }

    pub fn len(&self) -> usize {
        self.real.len()
    }

    pub fn is_empty(&self) -> bool {
        self.real.is_empty()
    }

    /// Entries in use (prefixes and markers).
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Longest-prefix match by brute force over every length (the reference for the tests).
    #[cfg(test)]
    pub fn lookup(&self, addr: u128) -> (u8, u32) {
        (0..=128u8).rev().find_map(|l| self.real.get(&(l, addr & mask(l))).map(|&s| (l, s))).unwrap_or((0, NO_SLOT))
    }

    /// The longest victim prefix of length <= `upto` covering `addr`.
    fn best(&self, addr: u128, upto: u8) -> (u8, u32) {
        for l in lengths().rev() {
            if l <= upto && self.per_len[l as usize] > 0 {
                if let Some(&s) = self.real.get(&(l, addr & mask(l))) {
                    return (l, s);
                }
            }
        }
        (0, NO_SLOT)
    }

    /// Whether no tree-length prefix longer than `k` lies under it (the
    /// search may stop at `k`). /128s do not count: they are probed first.
    fn leaf(&self, k: Key) -> bool {
        let last = k.1 | !mask(k.0);
        k.0 < v6::HOST
            && !v6::TREE.iter().any(|&l| l > k.0 && self.per_len[l as usize] > 0 && self.real.range((l, k.1)..=(l, last)).next().is_some())
    }

    fn meta_of(&self, k: Key) -> u64 {
        let (bl, bs) = self.best(k.1, k.0);
        v6::meta(k.0, bl, bs, self.leaf(k))
    }

    /// Add a prefix (at a pivot length) or change its slot.
    pub fn insert(&mut self, addr: u128, len: u8, slot: u32) -> Result<Vec<Write>, TableFull> {
        assert!(v6::is_pivot(len) && addr & !mask(len) == 0 && slot != NO_SLOT);
        let key = (len, addr);
        let mut writes = Vec::new();
        if let Some(s) = self.real.get_mut(&key) {
            *s = slot;
            self.refresh_under(addr, len, None, &mut writes);
            return Ok(writes);
        }
        let keys = needed(addr, len);
        // Reserve a place for every new key before writing anything, so a
        // full table changes nothing. Moves are written as they happen.
        let mut undo: Vec<(u32, Option<Key>)> = Vec::new();
        let mut fresh: Vec<Key> = Vec::new();
        for &k in &keys {
            if self.entries.contains_key(&k) {
                continue;
            }
            match self.reserve(k, &mut undo, &mut writes) {
                Ok(pos) => {
                    self.entries.insert(k, Entry { refs: 0, pos, meta: 0 });
                    fresh.push(k);
                }
                Err(e) => {
                    for k in &fresh {
                        self.entries.remove(k);
                    }
                    for (pos, old) in undo.into_iter().rev() {
                        self.table[pos as usize] = old;
                        if let Some(o) = old {
                            if let Some(e) = self.entries.get_mut(&o) {
                                e.pos = pos;
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
        self.real.insert(key, slot);
        self.per_len[len as usize] += 1;
        for &k in &keys {
            self.entries.get_mut(&k).expect("reserved").refs += 1;
        }
        // New markers first (their answers do not involve the new prefix,
        // which is longer), then the answers under the prefix, then the
        // prefix's own entry: until then the search does not end at it.
        let own_is_fresh = fresh.last() == Some(&key);
        for &k in fresh.iter().filter(|&&k| k != key) {
            self.put(k, &mut writes);
        }
        self.refresh_under(addr, len, own_is_fresh.then_some(key), &mut writes);
        // Entries above that were leaves stop being ones before the prefix
        // goes live (until then, stopping there gives the old answer).
        self.refresh_above(addr, len, &fresh, &mut writes);
        if own_is_fresh {
            self.put(key, &mut writes);
        }
        Ok(writes)
    }

    /// Remove a prefix; None when it was not there.
    pub fn remove(&mut self, addr: u128, len: u8) -> Option<Vec<Write>> {
        self.real.remove(&(len, addr))?;
        self.per_len[len as usize] -= 1;
        let mut dead = Vec::new();
        for k in needed(addr, len) {
            let e = self.entries.get_mut(&k).expect("entry of a prefix");
            e.refs -= 1;
            if e.refs == 0 {
                dead.push(k);
            }
        }
        let mut writes = Vec::new();
        // Answers first (the prefix's own entry may stay as a marker), then
        // the entries nothing needs: the prefix's own first, markers after.
        let own_dead = dead.last() == Some(&(len, addr));
        self.refresh_under(addr, len, own_dead.then_some((len, addr)), &mut writes);
        for k in dead.into_iter().rev() {
            let e = self.entries.remove(&k).expect("entry");
            self.table[e.pos as usize] = None;
            writes.push(Write::Clear { pos: e.pos });
        }
        // Entries above may be leaves now that the prefix is gone.
        self.refresh_above(addr, len, &[], &mut writes);
        Some(writes)
    }

    /// The answer of every entry under the prefix (at lengths >= `len`) after
    /// a change of that prefix; `skip`: an entry not written yet.
    fn refresh_under(&mut self, addr: u128, len: u8, skip: Option<Key>, writes: &mut Vec<Write>) {
        let last = addr | !mask(len);
        for q in lengths().filter(|&q| q >= len) {
            let keys: Vec<Key> = self.entries.range((q, addr)..=(q, last)).map(|(k, _)| *k).filter(|k| Some(*k) != skip).collect();
            for k in keys {
                let meta = self.meta_of(k);
                let e = self.entries.get_mut(&k).expect("listed");
                if e.meta != meta {
                    e.meta = meta;
                    writes.push(Write::Answer { pos: e.pos, meta });
                }
            }
        }
    }

    /// The leaf flags of the entries covering the prefix at shorter tree
    /// lengths, after a change of that prefix; `skip`: entries not written yet.
    fn refresh_above(&mut self, addr: u128, len: u8, skip: &[Key], writes: &mut Vec<Write>) {
        if len == v6::HOST {
            return;
        }
        for &q in v6::TREE.iter().filter(|&&q| q < len) {
            let k = (q, addr & mask(q));
            if skip.contains(&k) || !self.entries.contains_key(&k) {
                continue;
            }
            let meta = self.meta_of(k);
            let e = self.entries.get_mut(&k).expect("checked");
            if e.meta != meta {
                e.meta = meta;
                writes.push(Write::Answer { pos: e.pos, meta });
            }
        }
    }

    fn put(&mut self, k: Key, writes: &mut Vec<Write>) {
        let meta = self.meta_of(k);
        let e = self.entries.get_mut(&k).expect("reserved");
        e.meta = meta;
        let (hi, lo) = halves(k.1);
        writes.push(Write::Put { pos: e.pos, meta, hi, lo });
    }

    fn positions(&self, bucket: u32) -> impl Iterator<Item = u32> {
        let base = bucket * v6::WAYS as u32;
        base..base + v6::WAYS as u32
    }

    /// A free position for `k` (not yet in `entries`), moving other keys along
    /// the shortest cuckoo path if both its buckets are full. Records each
    /// position it changes in `undo` and the moves in `writes`.
    fn reserve(&mut self, k: Key, undo: &mut Vec<(u32, Option<Key>)>, writes: &mut Vec<Write>) -> Result<u32, TableFull> {
        const MAX_VISITS: usize = 4096;
        let (b1, b2) = bucket_pair(k, self.nbuckets);
        let starts: Vec<u32> =
            self.positions(b1).chain(if b2 != b1 { Some(self.positions(b2)) } else { None }.into_iter().flatten()).collect();
        // The breadth-first tree: position -> the full position whose occupant
        // would move into it (None for the key's own positions).
        let mut parent: HashMap<u32, Option<u32>> = HashMap::new();
        let mut queue = VecDeque::new();
        let mut free = None;
        for &p in &starts {
            parent.insert(p, None);
            if self.table[p as usize].is_none() {
                free = Some(p);
                break;
            }
            queue.push_back(p);
        }
        let mut seen: HashSet<u32> = starts.iter().copied().collect();
        while free.is_none() {
            let Some(p) = queue.pop_front() else { break };
            if seen.len() > MAX_VISITS {
                break;
            }
            let occ = self.table[p as usize].expect("queued positions are full");
            let (o1, o2) = bucket_pair(occ, self.nbuckets);
            let here = p / v6::WAYS as u32;
            let other = if here == o1 { o2 } else { o1 };
            if other == here {
                continue;
            }
            for q in self.positions(other) {
                if seen.insert(q) {
                    parent.insert(q, Some(p));
                    if self.table[q as usize].is_none() {
                        free = Some(q);
                        break;
                    }
                    queue.push_back(q);
                }
            }
        }
        let Some(mut hole) = free else { return Err(TableFull(self.nbuckets)) };
        // Walk back from the free entry: each occupant on the path moves one
        // step towards it (copy first, clear after).
        while let Some(Some(from)) = parent.get(&hole).copied() {
            let occ = self.table[from as usize].expect("path positions are full");
            undo.push((hole, self.table[hole as usize]));
            undo.push((from, self.table[from as usize]));
            self.table[hole as usize] = Some(occ);
            self.table[from as usize] = None;
            let e = self.entries.get_mut(&occ).expect("occupant");
            e.pos = hole;
            let (hi, lo) = halves(occ.1);
            writes.push(Write::Put { pos: hole, meta: e.meta, hi, lo });
            writes.push(Write::Clear { pos: from });
            hole = from;
        }
        undo.push((hole, self.table[hole as usize]));
        self.table[hole as usize] = Some(k);
        Ok(hole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdp_common::v6::Bucket;

    /// The kernel table in memory, looked up with the program's own search.
    struct Kernel {
        buckets: Vec<Bucket>,
        pivots: [u8; 16],
    }

    impl Kernel {
        fn new(nbuckets: u32) -> Self {
            Self { buckets: vec![[0; 8]; nbuckets as usize], pivots: v6::V6Meta::new(nbuckets).pivots }
        }
        fn word(&mut self, pos: u32, i: usize) -> &mut u64 {
            let (b, w) = (pos as usize / v6::WAYS, pos as usize % v6::WAYS);
            &mut self.buckets[b][w * v6::ENTRY_WORDS + i]
        }
        fn apply_one(&mut self, w: &Write) {
            match *w {
                Write::Put { pos, meta, hi, lo } => {
                    *self.word(pos, 1) = hi;
                    *self.word(pos, 2) = lo;
                    *self.word(pos, 0) = meta;
                }
                Write::Answer { pos, meta } => *self.word(pos, 0) = meta,
                Write::Clear { pos } => {
                    for i in 0..3 {
                        *self.word(pos, i) = 0;
                    }
                }
            }
        }
        fn apply(&mut self, ws: &[Write]) {
            for w in ws {
                self.apply_one(w);
            }
        }
        fn lookup(&self, addr: u128) -> (u8, u32) {
            let (hi, lo) = halves(addr);
            let m = v6::search(hi, lo, &self.pivots, self.buckets.len() as u32, |b| self.buckets.get(b as usize));
            (v6::meta_best_len(m), v6::meta_slot(m))
        }
    }

    fn ip(s: &str) -> u128 {
        u128::from(s.parse::<std::net::Ipv6Addr>().unwrap())
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn longest_prefix_wins_at_every_pivot() {
        let mut t = Victims6::new(64);
        let mut k = Kernel::new(64);
        let a = ip("2001:db8:2::10");
        for (i, len) in lengths().enumerate() {
            k.apply(&t.insert(a & mask(len), len, 1 + i as u32).unwrap());
        }
        assert_eq!(k.lookup(a), (128, 15));
        assert_eq!(k.lookup(a ^ 1), (127, 14), "the /127's other address");
        assert_eq!(k.lookup(ip("2001:db8:2::1:0")), (96, 11));
        assert_eq!(k.lookup(ip("2001:db8:2:0:1::")), (64, 9));
        assert_eq!(k.lookup(ip("2001:db8:1::")), (44, 4));
        assert_eq!(k.lookup(ip("2001:db8:ffff::")), (32, 1));
        assert_eq!(k.lookup(ip("2001:db9::")), (0, NO_SLOT));
        // Remove from the middle and both ends.
        for &len in &[64u8, 128, 32] {
            k.apply(&t.remove(a & mask(len), len).unwrap());
        }
        assert_eq!(k.lookup(a), (127, 14));
        assert_eq!(k.lookup(ip("2001:db8:2:0:1::")), (60, 8));
        assert_eq!(k.lookup(ip("2001:db8:ffff::")), (0, NO_SLOT));
        for len in lengths().filter(|l| ![64u8, 128, 32].contains(l)) {
            k.apply(&t.remove(a & mask(len), len).unwrap());
        }
        assert_eq!(t.entries(), 0, "no marker outlives its prefixes");
        assert!(k.buckets.iter().all(|b| b.iter().all(|&w| w == 0)), "the table is clean again");
    }

    #[test]
    fn replacing_a_slot_repaints() {
        let mut t = Victims6::new(16);
        let mut k = Kernel::new(16);
        let a = ip("2001:db8:2::");
        k.apply(&t.insert(a, 64, 7).unwrap());
        k.apply(&t.insert(a, 64, 9).unwrap());
        k.apply(&t.insert(ip("2001:db8:2::10"), 128, 3).unwrap());
        assert_eq!(k.lookup(ip("2001:db8:2::1")), (64, 9));
        assert_eq!(k.lookup(ip("2001:db8:2::10")), (128, 3));
        k.apply(&t.insert(a, 64, 4).unwrap());
        assert_eq!(k.lookup(ip("2001:db8:2::1")), (64, 4));
    }

    /// Random churn of overlapping prefixes at every pivot length (and /127
    /// pairs), checked after each change against brute force, and every
    /// intermediate state of each change answers old or new.
    #[test]
    fn random_churn_matches_brute_force() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let base = ip("2001:db8::");
        let nb = v6::buckets_for(600);
        let mut t = Victims6::new(nb);
        let mut k = Kernel::new(nb);
        let mut live: Vec<(u128, u8)> = Vec::new();
        // Addresses share most bits so prefixes of every length overlap:
        // a few values per 4-bit group below the /32.
        let addr = |rng: &mut Rng| {
            let mut a = base;
            for g in 0..24 {
                a |= ((rng.next() % 3) as u128) << (g * 4);
            }
            a
        };
        for round in 0..3000u32 {
            let r = rng.next();
            let probes: Vec<u128> = (0..40).map(|_| addr(&mut rng)).collect();
            let before: Vec<(u8, u32)> = probes.iter().map(|&p| t.lookup(p)).collect();
            let writes = if r.is_multiple_of(3) && !live.is_empty() {
                let (a, l) = live.swap_remove((r >> 8) as usize % live.len());
                t.remove(a, l).unwrap()
            } else {
                let all: Vec<u8> = lengths().collect();
                let len = all[(r >> 3) as usize % all.len()];
                let a = addr(&mut rng) & mask(len);
                let w = t.insert(a, len, 1 + round % 500).unwrap();
                if !live.contains(&(a, len)) {
                    live.push((a, len));
                }
                w
            };
            let after: Vec<(u8, u32)> = probes.iter().map(|&p| t.lookup(p)).collect();
            for w in &writes {
                k.apply_one(w);
                for (i, &p) in probes.iter().enumerate() {
                    let got = k.lookup(p);
                    assert!(
                        got == before[i] || got == after[i],
                        "round {round}: {p:x} answered {got:?} mid-change (old {:?}, new {:?})",
                        before[i],
                        after[i]
                    );
                }
            }
            for (i, &p) in probes.iter().enumerate() {
                assert_eq!(k.lookup(p), after[i], "round {round}: address {p:x}");
            }
        }
        assert!(live.len() > 100, "the churn kept a real table ({} prefixes)", live.len());
    }

    /// The worst case the sizing promises: max prefixes, each with its most
    /// markers, all fit.
    #[test]
    fn a_full_table_of_worst_case_prefixes_fits() {
        let max = 20_000u32;
        let nb = v6::buckets_for(max);
        let mut t = Victims6::new(nb);
        let mut k = Kernel::new(nb);
        let mut rng = Rng(7);
        let mut added = Vec::new();
        let mut sixty_fours = HashSet::new();
        while added.len() < max as usize {
            // /127s in distinct /64s: the most markers (/64, /112), none shared.
            let a = (ip("2001:db8::") | ((rng.next() as u128 & 0xffff_ffff) << 64) | rng.next() as u128) & mask(127);
            if !sixty_fours.insert(a >> 64) {
                continue;
            }
            let slot = 1 + added.len() as u32;
            k.apply(&t.insert(a, 127, slot).expect("sized for the worst case"));
            added.push((a, slot));
        }
        assert_eq!(t.entries(), (1 + v6::MAX_MARKERS as usize) * max as usize);
        for &(a, s) in added.iter().step_by(97) {
            assert_eq!(k.lookup(a | 1), (127, s));
        }
    }

    #[test]
    fn table_full_is_an_error_and_changes_nothing() {
        let mut t = Victims6::new(1);
        let mut k = Kernel::new(1);
        // One bucket, two entries: two /64s (the root: no markers) fill it.
        k.apply(&t.insert(ip("2001:db8::"), 64, 1).unwrap());
        k.apply(&t.insert(ip("2001:db8:0:1::"), 64, 2).unwrap());
        let before = k.buckets.clone();
        // A /127 needs two more entries (a /112 marker and itself).
        assert_eq!(t.insert(ip("2001:db8::"), 127, 3), Err(TableFull(1)));
        assert_eq!(t.len(), 2);
        assert_eq!(t.entries(), 2);
        assert_eq!(k.buckets, before);
        assert_eq!(t.lookup(ip("2001:db8::1")), (64, 1));
        assert_eq!(k.lookup(ip("2001:db8::1")), (64, 1));
        k.apply(&t.remove(ip("2001:db8::"), 64).unwrap());
        k.apply(&t.insert(ip("2001:db8:0:2::"), 64, 3).unwrap());
        assert_eq!(k.lookup(ip("2001:db8:0:2::5")), (64, 3));
        assert_eq!(k.lookup(ip("2001:db8:0:1::5")), (64, 2));
    }
}
