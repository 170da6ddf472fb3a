//! The IPv6 victim table's pure maths, shared by the XDP program and the
//! controller: the pivot lengths and their binary-search tree, prefix masks,
//! the hash and the two candidate buckets, and the entry encoding. The layout
//! and the reasoning are in [`crate::maps`]'s module docs.

/// Prefix lengths held in the hash table besides /128 (sorted): the search
/// tree. Other lengths go to the LPM trie, consulted only while it holds
/// something. /128 is probed first and alone: nothing is longer, so a hit
/// there is the answer and a /128 needs no markers.
pub const TREE: [u8; 14] = [32, 36, 40, 44, 48, 52, 56, 60, 64, 80, 96, 112, 120, 127];
/// The tree's root: /64, the commonest victim length after /128, so a /64
/// with nothing longer inside it costs one probe after the /128 one.
pub const ROOT: usize = 8;
/// The host length, probed before the tree.
pub const HOST: u8 = 128;
/// Probes of the tree: its depth (root /64, then halving).
pub const DEPTH: usize = 5;
/// Most markers a prefix needs: the right turns on the way to its length.
pub const MAX_MARKERS: u32 = max_markers();
/// An entry's flag: no tree-length prefix longer than the entry lies under
/// it, so the search can stop there (its best answer is final).
pub const LEAF: u64 = 1 << 48;

/// Entries per bucket; a bucket is one 64-byte cache line.
pub const WAYS: usize = 2;
/// u64 words per entry: meta, key high half, key low half, unused.
pub const ENTRY_WORDS: usize = 4;
/// One bucket: `WAYS` entries of `ENTRY_WORDS` words.
pub type Bucket = [u64; WAYS * ENTRY_WORDS];
/// Buckets are sized so that a full table (every prefix with its most markers)
/// fills at most this share of the entries (per mille); a two-choice cuckoo
/// table of 2-way buckets places keys reliably below ~90%.
pub const LOAD_PER_MILLE: u64 = 850;
/// Times the program retries a lookup that overlapped a change of the table.
pub const RETRIES: usize = 4;

