//! The policy store: validates every change, applies it to the data plane,
//! persists it, enforces TTLs, and turns ban/unban alerts into policies.
//!
//! Order of every change: validate -> data plane -> in-memory state and a
//! journal line; the state files follow by group commit (`persist.rs`): the
//! API answers a change only once its journal line is on disk, and one
//! `fdatasync` covers every change made while the previous one was written.

mod alerts;
pub(crate) mod bounds;
pub mod codec;
pub mod files;
mod flowspec;
pub(crate) mod persist;
pub mod record;
pub(crate) mod table;
pub mod time;

pub use self::alerts::AlertOutcome;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::SystemTime};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use self::{
    codec::{journal_line, Change, State},
    files::{StateError, StateFile},
    record::{AllowRecord, Origin, PolicyRecord, RuleSet, RuleSets},
    time::{Clock, SystemClock},
};
use crate::{
    clock,
    config::Config,
    dataplane::{
        rules::{DpPolicy, Mode},
        DataPlane, DpError,
    },
    profiles::{Profile, RuleSpec},
    text::MAX_COMMENT_BYTES,
    vectors::VectorTable,
};

/// A policy as the API takes it (POST /v1/policies, PUT /v1/policies/{id}).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    pub victim: String,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub rules: Option<BTreeMap<String, RuleSpec>>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub comment: Option<String>,
    /// Accept a drop or limit on a prefix broader than the configured limit.
    #[serde(default)]
    pub force: bool,
}

/// A change to one policy (PATCH /v1/policies/{id}): what is given changes,
/// the rest stays; the merged policy is then validated like a create.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    /// A new lifetime, counted from now (0 = no expiry).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Added to the current expiry (from now if it has passed).
    #[serde(default)]
    pub extend_secs: Option<u64>,
    #[serde(default)]
    pub mode: Option<Mode>,
    /// A new comment; "" removes it.
    #[serde(default)]
    pub comment: Option<String>,
    /// Rules to set, by vector; `null` removes the vector's rule (it then passes).
    #[serde(default)]
    pub rules: BTreeMap<String, Option<RuleSpec>>,
    /// As for a create: the merged policy may drop or limit on a prefix broader than the limit.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooBroad(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("data plane: {0}")]
    DataPlane(#[from] DpError),
    #[error("{0}")]
    State(#[from] StateError),
}

impl StoreError {
    /// Stable machine-readable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Invalid(_) => "invalid",
            StoreError::TooBroad(_) => "too_broad",
            StoreError::Conflict(_) => "conflict",
            StoreError::NotFound(_) => "not_found",
            StoreError::Full(_) => "table_full",
            StoreError::RateLimited(_) => "rate_limited",
            StoreError::DataPlane(DpError::Full { .. } | DpError::Chunks(_)) => "table_full",
            StoreError::DataPlane(_) => "data_plane",
            StoreError::State(_) => "state_file",
        }
    }
}

fn invalid(m: impl Into<String>) -> StoreError {
    StoreError::Invalid(m.into())
}

/// A validated request: the victim, its rules, its expiry.
type Resolved = (IpNet, BTreeMap<String, RuleSpec>, Option<SystemTime>);

pub struct Store {
    cfg: Config,
    vectors: VectorTable,
    profiles: BTreeMap<String, Profile>,
    dp: DataPlane,
    file: StateFile,
    /// `state.seq` counts the changes: each has a journal line of that number.
    state: State,
    /// Journal lines of changes not yet handed to the persister.
    pending: Vec<u8>,
    alert_window: time::AlertWindow,
    /// The time, for every decision the store makes (`time.rs`).
    clock: Arc<dyn Clock>,
    /// Distinct rule sets in use, shared by the policies that have them.
    rule_sets: RuleSets,
    /// The files on disk need a new snapshot before the journal can go on.
    snapshot_due: bool,
    /// Coverage of acting policies and what alert policies hold (`bounds`).
    usage: bounds::Usage,
}

