//! The speaker's Flowspec table -> policies. Keeps the routes (by their
//! canonical NLRI), the peers' session states and the stream's, and after
//! every change (and once a second, for grace periods and retries) makes the
//! Flowspec policies equal to what the table asks for: one policy per
//! victim, the rules of every accepted route for it together. Policies of
//! other origins are never touched; a route for such a victim is refused.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{
    config::FlowspecConfig,
    gobgp::{Event, Received},
    rfc8955::{self, Reason, Refusal},
};
use crate::{
    profiles::RuleSpec,
    store::{record::Origin, Store, StoreError},
};

/// What one route became, for /v1/status.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RouteStatus {
    pub route: String,
    pub peer: String,
    /// "installed" or "refused".
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub peer: String,
    pub up: bool,
    /// While down: when its policies go, unless it comes back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removal_in_secs: Option<u64>,
}

/// The flowspec section of /v1/status, and what /metrics reads.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub enabled: bool,
    pub speaker: String,
    /// "connected", "connecting", "lost".
    pub session: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub validate: &'static str,
    pub grace_secs: u64,
    pub installed: usize,
    pub refused: usize,
    pub peers: Vec<PeerStatus>,
    pub routes: Vec<RouteStatus>,
    /// Refused routes by reason (every reason, 0 included).
    #[serde(skip)]
    pub refused_by_reason: BTreeMap<&'static str, usize>,
}

/// Shared between the reconcile task and the API.
#[derive(Default)]
pub struct Shared(pub Mutex<Status>);

impl Shared {
    pub fn new(cfg: &FlowspecConfig) -> Self {
        let s = Status {
            enabled: cfg.enabled,
            speaker: cfg.gobgp.to_string(),
            session: if cfg.enabled { "connecting" } else { "disabled" },
            validate: cfg.validate.as_str(),
            grace_secs: cfg.grace_secs,
            refused_by_reason: Reason::ALL.iter().map(|r| (r.as_str(), 0)).collect(),
            ..Default::default()
        };
        Shared(Mutex::new(s))
    }

    pub fn get(&self) -> Status {
        self.0.lock().expect("not poisoned").clone()
    }
}

struct Entry {
    peer: String,
    route: Result<rfc8955::Route, Refusal>,
    valid: Result<(), Refusal>,
    /// A withdraw seen: the route goes once [`WITHDRAW_HOLD`] has passed
    /// with its peer up, or after the grace if its peer went down (a
    /// speaker withdraws a lost peer's routes as the session drops).
    withdrawn: Option<Instant>,
}

/// How long a withdraw waits for the peer-down event that may follow it.
const WITHDRAW_HOLD: Duration = Duration::from_millis(500);

/// The reconcile's memory: the table as the speaker last said it.
pub struct Sync {
    cfg: FlowspecConfig,
    routes: BTreeMap<String, Entry>,
    /// Peer -> Some(when it went down), None while up.
    peers: HashMap<String, Option<Instant>>,
    /// When the stream was lost (None: connected, or never connected yet).
    lost_since: Option<Instant>,
    connected: bool,
    error: Option<String>,
    /// Last outcome per route, to log changes only.
    last: HashMap<String, RouteStatus>,
    started: Instant,
    /// Some withdrawn route is held (reconcile again soon).
    held: bool,
    /// What each victim's policy was last made from (rules, peer, comment)
    /// and its id: unchanged, the store is not asked again (a reconcile a
    /// second costs a comparison per victim, not a validation).
    applied: HashMap<IpNet, (BTreeMap<String, RuleSpec>, String, String, String)>,
}

impl Sync {
    pub fn new(cfg: FlowspecConfig, now: Instant) -> Self {
        Self {
            cfg,
            routes: BTreeMap::new(),
            peers: HashMap::new(),
            lost_since: None,
            connected: false,
            error: None,
            last: HashMap::new(),
            started: now,
            held: false,
            applied: HashMap::new(),
        }
    }

    fn put(&mut self, r: Received, now: Instant) {
        if r.withdraw {
            if let Some(e) = self.routes.get_mut(&r.key) {
                e.withdrawn.get_or_insert(now);
            }
        } else {
            self.routes.insert(r.key, Entry { peer: r.peer, route: r.route, valid: r.valid, withdrawn: None });
        }
    }

    /// Drop the withdrawn routes whose time is up; true if one is still held.
    fn expire_withdrawn(&mut self, now: Instant) -> bool {
        let grace = self.grace();
        let peers = &self.peers;
        self.routes.retain(|_, e| match (e.withdrawn, peers.get(&e.peer)) {
            (None, _) => true,
            (Some(_), Some(Some(down))) => now.duration_since(*down) < grace,
            (Some(w), _) => now.duration_since(w) < WITHDRAW_HOLD,
        });
        self.routes.values().any(|e| e.withdrawn.is_some())
    }

