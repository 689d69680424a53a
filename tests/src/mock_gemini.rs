//! A mock Gemini upstream (`POST /v1beta/models/{model}:{method}`) that answers as the
//! Gemini API does: `GenerateContentResponse` objects, `data: …\r\n\r\n` SSE chunks for
//! `:streamGenerateContent?alt=sse` (a JSON array without `alt=sse`), and Google's
//! `{"error":{"code","message","status"}}` bodies.
//!
//! Authentication: the `x-goog-api-key` header is required (403 `PERMISSION_DENIED`
//! without it, as for an unregistered caller); keys starting `AIza-revoked` get what
//! Google answers a bad key with, 400 `INVALID_ARGUMENT` "API key not valid" with an
//! `API_KEY_INVALID` detail. A body that is not JSON is a 400 `INVALID_ARGUMENT`; a
//! method other than `generateContent` / `streamGenerateContent` is a 404 `NOT_FOUND`.
//!
//! The model in the path picks the behaviour:
//! - anything else: a normal answer, 12 prompt / 30 candidates tokens (total 42);
//! - `gemini-thinking`: 20 prompt, 30 candidates, 50 thoughts tokens (total 100);
//! - `gemini-cached`: 100 prompt of which 80 are cached content, 10 candidates;
//! - `fail-500`: 500 `INTERNAL`; `fail-503`: 503 `UNAVAILABLE`;
//! - `bad-request`: 400 `INVALID_ARGUMENT` (blames the request);
//! - `echo-invalid`: 400 `INVALID_ARGUMENT` whose message and `BadRequest` field
//!   violation quote the customer's text (which may read like a key error).
//!
//! A `cachedContent` the request names is served only when it starts with
//! `cachedContents/mine-`; any other is a 403 `PERMISSION_DENIED` ("You do not have
//! permission to access the CachedContent … (or it may not exist)"), with no key reason.
//!
//! A stream is three chunks carrying the text pieces `"Hello"`, `"! How"`,
//! `" can I help?"`. Every chunk has `usageMetadata`, cumulative as Gemini reports it:
//! the first only the prompt count, the second a partial candidates count, the last
//! (with `finishReason` `STOP`) the full usage. There is no `[DONE]`: the stream ends
//! when the connection's body ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request path, e.g. `/v1beta/models/gemini-2.0-flash:generateContent`.
    pub path: String,
    /// The upstream model named in the path (before the `:`).
    pub model: String,
    /// The method named in the path (after the `:`), e.g. `generateContent`.
    pub method: String,
    /// The raw query string (`alt=sse` for an SSE stream), empty when none.
    pub query: String,
    pub x_goog_api_key: Option<String>,
    /// Gemini does not read it; recorded to check the customer's key is not passed on.
    pub authorization: Option<String>,
    pub body: Value,
}

/// A running mock Gemini upstream.
pub struct MockGemini {
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
    /// What a `gemini-held-tail` stream's last event waits for.
    tail: Arc<tokio::sync::Notify>,
    handle: actix_web::dev::ServerHandle,
}

/// What `:countTokens` answers.
pub const COUNTED_TOKENS: i64 = 9;

/// The `responseId` of every answer the mock gives.
pub const RESPONSE_ID: &str = "resp-mock-1";

/// The streamed text pieces; their concatenation is every answer's text.
pub const TEXT_PIECES: [&str; 3] = ["Hello", "! How", " can I help?"];

/// The text every answer carries.
pub fn answer_text() -> String {
    TEXT_PIECES.concat()
}

/// The `modelVersion` the mock answers with for the upstream model `model`.
pub fn model_version(model: &str) -> String {
    format!("{model}-001")
}

/// Token counts of an answer, as Gemini's `usageMetadata` splits them.
#[derive(Clone, Copy, Debug)]
struct Usage {
    prompt: i64,
    cached: i64,
    candidates: i64,
    thoughts: i64,
}

impl Usage {
    fn for_model(model: &str) -> Self {
        match model {
            "gemini-thinking" => Usage {
                prompt: 20,
                cached: 0,
                candidates: 30,
                thoughts: 50,
            },
            "gemini-cached" => Usage {
                prompt: 100,
                cached: 80,
                candidates: 10,
                thoughts: 0,
            },
            _ => Usage {
                prompt: 12,
                cached: 0,
                candidates: 30,
                thoughts: 0,
            },
        }
    }

