//! Seedance in Volcengine Ark's own shape (seed `004`):
//! `/seedance/v3/contents/generations/tasks` (create, get, list, delete), served by
//! `volcengine` channels on the task engine; and the signed content route every
//! task's result URL points at (`/v1/tasks/{id}/content`), which works without a key
//! (in an `<img>` or `<video>` tag) until it expires.

use actix_web::{HttpRequest, HttpResponse, web};
use relay_core::RelayError;
use relay_core::task::{TaskRequest, seedance};
use serde::Deserialize;
use store::entities::task;

use crate::relay::{bearer, client_ip, openai_error};
use crate::state::AppState;

const PATH: &str = "/seedance/v3/contents/generations/tasks";

/// Mounts the native Seedance routes and the signed content route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(PATH, web::post().to(create))
        .route(PATH, web::get().to(list))
        .route(&format!("{PATH}/{{id}}"), web::get().to(retrieve))
        .route(&format!("{PATH}/{{id}}"), web::delete().to(delete))
        .route("/v1/tasks/{id}/content", web::get().to(signed_content));
}

fn error(e: &RelayError) -> HttpResponse {
    openai_error(e, "")
}

/// The address clients reach this gateway at: `TOLLGATE_PUBLIC_URL`, else the
/// request's own scheme and host.
pub fn public_base(state: &AppState, req: &HttpRequest) -> String {
    match &state.config.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let info = req.connection_info();
            format!("{}://{}", info.scheme(), info.host())
        }
    }
}

/// `POST …/tasks`: `{id}` of the new task.
async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    let ip = client_ip(&state, &req);
    if let Err(e) = state.jobs.caller(routing, bearer(&req), ip) {
        return error(&e);
    }
    let raw = match crate::tasks::body(&state, &req, payload).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let ask = match seedance::parse_native(&raw) {
        Ok(a) => a,
        Err(e) => return error(&e),
    };
    let task = TaskRequest {
        key: bearer(&req).map(str::to_owned),
        ip,
        family: seedance::FAMILY,
        action: "generate",
        model: ask.model.clone(),
        parent: None,
        seconds: ask.seconds,
        tokens: seedance::hold_tokens(ask.seconds, &ask.resolution),
        images: 0,
        meta: serde_json::json!({"prompt": ask.prompt, "resolution": ask.resolution}),
        idempotency_key: crate::tasks::idempotency_key(&req),
        hook: ask.hook.clone(),
        price_model: None,
        price_variants: Vec::new(),
        base: Some(crate::seedance::public_base(&state, &req)),
        fingerprint: ask.fingerprint.clone(),
        endpoint: PATH,
        build: Box::new(move |_, upstream_model, _| {
            seedance::native_submission(&ask, upstream_model)
        }),
    };
    match state.jobs.submit(&state.pipeline, routing, task).await {
        Ok(t) => HttpResponse::Ok()
            .insert_header((crate::relay::GENERATION_HEADER, t.id.clone()))
            .json(serde_json::json!({ "id": t.id })),
        Err(e) => error(&e),
    }
}

/// A task in Ark's shape, with the signed URL of its video once it has one.
fn answer(state: &AppState, req: &HttpRequest, t: &task::Model) -> serde_json::Value {
    let url = crate::tasks::result_urls(state, req, t).into_iter().next();
    seedance::task_json(t, url)
}

/// `GET …/tasks/{id}`.
async fn retrieve(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    match crate::tasks::read(&state, &req, bearer(&req), &path, seedance::FAMILY).await {
        Ok(t) => HttpResponse::Ok().json(answer(&state, &req, &t)),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct Page {
    page_num: Option<u64>,
    page_size: Option<u64>,
}

/// `GET …/tasks?page_num=&page_size=`: the caller's Seedance tasks, newest first.
async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<Page>,
) -> HttpResponse {
    let snap = state.snapshot.load_full();
    let caller = match state
        .jobs
        .caller(snap.routing(), bearer(&req), client_ip(&state, &req))
    {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let size = query.page_size.unwrap_or(10).clamp(1, 500);
    let page = query.page_num.unwrap_or(1).max(1);
    let found = billing::task::list_owned(
        &state.db,
        caller.user.id,
        seedance::FAMILY,
        None,
        ((page - 1).saturating_mul(size), size),
        false,
    )
    .await;
    let total = billing::task::count_owned(&state.db, caller.user.id, seedance::FAMILY).await;
    match (found, total) {
        (Ok(tasks), Ok(total)) => HttpResponse::Ok().json(serde_json::json!({
            "items": tasks.iter().map(|t| answer(&state, &req, t)).collect::<Vec<_>>(),
            "total": total,
        })),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = ?e, "listing tasks failed");
            error(&RelayError::ServiceUnavailable)
        }
    }
}

/// `DELETE …/tasks/{id}`: cancels a queued task (its hold released), or removes a
/// finished one from the caller's list; a running one cannot be stopped.
async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let t = match crate::tasks::owned(&state, &req, bearer(&req), &path, Some(seedance::FAMILY))
        .await
    {
        Ok(t) => t,
        Err(e) => return error(&e),
    };
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    let done = if t.state == "queued" {
        state.jobs.cancel(&state.pipeline, routing, &t).await
    } else {
        state.jobs.delete(&state.pipeline, routing, &t).await
    };
    match done {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({})),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct Signed {
    expires: i64,
    signature: String,
}

/// `GET /v1/tasks/{id}/content?expires=&signature=`: a task's result for whoever
/// holds its signed URL, until it expires; anything else is 404.
async fn signed_content(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<Signed>,
) -> HttpResponse {
    let not_found = || error(&RelayError::NotFound(format!("no task '{path}'")));
    if query.expires < chrono::Utc::now().timestamp() {
        return not_found();
    }
    let t = match billing::task::find(&state.db, &path).await {
        Ok(Some(t)) if t.deleted_at.is_none() => t,
        Ok(_) => return not_found(),
        Err(e) => {
            tracing::error!(error = ?e, "reading a task failed");
            return error(&RelayError::ServiceUnavailable);
        }
    };
    if !state.secrets.verify(
        &relay_core::task::url_message(&t.id, t.user_id, query.expires),
        &query.signature,
    ) {
        return not_found();
    }
    let snap = state.snapshot.load_full();
    // Of the query only `index` (which of several results) is read.
    crate::videos::stream_content(&state, snap.routing(), &req, &t, req.query_string()).await
}
