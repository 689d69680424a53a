//! Suno in the shape relays sell it (seed `002`): `POST /suno/submit/music`,
//! `POST /suno/submit/lyrics`, `GET /suno/fetch/{id}` and `POST /suno/fetch {ids}`,
//! served by `suno` channels on the task engine. Answers and errors are the
//! `{code, message, data}` envelope; clip files are Tollgate's signed URLs.

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use relay_core::RelayError;
use relay_core::task::{TaskRequest, suno};
use serde_json::{Value, json};
use store::entities::task;

use crate::relay::{bearer, client_ip};
use crate::state::AppState;

/// Mounts the Suno routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/suno/submit/{action}", web::post().to(submit))
        .route("/suno/fetch", web::post().to(fetch_many))
        .route("/suno/fetch/{id}", web::get().to(fetch));
}

/// An error in Suno's envelope.
fn error(e: &RelayError) -> HttpResponse {
    let body = json!({
        "code": suno::error_code(e),
        "message": relay_core::error::redact(&e.to_string()),
        "data": Value::Null,
    });
    crate::relay::error_with_body(e, "", Bytes::from(body.to_string()))
}

fn success(data: Value) -> Value {
    json!({"code": "success", "message": "", "data": data})
}

async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    action: web::Path<String>,
) -> HttpResponse {
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    let ip = client_ip(&state, &req);
    let caller = match state.jobs.caller(routing, bearer(&req), ip) {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let action = action.to_ascii_lowercase();
    let raw = match crate::tasks::body(&state, &req, payload).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let ask = match suno::parse(&action, &raw) {
        Ok(a) => a,
        Err(e) => return error(&e),
    };
    // A continuation goes to the channel and key that made the song it continues,
    // and names one of that song's clips.
    let parent = match &ask.parent {
        Some(id) => {
            let found = state.jobs.owned(&caller, id).await.and_then(|p| {
                if p.family != suno::FAMILY {
                    return Err(RelayError::NotFound(format!("no task '{id}'")));
                }
                if p.state != "succeeded" || p.action != "MUSIC" {
                    return Err(RelayError::InvalidRequest(format!(
                        "task '{id}' is not a finished song"
                    )));
                }
                if !ask
                    .clip
                    .as_ref()
                    .is_some_and(|c| suno::clip_ids(&p).contains(c))
                {
                    return Err(RelayError::InvalidRequest(format!(
                        "'continue_clip_id' is not a clip of task '{id}'"
                    )));
                }
                Ok(p)
            });
            match found {
                Ok(p) => Some(p),
                Err(e) => return error(&e),
            }
        }
        None => None,
    };
    let task = TaskRequest {
        key: bearer(&req).map(str::to_owned),
        ip,
        family: suno::FAMILY,
        action: ask.action,
        model: ask.model.to_owned(),
        parent,
        seconds: 0,
        tokens: 0,
        images: 0,
        meta: json!({
            "prompt": ask.prompt,
            "mv": ask.body.get("mv"),
            "title": ask.body.get("title"),
        }),
        idempotency_key: crate::tasks::idempotency_key(&req),
        hook: ask.hook.clone(),
        price_model: None,
        price_variants: Vec::new(),
        base: Some(crate::seedance::public_base(&state, &req)),
        fingerprint: ask.fingerprint.clone(),
        endpoint: ask.path,
        build: Box::new(move |_, _, parent| suno::submission(&ask, parent)),
    };
    match state.jobs.submit(&state.pipeline, routing, task).await {
        Ok(t) => HttpResponse::Ok()
            .insert_header((crate::relay::GENERATION_HEADER, t.id.clone()))
            .json(success(json!(t.id))),
        Err(e) => error(&e),
    }
}

/// A task as Suno clients read it, with its signed file URLs once it has them.
fn answer(state: &AppState, req: &HttpRequest, t: &task::Model) -> Value {
    suno::task_json(t, &crate::tasks::result_urls(state, req, t))
}

/// `GET /suno/fetch/{id}`.
async fn fetch(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    match crate::tasks::read(&state, &req, bearer(&req), &path, suno::FAMILY).await {
        Ok(t) => HttpResponse::Ok().json(success(answer(&state, &req, &t))),
        Err(e) => error(&e),
    }
}

/// `POST /suno/fetch {ids}`: those of the caller's tasks.
async fn fetch_many(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    match crate::tasks::many(&state, &req, bearer(&req), payload, suno::FAMILY).await {
        Ok(tasks) => HttpResponse::Ok().json(success(Value::Array(
            tasks.iter().map(|t| answer(&state, &req, t)).collect(),
        ))),
        Err(e) => error(&e),
    }
}