/// Index of a length in [`TREE`], if it is one.
pub const fn tree_index(len: u8) -> Option<usize> {
    let mut i = 0;
    while i < TREE.len() {
        if TREE[i] == len {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Whether prefixes of this length live in the hash table (else: the trie).
pub const fn is_pivot(len: u8) -> bool {
    len == HOST || tree_index(len).is_some()
}

/// The tree node a search step visits in the index range `l..h`.
#[inline(always)]
pub const fn node(step: usize, l: usize, h: usize) -> usize {
    if step == 0 {
        ROOT
    } else {
        (l + h) / 2
    }
}

const fn max_markers() -> u32 {
    let mut max = 0;
    let mut i = 0;
    while i < TREE.len() {
        let n = marker_lengths(TREE[i]).1 as u32;
        if n > max {
            max = n;
        }
        i += 1;
    }
    max
}

/// Buckets for a table that must hold `max_prefixes` prefixes in the worst
/// case (each with [`MAX_MARKERS`] markers of its own).
pub const fn buckets_for(max_prefixes: u32) -> u32 {
    let entries = max_prefixes as u64 * (1 + MAX_MARKERS as u64);
    let buckets = (entries * 1000).div_ceil(WAYS as u64 * LOAD_PER_MILLE);
    if buckets < 1 {
        1
    } else {
        buckets as u32
    }
}

/// The two 64-bit halves of an address masked to `len` bits.
#[inline(always)]
pub const fn masked(hi: u64, lo: u64, len: u8) -> (u64, u64) {
    if len == 0 {
        (0, 0)
    } else if len < 64 {
        (hi & (u64::MAX << (64 - len as u32)), 0)
    } else if len == 64 {
        (hi, 0)
    } else if len < 128 {
        (hi, lo & (u64::MAX << (128 - len as u32)))
    } else {
        (hi, lo)
    }
}

/// 64-bit hash of a (length, masked prefix) key: multiply-shift of each
/// half (the high bits of a product depend on every bit of the factor).
#[inline(always)]
pub const fn hash(len: u8, hi: u64, lo: u64) -> u64 {
    hi.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ lo.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ (len as u64).wrapping_mul(0x1656_67b1_9e37_79f9)
}

/// The two candidate buckets of a key (they may coincide): the high half of
/// the hash, and of the hash times another odd constant, each reduced to
/// `0..nbuckets` by a multiply-shift (Lemire's range reduction, no division).
#[inline(always)]
pub const fn buckets(len: u8, hi: u64, lo: u64, nbuckets: u32) -> (u32, u32) {
    let h = hash(len, hi, lo);
    let b1 = ((h >> 32) * nbuckets as u64) >> 32;
    let b2 = ((h.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 32) * nbuckets as u64) >> 32;
    (b1 as u32, b2 as u32)
}

/// An entry's meta word: the [`LEAF`] flag, its length (0 = empty entry),
/// then the best hash-resident victim prefix covering it (length, policy
/// slot; slot 0 = none). One u64, so the controller changes an entry's
/// answer with one store.
#[inline(always)]
pub const fn meta(len: u8, best_len: u8, best_slot: u32, leaf: bool) -> u64 {
    (if leaf { LEAF } else { 0 }) | (len as u64) << 40 | (best_len as u64) << 32 | best_slot as u64
}

#[inline(always)]
pub const fn meta_len(m: u64) -> u8 {
    (m >> 40) as u8
}

#[inline(always)]
pub const fn meta_best_len(m: u64) -> u8 {
    (m >> 32) as u8
}

#[inline(always)]
pub const fn meta_slot(m: u64) -> u32 {
    m as u32
}

/// The one entry of `AG_V6_META`: the change sequence (odd while the
/// controller rewrites an entry's key; the program retries a lookup that saw
/// it odd or changed), the number of prefixes in the trie (0 = skip it), and
/// the table's shape.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Meta {
    pub seq: u64,
    pub trie_prefixes: u64,
    pub nbuckets: u32,
    pub _pad: u32,
    /// [`TREE`], then 0.
    pub pivots: [u8; 16],
}

impl V6Meta {
    pub const fn new(nbuckets: u32) -> Self {
        let mut pivots = [0u8; 16];
        let mut i = 0;
        while i < TREE.len() {
            pivots[i] = TREE[i];
            i += 1;
        }
        Self { seq: 0, trie_prefixes: 0, nbuckets, _pad: 0, pivots }
    }
}

/// The tree lengths where the search for a prefix of length `len` turns
/// towards longer lengths: a prefix needs a marker (itself cut to that
/// length) at each, so the search finds its way to it. Returns the lengths
/// and how many (none for /128, which is not in the tree).
pub const fn marker_lengths(len: u8) -> ([u8; DEPTH], usize) {
    let mut out = [0u8; DEPTH];
    let mut n = 0;
    if len == HOST {
        return (out, 0);
    }
    let (mut l, mut h) = (0usize, TREE.len());
    let mut step = 0;
    while l < h && step < DEPTH {
        let mid = node(step, l, h);
        if TREE[mid] == len {
            break;
        }
        if TREE[mid] < len {
            out[n] = TREE[mid];
            n += 1;
            l = mid + 1;
        } else {
            h = mid;
        }
        step += 1;
    }
    (out, n)
}

/// Entry `way` of a bucket if it holds the key (`len`, `hi`, `lo`): its meta.
/// Volatile reads: the controller writes the table while the program reads
/// it, and the order of the reads is what the change sequence relies on.
#[inline(always)]
pub fn probe(b: &Bucket, len: u8, hi: u64, lo: u64) -> Option<u64> {
    let mut w = 0;
    while w < WAYS {
        let e = w * ENTRY_WORDS;
        // Safety: in-bounds reads of a borrowed array.
        let m = unsafe { core::ptr::read_volatile(&b[e]) };
        if meta_len(m) == len
            && unsafe { core::ptr::read_volatile(&b[e + 1]) } == hi
            && unsafe { core::ptr::read_volatile(&b[e + 2]) } == lo
        {
            return Some(m);
        }
        w += 1;
    }
    None
}

/// The meta of key (`len`, `hi`, `lo`, already masked) if it is in the table:
/// its two buckets, the second only if the first does not hold it.
#[inline(always)]
pub fn probe_key<'a>(len: u8, hi: u64, lo: u64, nbuckets: u32, get: &impl Fn(u32) -> Option<&'a Bucket>) -> Option<u64> {
    let (b1, b2) = buckets(len, hi, lo, nbuckets);
    let found = match get(b1) {
        Some(b) => probe(b, len, hi, lo),
        None => None,
    };
    if found.is_some() || b2 == b1 {
        return found;
    }
    match get(b2) {
        Some(b) => probe(b, len, hi, lo),
        None => None,
    }
}

/// Longest hash-resident prefix covering the address (`hi`, `lo`): a probe at
/// /128, then a search down the tree (`pivots`: [`TREE`] as the program reads
/// it from `AG_V6_META`, root [`ROOT`], then halving): a hit (prefix or
/// marker) records the entry's best answer and goes longer, or stops if the
/// entry is a [`LEAF`]; a miss goes shorter. Returns the meta word of the last
/// hit (0 = none). `get` reads a bucket.
#[inline(always)]
pub fn search<'a>(hi: u64, lo: u64, pivots: &[u8; 16], nbuckets: u32, get: impl Fn(u32) -> Option<&'a Bucket>) -> u64 {
    // Hosts first: a /128 is always the longest match.
    if let Some(m) = probe_key(HOST, hi, lo, nbuckets, &get) {
        return m;
    }
    let mut best = 0u64;
    let (mut l, mut h) = (0usize, TREE.len());
    let mut step = 0;
    while step < DEPTH {
        if l >= h {
            break;
        }
        let mid = node(step, l, h);
        let len = pivots[mid & 15];
        let (kh, kl) = masked(hi, lo, len);
        match probe_key(len, kh, kl, nbuckets, &get) {
            Some(m) => {
                best = m;
                if m & LEAF != 0 {
                    break;
                }
                l = mid + 1;
            }
            None => h = mid,
        }
        step += 1;
    }
    best
}

