//! `/v1/videos` (API.md §4, the OpenAI videos family): thin handlers over the task
//! engine (`relay_core::task`). A task belongs to the user whose key submitted it;
//! every other caller gets 404 for it, on the content route too.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use relay_core::RelayError;
use relay_core::pipeline::read_limited;
use relay_core::task::{TaskRequest, seedance, videos};
use serde::Deserialize;

use crate::relay::{bearer, client_ip, openai_error};
use crate::state::AppState;

/// Mounts the videos family.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/videos", web::post().to(create))
        .route("/v1/videos", web::get().to(list))
        .route("/v1/videos/{id}", web::get().to(retrieve))
        .route("/v1/videos/{id}", web::delete().to(delete))
        .route("/v1/videos/{id}/content", web::get().to(content))
        .route("/v1/videos/{id}/remix", web::post().to(remix));
}

/// Runs the background poller (every `tick`, one round of due tasks) and, in a loop
/// of its own so that slow client hooks never hold up polling, the callbacks due.
pub fn spawn_poller(state: web::Data<AppState>, tick: Duration) {
    let hooks = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            // A full round may have left more due: the next one starts at once.
            loop {
                let snap = state.snapshot.load_full();
                let polled = state.jobs.poll_due(&state.pipeline, snap.routing()).await;
                if (polled as u64) < state.jobs.settings.batch {
                    break;
                }
            }
        }
    });
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            hooks.jobs.deliver_due_hooks().await;
        }
    });
}

fn error(e: &RelayError) -> HttpResponse {
    openai_error(e, "")
}

fn header_text<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `POST /v1/videos` (JSON or multipart).
async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    let declared = header_text(&req, "content-length").and_then(|v| v.parse().ok());
    // The key first: a stranger's body is not read.
    let caller = match state
        .jobs
        .caller(routing, bearer(&req), client_ip(&state, &req))
    {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    drop(caller);
    let raw = match read_limited(payload, declared, state.config.max_body_mb).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let parsed = match videos::parse_create(header_text(&req, "content-type"), raw) {
        Ok(p) => p,
        Err(e) => return error(&e),
    };
    let task = TaskRequest {
        key: bearer(&req).map(str::to_owned),
        ip: client_ip(&state, &req),
        family: videos::FAMILY,
        action: "generate",
        model: parsed.model.clone(),
        parent: None,
        seconds: parsed.seconds,
        tokens: seedance::hold_tokens(
            parsed.seconds,
            seedance::resolution_of(parsed.size.as_deref())
                .0
                .unwrap_or("1080p"),
        ),
        images: 0,
        meta: parsed.meta(),
        idempotency_key: header_text(&req, "idempotency-key").map(str::to_owned),
        hook: parsed.webhook_url.clone(),
        price_model: None,
        // Some channel types render no less than 720p whatever the size (Veo), or
        // take only the aspect ratio from it (Kling): a size below 720p is priced as
        // 720p, never at a cheaper variant than what may be rendered.
        price_variants: seedance::resolution_of(parsed.size.as_deref())
            .0
            .map(|r| if r == "480p" { "720p" } else { r })
            .map(|r| format!("{}-{r}", parsed.model))
            .into_iter()
            .collect(),
        base: Some(crate::seedance::public_base(&state, &req)),
        fingerprint: parsed.fingerprint.clone(),
        endpoint: "/v1/videos",
        build: videos::builder(parsed),
    };
    match state.jobs.submit(&state.pipeline, routing, task).await {
        Ok(t) => answer(&videos::video_json(&t), &t.id),
        Err(e) => error(&e),
    }
}

