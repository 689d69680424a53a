//! A mock OpenAI upstream. The upstream model name picks the behaviour:
//! - anything else: a normal answer (12 prompt / 30 completion tokens);
//! - `reasoner`: usage with 4 cached prompt tokens and 10 reasoning tokens (100 / 40);
//! - `fail-500`, `fail-429`: that status with an OpenAI error body;
//! - `bad-request`: 400 with an OpenAI error body (blames the request);
//! - `slow`: waits 3 s before answering (for timeouts);
//! - `cut-stream`: a stream that stops after two content chunks, no usage, no [DONE];
//! - `fail-429` answers with `Retry-After: 1`;
//! - `malformed`: 200 with a body that is not JSON; `empty`: 200 with no body;
//! - `no-usage`: a stream that never reports usage, even when asked;
//! - `slow-stream`: twenty `tick` chunks 100 ms apart (for clients that leave);
//! - `echo-invalid`: 400 `invalid_request_error` / `invalid_value` whose message quotes
//!   the customer's last message, as upstreams do (the words may look like a key error);
//! - `huge`: a normal answer padded to 2 MiB (for the upstream answer size limit);
//! - `stall-after-role`: a stream that sends its role chunk, then nothing for 5 s;
//! - `long-answer`: a model that writes until its limit: completion tokens are the
//!   request's `max_tokens` / `max_completion_tokens`, or 10,000 when it names none.
//!
//! Keys pick failures too: `sk-revoked…` gets 401 `invalid_api_key` (until
//! [`MockOpenAi::accept_revoked_keys`]), `sk-broke…` gets 429 `insufficient_quota`,
//! `sk-flaky…` gets 401 `invalid_api_key` on its first request only.
//! [`reset_upstream`] starts a listener that drops every connection before answering.
//!
//! Streams follow OpenAI's sequence: a role chunk, content chunks, a finish chunk, and
//! when `stream_options.include_usage` is set, `"usage": null` on every chunk and a
//! final chunk with `"choices": []` and the usage; then `data: [DONE]`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::{Value, json};

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// A running mock upstream.
pub struct MockOpenAi {
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
    revoked_ok: Arc<AtomicBool>,
    handle: actix_web::dev::ServerHandle,
}

/// The content every normal answer carries, and its streamed pieces.
pub const CONTENT_PIECES: [&str; 5] = ["Hello", "!", " How", " can I", " help?"];

