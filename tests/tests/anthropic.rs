//! The Anthropic-native relay end to end: `POST /v1/messages` forwarded to channels of
//! type `anthropic`, plain and streamed, metered from Anthropic's usage (cache reads at
//! the cached price), errors in Anthropic's shape, and the official `anthropic` Python
//! SDK; the money after every call.

use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_tests::app::generation_id;
use tollgate_tests::mock_anthropic::{MESSAGE_ID, answer_text, dated};
use tollgate_tests::python::run_sdk_script;
use tollgate_tests::{MockAnthropic, TestApp, spawn_app};

const START: i64 = 1_000_000; // 1 credit in µc

/// The channel's key, which the gateway sends upstream as `x-api-key`.
const UPSTREAM_KEY: &str = "sk-ant-upstream-1234";

/// The model the tests call, priced input 3, output 15, cached input 0.3 per 1M.
const MODEL: &str = "claude-3-7-sonnet";

/// A normal answer: 12 input × 3 + 30 output × 15 = 486 µc.
const NORMAL_COST: i64 = 486;

/// The models the scenario's channel serves (the mock's behaviours), all priced alike.
const MODELS: [&str; 7] = [
    MODEL,
    "claude-cached",
    "claude-delta-input",
    "claude-cache-write",
    "claude-two-deltas",
    "fail-529",
    "bad-request",
];

/// How a request presents the customer's key.
#[derive(Clone, Copy)]
enum Auth<'a> {
    XApiKey(&'a str),
    Bearer(&'a str),
    Missing,
}

/// A gateway, a mock Anthropic behind one `anthropic` channel, priced models, and a
/// customer with 1 credit and a key.
struct Claude {
    app: TestApp,
    mock: MockAnthropic,
    customer_id: i64,
    key: String,
}

impl Claude {
    async fn start() -> Self {
        let app = spawn_app().await;
        let mock = MockAnthropic::start().await;
        app.add_channel(
            "claude",
            &mock.base_url,
            &MODELS,
            json!({"type": "anthropic", "keys": [UPSTREAM_KEY]}),
        )
        .await;
        for m in MODELS {
            price(&app, m, 3.0, 15.0, 0.3).await;
        }
        let (customer_id, key) = app.customer_with_key("alice", 1.0).await;
        Claude {
            app,
            mock,
            customer_id,
            key,
        }
    }

    /// A Messages API body for `model`.
    fn body(model: &str) -> Value {
        json!({"model": model, "max_tokens": 64,
               "messages": [{"role": "user", "content": "Say hello"}]})
    }

    /// `POST /v1/messages` with `anthropic-version: 2023-06-01`.
    async fn messages(&self, auth: Auth<'_>, body: Value) -> reqwest::Response {
        let mut req = self
            .app
            .http
            .post(format!("{}/v1/messages", self.app.address))
            .header("anthropic-version", "2023-06-01")
            .json(&body);
        req = match auth {
            Auth::XApiKey(k) => req.header("x-api-key", k),
            Auth::Bearer(k) => req.bearer_auth(k),
            Auth::Missing => req,
        };
        req.send().await.unwrap()
    }

    /// Asserts one charge of `cost` for the generation `gen_id`, and nothing else.
    async fn assert_charged_once(&self, gen_id: &str, cost: i64) {
        self.app
            .assert_charged_once(self.customer_id, START, gen_id, cost)
            .await;
    }

    /// Streams `model` (10 input + 80 cache reads, 40 output) and asserts the whole
    /// text arrived and was charged once, 654 µc, as the unstreamed answer is.
    async fn stream_cached_like_the_plain_one(&self, model: &str) {
        let mut body = Claude::body(model);
        body["stream"] = json!(true);
        let resp = self.messages(Auth::XApiKey(&self.key), body).await;
        assert_eq!(resp.status(), 200);
        let gen_id = generation_id(&resp);
        let events = sse_events(resp).await;
        assert_eq!(streamed_text(&events), answer_text());
        self.assert_charged_once(&gen_id, 654).await;
        let g = self.app.generation(&gen_id).await;
        assert_eq!(
            (
                g.tokens_prompt,
                g.tokens_cached,
                g.tokens_completion,
                g.cost
            ),
            (90, 80, 40, 654)
        );
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

/// Asserts an Anthropic-shaped error body and returns its `error.type`.
async fn anthropic_error(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    assert_eq!(body["type"], "error", "not Anthropic-shaped: {body}");
    let kind = body["error"]["type"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.type: {body}"))
        .to_owned();
    assert!(!kind.is_empty(), "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message: {body}"))
        .to_owned();
    assert!(!message.is_empty(), "{body}");
    (status, kind, message)
}

/// Reads an SSE answer into (event name, data) pairs, checking every event's `event:`
/// name matches its data's `type`.
async fn sse_events(resp: reqwest::Response) -> Vec<(String, Value)> {
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let text = text.replace("\r\n", "\n");
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = Some(n.trim().to_owned());
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            }
        }
        let name = name.unwrap_or_else(|| panic!("an event without `event:`: {block:?}"));
        let data: Value = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("event {name} data is not JSON ({e}): {block:?}"));
        assert_eq!(data["type"], name.as_str(), "{block:?}");
        events.push((name, data));
    }
    events
}

