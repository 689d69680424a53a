//! The relay's HTTP handlers (OpenAI chat and Anthropic messages): thin — extract, call
//! `relay-core`, map the answer in the client's protocol. Every answer carries
//! `X-Generation-Id`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use billing::{GenerationRecord, Usage};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use relay_core::RelayError;
use relay_core::admission::{self, Admitted, Caller};
use relay_core::meter::Meter;
use relay_core::openai::ChatHead;
use relay_core::protocol::Protocol;
use relay_core::relay::{ChatAnswer, ChatDeps, RelayRequest};

use crate::state::AppState;

/// The header that names a request's generation.
pub const GENERATION_HEADER: &str = "x-generation-id";

/// Mounts the relay endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/chat/completions", web::post().to(chat_completions))
        .route("/v1/messages", web::post().to(messages))
        .route("/v1/messages/count_tokens", web::post().to(count_tokens))
        .route("/v1/completions", web::post().to(completions))
        .route("/beta/completions", web::post().to(fim_completions))
        .route("/v1/responses", web::post().to(responses))
        .route("/v1/embeddings", web::post().to(embeddings))
        .route("/v1/images/generations", web::post().to(image_generations))
        .route("/v1/moderations", web::post().to(moderations))
        .route("/v1/images/edits", web::post().to(image_edits))
        .route("/v1/images/variations", web::post().to(image_variations))
        .route("/v1/audio/speech", web::post().to(speech))
        .route("/v1/audio/transcriptions", web::post().to(transcriptions))
        .route("/v1/audio/translations", web::post().to(translations))
        .route("/v1beta/models", web::get().to(gemini_models))
        .route("/v1beta/models/{target}", web::post().to(gemini_generate))
        // google-genai defaults to API version v1: same request, other prefix.
        .route("/v1/models/{target}", web::post().to(gemini_generate))
        .route("/v1/models", web::get().to(models));
}

fn new_generation_id() -> String {
    format!("gen-{}", uuid::Uuid::now_v7().simple())
}

/// The client's key from `Authorization: Bearer …`.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
}

/// The client's key: `x-api-key` (Anthropic's SDK), `x-goog-api-key` or `?key=`
/// (Gemini's), or `Authorization: Bearer` (everyone).
fn api_key(req: &HttpRequest, proto: Protocol) -> Option<String> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let found = match proto {
        Protocol::AnthropicMessages => header("x-api-key"),
        Protocol::GeminiGenerate => header("x-goog-api-key").or_else(|| {
            web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
                .ok()
                .and_then(|q| q.get("key").cloned())
        }),
        _ => None,
    };
    found.or_else(|| bearer(req).map(str::to_owned))
}

/// An error answer in the client's protocol.
pub fn error_response(proto: Protocol, err: &RelayError, generation_id: &str) -> HttpResponse {
    match proto {
        Protocol::AnthropicMessages => error_with_body(err, generation_id, err.anthropic_body()),
        Protocol::GeminiGenerate => error_with_body(err, generation_id, err.google_body()),
        _ => openai_error(err, generation_id),
    }
}

/// The status, headers (`X-Generation-Id`, `Retry-After` for rate limits) and `body`
/// of an error answer.
fn error_with_body(err: &RelayError, generation_id: &str, body: Bytes) -> HttpResponse {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::CONTENT_TYPE, "application/json"));
    resp.insert_header((GENERATION_HEADER, generation_id.to_owned()));
    match err {
        RelayError::RateLimited(_) => {
            resp.insert_header((header::RETRY_AFTER, "60"));
        }
        RelayError::ServiceUnavailable => {
            resp.insert_header((header::RETRY_AFTER, "2"));
        }
        _ => {}
    }
    resp.body(body)
}

/// The client's IP (the peer, or whom a trusted proxy forwards for), for the key's
/// allowlist and the log.
pub fn client_ip(state: &AppState, req: &HttpRequest) -> Option<IpAddr> {
    state.config.trusted_proxies.client_ip(req)
}

