//! The audit trail: one log line (target `ampguard::audit`, structured
//! fields) for every request that changes something or was refused.
//!
//! A middleware over the whole router, so every mutating route (POST, PUT,
//! PATCH, DELETE) is covered without a call in its handler: who (the operator
//! token or the alert-only token, and the client's address), what (read from
//! the record the handler answers with: id, victim or prefix, profile, rules,
//! mode, expiry, comment, alert source and result, enforcement state after
//! an operator's detach or attach; a handler whose answer has
//! no body, a DELETE, attaches the removed record as an [`Audited`] response
//! extension) and the result (HTTP status, error code and message).
//!
//! Refusals (any other answer to a mutating request: 4xx, 507 full table;
//! and 401/403 to any request) and alerts that changed nothing are
//! rate-limited: at most [`REFUSALS_PER_SEC`] lines a second (bursts of
//! [`REFUSAL_BURST`]), then one summary line a second with the number left
//! out, so a flood of bad requests cannot fill the disk. Changes and 500s
//! (e.g. a change in force but not saved) are always logged.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{header, Method, StatusCode},
    middleware::Next,
    response::Response,
    Extension,
};
use serde_json::Value;

use super::{principal, Principal, Shared};

/// Refusal lines logged per second, on average.
pub const REFUSALS_PER_SEC: f64 = 10.0;
/// Refusal lines logged at once before the rate applies.
pub const REFUSAL_BURST: f64 = 20.0;

/// What a handler changed, when its response body does not say (a 204).
#[derive(Clone, Debug)]
pub struct Audited(pub Value);

/// The record a DELETE removed, for the audit line.
pub fn removed<T: serde::Serialize>(rec: &T) -> Extension<Audited> {
    Extension(Audited(serde_json::to_value(rec).unwrap_or(Value::Null)))
}

/// The error an [`super::ApiError`] response carries (set in its `into_response`).
#[derive(Clone, Debug)]
pub struct ErrorInfo {
    pub code: &'static str,
    pub message: String,
}

/// Token bucket for refusal lines, and the count of those left out.
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
    /// A summary line is due (a task will write it).
    summary_due: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Log,
    /// Left out; true for the first since the last summary (schedule one).
    Suppressed(bool),
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Bucket { tokens: REFUSAL_BURST, last: now, suppressed: 0, summary_due: false }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * REFUSALS_PER_SEC).min(REFUSAL_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admit::Log;
        }
        self.suppressed += 1;
        let first = !self.summary_due;
        self.summary_due = true;
        Admit::Suppressed(first)
    }

    fn take_summary(&mut self) -> u64 {
        self.summary_due = false;
        std::mem::take(&mut self.suppressed)
    }
}

#[derive(Clone)]
pub struct Audit {
    app: Shared,
    bucket: Arc<Mutex<Bucket>>,
}

impl Audit {
    pub fn new(app: Shared) -> Self {
        Audit { app, bucket: Arc::new(Mutex::new(Bucket::new(Instant::now()))) }
    }

    /// May a refusal line be written now? If not, count it, and make sure a
    /// summary follows within a second.
    fn admit_refusal(&self) -> bool {
        let admit = self.bucket.lock().expect("not poisoned").admit(Instant::now());
        match admit {
            Admit::Log => true,
            Admit::Suppressed(first) => {
                if first {
                    let bucket = self.bucket.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let n = bucket.lock().expect("not poisoned").take_summary();
                        tracing::warn!(target: "ampguard::audit", event = "suppressed", suppressed = n,
                            "audit: {n} more refused requests in the last second not logged (at most {REFUSALS_PER_SEC} lines a second)");
                    });
                }
                false
            }
        }
    }
}

