//! Rules as operators write them (API JSON, config TOML) and named profiles.
//!
//! A rule is `{"action": "pass" | "drop" | "limit", "pps": N, "bps": N,
//! "burst": N, "burst_bytes": N}`; in TOML a bare `"drop"` also works.
//! `bps` is bits per second (network convention); the data plane counts bytes.

use std::{collections::BTreeMap, fmt};

use serde::{de, Deserialize, Deserializer, Serialize};

use crate::dataplane::rules::{CondRule, Conditions, Limit, Rule, Verb};

/// A rule as written. Unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub action: Verb,
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
    /// Condition: the vector's reflection signature matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<bool>,
    /// Condition: UDP payload of at least this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_bytes: Option<u16>,
    /// Condition: UDP payload of at most this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u16>,
    /// With conditions: what to do when they do not hold (default pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otherwise: Option<Verb>,
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
                let action = Verb::deserialize(de::value::StrDeserializer::<E>::new(s))?;
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
    #[error("min_bytes {0} is above max_bytes {1}")]
    SizeRange(u16, u16),
    #[error("\"otherwise\" needs a condition (signature, min_bytes or max_bytes)")]
    OtherwiseWithoutCondition,
}

impl RuleSpec {
    pub const fn simple(action: Verb) -> Self {
        Self {
            action,
            pps: None,
            bps: None,
            burst: None,
            burst_bytes: None,
            signature: None,
            min_bytes: None,
            max_bytes: None,
            otherwise: None,
        }
    }

    pub fn limit(pps: u64, bps: Option<u64>) -> Self {
        Self { pps: Some(pps), bps, ..Self::simple(Verb::Limit) }
    }

    /// "`action` if the signature matches, else `otherwise`".
    pub fn on_signature(action: Verb, otherwise: Verb) -> Self {
        Self { signature: Some(true), otherwise: Some(otherwise), ..Self::simple(action) }
    }

    fn conditional(&self) -> bool {
        self.signature == Some(true) || self.min_bytes.is_some() || self.max_bytes.is_some()
    }

    /// The data-plane rule, with defaults filled in and every bound checked.
    /// (Whether the vector has a signature is checked by the store, which
    /// knows the vector.)
    pub fn resolve(&self) -> Result<Rule, RuleError> {
        if !self.conditional() {
            if self.otherwise.is_some() {
                return Err(RuleError::OtherwiseWithoutCondition);
            }
            return self.resolve_plain(self.action);
        }
        if let (Some(lo), Some(hi)) = (self.min_bytes, self.max_bytes) {
            if lo > hi {
                return Err(RuleError::SizeRange(lo, hi));
            }
        }
        let otherwise = self.otherwise.unwrap_or(Verb::Pass);
        let limits = self.action == Verb::Limit || otherwise == Verb::Limit;
        let limit = match self.resolve_plain(if limits { Verb::Limit } else { Verb::Pass })? {
            Rule::Limit(l) => Some(l),
            _ => None,
        };
        Ok(Rule::Cond(CondRule {
            when: Conditions { signature: self.signature == Some(true), min_bytes: self.min_bytes, max_bytes: self.max_bytes },
            on_match: self.action,
            otherwise,
            limit,
        }))
    }