/// What a compaction writes: pointers to the records, taken under the lock.
pub struct Snapshot {
    pub seq: u64,
    pub next_id: u64,
    pub policies: Vec<Arc<PolicyRecord>>,
    pub allowlist: Vec<AllowRecord>,
}

/// Parse a victim or allowlist prefix: a prefix, or an address meaning its
/// host prefix. IPv4-mapped IPv6 (`::ffff:203.0.113.10`, `::ffff:0:0/96`)
/// is the IPv4 address or prefix it maps: the data plane sees that traffic as
/// IPv4, so that is what a policy or an allowlist entry must name.
pub fn parse_prefix(s: &str) -> Result<IpNet, StoreError> {
    let s = s.trim();
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(a.to_canonical()));
    }
    let n: IpNet = s.parse().map_err(|_| invalid(format!("{s:?} is not an IPv4/IPv6 address or prefix")))?;
    let n = canonical(n);
    if n != n.trunc() {
        return Err(invalid(format!("{n} has host bits set; did you mean {}?", n.trunc())));
    }
    Ok(n)
}

/// An IPv6 prefix inside ::ffff:0:0/96 as the IPv4 prefix it maps (host
/// bits kept); any other prefix as it is.
pub fn canonical(n: IpNet) -> IpNet {
    match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(a) => IpNet::V4(Ipv4Net::new(a, v6.prefix_len() - 96).expect("96..=128 minus 96 is a valid IPv4 length")),
            None => n,
        },
        _ => n,
    }
}

/// An allowlist entry's own breadth: no broader than
/// `allow_min_prefix_len_v4` / `_v6` (/8, /32).
pub(crate) fn check_allow_breadth(cfg: &Config, prefix: &IpNet) -> Result<(), String> {
    let min = match prefix {
        IpNet::V4(_) => cfg.allow_min_prefix_len_v4,
        IpNet::V6(_) => cfg.allow_min_prefix_len_v6,
    };
    if prefix.prefix_len() < min {
        return Err(format!(
            "allowlisting {prefix} would exempt too much; the limit is /{min} (allow_min_prefix_len_v{})",
            if matches!(prefix, IpNet::V4(_)) { 4 } else { 6 }
        ));
    }
    Ok(())
}

/// The allowlist's total: at most as many addresses as one
/// `allow_coverage_v4` / `_v6` prefix, per family.
pub(crate) fn check_allow_coverage<'a>(cfg: &Config, entries: impl Iterator<Item = &'a IpNet>) -> Result<(), String> {
    let (v4, v6) = bounds::coverage(entries);
    for (family, total, bits, len) in [(4, v4, 32, cfg.allow_coverage_v4), (6, v6, 128, cfg.allow_coverage_v6)] {
        if total > bounds::prefix_size(bits, len) {
            return Err(format!(
                "the allowlist would cover {total} IPv{family} addresses, more than `allow_coverage_v{family}` allows ({}); \
                 remove or narrow entries, or raise the bound in the config",
                bounds::describe(bits, len)
            ));
        }
    }
    Ok(())
}

impl Store {
    /// Open the store: load the state file (a corrupt one is an error), set
    /// the vector table and allowlist, and install every unexpired policy.
    pub fn open(cfg: Config, dp: DataPlane) -> Result<Self, anyhow::Error> {
        Self::open_with_clock(cfg, dp, Arc::new(SystemClock))
    }