    /// The full `usageMetadata` object (fields Gemini leaves out when zero are left out).
    fn metadata(self) -> Value {
        let mut m = json!({
            "promptTokenCount": self.prompt,
            "candidatesTokenCount": self.candidates,
            "totalTokenCount": self.prompt + self.candidates + self.thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt}],
        });
        if self.cached > 0 {
            m["cachedContentTokenCount"] = json!(self.cached);
            m["cacheTokensDetails"] = json!([{"modality": "TEXT", "tokenCount": self.cached}]);
        }
        if self.thoughts > 0 {
            m["thoughtsTokenCount"] = json!(self.thoughts);
        }
        m
    }

    /// The `usageMetadata` of a stream's early chunk: what had been counted so far,
    /// `candidates` output tokens and (for a thinking model) every thought token.
    fn partial(self, candidates: i64) -> Value {
        let mut m = json!({
            "promptTokenCount": self.prompt,
            "totalTokenCount": self.prompt + candidates + self.thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt}],
        });
        if candidates > 0 {
            m["candidatesTokenCount"] = json!(candidates);
        }
        if self.cached > 0 {
            m["cachedContentTokenCount"] = json!(self.cached);
        }
        if self.thoughts > 0 {
            m["thoughtsTokenCount"] = json!(self.thoughts);
        }
        m
    }
}

