//! `[detection]`: what built-in detection protects, when it acts, and the
//! thresholds, with defaults derived from the vector table.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use xdp_common::{meter::V6_METER_LEN, vector::MAX_VECTORS};

use crate::vectors::VectorTable;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectionMode {
    /// Ban what crosses a threshold (a policy with the default profile).
    #[default]
    Mitigate,
    /// Detect, log, count and notify; change nothing.
    Report,
}

impl DetectionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DetectionMode::Mitigate => "mitigate",
            DetectionMode::Report => "report",
        }
    }
}

/// A rate threshold; either part may be left to its default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Packets per second.
    pub pps: Option<u64>,
    /// Bits per second.
    pub bps: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    pub enabled: bool,
    /// The protected prefixes: only destinations inside them are metered and
    /// banned (IPv4, and IPv6 of /64 or shorter: IPv6 is metered per /64).
    pub networks: Vec<IpNet>,
    pub mode: DetectionMode,
    /// How long every rate must stay below its threshold before a ban is lifted.
    pub hold_secs: u64,
    /// A destination detected again soon after a lift gets twice the hold
    /// it had, up to this.
    pub max_hold_secs: u64,
    /// Lifetime of a detector's ban, extended while the attack lasts (the
    /// ban outlives a daemon that stops).
    pub ban_ttl_secs: u64,
    /// Most policies the detector holds at once (they also count against
    /// `max_alert_policies`).
    pub max_policies: usize,
    /// How often the meters are read (ms).
    pub interval_ms: u64,
    /// Rates are measured over this window (ms).
    pub window_ms: u64,
    /// All amplification traffic to one destination together.
    pub total: Threshold,
    /// Per vector, by name; a vector not named gets the derived default.
    pub vectors: BTreeMap<String, Threshold>,
    /// Webhooks and a FastNetMon-style command told of every ban and unban.
    pub notify: super::notify::NotifyConfig,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            networks: Vec::new(),
            mode: DetectionMode::Mitigate,
            hold_secs: 60,
            max_hold_secs: 960,
            ban_ttl_secs: 600,
            max_policies: 256,
            interval_ms: 50,
            window_ms: 200,
            total: Threshold::default(),
            vectors: BTreeMap::new(),
            notify: Default::default(),
        }
    }
}

/// Default threshold for all amplification traffic to a destination.
pub const TOTAL_PPS: u64 = 50_000;
pub const TOTAL_BPS: u64 = 500_000_000;
/// Bytes of a typical amplified reply, to derive a bps default from a pps one.
pub const REPLY_BYTES: u64 = 1_000;

/// The default pps threshold of a vector of amplification factor `a`:
/// 100,000 / a, within 1,000 ..= 20,000 (the more a request is amplified, the
/// less legitimate traffic of it a host receives, and the more each packet
/// costs the victim); a vector whose factor is unknown: 5,000.
pub fn default_pps(amplification: &str) -> u64 {
    match largest_number(amplification) {
        Some(a) if a > 0.0 => ((100_000.0 / a) as u64).clamp(1_000, 20_000),
        _ => 5_000,
    }
}

/// The largest number in a text like "28-54", "up to 153", "556.9".
fn largest_number(s: &str) -> Option<f64> {
    s.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse::<f64>().ok())
        .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
}

/// Thresholds resolved for every vector id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// (pps, bps) by vector id; (0, 0) for ids no vector has.
    pub by_vector: [(u64, u64); MAX_VECTORS],
    pub total: (u64, u64),
}

impl DetectionConfig {
    pub fn validate(&self, vectors: &VectorTable) -> Result<(), String> {
        if self.enabled && self.networks.is_empty() {
            return Err("detection.networks is empty: name the prefixes detection protects (or set enabled = false)".into());
        }
        for n in &self.networks {
            if *n != n.trunc() {
                return Err(format!("detection.networks entry {n} has host bits set; did you mean {}?", n.trunc()));
            }
            if let IpNet::V6(v6) = n {
                if v6.prefix_len() > V6_METER_LEN {
                    return Err(format!(
                        "detection.networks entry {n}: IPv6 destinations are metered and banned per /64; use a /64 or shorter"
                    ));
                }
            }
        }
        if !(1..=86_400).contains(&self.hold_secs) || self.max_hold_secs < self.hold_secs || self.max_hold_secs > 7 * 86_400 {
            return Err(format!(
                "detection.hold_secs {} must be in 1..=86400 and max_hold_secs {} in hold_secs..=604800",
                self.hold_secs, self.max_hold_secs
            ));
        }
        if self.ban_ttl_secs == 0 {
            return Err("detection.ban_ttl_secs must be at least 1".into());
        }
        if self.max_policies == 0 {
            return Err("detection.max_policies must be at least 1".into());
        }
        if !(10..=1_000).contains(&self.interval_ms) || self.window_ms < self.interval_ms || self.window_ms > 10_000 {
            return Err(format!(
                "detection.interval_ms {} must be in 10..=1000 and window_ms {} in interval_ms..=10000",
                self.interval_ms, self.window_ms
            ));
        }
        self.notify.validate()?;
        for (name, t) in std::iter::once(("total", &self.total)).chain(self.vectors.iter().map(|(n, t)| (n.as_str(), t))) {
            if name != "total" && vectors.id_of(name).is_none() {
                return Err(format!("detection.vectors: unknown vector {name:?} (`ampguard vectors` lists them)"));
            }
            if t.pps == Some(0) || t.bps == Some(0) {
                return Err(format!("detection threshold of {name}: 0 would ban at the first packet; leave it out for the default"));
            }
        }
        Ok(())
    }