    /// `open`, with the time read from `clock` (tests move it by hand).
    pub fn open_with_clock(cfg: Config, mut dp: DataPlane, clock: Arc<dyn Clock>) -> Result<Self, anyhow::Error> {
        let vectors = VectorTable::new(&cfg.vectors)?;
        let profiles = cfg.profiles(&vectors)?;
        dp.set_vectors(&vectors.port_table())?;
        dp.set_dns_signature(cfg.dns_large_bytes, cfg.dns_many_answers)?;
        let file = StateFile::new(&cfg.state_dir);
        let (state, mut stale) = file.load_and_check()?;
        let mut store = Self {
            cfg,
            vectors,
            profiles,
            dp,
            file,
            state,
            pending: Vec::new(),
            alert_window: Default::default(),
            clock,
            rule_sets: RuleSets::default(),
            snapshot_due: false,
            usage: Default::default(),
        };
        for p in store.cfg.allowlist.clone() {
            store.dp.add_allow(p)?;
        }
        for a in store.state.allowlist.clone() {
            store.dp.add_allow(a.prefix)?;
        }
        // Register the loaded rule sets (shared within the files already), so
        // that new policies with the same rules share them too.
        let records: Vec<Arc<PolicyRecord>> = store.state.policies.iter().cloned().collect();
        for p in records {
            let rules = store.intern_shared(&p.rules);
            if !Arc::ptr_eq(&rules, &p.rules) {
                store.state.policies.put(Arc::new(PolicyRecord { rules, ..(*p).clone() })).expect("same id, same victim");
            }
        }
        let now = store.clock.now();
        stale |= !store.state.policies.drain_unless(|p| !time::is_expired(p.expires_at, now)).is_empty();
        let live: Vec<Arc<PolicyRecord>> = store.state.policies.iter().cloned().collect();
        for p in &live {
            let dpp = store.to_dp(p)?;
            store.dp.upsert_policy(p.victim, &dpp)?;
            store.usage.account(p, true);
        }
        // A fresh snapshot is due (the first one, a version upgrade, or the
        // journal's changes and the expiries folded in), but it is the state
        // writer's job, retried until it succeeds: a full disk must not keep
        // a new daemon from enforcing what the files already hold.
        store.snapshot_due = stale;
        Ok(store)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn vectors(&self) -> &VectorTable {
        &self.vectors
    }

    pub fn profiles(&self) -> &BTreeMap<String, Profile> {
        &self.profiles
    }

    pub fn dataplane(&self) -> &DataPlane {
        &self.dp
    }

    pub(crate) fn dataplane_mut(&mut self) -> &mut DataPlane {
        &mut self.dp
    }

    pub(crate) fn state_path(&self) -> &std::path::Path {
        self.file.path()
    }

    pub fn state_file(&self) -> &StateFile {
        &self.file
    }

    /// Whether the state writer must write a snapshot before any journal line
    /// (set at open; see `persist::Persister::new`).
    pub fn snapshot_due(&self) -> bool {
        self.snapshot_due
    }

    /// How many changes the state has seen (the last journal line's number).
    pub fn generation(&self) -> u64 {
        self.state.seq
    }

    /// Journal lines of the changes since the last call, and the generation they reach.
    pub(crate) fn take_pending(&mut self) -> (u64, Vec<u8>) {
        (self.state.seq, std::mem::take(&mut self.pending))
    }

    /// Everything, for a compaction (which makes the pending lines unneeded).
    pub fn snapshot(&mut self) -> Snapshot {
        self.pending.clear();
        let s = &self.state;
        Snapshot { seq: s.seq, next_id: s.next_id, policies: s.policies.iter().cloned().collect(), allowlist: s.allowlist.clone() }
    }

    /// The journal line of the next change. Made before the change is
    /// applied, and its number taken (`push`) only once it is made: a change
    /// that cannot be written is refused with nothing changed, and the
    /// journal never skips a number.
    fn line(&self, change: Change) -> Result<Vec<u8>, StoreError> {
        journal_line(self.state.seq + 1, change)
            .map_err(|e| invalid(format!("this change cannot be written to the state files ({e}); nothing changed")))
    }

    fn push(&mut self, line: Vec<u8>) {
        self.state.seq += 1;
        self.pending.extend(line);
    }

    /// The shared copy of a rule set: 100,000 policies from one profile hold
    /// one map, not 100,000. Found by a hash of the content (`RuleSets`);
    /// sets no policy uses any more are dropped as the table grows.
    fn intern(&mut self, rules: RuleSet) -> Arc<RuleSet> {
        self.intern_shared(&Arc::new(rules))
    }

    fn intern_shared(&mut self, rules: &Arc<RuleSet>) -> Arc<RuleSet> {
        self.rule_sets.share_and_prune(rules)
    }

    /// Every policy, in the order they were made.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &Arc<PolicyRecord>> + '_ {
        self.state.policies.iter()
    }