impl MockGemini {
    /// Starts the mock on a free port.
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::new(tokio::sync::Notify::new());
        let data = web::Data::new(Arc::clone(&received));
        let gate = web::Data::new(Arc::clone(&tail));
        let (base_url, handle) = crate::mock_server::serve(move |cfg| {
            cfg.app_data(data.clone()).app_data(gate.clone()).route(
                "/v1beta/models/{model_and_method}",
                web::post().to(generate),
            );
        });
        MockGemini {
            base_url,
            received,
            tail,
            handle,
        }
    }

    /// Lets a `gemini-held-tail` stream send its last event.
    pub fn release_tail(&self) {
        self.tail.notify_one();
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests each upstream key (`x-goog-api-key`) made.
    pub fn count_by_key(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for r in self.received() {
            *counts
                .entry(r.x_goog_api_key.unwrap_or_default())
                .or_insert(0) += 1;
        }
        counts
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// A Google API error answer: `{"error":{"code","message","status"}}`, plus `details`
/// when given.
fn error(status: u16, google_status: &str, message: &str, details: Option<Value>) -> HttpResponse {
    let mut body = json!({"error": {"code": status, "message": message, "status": google_status}});
    if let Some(details) = details {
        body["error"]["details"] = details;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .insert_header(("content-type", "application/json; charset=UTF-8"))
        .body(serde_json::to_string_pretty(&body).unwrap())
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One `GenerateContentResponse` (a whole answer, or one chunk of a stream).
fn response(model: &str, text: &str, finish: bool, usage: Value) -> Value {
    let mut candidate =
        json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
    if finish {
        candidate["finishReason"] = json!("STOP");
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model_version(model),
        "responseId": RESPONSE_ID,
    })
}

async fn generate(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    tail: web::Data<Arc<tokio::sync::Notify>>,
    req: HttpRequest,
    segment: web::Path<String>,
    body: Bytes,
) -> HttpResponse {
    let segment = segment.into_inner();
    let (model, method) = match segment.split_once(':') {
        Some((m, x)) => (m.to_owned(), x.to_owned()),
        None => (segment.clone(), String::new()),
    };
    let parsed = serde_json::from_slice::<Value>(&body);
    let x_goog_api_key = header(&req, "x-goog-api-key");
    if method == "countTokens" {
        // Free and not recorded: `received` holds the billable calls.
        if x_goog_api_key.is_none() {
            return error(403, "PERMISSION_DENIED", "no API key", None);
        }
        return HttpResponse::Ok().json(json!({"totalTokens": COUNTED_TOKENS}));
    }
    let query = req.query_string().to_owned();
    received.lock().unwrap().push(Received {
        path: req.path().to_owned(),
        model: model.clone(),
        method: method.clone(),
        query: query.clone(),
        x_goog_api_key: x_goog_api_key.clone(),
        authorization: header(&req, "authorization"),
        body: parsed.as_ref().cloned().unwrap_or(Value::Null),
    });
    let Some(key) = x_goog_api_key else {
        return error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established \
             identity). Please use API Key or other form of API consumer identity to call \
             this API.",
            None,
        );
    };
    if key.starts_with("AIza-revoked") {
        return error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            Some(json!([
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                 "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                 "metadata": {"service": "generativelanguage.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                 "locale": "en-US", "message": "API key not valid. Please pass a valid API key."}
            ])),
        );
    }
    let streamed = match method.as_str() {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => {
            return error(
                404,
                "NOT_FOUND",
                &format!(
                    "models/{model} is not found for API version v1beta, or is not supported for {method}."
                ),
                None,
            );
        }
    };
    let Ok(_) = parsed else {
        return error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received. Unexpected end of string.",
            None,
        );
    };
    let named_cache = parsed
        .as_ref()
        .ok()
        .and_then(|b| b["cachedContent"].as_str())
        .map(str::to_owned);
    if let Some(name) = named_cache.filter(|n| !n.starts_with("cachedContents/mine-")) {
        return error(
            403,
            "PERMISSION_DENIED",
            &format!(
                "You do not have permission to access the CachedContent {name} (or it may not exist)."
            ),
            None,
        );
    }
    match model.as_str() {
        "echo-invalid" => {
            let said = parsed
                .as_ref()
                .ok()
                .and_then(|b| b.pointer("/contents/0/parts/0/text"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            return error(
                400,
                "INVALID_ARGUMENT",
                &format!("Invalid value at 'contents[0].parts[0].text' ({said})"),
                Some(json!([
                    {"@type": "type.googleapis.com/google.rpc.BadRequest",
                     "fieldViolations": [{"field": "contents[0].parts[0].text", "description": said}]}
                ])),
            );
        }
        "fail-500" => return error(500, "INTERNAL", "Internal error", None),
        "fail-503" => {
            return error(
                503,
                "UNAVAILABLE",
                "The model is overloaded. Please try again later.",
                None,
            );
        }
        "bad-request" => {
            return error(
                400,
                "INVALID_ARGUMENT",
                "* GenerateContentRequest.contents: contents is not specified\n",
                None,
            );
        }
        _ => {}
    }
    let usage = Usage::for_model(&model);
    match crate::mock_tools::gemini_turn(parsed.as_ref().unwrap_or(&Value::Null)) {
        crate::mock_tools::Turn::Invalid(m) => return error(400, "INVALID_ARGUMENT", &m, None),
        crate::mock_tools::Turn::Call(name) => {
            // One whole call, with its finish and usage; a stream sends it as one chunk.
            let mut r = response(&model, "", true, usage.metadata());
            r["candidates"][0]["content"]["parts"] =
                json!([{"functionCall": {"name": name, "args": crate::mock_tools::arguments()}}]);
            let body = serde_json::to_string(&r).unwrap();
            return if streamed {
                HttpResponse::Ok()
                    .insert_header(("content-type", "text/event-stream"))
                    .body(format!("data: {body}\r\n\r\n"))
            } else {
                HttpResponse::Ok()
                    .insert_header(("content-type", "application/json; charset=UTF-8"))
                    .body(body)
            };
        }
        _ => {}
    }
    if !streamed {
        return HttpResponse::Ok()
            .insert_header(("content-type", "application/json; charset=UTF-8"))
            .body(
                serde_json::to_string_pretty(&response(
                    &model,
                    &answer_text(),
                    true,
                    usage.metadata(),
                ))
                .unwrap(),
            );
    }
    let chunks = vec![
        response(&model, TEXT_PIECES[0], false, usage.partial(0)),
        response(&model, TEXT_PIECES[1], false, usage.partial(3)),
        response(&model, TEXT_PIECES[2], true, usage.metadata()),
    ];
    if !query.split('&').any(|p| p == "alt=sse") {
        // Without alt=sse Gemini streams one JSON array of the same objects.
        return HttpResponse::Ok()
            .insert_header(("content-type", "application/json; charset=UTF-8"))
            .body(serde_json::to_string_pretty(&chunks).unwrap());
    }
    // `gemini-held-tail`: the last event waits until the test releases it.
    let last = chunks.len() - 1;
    let gate = (model == "gemini-held-tail").then(|| Arc::clone(&tail));
    let body = futures_util::stream::iter(chunks.into_iter().enumerate().map(|(i, c)| {
        (
            i,
            Ok::<_, actix_web::Error>(Bytes::from(format!("data: {c}\r\n\r\n"))),
        )
    }))
    .then(move |(i, c)| {
        let gate = gate.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if let (Some(gate), true) = (gate, i == last) {
                gate.notified().await;
            }
            c
        }
    });
    HttpResponse::Ok()
        .insert_header(("content-type", "text/event-stream"))
        .insert_header(("content-disposition", "attachment"))
        .streaming(body)
}