/// An OpenAI-shaped error answer.
pub fn openai_error(err: &RelayError, generation_id: &str) -> HttpResponse {
    error_with_body(err, generation_id, err.openai_body())
}

/// Reads the request body up to the configured limit.
async fn read_limited(
    mut payload: web::Payload,
    req: &HttpRequest,
    limit_mb: usize,
) -> Result<Bytes, RelayError> {
    let limit = limit_mb.saturating_mul(1024 * 1024);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(RelayError::RequestTooLarge(limit_mb));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|_| RelayError::InvalidRequest("the request body could not be read".into()))?;
        if body.len() + chunk.len() > limit {
            return Err(RelayError::RequestTooLarge(limit_mb));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiChat, state, req, payload, None).await
}

/// `POST /v1/completions`
pub async fn completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiCompletions, state, req, payload, None).await
}

/// `POST /beta/completions` (DeepSeek FIM: `prompt` and `suffix`)
pub async fn fim_completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiFim, state, req, payload, None).await
}

/// `POST /v1/responses`
pub async fn responses(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiResponses, state, req, payload, None).await
}

/// `POST /v1/embeddings`
pub async fn embeddings(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiEmbeddings, state, req, payload, None).await
}

/// `POST /v1/images/generations`: charged per image returned with data.
pub async fn image_generations(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiImages, state, req, payload, None).await
}

/// `POST /v1/images/edits` (multipart): charged per image returned with data.
pub async fn image_edits(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiImageEdits, state, req, payload, None).await
}

/// `POST /v1/images/variations` (multipart): charged per image returned with data.
pub async fn image_variations(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiImageVariations, state, req, payload, None).await
}

/// `POST /v1/audio/speech`: audio bytes back, charged per input character.
pub async fn speech(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiSpeech, state, req, payload, None).await
}

/// `POST /v1/audio/transcriptions` (multipart)
pub async fn transcriptions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiTranscriptions, state, req, payload, None).await
}

/// `POST /v1/audio/translations` (multipart)
pub async fn translations(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiTranslations, state, req, payload, None).await
}

/// `POST /v1/moderations`
pub async fn moderations(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::OpenAiModerations, state, req, payload, None).await
}

/// `POST /v1/messages`
pub async fn messages(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay(Protocol::AnthropicMessages, state, req, payload, None).await
}

/// `POST /v1/messages/count_tokens`: free, but under the key's rpm; counted by an
/// Anthropic channel when one serves the model, else locally.
pub async fn count_tokens(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    count(Protocol::AnthropicMessages, None, state, req, payload).await
}

/// Counts tokens for a client of `proto` (Gemini names the model in the path).
async fn count(
    proto: Protocol,
    gemini_model: Option<String>,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let id = new_generation_id();
    let snap = state.snapshot.load_full();
    let counted = async {
        let caller = admission::authenticate(&snap.catalog, api_key(&req, proto).as_deref())?;
        admission::check_ip(&caller, client_ip(&state, &req))?;
        let body = read_limited(payload, &req, state.config.max_body_mb).await?;
        let head = match &gemini_model {
            Some(model) => ChatHead::gemini(&body, model, false)?,
            None => ChatHead::parse_for(proto, &body)?,
        };
        let admitted =
            admission::admit_model(&snap.catalog, &snap.router, &caller, head.model(), proto)?;
        check_rpm(&state, &caller).await?;
        relay_core::count::count_tokens(&snap.router, &state.client, &admitted, proto, &body).await
    }
    .await;
    match counted {
        Ok(answer) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((GENERATION_HEADER, id))
            .body(answer),
        Err(e) => error_response(proto, &e, &id),
    }
}

/// Where a Gemini request's model and method come from: the path.
pub struct GeminiRoute {
    pub model: String,
    pub stream: bool,
}

