//! Built-in detection's meters: how the XDP program measures the
//! amplification traffic towards protected destinations, in memory that is
//! O(tracked destinations + CPUs) whatever arrives.
//!
//! Two tiers, because exact per-destination counters for every address that
//! might be attacked would be unbounded (a spoofed storm across a /16, a
//! random IPv6 /64), and a fixed table that evicts would let a storm push a
//! real victim's meter out:
//!
//! - **Discovery**, a count-min sketch per CPU (`AG_METER_SKETCH`,
//!   [`SKETCH_ROWS`] x `cols` [`SketchCell`]s, fixed size): every packet from
//!   an amplification source port to a protected, untracked destination adds
//!   its vector's weight (packets scaled by how low the vector's threshold is,
//!   [`MeterCfg::weights`]) to one cell per row, in windows of
//!   2^[`EPOCH_SHIFT`] ns. A count-min sketch never under-counts, so a
//!   destination receiving a flood always reaches the trigger, however many
//!   other keys share its cells. When the destination's estimate (the
//!   smallest of its cells) reaches [`MeterCfg::trigger`] in a window, the
//!   program sends the destination to the daemon (`AG_METER_EVENTS`, a ring
//!   buffer): once per window and CPU at most, so the ring's size bounds what
//!   a storm can make the daemon read.
//! - **Exact meters** for the destinations the daemon tracks
//!   (`AG_METER_TRACKED`, a hash map of at most `max_tracked` entries written
//!   only by the daemon): a tracked destination has [`MAX_VECTORS`] rule
//!   entries of its own (packets and bytes per vector), counted exactly as a
//!   policy's are (per-CPU cache folded into shared totals, `crate::counters`).
//!   The daemon decides from these exact figures, and drops a destination
//!   from tracking only when it is quiet: a storm can fill the sketch with
//!   noise, never evict a tracked victim.
//!
//! Only traffic that reaches the victim is metered (no policy, or a policy
//! that passes it: monitor mode, a limit's admitted packets, an unnamed
//! vector); what a policy drops is counted by the policy's own counters,
//! which the detector reads to decide when an attack is over. Traffic to
//! destinations outside the protected networks pays one bitmap read
//! (`AG_PROTECT_BITS`, one bit per /24, the allowlist's layout: IPv4 /24s,
//! then IPv6's top 24 bits); the daemon checks exact membership before it
//! tracks or acts.

use crate::vector::MAX_VECTORS;

/// Rows of the count-min sketch (independent hash functions).
pub const SKETCH_ROWS: u32 = 2;
/// Columns per row by default (a power of two).
pub const DEFAULT_SKETCH_COLS: u32 = 2048;
/// A discovery window is 2^26 ns (67 ms) of the coarse clock.
pub const EPOCH_SHIFT: u32 = 26;
/// Bytes of the candidate ring buffer (`AG_METER_EVENTS`): 4,096 events.
pub const EVENTS_RING_BYTES: u32 = 4096 * 32;
/// Tracked destinations by default.
pub const DEFAULT_MAX_TRACKED: u32 = 1024;
/// IPv6 destinations are metered per /64 (the subnet a host sits in: a
/// random-address storm inside one /64 is one destination).
pub const V6_METER_LEN: u8 = 64;

/// Address families of a [`MeterKey`].
pub const FAMILY_V4: u32 = 4;
pub const FAMILY_V6: u32 = 6;

/// A metered destination: an IPv4 address, or an IPv6 /64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterKey {
    /// IPv4: the address (host order) in the low 32 bits; IPv6: the top 64 bits (host order).
    pub addr: u64,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
    /// Always 0 (hash map keys are compared bytewise).
    pub _pad: u32,
}

impl MeterKey {
    #[inline(always)]
    pub const fn v4(addr: u32) -> Self {
        Self { addr: addr as u64, family: FAMILY_V4, _pad: 0 }
    }
    #[inline(always)]
    pub const fn v6(top64: u64) -> Self {
        Self { addr: top64, family: FAMILY_V6, _pad: 0 }
    }

    /// The two sketch cells of the key, in `0..SKETCH_ROWS * cols` (cols a power of two).
    #[inline(always)]
    pub const fn cells(&self, cols_mask: u32) -> (u32, u32) {
        let h = (self.addr ^ ((self.family as u64) << 61)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h2 = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (((h >> 32) as u32) & cols_mask, (cols_mask + 1) + (((h2 >> 32) as u32) & cols_mask))
    }
}

/// One cell of the sketch: weighted packets in the window it was last written in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SketchCell {
    pub epoch: u32,
    pub units: u32,
}

