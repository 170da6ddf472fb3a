//! /v1/status and /v1/vectors.

use axum::{extract::State, Json};
use serde_json::{json, Value};
use xdp_common::counters::reason;

use super::{ApiError, Shared};
use crate::{dataplane::rules::Mode, store::StoreError};

pub async fn status(State(app): State<Shared>) -> Result<Json<Value>, ApiError> {
    let store = app.store.lock().await;
    let dp = store.dataplane();
    let reasons = dp.reason_counters().map_err(StoreError::from)?;
    let total = store.policies().len();
    let monitor = store.policies().filter(|p| p.mode == Mode::Monitor).count();
    let cap = dp.capacity();
    let (interfaces, detached) = {
        let enf = app.enforcement.lock().expect("not poisoned");
        (enf.statuses(), enf.detached_by_operator().cloned())
    };
    let enforcing = interfaces.iter().all(|i| i.state == "enforcing");
    let state = app.persist.state();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": app.started.elapsed().as_secs(),
        // True only when every interface enforces this daemon's policies and
        // every change is on disk.
        "healthy": enforcing && detached.is_none() && state.error.is_none() && !state.snapshot_due,
        "enforcement": match (&detached, enforcing) {
            (Some(_), _) => "detached_by_operator",
            (None, true) => "enforcing",
            (None, false) => "degraded",
        },
        "detached_by_operator": detached,
        "interfaces": interfaces,
        "state_writer": state,
        "policies": {"total": total, "enforce": total - monitor, "monitor": monitor, "capacity": cap.max_policies},
        "allowlist": {"entries": store.allowlist().len() + store.config().allowlist.len(), "capacity": cap.max_allow},
        "state_file": store.state_path(),
        "pin_dir": app.enforcement.lock().expect("not poisoned").pin_dir(),
        "detection": detection_summary(&app),
        "flowspec": app.flowspec.get(),
        "unmatched_packets": reason::NAMES.iter().zip(reasons.iter())
            .map(|(n, c)| (n.to_string(), json!({"packets": c.packets, "bytes": c.bytes})))
            .collect::<serde_json::Map<_, _>>(),
    })))
}

/// Built-in detection in one line of status: on or off, mode, what it sees now.
fn detection_summary(app: &Shared) -> Value {
    let d = app.detection.lock().expect("not poisoned");
    if !d.enabled {
        return json!({"enabled": false});
    }
    json!({"enabled": true, "mode": d.mode, "networks": d.networks, "tracked": d.tracked, "under_attack": d.under_attack})
}

/// GET /v1/detection: the destinations detection measures, busiest first,
/// whether or not a policy covers them.
pub async fn detection(State(app): State<Shared>) -> Json<crate::detection::DetectionStatus> {
    Json(app.detection.lock().expect("not poisoned").clone())
}

pub async fn vectors(State(app): State<Shared>) -> Json<Value> {
    let store = app.store.lock().await;
    let default = &store.profiles()["default"];
    let list: Vec<Value> = store
        .vectors()
        .all()
        .iter()
        .map(|v| {
            json!({
                "id": v.id, "name": v.name, "ports": v.ports, "amplification": v.amplification,
                "builtin": v.builtin, "default_rule": default.get(&v.name),
                "signature": xdp_common::signature::describe(v.id).filter(|_| v.builtin),
            })
        })
        .collect();
    Json(json!({"vectors": list}))
}
