//! Rules as operators write them (API JSON, config TOML) and named profiles.
//!
//! A rule is `{"action": "pass" | "drop" | "limit", "pps": N, "bps": N,
//! "burst": N, "burst_bytes": N}`; in TOML a bare `"drop"` also works.
//! `bps` is bits per second (network convention); the data plane counts bytes.

use std::{collections::BTreeMap, fmt};

use serde::{de, Deserialize, Deserializer, Serialize};

use crate::dataplane::rules::{Limit, Rule};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    Pass,
    Drop,
    Limit,
}

/// A rule as written. Unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub action: ActionName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pps: Option<u64>,
    /// Bits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bps: Option<u64>,
    /// Bucket depth in packets (default: one second of `pps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Bucket depth in bytes (default: one second of `bps`, at least 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
}

/// Accepts `"drop"` as well as `{"action": "drop"}` (for TOML profiles).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LenientRuleSpec(pub RuleSpec);

impl<'de> Deserialize<'de> for LenientRuleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = LenientRuleSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""pass", "drop", or a table like { action = "limit", pps = 1000 }"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                let action = ActionName::deserialize(de::value::StrDeserializer::<E>::new(s))?;
                Ok(LenientRuleSpec(RuleSpec::simple(action)))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                RuleSpec::deserialize(de::value::MapAccessDeserializer::new(m)).map(LenientRuleSpec)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("{0} applies only to limit rules")]
    RateOnNonLimit(&'static str),
    #[error("a limit rule needs pps or bps")]
    NoRate,
    #[error("bps {0} is below 8 (one byte per second)")]
    BpsTooLow(u64),
    #[error("{0}")]
    Limit(#[from] crate::dataplane::rules::LimitError),
}

impl RuleSpec {
    pub const fn simple(action: ActionName) -> Self {
        Self { action, pps: None, bps: None, burst: None, burst_bytes: None }
    }

    pub fn limit(pps: u64, bps: Option<u64>) -> Self {
        Self { action: ActionName::Limit, pps: Some(pps), bps, burst: None, burst_bytes: None }
    }

    /// The data-plane rule, with defaults filled in and every bound checked.
    pub fn resolve(&self) -> Result<Rule, RuleError> {
        match self.action {
            ActionName::Pass | ActionName::Drop => {
                for (name, v) in [("pps", self.pps), ("bps", self.bps), ("burst", self.burst), ("burst_bytes", self.burst_bytes)] {
                    if v.is_some() {
                        return Err(RuleError::RateOnNonLimit(name));
                    }
                }
                Ok(if self.action == ActionName::Pass { Rule::Pass } else { Rule::Drop })
            }
            ActionName::Limit => {
                let pps = self.pps.unwrap_or(0);
                let bytes = match self.bps {
                    Some(b) if b < 8 => return Err(RuleError::BpsTooLow(b)),
                    Some(b) => b / 8,
                    None => 0,
                };
                if pps == 0 && bytes == 0 {
                    return Err(RuleError::NoRate);
                }
                let limit = Limit {
                    pps,
                    bytes_per_sec: bytes,
                    burst_packets: if pps == 0 { 0 } else { self.burst.unwrap_or(pps) },
                    burst_bytes: if bytes == 0 { 0 } else { self.burst_bytes.unwrap_or(bytes.max(65_536)) },
                };
                limit.validate()?;
                Ok(Rule::Limit(limit))
            }
        }
    }

    /// The canonical form of a resolved rule (what the API shows back).
    pub fn from_rule(rule: &Rule) -> Self {
        match rule {
            Rule::Pass => Self::simple(ActionName::Pass),
            Rule::Drop => Self::simple(ActionName::Drop),
            Rule::Limit(l) => Self {
                action: ActionName::Limit,
                pps: (l.pps != 0).then_some(l.pps),
                bps: (l.bytes_per_sec != 0).then_some(l.bytes_per_sec * 8),
                burst: (l.pps != 0).then_some(l.burst_packets),
                burst_bytes: (l.bytes_per_sec != 0).then_some(l.burst_bytes),
            },
        }
    }
}

/// Rules by vector name.
pub type Profile = BTreeMap<String, RuleSpec>;

/// The built-in profile for a victim under attack: drop the vectors that have
/// no legitimate use towards a server, rate-limit the ones that also carry
/// real replies (a server resolves names, syncs its clock, may be polled by
/// SNMP, sees mDNS on a LAN, and receives fragmented EDNS answers).
pub fn builtin_default() -> Profile {
    let mut p = Profile::new();
    for v in ["memcached", "chargen", "qotd", "ssdp", "cldap", "wsd", "ard", "ubiquiti", "dvr", "netbios", "portmap", "coap", "mssql", "tftp"] {
        p.insert(v.into(), RuleSpec::simple(ActionName::Drop));
    }
    // Rates per victim: generous for one host's own traffic, tiny against a flood.
    p.insert("dns".into(), RuleSpec::limit(2_000, Some(20_000_000)));
    p.insert("ntp".into(), RuleSpec::limit(100, Some(1_000_000)));
    p.insert("snmp".into(), RuleSpec::limit(500, Some(4_000_000)));
    p.insert("mdns".into(), RuleSpec::limit(100, Some(1_000_000)));
    p.insert("fragment".into(), RuleSpec::limit(1_000, Some(10_000_000)));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_units() {
        let r = RuleSpec::limit(1000, Some(8_000_000)).resolve().unwrap();
        let Rule::Limit(l) = r else { panic!() };
        assert_eq!((l.pps, l.bytes_per_sec, l.burst_packets, l.burst_bytes), (1000, 1_000_000, 1000, 1_000_000));
        assert_eq!(RuleSpec::from_rule(&r).bps, Some(8_000_000));
    }

    #[test]
    fn bad_rules_are_refused_with_reasons() {
        let drop_with_rate = RuleSpec { pps: Some(5), ..RuleSpec::simple(ActionName::Drop) };
        assert_eq!(drop_with_rate.resolve(), Err(RuleError::RateOnNonLimit("pps")));
        assert_eq!(RuleSpec::simple(ActionName::Limit).resolve(), Err(RuleError::NoRate));
        assert_eq!(RuleSpec::limit(0, Some(4)).resolve(), Err(RuleError::BpsTooLow(4)));
        assert!(RuleSpec::limit(u64::MAX, None).resolve().is_err());
        let tiny_burst = RuleSpec { burst_bytes: Some(100), ..RuleSpec::limit(0, Some(8000)) };
        assert!(tiny_burst.resolve().is_err());
    }

    #[test]
    fn default_profile_covers_the_issue_list() {
        let p = builtin_default();
        assert_eq!(p.len(), 19);
        assert_eq!(p["memcached"].action, ActionName::Drop);
        assert_eq!(p["ntp"].action, ActionName::Limit);
        for r in p.values() {
            r.resolve().unwrap();
        }
    }

    #[test]
    fn lenient_form_in_toml() {
        #[derive(Deserialize)]
        struct T {
            p: BTreeMap<String, LenientRuleSpec>,
        }
        let t: T = toml::from_str("[p]\nmemcached = \"drop\"\nntp = { action = \"limit\", pps = 10 }").unwrap();
        assert_eq!(t.p["memcached"].0.action, ActionName::Drop);
        assert_eq!(t.p["ntp"].0.pps, Some(10));
        assert!(toml::from_str::<T>("[p]\nntp = \"throttle\"").is_err());
    }
}