/// A tracked destination's meters: rule entries `base .. base + MAX_VECTORS`
/// (one per vector id), owned under generation `gen`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    pub base: u32,
    pub gen: u32,
}

/// The meters' settings (`AG_METER_CFG`, one entry), written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterCfg {
    /// 0: metering off (detection disabled): the program does not read further.
    pub enabled: u32,
    /// Sketch columns - 1 (a power of two minus one).
    pub cols_mask: u32,
    /// Units per CPU and window at which a destination is sent to the daemon.
    pub trigger: u32,
    pub _pad: u32,
    /// Units a packet of each vector adds (0: the vector is not metered).
    pub weights: [u16; MAX_VECTORS],
}

impl MeterCfg {
    pub const OFF: MeterCfg =
        MeterCfg { enabled: 0, cols_mask: DEFAULT_SKETCH_COLS - 1, trigger: u32::MAX, _pad: 0, weights: [0; MAX_VECTORS] };
}

/// A candidate sent to the daemon (`AG_METER_EVENTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeterEvent {
    pub key: MeterKey,
    /// The vector of the packet that reached the trigger.
    pub vector: u32,
    /// The estimate (units) it reached.
    pub units: u32,
}

/// The window a coarse-clock time falls in.
#[inline(always)]
pub const fn epoch(now_ns: u64) -> u32 {
    (now_ns >> EPOCH_SHIFT) as u32
}

/// Add `w` units to a cell in window `e`; returns the cell's count after.
#[inline(always)]
pub fn add(cell: &mut SketchCell, e: u32, w: u32) -> u32 {
    if cell.epoch != e {
        cell.epoch = e;
        cell.units = 0;
    }
    cell.units = cell.units.saturating_add(w);
    cell.units
}

/// Whether adding `w` took an estimate from below `trigger` to at least it.
#[inline(always)]
pub const fn crossed(after: u32, w: u32, trigger: u32) -> bool {
    after >= trigger && after.saturating_sub(w) < trigger
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_in_their_rows() {
        let mask = DEFAULT_SKETCH_COLS - 1;
        for a in 0..10_000u64 {
            for k in [MeterKey::v4(a as u32), MeterKey::v6(a << 40)] {
                let (c0, c1) = k.cells(mask);
                assert!(c0 <= mask && (mask + 1..2 * (mask + 1)).contains(&c1));
            }
        }
    }

    #[test]
    fn the_rows_spread_a_slash_16_independently() {
        // 65,536 destinations of one /16 into 2,048 columns: each row's
        // fullest column holds few of them, and the two rows disagree on
        // which keys share a column (else the minimum would not help).
        let mask = DEFAULT_SKETCH_COLS - 1;
        let mut rows = [[0u32; DEFAULT_SKETCH_COLS as usize]; 2];
        for a in 0..65_536u32 {
            let (c0, c1) = MeterKey::v4(0xcb00_0000 | a).cells(mask);
            rows[0][c0 as usize] += 1;
            rows[1][(c1 - mask - 1) as usize] += 1;
        }
        for r in &rows {
            assert!(*r.iter().max().unwrap() <= 64, "max {} of a mean of 32", r.iter().max().unwrap());
        }
        let (a, b) = (MeterKey::v4(0xcb00_0001).cells(mask), MeterKey::v4(0xcb00_0002).cells(mask));
        assert!(a.0 != b.0 || a.1 != b.1);
    }

    #[test]
    fn a_window_restarts_the_count_and_the_trigger_fires_once() {
        let mut c = SketchCell::default();
        assert_eq!(add(&mut c, 5, 3), 3);
        assert_eq!(add(&mut c, 5, 3), 6);
        assert!(crossed(6, 3, 5) && !crossed(9, 3, 5) && !crossed(3, 3, 5));
        assert_eq!(add(&mut c, 6, 1), 1, "a new window starts from zero");
        c.units = u32::MAX - 1;
        c.epoch = 6;
        assert_eq!(add(&mut c, 6, 10), u32::MAX, "saturates");
        assert_eq!(epoch(3 << EPOCH_SHIFT), 3);
    }
}
