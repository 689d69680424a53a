//! Veo in Google's own shape (seeds `000`, `001`): `POST
//! /v1beta/models/{model}:predictLongRunning` answers an operation `{name}`, and `GET
//! /v1beta/models/{model}/operations/{id}` answers it (`done`, the videos as signed
//! Tollgate URLs, or the error), served by `gemini` channels on the task engine.
//! Errors are Google-shaped.

use actix_web::{HttpRequest, HttpResponse, web};
use relay_core::RelayError;
use relay_core::protocol::Protocol;
use relay_core::task::{TaskRequest, veo};
use serde_json::json;

use crate::relay::{api_key, client_ip, error_response};
use crate::state::AppState;

/// Mounts the operation route (submissions arrive through the Gemini model route).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1beta/models/{model}/operations/{id}",
        web::get().to(retrieve),
    )
    .route("/v1beta/files/{file}", web::get().to(download));
}

fn error(e: &RelayError) -> HttpResponse {
    error_response(Protocol::GeminiGenerate, e, "")
}

/// `POST /v1beta/models/{model}:predictLongRunning`.
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    model: String,
) -> HttpResponse {
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    let ip = client_ip(&state, &req);
    let key = api_key(&req, Protocol::GeminiGenerate);
    if let Err(e) = state.jobs.caller(routing, key.as_deref(), ip) {
        return error(&e);
    }
    let raw = match crate::tasks::body(&state, &req, payload).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let ask = match veo::parse_native(&model, &raw) {
        Ok(a) => a,
        Err(e) => return error(&e),
    };
    let task = TaskRequest {
        key,
        ip,
        family: veo::FAMILY,
        action: "generate",
        model: model.clone(),
        parent: None,
        // Veo reports no usage: every sample is held and charged the seconds asked.
        seconds: ask.seconds * ask.samples,
        tokens: 0,
        images: 0,
        meta: json!({"prompt": ask.prompt, "samples": ask.samples}),
        idempotency_key: crate::tasks::idempotency_key(&req),
        hook: None,
        price_model: None,
        price_variants: ask
            .resolution
            .as_ref()
            .map(|r| format!("{model}-{r}"))
            .into_iter()
            .collect(),
        base: Some(crate::seedance::public_base(&state, &req)),
        fingerprint: ask.fingerprint.clone(),
        endpoint: "/v1beta/models/{model}:predictLongRunning",
        build: Box::new(move |_, upstream_model, _| veo::native_submission(&ask, upstream_model)),
    };
    match state.jobs.submit(&state.pipeline, routing, task).await {
        Ok(t) => HttpResponse::Ok()
            .insert_header((crate::relay::GENERATION_HEADER, t.id.clone()))
            .json(veo::operation_json(&t, &[])),
        Err(e) => error(&e),
    }
}

/// `GET /v1beta/models/{model}/operations/{id}`.
async fn retrieve(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (_, id) = path.into_inner();
    let key = api_key(&req, Protocol::GeminiGenerate);
    match crate::tasks::read(&state, &req, key.as_deref(), &id, veo::FAMILY).await {
        Ok(t) => HttpResponse::Ok().json(veo::operation_json(
            &t,
            &crate::tasks::result_urls(&state, &req, &t),
        )),
        Err(e) => error(&e),
    }
}

#[derive(serde::Deserialize)]
struct Signed {
    expires: Option<i64>,
    signature: Option<String>,
}

/// `GET /v1beta/files/{task}-{index}:download`: a Veo result, for whoever holds its
/// signed URI or for its owner's key; anything else is 404.
async fn download(
    state: web::Data<AppState>,
    req: HttpRequest,
    file: web::Path<String>,
    query: web::Query<Signed>,
) -> HttpResponse {
    let not_found = || error(&RelayError::NotFound(format!("no file '{file}'")));
    let Some((id, index)) = file
        .strip_suffix(":download")
        .and_then(|f| f.rsplit_once('-'))
        .and_then(|(id, i)| Some((id.to_owned(), i.parse::<usize>().ok()?)))
    else {
        return not_found();
    };
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    let task = match (&query.signature, query.expires) {
        (Some(signature), Some(expires)) => {
            if expires < chrono::Utc::now().timestamp() {
                return not_found();
            }
            match billing::task::find(&state.db, &id).await {
                Ok(Some(t))
                    if t.deleted_at.is_none()
                        && state.secrets.verify(
                            &relay_core::task::url_message(&t.id, t.user_id, expires),
                            signature,
                        ) =>
                {
                    t
                }
                Ok(_) => return not_found(),
                Err(_) => return error(&RelayError::ServiceUnavailable),
            }
        }
        _ => {
            let key = api_key(&req, Protocol::GeminiGenerate);
            let caller = match state
                .jobs
                .caller(routing, key.as_deref(), client_ip(&state, &req))
            {
                Ok(c) => c,
                Err(e) => return error(&e),
            };
            match state.jobs.owned(&caller, &id).await {
                Ok(t) => t,
                Err(e) => return error(&e),
            }
        }
    };
    if task.family != veo::FAMILY {
        return not_found();
    }
    crate::videos::stream_content(&state, routing, &req, &task, &format!("index={index}")).await
}
