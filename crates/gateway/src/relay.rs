//! The relay's HTTP handlers (OpenAI chat and Anthropic messages): thin — extract, call
//! `relay-core`, map the answer in the client's protocol. Every answer carries
//! `X-Generation-Id`.

use std::net::IpAddr;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use relay_core::RelayError;
use relay_core::admission;
use relay_core::pipeline::{Answered, GeminiRoute, Inbound, new_generation_id};
use relay_core::protocol::Protocol;
use relay_core::relay::ChatAnswer;

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
pub(crate) fn api_key(req: &HttpRequest, proto: Protocol) -> Option<String> {
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
pub(crate) fn error_with_body(err: &RelayError, generation_id: &str, body: Bytes) -> HttpResponse {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::CONTENT_TYPE, "application/json"));
    resp.insert_header((GENERATION_HEADER, generation_id.to_owned()));
    if let Some(secs) = err.retry_after() {
        resp.insert_header((header::RETRY_AFTER, secs.to_string()));
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
    let snap = state.snapshot.load_full();
    let gemini = gemini_model.map(|model| GeminiRoute {
        model,
        stream: false,
    });
    let inbound = inbound(&state, &req, proto, payload, gemini);
    match state.pipeline.count(snap.routing(), inbound).await {
        (id, Ok(answer)) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((GENERATION_HEADER, id))
            .body(answer),
        (id, Err(e)) => error_response(proto, &e, &id),
    }
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
        "predictLongRunning" => {
            return crate::veo::create(state, req, payload, model.to_owned()).await;
        }
        // With `?alt=sse` as server-sent events; without, as Google's JSON array.
        "streamGenerateContent" => true,
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

/// What the pipeline needs of the HTTP request.
fn inbound(
    state: &AppState,
    req: &HttpRequest,
    proto: Protocol,
    payload: web::Payload,
    gemini: Option<GeminiRoute>,
) -> Inbound<web::Payload> {
    Inbound {
        proto,
        key: api_key(req, proto),
        ip: client_ip(state, req),
        declared_len: req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok()),
        content_type: content_type(req).map(str::to_owned),
        body: payload,
        gemini,
        extra: forwarded_headers(req, proto),
    }
}

/// One relay request in `proto`: extract, one call into the pipeline, the answer in
/// the client's protocol.
async fn relay(
    proto: Protocol,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    gemini: Option<GeminiRoute>,
) -> HttpResponse {
    let snap = state.snapshot.load_full();
    let json_array = gemini.as_ref().is_some_and(|g| g.stream) && !alt_sse(&req);
    let inbound = inbound(&state, &req, proto, payload, gemini);
    let Answered {
        generation_id: id,
        result,
    } = state.pipeline.relay(snap.routing(), inbound).await;
    match result {
        Ok(ChatAnswer::Complete(answer)) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((GENERATION_HEADER, id))
            .body(answer),
        Ok(ChatAnswer::Stream(stream)) if json_array => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json; charset=utf-8"))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((
                header::CONTENT_ENCODING,
                HeaderValue::from_static("identity"),
            ))
            .insert_header(("x-accel-buffering", "no"))
            .insert_header((GENERATION_HEADER, id))
            .streaming(relay_core::sse::json_array(stream)),
        Ok(ChatAnswer::Stream(stream)) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/event-stream; charset=utf-8"))
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

/// Whether the request asks for server-sent events (`?alt=sse`).
fn alt_sse(req: &HttpRequest) -> bool {
    req.query_string().split('&').any(|p| p == "alt=sse")
}

/// The request's `Content-Type`.
fn content_type(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
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
