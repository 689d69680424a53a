//! A mock OpenAI upstream. The upstream model name picks the behaviour:
//! - anything else: a normal answer (12 prompt / 30 completion tokens);
//! - `reasoner`: usage with 4 cached prompt tokens and 10 reasoning tokens (100 / 40);
//! - `fail-500`, `fail-429`: that status with an OpenAI error body;
//! - `bad-request`: 400 with an OpenAI error body (blames the request);
//! - `slow`: waits 3 s before answering (for timeouts);
//! - `cut-stream`: a stream that stops after two content chunks, no usage, no [DONE].
//!
//! Streams follow OpenAI's sequence: a role chunk, content chunks, a finish chunk, and
//! when `stream_options.include_usage` is set, `"usage": null` on every chunk and a
//! final chunk with `"choices": []` and the usage; then `data: [DONE]`.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
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
    handle: actix_web::dev::ServerHandle,
}

/// The content every normal answer carries, and its streamed pieces.
pub const CONTENT_PIECES: [&str; 5] = ["Hello", "!", " How", " can I", " help?"];

impl MockOpenAi {
    /// Starts the mock on a free port.
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let data = web::Data::new(Arc::clone(&received));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .route("/v1/chat/completions", web::post().to(chat))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        MockOpenAi {
            base_url: format!("http://127.0.0.1:{port}"),
            received,
            handle,
        }
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
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    match model.as_str() {
        "fail-500" => {
            return error(
                500,
                "The server had an error while processing your request.",
                "server_error",
                "server_error",
            );
        }
        "fail-429" => {
            return error(
                429,
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
            );
        }
        "bad-request" => {
            return error(
                400,
                "Invalid value for 'temperature': must be between 0 and 2.",
                "invalid_request_error",
                "invalid_value",
            );
        }
        "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        _ => {}
    }
    let dated = format!("{model}-2024-07-18");
    if body["stream"].as_bool().unwrap_or(false) {
        let include_usage = body["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        return stream(&model, &dated, include_usage);
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
    for (i, piece) in CONTENT_PIECES.iter().enumerate() {
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
            .map(|e| Ok::<_, actix_web::Error>(Bytes::from(e))),
    )
    .then(|e| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
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