    fn resolve_plain(&self, action: Verb) -> Result<Rule, RuleError> {
        match action {
            Verb::Pass | Verb::Drop => {
                for (name, v) in [("pps", self.pps), ("bps", self.bps), ("burst", self.burst), ("burst_bytes", self.burst_bytes)] {
                    if v.is_some() {
                        return Err(RuleError::RateOnNonLimit(name));
                    }
                }
                Ok(if action == Verb::Pass { Rule::Pass } else { Rule::Drop })
            }
            Verb::Limit => {
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
            Rule::Pass => Self::simple(Verb::Pass),
            Rule::Drop => Self::simple(Verb::Drop),
            Rule::Limit(l) => Self::with_limit(Verb::Limit, l),
            Rule::Cond(c) => {
                let base = match &c.limit {
                    Some(l) => Self::with_limit(c.on_match, l),
                    None => Self::simple(c.on_match),
                };
                Self {
                    signature: c.when.signature.then_some(true),
                    min_bytes: c.when.min_bytes,
                    max_bytes: c.when.max_bytes,
                    otherwise: Some(c.otherwise),
                    ..base
                }
            }
        }
    }

    fn with_limit(action: Verb, l: &Limit) -> Self {
        Self {
            pps: (l.pps != 0).then_some(l.pps),
            bps: (l.bytes_per_sec != 0).then_some(l.bytes_per_sec * 8),
            burst: (l.pps != 0).then_some(l.burst_packets),
            burst_bytes: (l.bytes_per_sec != 0).then_some(l.burst_bytes),
            ..Self::simple(action)
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
    for v in
        ["memcached", "chargen", "qotd", "ssdp", "cldap", "wsd", "ard", "ubiquiti", "dvr", "netbios", "portmap", "coap", "mssql", "tftp"]
    {
        p.insert(v.into(), RuleSpec::simple(Verb::Drop));
    }
    // DNS, NTP, SNMP: drop what carries a reflection signature (large or ANY
    // DNS answers, NTP mode 6/7, large SNMP GetResponses), rate-limit the rest
    // so the victim's own lookups, clock sync and polling keep working. Rates
    // per victim: generous for one host's own traffic, small against a flood.
    let sig_else_limit = |pps, bps| RuleSpec { signature: Some(true), otherwise: Some(Verb::Limit), ..RuleSpec::limit(pps, Some(bps)) };
    let mut p_drop = |name: &str, r: RuleSpec| {
        p.insert(name.into(), RuleSpec { action: Verb::Drop, ..r });
    };
    p_drop("dns", sig_else_limit(2_000, 20_000_000));
    p_drop("ntp", sig_else_limit(100, 1_000_000));
    p_drop("snmp", RuleSpec { min_bytes: Some(512), ..sig_else_limit(500, 4_000_000) });
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
        let drop_with_rate = RuleSpec { pps: Some(5), ..RuleSpec::simple(Verb::Drop) };
        assert_eq!(drop_with_rate.resolve(), Err(RuleError::RateOnNonLimit("pps")));
        assert_eq!(RuleSpec::simple(Verb::Limit).resolve(), Err(RuleError::NoRate));
        assert_eq!(RuleSpec::limit(0, Some(4)).resolve(), Err(RuleError::BpsTooLow(4)));
        assert!(RuleSpec::limit(u64::MAX, None).resolve().is_err());
        let tiny_burst = RuleSpec { burst_bytes: Some(100), ..RuleSpec::limit(0, Some(8000)) };
        assert!(tiny_burst.resolve().is_err());
    }

    #[test]
    fn default_profile_covers_the_issue_list() {
        let p = builtin_default();
        assert_eq!(p.len(), 19);
        assert_eq!(p["memcached"].action, Verb::Drop);
        assert_eq!((p["ntp"].action, p["ntp"].signature, p["ntp"].otherwise), (Verb::Drop, Some(true), Some(Verb::Limit)));
        assert_eq!(p["snmp"].min_bytes, Some(512));
        for r in p.values() {
            r.resolve().unwrap();
        }
    }

    #[test]
    fn conditional_rules_round_trip_and_validate() {
        let r = RuleSpec::on_signature(Verb::Drop, Verb::Limit);
        assert_eq!(r.resolve(), Err(RuleError::NoRate), "a limiting branch needs a rate");
        let r = RuleSpec { pps: Some(100), ..r };
        let rule = r.resolve().unwrap();
        let Rule::Cond(c) = rule else { panic!("{rule:?}") };
        assert_eq!((c.on_match, c.otherwise, c.limit.map(|l| l.pps)), (Verb::Drop, Verb::Limit, Some(100)));
        assert_eq!(RuleSpec::from_rule(&rule).resolve().unwrap(), rule);
        let sized = RuleSpec { min_bytes: Some(600), max_bytes: Some(500), ..RuleSpec::simple(Verb::Drop) };
        assert_eq!(sized.resolve(), Err(RuleError::SizeRange(600, 500)));
        let bare = RuleSpec { otherwise: Some(Verb::Pass), ..RuleSpec::simple(Verb::Drop) };
        assert_eq!(bare.resolve(), Err(RuleError::OtherwiseWithoutCondition));
        let big_only = RuleSpec { min_bytes: Some(1000), ..RuleSpec::simple(Verb::Drop) };
        assert!(matches!(big_only.resolve().unwrap(), Rule::Cond(CondRule { otherwise: Verb::Pass, limit: None, .. })));
    }

    #[test]
    fn verbs_keep_their_wire_names() {
        for (v, name) in [(Verb::Pass, "pass"), (Verb::Drop, "drop"), (Verb::Limit, "limit")] {
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(name));
            assert_eq!(serde_json::from_value::<Verb>(serde_json::json!(name)).unwrap(), v);
        }
        let spec = RuleSpec { pps: Some(10), ..RuleSpec::on_signature(Verb::Drop, Verb::Limit) };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json, serde_json::json!({"action": "drop", "pps": 10, "signature": true, "otherwise": "limit"}));
        assert_eq!(serde_json::from_value::<RuleSpec>(json).unwrap(), spec);
        assert!(serde_json::from_value::<Verb>(serde_json::json!("Drop")).is_err(), "lowercase only");
    }

    #[test]
    fn lenient_form_in_toml() {
        #[derive(Deserialize)]
        struct T {
            p: BTreeMap<String, LenientRuleSpec>,
        }
        let t: T = toml::from_str("[p]\nmemcached = \"drop\"\nntp = { action = \"limit\", pps = 10 }").unwrap();
        assert_eq!(t.p["memcached"].0.action, Verb::Drop);
        assert_eq!(t.p["ntp"].0.pps, Some(10));
        assert!(toml::from_str::<T>("[p]\nntp = \"throttle\"").is_err());
    }
}
