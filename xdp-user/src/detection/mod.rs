//! Built-in detection: the daemon reads the XDP program's meters
//! (`xdp_common::meter`), finds destinations inside `[detection] networks`
//! whose amplification traffic crosses a threshold, and bans them itself
//! (or, in report mode, says what it would do), without waiting for an
//! outside detector.
//!
//! One file per concern: `config.rs` (`[detection]`, the thresholds and their
//! defaults), `weights.rs` (the discovery sketch's settings), `detector.rs`
//! (the decisions, pure), `notify.rs` (webhooks and a FastNetMon-style
//! command), this file (the task: candidates in, meters read,
//! policies made and lifted through the store, the view the API shows).

pub mod config;
pub mod detector;
pub mod notify;
mod weights;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use ipnet::IpNet;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use xdp_common::{
    counters::Counter,
    meter::{MeterEvent, MeterKey, FAMILY_V4, V6_METER_LEN},
    vector::MAX_VECTORS,
};

use self::{
    config::{DetectionConfig, DetectionMode},
    detector::{Action, Basis, DestView, Detector},
};
use crate::{
    api::Shared,
    dataplane::{DataPlane, DpError},
    store::{record::Origin, Store},
};

/// Destinations shown by the API and exported as metrics, by packet rate.
const TOP: usize = 10;
/// A tracked destination without traffic for this long gives its meters back.
const IDLE: Duration = Duration::from_secs(30);

/// The prefix a meter key stands for: an IPv4 /32, an IPv6 /64.
pub fn prefix_of(key: &MeterKey) -> IpNet {
    if key.family == FAMILY_V4 {
        IpNet::new(IpAddr::V4(Ipv4Addr::from(key.addr as u32)), 32).expect("valid length")
    } else {
        IpNet::new(IpAddr::V6(Ipv6Addr::from((key.addr as u128) << 64)), V6_METER_LEN).expect("valid length")
    }
}

/// Program the data plane for detection: the protected networks and the sketch's weights.
pub fn program(dp: &mut DataPlane, c: &DetectionConfig, store_vectors: &crate::vectors::VectorTable) -> Result<(), DpError> {
    if !c.enabled {
        return Ok(());
    }
    let cpus = aya::util::online_cpus().map(|c| c.len() as u32).unwrap_or(1);
    dp.set_protected(&c.networks)?;
    dp.set_meter_cfg(weights::meter_cfg(&c.thresholds(store_vectors), cpus))
}

/// The sketch's settings for `cpus` CPUs (for the bench; the daemon uses `program`).
pub fn meter_cfg_for(t: &config::Thresholds, cpus: u32) -> xdp_common::meter::MeterCfg {
    weights::meter_cfg(t, cpus)
}

/// What the API and metrics read of the detector.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetectionStatus {
    pub enabled: bool,
    pub mode: Option<DetectionMode>,
    pub networks: Vec<IpNet>,
    /// Destinations metered exactly now.
    pub tracked: usize,
    pub under_attack: usize,
    /// The busiest destinations, by packet rate.
    pub destinations: Vec<DestView>,
}

/// Detection's metrics, registered in the daemon's registry.
#[derive(Clone)]
pub struct DetectionMetrics {
    /// Attacks detected, by the vector with the highest rate and mode.
    pub detections: IntCounterVec,
    /// What the detector did to policies: created, extended, removed, refused.
    pub bans: IntCounterVec,
    /// Destinations the data plane sent for tracking: tracked, outside (not
    /// in networks), full (no room, none quiet enough to make room).
    pub candidates: IntCounterVec,
    pub tracked: IntGauge,
    pub under_attack: IntGauge,
    pub top_pps: IntGaugeVec,
    pub top_bps: IntGaugeVec,
    /// Notifications by kind (webhook, command) and result (sent, failed, dropped).
    pub notifications: IntCounterVec,
}

