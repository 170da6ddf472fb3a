//! The state on disk: a snapshot (`state.json`) and a journal of every change
//! made since (`state.journal`), both in the state directory.
//!
//! Why a journal: saving the whole state after each change cost time and
//! memory in proportion to the table (110 MB of JSON per save at 100,000
//! policies: under 2 changes a second). Now a change appends one line, and one
//! `fdatasync` covers every line appended meanwhile (group commit, see
//! `persist.rs`), whatever the table's size. The snapshot is rewritten when the
//! journal has grown past it (compaction) and at each start.
//!
//! Snapshot, version 2: `{"version": 2, "seq": S, "next_id": N, "rule_sets":
//! [{vector: rule, ...}, ...], "policies": [{..., "rules": index}, ...],
//! "allowlist": [...]}`. Policies made from one profile share a rule set, so a
//! record is ~250 bytes instead of ~1.1 KB. Written atomically: temporary
//! file, fsync, the previous snapshot hard-linked as `state.json.bak`, rename,
//! fsync of the directory. Version 1 (rules inline in each record, no journal)
//! is read, and rewritten as version 2 at that start.
//!
//! Journal: a first line `{"journal": 1, "base": S}` (it continues the snapshot
//! of seq S), then one change a line: `{"seq": n, "put_policy": {record}}`,
//! `{"seq": n, "del_policy": "p-4"}`, `{"seq": n, "put_allow": {record}}`,
//! `{"seq": n, "del_allow": "a-2"}`. Lines with a seq the snapshot already
//! holds are skipped (a crash between writing a snapshot and emptying the
//! journal leaves them). A last line without its newline is a write that a
//! crash cut short and was never acknowledged: it is dropped. Anything else
//! that does not read is corruption: ampguard refuses to start and overwrites
//! nothing.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::table::{Clash, PolicyTable};
use crate::{dataplane::rules::Mode, profiles::RuleSpec};

/// The snapshot format written; version 1 is still read.
pub const VERSION: u32 = 2;
const JOURNAL_VERSION: u32 = 1;

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

/// Everything the files hold, as loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The last change it holds (the journal's seq numbers go on from here).
    pub seq: u64,
    pub next_id: u64,
    pub policies: PolicyTable,
    pub allowlist: Vec<AllowRecord>,
}

impl State {
    pub fn empty() -> Self {
        Self { seq: 0, next_id: 1, ..Default::default() }
    }
}

/// One change, as a journal line says it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    PutPolicy(Arc<PolicyRecord>),
    DelPolicy(String),
    PutAllow(AllowRecord),
    DelAllow(String),
}

#[derive(Serialize, Deserialize)]
struct JournalLine {
    seq: u64,
    #[serde(flatten)]
    change: Change,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalHeader {
    journal: u32,
    base: u64,
}

/// One journal line, newline included (made under the store's lock, written
/// by the persister). An error (a value the format cannot hold) changes nothing.
pub fn journal_line(seq: u64, change: Change) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(&JournalLine { seq, change })?;
    line.push(b'\n');
    Ok(line)
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path} is corrupt ({reason}). ampguard will not start from it and will not overwrite it; the data plane keeps enforcing what it had. Inspect it, then either fix it, restore the previous version ({backup}), or move it away to start empty")]
    Corrupt { path: PathBuf, backup: PathBuf, reason: String },
    #[error("state file {path} has version {found}; this ampguard reads versions 1 and {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot read state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write state file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The files of one state directory. Only the store's persister writes them.