impl MockOpenAi {
    /// Starts the mock on a free port.
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let data = web::Data::new(Arc::clone(&received));
        let revoked_ok = Arc::new(AtomicBool::new(false));
        let revoked_data = web::Data::new(Arc::clone(&revoked_ok));
        let (base_url, handle) = crate::mock_server::serve(move |cfg| {
            cfg.app_data(data.clone())
                .app_data(revoked_data.clone())
                .route("/v1/chat/completions", web::post().to(chat))
                .route("/v1/completions", web::post().to(completions))
                .route("/beta/completions", web::post().to(completions))
                .route("/v1/responses", web::post().to(responses))
                .route(
                    "/openai/deployments/{deployment}/chat/completions",
                    web::post().to(azure_chat),
                )
                .route("/v1/embeddings", web::post().to(embeddings))
                .route("/v1/images/generations", web::post().to(images))
                .route("/v1/moderations", web::post().to(moderations))
                .route("/v1/images/edits", web::post().to(image_form))
                .route("/v1/images/variations", web::post().to(image_form))
                .route("/v1/audio/speech", web::post().to(speech))
                .route("/v1/audio/transcriptions", web::post().to(transcription))
                .route("/v1/audio/translations", web::post().to(transcription));
        });
        MockOpenAi {
            base_url,
            received,
            revoked_ok,
            handle,
        }
    }

    /// From now on `sk-revoked…` keys work (the provider reinstated them).
    pub fn accept_revoked_keys(&self) {
        self.revoked_ok.store(true, Ordering::SeqCst);
    }

    /// How many requests each upstream key made.
    pub fn count_by_key(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for r in self.received() {
            *counts
                .entry(r.authorization.unwrap_or_default())
                .or_insert(0) += 1;
        }
        counts
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

fn error(status: u16, message: &str, kind: &str, code: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

fn usage_for(model: &str) -> Value {
    if model == "reasoner" {
        json!({"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
               "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 10, "audio_tokens": 0,
                   "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
    } else {
        json!({"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                   "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
    }
}

async fn chat(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    revoked_ok: web::Data<Arc<AtomicBool>>,
    req: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(
            400,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            "invalid_json",
        );
    };
    received.lock().unwrap().push(Received {
        path: req.path().to_owned(),
        authorization: req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if auth.starts_with("Bearer sk-revoked") && !revoked_ok.load(Ordering::SeqCst) {
        return error(
            401,
            "Incorrect API key provided: sk-revo*****. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        );
    }
    if auth.starts_with("Bearer sk-flaky")
        && received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.authorization.as_deref() == Some(auth.as_str()))
            .count()
            == 1
    {
        return error(
            401,
            "Incorrect API key provided: sk-flak*****.",
            "invalid_request_error",
            "invalid_api_key",
        );
    }
    if auth.starts_with("Bearer sk-broke") {
        return error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        );
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    match model.as_str() {
        "malformed" => {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body("{\"id\": \"chatcmpl-x\", \"choices\": [");
        }
        "empty" => return HttpResponse::Ok().content_type("application/json").finish(),
        "fail-500" => {
            return error(
                500,
                "The server had an error while processing your request.",
                "server_error",
                "server_error",
            );
        }
        "fail-429" => {
            let mut resp = error(
                429,
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
            );
            resp.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_static("1"),
            );
            return resp;
        }
        "bad-request" => {
            return error(
                400,
                "Invalid value for 'temperature': must be between 0 and 2.",
                "invalid_request_error",
                "invalid_value",
            );
        }
        "echo-invalid" => {
            let said = body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default();
            return error(
                400,
                &format!("Invalid 'messages[0].content': '{said}' is not a valid value."),
                "invalid_request_error",
                "invalid_value",
            );
        }
        "huge" => {
            let padding = "a".repeat(2 * 1024 * 1024);
            return HttpResponse::Ok().json(json!({
                "id": "chatcmpl-mockhuge", "object": "chat.completion", "created": 1_732_000_000,
                "model": "huge-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": padding},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": usage_for(&model),
            }));
        }
        "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        "long-answer" => return long_answer(&body),
        _ => {}
    }
    let dated = format!("{model}-2024-07-18");
    match crate::mock_tools::openai_turn(&body) {
        crate::mock_tools::Turn::Invalid(m) => {
            return error(400, &m, "invalid_request_error", "invalid_value");
        }
        crate::mock_tools::Turn::Call(name) => return tool_call(&body, &name, &dated),
        _ => {}
    }
    if body["stream"].as_bool().unwrap_or(false) {
        let include_usage = body["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        // `no-usage` plays an upstream that ignores stream_options.include_usage.
        return stream(&model, &dated, include_usage && model != "no-usage");
    }
    HttpResponse::Ok().json(json!({
        "id": "chatcmpl-mock123",
        "object": "chat.completion",
        "created": 1_732_000_000,
        "model": dated,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": CONTENT_PIECES.concat(), "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": usage_for(&model),
        "system_fingerprint": "fp_mock",
    }))
}

/// A call to tool `name`, whole or streamed (id and name first, then the arguments
/// in two pieces, the finish, the usage when asked, `[DONE]`).
fn tool_call(body: &Value, name: &str, dated: &str) -> HttpResponse {
    use crate::mock_tools::{OPENAI_CALL_ID, arguments};
    let args = arguments().to_string();
    if !body["stream"].as_bool().unwrap_or(false) {
        return HttpResponse::Ok().json(json!({
            "id": "chatcmpl-mocktool", "object": "chat.completion", "created": 1_732_000_000, "model": dated,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{"id": OPENAI_CALL_ID, "type": "function", "function": {"name": name, "arguments": args}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": usage_for("tool"),
        }));
    }
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-mocktool", "object": "chat.completion.chunk", "created": 1_732_000_000,
            "model": dated, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let (a, b) = args.split_at(args.len() / 2);
    let mut events = vec![
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": OPENAI_CALL_ID, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
    ];
    if body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false)
    {
        let last = json!({"id": "chatcmpl-mocktool", "object": "chat.completion.chunk", "created": 1_732_000_000,
            "model": dated, "choices": [], "usage": usage_for("tool")});
        events.push(format!("data: {last}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .body(events.concat())
}

/// `long-answer`: as many completion tokens as the request allows (10,000 unbounded).
fn long_answer(body: &Value) -> HttpResponse {
    let limit = body["max_completion_tokens"]
        .as_i64()
        .or(body["max_tokens"].as_i64())
        .unwrap_or(10_000);
    HttpResponse::Ok().json(json!({
        "id": "chatcmpl-long", "object": "chat.completion", "created": 1_732_000_000,
        "model": "long-answer-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word ".repeat(20)}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": limit, "total_tokens": 12 + limit},
    }))
}

fn stream(model: &str, dated: &str, include_usage: bool) -> HttpResponse {
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": "chatcmpl-mockstream", "object": "chat.completion.chunk", "created": 1_732_000_000,
            "model": dated, "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    let cut = model == "cut-stream";
    let pieces: Vec<&str> = if model == "slow-stream" {
        vec!["tick"; 20]
    } else {
        CONTENT_PIECES.to_vec()
    };
    let gap = Duration::from_millis(if model == "slow-stream" { 100 } else { 5 });
    let stall = model == "stall-after-role";
    for (i, piece) in pieces.iter().enumerate() {
        if cut && i == 2 {
            break;
        }
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    if !cut {
        events.push(chunk(json!({}), Value::from("stop")));
        if include_usage {
            let last = json!({"id": "chatcmpl-mockstream", "object": "chat.completion.chunk", "created": 1_732_000_000,
                "model": dated, "system_fingerprint": "fp_mock", "choices": [], "usage": usage_for(model)});
            events.push(format!("data: {last}\n\n"));
        }
        events.push("data: [DONE]\n\n".to_owned());
    }
    let body = futures_util::stream::iter(
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i, Ok::<_, actix_web::Error>(Bytes::from(e)))),
    )
    .then(move |(i, e)| async move {
        let wait = if stall && i == 1 {
            Duration::from_secs(5)
        } else {
            gap
        };
        tokio::time::sleep(wait).await;
        e
    });
    let mut resp = HttpResponse::Ok();
    resp.insert_header(("content-type", "text/event-stream"));
    if cut {
        // End the connection abruptly after the partial stream.
        resp.insert_header(("connection", "close"));
    }
    resp.streaming(body)
}

use futures_util::StreamExt;

/// An upstream that accepts connections and drops them before answering (a
/// connection reset before headers); returns its base URL.
pub async fn reset_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // Read a little so the request is on the wire, then hang up.
            let _ = stream.set_zero_linger();
            let mut buf = [0u8; 64];
            let _ = stream.try_read(&mut buf);
            drop(stream);
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn record(received: &Mutex<Vec<Received>>, req: &HttpRequest, body: &Value) {
    received.lock().unwrap().push(Received {
        path: req.path().to_owned(),
        authorization: req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
}

/// `/v1/embeddings`: one float vector per input, 8 prompt tokens.
async fn embeddings(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    record(&received, &req, &body);
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0093, 0.0158]}],
        "model": body["model"],
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }))
}

/// Azure OpenAI's chat: the deployment in the path, `api-version` in the query, the
/// key in `api-key`. Recorded with the query in `path` and the key as `api-key …`.
async fn azure_chat(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    let key = req
        .headers()
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    received.lock().unwrap().push(Received {
        path: format!("{}?{}", req.path(), req.query_string()),
        authorization: key.as_ref().map(|k| format!("api-key {k}")),
        body: body.0.clone(),
    });
    if key.is_none() {
        return error(
            401,
            "Access denied due to invalid subscription key.",
            "invalid_request_error",
            "401",
        );
    }
    if !req.query_string().contains("api-version=") {
        return error(404, "Resource not found", "invalid_request_error", "404");
    }
    let deployment = req
        .match_info()
        .get("deployment")
        .unwrap_or_default()
        .to_owned();
    if body["stream"].as_bool().unwrap_or(false) {
        let usage = body["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        return stream(&deployment, &deployment, usage);
    }
    HttpResponse::Ok().json(json!({
        "id": "chatcmpl-azure1", "object": "chat.completion", "created": 1_732_000_000, "model": deployment,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": CONTENT_PIECES.concat()}, "finish_reason": "stop"}],
        "usage": usage_for(&deployment),
    }))
}

/// The Responses object the mock answers with (12 input, 4 of them cached; 30 output,
/// 10 of them reasoning), in state `status`, with `output`.
fn response_object(model: &Value, status: &str, output: Value, usage: bool) -> Value {
    json!({
        "id": "resp_mock123", "object": "response", "created_at": 1_732_000_000, "status": status,
        "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null,
        "model": model, "output": output, "parallel_tool_calls": true, "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null}, "store": true, "temperature": 1.0,
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
        "truncation": "disabled", "metadata": {},
        "usage": if usage { json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4},
            "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 10}, "total_tokens": 42}) } else { Value::Null },
    })
}

/// `POST /v1/responses`, as OpenAI answers it: a Responses object, or its stream of
/// named lifecycle events ending with `response.completed` (which carries the usage).
async fn responses(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    record(&received, &req, &body);
    if body["model"] == "no-responses" {
        // An OpenAI-compatible provider that has only chat completions.
        return HttpResponse::NotFound().body("404 page not found");
    }
    let text = CONTENT_PIECES.concat();
    let item = |status: &str, text: &str| {
        json!({"id": "msg_mock1", "type": "message", "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    if !body["stream"].as_bool().unwrap_or(false) {
        return HttpResponse::Ok().json(response_object(
            &body["model"],
            "completed",
            json!([item("completed", &text)]),
            true,
        ));
    }
    let mut seq = 0;
    let mut events = Vec::new();
    let mut push = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        events.push(format!("event: {kind}\ndata: {data}\n\n"));
    };
    let start = response_object(&body["model"], "in_progress", json!([]), false);
    push("response.created", json!({"response": start}));
    push("response.in_progress", json!({"response": start}));
    let mut added = item("in_progress", "");
    added["content"] = json!([]);
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": added}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": "msg_mock1", "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": []}}),
    );
    let cut = body["model"] == "cut-stream";
    for (i, piece) in CONTENT_PIECES.iter().enumerate() {
        if cut && i == 2 {
            // The connection drops mid-answer: no usage ever comes.
            return HttpResponse::Ok()
                .content_type("text/event-stream")
                .insert_header(("connection", "close"))
                .body(events.concat());
        }
        push(
            "response.output_text.delta",
            json!({"item_id": "msg_mock1", "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}),
        );
    }
    push(
        "response.output_text.done",
        json!({"item_id": "msg_mock1", "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
    );
    push(
        "response.content_part.done",
        json!({"item_id": "msg_mock1", "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": text, "annotations": []}}),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": item("completed", &text)}),
    );
    push(
        "response.completed",
        json!({"response": response_object(&body["model"], "completed", json!([item("completed", &text)]), true)}),
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .body(events.concat())
}

/// The text every transcription and translation returns.
pub const TRANSCRIPT: &str = "Hello from the recording.";
/// Bytes of audio `/v1/audio/speech` answers with (an MP3 header and silence).
pub const SPEECH_BYTES: usize = 2003;

/// A form upload, as the mock records it: the text fields, and each file as
/// `{"field", "filename", "bytes"}` under `files`.
fn form(req: &HttpRequest, body: &[u8]) -> Result<Value, Box<HttpResponse>> {
    use relay_core::multipart;
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let bad = || {
        error(
            400,
            "Expected multipart/form-data",
            "invalid_request_error",
            "invalid_form",
        )
    };
    let boundary = multipart::boundary(ct).map_err(|_| bad())?;
    let fields = multipart::fields(body, &boundary).map_err(|_| bad())?;
    let mut out = json!({"files": []});
    for f in &fields {
        match &f.filename {
            Some(name) => out["files"]
                .as_array_mut()
                .unwrap()
                .push(json!({"field": f.name, "filename": name, "bytes": f.len()})),
            None => out[f.name.as_str()] = json!(f.text(body).unwrap_or_default()),
        }
    }
    Ok(out)
}

/// `POST /v1/images/edits` and `/variations`: `n` images as base64 (model
/// `image-empty`: one image with no data, which costs nothing).
async fn image_form(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    req: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    let fields = match form(&req, &body) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    record(&received, &req, &fields);
    let n: usize = fields["n"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let data: Vec<Value> = if fields["model"] == "image-empty" {
        vec![json!({"b64_json": ""})]
    } else {
        (0..n)
            .map(|_| json!({"b64_json": "iVBORw0KGgo="}))
            .collect()
    };
    HttpResponse::Ok().json(json!({"created": 1_732_000_000, "data": data}))
}

/// `POST /v1/audio/speech`: audio bytes, streamed in pieces.
async fn speech(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    record(&received, &req, &body);
    if body["input"].as_str().is_none_or(str::is_empty) {
        return error(
            400,
            "input is required",
            "invalid_request_error",
            "invalid_value",
        );
    }
    let mut audio = b"ID3".to_vec();
    audio.resize(SPEECH_BYTES, 0);
    let pieces: Vec<Result<Bytes, actix_web::Error>> = audio
        .chunks(500)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    HttpResponse::Ok()
        .content_type("audio/mpeg")
        .streaming(futures_util::stream::iter(pieces))
}

/// `POST /v1/audio/transcriptions` and `/translations`: `json` carries usage of 7
/// seconds on transcriptions (none on translations, as OpenAI's), `verbose_json` a
/// duration of 7.2 s, `text` only the words.
async fn transcription(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    req: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    let fields = match form(&req, &body) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    record(&received, &req, &fields);
    match fields["response_format"].as_str().unwrap_or("json") {
        "text" => HttpResponse::Ok()
            .content_type("text/plain")
            .body(TRANSCRIPT),
        // `whisper-lowrate` plays a long recording at a low bitrate: a minute.
        "verbose_json" => {
            let duration = if fields["model"] == "whisper-lowrate" {
                60.0
            } else {
                7.2
            };
            HttpResponse::Ok().json(json!({
                "task": "transcribe", "language": "english", "duration": duration, "text": TRANSCRIPT,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": format!(" {TRANSCRIPT}")}]}))
        }
        _ if req.path().ends_with("/translations") => {
            HttpResponse::Ok().json(json!({"text": TRANSCRIPT}))
        }
        _ => HttpResponse::Ok()
            .json(json!({"text": TRANSCRIPT, "usage": {"type": "duration", "seconds": 7}})),
    }
}

/// `/v1/completions`: "Hello there" for 5 prompt and 7 completion tokens, streamed
/// as text chunks (with the usage chunk when asked) or whole.
async fn completions(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    record(&received, &req, &body);
    let usage = json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12});
    if body["stream"].as_bool().unwrap_or(false) {
        let mut events: Vec<String> = ["Hello", " there"]
            .iter()
            .map(|t| format!("data: {}\n\n", json!({"id": "cmpl-mock", "object": "text_completion", "created": 1, "model": body["model"], "choices": [{"text": t, "index": 0, "logprobs": null, "finish_reason": null}]})))
            .collect();
        events.push(format!("data: {}\n\n", json!({"id": "cmpl-mock", "object": "text_completion", "created": 1, "model": body["model"], "choices": [{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}]})));
        if body["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false)
        {
            events.push(format!("data: {}\n\n", json!({"id": "cmpl-mock", "object": "text_completion", "created": 1, "model": body["model"], "choices": [], "usage": usage})));
        }
        events.push("data: [DONE]\n\n".to_owned());
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .body(events.concat());
    }
    HttpResponse::Ok().json(json!({
        "id": "cmpl-mock", "object": "text_completion", "created": 1, "model": body["model"],
        "choices": [{"text": "Hello there", "index": 0, "logprobs": null, "finish_reason": "stop"}],
        "usage": usage,
    }))
}

/// `/v1/images/generations`: `n` images by URL; `image-partial` returns one usable
/// image and one empty; `image-empty` none; `image-fail` a 500.
async fn images(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    record(&received, &req, &body);
    let n = body["n"].as_u64().unwrap_or(1);
    let data: Vec<Value> = match body["model"].as_str().unwrap_or_default() {
        "image-fail" => {
            return error(
                500,
                "The server had an error while processing your request.",
                "server_error",
                "server_error",
            );
        }
        "image-empty" => vec![],
        "image-partial" => vec![
            json!({"url": "https://images.example/1.png", "revised_prompt": "a cat"}),
            json!({"url": ""}),
        ],
        _ => (0..n)
            .map(|i| json!({"url": format!("https://images.example/{i}.png")}))
            .collect(),
    };
    HttpResponse::Ok().json(json!({"created": 1_732_000_000, "data": data}))
}

/// `/v1/moderations`: one unflagged result per input, and (like OpenAI) no usage.
async fn moderations(
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    record(&received, &req, &body);
    HttpResponse::Ok().json(json!({
        "id": "modr-mock",
        "model": body["model"].as_str().unwrap_or("omni-moderation-latest"),
        "results": [{"flagged": false, "categories": {"violence": false}, "category_scores": {"violence": 0.0001}}],
    }))
}
