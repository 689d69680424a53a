//! The Gemini-native relay end to end: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse` forwarded to channels of type `gemini`, the customer's
//! key taken from `x-goog-api-key`, `?key=` or `Authorization: Bearer`, metered from
//! Gemini's `usageMetadata` (cached content at the cached price, thoughts as output),
//! errors in Google's shape, `GET /v1beta/models`, and the official `google-genai` Python
//! SDK; the money after every call.

use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_tests::app::generation_id;
use tollgate_tests::mock_gemini::{RESPONSE_ID, TEXT_PIECES, answer_text, model_version};
use tollgate_tests::python::run_sdk_script;
use tollgate_tests::{MockGemini, TestApp, spawn_app};

const START: i64 = 1_000_000; // 1 credit in µc

/// The channel's key, which the gateway sends upstream as `x-goog-api-key`.
const UPSTREAM_KEY: &str = "AIza-upstream-1234";

/// The model the tests call, priced input 0.1, output 0.4, cached input 0.025 per 1M.
const MODEL: &str = "gemini-2.0-flash";

/// A normal answer: 12 prompt × 0.1 + 30 candidates × 0.4 = 13.2, rounded up to 14 µc.
const NORMAL_COST: i64 = 14;

/// A thinking answer: 20 × 0.1 + (30 candidates + 50 thoughts) × 0.4 = 2 + 32 = 34 µc.
const THINKING_COST: i64 = 34;

/// A cached answer: (100 − 80) × 0.1 + 80 × 0.025 + 10 × 0.4 = 2 + 2 + 4 = 8 µc.
const CACHED_COST: i64 = 8;

/// The models the scenario's channel serves (the mock's behaviours), all priced alike.
const MODELS: [&str; 6] = [
    MODEL,
    "gemini-thinking",
    "gemini-cached",
    "fail-500",
    "fail-503",
    "bad-request",
];

