//! The records the store keeps: policies, allowlist entries and the rule sets
//! policies share; and their timestamps' format (RFC 3339, whole seconds).

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hasher,
    sync::Arc,
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{alerts::AlertSource, dataplane::rules::Mode, profiles::RuleSpec};

pub type RuleSet = BTreeMap<String, RuleSpec>;

/// A policy as the API shows it and the journal stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecord {
    pub id: String,
    pub victim: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The resolved rules, by vector name. Shared between the many policies
    /// that have the same rules (alerts make them all from one profile).
    pub rules: Arc<RuleSet>,
    pub mode: Mode,
    /// Wall-clock expiry; None = never.
    #[serde(with = "rfc3339_opt", default)]
    pub expires_at: Option<SystemTime>,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub updated_at: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Who made it: "api", or the alert source ("fastnetmon_script", ...).
    pub source: Origin,
}

#[cfg(test)]
impl PolicyRecord {
    /// A record for the store's unit tests: no rules, enforcing, never
    /// expiring, made by the API at `t`; change fields with `..`.
    pub(crate) fn for_test(id: &str, victim: &str, t: SystemTime) -> Self {
        PolicyRecord {
            id: id.into(),
            victim: victim.parse().unwrap(),
            profile: None,
            rules: Default::default(),
            mode: Mode::Enforce,
            expires_at: None,
            created_at: t,
            updated_at: t,
            comment: None,
            source: Origin::Api,
        }
    }
}

/// Who made a policy: the API, an alert (which an unban may then remove), or
/// ampguard's own detector. Written as the string it always was: `"api"`,
/// the alert source's label (`"fastnetmon_script"`, `"fastnetmon_json"`,
/// `"generic"`), or `"detector"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Origin {
    Api,
    Alert(AlertSource),
    /// Built-in detection (`[detection]`); counted as an alert's (its quota and budget).
    Detector,
    /// A name this version does not know (a file edited by hand or written by
    /// a later version): kept as written, and counted as an alert's, as any
    /// source but "api" always was.
    Other(String),
    /// A Flowspec route from this BGP peer ("local": the speaker's own RIB),
    /// written "flowspec:192.0.2.1". Held to the alerts' limits.
    Flowspec {
        peer: String,
    },
}

impl Origin {
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Origin::Api => "api".into(),
            Origin::Alert(s) => s.as_str().into(),
            Origin::Detector => "detector".into(),
            Origin::Other(s) => s.as_str().into(),
            Origin::Flowspec { peer } => format!("flowspec:{peer}").into(),
        }
    }

    /// What an alert's unban may remove: anything but the API's and a
    /// Flowspec route's (which goes only with its route).
    pub fn is_alerts_own(&self) -> bool {
        self.is_alert() && !matches!(self, Origin::Flowspec { .. })
    }

    /// Made by an alert (anything but the API).
    pub fn is_alert(&self) -> bool {
        !matches!(self, Origin::Api)
    }
}

impl From<String> for Origin {
    fn from(s: String) -> Self {
        match s.as_str() {
            "api" => Origin::Api,
            "detector" => Origin::Detector,
            label if label.starts_with("flowspec:") => Origin::Flowspec { peer: label["flowspec:".len()..].to_string() },
            label => AlertSource::from_label(label).map_or(Origin::Other(s), Origin::Alert),
        }
    }
}