/// `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`
pub async fn gemini_generate(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    target: web::Path<String>,
) -> HttpResponse {
    let id = new_generation_id();
    let (model, method) = target.split_once(':').unwrap_or((target.as_str(), ""));
    let stream = match method {
        "generateContent" => false,
        "countTokens" => {
            let model = model.to_owned();
            return count(Protocol::GeminiGenerate, Some(model), state, req, payload).await;
        }
        "streamGenerateContent" => {
            let sse = web::Query::<std::collections::HashMap<String, String>>::from_query(
                req.query_string(),
            )
            .ok()
            .is_some_and(|q| q.get("alt").is_some_and(|a| a == "sse"));
            if !sse {
                let e = RelayError::InvalidRequest(
                    "streamGenerateContent is served as server-sent events: add ?alt=sse".into(),
                );
                return error_response(Protocol::GeminiGenerate, &e, &id);
            }
            true
        }
        other => {
            let e = RelayError::InvalidRequest(format!(
                "unknown method '{other}': use generateContent, streamGenerateContent or countTokens"
            ));
            return error_response(Protocol::GeminiGenerate, &e, &id);
        }
    };
    let route = GeminiRoute {
        model: model.to_owned(),
        stream,
    };
    relay(Protocol::GeminiGenerate, state, req, payload, Some(route)).await
}

/// Client headers that go upstream with the request.
fn forwarded_headers(req: &HttpRequest, proto: Protocol) -> Vec<(&'static str, String)> {
    if proto != Protocol::AnthropicMessages {
        return Vec::new();
    }
    ["anthropic-version", "anthropic-beta"]
        .into_iter()
        .filter_map(|name| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (name, v.to_owned()))
        })
        .collect()
}

/// One relay request in `proto`, from the key to the answer.
async fn relay(
    proto: Protocol,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    gemini: Option<GeminiRoute>,
) -> HttpResponse {
    let started = Instant::now();
    let id = new_generation_id();
    let snap = state.snapshot.load_full();
    let caller = match admission::authenticate(&snap.catalog, api_key(&req, proto).as_deref()) {
        Ok(c) => c,
        Err(e) => return error_response(proto, &e, &id),
    };
    let ip = client_ip(&state, &req);
    let mut record = GenerationRecord {
        id: id.clone(),
        upstream_id: None,
        user_id: caller.user.id,
        key_id: caller.key.id,
        channel_id: None,
        provider_name: None,
        model: String::new(),
        upstream_model: None,
        endpoint: proto.path().to_owned(),
        streamed: false,
        cancelled: false,
        finish_reason: None,
        usage: Usage::default(),
        latency_ms: None,
        generation_time_ms: None,
        status: "error",
        status_code: 200,
        error: None,
        client_ip: ip.map(|i| i.to_string()),
        attempts: None,
        created_at: chrono::Utc::now(),
    };
    let prepared = async {
        if !state.availability.serving() || !state.writer.admit().await {
            return Err(RelayError::ServiceUnavailable);
        }
        admission::check_ip(&caller, ip)?;
        let body = read_limited(payload, &req, state.config.max_body_mb).await?;
        let head = match &gemini {
            Some(route) => ChatHead::gemini(&body, &route.model, route.stream)?,
            None if proto.is_multipart() => ChatHead::form(content_type(&req), &body)?,
            None => ChatHead::parse_for(proto, &body)?,
        };
        if head.is_stream() && proto.never_streams() {
            return Err(RelayError::InvalidRequest(
                "'stream' is not supported on this endpoint".into(),
            ));
        }
        let admitted =
            admission::admit_model(&snap.catalog, &snap.router, &caller, head.model(), proto)?;
        check_rpm(&state, &caller).await?;
        Ok::<_, RelayError>((body, head, admitted))
    }
    .await;
    let (body, head, admitted) = match prepared {
        Ok(p) => p,
        Err(e) => {
            reject(&state, record, &e, started);
            return error_response(proto, &e, &id);
        }
    };
    record.model = admitted.model.clone();
    record.streamed = head.is_stream();
    let (hold, body) = match hold_for(&state, proto, &admitted, &head, body).await {
        Ok(held) => held,
        Err(e) => {
            reject(&state, record, &e, started);
            return error_response(proto, &e, &id);
        }
    };
    let meter = Meter::new(
        state.settler(),
        hold,
        admitted.price,
        admitted.multiplier_ppm,
        record,
        started,
    );
    let snap_router = &snap.router;
    let deps = ChatDeps {
        router: snap_router,
        client: &state.client,
        breakers: &state.breakers,
        health: state.health.as_ref(),
        max_tries: snap.max_tries,
        max_answer_bytes: state.config.max_upstream_mb.saturating_mul(1024 * 1024),
    };
    let extra = forwarded_headers(&req, proto);
    let request = RelayRequest {
        proto,
        head: &head,
        raw: &body,
        extra: &extra,
        content_type: proto.is_multipart().then(|| content_type(&req)).flatten(),
    };
    match relay_core::relay::chat(&deps, &admitted, &request, meter).await {
        Ok(ChatAnswer::Complete(answer)) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((GENERATION_HEADER, id))
            .body(answer),
        Ok(ChatAnswer::Stream(stream)) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/event-stream"))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((
                header::CONTENT_ENCODING,
                HeaderValue::from_static("identity"),
            ))
            .insert_header(("x-accel-buffering", "no"))
            .insert_header((GENERATION_HEADER, id))
            .streaming(stream),
        Ok(ChatAnswer::Typed { content_type, body }) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, content_type))
            .insert_header((GENERATION_HEADER, id))
            .body(body),
        Ok(ChatAnswer::Binary { content_type, body }) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, content_type))
            .insert_header((GENERATION_HEADER, id))
            .streaming(body),
        Err(e) => error_response(proto, &e, &id),
    }
}

