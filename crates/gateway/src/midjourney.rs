//! Midjourney in the midjourney-proxy shape (seeds `002`, `003`): `POST /mj/submit/*`,
//! `GET /mj/task/{id}/fetch`, `POST /mj/task/list-by-condition`,
//! `GET /mj/task/{id}/image-seed` and `GET /mj/image/{id}`, served by `midjourney`
//! channels on the task engine. The client's key comes as `Authorization: Bearer` or,
//! as midjourney-proxy clients send it, `mj-api-secret`. Answers keep the proxy's
//! envelope and codes; image URLs are Tollgate's signed ones.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use relay_core::RelayError;
use relay_core::task::{TaskRequest, midjourney};
use serde::Deserialize;
use serde_json::{Value, json};
use store::entities::task;

use crate::relay::{bearer, client_ip};
use crate::state::AppState;

/// Mounts the submit routes and the task routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for (route, _) in midjourney::SUBMITS {
        cfg.route(
            &format!("/mj/submit/{route}"),
            web::post().to(move |state, req, payload| submit(state, req, payload, route)),
        );
    }
    cfg.route(
        "/mj/insight-face/swap",
        web::post().to(|state, req, payload| submit(state, req, payload, "swap_face")),
    )
    .route("/mj/task/list-by-condition", web::post().to(list))
    .route("/mj/task/{id}/fetch", web::get().to(fetch))
    .route("/mj/task/{id}/image-seed", web::get().to(image_seed))
    .route("/mj/image/{id}", web::get().to(image));
}

/// The client's key: `Authorization: Bearer`, or `mj-api-secret` (what
/// midjourney-proxy clients send).
fn key(req: &HttpRequest) -> Option<&str> {
    bearer(req)
        .filter(|k| !k.is_empty() && *k != "midjourney-proxy")
        .or_else(|| {
            req.headers()
                .get("mj-api-secret")
                .and_then(|v| v.to_str().ok())
        })
}

/// An error in the proxy's envelope. An upstream's refusal with a code of its own (23
/// queue full, 24 banned prompt, 4 invalid) answers as midjourney-proxy does: status
/// 200 and that code; any other error keeps its HTTP status.
fn error(e: &RelayError) -> HttpResponse {
    let code = midjourney::error_code(e);
    let upstream = match e {
        RelayError::Rejected {
            body: Some(body), ..
        } => serde_json::from_slice::<Value>(body)
            .ok()
            .filter(|v| v.get("code").and_then(Value::as_i64).is_some()),
        _ => None,
    };
    let mut properties = serde_json::Map::new();
    if let Some(word) = upstream
        .as_ref()
        .and_then(|v| v.pointer("/properties/bannedWord"))
        .and_then(Value::as_str)
    {
        properties.insert("bannedWord".into(), json!(relay_core::error::redact(word)));
    }
    let body = json!({
        "code": code,
        "description": relay_core::error::redact(&e.to_string()),
        "result": Value::Null,
        "properties": properties,
    });
    if upstream.is_some() {
        return HttpResponse::Ok().json(body);
    }
    crate::relay::error_with_body(e, "", Bytes::from(body.to_string()))
}

/// Whether `parent` is a task `ask` may act on: a finished one for a button or a
/// change (with the button among its own), a task waiting for its modal for `modal`.
fn check_parent(ask: &midjourney::Ask, parent: &task::Model) -> Result<(), RelayError> {
    let id = &parent.id;
    if ask.route == "modal" {
        let waiting = parent.upstream_status.as_deref() == Some("MODAL")
            && matches!(parent.state.as_str(), "queued" | "in_progress");
        if !waiting {
            return Err(RelayError::InvalidRequest(format!(
                "task '{id}' is not waiting for a modal"
            )));
        }
        return Ok(());
    }
    if parent.state != "succeeded" {
        return Err(RelayError::InvalidRequest(format!(
            "task '{id}' is {}: only a finished task can be acted on",
            parent.state
        )));
    }
    if let Some(custom_id) = &ask.custom_id {
        let offered = midjourney::buttons(parent)
            .iter()
            .any(|b| b.get("customId").and_then(Value::as_str) == Some(custom_id.as_str()));
        if !offered {
            return Err(RelayError::InvalidRequest(format!(
                "'customId' is not one of task '{id}''s buttons"
            )));
        }
    }
    Ok(())
}

