//! GET /metrics: Prometheus text format.
//!
//! Data-plane counters are read from the per-CPU maps at scrape time and summed
//! over CPUs (the maps are the source of truth; nothing is cached). Process
//! counters (alerts, API requests) live in a registry that the daemon updates.
//!
//! Cardinality: per-policy series (`ampguard_policy_*`) exist for at most
//! `metrics_max_policies` policies (config, default 200), in id order, and only
//! for (vector, verdict) pairs that have counted something; the counts of the
//! policies beyond the bound are summed under `policy="_other"`. The
//! aggregate `ampguard_packets_total{vector,verdict}` always covers everything.

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use xdp_common::counters::{reason, verdict};

use super::Shared;
use crate::dataplane::rules::Mode;

/// Counters the daemon keeps for its own life (not in maps).
pub struct ProcessMetrics {
    pub registry: Registry,
    pub alerts: IntCounterVec,
    pub api_requests: IntCounterVec,
    /// Times the watchdog found a link gone and attached again.
    pub reattachments: IntCounterVec,
    /// Times the watchdog found a link's pin gone (link still attached) and pinned it again.
    pub repins: IntCounterVec,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let alerts = IntCounterVec::new(
            Opts::new("ampguard_alerts_total", "Alerts received, by source, action and what they did"),
            &["source", "action", "result"],
        )
        .expect("metric");
        let api_requests = IntCounterVec::new(
            Opts::new("ampguard_api_requests_total", "API requests by route and HTTP status"),
            &["route", "method", "status"],
        )
        .expect("metric");
        let reattachments = IntCounterVec::new(
            Opts::new("ampguard_xdp_reattachments_total", "Times the XDP link was found detached or unpinned and re-attached"),
            &["interface"],
        )
        .expect("metric");
        let repins = IntCounterVec::new(
            Opts::new(
                "ampguard_xdp_repins_total",
                "Times a link's pin was found removed (the link still attached through the daemon) and pinned again",
            ),
            &["interface"],
        )
        .expect("metric");
        let build =
            IntGaugeVec::new(Opts::new("ampguard_build_info", "Build information (always 1)"), &["version", "commit", "build_date"])
                .expect("metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION"), crate::COMMIT, crate::BUILD_DATE]).set(1);
        // Every family exists from the first scrape, at zero where nothing has
        // happened yet (a query or an alert rule then sees 0, not "no data").
        use crate::alerts::{AlertAction, AlertSource};
        for source in [AlertSource::FastnetmonScript, AlertSource::FastnetmonJson, AlertSource::Generic] {
            for action in [AlertAction::Ban, AlertAction::Unban] {
                for result in ["created", "extended", "removed", "ignored"] {
                    alerts.with_label_values(&[source.as_str(), action.as_str(), result]);
                }
            }
        }
        api_requests.with_label_values(&["/metrics", "GET", "200"]);
        for c in [
            Box::new(alerts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(api_requests.clone()),
            Box::new(reattachments.clone()),
            Box::new(repins.clone()),
            Box::new(build),
        ] {
            registry.register(c).expect("unique metric");
        }
        Self { registry, alerts, api_requests, reattachments, repins }
    }
}

/// Middleware: count every request by its route template, method and status.
/// Every label is from a fixed set whatever the request (unauthenticated
/// clients reach this): the route is the matched template or `unmatched`,
/// the method one the API serves or `other`, the status a 3-digit code.
pub async fn count_requests(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let res = next.run(req).await;
    app.metrics.api_requests.with_label_values(&[&route, method, res.status().as_str()]).inc();
    res
}

/// The `method` label: the methods the API serves (axum answers HEAD for
/// GET routes), anything else `other` (a client may send any token as a
/// method, 300 KB long).
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