fn is_mutating(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// The fields of an audit line, from the request and the response.
#[derive(Default, Debug)]
struct Details {
    id: Option<String>,
    victim: Option<String>,
    prefix: Option<String>,
    profile: Option<String>,
    rules: Option<String>,
    mode: Option<String>,
    expires_at: Option<String>,
    ttl_secs: Option<u64>,
    comment: Option<String>,
    source: Option<String>,
    result: Option<String>,
    /// POST /v1/detach, /v1/attach: "detached_by_operator" or "enforcing".
    enforcement: Option<String>,
}

/// "memcached=drop ntp=drop[signature]/limit(100pps,1000000bps) ...": each
/// rule's action, conditions and limits, in one field.
fn rules_summary(rules: &Value) -> Option<String> {
    let rules = rules.as_object()?;
    let mut out = Vec::new();
    for (vector, r) in rules {
        let s = |k: &str| r.get(k).and_then(Value::as_str);
        let n = |k: &str| r.get(k).and_then(Value::as_u64);
        let mut one = format!("{vector}={}", s("action").unwrap_or("?"));
        let mut conds = Vec::new();
        if r.get("signature").and_then(Value::as_bool) == Some(true) {
            conds.push("signature".to_string());
        }
        if let Some(b) = n("min_bytes") {
            conds.push(format!("min_bytes={b}"));
        }
        if let Some(b) = n("max_bytes") {
            conds.push(format!("max_bytes={b}"));
        }
        if !conds.is_empty() {
            one.push_str(&format!("[{}]/{}", conds.join(","), s("otherwise").unwrap_or("pass")));
        }
        let limits: Vec<String> =
            [n("pps").map(|p| format!("{p}pps")), n("bps").map(|b| format!("{b}bps"))].into_iter().flatten().collect();
        if !limits.is_empty() {
            one.push_str(&format!("({})", limits.join(",")));
        }
        out.push(one);
    }
    Some(out.join(" "))
}

impl Details {
    /// From a policy record, an allowlist record or an alert outcome (whose
    /// `policy` is the record).
    fn from_json(v: &Value) -> Details {
        let rec = v.get("policy").filter(|p| p.is_object()).unwrap_or(v);
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let expires_at = s(rec, "expires_at");
        let ttl_secs = expires_at
            .as_deref()
            .and_then(|e| humantime::parse_rfc3339(e).ok())
            .map(|e| e.duration_since(SystemTime::now()).unwrap_or_default().as_secs());
        Details {
            id: s(rec, "id"),
            victim: s(rec, "victim"),
            prefix: s(rec, "prefix"),
            profile: s(rec, "profile"),
            rules: rec.get("rules").and_then(rules_summary),
            mode: s(rec, "mode"),
            expires_at,
            ttl_secs,
            comment: s(rec, "comment"),
            source: s(rec, "source"),
            result: s(v, "result"),
            enforcement: s(v, "enforcement"),
        }
    }
}

/// The middleware (outside the token check, so it sees 401 and 403).
pub async fn audit(State(audit): State<Audit>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let who = match principal(&audit.app, req.headers()) {
        Some(Principal::Operator) => "operator",
        Some(Principal::Alerter) => "alert_token",
        None => "none",
    };
    let res = next.run(req).await;
    let status = res.status();
    let refused_auth = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    if !is_mutating(&method) && !refused_auth {
        return res;
    }

    let (res, details) = if status.is_success() { read_details(res).await } else { (res, Details::default()) };
    let error = res.extensions().get::<ErrorInfo>().cloned();
    let ignored = details.result.as_deref() == Some("ignored");
    let client = client.map(|c| c.to_string());
    let (code, message) = (error.as_ref().map(|e| e.code), error.as_ref().map(|e| e.message.as_str()));

    macro_rules! audit_line {
        ($level:ident, $event:expr, $msg:expr) => {
            tracing::$level!(
                target: "ampguard::audit",
                event = $event,
                who,
                client = client.as_deref(),
                method = method.as_str(),
                path = path.as_str(),
                status = status.as_u16(),
                id = details.id.as_deref(),
                victim = details.victim.as_deref(),
                prefix = details.prefix.as_deref(),
                profile = details.profile.as_deref(),
                rules = details.rules.as_deref(),
                mode = details.mode.as_deref(),
                expires_at = details.expires_at.as_deref(),
                ttl_secs = details.ttl_secs,
                comment = details.comment.as_deref(),
                source = details.source.as_deref(),
                result = details.result.as_deref(),
                enforcement = details.enforcement.as_deref(),
                code,
                error = message,
                $msg
            )
        };
    }
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        audit_line!(error, "failed", "audit: request failed");
    } else if status.is_success() && !ignored {
        audit_line!(info, "change", "audit: change");
    } else if audit.admit_refusal() {
        if ignored {
            audit_line!(info, "ignored", "audit: alert changed nothing");
        } else {
            audit_line!(warn, "refused", "audit: refused");
        }
    }
    res
}