impl From<Origin> for String {
    fn from(o: Origin) -> String {
        match o {
            Origin::Other(s) => s,
            o => o.as_str().into_owned(),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRecord {
    pub id: String,
    pub prefix: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
}

/// Distinct rule sets, found by a hash of their content: policies with equal
/// rules hold one map (100,000 policies from one profile hold one map, not
/// 100,000), and finding a set costs the same whatever the number of distinct
/// sets (a linear search was quadratic in them).
#[derive(Clone, Debug, Default)]
pub(crate) struct RuleSets {
    by_hash: HashMap<u64, Vec<Arc<RuleSet>>>,
    len: usize,
    /// `len` after the last `prune`: the next one is due when it has doubled.
    pruned_at: usize,
}

impl RuleSets {
    /// The set equal to `rules` (or `rules` itself, added).
    pub(crate) fn share(&mut self, rules: &Arc<RuleSet>) -> Arc<RuleSet> {
        let bucket = self.by_hash.entry(content_hash(rules)).or_default();
        if let Some(s) = bucket.iter().find(|s| Arc::ptr_eq(s, rules) || ***s == **rules) {
            return s.clone();
        }
        bucket.push(rules.clone());
        self.len += 1;
        rules.clone()
    }

    /// `share`, then drop the sets no policy holds any more (only this table
    /// does). The sweep runs when the table has doubled since the last one,
    /// so that it costs O(1) a call on average and the table stays within
    /// twice the sets in use.
    pub(crate) fn share_and_prune(&mut self, rules: &Arc<RuleSet>) -> Arc<RuleSet> {
        let shared = self.share(rules);
        if self.len >= 2 * self.pruned_at.max(16) {
            self.prune();
        }
        shared
    }

    /// Drop every set only this table holds.
    pub(crate) fn prune(&mut self) {
        self.by_hash.retain(|_, bucket| {
            bucket.retain(|s| Arc::strong_count(s) > 1);
            !bucket.is_empty()
        });
        self.len = self.by_hash.values().map(Vec::len).sum();
        self.pruned_at = self.len;
    }

    /// Distinct sets held (some perhaps no longer used, until the next prune):
    /// for the tests (`share_and_prune` reads the field itself).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// A hash of a rule set's content: equal sets (a `BTreeMap`, so in one
/// order) write the same JSON, so they hash the same.
pub(crate) fn content_hash(rules: &RuleSet) -> u64 {
    struct HashWriter<H: Hasher>(H);
    impl<H: Hasher> std::io::Write for HashWriter<H> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(std::collections::hash_map::DefaultHasher::new());
    serde_json::to_writer(&mut w, rules).expect("a rule set serializes");
    w.0.finish()
}

pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Last second RFC 3339 can write (9999-12-31T23:59:59Z).
    const LAST: u64 = 253_402_300_799;

    /// An error, not a panic, for a time RFC 3339 cannot write (before 1970
    /// or after 9999; humantime's Display fails there): the caller refuses
    /// the change rather than losing the process.
    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) if d.as_secs() <= LAST => s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string()),
            _ => Err(serde::ser::Error::custom("a time outside 1970..=9999 cannot be written as an RFC 3339 timestamp")),
        }
    }

    /// Whole seconds, the file's resolution: a fraction written by hand is
    /// dropped on reading, so a save writes back exactly what was read.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)?;
        Ok(match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => std::time::UNIX_EPOCH + std::time::Duration::from_secs(since.as_secs()),
            Err(_) => t,
        })
    }
}

pub(crate) mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::rfc3339::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&s)).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::rules::Verb;

    #[test]
    fn origin_is_written_as_the_string_it_was() {
        for (o, text) in [
            (Origin::Api, "api"),
            (Origin::Alert(AlertSource::FastnetmonScript), "fastnetmon_script"),
            (Origin::Alert(AlertSource::FastnetmonJson), "fastnetmon_json"),
            (Origin::Alert(AlertSource::Generic), "generic"),
            (Origin::Detector, "detector"),
            (Origin::Other("noc-script".into()), "noc-script"),
        ] {
            assert_eq!(serde_json::to_value(&o).unwrap(), serde_json::json!(text));
            assert_eq!(serde_json::from_value::<Origin>(serde_json::json!(text)).unwrap(), o);
            assert_eq!(o.is_alert(), text != "api", "{text}");
        }
        assert!(serde_json::from_value::<Origin>(serde_json::json!(1)).is_err(), "a string, as before");
    }

    fn set(pairs: &[(&str, Verb)]) -> Arc<RuleSet> {
        Arc::new(pairs.iter().map(|(v, a)| (v.to_string(), RuleSpec::simple(*a))).collect())
    }

    #[test]
    fn rule_sets_share_equal_content_and_drop_unused_sets() {
        let mut sets = RuleSets::default();
        let a = sets.share(&set(&[("ntp", Verb::Drop), ("dns", Verb::Pass)]));
        let b = sets.share(&set(&[("dns", Verb::Pass), ("ntp", Verb::Drop)]));
        assert!(Arc::ptr_eq(&a, &b), "equal content, one map");
        let c = sets.share(&set(&[("ntp", Verb::Pass)]));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(sets.len(), 2);
        assert_eq!(content_hash(&a), content_hash(&b));
        drop(c);
        sets.prune();
        assert_eq!(sets.len(), 1, "the set no one holds is dropped");
        // Many distinct sets: each found by its hash; the unused ones pruned as the table grows.
        let held: Vec<_> = (0..5000u64)
            .map(|n| {
                let s = Arc::new(RuleSet::from([("ntp".to_string(), RuleSpec { pps: Some(n + 1), ..RuleSpec::simple(Verb::Limit) })]));
                sets.share_and_prune(&s)
            })
            .collect();
        assert!(sets.len() >= 5000 && sets.len() <= 5001, "{}", sets.len());
        for s in &held {
            assert!(Arc::ptr_eq(&sets.share(&Arc::new((**s).clone())), s));
        }
        drop(held);
        for n in 0..20_000u64 {
            sets.share_and_prune(&Arc::new(RuleSet::from([(
                "dns".to_string(),
                RuleSpec { pps: Some(n + 1), ..RuleSpec::simple(Verb::Limit) },
            )])));
        }
        assert!(sets.len() <= 2 * 16 + 1, "unused sets are dropped as it goes: {}", sets.len());
    }
}