    pub fn handle(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Snapshot { routes, peers } => {
                let old_peers = std::mem::take(&mut self.peers);
                self.peers = peers
                    .into_iter()
                    .map(|(p, up)| {
                        let since = old_peers.get(&p).copied().flatten().unwrap_or(now);
                        (p, (!up).then_some(since))
                    })
                    .collect();
                // A down peer's routes are not in the new table: they stay as withdrawn, for its grace.
                let down = &self.peers;
                self.routes.retain(|_, e| down.get(&e.peer).is_some_and(|d| d.is_some()));
                for e in self.routes.values_mut() {
                    e.withdrawn.get_or_insert(now);
                }
                for r in routes {
                    self.put(r, now);
                }
                self.connected = true;
                self.lost_since = None;
                self.error = None;
            }
            Event::Path(r) => self.put(r, now),
            Event::Peer { peer, up } => {
                let e = self.peers.entry(peer).or_insert(None);
                *e = match (up, *e) {
                    (true, _) => None,
                    (false, Some(since)) => Some(since),
                    (false, None) => Some(now),
                };
            }
            Event::Lost(e) => {
                if self.connected || self.lost_since.is_none() {
                    tracing::warn!(speaker = %self.cfg.gobgp, "flowspec: lost the BGP speaker ({e}); its policies stay {} s, then go", self.cfg.grace_secs);
                    self.lost_since = Some(now);
                }
                self.connected = false;
                self.error = Some(e);
            }
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.cfg.grace_secs)
    }

    /// Whether a peer's routes are still in force.
    fn peer_counts(&self, peer: &str, now: Instant) -> bool {
        match self.peers.get(peer) {
            Some(Some(down)) => now.duration_since(*down) < self.grace(),
            // Up, unknown (the speaker's own RIB, "local"), or not reported yet.
            _ => true,
        }
    }

    /// Make the Flowspec policies what the table asks for; returns whether
    /// the store changed (the state writer then has work).
    pub fn reconcile(&mut self, store: &mut Store, now: Instant) -> (bool, Status) {
        let mut changed = false;
        self.held = self.expire_withdrawn(now);
        let mut out: Vec<RouteStatus> = Vec::new();
        // The speaker gone for longer than the grace: no route counts, until it is back.
        let speaker_gone = !self.connected && now.duration_since(self.lost_since.unwrap_or(self.started)) >= self.grace();
        // Before the first snapshot, nothing is known: keep what the last run left (the grace applies).
        let known = self.connected || speaker_gone;
        // victim -> (rules, peer, keys)
        let mut want: BTreeMap<IpNet, (BTreeMap<String, RuleSpec>, String, Vec<String>)> = BTreeMap::new();
        let refused = |key: &str, peer: &str, r: &Refusal| RouteStatus {
            route: key.into(),
            peer: peer.into(),
            state: "refused",
            policy: None,
            reason: Some(r.reason),
            message: Some(r.message.clone()),
        };
        if !speaker_gone {
            for (key, e) in &self.routes {
                if !self.peer_counts(&e.peer, now) {
                    continue;
                }
                let mapped = e
                    .route
                    .clone()
                    .and_then(|r| rfc8955::map_route(&r, store.vectors()))
                    .and_then(|m| e.valid.clone().map(|_| m))
                    .and_then(|m| match self.cfg.network_of(&m.victim) {
                        Some(_) => Ok(m),
                        None => Err(Refusal {
                            reason: Reason::OutsideNetworks,
                            message: format!("{} is outside the protected networks ([flowspec] networks)", m.victim),
                        }),
                    });
                let m = match mapped {
                    Ok(m) => m,
                    Err(r) => {
                        out.push(refused(key, &e.peer, &r));
                        continue;
                    }
                };
                let slot = want.entry(m.victim).or_insert_with(|| (BTreeMap::new(), e.peer.clone(), Vec::new()));
                if let Some((v, _)) = m.rules.iter().find(|(v, r)| slot.0.get(*v).is_some_and(|o| o != *r)) {
                    let r = Refusal {
                        reason: Reason::Conflict,
                        message: format!("another route ({}) already sets a different rule for {v} on {}", slot.2[0], m.victim),
                    };
                    out.push(refused(key, &e.peer, &r));
                    continue;
                }
                if slot.1 != e.peer {
                    slot.1 = "several".into();
                }
                slot.0.extend(m.rules);
                slot.2.push(key.clone());
            }
        }
        if known {
            // Policies no route asks for any more.
            for p in store.flowspec_policies() {
                if !want.contains_key(&p.victim) {
                    match store.remove_flowspec(&p.id) {
                        Ok(_) => {
                            changed = true;
                            tracing::info!(policy = %p.id, victim = %p.victim, source = %p.source, "flowspec: route gone, policy removed");
                        }
                        Err(e) => tracing::error!(policy = %p.id, "flowspec: removing the policy: {e}"),
                    }
                }
            }
        }
        self.applied.retain(|v, _| want.contains_key(v));
        for (victim, (rules, peer, keys)) in want {
            let comment = format!("flowspec: {}", keys.join("; "));
            let same = self.applied.get(&victim).filter(|(r, p, c, _)| *r == rules && *p == peer && *c == comment);
            if let Some(id) = same.map(|a| a.3.clone()).filter(|id| store.policy(id).is_ok_and(|p| p.victim == victim)) {
                for k in keys {
                    out.push(RouteStatus {
                        route: k,
                        peer: peer.clone(),
                        state: "installed",
                        policy: Some(id.clone()),
                        reason: None,
                        message: None,
                    });
                }
                continue;
            }
            self.applied.remove(&victim);
            let before = store.policy_by_victim(&victim).cloned();
            match store.put_flowspec(victim, rules.clone(), &peer, &comment) {
                Ok(p) => {
                    if before.as_ref() != Some(&p) {
                        changed = true;
                    }
                    self.applied.insert(victim, (rules, peer.clone(), comment, p.id.clone()));
                    for k in keys {
                        out.push(RouteStatus {
                            route: k,
                            peer: peer.clone(),
                            state: "installed",
                            policy: Some(p.id.clone()),
                            reason: None,
                            message: None,
                        });
                    }
                }
                Err(e) => {
                    let reason = match &e {
                        StoreError::TooBroad(_) => Reason::TooBroad,
                        StoreError::Conflict(m) if m.contains("allowlist") => Reason::Allowlisted,
                        StoreError::Conflict(_) => Reason::Conflict,
                        StoreError::Full(_) | StoreError::RateLimited(_) => Reason::Quota,
                        _ => Reason::Invalid,
                    };
                    let r = Refusal { reason, message: e.to_string() };
                    for k in keys {
                        out.push(refused(&k, &peer, &r));
                    }
                }
            }
        }
        self.log_changes(&out);
        let mut by_reason: BTreeMap<&'static str, usize> = Reason::ALL.iter().map(|r| (r.as_str(), 0)).collect();
        for r in out.iter().filter_map(|r| r.reason) {
            *by_reason.entry(r.as_str()).or_default() += 1;
        }
        let mut peers: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|(p, down)| PeerStatus {
                peer: p.clone(),
                up: down.is_none(),
                removal_in_secs: down.map(|d| self.grace().saturating_sub(now.duration_since(d)).as_secs()),
            })
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        out.sort_by(|a, b| a.route.cmp(&b.route));
        let status = Status {
            enabled: true,
            speaker: self.cfg.gobgp.to_string(),
            session: if self.connected {
                "connected"
            } else if self.lost_since.is_some() {
                "lost"
            } else {
                "connecting"
            },
            error: self.error.clone(),
            validate: self.cfg.validate.as_str(),
            grace_secs: self.cfg.grace_secs,
            installed: out.iter().filter(|r| r.state == "installed").count(),
            refused: out.iter().filter(|r| r.state == "refused").count(),
            peers,
            routes: out,
            refused_by_reason: by_reason,
        };
        (changed, status)
    }

    fn log_changes(&mut self, now: &[RouteStatus]) {
        let mut next = HashMap::new();
        for r in now {
            if self.last.get(&r.route) != Some(r) {
                match r.state {
                    "installed" => {
                        tracing::info!(route = %r.route, peer = %r.peer, policy = r.policy.as_deref(), "flowspec: route installed")
                    }
                    _ => tracing::warn!(
                        route = %r.route,
                        peer = %r.peer,
                        reason = r.reason.map(|r| r.as_str()),
                        "flowspec: route refused: {}",
                        r.message.as_deref().unwrap_or("")
                    ),
                }
            }
            next.insert(r.route.clone(), r.clone());
        }
        self.last = next;
    }
}