/// The request's `Content-Type`.
fn content_type(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// Holds the most this request can cost. When the client named no output limit and
/// the model's ceiling does not fit in what is left, the largest limit that does is
/// held instead; either way the upstream is told the limit held (the body returned).
async fn hold_for(
    state: &AppState,
    proto: Protocol,
    admitted: &Admitted,
    head: &ChatHead,
    body: Bytes,
) -> Result<(billing::Hold, Bytes), RelayError> {
    use relay_core::hold;
    let (price, mult) = (&admitted.price, admitted.multiplier_ppm);
    let user = admitted.caller.user.id;
    let limited_key = admitted
        .caller
        .key
        .credit_limit
        .map(|_| admitted.caller.key.id);
    let mut plan = hold::plan(proto, price, mult, head, &body);
    let held = match state.wallet.reserve(user, limited_key, plan.amount).await {
        Err(billing::BillingError::Insufficient) if plan.set_limit => {
            let available = wallet_available(state, user, limited_key).await?;
            plan = hold::affordable(proto, price, mult, head, plan, available)
                .ok_or(RelayError::InsufficientQuota)?;
            state.wallet.reserve(user, limited_key, plan.amount).await
        }
        other => other,
    };
    let held = held.map_err(|e| match e {
        billing::BillingError::Insufficient => RelayError::InsufficientQuota,
        other => wallet_failure(&other),
    })?;
    let body = if plan.set_limit {
        match hold::with_output_limit(proto, head.model(), &body, plan.output_tokens) {
            Ok(b) => b,
            Err(e) => {
                if let Err(err) = state.wallet.release(held).await {
                    tracing::error!(error = ?err, "releasing a hold failed");
                }
                return Err(e);
            }
        }
    } else {
        body
    };
    Ok((held, body))
}

/// What the user (and its limited key) may still spend.
async fn wallet_available(
    state: &AppState,
    user: i64,
    key: Option<i64>,
) -> Result<i64, RelayError> {
    let mut available = i64::MAX;
    let accounts =
        std::iter::once(billing::Account::User(user)).chain(key.map(billing::Account::Key));
    for acct in accounts {
        let a = state
            .wallet
            .available(acct)
            .await
            .map_err(|e| wallet_failure(&e))?;
        available = available.min(a.unwrap_or(0));
    }
    Ok(available)
}

/// A wallet that could not answer: Redis (or the database behind it) is away.
fn wallet_failure(e: &billing::BillingError) -> RelayError {
    match e {
        billing::BillingError::Store(s) if s.is_unavailable() => {
            tracing::warn!(error = ?e, "wallet unreachable");
            RelayError::ServiceUnavailable
        }
        _ => {
            tracing::error!(error = ?e, "reservation failed");
            RelayError::Internal
        }
    }
}

async fn check_rpm(state: &AppState, caller: &Caller) -> Result<(), RelayError> {
    let Some(rpm) = caller.key.rpm else {
        return Ok(());
    };
    let count = state
        .shared
        .incr(&format!("rpm:{}", caller.key.id), Duration::from_secs(60))
        .await
        .map_err(|e| {
            if e.is_unavailable() {
                tracing::warn!(error = ?e, "rate-limit counter unreachable");
                RelayError::ServiceUnavailable
            } else {
                tracing::error!(error = ?e, "rate-limit counter failed");
                RelayError::Internal
            }
        })?;
    if count > i64::from(rpm) {
        return Err(RelayError::RateLimited(rpm));
    }
    Ok(())
}

/// Records a request refused before it reached an upstream (nothing is charged).
fn reject(state: &AppState, mut record: GenerationRecord, err: &RelayError, started: Instant) {
    record.status = "error";
    record.status_code = err.status();
    record.error = Some(err.code().to_owned());
    let ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    record.latency_ms = Some(ms);
    record.generation_time_ms = Some(ms);
    // While the writer refuses (the database is away or its backlog is full) the
    // records of refused calls, which carry no money, are not queued: a long outage
    // under load must not grow memory with them.
    state.metrics.request(
        &record.endpoint,
        &record.model,
        record.status_code,
        started.elapsed().as_secs_f64(),
    );
    if state.writer.refuses() {
        tracing::debug!(generation.id = %record.id, "refused call not recorded during an outage");
        return;
    }
    state.writer.submit(record, None);
}

/// `GET /v1/models`: exactly the models this key may call — in Anthropic's shape when
/// the client sends `anthropic-version` (the Anthropic SDK), else in OpenAI's.
pub async fn models(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let gemini_client = req.headers().contains_key("x-goog-api-key")
        || req.query_string().split('&').any(|p| p.starts_with("key="));
    if gemini_client {
        // google-genai's default API version lists models at /v1/models.
        return gemini_models(state, req).await;
    }
    let id = new_generation_id();
    let snap = state.snapshot.load();
    let proto = if req.headers().contains_key("anthropic-version") {
        Protocol::AnthropicMessages
    } else {
        Protocol::OpenAiChat
    };
    let caller = match admission::authenticate(&snap.catalog, api_key(&req, proto).as_deref()) {
        Ok(c) => c,
        Err(e) => return error_response(proto, &e, &id),
    };
    let visible = admission::visible_models(&snap.catalog, &snap.router, &caller, proto);
    if proto == Protocol::AnthropicMessages {
        let data: Vec<_> = visible
            .iter()
            .map(|m| serde_json::json!({"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}))
            .collect();
        return HttpResponse::Ok()
            .insert_header((GENERATION_HEADER, id))
            .json(serde_json::json!({
                "data": data,
                "has_more": false,
                "first_id": visible.first(),
                "last_id": visible.last(),
            }));
    }
    let data: Vec<_> = visible
        .into_iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "tollgate"}))
        .collect();
    HttpResponse::Ok()
        .insert_header((GENERATION_HEADER, id))
        .json(serde_json::json!({"object": "list", "data": data}))
}

/// `GET /v1beta/models`: the Gemini models this key may call, in Google's shape.
pub async fn gemini_models(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let id = new_generation_id();
    let proto = Protocol::GeminiGenerate;
    let snap = state.snapshot.load();
    let caller = match admission::authenticate(&snap.catalog, api_key(&req, proto).as_deref()) {
        Ok(c) => c,
        Err(e) => return error_response(proto, &e, &id),
    };
    let models: Vec<_> = admission::visible_models(&snap.catalog, &snap.router, &caller, proto)
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "name": format!("models/{m}"),
                "baseModelId": m,
                "version": "001",
                "displayName": m,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
            })
        })
        .collect();
    HttpResponse::Ok()
        .insert_header((GENERATION_HEADER, id))
        .json(serde_json::json!({"models": models}))
}