pub async fn metrics(State(app): State<Shared>) -> Response {
    let scrape = Registry::new();
    {
        let store = app.store.lock().await;
        let dp = store.dataplane();
        let vectors = store.vectors();

        let pkts = counter(&scrape, "ampguard_packets_total", "Packets that met a policy, by vector and verdict", &["vector", "verdict"]);
        let bytes = counter(&scrape, "ampguard_bytes_total", "Bytes that met a policy, by vector and verdict", &["vector", "verdict"]);
        let per_vector = dp.vector_counters().ok();
        if let Some(per_vector) = &per_vector {
            for v in vectors.all() {
                let c = &per_vector[v.id as usize];
                for (i, name) in verdict::NAMES.iter().enumerate() {
                    pkts.with_label_values(&[v.name.as_str(), name]).inc_by(c.by_verdict[i].packets);
                    bytes.with_label_values(&[v.name.as_str(), name]).inc_by(c.by_verdict[i].bytes);
                }
            }
        }

        let xp = counter(&scrape, "ampguard_xdp_packets_total", "Packets that met no policy, by reason", &["reason"]);
        let xb = counter(&scrape, "ampguard_xdp_bytes_total", "Bytes that met no policy, by reason", &["reason"]);
        if let Ok(reasons) = dp.reason_counters() {
            for (i, name) in reason::NAMES.iter().enumerate() {
                xp.with_label_values(&[name]).inc_by(reasons[i].packets);
                xb.with_label_values(&[name]).inc_by(reasons[i].bytes);
            }
        }

        let limit = store.config().metrics_max_policies;
        let pp = counter(
            &scrape,
            "ampguard_policy_packets_total",
            "Packets per policy, vector and verdict (bounded; see README)",
            &["policy", "victim", "vector", "verdict"],
        );
        let pb = counter(
            &scrape,
            "ampguard_policy_bytes_total",
            "Bytes per policy, vector and verdict (bounded; see README)",
            &["policy", "victim", "vector", "verdict"],
        );
        let expiry = gauge(
            &scrape,
            "ampguard_policy_expiry_timestamp_seconds",
            "When a policy expires (Unix time; absent: never)",
            &["policy", "victim"],
        );
        // The first `limit` policies get series of their own; "_other" is the
        // per-vector total less theirs: every other policy, policies since
        // removed (so it never goes down when one is deleted), and what the
        // listed ones passed of vectors they do not name (a policy counts
        // those together, as vector "_unlisted", not per vector). Reading the
        // counters of only `limit` policies keeps a scrape's cost (and the
        // time it holds the store) flat at 100,000 policies.
        let mut other = per_vector.clone();
        for p in store.policies().take(limit) {
            let Some(slot) = dp.slot_of(&p.victim) else { continue };
            let Ok(counts) = dp.policy_counts(slot) else { continue };
            let (id, victim) = (p.id.as_str(), p.victim.to_string());
            if let Some(e) = p.expires_at.and_then(|e| e.duration_since(std::time::UNIX_EPOCH).ok()) {
                expiry.with_label_values(&[id, &victim]).set(e.as_secs() as i64);
            }
            for (i, name) in verdict::NAMES.iter().enumerate() {
                let x = counts.unlisted.by_verdict[i];
                if x.packets != 0 {
                    pp.with_label_values(&[id, &victim, crate::vectors::UNLISTED, name]).inc_by(x.packets);
                    pb.with_label_values(&[id, &victim, crate::vectors::UNLISTED, name]).inc_by(x.bytes);
                }
            }
            for (vid, c) in counts.by_vector.iter().enumerate() {
                for (i, name) in verdict::NAMES.iter().enumerate() {
                    let x = c.by_verdict[i];
                    if let Some(o) = other.as_mut().and_then(|o| o.get_mut(vid)) {
                        o.by_verdict[i].packets = o.by_verdict[i].packets.saturating_sub(x.packets);
                        o.by_verdict[i].bytes = o.by_verdict[i].bytes.saturating_sub(x.bytes);
                    }
                    if x.packets == 0 {
                        continue;
                    }
                    let vname = vectors.name_of(vid as u8).unwrap_or("unknown");
                    pp.with_label_values(&[id, &victim, vname, name]).inc_by(x.packets);
                    pb.with_label_values(&[id, &victim, vname, name]).inc_by(x.bytes);
                }
            }
        }
        if store.policies().len() > limit {
            for (vid, c) in other.iter().flatten().enumerate() {
                for (i, name) in verdict::NAMES.iter().enumerate() {
                    if c.by_verdict[i].packets == 0 {
                        continue;
                    }
                    let vname = vectors.name_of(vid as u8).unwrap_or("unknown");
                    pp.with_label_values(&["_other", "_other", vname, name]).inc_by(c.by_verdict[i].packets);
                    pb.with_label_values(&["_other", "_other", vname, name]).inc_by(c.by_verdict[i].bytes);
                }
            }
        }

        let modes = gauge(&scrape, "ampguard_policies", "Policies by mode", &["mode"]);
        let monitor = store.policies().filter(|p| p.mode == Mode::Monitor).count() as i64;
        modes.with_label_values(&["enforce"]).set(store.policies().len() as i64 - monitor);
        modes.with_label_values(&["monitor"]).set(monitor);
        let cap = IntGauge::new("ampguard_policy_capacity", "Policies the tables can hold").expect("metric");
        cap.set(dp.capacity().max_policies as i64);
        scrape.register(Box::new(cap)).expect("unique");
        let allow = IntGauge::new("ampguard_allowlist_entries", "Allowlisted source prefixes").expect("metric");
        allow.set((store.allowlist().len() + store.config().allowlist.len()) as i64);
        scrape.register(Box::new(allow)).expect("unique");
    }
    let attached = gauge(
        &scrape,
        "ampguard_interface_attached",
        "1 if this daemon's XDP program is attached to the interface and enforcing",
        &["interface", "mode"],
    );
    let by_operator =
        IntGauge::new("ampguard_detached_by_operator", "1 while an operator's `ampguard detach` holds enforcement off").expect("metric");
    {
        let enf = app.enforcement.lock().expect("not poisoned");
        for i in enf.statuses() {
            attached.with_label_values(&[&i.name, &i.mode]).set((i.state == "enforcing") as i64);
            // Zero until the watchdog first re-attaches or re-pins it.
            app.metrics.reattachments.with_label_values(&[&i.name]);
            app.metrics.repins.with_label_values(&[&i.name]);
        }
        by_operator.set(enf.detached_by_operator().is_some() as i64);
    }
    scrape.register(Box::new(by_operator)).expect("unique");
    // The state files' writer: a failure means changes are in force but not on disk.
    {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &app.persist.stats;
        let writes = counter(
            &scrape,
            "ampguard_state_writes_total",
            "Writes of the state files: journal appends (one fdatasync each) and snapshots",
            &["kind"],
        );
        writes.with_label_values(&["journal"]).inc_by(st.appends.load(Relaxed));
        writes.with_label_values(&["snapshot"]).inc_by(st.snapshots.load(Relaxed));
        let failed =
            IntCounter::new("ampguard_state_write_failures_total", "State file writes that failed (retried every second)").expect("metric");
        failed.inc_by(st.failures.load(Relaxed));
        scrape.register(Box::new(failed)).expect("unique");
        let due = IntGauge::new(
            "ampguard_state_snapshot_due",
            "1 while a state snapshot is owed and not yet written (retried every second; e.g. a full disk)",
        )
        .expect("metric");
        due.set(app.persist.state().snapshot_due as i64);
        scrape.register(Box::new(due)).expect("unique");
        let bytes = gauge(&scrape, "ampguard_state_file_bytes", "Size of the state files", &["file"]);
        bytes.with_label_values(&["journal"]).set(st.journal_bytes.load(Relaxed) as i64);
        bytes.with_label_values(&["snapshot"]).set(st.snapshot_bytes.load(Relaxed) as i64);
    }
    {
        // Flowspec intake (flowspec/sync.rs): every state and reason from the first scrape.
        let fs = app.flowspec.get();
        let routes = gauge(&scrape, "ampguard_flowspec_routes", "Flowspec routes from the BGP speaker, by what became of them", &["state"]);
        routes.with_label_values(&["installed"]).set(fs.installed as i64);
        routes.with_label_values(&["refused"]).set(fs.refused as i64);
        let refused = gauge(
            &scrape,
            "ampguard_flowspec_refused_routes",
            "Flowspec routes refused, by reason (see /v1/status flowspec.routes)",
            &["reason"],
        );
        for (reason, n) in &fs.refused_by_reason {
            refused.with_label_values(&[reason]).set(*n as i64);
        }
        let session = IntGauge::new("ampguard_flowspec_session_up", "1 while the gRPC watch on the BGP speaker runs").expect("metric");
        session.set(i64::from(fs.session == "connected"));
        scrape.register(Box::new(session)).expect("unique");
    }
    let up = IntGauge::new("ampguard_uptime_seconds", "Seconds since the daemon started").expect("metric");
    up.set(app.started.elapsed().as_secs() as i64);
    scrape.register(Box::new(up)).expect("unique");

    let mut families = app.metrics.registry.gather();
    families.extend(scrape.gather());
    let mut out = Vec::new();
    let enc = TextEncoder::new();
    if let Err(e) = enc.encode(&families, &mut out) {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, enc.format_type().to_string())], out).into_response()
}