/// The record in a JSON answer (or the [`Audited`] extension), leaving the
/// response as it was.
async fn read_details(res: Response) -> (Response, Details) {
    if let Some(a) = res.extensions().get::<Audited>() {
        let d = Details::from_json(&a.0);
        return (res, d);
    }
    let is_json = res.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return (res, Details::default());
    }
    let (parts, body) = res.into_parts();
    // Our own answer, already in memory (a record or an alert outcome).
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => {
            let d = serde_json::from_slice::<Value>(&bytes).map(|v| Details::from_json(&v)).unwrap_or_default();
            (Response::from_parts(parts, Body::from(bytes)), d)
        }
        Err(e) => {
            tracing::error!("audit: reading the response body: {e}");
            (Response::from_parts(parts, Body::empty()), Details::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_lines_are_a_token_bucket_with_one_summary_per_gap() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        // A burst of REFUSAL_BURST lines, then suppression; only the first
        // suppressed one schedules the summary.
        for _ in 0..REFUSAL_BURST as usize {
            assert_eq!(b.admit(t0), Admit::Log);
        }
        assert_eq!(b.admit(t0), Admit::Suppressed(true));
        assert_eq!(b.admit(t0), Admit::Suppressed(false));
        assert_eq!(b.admit(t0), Admit::Suppressed(false));
        assert_eq!(b.take_summary(), 3);
        assert_eq!(b.take_summary(), 0);
        // 100 ms later one token has come back, not more.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.admit(t1), Admit::Log);
        assert_eq!(b.admit(t1), Admit::Suppressed(true));
        // Over a long flood, the lines logged follow the rate.
        let mut logged = 0;
        for i in 1..=10_000u64 {
            if b.admit(t1 + Duration::from_millis(i)) == Admit::Log {
                logged += 1;
            }
        }
        assert!((95..=105).contains(&logged), "{logged} lines in 10 s");
        // A quiet spell refills the burst, no more.
        let t2 = t1 + Duration::from_secs(3600);
        let burst = (0..100).filter(|_| b.admit(t2) == Admit::Log).count();
        assert_eq!(burst, REFUSAL_BURST as usize);
    }

    #[test]
    fn details_come_from_policy_records_alert_outcomes_and_allowlist_records() {
        let rec = serde_json::json!({
            "id": "p-7", "victim": "203.0.113.10/32", "profile": "default", "mode": "monitor", "comment": "ticket 4711", "source": "api",
            "expires_at": "2999-01-01T00:00:00Z",
            "rules": {"memcached": {"action": "drop"}, "ntp": {"action": "drop", "signature": true, "otherwise": "limit", "pps": 100, "bps": 1000000}}
        });
        let d = Details::from_json(&rec);
        assert_eq!(d.id.as_deref(), Some("p-7"));
        assert_eq!(d.victim.as_deref(), Some("203.0.113.10/32"));
        assert_eq!(d.mode.as_deref(), Some("monitor"));
        assert_eq!(d.comment.as_deref(), Some("ticket 4711"));
        assert_eq!(d.rules.as_deref(), Some("memcached=drop ntp=drop[signature]/limit(100pps,1000000bps)"));
        assert!(d.ttl_secs.unwrap() > 365 * 86400);
        let d = Details::from_json(&serde_json::json!({"result": "created", "policy": rec, "message": "created policy p-7"}));
        assert_eq!((d.result.as_deref(), d.id.as_deref()), (Some("created"), Some("p-7")));
        let d = Details::from_json(&serde_json::json!({"result": "ignored", "message": "203.0.113.10 has no policy"}));
        assert_eq!((d.result.as_deref(), d.id), (Some("ignored"), None));
        let d = Details::from_json(&serde_json::json!({"id": "a-1", "prefix": "192.0.2.53/32"}));
        assert_eq!((d.id.as_deref(), d.prefix.as_deref(), d.victim), (Some("a-1"), Some("192.0.2.53/32"), None));
        let d = Details::from_json(&serde_json::json!({"enforcement": "detached_by_operator", "detached": ["edge0"]}));
        assert_eq!(d.enforcement.as_deref(), Some("detached_by_operator"));
    }
}
