//! Kling in its own shape (seed `002`): `POST /kling/v1/videos/text2video`,
//! `/kling/v1/videos/image2video`, `/kling/v1/images/generations`, and `GET` the same
//! path `+ /{id}`, served by `kling` channels on the task engine. Answers and errors
//! are Kling's envelope `{code, message, request_id, data}`; result URLs are Tollgate's
//! signed ones.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use relay_core::RelayError;
use relay_core::task::{TaskRequest, kling};
use serde_json::json;

use crate::relay::{bearer, client_ip};
use crate::state::AppState;

/// Mounts the three create routes and their task routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for (i, path) in kling::ACTIONS.iter().enumerate() {
        cfg.route(
            &format!("/kling{path}"),
            web::post().to(move |state, req, payload| create(state, req, payload, i)),
        )
        .route(&format!("/kling{path}/{{id}}"), web::get().to(retrieve));
    }
}

/// An error in Kling's envelope, with Kling's service code for its kind.
fn error(e: &RelayError) -> HttpResponse {
    let code = match e.status() {
        401 => 1002,
        402 => 1102,
        403 => 1103,
        404 => 1203,
        429 => 1302,
        s if s >= 500 => 5000,
        _ => 1201,
    };
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    HttpResponse::build(status).json(json!({
        "code": code,
        "message": relay_core::error::redact(&e.to_string()),
        "request_id": "",
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
    let path = kling::ACTIONS[action];
    let ask = match kling::parse_native(path, &raw) {
        Ok(a) => a,
        Err(e) => return error(&e),
    };
    let task = TaskRequest {
        key: bearer(&req).map(str::to_owned),
        ip,
        family: kling::FAMILY,
        action: match action {
            0 => "text2video",
            1 => "image2video",
            _ => "images",
        },
        model: ask.model.clone(),
        parent: None,
        seconds: ask.seconds,
        tokens: 0,
        images: ask.images,
        meta: match &ask.external_id {
            Some(ext) => json!({"prompt": ask.prompt, "external_task_id": ext}),
            None => json!({"prompt": ask.prompt}),
        },
        idempotency_key: crate::tasks::idempotency_key(&req),
        hook: ask.hook.clone(),
        price_model: ask.variant.clone(),
        price_variants: Vec::new(),
        base: Some(crate::seedance::public_base(&state, &req)),
        fingerprint: ask.fingerprint.clone(),
        endpoint: path,
        build: Box::new(move |_, upstream_model, _| kling::native_submission(&ask, upstream_model)),
    };
    match state.jobs.submit(&state.pipeline, routing, task).await {
        Ok(t) => HttpResponse::Ok()
            .insert_header((crate::relay::GENERATION_HEADER, t.id.clone()))
            .json(kling::task_json(&t, &[])),
        Err(e) => error(&e),
    }
}

async fn retrieve(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let found = crate::tasks::read(&state, &req, bearer(&req), &path, kling::FAMILY)
        .await
        .and_then(|t| {
            // As on Kling, a task lives under the path that created it.
            let made_at = match t.action.as_str() {
                "text2video" => kling::ACTIONS[0],
                "image2video" => kling::ACTIONS[1],
                _ => kling::ACTIONS[2],
            };
            if req.path().starts_with(&format!("/kling{made_at}/")) {
                Ok(t)
            } else {
                Err(RelayError::NotFound(format!("no task '{}'", path.as_str())))
            }
        });
    match found {
        Ok(t) => HttpResponse::Ok().json(kling::task_json(
            &t,
            &crate::tasks::result_urls(&state, &req, &t),
        )),
        Err(e) => error(&e),
    }
}
