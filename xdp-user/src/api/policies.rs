//! /v1/policies: list (or look up by victim), create, show, replace, change (merge), delete.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Map, Value};
use xdp_common::counters::verdict;

use super::{parse_json, ApiError, Shared};
use crate::store::{
    parse_prefix,
    record::{Origin, PolicyRecord},
    PolicyPatch, PolicyRequest,
};

fn view(p: &PolicyRecord) -> Value {
    serde_json::to_value(p).expect("record serializes")
}

/// GET /v1/policies[?limit=N[&cursor=C]]: every policy, or a page of them in
/// creation order with `next_cursor` when more follow. Serialized straight
/// from the records: at 100,000 policies a `Value` tree per record would take
/// hundreds of MB for one response.
/// `?victim=PREFIX` lists the policy for exactly that prefix (an address means
/// its /32 or /128), `?covering=ADDRESS` the one the data plane applies to that
/// address (the longest victim prefix holding it): zero or one policy.
pub async fn list(
    State(app): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    #[derive(serde::Serialize)]
    struct List<'a> {
        policies: Vec<&'a PolicyRecord>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_cursor: Option<String>,
    }
    let number = |k: &str| -> Result<Option<u64>, ApiError> {
        q.get(k).map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("{k} must be a whole number, not {v:?}")))).transpose()
    };
    let (limit, cursor) = (number("limit")?, number("cursor")?);
    if limit == Some(0) {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    let lookup = match (q.get("victim"), q.get("covering")) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give victim or covering, not both")),
        (Some(v), None) => Some((false, v)),
        (None, Some(a)) => Some((true, a)),
        (None, None) => None,
    };
    if let Some((covering, arg)) = lookup {
        if limit.is_some() || cursor.is_some() {
            return Err(ApiError::bad_request("victim and covering find at most one policy; they take no limit or cursor"));
        }
        let store = app.store.lock().await;
        let found = if covering {
            let addr: std::net::IpAddr =
                arg.trim().parse().map_err(|_| ApiError::bad_request(format!("covering takes an address, not {arg:?}")))?;
            store.policy_covering(addr.to_canonical())
        } else {
            store.policy_by_victim(&parse_prefix(arg)?)
        };
        let list = List { policies: found.map(|p| &**p).into_iter().collect(), next_cursor: None };
        return Ok(Json(serde_json::to_value(&list).expect("records serialize")).into_response());
    }
    let store = app.store.lock().await;
    let (page, next) = store.policy_page(cursor.unwrap_or(0), limit.map_or(usize::MAX, |l| l as usize));
    let list = List { policies: page.into_iter().map(|p| &**p).collect(), next_cursor: next.map(|n| n.to_string()) };
    let body = serde_json::to_vec(&list).expect("records serialize");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub async fn create(State(app): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: PolicyRequest = parse_json(body)?;
    let rec = super::change(&app, |s| s.create_policy(req, Origin::Api)).await?;
    tracing::info!(id = rec.id, victim = %rec.victim, "policy created");
    Ok((StatusCode::CREATED, Json(view(&rec))))
}

/// Counters of one slot, by vector name and verdict (non-zero only); the
/// vectors the policy does not name are summed under `_unlisted`.
fn counters_of(store: &crate::store::Store, slot: u32) -> Result<Map<String, Value>, ApiError> {
    let counts = store.dataplane().policy_counts(slot).map_err(crate::store::StoreError::from)?;
    let by_verdict = |c: &xdp_common::counters::VerdictCounters| -> Value {
        Value::Object(
            verdict::NAMES
                .iter()
                .zip(c.by_verdict.iter())
                .map(|(n, x)| (n.to_string(), json!({"packets": x.packets, "bytes": x.bytes})))
                .collect(),
        )
    };
    let mut out = Map::new();
    for (i, c) in counts.by_vector.iter().enumerate() {
        if c.by_verdict.iter().all(|x| x.packets == 0) {
            continue;
        }
        let name = store.vectors().name_of(i as u8).unwrap_or("unknown").to_string();
        out.insert(name, by_verdict(c));
    }
    if counts.unlisted.by_verdict.iter().any(|x| x.packets != 0) {
        out.insert(crate::vectors::UNLISTED.to_string(), by_verdict(&counts.unlisted));
    }
    Ok(out)
}

/// GET /v1/counters?limit=N: every policy's counters in one call (for `ampguard top`).
pub async fn counters(
    State(app): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit: usize = match q.get("limit") {
        Some(l) => l.parse().map_err(|_| ApiError::bad_request("limit must be a number"))?,
        None => 1000,
    };
    let store = app.store.lock().await;
    let mut list = Vec::new();
    for p in store.policies().take(limit) {
        let Some(slot) = store.dataplane().slot_of(&p.victim) else { continue };
        list.push(json!({"id": p.id, "victim": p.victim, "mode": p.mode, "counters": counters_of(&store, slot)?}));
    }
    Ok(Json(json!({"uptime_ms": app.started.elapsed().as_millis() as u64, "policies": list})))
}

/// One policy, with its counters per vector and verdict.
pub async fn show(State(app): State<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let store = app.store.lock().await;
    let rec = store.policy(&id)?;
    let mut v = view(rec);
    if let Some(slot) = store.dataplane().slot_of(&rec.victim) {
        v["counters"] = Value::Object(counters_of(&store, slot)?);
    }
    Ok(Json(v))
}

/// PATCH: merge a change into a policy (see `PolicyPatch`), validated like a create.
pub async fn patch(
    State(app): State<Shared>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: PolicyPatch = parse_json(body)?;
    let rec = super::change(&app, |s| s.patch_policy(&id, req)).await?;
    tracing::info!(id = rec.id, victim = %rec.victim, "policy changed");
    Ok(Json(view(&rec)))
}

pub async fn replace(
    State(app): State<Shared>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: PolicyRequest = parse_json(body)?;
    let rec = super::change(&app, |s| s.replace_policy(&id, req)).await?;
    tracing::info!(id = rec.id, victim = %rec.victim, "policy replaced");
    Ok(Json(view(&rec)))
}

pub async fn delete(State(app): State<Shared>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let rec = super::change(&app, |s| s.delete_policy(&id)).await?;
    tracing::info!(id = rec.id, victim = %rec.victim, "policy deleted");
    Ok((StatusCode::NO_CONTENT, super::audit::removed(&*rec)))
}