/// How a request presents the customer's key.
#[derive(Clone, Copy)]
enum Auth<'a> {
    GoogApiKey(&'a str),
    Query(&'a str),
    Bearer(&'a str),
    Missing,
}

/// Which Gemini method a request calls.
#[derive(Clone, Copy, PartialEq)]
enum Method {
    Generate,
    /// `:streamGenerateContent?alt=sse`.
    Stream,
}

/// A gateway, a mock Gemini behind one `gemini` channel, priced models, and a customer
/// with 1 credit and a key.
struct Gemini {
    app: TestApp,
    mock: MockGemini,
    customer_id: i64,
    key: String,
}

impl Gemini {
    async fn start() -> Self {
        let app = spawn_app().await;
        let mock = MockGemini::start().await;
        app.add_channel(
            "gemini",
            &mock.base_url,
            &MODELS,
            json!({"type": "gemini", "keys": [UPSTREAM_KEY]}),
        )
        .await;
        for m in MODELS {
            price(&app, m, 0.1, 0.4, 0.025).await;
        }
        let (customer_id, key) = app.customer_with_key("alice", 1.0).await;
        Gemini {
            app,
            mock,
            customer_id,
            key,
        }
    }

    /// `:streamGenerateContent` without `alt=sse` (Google's JSON array) for `model`.
    async fn stream_array(&self, model: &str) -> reqwest::Response {
        self.app
            .http
            .post(format!(
                "{}/v1beta/models/{model}:streamGenerateContent?key={}",
                self.app.address, self.key
            ))
            .json(&Gemini::body())
            .send()
            .await
            .unwrap()
    }

    /// A `GenerateContentRequest` body.
    fn body() -> Value {
        json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
               "generationConfig": {"maxOutputTokens": 64}})
    }

    /// `POST /v1beta/models/{model}:{method}` with a raw body.
    async fn post_raw(
        &self,
        auth: Auth<'_>,
        model: &str,
        method: Method,
        body: String,
    ) -> reqwest::Response {
        let mut url = match method {
            Method::Generate => {
                format!("{}/v1beta/models/{model}:generateContent", self.app.address)
            }
            Method::Stream => format!(
                "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
                self.app.address
            ),
        };
        if let Auth::Query(k) = auth {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("key=");
            url.push_str(k);
        }
        let mut req = self
            .app
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        req = match auth {
            Auth::GoogApiKey(k) => req.header("x-goog-api-key", k),
            Auth::Bearer(k) => req.bearer_auth(k),
            Auth::Query(_) | Auth::Missing => req,
        };
        req.send().await.unwrap()
    }

    /// `POST /v1beta/models/{model}:{method}` with a JSON body.
    async fn call(
        &self,
        auth: Auth<'_>,
        model: &str,
        method: Method,
        body: &Value,
    ) -> reqwest::Response {
        self.post_raw(auth, model, method, body.to_string()).await
    }

    /// `GET /v1beta/models`.
    async fn list_models(&self, auth: Auth<'_>) -> reqwest::Response {
        let mut url = format!("{}/v1beta/models", self.app.address);
        if let Auth::Query(k) = auth {
            url.push_str("?key=");
            url.push_str(k);
        }
        let mut req = self.app.http.get(url);
        req = match auth {
            Auth::GoogApiKey(k) => req.header("x-goog-api-key", k),
            Auth::Bearer(k) => req.bearer_auth(k),
            Auth::Query(_) | Auth::Missing => req,
        };
        req.send().await.unwrap()
    }

    /// Asserts one charge of `cost` for the generation `gen_id`, and nothing else.
    async fn assert_charged_once(&self, gen_id: &str, cost: i64) {
        self.app
            .assert_charged_once(self.customer_id, START, gen_id, cost)
            .await;
    }

    /// Asserts the customer was charged nothing: the mint alone in the ledger.
    async fn assert_charged_nothing(&self) {
        self.app.settled().await;
        assert_eq!(self.app.balance(self.customer_id).await, START);
        let ledger = self.app.ledger(self.customer_id).await;
        assert_eq!(ledger.len(), 1, "{ledger:?}");
    }

    /// Asserts no request that reached the upstream carried the customer's key, in any
    /// header or in the query, and that each carried `key` as `x-goog-api-key`.
    fn assert_upstream_saw_only(&self, key: &str) {
        for r in self.mock.received() {
            assert_eq!(r.x_goog_api_key.as_deref(), Some(key), "{r:?}");
            assert!(
                !r.authorization
                    .as_deref()
                    .unwrap_or_default()
                    .contains(&self.key),
                "the customer's key went upstream as authorization: {r:?}"
            );
            assert!(
                !r.query.contains(&self.key) && !r.query.contains("key="),
                "the customer's key went upstream in the query: {r:?}"
            );
        }
    }

    /// Stops everything after checking that the ledger verifies.
    async fn stop(self) {
        self.app.verify_ledger().await;
        self.app.assert_ledger_consistent().await;
        self.mock.stop().await;
        self.app.stop().await;
    }
}

/// Root prices `model` (credits per 1M tokens), with a price for cached input.
async fn price(app: &TestApp, model: &str, input: f64, output: f64, cached_input: f64) {
    app.set_price_with(
        model,
        json!({"input": input, "output": output, "cached_input": cached_input}),
    )
    .await;
}

/// Asserts a Google-shaped error body (`{"error":{"code","message","status"}}`, `code`
/// the HTTP status as a number) and returns (HTTP status, `error.status`,
/// `error.message`).
async fn google_error(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    assert!(
        !resp.status().is_success(),
        "expected an error, got {status}"
    );
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status} error body is not JSON ({e}): {text}"));
    let error = &body["error"];
    assert!(error.is_object(), "not Google-shaped: {body}");
    assert_eq!(
        error["code"].as_u64(),
        Some(u64::from(status)),
        "error.code must be the HTTP status, as a number: {body}"
    );
    let google_status = error["status"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.status string: {body}"))
        .to_owned();
    assert!(!google_status.is_empty(), "{body}");
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message string: {body}"))
        .to_owned();
    assert!(!message.is_empty(), "{body}");
    (status, google_status, message)
}

