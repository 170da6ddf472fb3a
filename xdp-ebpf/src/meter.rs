//! Detection's meters (layout and reasoning: `xdp_common::meter`): traffic
//! from amplification source ports that reaches a protected destination is
//! counted exactly for the destinations the daemon tracks, and otherwise
//! added to a per-CPU sketch that tells the daemon which ones to track.

use xdp_common::{
    counters::verdict,
    maps,
    meter::{self, MeterKey},
    policy::Config,
};

use crate::{
    maps::{AG_CONFIG, AG_METER_CFG, AG_METER_EVENTS, AG_METER_SKETCH, AG_METER_TRACKED, AG_PROTECT_BITS},
    parse::L3,
    verdict::{allowlisted, count_rule, now_ns},
};

/// Meter a packet of `vector` (< MAX_VECTORS) towards `l3`'s destination.
/// `allow_checked`: the caller already knows the source is not allowlisted
/// (allowlisted sources are never metered: they are the victim's own servers).
#[inline(always)]
pub fn meter(l3: &L3, vector: usize, len: u64, cfg: Option<&Config>, allow_checked: bool) {
    let Some(m) = AG_METER_CFG.get(0) else { return };
    if m.enabled == 0 {
        return;
    }
    let w = m.weights[vector] as u32;
    if w == 0 {
        return;
    }
    let (bit, key) = if l3.v6 {
        let d = l3.dst6();
        let top32 = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let top64 = (top32 as u64) << 32 | u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as u64;
        (maps::allow_bit_v6(top32), MeterKey::v6(top64))
    } else {
        let d = u32::from_be_bytes(l3.dst4());
        (maps::allow_bit_v4(d), MeterKey::v4(d))
    };
    match AG_PROTECT_BITS.get(bit >> 6) {
        Some(word) if *word & (1u64 << (bit & 63)) != 0 => {}
        _ => return,
    }
    if !allow_checked && allowlisted(l3) {
        return;
    }
    // Safety: a map value the controller replaces whole (update_elem), read once.
    if let Some(t) = unsafe { AG_METER_TRACKED.get(key) } {
        count_rule(t.base + vector as u32, t.gen, verdict::PASSED, len);
        return;
    }
    let cfg = match cfg {
        Some(c) => Some(c),
        None => AG_CONFIG.get(0),
    };
    let e = meter::epoch(now_ns(cfg));
    let (c0, c1) = key.cells(m.cols_mask);
    let (Some(a), Some(b)) = (AG_METER_SKETCH.get_ptr_mut(c0), AG_METER_SKETCH.get_ptr_mut(c1)) else { return };
    // Safety: per-CPU map values; XDP does not nest on a CPU.
    let est = unsafe {
        let ua = meter::add(&mut *a, e, w);
        let ub = meter::add(&mut *b, e, w);
        if ua < ub {
            ua
        } else {
            ub
        }
    };
    if meter::crossed(est, w, m.trigger) {
        if let Some(mut ev) = AG_METER_EVENTS.reserve::<meter::MeterEvent>(0) {
            ev.write(meter::MeterEvent { key, vector: vector as u32, units: est });
            ev.submit(0);
        }
    }
}
