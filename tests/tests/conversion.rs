//! Every official SDK against every channel type it does not speak: the request is
//! converted to the channel's protocol, the answer (whole or streamed) back to the
//! SDK's, and the customer pays exactly what the upstream's usage says.

use serde_json::{Value, json};
use tollgate_tests::python::run_sdk_script_with;
use tollgate_tests::scenario::{INPUT_PRICE, OUTPUT_PRICE};
use tollgate_tests::{MockAnthropic, MockGemini, MockOpenAi, NORMAL_COST, TestApp, spawn_app};

const START: i64 = 1_000_000;
const OPENAI_MODEL: &str = "gpt-4o-mini";
const ANTHROPIC_MODEL: &str = "claude-3-7-sonnet";
const GEMINI_MODEL: &str = "gemini-2.0-flash";
const UPSTREAM_KEY: &str = "sk-upstream-conv-1234";

/// An upstream of one protocol, behind one channel of its type.
enum Upstream {
    OpenAi(MockOpenAi),
    Anthropic(MockAnthropic),
    Gemini(MockGemini),
}

/// One request as the upstream saw it: whether it was streamed, and its body.
struct Seen {
    streamed: bool,
    key: Option<String>,
    body: Value,
}

impl Upstream {
    async fn start(kind: &str) -> Self {
        match kind {
            "openai" => Upstream::OpenAi(MockOpenAi::start().await),
            "anthropic" => Upstream::Anthropic(MockAnthropic::start().await),
            _ => Upstream::Gemini(MockGemini::start().await),
        }
    }

    fn base_url(&self) -> &str {
        match self {
            Upstream::OpenAi(m) => &m.base_url,
            Upstream::Anthropic(m) => &m.base_url,
            Upstream::Gemini(m) => &m.base_url,
        }
    }

    fn model(&self) -> &'static str {
        match self {
            Upstream::OpenAi(_) => OPENAI_MODEL,
            Upstream::Anthropic(_) => ANTHROPIC_MODEL,
            Upstream::Gemini(_) => GEMINI_MODEL,
        }
    }

    /// Every request, checked to be in the upstream's own protocol.
    fn seen(&self) -> Vec<Seen> {
        match self {
            Upstream::OpenAi(m) => m
                .received()
                .into_iter()
                .map(|r| {
                    // Chat, or Responses served natively.
                    let native_responses = r.path == "/v1/responses";
                    if native_responses {
                        assert!(r.body["input"].is_string(), "{}", r.body);
                    } else {
                        assert_eq!(r.path, "/v1/chat/completions");
                        assert!(r.body["messages"].is_array(), "{}", r.body);
                    }
                    let streamed = r.body["stream"] == true;
                    if streamed && !native_responses {
                        assert_eq!(r.body["stream_options"]["include_usage"], true);
                    }
                    Seen {
                        streamed,
                        key: r
                            .authorization
                            .map(|a| a.trim_start_matches("Bearer ").to_owned()),
                        body: r.body,
                    }
                })
                .collect(),
            Upstream::Anthropic(m) => m
                .received()
                .into_iter()
                .map(|r| {
                    assert_eq!(r.path, "/v1/messages");
                    assert!(r.body["max_tokens"].as_i64().unwrap() > 0, "{}", r.body);
                    // The client's own version when it speaks Anthropic, else the default.
                    assert!(r.anthropic_version.is_some());
                    assert!(r.authorization.is_none(), "the customer's key leaked");
                    Seen {
                        streamed: r.body["stream"] == true,
                        key: r.x_api_key,
                        body: r.body,
                    }
                })
                .collect(),
            Upstream::Gemini(m) => m
                .received()
                .into_iter()
                .map(|r| {
                    assert_eq!(r.model, GEMINI_MODEL);
                    assert!(r.body["contents"].is_array(), "{}", r.body);
                    let streamed = r.method == "streamGenerateContent";
                    if streamed {
                        assert_eq!(r.query, "alt=sse");
                    } else {
                        assert_eq!(r.method, "generateContent");
                    }
                    assert!(r.authorization.is_none(), "the customer's key leaked");
                    Seen {
                        streamed,
                        key: r.x_goog_api_key,
                        body: r.body,
                    }
                })
                .collect(),
        }
    }

    async fn stop(&self) {
        match self {
            Upstream::OpenAi(m) => m.stop().await,
            Upstream::Anthropic(m) => m.stop().await,
            Upstream::Gemini(m) => m.stop().await,
        }
    }
}

