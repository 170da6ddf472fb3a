//! /v1/allowlist: source prefixes no policy ever touches.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::StatusCode,
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, ApiError, Shared};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowRequest {
    prefix: String,
    #[serde(default)]
    comment: Option<String>,
}

pub async fn list(State(app): State<Shared>) -> Json<Value> {
    let store = app.store.lock().await;
    let from_config: Vec<String> = store.config().allowlist.iter().map(|p| p.to_string()).collect();
    Json(json!({"allowlist": store.allowlist(), "from_config": from_config}))
}

pub async fn create(State(app): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: AllowRequest = parse_json(body)?;
    let rec = super::change(&app, |s| s.add_allow(&req.prefix, req.comment)).await?;
    tracing::info!(id = rec.id, prefix = %rec.prefix, "allowlist entry added");
    Ok((StatusCode::CREATED, Json(serde_json::to_value(rec).expect("serializes"))))
}

pub async fn delete(State(app): State<Shared>, Path(id): Path<String>) -> Result<impl axum::response::IntoResponse, ApiError> {
    let rec = super::change(&app, |s| s.delete_allow(&id)).await?;
    tracing::info!(id = rec.id, prefix = %rec.prefix, "allowlist entry removed");
    Ok((StatusCode::NO_CONTENT, super::audit::removed(&rec)))
}