impl DetectionMetrics {
    pub fn register(r: &Registry, vector_names: &[String]) -> Self {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gv = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let g = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let m = Self {
            detections: cv("ampguard_detections_total", "Attacks built-in detection found, by top vector and mode", &["vector", "mode"]),
            bans: cv(
                "ampguard_detection_policy_changes_total",
                "Policies built-in detection created, extended, removed, or was refused",
                &["result"],
            ),
            candidates: cv(
                "ampguard_detection_candidates_total",
                "Destinations the data plane's sketch sent for exact metering, by outcome",
                &["result"],
            ),
            tracked: g("ampguard_detection_tracked", "Destinations metered exactly now"),
            under_attack: g("ampguard_detection_under_attack", "Destinations whose rates are over a threshold (or within their hold)"),
            top_pps: gv("ampguard_detection_top_pps", "The busiest tracked destinations' amplification packet rate", &["destination"]),
            top_bps: gv("ampguard_detection_top_bps", "The busiest tracked destinations' amplification bit rate", &["destination"]),
            notifications: cv(
                "ampguard_detection_notifications_total",
                "Detection's notifications by kind and result",
                &["kind", "result"],
            ),
        };
        for v in vector_names {
            for mode in [DetectionMode::Mitigate, DetectionMode::Report] {
                m.detections.with_label_values(&[v.as_str(), mode.as_str()]);
            }
        }
        for r in ["created", "extended", "removed", "refused"] {
            m.bans.with_label_values(&[r]);
        }
        for r in ["tracked", "outside", "full"] {
            m.candidates.with_label_values(&[r]);
        }
        m
    }
}

/// The detector's task: candidates from the ring buffer, a reading of every
/// tracked destination each interval, and the policy changes that follow.
pub struct Detection {
    cfg: DetectionConfig,
    detector: Detector,
    status: Arc<Mutex<DetectionStatus>>,
    metrics: DetectionMetrics,
    notifier: Option<notify::Notifier>,
}

impl Detection {
    /// Fails if the notifications' token file cannot be read (the daemon does not start).
    pub fn new(
        cfg: DetectionConfig,
        store: &Store,
        status: Arc<Mutex<DetectionStatus>>,
        metrics: DetectionMetrics,
    ) -> anyhow::Result<Self> {
        if let Some(p) = &cfg.notify.webhook_token_file {
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read detection.notify.webhook_token_file {}: {e}", p.display()))?;
        }
        let detector = Detector::new(&cfg, cfg.thresholds(store.vectors()));
        *status.lock().expect("not poisoned") =
            DetectionStatus { enabled: cfg.enabled, mode: Some(cfg.mode), networks: cfg.networks.clone(), ..Default::default() };
        Ok(Self { cfg, detector, status, metrics, notifier: None })
    }

    fn notify(&self, n: notify::Notice) {
        if let Some(nf) = &self.notifier {
            nf.send(n);
        }
    }

    /// The victim as a notification names it: the address (an IPv6 /64's first address).
    fn notice(
        prefix: &IpNet,
        action: &'static str,
        vectors: Vec<String>,
        ttl: Option<u64>,
        pps: f64,
        bps: f64,
        comment: String,
    ) -> notify::Notice {
        notify::Notice {
            victim: prefix.network().to_string(),
            action,
            attack_type: vectors.first().cloned().unwrap_or_else(|| "amplification".into()),
            vectors,
            ttl_secs: ttl,
            pps: pps as u64,
            bps: bps as u64,
            comment,
        }
    }

