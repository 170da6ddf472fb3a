//! The state file: every policy and allowlist entry, written atomically
//! (temporary file, fsync, rename, fsync of the directory) after each change.
//! The previous good version is kept as `state.json.bak`. A file that cannot
//! be read is reported with what to do, and never replaced silently.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{dataplane::rules::Mode, profiles::RuleSpec};

pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecord {
    pub id: String,
    pub victim: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The resolved rules, by vector name. Shared between the many policies
    /// that have the same rules (alerts make them all from one profile).
    pub rules: std::sync::Arc<std::collections::BTreeMap<String, RuleSpec>>,
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
    pub source: String,
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub next_id: u64,
    pub policies: Vec<PolicyRecord>,
    pub allowlist: Vec<AllowRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path} is corrupt ({reason}). ampguard will not start from it and will not overwrite it; the data plane keeps enforcing what it had. Inspect it, then either fix it, restore the previous version ({backup}), or move it away to start empty")]
    Corrupt { path: PathBuf, backup: PathBuf, reason: String },
    #[error("state file {path} has version {found}; this ampguard reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot read state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write state file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join("state.json") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn backup_path(&self) -> PathBuf {
        self.path.with_extension("json.bak")
    }

    /// The saved state, or an empty one when there is no file yet.
    pub fn load(&self) -> Result<State, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State { version: VERSION, next_id: 1, ..Default::default() })
            }
            Err(source) => return Err(StateError::Read { path: self.path.clone(), source }),
        };
        let state = parse(&bytes).map_err(|reason| StateError::Corrupt {
            path: self.path.clone(),
            backup: self.backup_path(),
            reason,
        })?;
        if state.version != VERSION {
            return Err(StateError::Version { path: self.path.clone(), found: state.version });
        }
        Ok(state)
    }

    /// Write atomically; the file replaced becomes the backup.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let err = |source| StateError::Write { path: self.path.clone(), source };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("json.tmp");
        // Compact: with many policies the file is large and written often (`jq .` reads it).
        let body = serde_json::to_vec(state).expect("state serializes");
        {
            let mut f = File::create(&tmp).map_err(err)?;
            f.write_all(&body).map_err(err)?;
            f.write_all(b"\n").map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        if self.path.exists() {
            // Keep the last good file: a hard link, so the swap below is still atomic.
            let _ = fs::remove_file(self.backup_path());
            fs::hard_link(&self.path, self.backup_path()).map_err(err)?;
        }
        fs::rename(&tmp, &self.path).map_err(err)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }
}

/// Parse and check a state file's content (also the fuzzing entry point).
pub fn parse(bytes: &[u8]) -> Result<State, String> {
    let state: State = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut ids = std::collections::HashSet::new();
    let mut victims = std::collections::HashSet::new();
    for p in &state.policies {
        if !ids.insert(p.id.as_str()) {
            return Err(format!("policy id {} appears twice", p.id));
        }
        if !victims.insert(p.victim) {
            return Err(format!("victim {} has two policies", p.victim));
        }
        if p.victim != p.victim.trunc() {
            return Err(format!("victim {} has host bits set", p.victim));
        }
    }
    for a in &state.allowlist {
        if !ids.insert(a.id.as_str()) {
            return Err(format!("id {} appears twice", a.id));
        }
    }
    Ok(state)
}

pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
    }

    /// Whole seconds, the file's resolution: a fraction written by hand is
    /// dropped on reading, so a save writes back exactly what was read.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)?;
        Ok(match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => std::time::UNIX_EPOCH + std::time::Duration::from_secs(since.as_secs()),
            Err(_) => t,
        })
    }
}

pub mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::rfc3339::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&s)).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ampguard-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn sample() -> State {
        let now = humantime::parse_rfc3339("2026-11-25T17:00:00Z").unwrap();
        State {
            version: VERSION,
            next_id: 3,
            policies: vec![PolicyRecord {
                id: "p-1".into(),
                victim: "203.0.113.10/32".parse().unwrap(),
                profile: Some("default".into()),
                rules: std::sync::Arc::new([("memcached".to_string(), RuleSpec::simple(crate::profiles::ActionName::Drop))].into()),
                mode: Mode::Enforce,
                expires_at: Some(now),
                created_at: now,
                updated_at: now,
                comment: None,
                source: "api".into(),
            }],
            allowlist: vec![AllowRecord { id: "a-2".into(), prefix: "192.0.2.53/32".parse().unwrap(), comment: None, created_at: now }],
        }
    }

    #[test]
    fn round_trip_and_backup() {
        let d = tmpdir("rt");
        let f = StateFile::new(&d);
        assert_eq!(f.load().unwrap().policies.len(), 0, "no file: empty state");
        let mut s = sample();
        f.save(&s).unwrap();
        assert_eq!(f.load().unwrap(), s);
        s.next_id = 9;
        f.save(&s).unwrap();
        assert_eq!(f.load().unwrap().next_id, 9);
        assert_eq!(parse(&fs::read(f.backup_path()).unwrap()).unwrap().next_id, 3, "backup is the previous version");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_file_is_reported_and_kept() {
        let d = tmpdir("corrupt");
        let f = StateFile::new(&d);
        f.save(&sample()).unwrap();
        let good = fs::read(f.path()).unwrap();
        fs::write(f.path(), &good[..good.len() / 2]).unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("state.json.bak"), "{e}");
        assert_eq!(fs::read(f.path()).unwrap(), &good[..good.len() / 2], "left untouched");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn fractional_seconds_are_read_as_whole_seconds() {
        let mut s = sample();
        s.policies[0].expires_at = None;
        let text = serde_json::to_string(&s).unwrap().replace("2026-11-25T17:00:00Z", "2026-11-25T17:00:00.5Z");
        let back = parse(text.as_bytes()).unwrap();
        assert_eq!(back, s, "the fraction is dropped");
        assert_eq!(parse(&serde_json::to_vec(&back).unwrap()).unwrap(), back);
    }

    #[test]
    fn inconsistent_content_is_corrupt() {
        let mut s = sample();
        s.policies.push(s.policies[0].clone());
        assert!(parse(&serde_json::to_vec(&s).unwrap()).unwrap_err().contains("twice"));
        assert!(parse(b"{\"version\":1}").is_err());
    }
}