/// The streamed text of a list of events.
fn streamed_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .filter_map(|(_, d)| d["delta"]["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_x_api_key_is_forwarded_to_the_anthropic_channel_and_charged_exactly() {
    let s = Claude::start().await;
    let resp = s.messages(Auth::XApiKey(&s.key), Claude::body(MODEL)).await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    let body: Value = resp.json().await.unwrap();
    // Anthropic's answer, passed through.
    assert_eq!(body["id"], MESSAGE_ID);
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], dated(MODEL));
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["content"][0]["text"], answer_text());
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["input_tokens"], 12);
    assert_eq!(body["usage"]["output_tokens"], 30);

    // The upstream got the client's body untouched, with the channel's key.
    let got = s.mock.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, "/v1/messages");
    assert_eq!(got[0].body, Claude::body(MODEL));
    assert_eq!(got[0].x_api_key.as_deref(), Some(UPSTREAM_KEY));
    assert_eq!(got[0].anthropic_version.as_deref(), Some("2023-06-01"));
    assert!(
        !got[0]
            .authorization
            .as_deref()
            .unwrap_or_default()
            .contains(&s.key),
        "the customer's key went upstream: {:?}",
        got[0].authorization
    );

    s.assert_charged_once(&gen_id, NORMAL_COST).await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(
        (
            g.tokens_prompt,
            g.tokens_completion,
            g.tokens_cached,
            g.cost
        ),
        (12, 30, 0, NORMAL_COST)
    );
    assert_eq!(g.status, "success");
    assert_eq!(g.model, MODEL);
    assert_eq!(g.upstream_model.as_deref(), Some(dated(MODEL).as_str()));
    assert_eq!(g.upstream_id.as_deref(), Some(MESSAGE_ID));
    assert_eq!(g.endpoint, "/v1/messages");
    assert!(!g.streamed);
    assert!(
        matches!(g.finish_reason.as_deref(), Some("end_turn" | "stop")),
        "finish_reason {:?}",
        g.finish_reason
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_a_bearer_key_works_the_same() {
    let s = Claude::start().await;
    let resp = s.messages(Auth::Bearer(&s.key), Claude::body(MODEL)).await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], answer_text());
    assert_eq!(body["usage"]["output_tokens"], 30);

    let got = s.mock.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].x_api_key.as_deref(), Some(UPSTREAM_KEY));
    assert_eq!(got[0].anthropic_version.as_deref(), Some("2023-06-01"));
    assert!(
        !got[0]
            .authorization
            .as_deref()
            .unwrap_or_default()
            .contains(&s.key),
        "the customer's key went upstream: {:?}",
        got[0].authorization
    );

    s.assert_charged_once(&gen_id, NORMAL_COST).await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(
        (g.tokens_prompt, g.tokens_completion, g.cost),
        (12, 30, NORMAL_COST)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_message_is_forwarded_event_by_event_and_charged_from_the_usage_events() {
    let s = Claude::start().await;
    let mut body = Claude::body(MODEL);
    body["stream"] = json!(true);
    let resp = s.messages(Auth::XApiKey(&s.key), body).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "text/event-stream; charset=utf-8");
    let gen_id = generation_id(&resp);
    let events = sse_events(resp).await;
    // Anthropic's sequence, in order (keep-alive pings aside).
    let names: Vec<&str> = events
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n != "ping")
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(streamed_text(&events), answer_text());
    let start = &events[0].1;
    assert_eq!(start["message"]["id"], MESSAGE_ID);
    assert_eq!(start["message"]["usage"]["input_tokens"], 12);
    let delta = &events.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 30);

    let got = s.mock.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body["stream"], true);
    assert_eq!(got[0].body["messages"], Claude::body(MODEL)["messages"]);
    assert_eq!(got[0].x_api_key.as_deref(), Some(UPSTREAM_KEY));

    s.assert_charged_once(&gen_id, NORMAL_COST).await;
    let g = s.app.generation(&gen_id).await;
    assert!(g.streamed);
    assert_eq!(g.status, "success");
    assert_eq!(
        (g.tokens_prompt, g.tokens_completion, g.cost),
        (12, 30, NORMAL_COST)
    );
    assert_eq!(g.upstream_id.as_deref(), Some(MESSAGE_ID));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_charged_on_the_last_cumulative_message_delta_not_the_sum() {
    let s = Claude::start().await;
    let mut body = Claude::body("claude-two-deltas");
    body["stream"] = json!(true);
    let resp = s.messages(Auth::XApiKey(&s.key), body).await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    let events = sse_events(resp).await;
    let deltas = events.iter().filter(|(n, _)| n == "message_delta").count();
    assert_eq!(deltas, 2);
    assert_eq!(streamed_text(&events), answer_text());
    // 12 × 3 + 30 × 15 (the last count), not (12 + 30) × 15.
    s.assert_charged_once(&gen_id, NORMAL_COST).await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!((g.tokens_prompt, g.tokens_completion), (12, 30));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_reads_are_billed_at_the_cached_price_and_cache_writes_at_the_cache_write_price() {
    let s = Claude::start().await;

    // 10 input + 80 cache reads + 0 cache writes = 90 prompt, 80 of them cached:
    // 10 × 3 + 80 × 0.3 + 40 × 15 = 30 + 24 + 600 = 654 µc.
    let resp = s
        .messages(Auth::XApiKey(&s.key), Claude::body("claude-cached"))
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["cache_read_input_tokens"], 80);
    s.assert_charged_once(&gen_id, 654).await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(
        (
            g.tokens_prompt,
            g.tokens_cached,
            g.tokens_completion,
            g.cost
        ),
        (90, 80, 40, 654)
    );

    // 10 input + 50 cache writes = 60 prompt, none cached; no cache_write price, so
    // writes cost 1.25 × input: 10 × 3 + 50 × 3.75 + 40 × 15 = 817.5 → 818 µc.
    let resp = s
        .messages(Auth::XApiKey(&s.key), Claude::body("claude-cache-write"))
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - 654 - 818);
    let g = s.app.generation(&gen_id).await;
    assert_eq!(
        (
            g.tokens_prompt,
            g.tokens_cached,
            g.tokens_completion,
            g.cost
        ),
        (60, 0, 40, 818)
    );
    assert_eq!(g.tokens_cache_write, 50);

    // With a cache_write price of 6 per 1M: 10 × 3 + 50 × 6 + 40 × 15 = 930 µc.
    s.app
        .set_price_with("claude-cache-write", json!({"cache_write": 6}))
        .await;
    let (st, pricing) = s
        .app
        .api("GET", "/api/pricing", &s.app.root_token, None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(pricing["models"]["claude-cache-write"]["cache_write"], 6.0);
    let resp = s
        .messages(Auth::XApiKey(&s.key), Claude::body("claude-cache-write"))
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - 654 - 818 - 930);
    assert_eq!(s.app.generation(&gen_id).await.cost, 930);
    s.app.verify_ledger().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_message_with_cache_reads_is_billed_like_the_plain_one() {
    let s = Claude::start().await;
    // message_start carries 10 input and 80 cache reads; message_delta 40 output.
    s.stream_cached_like_the_plain_one("claude-cached").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_message_delta_that_repeats_input_without_cache_fields_keeps_the_cache_reads() {
    let s = Claude::start().await;

    // Native: message_start says 10 input + 80 cache reads; the last message_delta
    // says 10 input and 40 output and nothing of the cache. 654 µc as unstreamed.
    s.stream_cached_like_the_plain_one("claude-delta-input")
        .await;

    // Converted for an OpenAI client: the usage chunk it reads is what it pays for.
    let resp = s
        .app
        .http
        .post(format!("{}/v1/chat/completions", s.app.address))
        .bearer_auth(&s.key)
        .json(&json!({"model": "claude-delta-input", "stream": true,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "Say hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    let text = resp.text().await.unwrap();
    let usage = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("a usage chunk");
    s.app.settled().await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(
        (
            usage["prompt_tokens"].as_i64(),
            usage["prompt_tokens_details"]["cached_tokens"].as_i64(),
            usage["completion_tokens"].as_i64()
        ),
        (
            Some(g.tokens_prompt),
            Some(g.tokens_cached),
            Some(g.tokens_completion)
        )
    );
    assert_eq!((g.tokens_prompt, g.tokens_cached, g.cost), (90, 80, 654));
    assert_eq!(s.app.balance(s.customer_id).await, START - 654 - 654);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_mapping_sends_the_upstream_name_and_prices_the_name_the_client_asked_for() {
    let s = Claude::start().await;
    s.app
        .add_channel(
            "house",
            &s.mock.base_url,
            &["house-claude"],
            json!({"type": "anthropic", "keys": [UPSTREAM_KEY],
                   "model_mapping": {"house-claude": MODEL}}),
        )
        .await;
    price(&s.app, "house-claude", 1.0, 1.0, 1.0).await;
    let resp = s
        .messages(Auth::XApiKey(&s.key), Claude::body("house-claude"))
        .await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    assert_eq!(s.mock.received()[0].body["model"], MODEL);
    // 12 + 30 tokens at house-claude's price of 1.0.
    s.assert_charged_once(&gen_id, 42).await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(g.model, "house-claude");
    assert_eq!(g.upstream_model.as_deref(), Some(dated(MODEL).as_str()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_key_anthropic_rejects_is_skipped_for_the_next_one() {
    let s = Claude::start().await;
    s.app
        .add_channel(
            "revoked",
            &s.mock.base_url,
            &[MODEL],
            json!({"type": "anthropic", "keys": ["sk-ant-revoked-0001"], "priority": 10}),
        )
        .await;
    let resp = s.messages(Auth::XApiKey(&s.key), Claude::body(MODEL)).await;
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], answer_text());
    let keys: Vec<Option<String>> = s.mock.received().into_iter().map(|r| r.x_api_key).collect();
    // The revoked key's try, the house key that served, and (whenever it lands) the one
    // test request that confirms the revoked key is dead before it is disabled.
    let revoked = Some("sk-ant-revoked-0001".to_owned());
    assert_eq!(keys[0], revoked, "{keys:?}");
    let house = keys.iter().filter(|k| **k == Some(UPSTREAM_KEY.to_owned()));
    assert_eq!(house.count(), 1, "{keys:?}");
    assert!(
        keys.len() <= 3
            && keys
                .iter()
                .skip(1)
                .all(|k| *k == revoked || k.as_deref() == Some(UPSTREAM_KEY)),
        "{keys:?}"
    );
    s.assert_charged_once(&gen_id, NORMAL_COST).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_problems_and_unknown_models_get_anthropic_shaped_errors_and_cost_nothing() {
    let s = Claude::start().await;

    // No key at all.
    let resp = s.messages(Auth::Missing, Claude::body(MODEL)).await;
    assert!(resp.headers().contains_key("x-generation-id"));
    let (status, kind, message) = anthropic_error(resp).await;
    assert_eq!(status, 401, "{kind}: {message}");
    eprintln!("missing key: {kind}: {message}");

    // A key the gateway does not know, either way it is presented.
    for auth in [
        Auth::XApiKey("sk-not-a-real-key-0000"),
        Auth::Bearer("sk-not-a-real-key-0000"),
    ] {
        let resp = s.messages(auth, Claude::body(MODEL)).await;
        let (status, kind, message) = anthropic_error(resp).await;
        assert_eq!(status, 401, "{kind}: {message}");
    }

    // A priced model no channel serves: 404.
    price(&s.app, "claude-nobody-serves", 3.0, 15.0, 0.3).await;
    let resp = s
        .messages(Auth::XApiKey(&s.key), Claude::body("claude-nobody-serves"))
        .await;
    assert!(resp.headers().contains_key("x-generation-id"));
    let (status, kind, message) = anthropic_error(resp).await;
    assert_eq!(status, 404, "{kind}: {message}");
    eprintln!("unknown model: {kind}: {message}");

    // A model a channel serves but that has no price: 403 (model_not_priced).
    s.app
        .add_channel(
            "unpriced",
            &s.mock.base_url,
            &["claude-unpriced"],
            json!({"type": "anthropic", "keys": [UPSTREAM_KEY]}),
        )
        .await;
    let resp = s
        .messages(Auth::XApiKey(&s.key), Claude::body("claude-unpriced"))
        .await;
    let (status, kind, message) = anthropic_error(resp).await;
    assert_eq!(status, 403, "{kind}: {message}");

    // A body that is not JSON.
    let resp = s
        .app
        .http
        .post(format!("{}/v1/messages", s.app.address))
        .header("x-api-key", &s.key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    let (status, kind, message) = anthropic_error(resp).await;
    assert_eq!(status, 400, "{kind}: {message}");

    assert!(s.mock.received().is_empty(), "{:?}", s.mock.received());
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START);
    assert_eq!(s.app.ledger(s.customer_id).await.len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_rejection_of_the_request_goes_back_anthropic_shaped_and_costs_nothing() {
    let s = Claude::start().await;
    let resp = s
        .messages(Auth::XApiKey(&s.key), Claude::body("bad-request"))
        .await;
    let gen_id = generation_id(&resp);
    let (status, kind, message) = anthropic_error(resp).await;
    assert_eq!(status, 400);
    assert_eq!(kind, "invalid_request_error");
    assert!(message.contains("max_tokens"), "{message}");
    assert_eq!(s.mock.received().len(), 1);

    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START);
    assert_eq!(s.app.ledger(s.customer_id).await.len(), 1);
    let g = s.app.wait_generation(&gen_id).await;
    assert_eq!((g.status.as_str(), g.cost), ("error", 0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_upstream_on_every_channel_is_a_502_or_503_anthropic_shaped_and_free() {
    let s = Claude::start().await;
    s.app
        .add_channel(
            "claude-2",
            &s.mock.base_url,
            &["fail-529"],
            json!({"type": "anthropic", "keys": ["sk-ant-second-5678"]}),
        )
        .await;
    for stream in [false, true] {
        let mut body = Claude::body("fail-529");
        if stream {
            body["stream"] = json!(true);
        }
        let resp = s.messages(Auth::XApiKey(&s.key), body).await;
        let gen_id = generation_id(&resp);
        let (status, kind, message) = anthropic_error(resp).await;
        assert!(
            status == 502 || status == 503,
            "stream={stream}: {status} {kind}: {message}"
        );
        assert!(
            !message.contains("127.0.0.1") && !message.contains("sk-ant-"),
            "{message}"
        );
        s.app.settled().await;
        let g = s.app.wait_generation(&gen_id).await;
        assert_eq!((g.status.as_str(), g.cost), ("error", 0));
    }
    // Both channels were tried, each time.
    let counts = s.mock.count_by_key();
    assert!(
        counts.get(UPSTREAM_KEY).copied().unwrap_or(0) >= 2,
        "{counts:?}"
    );
    assert!(
        counts.get("sk-ant-second-5678").copied().unwrap_or(0) >= 2,
        "{counts:?}"
    );
    assert_eq!(s.app.balance(s.customer_id).await, START);
    assert_eq!(s.app.ledger(s.customer_id).await.len(), 1);
    s.stop().await;
}

/// The messages `tests/python/anthropic_sdk_check.py` makes that succeed: plain, raw
/// response, stream. The bad-key call is free.
const SDK_CHARGED_CALLS: i64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_anthropic_python_sdk_works_through_the_gateway_and_is_charged_exactly() {
    let s = Claude::start().await;

    let stdout = run_sdk_script("anthropic_sdk_check.py", &s.app.address, &s.key).await;
    eprintln!("{stdout}");

    // The upstream saw exactly the three messages, one of them streamed, each with the
    // channel's key.
    let received = s.mock.received();
    assert_eq!(received.len() as i64, SDK_CHARGED_CALLS, "{received:?}");
    assert_eq!(
        received.iter().filter(|r| r.body["stream"] == true).count(),
        1
    );
    assert!(
        received
            .iter()
            .all(|r| r.x_api_key.as_deref() == Some(UPSTREAM_KEY)),
        "{received:?}"
    );

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
    // The mint and the three charges, nothing else.
    assert_eq!(ledger.len() as i64, 1 + SDK_CHARGED_CALLS, "{ledger:?}");
    s.stop().await;
}
