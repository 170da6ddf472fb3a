//! GET /v1/capture?count=N&victim=PREFIX&seconds=S&format=pcapng|pcap: a
//! pcapng (default; each packet's comment says its verdict, vector, policy
//! and victim) or classic pcap of sampled dropped, rate-limited and monitored
//! packets (first 128 bytes each).
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
    #[serde(default)]
    format: Option<capture::Format>,
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
    let format = q.format.unwrap_or_default();
    let body = match format {
        capture::Format::Pcap => capture::to_pcap(&samples),
        capture::Format::Pcapng => capture::to_pcapng(&samples, &comments(&app, &samples).await),
    };
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    h.insert("x-ampguard-samples", HeaderValue::from(samples.len()));
    Ok(res)
}

/// Each sample's pcapng comment. The policy is looked up when the capture
/// ends, by the slot the program recorded; a slot whose policy was removed
/// meanwhile (or now holds a victim that does not contain the packet's
/// destination) says "unknown" rather than name the wrong one.
async fn comments(app: &Shared, samples: &[std::sync::Arc<capture::Captured>]) -> Vec<String> {
    use std::collections::{HashMap, HashSet};
    use xdp_common::counters::verdict;
    let store = app.store.lock().await;
    let wanted: HashSet<u32> = samples.iter().map(|s| s.slot).collect();
    let mut by_slot = HashMap::new();
    if !wanted.is_empty() {
        for p in store.policies() {
            if let Some(slot) = store.dataplane().slot_of(&p.victim).filter(|s| wanted.contains(s)) {
                by_slot.insert(slot, (p.id.clone(), p.victim));
            }
        }
    }
    samples
        .iter()
        .map(|s| {
            let verdict = verdict::NAMES.get(s.verdict as usize).copied().unwrap_or("unknown");
            let vector = store.vectors().name_of(s.vector).unwrap_or("unknown");
            let policy = by_slot.get(&s.slot).filter(|(_, v)| s.dst().is_some_and(|d| v.contains(&d))).map(|(id, v)| (id.as_str(), v));
            capture::comment(verdict, vector, policy)
        })
        .collect()
}