/// A gateway with one channel of `kind`, its model priced, and a customer with a key.
struct Pair {
    app: TestApp,
    upstream: Upstream,
    customer_id: i64,
    key: String,
}

impl Pair {
    async fn start(kind: &str) -> Self {
        let app = spawn_app().await;
        let upstream = Upstream::start(kind).await;
        let model = upstream.model();
        app.add_channel(
            kind,
            upstream.base_url(),
            &[model],
            json!({"type": kind, "keys": [UPSTREAM_KEY]}),
        )
        .await;
        app.set_price(model, INPUT_PRICE, OUTPUT_PRICE).await;
        let (customer_id, key) = app.customer_with_key("carol", 1.0).await;
        Pair {
            app,
            upstream,
            customer_id,
            key,
        }
    }

    /// Runs an SDK script against the channel's model, then checks the upstream saw
    /// `charged` requests in its own protocol (one streamed) with the channel's key, and
    /// that exactly those were charged, each at the normal answer's price.
    async fn run(self, script: &str, charged: i64, client_path: &str) {
        self.run_streaming(script, charged, 1, client_path).await;
    }

    /// [`Pair::run`] for a script that streams `streamed` of its calls.
    async fn run_streaming(self, script: &str, charged: i64, streamed: usize, client_path: &str) {
        let model = self.upstream.model();
        let stdout = run_sdk_script_with(
            script,
            &self.app.address,
            &self.key,
            &[("TOLLGATE_MODEL", model)],
        )
        .await;
        eprintln!("{stdout}");

        let seen = self.upstream.seen();
        assert_eq!(seen.len() as i64, charged, "{} requests", seen.len());
        assert_eq!(seen.iter().filter(|s| s.streamed).count(), streamed);
        for s in &seen {
            assert_eq!(s.key.as_deref(), Some(UPSTREAM_KEY), "{}", s.body);
        }

        self.app.settled().await;
        assert_eq!(
            self.app.balance(self.customer_id).await,
            START - charged * NORMAL_COST
        );
        let ledger = self.app.ledger(self.customer_id).await;
        let consumes: Vec<_> = ledger.iter().filter(|t| t.kind == "consume").collect();
        assert_eq!(consumes.len() as i64, charged, "{ledger:?}");
        assert!(consumes.iter().all(|t| t.amount == -NORMAL_COST));
        assert_eq!(ledger.len() as i64, 1 + charged, "{ledger:?}");
        // Each charge names a generation served on the client's endpoint.
        for t in consumes {
            let id = t.reference.clone().expect("a charge names its generation");
            let g = self.app.generation(&id).await;
            assert_eq!(g.status, "success", "{g:?}");
            assert!(g.endpoint.starts_with(client_path), "{}", g.endpoint);
            assert_eq!(g.model, model);
            assert_eq!((g.tokens_prompt, g.tokens_completion), (12, 30));
            assert_eq!(g.cost, NORMAL_COST);
        }
        self.app.verify_ledger().await;
        self.upstream.stop().await;
        self.app.stop().await;
    }
}