/// Reads a Gemini SSE answer into its chunks (each `data:` payload, parsed). Checks
/// there is no `[DONE]` (Gemini sends none, and its SDKs would choke on one) and that
/// every event's data is a JSON object.
async fn sse_chunks(resp: reqwest::Response) -> Vec<Value> {
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let text = text.replace("\r\n", "\n");
    let mut chunks = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut data = String::new();
        for line in block.lines() {
            if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            }
        }
        if data.is_empty() {
            // A comment (keep-alive) block: legal SSE, carries nothing.
            continue;
        }
        assert_ne!(data.trim(), "[DONE]", "Gemini streams end without [DONE]");
        let value: Value = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("chunk data is not JSON ({e}): {block:?}"));
        assert!(value.is_object(), "{block:?}");
        chunks.push(value);
    }
    chunks
}

/// The streamed text of a list of chunks.
fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str())
        .collect()
}

/// The text of a whole `GenerateContentResponse`.
fn text_of(body: &Value) -> String {
    body["candidates"][0]["content"]["parts"]
        .as_array()
        .unwrap_or_else(|| panic!("no parts: {body}"))
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect()
}

/// Asserts a generation's model names: the one asked for, and the upstream's (the model
/// in the path or the `modelVersion` the upstream answered with).
fn assert_models(g: &store::entities::generation::Model, asked: &str, upstream: &str) {
    assert_eq!(g.model, asked);
    let version = model_version(upstream);
    assert!(
        matches!(g.upstream_model.as_deref(), Some(m) if m == upstream || m == version),
        "upstream_model {:?}",
        g.upstream_model
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_content_with_x_goog_api_key_is_forwarded_to_the_gemini_channel_and_charged_exactly()
 {
    let s = Gemini::start().await;
    let resp = s
        .call(
            Auth::GoogApiKey(&s.key),
            MODEL,
            Method::Generate,
            &Gemini::body(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    let body: Value = resp.json().await.unwrap();
    // Gemini's answer, passed through.
    assert_eq!(text_of(&body), answer_text());
    assert_eq!(body["candidates"][0]["content"]["role"], "model");
    assert_eq!(body["candidates"][0]["finishReason"], "STOP");
    assert_eq!(body["usageMetadata"]["promptTokenCount"], 12);
    assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 30);
    assert_eq!(body["usageMetadata"]["totalTokenCount"], 42);
    assert_eq!(body["modelVersion"], model_version(MODEL));
    assert_eq!(body["responseId"], RESPONSE_ID);

    // The upstream got the client's body untouched, at the model's path, with the
    // channel's key and never the customer's.
    let got = s.mock.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].path,
        format!("/v1beta/models/{MODEL}:generateContent")
    );
    assert_eq!(got[0].body, Gemini::body());
    s.assert_upstream_saw_only(UPSTREAM_KEY);

    s.assert_charged_once(&gen_id, NORMAL_COST).await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(
        (
            g.tokens_prompt,
            g.tokens_completion,
            g.tokens_cached,
            g.tokens_reasoning,
            g.cost
        ),
        (12, 30, 0, 0, NORMAL_COST)
    );
    assert_eq!(g.status, "success");
    assert_models(&g, MODEL, MODEL);
    assert_eq!(g.upstream_id.as_deref(), Some(RESPONSE_ID));
    assert!(g.endpoint.starts_with("/v1beta"), "endpoint {}", g.endpoint);
    assert!(!g.streamed);
    assert!(
        g.finish_reason
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case("stop")),
        "finish_reason {:?}",
        g.finish_reason
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_as_a_query_parameter_or_a_bearer_token_works_the_same() {
    let s = Gemini::start().await;
    let mut ids = Vec::new();
    for auth in [Auth::Query(&s.key), Auth::Bearer(&s.key)] {
        let resp = s.call(auth, MODEL, Method::Generate, &Gemini::body()).await;
        assert_eq!(resp.status(), 200);
        ids.push(generation_id(&resp));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(text_of(&body), answer_text());
        assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 30);
    }
    // A streamed call with `?alt=sse&key=…`.
    let resp = s
        .call(Auth::Query(&s.key), MODEL, Method::Stream, &Gemini::body())
        .await;
    assert_eq!(resp.status(), 200);
    ids.push(generation_id(&resp));
    assert_eq!(streamed_text(&sse_chunks(resp).await), answer_text());

    let got = s.mock.received();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|r| r.body == Gemini::body()), "{got:?}");
    assert!(got[2].query.split('&').any(|p| p == "alt=sse"), "{got:?}");
    s.assert_upstream_saw_only(UPSTREAM_KEY);

    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - 3 * NORMAL_COST);
    let ledger = s.app.ledger(s.customer_id).await;
    assert_eq!(ledger.len(), 4, "{ledger:?}");
    for (t, id) in ledger[1..].iter().zip(&ids) {
        assert_eq!(t.kind, "consume");
        assert_eq!(t.amount, -NORMAL_COST);
        assert_eq!(t.reference.as_deref(), Some(id.as_str()));
    }
    for id in &ids {
        let g = s.app.generation(id).await;
        assert_eq!(
            (g.tokens_prompt, g.tokens_completion, g.cost),
            (12, 30, NORMAL_COST)
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_generation_is_forwarded_chunk_by_chunk_and_charged_from_the_last_usage() {
    let s = Gemini::start().await;
    let resp = s
        .call(
            Auth::GoogApiKey(&s.key),
            MODEL,
            Method::Stream,
            &Gemini::body(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "text/event-stream; charset=utf-8");
    let gen_id = generation_id(&resp);
    let chunks = sse_chunks(resp).await;
    // Gemini's chunks, in order, each a GenerateContentResponse.
    assert_eq!(chunks.len(), TEXT_PIECES.len(), "{chunks:?}");
    for (chunk, piece) in chunks.iter().zip(TEXT_PIECES) {
        assert_eq!(chunk["candidates"][0]["content"]["parts"][0]["text"], piece);
        assert_eq!(chunk["responseId"], RESPONSE_ID);
        assert!(chunk["usageMetadata"].is_object(), "{chunk}");
    }
    assert_eq!(streamed_text(&chunks), answer_text());
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["promptTokenCount"], 12);
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 30);

    let got = s.mock.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].path,
        format!("/v1beta/models/{MODEL}:streamGenerateContent")
    );
    assert!(got[0].query.split('&').any(|p| p == "alt=sse"), "{got:?}");
    assert_eq!(got[0].body, Gemini::body());
    s.assert_upstream_saw_only(UPSTREAM_KEY);

    // 12 × 0.1 + 30 × 0.4 from the last chunk, not a sum over the chunks.
    s.assert_charged_once(&gen_id, NORMAL_COST).await;
    let g = s.app.generation(&gen_id).await;
    assert!(g.streamed);
    assert_eq!(g.status, "success");
    assert_eq!(
        (g.tokens_prompt, g.tokens_completion, g.cost),
        (12, 30, NORMAL_COST)
    );
    assert_eq!(g.upstream_id.as_deref(), Some(RESPONSE_ID));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thoughts_are_billed_as_output_plain_and_streamed() {
    let s = Gemini::start().await;

    // 20 prompt, 30 candidates, 50 thoughts: 20 × 0.1 + 80 × 0.4 = 34 µc.
    let resp = s
        .call(
            Auth::GoogApiKey(&s.key),
            "gemini-thinking",
            Method::Generate,
            &Gemini::body(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usageMetadata"]["thoughtsTokenCount"], 50);
    s.assert_charged_once(&gen_id, THINKING_COST).await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(
        (
            g.tokens_prompt,
            g.tokens_completion,
            g.tokens_reasoning,
            g.cost
        ),
        (20, 80, 50, THINKING_COST)
    );

    // The same streamed.
    let resp = s
        .call(
            Auth::GoogApiKey(&s.key),
            "gemini-thinking",
            Method::Stream,
            &Gemini::body(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    assert_eq!(streamed_text(&sse_chunks(resp).await), answer_text());
    s.app.settled().await;
    assert_eq!(
        s.app.balance(s.customer_id).await,
        START - 2 * THINKING_COST
    );
    let g = s.app.generation(&gen_id).await;
    assert!(g.streamed);
    assert_eq!(
        (
            g.tokens_prompt,
            g.tokens_completion,
            g.tokens_reasoning,
            g.cost
        ),
        (20, 80, 50, THINKING_COST)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_content_is_billed_at_the_cached_price_plain_and_streamed() {
    let s = Gemini::start().await;

    // 100 prompt of which 80 cached, 10 candidates:
    // 20 × 0.1 + 80 × 0.025 + 10 × 0.4 = 2 + 2 + 4 = 8 µc.
    let resp = s
        .call(
            Auth::GoogApiKey(&s.key),
            "gemini-cached",
            Method::Generate,
            &Gemini::body(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usageMetadata"]["cachedContentTokenCount"], 80);
    s.assert_charged_once(&gen_id, CACHED_COST).await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(
        (
            g.tokens_prompt,
            g.tokens_cached,
            g.tokens_completion,
            g.cost
        ),
        (100, 80, 10, CACHED_COST)
    );

    // The same streamed.
    let resp = s
        .call(
            Auth::GoogApiKey(&s.key),
            "gemini-cached",
            Method::Stream,
            &Gemini::body(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    assert_eq!(streamed_text(&sse_chunks(resp).await), answer_text());
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - 2 * CACHED_COST);
    let g = s.app.generation(&gen_id).await;
    assert_eq!(
        (
            g.tokens_prompt,
            g.tokens_cached,
            g.tokens_completion,
            g.cost
        ),
        (100, 80, 10, CACHED_COST)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_mapping_rewrites_the_model_in_the_path_and_prices_the_name_asked_for() {
    let s = Gemini::start().await;
    s.app
        .add_channel(
            "house",
            &s.mock.base_url,
            &["house-gemini"],
            json!({"type": "gemini", "keys": [UPSTREAM_KEY],
                   "model_mapping": {"house-gemini": MODEL}}),
        )
        .await;
    price(&s.app, "house-gemini", 1.0, 1.0, 1.0).await;
    for method in [Method::Generate, Method::Stream] {
        let resp = s
            .call(
                Auth::GoogApiKey(&s.key),
                "house-gemini",
                method,
                &Gemini::body(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let gen_id = generation_id(&resp);
        if method == Method::Stream {
            assert_eq!(streamed_text(&sse_chunks(resp).await), answer_text());
        } else {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(text_of(&body), answer_text());
        }
        // 12 + 30 tokens at house-gemini's price of 1.0.
        let g = s.app.wait_generation(&gen_id).await;
        assert_eq!(g.cost, 42);
        assert_models(&g, "house-gemini", MODEL);
    }
    let got = s.mock.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0].path,
        format!("/v1beta/models/{MODEL}:generateContent")
    );
    assert_eq!(
        got[1].path,
        format!("/v1beta/models/{MODEL}:streamGenerateContent")
    );
    // The body is forwarded unchanged (Gemini names the model in the path only).
    assert!(got.iter().all(|r| r.body == Gemini::body()), "{got:?}");
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - 2 * 42);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_problems_unknown_models_and_bad_bodies_get_google_shaped_errors_and_cost_nothing() {
    let s = Gemini::start().await;

    // No key at all, plain and streamed.
    for method in [Method::Generate, Method::Stream] {
        let resp = s.call(Auth::Missing, MODEL, method, &Gemini::body()).await;
        assert!(resp.headers().contains_key("x-generation-id"));
        let (status, google_status, message) = google_error(resp).await;
        assert_eq!(status, 401, "{google_status}: {message}");
        eprintln!("missing key: {status} {google_status}: {message}");
    }

    // A key the gateway does not know, however it is presented.
    for auth in [
        Auth::GoogApiKey("sk-not-a-real-key-0000"),
        Auth::Query("sk-not-a-real-key-0000"),
        Auth::Bearer("sk-not-a-real-key-0000"),
    ] {
        let resp = s.call(auth, MODEL, Method::Generate, &Gemini::body()).await;
        let (status, google_status, message) = google_error(resp).await;
        assert_eq!(status, 401, "{google_status}: {message}");
    }

    // A priced model no channel serves: 404.
    price(&s.app, "gemini-nobody-serves", 0.1, 0.4, 0.025).await;
    let resp = s
        .call(
            Auth::GoogApiKey(&s.key),
            "gemini-nobody-serves",
            Method::Generate,
            &Gemini::body(),
        )
        .await;
    assert!(resp.headers().contains_key("x-generation-id"));
    let (status, google_status, message) = google_error(resp).await;
    assert_eq!(status, 404, "{google_status}: {message}");
    eprintln!("unknown model: {status} {google_status}: {message}");

    // A model a channel serves but that has no price: 403 (model_not_priced).
    s.app
        .add_channel(
            "unpriced",
            &s.mock.base_url,
            &["gemini-unpriced"],
            json!({"type": "gemini", "keys": [UPSTREAM_KEY]}),
        )
        .await;
    let resp = s
        .call(
            Auth::GoogApiKey(&s.key),
            "gemini-unpriced",
            Method::Generate,
            &Gemini::body(),
        )
        .await;
    let (status, google_status, message) = google_error(resp).await;
    assert_eq!(status, 403, "{google_status}: {message}");

    // A body that is not JSON, plain and streamed.
    for method in [Method::Generate, Method::Stream] {
        let resp = s
            .post_raw(
                Auth::GoogApiKey(&s.key),
                MODEL,
                method,
                "{\"contents\": ".to_owned(),
            )
            .await;
        let (status, google_status, message) = google_error(resp).await;
        assert_eq!(status, 400, "{google_status}: {message}");
        eprintln!("malformed JSON: {status} {google_status}: {message}");
    }

    assert!(s.mock.received().is_empty(), "{:?}", s.mock.received());
    s.assert_charged_nothing().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_balance_and_an_unknown_method_get_google_shaped_errors_and_cost_nothing() {
    let s = Gemini::start().await;

    // A customer without credits: 402.
    s.app.create_user("bob", "customer").await;
    let bob = s.app.login("bob", "password-123").await;
    let (_, bob_key) = s.app.create_key(&bob, json!({"name": "broke"})).await;
    for method in [Method::Generate, Method::Stream] {
        let resp = s
            .call(Auth::GoogApiKey(&bob_key), MODEL, method, &Gemini::body())
            .await;
        assert!(resp.headers().contains_key("x-generation-id"));
        let (status, google_status, message) = google_error(resp).await;
        assert_eq!(status, 402, "{google_status}: {message}");
    }

    // A method the relay does not serve: a 4xx, never forwarded.
    let resp = s
        .app
        .http
        .post(format!(
            "{}/v1beta/models/{MODEL}:predictLongRunning",
            s.app.address
        ))
        .header("x-goog-api-key", &s.key)
        .json(&Gemini::body())
        .send()
        .await
        .unwrap();
    let (status, google_status, message) = google_error(resp).await;
    assert!(
        (400..500).contains(&status),
        "{status} {google_status}: {message}"
    );

    assert!(s.mock.received().is_empty(), "{:?}", s.mock.received());
    s.assert_charged_nothing().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_asked_for_without_alt_sse_is_streamed_as_googles_json_array_and_charged_exactly()
{
    // Without `alt=sse` Google streams one JSON array of GenerateContentResponse
    // objects, element by element (seed 001's curl calls it that way).
    let s = Gemini::start().await;
    let resp = s.stream_array(MODEL).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let gen_id = generation_id(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with('[') && text.ends_with(']'), "{text}");
    let chunks: Vec<Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("not a JSON array of responses ({e}): {text}"));
    assert_eq!(chunks.len(), TEXT_PIECES.len(), "{text}");
    assert_eq!(streamed_text(&chunks), answer_text());
    assert_eq!(
        chunks.last().unwrap()["usageMetadata"]["candidatesTokenCount"],
        30
    );
    // Upstream it went as server-sent events, as always.
    let got = s.mock.received();
    assert!(got[0].query.split('&').any(|p| p == "alt=sse"), "{got:?}");
    s.assert_charged_once(&gen_id, NORMAL_COST).await;

    // Element by element: what the upstream has sent reaches the client while the
    // rest is still coming (the mock holds its last event until the client has read
    // the first two; a gateway that waited for the whole answer would never answer).
    s.app
        .add_channel(
            "gemini-held",
            &s.mock.base_url,
            &["gemini-held-tail"],
            json!({"type": "gemini", "keys": [UPSTREAM_KEY]}),
        )
        .await;
    price(&s.app, "gemini-held-tail", 0.1, 0.4, 0.025).await;
    let resp = s.stream_array("gemini-held-tail").await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut early = String::new();
    let read_early = async {
        while !early.contains(TEXT_PIECES[1]) {
            let chunk = body.next().await.unwrap().unwrap();
            early.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read_early)
        .await
        .expect("the first elements were held back until the last one came");
    assert!(early.starts_with('['), "{early}");
    assert!(!early.contains(TEXT_PIECES[2]), "{early}");
    s.mock.release_tail();
    let mut whole = early;
    while let Some(chunk) = body.next().await {
        whole.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let chunks: Vec<Value> = serde_json::from_str(&whole).unwrap();
    assert_eq!(streamed_text(&chunks), answer_text());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_rejection_of_the_request_goes_back_google_shaped_and_costs_nothing() {
    let s = Gemini::start().await;
    let resp = s
        .call(
            Auth::GoogApiKey(&s.key),
            "bad-request",
            Method::Generate,
            &Gemini::body(),
        )
        .await;
    let gen_id = generation_id(&resp);
    let (status, google_status, message) = google_error(resp).await;
    assert_eq!(status, 400, "{google_status}: {message}");
    assert!(message.contains("contents"), "{message}");
    assert_eq!(s.mock.received().len(), 1);

    s.assert_charged_nothing().await;
    let g = s.app.wait_generation(&gen_id).await;
    assert_eq!((g.status.as_str(), g.cost), ("error", 0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_on_the_only_channel_is_a_502_or_503_google_shaped_and_free() {
    let s = Gemini::start().await;
    for (model, method) in [
        ("fail-500", Method::Generate),
        ("fail-500", Method::Stream),
        ("fail-503", Method::Generate),
        ("fail-503", Method::Stream),
    ] {
        let resp = s
            .call(Auth::GoogApiKey(&s.key), model, method, &Gemini::body())
            .await;
        let gen_id = generation_id(&resp);
        let (status, google_status, message) = google_error(resp).await;
        assert!(
            status == 502 || status == 503,
            "{model}: {status} {google_status}: {message}"
        );
        assert!(
            !message.contains("127.0.0.1") && !message.contains("AIza"),
            "{message}"
        );
        let g = s.app.wait_generation(&gen_id).await;
        assert_eq!((g.status.as_str(), g.cost), ("error", 0), "{model}");
    }
    assert!(!s.mock.received().is_empty());
    s.assert_upstream_saw_only(UPSTREAM_KEY);
    s.assert_charged_nothing().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_key_google_rejects_is_a_google_shaped_error_and_free() {
    let s = Gemini::start().await;
    // Google answers a bad key with 400 INVALID_ARGUMENT "API key not valid". Whether
    // the gateway passes that back or counts the key as dead, the client gets a
    // Google-shaped error and pays nothing.
    s.app
        .add_channel(
            "revoked",
            &s.mock.base_url,
            &["gemini-1.5-pro"],
            json!({"type": "gemini", "keys": ["AIza-revoked-0001"]}),
        )
        .await;
    price(&s.app, "gemini-1.5-pro", 0.1, 0.4, 0.025).await;
    for method in [Method::Generate, Method::Stream] {
        let resp = s
            .call(
                Auth::GoogApiKey(&s.key),
                "gemini-1.5-pro",
                method,
                &Gemini::body(),
            )
            .await;
        let gen_id = generation_id(&resp);
        let (status, google_status, message) = google_error(resp).await;
        eprintln!("revoked upstream key: {status} {google_status}: {message}");
        assert!(
            !message.contains("AIza-revoked") && !message.contains("127.0.0.1"),
            "{message}"
        );
        let g = s.app.wait_generation(&gen_id).await;
        assert_eq!((g.status.as_str(), g.cost), ("error", 0));
    }
    let got = s.mock.received();
    assert!(!got.is_empty());
    s.assert_upstream_saw_only("AIza-revoked-0001");
    s.assert_charged_nothing().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_list_is_in_googles_shape_for_every_way_of_giving_the_key() {
    let s = Gemini::start().await;
    for auth in [
        Auth::GoogApiKey(&s.key),
        Auth::Query(&s.key),
        Auth::Bearer(&s.key),
    ] {
        let resp = s.list_models(auth).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        let models = body["models"]
            .as_array()
            .unwrap_or_else(|| panic!("no models array: {body}"));
        let names: Vec<&str> = models
            .iter()
            .map(|m| {
                m["name"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a model without a name: {body}"))
            })
            .collect();
        assert!(names.iter().all(|n| n.starts_with("models/")), "{names:?}");
        for m in MODELS {
            assert!(names.contains(&format!("models/{m}").as_str()), "{names:?}");
        }
    }
    let resp = s.list_models(Auth::Missing).await;
    let (status, google_status, message) = google_error(resp).await;
    assert_eq!(status, 401, "{google_status}: {message}");
    assert!(s.mock.received().is_empty());
    s.assert_charged_nothing().await;
    s.stop().await;
}

/// The calls `tests/python/genai_sdk_check.py` makes that succeed and are charged:
/// generate_content and generate_content_stream. The model list and the bad-key call
/// are free.
const SDK_CHARGED_CALLS: i64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_google_genai_python_sdk_works_through_the_gateway_and_is_charged_exactly() {
    let s = Gemini::start().await;

    let stdout = run_sdk_script("genai_sdk_check.py", &s.app.address, &s.key).await;
    eprintln!("{stdout}");

    // The upstream saw exactly the two generations, one of them an SSE stream, each
    // with the channel's key.
    let received = s.mock.received();
    assert_eq!(received.len() as i64, SDK_CHARGED_CALLS, "{received:?}");
    assert_eq!(
        received
            .iter()
            .filter(|r| r.method == "streamGenerateContent")
            .count(),
        1,
        "{received:?}"
    );
    s.assert_upstream_saw_only(UPSTREAM_KEY);

    s.app.settled().await;
    assert_eq!(
        s.app.balance(s.customer_id).await,
        START - SDK_CHARGED_CALLS * NORMAL_COST
    );
    let ledger = s.app.ledger(s.customer_id).await;
    let consumes: Vec<_> = ledger.iter().filter(|t| t.kind == "consume").collect();
    assert_eq!(consumes.len() as i64, SDK_CHARGED_CALLS, "{ledger:?}");
    assert!(
        consumes.iter().all(|t| t.amount == -NORMAL_COST),
        "{ledger:?}"
    );
    // The mint and the two charges, nothing else.
    assert_eq!(ledger.len() as i64, 1 + SDK_CHARGED_CALLS, "{ledger:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_names_its_limits_or_model_ambiguously_is_refused_and_costs_nothing() {
    let s = Gemini::start().await;
    let contents = json!([{"role": "user", "parts": [{"text": "Say hello"}]}]);
    let bodies = [
        // The output limit under another case than the two spellings Google reads.
        json!({"contents": contents, "GenerationConfig": {"maxOutputTokens": 100000}}),
        json!({"contents": contents,
               "generationConfig": {"maxOutputTokens": 64, "MaxOutputTokens": 100000}}),
        json!({"contents": contents,
               "generation_config": {"candidate_count": 1, "Candidate_Count": 8}}),
        // A model in the body other than the one in the path (and priced).
        json!({"contents": contents, "model": "models/gemini-thinking"}),
        // OpenRouter's fallbacks.
        json!({"contents": contents, "models": ["gemini-thinking"]}),
    ];
    for body in &bodies {
        for method in [Method::Generate, Method::Stream] {
            let resp = s.call(Auth::GoogApiKey(&s.key), MODEL, method, body).await;
            let (status, google_status, message) = google_error(resp).await;
            assert_eq!(status, 400, "{body}: {google_status}: {message}");
            assert_eq!(google_status, "INVALID_ARGUMENT", "{body}: {message}");
        }
    }
    assert!(s.mock.received().is_empty(), "{:?}", s.mock.received());
    s.assert_charged_nothing().await;

    // The path's own model in the body is no ambiguity.
    let same = json!({"contents": contents, "model": format!("models/{MODEL}")});
    let resp = s
        .call(Auth::GoogApiKey(&s.key), MODEL, Method::Generate, &same)
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    s.assert_charged_once(&gen_id, NORMAL_COST).await;
    s.stop().await;
}