#[derive(Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join("state.json") }
    }

    /// The snapshot.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn backup_path(&self) -> PathBuf {
        self.path.with_extension("json.bak")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.path.with_extension("journal")
    }

    /// Bytes in the journal now (0 when there is none).
    pub fn journal_len(&self) -> u64 {
        fs::metadata(self.journal_path()).map(|m| m.len()).unwrap_or(0)
    }

    fn corrupt(&self, path: PathBuf, reason: String) -> StateError {
        StateError::Corrupt { path, backup: self.backup_path(), reason }
    }

    /// The snapshot with the journal replayed on it; an empty state when
    /// there is neither.
    pub fn load(&self) -> Result<State, StateError> {
        self.load_and_check().map(|(s, _)| s)
    }

    /// Also says whether the files want a new snapshot: none yet, an old
    /// version, or a journal with changes in it.
    pub fn load_and_check(&self) -> Result<(State, bool), StateError> {
        let mut stale = false;
        let mut state = match fs::read(&self.path) {
            Ok(bytes) => {
                let (state, version) = parse_versioned(&bytes).map_err(|e| match e {
                    ParseError::Version(found) => StateError::Version { path: self.path.clone(), found },
                    ParseError::Bad(reason) => self.corrupt(self.path.clone(), reason),
                })?;
                stale |= version != VERSION;
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                stale = true;
                State::empty()
            }
            Err(source) => return Err(StateError::Read { path: self.path.clone(), source }),
        };
        let jpath = self.journal_path();
        let before = state.seq;
        match fs::read(&jpath) {
            Ok(bytes) => replay(&mut state, &bytes).map_err(|reason| self.corrupt(jpath, reason))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => stale = true,
            Err(source) => return Err(StateError::Read { path: jpath, source }),
        }
        let changed = state.seq != before;
        Ok((state, stale || changed))
    }

    /// Write a snapshot atomically (the one replaced becomes the backup), then
    /// empty the journal: it continues from this snapshot. Returns the
    /// snapshot's size in bytes.
    pub fn save<'a>(
        &self,
        seq: u64,
        next_id: u64,
        policies: impl Iterator<Item = &'a Arc<PolicyRecord>> + Clone,
        allowlist: &[AllowRecord],
    ) -> Result<u64, StateError> {
        let err = |source| StateError::Write { path: self.path.clone(), source };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("json.tmp");
        let size = {
            let f = create_private(&tmp).map_err(err)?;
            let mut w = BufWriter::with_capacity(1 << 16, f);
            // Streamed, compact: no copy of the whole state in memory.
            write_snapshot(&mut w, seq, next_id, policies, allowlist).map_err(err)?;
            w.write_all(b"\n").map_err(err)?;
            let f = w.into_inner().map_err(|e| err(e.into_error()))?;
            f.sync_all().map_err(err)?;
            f.metadata().map_err(err)?.len()
        };
        if self.path.exists() {
            // Keep the last good snapshot: a hard link, so the swap below is still atomic.
            let _ = fs::remove_file(self.backup_path());
            fs::hard_link(&self.path, self.backup_path()).map_err(err)?;
        }
        fs::rename(&tmp, &self.path).map_err(err)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        self.reset_journal(seq)?;
        Ok(size)
    }

    /// Replace the journal by an empty one that continues snapshot `base`
    /// (written beside it and renamed over it, so a crash leaves one or the other).
    fn reset_journal(&self, base: u64) -> Result<(), StateError> {
        let path = self.journal_path();
        let err = |source| StateError::Write { path: path.clone(), source };
        let tmp = path.with_extension("journal.tmp");
        {
            let mut f = create_private(&tmp).map_err(err)?;
            let mut header = serde_json::to_vec(&JournalHeader { journal: JOURNAL_VERSION, base }).expect("serializes");
            header.push(b'\n');
            f.write_all(&header).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        fs::rename(&tmp, &path).map_err(err)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)
    }

    /// Append journal lines and make them durable (one `fdatasync`).
    pub fn append(&self, lines: &[u8]) -> Result<(), StateError> {
        let path = self.journal_path();
        let err = |source| StateError::Write { path: path.clone(), source };
        let mut f = OpenOptions::new().append(true).open(&path).map_err(err)?;
        f.write_all(lines).map_err(err)?;
        f.sync_data().map_err(err)
    }
}

/// A new file only root can read (0600): the state names every victim and
/// comment. Also set on a file a crash left behind, whose mode may differ.
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