/// Successful calls each script makes (see the scripts' docstrings).
const OPENAI_CALLS: i64 = 3;
const ANTHROPIC_CALLS: i64 = 3;
const GENAI_CALLS: i64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_works_against_an_anthropic_channel_and_pays_the_anthropic_usage() {
    Pair::start("anthropic")
        .await
        .run("openai_sdk_check.py", OPENAI_CALLS, "/v1/chat/completions")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_works_against_a_gemini_channel_and_pays_the_gemini_usage() {
    Pair::start("gemini")
        .await
        .run("openai_sdk_check.py", OPENAI_CALLS, "/v1/chat/completions")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_works_against_an_openai_channel_and_pays_the_openai_usage() {
    Pair::start("openai")
        .await
        .run("anthropic_sdk_check.py", ANTHROPIC_CALLS, "/v1/messages")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_works_against_a_gemini_channel_and_pays_the_gemini_usage() {
    Pair::start("gemini")
        .await
        .run("anthropic_sdk_check.py", ANTHROPIC_CALLS, "/v1/messages")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_genai_sdk_works_against_an_openai_channel_and_pays_the_openai_usage() {
    Pair::start("openai")
        .await
        .run("genai_sdk_check.py", GENAI_CALLS, "/v1")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_genai_sdk_works_against_an_anthropic_channel_and_pays_the_anthropic_usage() {
    Pair::start("anthropic")
        .await
        .run("genai_sdk_check.py", GENAI_CALLS, "/v1")
        .await;
}

/// Successful calls `openai_responses_check.py` makes, and how many of them stream.
const RESPONSES_CALLS: i64 = 3;
const RESPONSES_STREAMED: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_responses_api_is_served_natively_by_an_openai_channel() {
    Pair::start("openai")
        .await
        .run_streaming(
            "openai_responses_check.py",
            RESPONSES_CALLS,
            RESPONSES_STREAMED,
            "/v1/responses",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_responses_api_works_against_an_anthropic_channel() {
    Pair::start("anthropic")
        .await
        .run_streaming(
            "openai_responses_check.py",
            RESPONSES_CALLS,
            RESPONSES_STREAMED,
            "/v1/responses",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_responses_api_works_against_a_gemini_channel() {
    Pair::start("gemini")
        .await
        .run_streaming(
            "openai_responses_check.py",
            RESPONSES_CALLS,
            RESPONSES_STREAMED,
            "/v1/responses",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_is_free_exact_through_an_anthropic_channel_and_local_elsewhere() {
    for kind in ["anthropic", "gemini", "openai"] {
        let p = Pair::start(kind).await;
        let model = p.upstream.model();
        // Gemini's countTokens: exact through a Gemini channel, local elsewhere.
        let resp = p
            .app
            .http
            .post(format!("{}/v1beta/models/{model}:countTokens", p.app.address))
            .header("x-goog-api-key", &p.key)
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "Say hello to everyone in the room"}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        let n = v["totalTokens"].as_i64().unwrap();
        if kind == "gemini" {
            assert_eq!(n, tollgate_tests::mock_gemini::COUNTED_TOKENS);
        } else {
            assert!((8..40).contains(&n), "counted locally: {n}");
        }
        let body = json!({"model": model, "messages": [{"role": "user", "content": "Say hello to everyone in the room"}]});
        let resp = p
            .app
            .http
            .post(format!("{}/v1/messages/count_tokens", p.app.address))
            .header("x-api-key", &p.key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        let n = v["input_tokens"].as_i64().unwrap();
        if kind == "anthropic" {
            assert_eq!(
                n,
                tollgate_tests::mock_anthropic::COUNTED_TOKENS,
                "the channel counts"
            );
        } else {
            assert!((8..40).contains(&n), "counted locally: {n}");
        }
        // An unknown model is a 404 in Anthropic's shape; nothing is charged either way.
        let resp = p
            .app
            .http
            .post(format!("{}/v1/messages/count_tokens", p.app.address))
            .header("x-api-key", &p.key)
            .json(&json!({"model": "nope", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        p.app.settled().await;
        assert_eq!(p.app.balance(p.customer_id).await, START);
        assert_eq!(p.app.ledger(p.customer_id).await.len(), 1);
        p.upstream.stop().await;
        p.app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_channel_gets_its_deployment_url_api_version_and_api_key() {
    let app = spawn_app().await;
    let mock = MockOpenAi::start().await;
    // The model the customer names maps to the deployment's name.
    app.add_channel(
        "azure",
        &format!("{}/?api-version=2024-06-01", mock.base_url),
        &["gpt-4o"],
        json!({"type": "azure", "keys": ["azure-key-5678"], "model_mapping": {"gpt-4o": "my-gpt4o-deploy"}}),
    )
    .await;
    app.set_price("gpt-4o", INPUT_PRICE, OUTPUT_PRICE).await;
    let (customer_id, key) = app.customer_with_key("dave", 1.0).await;

    let resp = app
        .chat(
            &key,
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello! How can I help?"
    );
    let resp = app.chat(&key, json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    let seen = mock.received();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(
            r.path,
            "/openai/deployments/my-gpt4o-deploy/chat/completions?api-version=2024-06-01"
        );
        assert_eq!(r.authorization.as_deref(), Some("api-key azure-key-5678"));
    }
    app.settled().await;
    assert_eq!(app.balance(customer_id).await, START - 2 * NORMAL_COST);
    app.verify_ledger().await;
    mock.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_a_channel_of_another_protocol_reach_the_client_in_its_own_shape_and_cost_nothing()
 {
    // An Anthropic channel that rejects the request, behind an OpenAI client.
    let p = Pair::start("anthropic").await;
    p.app
        .add_channel(
            "anthropic-bad",
            p.upstream.base_url(),
            &["bad-request"],
            json!({"type": "anthropic", "keys": [UPSTREAM_KEY]}),
        )
        .await;
    p.app
        .set_price("bad-request", INPUT_PRICE, OUTPUT_PRICE)
        .await;
    let resp = p
        .app
        .chat(
            &p.key,
            json!({"model": "bad-request", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "max_tokens: Field required");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    // What Claude cannot do is refused before any upstream sees it.
    let before = p.upstream.seen().len();
    let resp = p
        .app
        .chat(&p.key, json!({"model": ANTHROPIC_MODEL, "n": 2, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("'n'"),
        "{v}"
    );
    assert_eq!(v["error"]["code"], "invalid_request");
    assert_eq!(p.upstream.seen().len(), before, "nothing went upstream");

    // A Gemini client gets Google's shape for the same rejection.
    let resp = p
        .app
        .http
        .post(format!(
            "{}/v1beta/models/bad-request:generateContent",
            p.app.address
        ))
        .header("x-goog-api-key", &p.key)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 400);
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(v["error"]["message"], "max_tokens: Field required");

    p.app.settled().await;
    assert_eq!(p.app.balance(p.customer_id).await, START);
    assert_eq!(p.app.ledger(p.customer_id).await.len(), 1);
    p.app.verify_ledger().await;
    p.upstream.stop().await;
    p.app.stop().await;
}

/// Calls each tool-loop script makes (two of them streamed).
const TOOL_CALLS: i64 = 4;
const TOOL_STREAMED: usize = 2;

async fn tool_loop(kind: &str, script: &str, path: &str) {
    Pair::start(kind)
        .await
        .run_streaming(script, TOOL_CALLS, TOOL_STREAMED, path)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_runs_a_tool_loop_on_every_channel_type() {
    for kind in ["openai", "anthropic", "gemini"] {
        tool_loop(kind, "openai_tools_check.py", "/v1/chat/completions").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_runs_a_tool_loop_on_every_channel_type() {
    for kind in ["anthropic", "openai", "gemini"] {
        tool_loop(kind, "anthropic_tools_check.py", "/v1/messages").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_genai_sdk_runs_a_function_calling_loop_on_every_channel_type() {
    for kind in ["gemini", "openai", "anthropic"] {
        tool_loop(kind, "genai_tools_check.py", "/v1").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converted_answer_carries_the_upstreams_id_so_the_generation_lookup_finds_it() {
    let p = Pair::start("anthropic").await;
    let resp = p
        .app
        .chat(
            &p.key,
            json!({"model": ANTHROPIC_MODEL, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(id, tollgate_tests::mock_anthropic::MESSAGE_ID);
    p.app.settled().await;
    let found = p
        .app
        .http
        .get(format!("{}/v1/generation?id={id}", p.app.address))
        .bearer_auth(&p.key)
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), 200);
    let g: Value = found.json().await.unwrap();
    assert!(g["data"]["total_cost"].as_f64().is_some(), "{g}");
    p.upstream.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_on_an_openai_compatible_channel_without_them_go_through_its_chat_completions() {
    let app = spawn_app().await;
    let mock = MockOpenAi::start().await;
    app.add_channel(
        "chat-only",
        &mock.base_url,
        &["deepseek-chat"],
        json!({"model_mapping": {"deepseek-chat": "no-responses"}}),
    )
    .await;
    app.set_price("deepseek-chat", INPUT_PRICE, OUTPUT_PRICE)
        .await;
    let (customer_id, key) = app.customer_with_key("fay", 1.0).await;
    // With one try allowed, the fallback still gets its chance.
    let (s, v) = app
        .api(
            "PUT",
            "/api/settings",
            &app.root_token,
            Some(json!({"max_tries": 1})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for stream in [false, true] {
        let resp = app
            .http
            .post(format!("{}/v1/responses", app.address))
            .bearer_auth(&key)
            .json(&json!({"model": "deepseek-chat", "input": "Say hello", "stream": stream}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        if stream {
            assert!(text.contains("event: response.completed"), "{text}");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                v["output"][0]["content"][0]["text"],
                "Hello! How can I help?"
            );
            assert_eq!(v["usage"]["output_tokens"], 30);
        }
    }
    let paths: Vec<String> = mock.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/v1/responses",
            "/v1/chat/completions",
            "/v1/responses",
            "/v1/chat/completions"
        ]
    );
    app.settled().await;
    assert_eq!(app.balance(customer_id).await, START - 2 * NORMAL_COST);
    app.verify_ledger().await;
    mock.stop().await;
    app.stop().await;
}