/// The daemon's Flowspec task: the client feeds events, this applies them.
pub async fn run(cfg: FlowspecConfig, app: crate::api::Shared) {
    let (tx, mut rx) = mpsc::channel(1024);
    let client = tokio::spawn(super::gobgp::run(cfg.clone(), tx));
    let mut sync = Sync::new(cfg, Instant::now());
    let mut tick = tokio::time::interval(WITHDRAW_HOLD / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                sync.handle(ev, Instant::now());
                // Take whatever else is queued before reconciling once.
                while let Ok(ev) = rx.try_recv() {
                    sync.handle(ev, Instant::now());
                }
            }
            _ = tick.tick() => {
                // Every second (grace periods, routes refused for the rate or room
                // that may fit now), sooner while a withdraw is held.
                if !sync.held && last.elapsed() < Duration::from_secs(1) {
                    continue;
                }
            }
        }
        last = Instant::now();
        let (changed, status) = {
            let mut store = app.store.lock().await;
            sync.reconcile(&mut store, Instant::now())
        };
        if changed {
            app.persist.kick();
        }
        *app.flowspec.0.lock().expect("not poisoned") = status;
    }
    client.abort();
}

/// At start with `[flowspec]` disabled: policies an earlier run made from
/// routes have no speaker to withdraw them, so they go.
pub fn remove_orphans(store: &mut Store) -> usize {
    let mut n = 0;
    for p in store.flowspec_policies() {
        if store.remove_flowspec(&p.id).is_ok() {
            tracing::info!(policy = %p.id, victim = %p.victim, "flowspec is disabled: removed the policy an earlier run made from a route");
            n += 1;
        }
    }
    n
}

/// `Origin::Flowspec`'s peer, for the CLI and tests.
pub fn peer_of(o: &Origin) -> Option<&str> {
    match o {
        Origin::Flowspec { peer } => Some(peer),
        _ => None,
    }
}
