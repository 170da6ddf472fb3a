//! POST /v1/detach and /v1/attach: an operator stops enforcement on every
//! interface, and it stays stopped (through restarts) until attach.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, Shared};
use axum::http::StatusCode;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    /// Who or why, kept with the detach and shown by status.
    #[serde(default)]
    reason: Option<String>,
}

fn failed(e: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "enforcement", format!("{e:#}"))
}

pub async fn detach(State(app): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let req: DetachRequest = match &body {
        Ok(b) if b.is_empty() => DetachRequest::default(),
        _ => super::parse_json(body)?,
    };
    let by = req.reason.unwrap_or_else(|| "POST /v1/detach".into());
    if by.len() > 256 {
        return Err(ApiError::bad_request("reason is longer than 256 bytes"));
    }
    let _store = app.store.lock().await;
    let mut enf = app.enforcement.lock().expect("not poisoned");
    let detached = enf.detach_by_operator(&by).map_err(failed)?;
    Ok(Json(json!({"enforcement": "detached_by_operator", "detached": detached, "detached_by_operator": enf.detached_by_operator()})))
}

pub async fn attach(State(app): State<Shared>) -> Result<Json<Value>, ApiError> {
    let mut store = app.store.lock().await;
    let mut enf = app.enforcement.lock().expect("not poisoned");
    let attached = enf.attach_by_operator(store.dataplane_mut().program_mut()).map_err(failed)?;
    if let Err(e) = store.dataplane().pin_maps(&enf.pin_dir().join("maps")) {
        tracing::warn!("re-pinning the maps: {e}");
    }
    Ok(Json(json!({"enforcement": "enforcing", "attached": attached, "interfaces": enf.statuses()})))
}