fn write_snapshot<'a, W: Write>(
    w: &mut W,
    seq: u64,
    next_id: u64,
    policies: impl Iterator<Item = &'a Arc<PolicyRecord>> + Clone,
    allowlist: &[AllowRecord],
) -> std::io::Result<()> {
    // Number the distinct rule sets (shared Arcs: compared by address first).
    let mut index: HashMap<*const RuleSet, usize> = HashMap::new();
    let mut sets: Vec<&RuleSet> = Vec::new();
    for p in policies.clone() {
        index.entry(Arc::as_ptr(&p.rules)).or_insert_with(|| {
            sets.iter().position(|s| **s == *p.rules).unwrap_or_else(|| {
                sets.push(&p.rules);
                sets.len() - 1
            })
        });
    }
    write!(w, "{{\"version\":{VERSION},\"seq\":{seq},\"next_id\":{next_id},\"rule_sets\":")?;
    serde_json::to_writer(&mut *w, &sets)?;
    w.write_all(b",\"policies\":[")?;
    for (n, p) in policies.enumerate() {
        if n > 0 {
            w.write_all(b",")?;
        }
        serde_json::to_writer(&mut *w, &StoredPolicy::of(p, index[&Arc::as_ptr(&p.rules)]))?;
    }
    w.write_all(b"],\"allowlist\":")?;
    serde_json::to_writer(&mut *w, allowlist)?;
    w.write_all(b"}")
}

/// A snapshot's policy: the record with its rules by index into `rule_sets`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPolicy {
    id: String,
    victim: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
    rules: usize,
    mode: Mode,
    #[serde(with = "rfc3339_opt", default)]
    expires_at: Option<SystemTime>,
    #[serde(with = "rfc3339")]
    created_at: SystemTime,
    #[serde(with = "rfc3339")]
    updated_at: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    source: String,
}

