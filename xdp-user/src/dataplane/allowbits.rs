//! The allowlist prefilter bitmap (`AG_ALLOW_BITS`, layout in `xdp_common::maps`):
//! bit b is set iff some allowlist prefix of the family overlaps the /24-sized
//! block b (top 24 bits of the address), and summary bit
//! `allow_summary_bit(b)` iff any block bit of its /16 is. Pure logic; returns
//! word writes, block words before the summary words they imply (an add is
//! seen by the program once its summary bit is set, a removal once it is
//! cleared).

use std::ops::Range;

use ipnet::IpNet;
use xdp_common::maps;

/// The bits of the blocks a prefix overlaps.
pub fn bits_of(prefix: &IpNet) -> Range<u32> {
    let (top, len, base) = match prefix {
        IpNet::V4(n) => (u32::from(n.network()), n.prefix_len(), 0),
        IpNet::V6(n) => {
            let o = n.network().octets();
            (u32::from_be_bytes([o[0], o[1], o[2], o[3]]), n.prefix_len(), maps::ALLOW_BITS_V6)
        }
    };
    let first = base + (top >> 8);
    let count = if len >= 24 { 1 } else { 1u32 << (24 - len) };
    first..first + count
}

pub struct AllowBits {
    words: Vec<u64>,
}

impl Default for AllowBits {
    fn default() -> Self {
        Self { words: vec![0; maps::ALLOW_BITS_WORDS as usize] }
    }
}

impl AllowBits {
    /// The tests' view of one bit (the data plane only writes whole words).
    #[cfg(test)]
    pub fn is_set(&self, bit: u32) -> bool {
        self.words[(bit >> 6) as usize] & (1 << (bit & 63)) != 0
    }

    /// Recompute the bits of `changed` (a prefix just added or removed) from
    /// `all` (the allowlist after the change); returns (word index, value) writes.
    pub fn update<'a>(&mut self, changed: &IpNet, all: impl Iterator<Item = &'a IpNet>) -> Vec<(u32, u64)> {
        let range = bits_of(changed);
        let mut fresh = vec![0u64; ((range.end - 1) / 64 - range.start / 64 + 1) as usize];
        let first_word = range.start / 64;
        for p in all {
            let r = bits_of(p);
            let (s, e) = (r.start.max(range.start), r.end.min(range.end));
            for b in s..e {
                fresh[(b / 64 - first_word) as usize] |= 1 << (b & 63);
            }
        }
        let mut writes = Vec::new();
        for (i, f) in fresh.into_iter().enumerate() {
            let w = first_word + i as u32;
            // Only the bits inside `range` are recomputed; keep the others.
            let mut keep = u64::MAX;
            for b in range.start.max(w * 64)..range.end.min(w * 64 + 64) {
                keep &= !(1 << (b & 63));
            }
            let value = (self.words[w as usize] & keep) | f;
            if value != self.words[w as usize] {
                self.words[w as usize] = value;
                writes.push((w, value));
            }
        }
        // The summary bits of the /16s (4 words of block bits each) touched.
        let (first16, last16) = (range.start >> 8, (range.end - 1) >> 8);
        for s16 in first16..=last16 {
            let any = self.words[(s16 * 4) as usize..(s16 * 4 + 4) as usize].iter().any(|w| *w != 0);
            let bit = maps::ALLOW_SUMMARY + s16;
            let (w, m) = ((bit >> 6) as usize, 1u64 << (bit & 63));
            let value = if any { self.words[w] | m } else { self.words[w] & !m };
            if value != self.words[w] {
                self.words[w] = value;
                writes.push((w as u32, value));
            }
        }
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn add_and_remove_keep_overlapping_bits() {
        let mut b = AllowBits::default();
        let mut all = vec![net("192.0.2.0/24"), net("192.0.2.128/25")];
        b.update(&all[0], all.iter());
        b.update(&all[1], all.iter());
        let bit = bits_of(&all[0]).start;
        assert!(b.is_set(bit));
        all.remove(0);
        b.update(&net("192.0.2.0/24"), all.iter());
        assert!(b.is_set(bit), "the /25 still overlaps the block");
        all.clear();
        b.update(&net("192.0.2.128/25"), all.iter());
        assert!(!b.is_set(bit));
    }

    #[test]
    fn short_prefixes_cover_many_blocks_and_families_are_apart() {
        let mut b = AllowBits::default();
        let all = vec![net("198.51.0.0/16"), net("2001:db8::/32")];
        for p in &all {
            b.update(p, all.iter());
        }
        assert_eq!(bits_of(&all[0]).len(), 256);
        assert!(bits_of(&all[0]).all(|x| b.is_set(x)));
        assert!(b.is_set(bits_of(&all[1]).start));
        assert!(!b.is_set(bits_of(&net("203.0.113.0/24")).start));
        assert!(!b.is_set(bits_of(&net("2001:eb8::/32")).start));
    }

    #[test]
    fn the_summary_bit_follows_the_blocks_of_its_sixteen() {
        let mut b = AllowBits::default();
        let summary = |p: &str| maps::allow_summary_bit(bits_of(&net(p)).start);
        let mut all = vec![net("192.0.2.0/24"), net("192.0.200.128/25")];
        for p in &all {
            let writes = b.update(p, all.iter());
            // Block words are written before the summary word they imply.
            let s = (summary("192.0.0.0/16") >> 6, bits_of(p).start >> 6);
            let (pos_s, pos_b) = (writes.iter().position(|(w, _)| *w == s.0), writes.iter().position(|(w, _)| *w == s.1));
            assert!(pos_b.is_some() && (pos_s.is_none() || pos_s > pos_b), "{writes:?}");
        }
        assert!(b.is_set(summary("192.0.0.0/16")));
        assert!(!b.is_set(summary("192.1.0.0/16")), "the next /16 has nothing");
        assert!(!b.is_set(summary("2001:db8::/32")), "the IPv6 summary is apart");
        all.remove(0);
        b.update(&net("192.0.2.0/24"), all.iter());
        assert!(b.is_set(summary("192.0.0.0/16")), "the /25 is still in it");
        all.clear();
        b.update(&net("192.0.200.128/25"), all.iter());
        assert!(!b.is_set(summary("192.0.0.0/16")), "empty /16: summary clear");
        // A /8 sets 256 summary bits; a /32 of IPv6 one of the IPv6 half.
        let all = vec![net("10.0.0.0/8"), net("2001:db8::/32")];
        for p in &all {
            b.update(p, all.iter());
        }
        assert!(b.is_set(summary("10.255.0.0/16")) && b.is_set(summary("10.0.0.0/16")) && !b.is_set(summary("11.0.0.0/16")));
        assert!(b.is_set(summary("2001:db8::/32")) && !b.is_set(summary("2002:db8::/32")), "one /16 of IPv6 space");
    }
}
