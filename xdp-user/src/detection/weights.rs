//! The discovery sketch's settings (`xdp_common::meter::MeterCfg`) from the
//! thresholds: each vector's packets weigh in inverse proportion to the rate
//! that makes it an attack, so one trigger serves every vector.

use xdp_common::{
    meter::{MeterCfg, EPOCH_SHIFT},
    vector::MAX_VECTORS,
};

use super::config::Thresholds;

/// Bytes of the largest packet a flood is made of, to turn a bps threshold
/// into the packet rate at which full-size packets cross it.
const MAX_PACKET_BYTES: u64 = 1_500;
/// A destination is tracked once a window's estimate reaches this fraction
/// of a flood at its threshold: detection starts on a quarter of the rate.
const TRIGGER_FRACTION: u64 = 4;

/// The packet rate at which a vector's flood crosses one of its thresholds.
fn discovery_pps((pps, bps): (u64, u64)) -> u64 {
    pps.min(bps / (8 * MAX_PACKET_BYTES)).max(1)
}

/// Weights and trigger for `cpus` CPUs sharing a flood evenly (the worst
/// case: each CPU sees 1/cpus of it; a flood on fewer CPUs triggers sooner).
pub fn meter_cfg(t: &Thresholds, cpus: u32) -> MeterCfg {
    let rates: Vec<(usize, u64)> =
        t.by_vector.iter().enumerate().filter(|(_, th)| th.0 != 0).map(|(v, th)| (v, discovery_pps(*th))).collect();
    let reference = rates.iter().map(|(_, r)| *r).max().unwrap_or(1);
    let mut weights = [0u16; MAX_VECTORS];
    for (v, r) in rates {
        weights[v] = reference.div_ceil(r).min(u16::MAX as u64) as u16;
    }
    // Units a CPU sees in one window from a flood at `reference` pps (weight 1).
    let window_ns = 1u64 << EPOCH_SHIFT;
    let per_cpu_window = reference * window_ns / 1_000_000_000 / cpus.max(1) as u64;
    let trigger = (per_cpu_window / TRIGGER_FRACTION).max(1).min(u32::MAX as u64) as u32;
    MeterCfg { enabled: 1, cols_mask: 0, trigger, _pad: 0, weights }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detection::config::DetectionConfig, vectors::VectorTable};

    #[test]
    fn a_flood_at_any_vectors_threshold_reaches_the_trigger_in_a_window() {
        let v = VectorTable::default();
        let t = DetectionConfig::default().thresholds(&v);
        for cpus in [1, 2, 64, 128] {
            let m = meter_cfg(&t, cpus);
            for info in v.all() {
                let id = info.id as usize;
                let w = m.weights[id] as u64;
                assert!(w >= 1, "{} is metered", info.name);
                // A flood at the threshold, spread over every CPU: units per CPU per window.
                let pps = discovery_pps(t.by_vector[id]);
                let units = pps * w * (1u64 << EPOCH_SHIFT) / 1_000_000_000 / cpus as u64;
                assert!(units >= m.trigger as u64, "{} on {cpus} CPUs: {units} < trigger {}", info.name, m.trigger);
                // And not a tenth of it.
                assert!(units / 10 < m.trigger as u64 || m.trigger == 1, "{} on {cpus} CPUs triggers too early", info.name);
            }
        }
        let m = meter_cfg(&t, 2);
        let id = |n| v.id_of(n).unwrap() as usize;
        assert!(m.weights[id("memcached")] > m.weights[id("snmp")], "the lower the threshold, the heavier a packet");
    }
}