    /// Every vector's thresholds: the config's, else the derived defaults.
    pub fn thresholds(&self, vectors: &VectorTable) -> Thresholds {
        let mut by_vector = [(0, 0); MAX_VECTORS];
        for v in vectors.all() {
            let pps = default_pps(&v.amplification);
            let t = self.vectors.get(&v.name).copied().unwrap_or_default();
            let pps_t = t.pps.unwrap_or(pps);
            by_vector[v.id as usize] = (pps_t, t.bps.unwrap_or(pps_t * REPLY_BYTES * 8));
        }
        Thresholds { by_vector, total: (self.total.pps.unwrap_or(TOTAL_PPS), self.total.bps.unwrap_or(TOTAL_BPS)) }
    }

    /// The networks holding `addr`'s destination key: is it protected?
    pub fn protects(&self, prefix: &IpNet) -> bool {
        self.networks.iter().any(|n| n.contains(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_amplification_factor() {
        assert_eq!(default_pps("10000-51000"), 1_000, "memcached");
        assert_eq!(default_pps("556.9"), 1_000, "ntp");
        assert_eq!(default_pps("28-54"), 1_851, "dns");
        assert_eq!(default_pps("6.3"), 15_873, "snmp");
        assert_eq!(default_pps("3.8"), 20_000, "netbios: capped");
        assert_eq!(default_pps("up to 153"), 1_000);
        assert_eq!(default_pps("unknown"), 5_000);
        let t = DetectionConfig::default().thresholds(&VectorTable::default());
        let id = |n| VectorTable::default().id_of(n).unwrap() as usize;
        assert_eq!(t.by_vector[id("memcached")], (1_000, 8_000_000));
        assert_eq!(t.total, (TOTAL_PPS, TOTAL_BPS));
    }

    #[test]
    fn overrides_replace_what_they_name() {
        let c: DetectionConfig = toml::from_str("[vectors.dns]\npps = 9000\n[total]\nbps = 1000").unwrap();
        let t = c.thresholds(&VectorTable::default());
        let dns = VectorTable::default().id_of("dns").unwrap() as usize;
        assert_eq!(t.by_vector[dns], (9_000, 72_000_000), "bps derived from the pps given");
        assert_eq!(t.total, (TOTAL_PPS, 1_000));
    }

    #[test]
    fn bad_settings_are_named() {
        let v = VectorTable::default();
        let bad = |toml_text: &str| toml::from_str::<DetectionConfig>(toml_text).unwrap().validate(&v).unwrap_err();
        assert!(bad("enabled = true").contains("networks is empty"));
        assert!(bad("networks = [\"203.0.113.1/24\"]").contains("203.0.113.0/24"));
        assert!(bad("networks = [\"2001:db8::/96\"]").contains("/64"));
        assert!(bad("[vectors.quake]\npps = 5").contains("unknown vector \"quake\""));
        assert!(bad("[vectors.dns]\npps = 0").contains("first packet"));
        assert!(bad("hold_secs = 10\nmax_hold_secs = 5").contains("max_hold_secs"));
        assert!(bad("interval_ms = 5").contains("interval_ms"));
        let ok: DetectionConfig = toml::from_str("enabled = true\nnetworks = [\"203.0.113.0/24\", \"2001:db8::/48\"]").unwrap();
        assert!(ok.validate(&v).is_ok());
        assert!(ok.protects(&"203.0.113.7/32".parse().unwrap()) && !ok.protects(&"198.51.100.7/32".parse().unwrap()));
        assert!(ok.protects(&"2001:db8:0:5::/64".parse().unwrap()));
    }
}
