//! Wan / Wanx in Alibaba DashScope's own shape (seeds `000`, `001`): the three
//! `X-DashScope-Async` submissions under `/api/v1/services/aigc/...`, `GET
//! /api/v1/tasks/{id}` and `POST /api/v1/tasks/{id}/cancel`, served by `dashscope`
//! channels on the task engine. Answers and errors are DashScope's
//! (`{request_id, output}`, `{request_id, code, message}`); result URLs are signed
//! Tollgate URLs.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use relay_core::RelayError;
use relay_core::task::{TaskRequest, dashscope};
use serde_json::json;

use crate::relay::{bearer, client_ip};
use crate::state::AppState;

/// Mounts the submissions and the task routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for (i, path) in dashscope::ACTIONS.iter().enumerate() {
        cfg.route(
            path,
            web::post().to(move |state, req, payload| create(state, req, payload, i)),
        );
    }
    cfg.route("/api/v1/tasks/{id}", web::get().to(retrieve))
        .route("/api/v1/tasks/{id}/cancel", web::post().to(cancel));
}

/// An error in DashScope's shape.
fn error(e: &RelayError) -> HttpResponse {
    let code = match e.status() {
        400 | 413 => "InvalidParameter",
        401 => "InvalidApiKey",
        402 => "Arrearage",
        403 => "AccessDenied",
        404 => "NotFound",
        409 => "Conflict",
        429 => "Throttling",
        _ => "InternalError",
    };
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    HttpResponse::build(status).json(json!({
        "request_id": "",
        "code": code,
        "message": relay_core::error::redact(&e.to_string()),
    }))
}

async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    action: usize,
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
    let path = dashscope::ACTIONS[action];
    let ask = match dashscope::parse_native(path, &raw) {
        Ok(a) => a,
        Err(e) => return error(&e),
    };
    let task = TaskRequest {
        key: bearer(&req).map(str::to_owned),
        ip,
        family: dashscope::FAMILY,
        action: match action {
            0 => "video",
            1 => "text2image",
            _ => "image2image",
        },
        model: ask.model.clone(),
        parent: None,
        seconds: ask.seconds,
        tokens: 0,
        images: ask.images,
        meta: json!({"prompt": ask.prompt}),
        idempotency_key: crate::tasks::idempotency_key(&req),
        hook: None,
        price_model: None,
        price_variants: ask
            .resolution
            .map(|r| format!("{}-{r}", ask.model))
            .into_iter()
            .collect(),
        base: Some(crate::seedance::public_base(&state, &req)),
        fingerprint: ask.fingerprint.clone(),
        endpoint: path,
        build: Box::new(move |_, upstream_model, _| {
            dashscope::native_submission(&ask, upstream_model)
        }),
    };
    match state.jobs.submit(&state.pipeline, routing, task).await {
        Ok(t) => HttpResponse::Ok()
            .insert_header((crate::relay::GENERATION_HEADER, t.id.clone()))
            .json(
                json!({"request_id": t.id, "output": {"task_id": t.id, "task_status": "PENDING"}}),
            ),
        Err(e) => error(&e),
    }
}

async fn retrieve(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    match crate::tasks::read(&state, &req, bearer(&req), &path, dashscope::FAMILY).await {
        Ok(t) => HttpResponse::Ok().json(dashscope::task_json(
            &t,
            &crate::tasks::result_urls(&state, &req, &t),
        )),
        Err(e) => error(&e),
    }
}

/// `POST /api/v1/tasks/{id}/cancel`: a pending task only; its hold is released.
async fn cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let t = match crate::tasks::owned(&state, &req, bearer(&req), &path, Some(dashscope::FAMILY))
        .await
    {
        Ok(t) => t,
        Err(e) => return error(&e),
    };
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    match state.jobs.cancel(&state.pipeline, routing, &t).await {
        Ok(()) => HttpResponse::Ok().json(json!({"request_id": t.id})),
        Err(e) => error(&e),
    }
}