/// A trie value: the prefix length (to compare with the hash table's answer)
/// and the policy slot.
#[inline(always)]
pub const fn trie_value(len: u8, slot: u32) -> u64 {
    (len as u64) << 32 | slot as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_sorted_and_deep_enough() {
        assert!(TREE.windows(2).all(|w| w[0] < w[1]));
        assert!(TREE.len() < 16, "the program masks the index with 15");
        assert_eq!(TREE[ROOT], 64);
        assert!(is_pivot(127) && is_pivot(128) && is_pivot(48) && !is_pivot(65));
        // Every tree length is reached within DEPTH steps.
        for (i, &len) in TREE.iter().enumerate() {
            let (mut l, mut h, mut found) = (0, TREE.len(), false);
            for step in 0..DEPTH {
                if l >= h {
                    break;
                }
                let mid = node(step, l, h);
                if mid == i {
                    found = true;
                    break;
                }
                if mid < i {
                    l = mid + 1
                } else {
                    h = mid
                }
            }
            assert!(found, "/{len} unreachable in {DEPTH} steps");
        }
    }

    #[test]
    fn markers_follow_the_search() {
        assert_eq!(marker_lengths(64).1, 0, "the root needs no marker");
        assert_eq!(marker_lengths(128).1, 0, "hosts are probed first");
        let (m, n) = marker_lengths(127);
        assert_eq!(&m[..n], &[64, 112]);
        let (m, n) = marker_lengths(60);
        assert_eq!(&m[..n], &[48, 56]);
        let (m, n) = marker_lengths(48);
        assert_eq!(&m[..n], &[] as &[u8]);
        assert_eq!(MAX_MARKERS, 2);
    }

    #[test]
    fn masks() {
        let (hi, lo) = (0x2001_0db8_1234_5678, 0x9abc_def0_1122_3344);
        assert_eq!(masked(hi, lo, 0), (0, 0));
        assert_eq!(masked(hi, lo, 32), (0x2001_0db8_0000_0000, 0));
        assert_eq!(masked(hi, lo, 48), (0x2001_0db8_1234_0000, 0));
        assert_eq!(masked(hi, lo, 64), (hi, 0));
        assert_eq!(masked(hi, lo, 65), (hi, 0x8000_0000_0000_0000));
        assert_eq!(masked(hi, lo, 127), (hi, 0x9abc_def0_1122_3344));
        assert_eq!(masked(hi, lo | 1, 127), (hi, 0x9abc_def0_1122_3344));
        assert_eq!(masked(hi, lo, 128), (hi, lo));
    }

    #[test]
    fn meta_round_trip() {
        let m = meta(127, 64, 99_999, true);
        assert_eq!((meta_len(m), meta_best_len(m), meta_slot(m), m & LEAF != 0), (127, 64, 99_999, true));
        assert_eq!(meta(64, 0, 0, false) & LEAF, 0);
        assert_eq!(meta_len(0), 0, "an all-zero entry is empty");
    }

    #[test]
    fn buckets_in_range_and_spread() {
        let nb = 1000;
        let mut hits = [0u32; 1000];
        for i in 0..20_000u64 {
            // /64s that differ only in a few bits, the hard case for a weak hash.
            let (b1, b2) = buckets(64, 0x2001_0db8_0000_0000 | i << 8, 0, nb);
            assert!(b1 < nb && b2 < nb);
            hits[b1 as usize] += 1;
            hits[b2 as usize] += 1;
        }
        let max = *hits.iter().max().unwrap();
        assert!(max < 80, "40 expected per bucket, worst {max}");
    }

    #[test]
    fn sizing() {
        assert!(buckets_for(1) >= 2);
        let b = buckets_for(100_000) as u64;
        assert!(b * WAYS as u64 * LOAD_PER_MILLE >= 100_000 * (1 + MAX_MARKERS as u64) * 1000);
        assert_eq!(core::mem::size_of::<Bucket>(), 64);
        assert_eq!(core::mem::size_of::<V6Meta>(), 40);
    }
}