    /// A page of policies in creation order; see `PolicyTable::page`.
    pub(crate) fn policy_page(&self, from: u64, limit: usize) -> (Vec<&Arc<PolicyRecord>>, Option<u64>) {
        self.state.policies.page(from, limit)
    }

    pub fn allowlist(&self) -> &[AllowRecord] {
        &self.state.allowlist
    }

    pub fn policy(&self, id: &str) -> Result<&Arc<PolicyRecord>, StoreError> {
        self.state.policies.get(id).ok_or_else(|| StoreError::NotFound(format!("no policy {id}")))
    }

    /// The policy whose victim is exactly this prefix.
    pub fn policy_by_victim(&self, victim: &IpNet) -> Option<&Arc<PolicyRecord>> {
        self.state.policies.by_victim(victim)
    }

    /// The policy that applies to an address: the longest victim prefix
    /// holding it, as the data plane chooses. One index lookup per prefix length.
    pub(crate) fn policy_covering(&self, addr: IpAddr) -> Option<&Arc<PolicyRecord>> {
        let host = IpNet::from(addr);
        (0..=host.max_prefix_len()).rev().find_map(|len| {
            let net = IpNet::new(addr, len).expect("length within the family").trunc();
            self.state.policies.by_victim(&net)
        })
    }

    fn to_dp(&self, p: &PolicyRecord) -> Result<DpPolicy, StoreError> {
        let mut rules = Vec::new();
        for (name, spec) in p.rules.iter() {
            let id = self.vectors.id_of(name).ok_or_else(|| invalid(format!("unknown vector {name:?}")))?;
            rules.push((id, spec.resolve().map_err(|e| invalid(format!("rule for {name}: {e}")))?));
        }
        Ok(DpPolicy { mode: p.mode, expires_ns: p.expires_at.map(clock::wall_to_monotonic).unwrap_or(0), rules })
    }

    fn next_id(&mut self, prefix: &str) -> String {
        let id = format!("{prefix}-{}", self.state.next_id);
        self.state.next_id += 1;
        id
    }