/// `POST /v1/videos/{id}/remix` `{prompt}`: a new task from a finished video, on the
/// channel and key that made it.
async fn remix(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    let ip = client_ip(&state, &req);
    let caller = match state.jobs.caller(routing, bearer(&req), ip) {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let parent = match state.jobs.owned(&caller, &path).await {
        Ok(p) => p,
        Err(e) => return error(&e),
    };
    let made_by = snap
        .catalog
        .channels
        .iter()
        .find(|c| Some(c.id) == parent.channel_id)
        .map(|c| c.kind);
    if made_by != Some(store::catalog::ChannelKind::OpenAi) {
        return error(&RelayError::InvalidRequest(format!(
            "video '{}' cannot be remixed: only videos made by an OpenAI-compatible upstream can",
            parent.id
        )));
    }
    if parent.state != "succeeded" {
        return error(&RelayError::InvalidRequest(format!(
            "video '{}' is not completed; only a completed video can be remixed",
            parent.id
        )));
    }
    let declared = header_text(&req, "content-length").and_then(|v| v.parse().ok());
    let raw = match read_limited(payload, declared, state.config.max_body_mb).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let prompt = match videos::parse_remix(&raw) {
        Ok(r) => r.prompt,
        Err(e) => return error(&e),
    };
    let pricing: relay_core::task::Pricing =
        serde_json::from_str(&parent.pricing).unwrap_or_default();
    let parent_meta: serde_json::Value =
        serde_json::from_str(&parent.meta).unwrap_or(serde_json::Value::Null);
    let meta = serde_json::json!({
        "prompt": prompt,
        "seconds": parent_meta.get("seconds"),
        "size": parent_meta.get("size"),
    });
    let parent_id = parent.id.clone();
    let task = TaskRequest {
        key: bearer(&req).map(str::to_owned),
        ip,
        family: videos::FAMILY,
        action: "remix",
        model: parent.model.clone(),
        seconds: pricing.seconds.max(1),
        tokens: pricing.tokens,
        images: 0,
        parent: Some(parent),
        meta,
        idempotency_key: header_text(&req, "idempotency-key").map(str::to_owned),
        hook: None,
        price_model: None,
        price_variants: Vec::new(),
        base: Some(crate::seedance::public_base(&state, &req)),
        fingerprint: format!("{}\n{prompt}", parent_id),
        endpoint: "/v1/videos/remix",
        build: videos::remix_builder(prompt),
    };
    match state.jobs.submit(&state.pipeline, routing, task).await {
        Ok(t) => answer(&videos::video_json(&t), &t.id),
        Err(e) => error(&e),
    }
}

/// `GET /v1/videos/{id}`: from the database, refreshed from the upstream when stale.
async fn retrieve(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    let caller = match state
        .jobs
        .caller(routing, bearer(&req), client_ip(&state, &req))
    {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    match state
        .jobs
        .read(&state.pipeline, routing, &caller, &path)
        .await
    {
        Ok(t) => {
            let mut resp = answer(&videos::video_json(&t), &t.id);
            // The SDK's poller waits this long between reads.
            if let Ok(v) =
                header::HeaderValue::from_str(&state.jobs.settings.poll_min.as_millis().to_string())
            {
                resp.headers_mut()
                    .insert(header::HeaderName::from_static("openai-poll-after-ms"), v);
            }
            resp
        }
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<u64>,
    order: Option<String>,
}

/// `GET /v1/videos?after=&limit=&order=`: the caller's videos, newest first by default.
async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ListQuery>,
) -> HttpResponse {
    let snap = state.snapshot.load_full();
    let caller = match state
        .jobs
        .caller(snap.routing(), bearer(&req), client_ip(&state, &req))
    {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let ascending = match query.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => {
            return error(&RelayError::InvalidRequest(
                "'order' must be 'asc' or 'desc'".into(),
            ));
        }
    };
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let page = billing::task::list_owned(
        &state.db,
        caller.user.id,
        videos::FAMILY,
        query.after.as_deref(),
        (0, limit + 1),
        ascending,
    )
    .await;
    match page {
        Ok(mut tasks) => {
            let has_more = tasks.len() as u64 > limit;
            tasks.truncate(usize::try_from(limit).unwrap_or(100));
            HttpResponse::Ok().json(videos::list_json(&tasks, has_more))
        }
        Err(e) => {
            tracing::error!(error = ?e, "listing videos failed");
            error(&RelayError::ServiceUnavailable)
        }
    }
}

/// `DELETE /v1/videos/{id}`: a finished video, for its owner.
async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let task = match crate::tasks::owned(&state, &req, bearer(&req), &path, None).await {
        Ok(t) => t,
        Err(e) => return error(&e),
    };
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    match state.jobs.delete(&state.pipeline, routing, &task).await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({
            "id": task.id, "object": "video.deleted", "deleted": true
        })),
        Err(e) => error(&e),
    }
}

/// `GET /v1/videos/{id}/content?variant=`: the bytes, streamed from the upstream
/// (`Range` passed through), never held whole.
async fn content(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let task = match crate::tasks::owned(&state, &req, bearer(&req), &path, None).await {
        Ok(t) => t,
        Err(e) => return error(&e),
    };
    let snap = state.snapshot.load_full();
    let routing = snap.routing();
    stream_content(&state, routing, &req, &task, req.query_string()).await
}

/// Streams a task's content from its upstream (`Range` and `variant` passed
/// through), never holding it whole.
pub async fn stream_content(
    state: &AppState,
    routing: relay_core::pipeline::Routing<'_>,
    req: &HttpRequest,
    task: &store::entities::task::Model,
    query: &str,
) -> HttpResponse {
    let range = header_text(req, "range");
    let upstream = match state
        .jobs
        .content(&state.pipeline, routing, task, query, range)
        .await
    {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::OK);
    let mut resp = HttpResponse::build(status);
    // Served from Tollgate's own origin (where the console lives): only media types,
    // never sniffed.
    let media = upstream
        .headers()
        .get(header::CONTENT_TYPE.as_str())
        .and_then(|v| v.to_str().ok())
        .filter(|t| {
            ["image/", "video/", "audio/"]
                .iter()
                .any(|m| t.starts_with(m))
        })
        .unwrap_or("application/octet-stream")
        .to_owned();
    resp.insert_header((header::CONTENT_TYPE, media));
    resp.insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    for name in [
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
        header::ETAG,
        header::LAST_MODIFIED,
    ] {
        if let Some(v) = upstream
            .headers()
            .get(name.as_str())
            .and_then(|v| header::HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            resp.insert_header((name, v));
        }
    }
    resp.insert_header((header::CACHE_CONTROL, "private, max-age=3600"));
    if upstream.headers().get("content-length").is_some() {
        // Keep the upstream's length: actix would otherwise send the body chunked.
        let len = upstream.content_length().unwrap_or(0);
        return resp.no_chunking(len).streaming(upstream.bytes_stream());
    }
    resp.streaming(upstream.bytes_stream())
}

/// A JSON answer naming its task as the generation.
fn answer(body: &serde_json::Value, id: &str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((crate::relay::GENERATION_HEADER, id.to_owned()))
        .json(body)
}
