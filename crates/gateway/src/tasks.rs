//! What the task routes of every family share: the request body, the
//! `Idempotency-Key`, a task read for its owner within one family, and its signed
//! result URLs.

use actix_web::{HttpRequest, web};
use bytes::Bytes;
use relay_core::RelayError;
use relay_core::pipeline::read_limited;
use relay_core::task::veo;
use store::entities::task;

use crate::relay::client_ip;
use crate::state::AppState;

/// The request's body, up to `TOLLGATE_MAX_BODY_MB`.
pub async fn body(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Bytes, RelayError> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    read_limited(payload, declared, state.config.max_body_mb).await
}

/// The client's `Idempotency-Key`.
pub fn idempotency_key(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Task `id` of `family` for the caller behind `key` (refreshed from the upstream
/// when stale); any other task, or another family's, is 404.
pub async fn read(
    state: &AppState,
    req: &HttpRequest,
    key: Option<&str>,
    id: &str,
    family: &str,
) -> Result<task::Model, RelayError> {
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    let caller = state.jobs.caller(routing, key, client_ip(state, req))?;
    let t = state
        .jobs
        .read(&state.pipeline, routing, &caller, id)
        .await?;
    if t.family != family {
        return Err(RelayError::NotFound(format!("no task '{id}'")));
    }
    Ok(t)
}

/// Task `id` for the caller behind `key`, as stored (no refresh); another user's
/// task, or one of another family than `family` when named, is 404.
pub async fn owned(
    state: &AppState,
    req: &HttpRequest,
    key: Option<&str>,
    id: &str,
    family: Option<&str>,
) -> Result<task::Model, RelayError> {
    let snap = state.snapshot.load_full();
    let caller = state
        .jobs
        .caller(snap.routing(), key, client_ip(state, req))?;
    let t = state.jobs.owned(&caller, id).await?;
    if family.is_some_and(|f| f != t.family) {
        return Err(RelayError::NotFound(format!("no task '{id}'")));
    }
    Ok(t)
}

/// The signed URLs of a finished task's results (none before it succeeds): Gemini-API
/// file URIs for Veo, Tollgate content URLs for the others.
pub fn result_urls(state: &AppState, req: &HttpRequest, t: &task::Model) -> Vec<String> {
    if t.state != "succeeded" {
        return Vec::new();
    }
    let base = crate::seedance::public_base(state, req);
    if t.family == veo::FAMILY {
        state.jobs.signed_file_uris(t, &base)
    } else {
        state.jobs.signed_urls(t, &base)
    }
}

#[derive(serde::Deserialize)]
struct Ids {
    #[serde(default)]
    ids: Option<Vec<String>>,
}

/// The most tasks one batch read (`list-by-condition`, Suno's `fetch`) names.
pub const MANY_MAX: usize = 500;

/// The caller's tasks of `family` among a body's `{ids}` (`null` or none: none), in
/// id order; any other id, another user's or another family's, is left out, as the
/// upstreams leave out ids they do not know.
pub async fn many(
    state: &AppState,
    req: &HttpRequest,
    key: Option<&str>,
    payload: web::Payload,
    family: &str,
) -> Result<Vec<task::Model>, RelayError> {
    let snap = state.snapshot.load_full();
    let caller = state
        .jobs
        .caller(snap.routing(), key, client_ip(state, req))?;
    let raw = body(state, req, payload).await?;
    let ids = serde_json::from_slice::<Ids>(&raw)
        .map_err(|_| RelayError::InvalidRequest("the body must be {\"ids\": [task ids]}".into()))?
        .ids
        .unwrap_or_default();
    if ids.len() > MANY_MAX {
        return Err(RelayError::InvalidRequest(format!(
            "at most {MANY_MAX} ids at once"
        )));
    }
    billing::task::find_many_owned(&state.db, &ids, caller.user.id, family)
        .await
        .map_err(|e| {
            tracing::error!(error = ?e, "reading tasks failed");
            RelayError::ServiceUnavailable
        })
}
