//! The HTTP API (axum): routes, bearer-token authentication, JSON errors,
//! body size limit. Handlers live in one file per resource.

mod alerts;
mod allowlist;
pub mod audit;
mod capture;
mod enforcement;
pub mod metrics;
mod policies;
mod status;

use std::{sync::Arc, time::Instant};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Mutex;

use crate::store::{Store, StoreError};

pub struct AppState {
    pub store: Arc<Mutex<Store>>,
    /// Group commit of the state file.
    pub persist: Arc<crate::store::persist::Persister>,
    pub token: String,
    /// A token that may only post alerts (`alert_token_file`), if configured.
    pub alert_token: Option<String>,
    pub started: Instant,
    /// Links held, watchdog state, operator detach. Lock order: `store`, then this.
    pub enforcement: std::sync::Mutex<crate::daemon::enforcement::Enforcement>,
    pub metrics: metrics::ProcessMetrics,
    pub capture: Arc<crate::capture::CaptureHub>,
    /// What built-in detection sees (GET /v1/detection).
    pub detection: Arc<std::sync::Mutex<crate::detection::DetectionStatus>>,
    /// Flowspec intake's state, for /v1/status and /metrics.
    pub flowspec: Arc<crate::flowspec::sync::Shared>,
}

pub type Shared = Arc<AppState>;

/// An API error: status, stable code, and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let info = audit::ErrorInfo { code: self.code, message: self.message.clone() };
        (self.status, axum::Extension(info), Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            StoreError::TooBroad(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            StoreError::DataPlane(crate::dataplane::DpError::Full { .. } | crate::dataplane::DpError::Chunks(_)) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            StoreError::DataPlane(_) | StoreError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// Run a change on the store, then wait until the state file holds it (group
/// commit: see store/persist.rs).
pub async fn change<T>(app: &Shared, f: impl FnOnce(&mut Store) -> Result<T, StoreError>) -> Result<T, ApiError> {
    let (out, gen) = {
        let mut store = app.store.lock().await;
        let out = f(&mut store)?;
        (out, store.generation())
    };
    app.persist.wait(gen).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "state_file",
            format!("the change is in force but the state file could not be written ({e}); it is retried every second, and the change is lost if the daemon restarts first"),
        )
    })?;
    Ok(out)
}

/// Parse a JSON body with errors that name the problem (axum's own `Json`
/// extractor answers in plain text).
pub fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(e) if e.body_text().contains("length limit") => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body is larger than max_body_bytes")
        }
        BytesRejection::FailedToBufferBody(_) => {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", "the request body did not arrive within body_timeout_secs")
        }
        other => ApiError::bad_request(other.body_text()),
    })?;
    if body.is_empty() {
        return Err(ApiError::bad_request("request body is empty; send a JSON object"));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whose token a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The operator token (`token_file`): everything.
    Operator,
    /// The alert-only token (`alert_token_file`).
    Alerter,
}

pub fn principal(app: &AppState, headers: &header::HeaderMap) -> Option<Principal> {
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|t| same(t.trim().as_bytes(), app.token.as_bytes())) {
        return Some(Principal::Operator);
    }
    given.zip(app.alert_token.as_deref()).is_some_and(|(t, a)| same(t.trim().as_bytes(), a.as_bytes())).then_some(Principal::Alerter)
}

async fn require_token(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let who = principal(&app, req.headers());
    let (admin, alerter) = (who == Some(Principal::Operator), who == Some(Principal::Alerter));
    if alerter && !req.uri().path().starts_with("/v1/alerts") {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may only post alerts (POST /v1/alerts, /v1/alerts/fastnetmon)",
        )
        .into_response();
    }
    if !admin && !alerter {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token: send `Authorization: Bearer <token from the token file>`",
        )
        .into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

async fn fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see GET /v1/status and the README's API section")
}

pub fn router(app: Shared, max_body: usize, body_timeout: std::time::Duration) -> Router {
    let v1 = Router::new()
        .route("/v1/status", get(status::status))
        .route("/v1/vectors", get(status::vectors))
        .route("/v1/policies", get(policies::list).post(policies::create))
        .route("/v1/policies/{id}", get(policies::show).put(policies::replace).patch(policies::patch).delete(policies::delete))
        .route("/v1/allowlist", get(allowlist::list).post(allowlist::create))
        .route("/v1/allowlist/{id}", axum::routing::delete(allowlist::delete))
        .route("/v1/counters", get(policies::counters))
        .route("/v1/detection", get(status::detection))
        .route("/v1/capture", get(capture::capture))
        .route("/v1/alerts", post(alerts::generic))
        .route("/v1/alerts/fastnetmon", post(alerts::fastnetmon))
        .route("/v1/detach", post(enforcement::detach))
        .route("/v1/attach", post(enforcement::attach))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics::metrics))
        .merge(v1)
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(app.clone(), metrics::count_requests))
        .layer(middleware::from_fn_with_state(audit::Audit::new(app.clone()), audit::audit))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_timeout))
        .with_state(app)
}
