//! /v1/alerts (ampguard's generic alert, also what `ampguard alert fastnetmon`
//! posts) and /v1/alerts/fastnetmon (FastNetMon Advanced's JSON callback).

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::StatusCode,
    Json,
};
use serde_json::{json, Value};

use super::{ApiError, Shared};
use crate::alerts::{self, Alert};

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body is larger than max_body_bytes"))
}

async fn apply(app: &Shared, alert: Alert) -> Result<Json<Value>, ApiError> {
    let result = super::change(app, |s| s.apply_alert(&alert)).await;
    let label = match &result {
        Ok(o) => o.result,
        Err(e) => e.code,
    };
    app.metrics.alerts.with_label_values(&[alert.source.as_str(), alert.action.as_str(), label]).inc();
    let outcome = result?;
    tracing::info!(source = alert.source.as_str(), victim = %alert.victim, result = outcome.result, "{}", outcome.message);
    Ok(Json(serde_json::to_value(outcome).expect("serializes")))
}

pub async fn generic(State(app): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let body = body_bytes(body)?;
    let alert = alerts::generic::parse_generic(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    apply(&app, alert).await
}

pub async fn fastnetmon(State(app): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let body = body_bytes(body)?;
    let vectors = app.store.lock().await.vectors().clone();
    match alerts::fastnetmon::parse_json(&body, &|port| vectors.name_of_port(port)) {
        Ok(alert) => apply(&app, alert).await,
        // An outgoing attack is not ours to act on, but it is not a bad request either.
        Err(e) if e.is_ignored() => Ok(Json(json!({"result": "ignored", "message": e.to_string()}))),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}
