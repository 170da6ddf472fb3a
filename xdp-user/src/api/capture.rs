//! GET /v1/capture?count=N&victim=PREFIX&seconds=S: a pcap of sampled
//! dropped, rate-limited and monitored packets (first 128 bytes each).
//! Sampling is on in the data plane only while a capture runs.

use std::time::Duration;

use axum::{
    extract::{Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{ApiError, Shared};
use crate::{capture, store::parse_prefix};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureQuery {
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    victim: Option<String>,
    #[serde(default)]
    seconds: Option<u64>,
}

/// Unregisters the capture when it ends, also if the request is dropped
/// half-way (client gone). The store's lock orders this after any start.
struct Active(Shared);

impl Drop for Active {
    fn drop(&mut self) {
        let app = self.0.clone();
        tokio::spawn(async move {
            let mut store = app.store.lock().await;
            app.capture.stop(store.dataplane_mut());
        });
    }
}

pub async fn capture(
    State(app): State<Shared>,
    q: Result<Query<CaptureQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let count = q.count.unwrap_or(100);
    if !(1..=10_000).contains(&count) {
        return Err(ApiError::bad_request("count must be in 1..=10000"));
    }
    let seconds = q.seconds.unwrap_or(10);
    if !(1..=300).contains(&seconds) {
        return Err(ApiError::bad_request("seconds must be in 1..=300"));
    }
    let victim = q.victim.as_deref().map(parse_prefix).transpose()?;

    let mut rx = app.capture.subscribe();
    {
        let mut store = app.store.lock().await;
        let per_sec = store.config().capture_samples_per_sec;
        app.capture.start(store.dataplane_mut(), per_sec).map_err(crate::store::StoreError::from)?;
    }
    let active = Active(app.clone());
    let samples = capture::collect(&mut rx, count, victim, Duration::from_secs(seconds)).await;
    drop(active);
    let mut res = (StatusCode::OK, capture::to_pcap(&samples)).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.tcpdump.pcap"));
    h.insert("x-ampguard-samples", HeaderValue::from(samples.len()));
    Ok(res)
}
