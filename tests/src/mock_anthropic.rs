//! A mock Anthropic upstream (`POST /v1/messages`) that answers as Anthropic does: the
//! `message` object, the named SSE events of a stream, and `{"type":"error",...}` bodies.
//!
//! Authentication: the `x-api-key` header is required (401 `authentication_error`
//! without it), keys starting `sk-ant-revoked` get 401 `authentication_error`, and a
//! missing `anthropic-version` header is a 400 `invalid_request_error`, as on the real
//! API. The upstream model name picks the behaviour:
//! - anything else: a normal answer, 12 input / 30 output tokens, no cache;
//! - `claude-cached`: 10 input, 80 read from the cache, 0 written to it, 40 output;
//! - `claude-cache-write`: 10 input, 0 read from the cache, 50 written to it, 40 output;
//! - `claude-delta-input`: like `claude-cached`, but streamed as some Anthropic-compatible
//!   upstreams do: the last `message_delta` repeats `input_tokens` and leaves out the
//!   cache fields (the cache reads stand as `message_start` reported them);
//! - `claude-two-deltas`: streamed, two `message_delta` events whose cumulative
//!   `output_tokens` are 12 then 30 (the last one is the total); not streamed, normal;
//! - `fail-529`: 529 `overloaded_error`; `bad-request`: 400 `invalid_request_error`.
//!
//! With `"stream": true` the answer is Anthropic's event sequence, each event with its
//! `event:` line: `message_start` (the message with empty content and the input usage,
//! `output_tokens` 1), `content_block_start` (empty text), `ping`, five
//! `content_block_delta` `text_delta` pieces, `content_block_stop`, `message_delta`
//! (`stop_reason` `end_turn` and the cumulative `output_tokens`), `message_stop`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::mock_openai::CONTENT_PIECES;

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub x_api_key: Option<String>,
    pub anthropic_version: Option<String>,
    /// Anthropic does not read it; recorded to check the customer's key is not passed on.
    pub authorization: Option<String>,
    pub body: Value,
}

/// A running mock Anthropic upstream.
pub struct MockAnthropic {
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
    handle: actix_web::dev::ServerHandle,
}

/// The `id` of every message the mock answers.
pub const MESSAGE_ID: &str = "msg_01MockXyz";

/// The text every answer carries: the concatenation of the streamed pieces.
pub fn answer_text() -> String {
    CONTENT_PIECES.concat()
}

/// The model name the mock answers with for the upstream model `model`.
pub fn dated(model: &str) -> String {
    format!("{model}-20250219")
}