    pub async fn run(mut self, app: Shared, ring: RingBuf<MapData>) {
        match notify::Notifier::start(&self.cfg.notify, self.metrics.notifications.clone()) {
            Ok(n) => self.notifier = Some(n),
            Err(e) => tracing::error!("detection: notifications are off: {e}"),
        }
        // Safety: the RingBuf owns its fd and moves into the AsyncFd.
        let mut fd = match unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("cannot poll the detection ring buffer: {e}; built-in detection is NOT running");
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(mode = self.cfg.mode.as_str(), networks = ?self.cfg.networks, "built-in detection running");
        loop {
            tokio::select! {
                r = fd.readable_mut() => {
                    let Ok(mut guard) = r else { return };
                    let mut events = Vec::new();
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        if item.len() >= std::mem::size_of::<MeterEvent>() {
                            // Safety: the program writes whole MeterEvents.
                            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const MeterEvent) });
                        }
                    }
                    guard.clear_ready();
                    if !events.is_empty() {
                        let mut store = app.store.lock().await;
                        self.candidates(&mut store, &events);
                    }
                }
                _ = tick.tick() => {
                    let changed = {
                        let mut store = app.store.lock().await;
                        self.tick(&mut store)
                    };
                    if changed {
                        app.persist.kick();
                    }
                }
            }
        }
    }

    /// Track each new candidate inside the networks, making room from the
    /// quietest tracked destination if the table is full.
    fn candidates(&mut self, store: &mut Store, events: &[MeterEvent]) {
        let now = Instant::now();
        for ev in events {
            let key = ev.key;
            if self.detector.contains(&key) {
                continue;
            }
            let prefix = prefix_of(&key);
            if !self.cfg.protects(&prefix) {
                // Same /24 as a protected network (the bitmap's grain), outside it.
                self.metrics.candidates.with_label_values(&["outside"]).inc();
                continue;
            }
            let dp = store.dataplane_mut();
            let mut r = dp.track(key);
            if matches!(r, Err(DpError::Full { .. })) {
                if let Some(victim) = self.detector.quietest() {
                    self.detector.remove(&victim);
                    if let Err(e) = dp.untrack(&victim) {
                        tracing::warn!("detection: freeing the meters of {}: {e}", prefix_of(&victim));
                    }
                    r = dp.track(key);
                }
            }
            match r {
                Ok(_) => {
                    self.detector.add(key, prefix, now);
                    self.metrics.candidates.with_label_values(&["tracked"]).inc();
                }
                Err(DpError::Full { .. }) => self.metrics.candidates.with_label_values(&["full"]).inc(),
                Err(e) => tracing::warn!("detection: cannot meter {prefix}: {e}"),
            }
        }
        self.metrics.tracked.set(self.detector.len() as i64);
    }

    /// Read every tracked destination, act on what the detector says.
    /// Returns whether the store changed.
    fn tick(&mut self, store: &mut Store) -> bool {
        let now = Instant::now();
        let metered: Vec<u8> = (0..MAX_VECTORS as u8).filter(|v| self.detector.thresholds().by_vector[*v as usize].0 != 0).collect();
        let keys: Vec<(MeterKey, IpNet)> = self.detector.keys().map(|(k, d)| (*k, d.prefix)).collect();
        let mut actions = Vec::new();
        for (key, prefix) in keys {
            let reading = match store.dataplane().slot_of(&prefix) {
                // A policy for exactly this destination sees what it drops; the meters only what passes.
                Some(slot) => store.dataplane().policy_counts(slot).map(|pc| {
                    let mut c = [Counter::default(); MAX_VECTORS];
                    for (v, vc) in pc.by_vector.iter().enumerate() {
                        for x in vc.by_verdict.iter() {
                            c[v].packets += x.packets;
                            c[v].bytes += x.bytes;
                        }
                    }
                    (Basis::Policy(slot), c)
                }),
                None => match store.dataplane().tracked(&key) {
                    Some(t) => store.dataplane().meter_counts(t, &metered).map(|c| (Basis::Meter, c)),
                    None => continue,
                },
            };
            match reading {
                Ok((basis, counts)) => actions.extend(self.detector.observe(&key, basis, counts, now)),
                Err(e) => tracing::warn!("detection: reading the counters of {prefix}: {e}"),
            }
        }
        let mut changed = false;
        for a in actions {
            changed |= self.act(store, a);
        }
        for key in self.detector.idle(now, IDLE) {
            self.detector.remove(&key);
            if let Err(e) = store.dataplane_mut().untrack(&key) {
                tracing::warn!("detection: freeing the meters of {}: {e}", prefix_of(&key));
            }
        }
        self.publish(store, now);
        changed
    }

    fn vector_name(store: &Store, id: u8) -> String {
        store.vectors().name_of(id).map_or_else(|| format!("vector {id}"), str::to_string)
    }

    /// Carry out one decision; returns whether the store changed.
    fn act(&mut self, store: &mut Store, a: Action) -> bool {
        let mode = self.cfg.mode;
        match a {
            Action::Detected { prefix, rates, over } => {
                let top: Vec<String> = rates
                    .top(3)
                    .iter()
                    .map(|(v, p, b)| format!("{} {:.0} pps {:.1} Mbit/s", Self::vector_name(store, *v), p, b / 1e6))
                    .collect();
                let top_vector = rates.top(1).first().map(|(v, _, _)| Self::vector_name(store, *v)).unwrap_or_default();
                let over_names: Vec<String> =
                    over.iter().map(|v| v.map_or_else(|| "total".to_string(), |v| Self::vector_name(store, v))).collect();
                self.metrics.detections.with_label_values(&[top_vector.as_str(), mode.as_str()]).inc();
                let summary = format!("{:.0} pps {:.1} Mbit/s; {}", rates.pps, rates.bps / 1e6, top.join(", "));
                let vectors: Vec<String> = over.iter().flatten().map(|v| Self::vector_name(store, *v)).collect();
                let comment = format!("detector: {summary}");
                let notice =
                    Self::notice(&prefix, "ban", vectors.clone(), Some(self.cfg.ban_ttl_secs), rates.pps, rates.bps, comment.clone());
                if mode == DetectionMode::Report {
                    tracing::warn!(%prefix, over = ?over_names, "detection (report mode): attack on {prefix}: {summary}; would ban it (mode = \"report\" changes nothing)");
                    self.notify(notice);
                    return false;
                }
                let held = store.policies().filter(|p| p.source == Origin::Detector).count();
                if store.policy_by_victim(&prefix).is_none() && held >= self.cfg.max_policies {
                    self.metrics.bans.with_label_values(&["refused"]).inc();
                    tracing::error!(%prefix, "detection: attack on {prefix} ({summary}) NOT mitigated: the detector already holds {held} policies (detection.max_policies)");
                    return false;
                }
                match store.ban(prefix, Origin::Detector, &vectors, self.cfg.ban_ttl_secs, Some(&comment)) {
                    Ok(o) => {
                        self.metrics.bans.with_label_values(&[o.result]).inc();
                        tracing::warn!(%prefix, result = o.result, "detection: attack on {prefix}: {summary}; {}", o.message);
                        self.notify(notice);
                        o.result != "ignored"
                    }
                    Err(e) => {
                        self.metrics.bans.with_label_values(&["refused"]).inc();
                        tracing::error!(%prefix, "detection: attack on {prefix} ({summary}) NOT mitigated: {e}");
                        false
                    }
                }
            }
            Action::Extend { prefix } => {
                if mode == DetectionMode::Report || store.policy_by_victim(&prefix).is_some_and(|p| p.source != Origin::Detector) {
                    return false;
                }
                match store.ban(prefix, Origin::Detector, &[], self.cfg.ban_ttl_secs, None) {
                    Ok(o) if o.result == "extended" => {
                        self.metrics.bans.with_label_values(&["extended"]).inc();
                        tracing::info!(%prefix, "detection: attack on {prefix} goes on; {}", o.message);
                        true
                    }
                    Ok(o) => o.result == "created",
                    Err(e) => {
                        tracing::error!(%prefix, "detection: extending the ban of {prefix}: {e}");
                        false
                    }
                }
            }
            Action::Ended { prefix, held, peak_pps, peak_bps } => {
                let peak = format!("peak {peak_pps:.0} pps {:.1} Mbit/s", peak_bps / 1e6);
                let notice = Self::notice(&prefix, "unban", Vec::new(), None, peak_pps, peak_bps, format!("detector: attack over, {peak}"));
                if mode == DetectionMode::Report {
                    tracing::info!(%prefix, "detection (report mode): attack on {prefix} over ({peak}; below every threshold for {}s)", held.as_secs());
                    self.notify(notice);
                    return false;
                }
                match store.unban(&prefix, "the detector", |o| *o == Origin::Detector) {
                    Ok(o) => {
                        if o.result == "removed" {
                            self.metrics.bans.with_label_values(&["removed"]).inc();
                            self.notify(notice);
                        }
                        tracing::info!(%prefix, "detection: attack on {prefix} over ({peak}; below every threshold for {}s): {}", held.as_secs(), o.message);
                        o.result == "removed"
                    }
                    Err(e) => {
                        tracing::error!(%prefix, "detection: lifting the ban of {prefix}: {e}");
                        false
                    }
                }
            }
        }
    }

    fn publish(&self, store: &Store, now: Instant) {
        let view = self.detector.view(TOP, now, |id| Self::vector_name(store, id));
        self.metrics.tracked.set(self.detector.len() as i64);
        self.metrics.under_attack.set(self.detector.under_attack() as i64);
        self.metrics.top_pps.reset();
        self.metrics.top_bps.reset();
        for d in &view {
            self.metrics.top_pps.with_label_values(&[d.destination.as_str()]).set(d.pps as i64);
            self.metrics.top_bps.with_label_values(&[d.destination.as_str()]).set(d.bps as i64);
        }
        let mut s = self.status.lock().expect("not poisoned");
        s.tracked = self.detector.len();
        s.under_attack = self.detector.under_attack();
        s.destinations = view;
    }
}