impl StoredPolicy {
    fn of(p: &PolicyRecord, rules: usize) -> Self {
        Self {
            id: p.id.clone(),
            victim: p.victim,
            profile: p.profile.clone(),
            rules,
            mode: p.mode,
            expires_at: p.expires_at,
            created_at: p.created_at,
            updated_at: p.updated_at,
            comment: p.comment.clone(),
            source: p.source.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotV2 {
    #[allow(dead_code)]
    version: u32,
    seq: u64,
    next_id: u64,
    rule_sets: Vec<Arc<RuleSet>>,
    policies: Vec<StoredPolicy>,
    allowlist: Vec<AllowRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotV1 {
    #[allow(dead_code)]
    version: u32,
    next_id: u64,
    policies: Vec<PolicyRecord>,
    allowlist: Vec<AllowRecord>,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

#[derive(Debug)]
pub enum ParseError {
    Version(u32),
    Bad(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Version(v) => write!(f, "version {v} is not one this ampguard reads (1, {VERSION})"),
            ParseError::Bad(r) => f.write_str(r),
        }
    }
}

/// Parse and check a snapshot's content (also the fuzzing entry point).
pub fn parse(bytes: &[u8]) -> Result<State, ParseError> {
    parse_versioned(bytes).map(|(state, _)| state)
}

/// The rule set in `sets` equal to `rules` (or `rules` itself, added to
/// them): policies with equal rules hold one map. Used while reading the
/// files, and by the store for the policies it makes.
pub fn share_rules(sets: &mut Vec<Arc<RuleSet>>, rules: &Arc<RuleSet>) -> Arc<RuleSet> {
    if let Some(s) = sets.iter().find(|s| Arc::ptr_eq(s, rules) || ***s == **rules) {
        return s.clone();
    }
    sets.push(rules.clone());
    rules.clone()
}

/// `parse`, and the version the snapshot was written in.
fn parse_versioned(bytes: &[u8]) -> Result<(State, u32), ParseError> {
    let bad = |e: serde_json::Error| ParseError::Bad(e.to_string());
    let version = serde_json::from_slice::<VersionOnly>(bytes).map_err(bad)?.version;
    let (seq, next_id, records, allowlist) = match version {
        1 => {
            let s: SnapshotV1 = serde_json::from_slice(bytes).map_err(bad)?;
            // Share identical rule sets, as the store does.
            let mut sets: Vec<Arc<RuleSet>> = Vec::new();
            let records = s
                .policies
                .into_iter()
                .map(|mut p| {
                    p.rules = share_rules(&mut sets, &p.rules);
                    Arc::new(p)
                })
                .collect::<Vec<_>>();
            (0, s.next_id, records, s.allowlist)
        }
        VERSION => {
            let s: SnapshotV2 = serde_json::from_slice(bytes).map_err(bad)?;
            let mut records = Vec::with_capacity(s.policies.len());
            for p in s.policies {
                let rules = s.rule_sets.get(p.rules).ok_or_else(|| {
                    ParseError::Bad(format!("policy {} uses rule set {}, and there are {}", p.id, p.rules, s.rule_sets.len()))
                })?;
                records.push(Arc::new(PolicyRecord {
                    id: p.id,
                    victim: p.victim,
                    profile: p.profile,
                    rules: rules.clone(),
                    mode: p.mode,
                    expires_at: p.expires_at,
                    created_at: p.created_at,
                    updated_at: p.updated_at,
                    comment: p.comment,
                    source: p.source,
                }));
            }
            (s.seq, s.next_id, records, s.allowlist)
        }
        other => return Err(ParseError::Version(other)),
    };
    let mut state = State { seq, next_id, policies: PolicyTable::default(), allowlist };
    let mut ids = HashSet::new();
    for p in records {
        check_policy(&p).map_err(ParseError::Bad)?;
        if !ids.insert(p.id.clone()) {
            return Err(ParseError::Bad(format!("policy id {} appears twice", p.id)));
        }
        put(&mut state, p).map_err(ParseError::Bad)?;
    }
    for a in &state.allowlist {
        if !ids.insert(a.id.clone()) {
            return Err(ParseError::Bad(format!("id {} appears twice", a.id)));
        }
    }
    // New ids come from next_id: one at or below an id in use would be given
    // out again, and the new policy would hide the old one from the API while
    // its victim kept its rules in the data plane.
    if let Some((id, n)) = ids.iter().filter_map(|id| id_number(id).map(|n| (id, n))).max_by_key(|(_, n)| *n) {
        if n >= state.next_id {
            return Err(ParseError::Bad(format!(
                "next_id is {}, not above the id {id} in use, so a new policy would reuse an id; set \"next_id\" to {} or more",
                state.next_id,
                n.saturating_add(1)
            )));
        }
    }
    Ok((state, version))
}

fn check_policy(p: &PolicyRecord) -> Result<(), String> {
    if p.victim != p.victim.trunc() {
        return Err(format!("victim {} has host bits set", p.victim));
    }
    Ok(())
}

fn put(state: &mut State, p: Arc<PolicyRecord>) -> Result<(), String> {
    let id = p.id.clone();
    state.policies.put(p).map(|_| ()).map_err(|Clash::Victim(other)| format!("policy {id}'s victim also has policy {other}"))
}

/// Apply a journal's changes to the state it continues.
pub fn replay(state: &mut State, bytes: &[u8]) -> Result<(), String> {
    let mut lines = bytes.split_inclusive(|b| *b == b'\n');
    let Some(first) = lines.next() else { return Ok(()) };
    if !first.ends_with(b"\n") {
        return Ok(()); // a header a crash cut short: nothing was appended after it
    }
    let header: JournalHeader = serde_json::from_slice(first).map_err(|e| format!("journal header: {e}"))?;
    if header.journal != JOURNAL_VERSION {
        return Err(format!("journal version {} (this ampguard reads {JOURNAL_VERSION})", header.journal));
    }
    if header.base > state.seq {
        return Err(format!(
            "the journal continues snapshot {} but state.json is snapshot {}: changes in between are missing",
            header.base, state.seq
        ));
    }
    let mut ids: HashSet<String> =
        state.policies.iter().map(|p| p.id.clone()).chain(state.allowlist.iter().map(|a| a.id.clone())).collect();
    // Each line brings its own copy of a rule set; share them as they come, so
    // that thousands of copies are never alive (and fragmenting the heap) at once.
    let mut sets: Vec<Arc<RuleSet>> = Vec::new();
    for p in state.policies.iter() {
        share_rules(&mut sets, &p.rules);
    }
    for (n, line) in lines.enumerate() {
        let lineno = n + 2;
        if !line.ends_with(b"\n") {
            break; // cut short by a crash before its fdatasync: never acknowledged
        }
        let JournalLine { seq, change } = serde_json::from_slice(line).map_err(|e| format!("journal line {lineno}: {e}"))?;
        if seq <= state.seq {
            continue;
        }
        let at = |m: String| format!("journal line {lineno}: {m}");
        if seq != state.seq + 1 {
            return Err(at(format!("jumps from change {} to {seq}", state.seq)));
        }
        match change {
            Change::PutPolicy(mut p) => {
                check_policy(&p).map_err(at)?;
                let shared = share_rules(&mut sets, &p.rules);
                if !Arc::ptr_eq(&shared, &p.rules) {
                    Arc::make_mut(&mut p).rules = shared;
                }
                let known = state.policies.get(&p.id).is_some();
                if !known && !ids.insert(p.id.clone()) {
                    return Err(at(format!("id {} is already an allowlist entry", p.id)));
                }
                bump_next_id(state, &p.id);
                put(state, p).map_err(at)?;
            }
            Change::DelPolicy(id) => {
                state.policies.remove(&id).ok_or_else(|| at(format!("deletes policy {id}, which does not exist")))?;
                ids.remove(&id);
            }
            Change::PutAllow(a) => {
                if !ids.insert(a.id.clone()) {
                    return Err(at(format!("id {} appears twice", a.id)));
                }
                bump_next_id(state, &a.id);
                state.allowlist.push(a);
            }
            Change::DelAllow(id) => {
                let i = state
                    .allowlist
                    .iter()
                    .position(|a| a.id == id)
                    .ok_or_else(|| at(format!("deletes allowlist entry {id}, which does not exist")))?;
                state.allowlist.remove(i);
                ids.remove(&id);
            }
        }
        state.seq = seq;
    }
    Ok(())
}

/// The number of an id "<kind>-<n>".
fn id_number(id: &str) -> Option<u64> {
    id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok())
}

/// Ids are "<kind>-<n>" from one counter: the next one is above every id seen.
fn bump_next_id(state: &mut State, id: &str) {
    if let Some(n) = id_number(id) {
        state.next_id = state.next_id.max(n.saturating_add(1));
    }
}

pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Last second RFC 3339 can write (9999-12-31T23:59:59Z).
    const LAST: u64 = 253_402_300_799;

    /// An error, not a panic, for a time RFC 3339 cannot write (before 1970
    /// or after 9999; humantime's Display fails there): the caller refuses
    /// the change rather than losing the process.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) if d.as_secs() <= LAST => s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string()),
            _ => Err(serde::ser::Error::custom("a time outside 1970..=9999 cannot be written as an RFC 3339 timestamp")),
        }
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

/// The bytes of a snapshot of `state` (tests and fuzzing; the store streams to the file).
pub fn encode(state: &State) -> Vec<u8> {
    let mut out = Vec::new();
    write_snapshot(&mut out, state.seq, state.next_id, state.policies.iter(), &state.allowlist).expect("writing to memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ampguard-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn policy(id: &str, victim: &str, rules: &Arc<RuleSet>) -> Arc<PolicyRecord> {
        let now = at("2026-11-25T17:00:00Z");
        Arc::new(PolicyRecord {
            id: id.into(),
            victim: victim.parse().unwrap(),
            profile: Some("default".into()),
            rules: rules.clone(),
            mode: Mode::Enforce,
            expires_at: Some(now),
            created_at: now,
            updated_at: now,
            comment: None,
            source: "api".into(),
        })
    }

    fn drop_memcached() -> Arc<RuleSet> {
        Arc::new([("memcached".to_string(), RuleSpec::simple(crate::profiles::ActionName::Drop))].into())
    }

    fn sample() -> State {
        let rules = drop_memcached();
        let mut s = State { seq: 4, next_id: 4, ..Default::default() };
        s.policies.put(policy("p-1", "203.0.113.10/32", &rules)).unwrap();
        s.policies.put(policy("p-3", "2001:db8::10/128", &rules)).unwrap();
        s.allowlist.push(AllowRecord {
            id: "a-2".into(),
            prefix: "192.0.2.53/32".parse().unwrap(),
            comment: None,
            created_at: at("2026-11-25T17:00:00Z"),
        });
        s
    }

    fn save(f: &StateFile, s: &State) {
        f.save(s.seq, s.next_id, s.policies.iter(), &s.allowlist).unwrap();
    }

    #[test]
    fn snapshot_round_trip_shares_rule_sets_and_keeps_a_backup() {
        let d = tmpdir("rt");
        let f = StateFile::new(&d);
        assert_eq!(f.load().unwrap(), State::empty(), "no files: empty state");
        let mut s = sample();
        save(&f, &s);
        let back = f.load().unwrap();
        assert_eq!(back, s);
        let ps: Vec<_> = back.policies.iter().collect();
        assert!(Arc::ptr_eq(&ps[0].rules, &ps[1].rules), "one rule set in memory for both");
        let text = fs::read_to_string(f.path()).unwrap();
        assert_eq!(text.matches("memcached").count(), 1, "one rule set in the file: {text}");
        s.next_id = 9;
        save(&f, &s);
        assert_eq!(f.load().unwrap().next_id, 9);
        assert_eq!(parse(&fs::read(f.backup_path()).unwrap()).unwrap().next_id, 4, "backup is the previous snapshot");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn journal_replays_on_the_snapshot() {
        let d = tmpdir("journal");
        let f = StateFile::new(&d);
        let s = sample();
        save(&f, &s);
        let rules = drop_memcached();
        let mut lines = Vec::new();
        lines.extend(journal_line(5, Change::PutPolicy(policy("p-7", "198.51.100.0/24", &rules))).unwrap());
        lines.extend(journal_line(6, Change::DelPolicy("p-1".into())).unwrap());
        lines.extend(journal_line(7, Change::DelAllow("a-2".into())).unwrap());
        lines.extend(
            journal_line(
                8,
                Change::PutAllow(AllowRecord {
                    id: "a-8".into(),
                    prefix: "192.0.2.0/28".parse().unwrap(),
                    comment: None,
                    created_at: at("2026-11-25T17:00:00Z"),
                }),
            )
            .unwrap(),
        );
        f.append(&lines).unwrap();
        let back = f.load().unwrap();
        assert_eq!(back.seq, 8);
        assert_eq!(back.next_id, 9, "above every id seen");
        assert_eq!(back.policies.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p-3", "p-7"]);
        assert_eq!(back.allowlist.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["a-8"]);

        // Compaction: the snapshot holds everything, the journal starts again.
        save(&f, &back);
        assert!(f.journal_len() < 40, "journal is only its header again");
        assert_eq!(f.load().unwrap(), back);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_middle_line_is_corruption() {
        let d = tmpdir("torn");
        let f = StateFile::new(&d);
        save(&f, &sample());
        let good = journal_line(5, Change::DelPolicy("p-1".into())).unwrap();
        let torn = journal_line(6, Change::DelPolicy("p-3".into())).unwrap();
        f.append(&good).unwrap();
        f.append(&torn[..torn.len() - 3]).unwrap();
        let back = f.load().unwrap();
        assert_eq!((back.seq, back.policies.len()), (5, 1), "the cut line was never acknowledged");

        let mut j = fs::read(f.journal_path()).unwrap();
        j.extend_from_slice(b"\n");
        fs::write(f.journal_path(), &j).unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("state.journal") && e.contains("line 3"), "{e}");
        assert_eq!(fs::read(f.journal_path()).unwrap(), j, "left untouched");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn lines_the_snapshot_holds_are_skipped_and_a_gap_is_refused() {
        let d = tmpdir("gap");
        let f = StateFile::new(&d);
        let s = sample(); // seq 4
        save(&f, &s);
        // A crash after the snapshot's rename, before the journal was emptied:
        // the old journal still holds seq 3 and 4, which the snapshot has.
        let mut old = b"{\"journal\":1,\"base\":2}\n".to_vec();
        old.extend(journal_line(3, Change::DelPolicy("p-9".into())).unwrap());
        old.extend(journal_line(4, Change::DelPolicy("p-9".into())).unwrap());
        fs::write(f.journal_path(), &old).unwrap();
        assert_eq!(f.load().unwrap(), s);
        // A journal that continues a later snapshot than state.json (an old backup restored by hand).
        fs::write(f.journal_path(), b"{\"journal\":1,\"base\":40}\n").unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("continues snapshot 40"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_snapshot_is_reported_and_kept() {
        let d = tmpdir("corrupt");
        let f = StateFile::new(&d);
        save(&f, &sample());
        let good = fs::read(f.path()).unwrap();
        fs::write(f.path(), &good[..good.len() / 2]).unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("state.json.bak"), "{e}");
        assert_eq!(fs::read(f.path()).unwrap(), &good[..good.len() / 2], "left untouched");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn version_1_files_are_read() {
        let v1 = include_bytes!("../../../fuzz/corpus/state_file/daemon-state.json");
        let s = parse(v1).unwrap();
        assert_eq!(s.policies.len(), 2);
        assert_eq!(s.seq, 0);
        let again = parse(&encode(&s)).unwrap();
        assert_eq!(again, s, "rewritten as version 2, the same state");
        assert!(matches!(parse(b"{\"version\": 99}"), Err(ParseError::Version(99))));
    }

    #[test]
    fn the_committed_fuzz_seeds_read() {
        let v2 = parse(include_bytes!("../../../fuzz/corpus/state_file/snapshot-v2.json")).unwrap();
        let ps: Vec<_> = v2.policies.iter().collect();
        assert_eq!((ps.len(), v2.seq, v2.allowlist.len()), (3, 7, 1));
        assert!(Arc::ptr_eq(&ps[0].rules, &ps[2].rules) && !Arc::ptr_eq(&ps[0].rules, &ps[1].rules));
        let mut s = State::empty();
        replay(&mut s, include_bytes!("../../../fuzz/corpus/state_file/journal.jsonl")).unwrap();
        assert_eq!((s.seq, s.next_id, s.policies.len(), s.allowlist.len()), (4, 3, 0, 0));
    }

    #[test]
    fn fractional_seconds_are_read_as_whole_seconds() {
        let mut s = sample();
        let mut p = (**s.policies.get("p-1").unwrap()).clone();
        p.expires_at = None;
        s.policies.put(Arc::new(p)).unwrap();
        let text = String::from_utf8(encode(&s)).unwrap().replace("2026-11-25T17:00:00Z", "2026-11-25T17:00:00.5Z");
        let back = parse(text.as_bytes()).unwrap();
        assert_eq!(back, s, "the fraction is dropped");
        assert_eq!(parse(&encode(&back)).unwrap(), back);
    }

    #[test]
    fn inconsistent_content_is_corrupt() {
        let s = sample();
        let text = String::from_utf8(encode(&s)).unwrap();
        let dup = text.replace("\"id\":\"p-3\"", "\"id\":\"p-1\"");
        assert!(parse(dup.as_bytes()).unwrap_err().to_string().contains("twice"), "{dup}");
        let same_victim = text.replace("2001:db8::10/128", "203.0.113.10/32");
        assert!(parse(same_victim.as_bytes()).unwrap_err().to_string().contains("also has policy"));
        let bad_index = text.replace("\"rules\":0", "\"rules\":5");
        assert!(parse(bad_index.as_bytes()).unwrap_err().to_string().contains("rule set 5"));
        assert!(parse(b"{\"version\":2}").is_err());
    }

    #[test]
    fn state_files_are_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmpdir("modes");
        let f = StateFile::new(&dir);
        // A leftover temporary file from a crash, world-readable.
        fs::create_dir_all(&dir).unwrap();
        fs::write(f.path().with_extension("json.tmp"), b"x").unwrap();
        fs::set_permissions(f.path().with_extension("json.tmp"), fs::Permissions::from_mode(0o644)).unwrap();
        save(&f, &sample());
        save(&f, &sample());
        for p in [f.path().to_path_buf(), f.journal_path(), f.backup_path()] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    #[test]
    fn a_next_id_not_above_the_ids_in_use_is_corrupt() {
        let text = String::from_utf8(encode(&sample())).unwrap();
        for n in [1, 3] {
            let reuse = text.replace("\"next_id\":4", &format!("\"next_id\":{n}"));
            let e = parse(reuse.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("p-3") && e.contains("reuse") && e.contains("to 4 or more"), "next_id {n}: {e}");
        }
        // The allowlist's ids come from the same counter.
        let allow = text.replace("\"next_id\":4", "\"next_id\":2").replace("\"id\":\"p-3\"", "\"id\":\"p-0\"");
        assert!(parse(allow.as_bytes()).unwrap_err().to_string().contains("a-2"), "{allow}");
        // A state file refusing to load is reported as corrupt and kept.
        let dir = tmpdir("next-id");
        let f = StateFile::new(&dir);
        fs::create_dir_all(&dir).unwrap();
        let reuse = text.replace("\"next_id\":4", "\"next_id\":1");
        fs::write(f.path(), &reuse).unwrap();
        let e = f.load().unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }) && e.to_string().contains("next_id"), "{e}");
        assert_eq!(fs::read_to_string(f.path()).unwrap(), reuse, "kept as it was");
    }
}
