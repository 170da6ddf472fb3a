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
    collections::{HashMap, HashSet},
    io::Write,
    sync::Arc,
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    record::{content_hash, rfc3339, rfc3339_opt, AllowRecord, Origin, PolicyRecord, RuleSet, RuleSets},
    table::{Clash, PolicyTable},
};
use crate::dataplane::rules::Mode;

/// The snapshot format written; version 1 is still read.
pub(crate) const VERSION: u32 = 2;
const JOURNAL_VERSION: u32 = 1;

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
pub(crate) enum Change {
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

/// A journal's first line: it continues snapshot `base`.
pub(crate) fn journal_header(base: u64) -> Vec<u8> {
    let mut header = serde_json::to_vec(&JournalHeader { journal: JOURNAL_VERSION, base }).expect("serializes");
    header.push(b'\n');
    header
}

/// One journal line, newline included (made under the store's lock, written
/// by the persister). An error (a value the format cannot hold) changes nothing.
pub(crate) fn journal_line(seq: u64, change: Change) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(&JournalLine { seq, change })?;
    line.push(b'\n');
    Ok(line)
}

/// Stream a snapshot (version 2) to `w`.
pub(crate) fn write_snapshot<'a, W: Write>(
    w: &mut W,
    seq: u64,
    next_id: u64,
    policies: impl Iterator<Item = &'a Arc<PolicyRecord>> + Clone,
    allowlist: &[AllowRecord],
) -> std::io::Result<()> {
    // Number the distinct rule sets (shared Arcs: by address first, then by content hash).
    let mut index: HashMap<*const RuleSet, usize> = HashMap::new();
    let mut sets: Vec<&RuleSet> = Vec::new();
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    for p in policies.clone() {
        index.entry(Arc::as_ptr(&p.rules)).or_insert_with(|| {
            let bucket = by_hash.entry(content_hash(&p.rules)).or_default();
            bucket.iter().copied().find(|&i| *sets[i] == *p.rules).unwrap_or_else(|| {
                sets.push(&p.rules);
                bucket.push(sets.len() - 1);
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
    source: Origin,
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

/// `parse`, and the version the snapshot was written in.
pub(crate) fn parse_versioned(bytes: &[u8]) -> Result<(State, u32), ParseError> {
    let bad = |e: serde_json::Error| ParseError::Bad(e.to_string());
    let version = serde_json::from_slice::<VersionOnly>(bytes).map_err(bad)?.version;
    let (seq, next_id, records, allowlist) = match version {
        1 => {
            let s: SnapshotV1 = serde_json::from_slice(bytes).map_err(bad)?;
            // Share identical rule sets, as the store does.
            let mut sets = RuleSets::default();
            let records = s
                .policies
                .into_iter()
                .map(|mut p| {
                    p.rules = sets.share(&p.rules);
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
    let mut sets = RuleSets::default();
    for p in state.policies.iter() {
        sets.share(&p.rules);
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
                let shared = sets.share(&p.rules);
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

/// The bytes of a snapshot of `state` (tests and fuzzing; the store streams to the file).
pub fn encode(state: &State) -> Vec<u8> {
    let mut out = Vec::new();
    write_snapshot(&mut out, state.seq, state.next_id, state.policies.iter(), &state.allowlist).expect("writing to memory");
    out
}

/// Records for the tests of the codec and of the files.
#[cfg(test)]
pub(super) mod fixtures {
    use super::*;
    use crate::profiles::RuleSpec;

    pub fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    pub fn policy(id: &str, victim: &str, rules: &Arc<RuleSet>) -> Arc<PolicyRecord> {
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
            source: Origin::Api,
        })
    }

    pub fn drop_memcached() -> Arc<RuleSet> {
        Arc::new([("memcached".to_string(), RuleSpec::simple(crate::dataplane::rules::Verb::Drop))].into())
    }

    pub fn sample() -> State {
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
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

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
}