    /// Validate a request and resolve its rules (profile first, then overrides).
    fn resolve(&self, req: &PolicyRequest) -> Result<Resolved, StoreError> {
        let victim = parse_prefix(&req.victim)?;
        let mut rules = BTreeMap::new();
        let profile_name = match (&req.profile, &req.rules) {
            (Some(p), _) => Some(p.as_str()),
            (None, None) => Some("default"),
            (None, Some(_)) => None,
        };
        if let Some(name) = profile_name {
            let p = self.profiles.get(name).ok_or_else(|| {
                invalid(format!("unknown profile {name:?}; known: {}", self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")))
            })?;
            rules.extend(p.clone());
        }
        for (name, spec) in req.rules.iter().flatten() {
            self.known_vector(name)?;
            let rule = spec.resolve().map_err(|e| invalid(format!("rule for {name}: {e}")))?;
            let id = self.vectors.id_of(name).expect("checked above");
            if spec.signature == Some(true) && !xdp_common::signature::has_signature(id) {
                return Err(invalid(format!(
                    "vector {name} has no reflection signature; vectors with one: {}",
                    xdp_common::signature::SIGNATURES.iter().filter_map(|(v, _)| self.vectors.name_of(*v)).collect::<Vec<_>>().join(", ")
                )));
            }
            rules.insert(name.clone(), RuleSpec::from_rule(&rule));
        }
        // Canonical form (defaults filled in) for what is stored and shown.
        for spec in rules.values_mut() {
            *spec = RuleSpec::from_rule(&spec.resolve().map_err(|e| invalid(e.to_string()))?);
        }
        if req.comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT_BYTES) {
            return Err(invalid(format!("comment is longer than {MAX_COMMENT_BYTES} bytes")));
        }
        let ttl = req.ttl_secs.unwrap_or(self.cfg.default_ttl_secs);
        if ttl > self.cfg.max_ttl_secs {
            return Err(invalid(format!("ttl_secs {ttl} is above the maximum of {}", self.cfg.max_ttl_secs)));
        }
        let expires = time::expiry(ttl, self.clock.now());
        self.check_breadth(&victim, &rules, req.force)?;
        self.check_allowlist_overlap(&victim)?;
        Ok((victim, rules, expires))
    }

    fn known_vector(&self, name: &str) -> Result<(), StoreError> {
        match self.vectors.id_of(name) {
            Some(_) => Ok(()),
            None => Err(invalid(format!(
                "unknown vector {name:?}; known: {}",
                self.vectors.all().iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn check_breadth(&self, victim: &IpNet, rules: &BTreeMap<String, RuleSpec>, force: bool) -> Result<(), StoreError> {
        // The resolved rule, both branches: `{"action": "pass", "max_bytes":
        // 0, "otherwise": "drop"}` drops nearly everything.
        if !bounds::footprint(rules).acting {
            return Ok(());
        }
        if victim.prefix_len() == 0 {
            return Err(StoreError::TooBroad(format!(
                "refusing to drop or limit traffic to {victim}: that is every address (not even with force)"
            )));
        }
        let min = match victim {
            IpNet::V4(_) => self.cfg.min_prefix_len_v4,
            IpNet::V6(_) => self.cfg.min_prefix_len_v6,
        };
        if victim.prefix_len() < min && !force {
            return Err(StoreError::TooBroad(format!(
                "{victim} is broader than /{min}, the configured limit for policies that drop or limit; \
                 narrow it, or send \"force\": true if you mean it"
            )));
        }
        Ok(())
    }

    fn check_allowlist_overlap(&self, victim: &IpNet) -> Result<(), StoreError> {
        let hit = self.dp.allowlist().find(|a| a.contains(victim) || victim.contains(*a));
        match hit {
            Some(a) => Err(StoreError::Conflict(format!(
                "{victim} overlaps the allowlisted prefix {a}; ampguard does not act on allowlisted space"
            ))),
            None => Ok(()),
        }
    }

    /// Apply a record (new, or replacing the one with its id) to the data
    /// plane and the in-memory state; the state files follow (see `persist`).
    fn commit(&mut self, rec: PolicyRecord) -> Result<Arc<PolicyRecord>, StoreError> {
        if let Some(other) = self.state.policies.by_victim(&rec.victim).filter(|o| o.id != rec.id) {
            return Err(StoreError::Conflict(format!("{} already has policy {}", rec.victim, other.id)));
        }
        let old = self.state.policies.get(&rec.id).cloned();
        self.usage.check_coverage(&self.cfg, old.as_deref(), &rec).map_err(StoreError::TooBroad)?;
        self.usage.check_alert_share(&self.cfg, old.as_deref(), &rec).map_err(StoreError::Full)?;
        let dpp = self.to_dp(&rec)?;
        let rec = Arc::new(rec);
        let line = self.line(Change::PutPolicy(rec.clone()))?;
        self.dp.upsert_policy(rec.victim, &dpp).map_err(full_or)?;
        self.state.policies.put(rec.clone()).expect("victim checked above");
        if let Some(old) = &old {
            self.usage.account(old, false);
        }
        self.usage.account(&rec, true);
        self.push(line);
        Ok(rec)
    }

    pub fn create_policy(&mut self, req: PolicyRequest, source: Origin) -> Result<Arc<PolicyRecord>, StoreError> {
        let (victim, rules, expires_at) = self.resolve(&req)?;
        if let Some(p) = self.state.policies.by_victim(&victim) {
            return Err(StoreError::Conflict(format!("{victim} already has policy {}; replace it with PUT /v1/policies/{}", p.id, p.id)));
        }
        if self.state.policies.len() >= self.cfg.capacity.max_policies as usize {
            return Err(StoreError::Full(format!(
                "the policy table is full ({} policies); raise capacity.max_policies or remove policies",
                self.state.policies.len()
            )));
        }
        let now = self.clock.now();
        let rules = self.intern(rules);
        let rec = PolicyRecord {
            id: self.next_id("p"),
            victim,
            profile: req.profile.clone().or_else(|| req.rules.is_none().then(|| "default".into())),
            rules,
            mode: req.mode.unwrap_or_default(),
            expires_at,
            created_at: now,
            updated_at: now,
            comment: req.comment,
            source,
        };
        self.commit(rec)
    }

    pub(crate) fn replace_policy(&mut self, id: &str, req: PolicyRequest) -> Result<Arc<PolicyRecord>, StoreError> {
        self.policy(id)?;
        let (victim, rules, expires_at) = self.resolve(&req)?;
        let old = self.policy(id)?;
        if victim != old.victim {
            return Err(invalid(format!(
                "policy {id} is for {}; a policy's victim cannot change (delete it and create another)",
                old.victim
            )));
        }
        let (created_at, source) = (old.created_at, old.source.clone());
        let rules = self.intern(rules);
        let rec = PolicyRecord {
            id: id.into(),
            victim,
            profile: req.profile.clone().or_else(|| req.rules.is_none().then(|| "default".into())),
            rules,
            mode: req.mode.unwrap_or_default(),
            expires_at,
            created_at,
            updated_at: self.clock.now(),
            comment: req.comment,
            source,
        };
        self.commit(rec)
    }

    /// Merge a patch into a policy. The merged policy passes the same checks
    /// as a create (rules, breadth and `force`, allowlist overlap, comment,
    /// TTL), and is journaled as a replacement; on error nothing changes.
    pub fn patch_policy(&mut self, id: &str, patch: PolicyPatch) -> Result<Arc<PolicyRecord>, StoreError> {
        let old = self.policy(id)?.clone();
        if patch.ttl_secs.is_some() && patch.extend_secs.is_some() {
            return Err(invalid("give ttl_secs (a new lifetime from now) or extend_secs (added to the current expiry), not both"));
        }
        let mut rules = (*old.rules).clone();
        for (name, spec) in patch.rules {
            self.known_vector(&name)?;
            match spec {
                Some(spec) => rules.insert(name, spec),
                None => rules.remove(&name),
            };
        }
        let comment = match patch.comment {
            None => old.comment.clone(),
            Some(c) if c.is_empty() => None,
            Some(c) => Some(c),
        };
        let now = self.clock.now();
        // The lifetime: resolve() checks a new ttl_secs against max_ttl_secs;
        // a kept or extended expiry is checked here, with the same words.
        let expires_at = match patch.extend_secs {
            Some(ext) => {
                let Some(until) = time::extend(old.expires_at, now, ext) else {
                    return Err(invalid(format!("policy {id} never expires, so it cannot be extended; set ttl_secs instead")));
                };
                let ttl = until.duration_since(now).unwrap_or_default().as_secs();
                if ttl > self.cfg.max_ttl_secs {
                    return Err(invalid(format!(
                        "ttl_secs {ttl} (the lifetime left after extending by {ext}) is above the maximum of {}",
                        self.cfg.max_ttl_secs
                    )));
                }
                Some(until)
            }
            None => old.expires_at,
        };
        let req = PolicyRequest {
            victim: old.victim.to_string(),
            profile: None,
            rules: Some(rules),
            mode: Some(patch.mode.unwrap_or(old.mode)),
            ttl_secs: Some(patch.ttl_secs.unwrap_or(0)),
            comment,
            force: patch.force,
        };
        let (victim, rules, new_expiry) = self.resolve(&req)?;
        let rules = self.intern(rules);
        let rec = PolicyRecord {
            victim,
            rules,
            mode: req.mode.unwrap_or_default(),
            expires_at: if patch.ttl_secs.is_some() { new_expiry } else { expires_at },
            updated_at: now,
            comment: req.comment,
            ..(*old).clone()
        };
        self.commit(rec)
    }

    pub(crate) fn delete_policy(&mut self, id: &str) -> Result<Arc<PolicyRecord>, StoreError> {
        let victim = self.policy(id)?.victim;
        let line = self.line(Change::DelPolicy(id.to_string()))?;
        self.dp.remove_policy(&victim)?;
        let rec = self.state.policies.remove(id).expect("found above");
        self.usage.account(&rec, false);
        self.push(line);
        Ok(rec)
    }

    /// Remove every policy whose expiry has passed (the XDP program already
    /// ignores them; this frees their slots). Returns the removed ids.
    pub fn sweep_expired(&mut self) -> Result<Vec<String>, StoreError> {
        let expired = time::expired(&self.state.policies, self.clock.now());
        for id in &expired {
            self.delete_policy(id)?;
        }
        Ok(expired)
    }

    pub fn add_allow(&mut self, prefix: &str, comment: Option<String>) -> Result<AllowRecord, StoreError> {
        let prefix = parse_prefix(prefix)?;
        check_allow_breadth(&self.cfg, &prefix).map_err(StoreError::TooBroad)?;
        if let Some(a) = self.state.allowlist.iter().find(|a| a.prefix == prefix) {
            return Err(StoreError::Conflict(format!("{prefix} is already allowlisted as {}", a.id)));
        }
        if let Some(p) = self.state.policies.iter().find(|p| p.victim.contains(&prefix) || prefix.contains(&p.victim)) {
            return Err(StoreError::Conflict(format!(
                "{prefix} overlaps the victim {} of policy {}; remove that policy first",
                p.victim, p.id
            )));
        }
        if comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT_BYTES) {
            return Err(invalid(format!("comment is longer than {MAX_COMMENT_BYTES} bytes")));
        }
        if !self.dp.allowlist().any(|a| *a == prefix) {
            check_allow_coverage(&self.cfg, self.dp.allowlist().chain([&prefix])).map_err(StoreError::TooBroad)?;
        }
        let rec = AllowRecord { id: format!("a-{}", self.state.next_id), prefix, comment, created_at: self.clock.now() };
        let line = self.line(Change::PutAllow(rec.clone()))?;
        self.dp.add_allow(prefix).map_err(full_or)?;
        self.state.next_id += 1;
        self.state.allowlist.push(rec.clone());
        self.push(line);
        Ok(rec)
    }

    pub(crate) fn delete_allow(&mut self, id: &str) -> Result<AllowRecord, StoreError> {
        let i =
            self.state.allowlist.iter().position(|a| a.id == id).ok_or_else(|| StoreError::NotFound(format!("no allowlist entry {id}")))?;
        // Entries from the config file stay in force.
        let prefix = self.state.allowlist[i].prefix;
        let line = self.line(Change::DelAllow(id.to_string()))?;
        if !self.cfg.allowlist.contains(&prefix) {
            self.dp.remove_allow(&prefix)?;
        }
        let rec = self.state.allowlist.remove(i);
        self.push(line);
        Ok(rec)
    }
}

fn full_or(e: DpError) -> StoreError {
    match e {
        DpError::Full { .. } | DpError::Chunks(_) => StoreError::Full(e.to_string()),
        other => StoreError::DataPlane(other),
    }
}