impl MockAnthropic {
    /// Starts the mock on a free port.
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let data = web::Data::new(Arc::clone(&received));
        let (base_url, handle) = crate::mock_server::serve(move |cfg| {
            cfg.app_data(data.clone())
                .route("/v1/messages", web::post().to(messages))
                .route("/v1/messages/count_tokens", web::post().to(count_tokens));
        });
        MockAnthropic {
            base_url,
            received,
            handle,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests each upstream key (`x-api-key`) made.
    pub fn count_by_key(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for r in self.received() {
            *counts.entry(r.x_api_key.unwrap_or_default()).or_insert(0) += 1;
        }
        counts
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// An Anthropic error answer.
fn error(status: u16, kind: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .insert_header(("request-id", "req_mock_error"))
        .json(json!({"type": "error", "error": {"type": kind, "message": message}}))
}

/// (input, cache_read, cache_creation, output) for an upstream model.
fn tokens_for(model: &str) -> (i64, i64, i64, i64) {
    match model {
        "claude-cached" | "claude-delta-input" => (10, 80, 0, 40),
        "claude-cache-write" => (10, 0, 50, 40),
        _ => (12, 0, 0, 30),
    }
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// What the mock's `count_tokens` answers (not recorded in `received`).
pub const COUNTED_TOKENS: i64 = 14;

/// `POST /v1/messages/count_tokens`: Anthropic's free token count.
async fn count_tokens(req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    if header(&req, "x-api-key").is_none_or(|k| k.starts_with("sk-ant-revoked")) {
        return error(401, "authentication_error", "invalid x-api-key");
    }
    if !body["messages"].is_array() {
        return error(400, "invalid_request_error", "messages: Field required");
    }
    HttpResponse::Ok().json(json!({"input_tokens": COUNTED_TOKENS}))
}

async fn messages(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    req: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    let parsed = serde_json::from_slice::<Value>(&body);
    let x_api_key = header(&req, "x-api-key");
    let anthropic_version = header(&req, "anthropic-version");
    received.lock().unwrap().push(Received {
        path: req.path().to_owned(),
        x_api_key: x_api_key.clone(),
        anthropic_version: anthropic_version.clone(),
        authorization: header(&req, "authorization"),
        body: parsed.as_ref().cloned().unwrap_or(Value::Null),
    });
    let Some(key) = x_api_key else {
        return error(401, "authentication_error", "invalid x-api-key");
    };
    if key.starts_with("sk-ant-revoked") {
        return error(401, "authentication_error", "invalid x-api-key");
    }
    if anthropic_version.is_none() {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let Ok(body) = parsed else {
        return error(
            400,
            "invalid_request_error",
            "There was an issue with your request body: invalid JSON",
        );
    };
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    match model.as_str() {
        "fail-529" => return error(529, "overloaded_error", "Overloaded"),
        "bad-request" => {
            return error(400, "invalid_request_error", "max_tokens: Field required");
        }
        _ => {}
    }
    match crate::mock_tools::anthropic_turn(&body) {
        crate::mock_tools::Turn::Invalid(m) => return error(400, "invalid_request_error", &m),
        crate::mock_tools::Turn::Call(name) => return tool_use(&body, &model, &name),
        _ => {}
    }
    if body["stream"].as_bool().unwrap_or(false) {
        return stream(&model);
    }
    let (input, cache_read, cache_creation, output) = tokens_for(&model);
    HttpResponse::Ok()
        .insert_header(("request-id", "req_mock_message"))
        .json(json!({
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "model": dated(&model),
            "content": [{"type": "text", "text": answer_text()}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": input,
                "output_tokens": output,
                "cache_creation_input_tokens": cache_creation,
                "cache_read_input_tokens": cache_read,
            },
        }))
}

/// A `tool_use` of tool `name`, whole or as Anthropic streams it (the block with empty
/// input, then `input_json_delta` pieces).
fn tool_use(body: &Value, model: &str, name: &str) -> HttpResponse {
    use crate::mock_tools::{ANTHROPIC_CALL_ID, arguments};
    let (input, cache_read, cache_creation, output) = tokens_for(model);
    let usage = json!({"input_tokens": input, "output_tokens": output,
        "cache_creation_input_tokens": cache_creation, "cache_read_input_tokens": cache_read});
    if !body["stream"].as_bool().unwrap_or(false) {
        return HttpResponse::Ok().json(json!({
            "id": MESSAGE_ID, "type": "message", "role": "assistant", "model": dated(model),
            "content": [{"type": "tool_use", "id": ANTHROPIC_CALL_ID, "name": name, "input": arguments()}],
            "stop_reason": "tool_use", "stop_sequence": null, "usage": usage,
        }));
    }
    let args = arguments().to_string();
    let (a, b) = args.split_at(args.len() / 2);
    let events = [
        event(
            "message_start",
            json!({"type": "message_start", "message": {
            "id": MESSAGE_ID, "type": "message", "role": "assistant", "content": [], "model": dated(model),
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input, "cache_creation_input_tokens": cache_creation,
                      "cache_read_input_tokens": cache_read, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": ANTHROPIC_CALL_ID, "name": name, "input": {}}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": a}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": b}}),
        ),
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": output}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ];
    HttpResponse::Ok()
        .insert_header(("content-type", "text/event-stream; charset=utf-8"))
        .body(events.concat())
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn stream(model: &str) -> HttpResponse {
    let (input, cache_read, cache_creation, output) = tokens_for(model);
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": MESSAGE_ID, "type": "message", "role": "assistant", "content": [],
                "model": dated(model), "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "cache_creation_input_tokens": cache_creation,
                          "cache_read_input_tokens": cache_read, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for piece in CONTENT_PIECES {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    if model == "claude-two-deltas" {
        // An early, partial count: the usage of message_delta is cumulative.
        events.push(event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": null, "stop_sequence": null},
                   "usage": {"output_tokens": 12}}),
        ));
    }
    let usage = if model == "claude-delta-input" {
        json!({"input_tokens": input, "output_tokens": output})
    } else {
        json!({"output_tokens": output})
    };
    events.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": usage}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    let body = futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, actix_web::Error>(Bytes::from(e))),
    )
    .then(|e| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        e
    });
    HttpResponse::Ok()
        .insert_header(("content-type", "text/event-stream; charset=utf-8"))
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("request-id", "req_mock_stream"))
        .streaming(body)
}