async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    route: &'static str,
) -> HttpResponse {
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    let ip = client_ip(&state, &req);
    let caller = match state.jobs.caller(routing, key(&req), ip) {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let raw = match crate::tasks::body(&state, &req, payload).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let ask = match midjourney::parse(route, &raw) {
        Ok(a) => a,
        Err(e) => return error(&e),
    };
    let parent = match &ask.parent {
        Some(id) => {
            let found = state
                .jobs
                .owned(&caller, id)
                .await
                .and_then(|p| {
                    if p.family == midjourney::FAMILY {
                        Ok(p)
                    } else {
                        Err(RelayError::NotFound(format!("no task '{id}'")))
                    }
                })
                .and_then(|p| check_parent(&ask, &p).map(|()| p));
            match found {
                Ok(p) => Some(p),
                Err(e) => return error(&e),
            }
        }
        None => None,
    };
    let upload = ask.route == "upload-discord-images";
    let waiting = parent.clone().filter(|_| ask.route == "modal");
    let task = TaskRequest {
        key: key(&req).map(str::to_owned),
        ip,
        family: midjourney::FAMILY,
        action: ask.action,
        model: ask.model.to_owned(),
        parent,
        seconds: 0,
        tokens: 0,
        images: 0,
        meta: json!({
            "prompt": ask.prompt,
            "state": ask.state,
            "botType": ask.body.get("botType"),
            "customId": ask.custom_id,
        }),
        idempotency_key: crate::tasks::idempotency_key(&req),
        hook: ask.hook.clone(),
        price_model: ask.price_model.clone(),
        price_variants: ask.variant.map(|v| vec![v.to_owned()]).unwrap_or_default(),
        base: Some(crate::seedance::public_base(&state, &req)),
        fingerprint: format!("{}\n{:?}", ask.fingerprint, ask.parent),
        endpoint: ask.path,
        build: Box::new(move |_, _, parent| midjourney::submission(&ask, parent)),
    };
    match state.jobs.submit(&state.pipeline, routing, task).await {
        Ok(t) if upload => {
            if t.state != "succeeded" {
                return error(&RelayError::Upstream);
            }
            HttpResponse::Ok()
                .insert_header((crate::relay::GENERATION_HEADER, t.id.clone()))
                .json(json!({
                    "code": midjourney::code::SUBMITTED,
                    "description": "Submit success",
                    "result": midjourney::uploads(&t),
                    "properties": {},
                }))
        }
        Ok(t) => {
            // The modal carries the waiting task's job on: that task is released, so
            // the job is charged once, as the modal.
            if let Some(waiting) = &waiting
                && t.state != "failed"
                && let Err(e) = state.jobs.supersede(waiting, &t.id).await
            {
                tracing::error!(error = %e, task.id = %waiting.id, "releasing a task its modal took over failed");
            }
            HttpResponse::Ok()
                .insert_header((crate::relay::GENERATION_HEADER, t.id.clone()))
                .json(midjourney::submitted_json(&t))
        }
        Err(e) => error(&e),
    }
}

/// A task as the proxy shows it, with its signed image URL once it has one.
fn answer(state: &AppState, req: &HttpRequest, t: &task::Model) -> Value {
    midjourney::task_json(t, &crate::tasks::result_urls(state, req, t))
}

/// `GET /mj/task/{id}/fetch`.
async fn fetch(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    match crate::tasks::read(&state, &req, key(&req), &path, midjourney::FAMILY).await {
        Ok(t) => HttpResponse::Ok().json(answer(&state, &req, &t)),
        Err(e) => error(&e),
    }
}

/// `POST /mj/task/list-by-condition {ids}`: those of the caller's tasks.
async fn list(state: web::Data<AppState>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    match crate::tasks::many(&state, &req, key(&req), payload, midjourney::FAMILY).await {
        Ok(tasks) => HttpResponse::Ok().json(
            tasks
                .iter()
                .map(|t| answer(&state, &req, t))
                .collect::<Vec<_>>(),
        ),
        Err(e) => error(&e),
    }
}

/// `GET /mj/task/{id}/image-seed`: the seed of a finished task's image, asked of the
/// upstream that made it.
async fn image_seed(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let t =
        match crate::tasks::owned(&state, &req, key(&req), &path, Some(midjourney::FAMILY)).await {
            Ok(t) => t,
            Err(e) => return error(&e),
        };
    if t.state != "succeeded" {
        return error(&RelayError::InvalidRequest(format!(
            "task '{}' is {}: only a finished task has a seed",
            t.id, t.state
        )));
    }
    let snap = state.snapshot.load_full();
    let body = state
        .jobs
        .upstream_get(&state.pipeline, snap.routing(), &t, |id| {
            format!(
                "/mj/task/{}/image-seed",
                relay_core::task::videos::encode_segment(id)
            )
        })
        .await;
    let seed =
        body.and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|_| RelayError::Upstream));
    match seed {
        Ok(v) => HttpResponse::Ok().json(json!({
            "code": v.get("code").and_then(Value::as_i64).unwrap_or(midjourney::code::FAILURE),
            "description": v.get("description").and_then(Value::as_str).map(relay_core::error::redact).unwrap_or_default(),
            "result": v.get("result").filter(|r| r.is_string() || r.is_number()).cloned().unwrap_or(Value::Null),
            "properties": {},
        })),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct Signed {
    expires: Option<i64>,
    signature: Option<String>,
}

/// `GET /mj/image/{id}`: a finished task's image, streamed from its upstream, for
/// whoever holds its signed URL (until it expires) or for its owner's key; anything
/// else is 404.
async fn image(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<Signed>,
) -> HttpResponse {
    let not_found = || error(&RelayError::NotFound(format!("no task '{path}'")));
    let t = match (query.expires, &query.signature) {
        (Some(expires), Some(signature)) => {
            if expires < chrono::Utc::now().timestamp() {
                return not_found();
            }
            let t = match billing::task::find(&state.db, &path).await {
                Ok(Some(t)) if t.deleted_at.is_none() && t.family == midjourney::FAMILY => t,
                Ok(_) => return not_found(),
                Err(e) => {
                    tracing::error!(error = ?e, "reading a task failed");
                    return error(&RelayError::ServiceUnavailable);
                }
            };
            if !state.secrets.verify(
                &relay_core::task::url_message(&t.id, t.user_id, expires),
                signature,
            ) {
                return not_found();
            }
            t
        }
        _ => match crate::tasks::owned(&state, &req, key(&req), &path, Some(midjourney::FAMILY))
            .await
        {
            Ok(t) => t,
            Err(e) => return error(&e),
        },
    };
    let snap = state.snapshot.load_full();
    let resp = crate::videos::stream_content(&state, snap.routing(), &req, &t, "").await;
    if resp.status() == StatusCode::BAD_REQUEST {
        return not_found();
    }
    resp
}
