//! "Customers cannot hurt channels" (DESIGN.md, Trust rules) end to end: an upstream
//! failure is judged by the provider's structured error fields, never by the text it
//! echoes; what the request caused goes back to the client and blames no channel or key;
//! a key is disabled only when one test request with it confirms it is dead; and an
//! answer over the size limit is the request's problem, not the channel's. Nothing is
//! charged for any failed request.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::app::generation_id;
use tollgate_tests::app::spawn_app_with;
use tollgate_tests::{MockGemini, NORMAL_COST, Scenario, TestApp};

/// What a scenario customer starts with: 1 credit.
const START: i64 = 1_000_000;

/// Words that read like a key error, which a customer can make any upstream echo.
const KEY_WORDS: &str = "API key not valid. Please pass a valid API key. API_KEY_INVALID";

/// The channel as the admin API shows it.
async fn channel(app: &TestApp, id: i64) -> Value {
    let (status, c) = app
        .api("GET", &format!("/api/channels/{id}"), &app.root_token, None)
        .await;
    assert_eq!(status, 200, "{c}");
    c
}

/// Asserts the channel and every one of its keys are still enabled.
async fn assert_channel_and_keys_enabled(app: &TestApp, id: i64) {
    let c = channel(app, id).await;
    assert_eq!(c["status"], "enabled", "{c}");
    let keys = c["keys_preview"].as_array().unwrap();
    assert!(!keys.is_empty(), "{c}");
    for k in keys {
        assert_eq!(k["status"], "enabled", "{c}");
    }
}

/// Turns off a channel (the scenario's catch-all) so only the test's channels serve.
async fn disable_channel(app: &TestApp, id: i64) {
    let (st, v) = app
        .api(
            "PATCH",
            &format!("/api/channels/{id}"),
            &app.root_token,
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

/// Asserts the generation failed with `status` and cost nothing.
async fn assert_failed_free(app: &TestApp, gen_id: &str, status: i32) {
    let g = app.wait_generation(gen_id).await;
    assert_eq!(
        (g.status.as_str(), g.status_code, g.cost),
        ("error", status, 0),
        "{g:?}"
    );
}

/// Asserts `user_id` still has `START` and only its mint in the ledger.
async fn assert_charged_nothing(app: &TestApp, user_id: i64) {
    app.settled().await;
    assert_eq!(app.balance(user_id).await, START);
    let ledger = app.ledger(user_id).await;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
}

/// How many requests the mock received with the upstream key `key` (OpenAI bearer).
fn tries_with(s: &Scenario, key: &str) -> usize {
    s.mock
        .count_by_key()
        .get(&format!("Bearer {key}"))
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_400_that_echoes_key_words_goes_back_to_the_client_and_disables_nothing() {
    let s = Scenario::start(1.0).await;
    let id = s
        .app
        .add_channel(
            "echoing",
            &s.mock.base_url,
            &["echo-invalid", "gpt-4o-mini"],
            json!({"priority": 10}),
        )
        .await;
    s.app.set_price("echo-invalid", 0.15, 0.6).await;

    let body =
        json!({"model": "echo-invalid", "messages": [{"role": "user", "content": KEY_WORDS}]});
    let r = s.app.chat(&s.key, body).await;
    let gen_id = generation_id(&r);
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_value", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key not valid"),
        "{err}"
    );
    assert_failed_free(&s.app, &gen_id, 400).await;
    assert_charged_nothing(&s.app, s.customer_id).await;
    // Not retried elsewhere, and nothing disabled.
    assert_eq!(s.mock.received().len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_channel_and_keys_enabled(&s.app, id).await;

    // The same channel serves the next request.
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = generation_id(&r);
    assert_eq!(r.status(), 200);
    assert_eq!(s.app.wait_generation(&gen_id).await.channel_id, Some(id));
    s.app
        .assert_charged_once(s.customer_id, START, &gen_id, NORMAL_COST)
        .await;
    s.stop().await;
}

/// A gateway with one `gemini` channel (key `AIza-upstream-1234`) and a customer.
struct GeminiSetup {
    app: TestApp,
    mock: MockGemini,
    channel_id: i64,
    customer_id: i64,
    key: String,
}

/// A normal Gemini answer: 12 prompt × 0.1 + 30 candidates × 0.4 = 13.2 → 14 µc.
const GEMINI_NORMAL_COST: i64 = 14;

impl GeminiSetup {
    async fn start() -> Self {
        let app = spawn_app_with(|c| c.tunables.health_interval_s = 3600).await;
        let mock = MockGemini::start().await;
        let models = ["gemini-2.0-flash", "echo-invalid"];
        let channel_id = app
            .add_channel(
                "gemini",
                &mock.base_url,
                &models,
                json!({"type": "gemini", "keys": ["AIza-upstream-1234"]}),
            )
            .await;
        for m in models {
            app.set_price(m, 0.1, 0.4).await;
        }
        let (customer_id, key) = app.customer_with_key("alice", 1.0).await;
        GeminiSetup {
            app,
            mock,
            channel_id,
            customer_id,
            key,
        }
    }

    async fn generate(&self, model: &str, body: &Value) -> reqwest::Response {
        self.app
            .http
            .post(format!(
                "{}/v1beta/models/{model}:generateContent",
                self.app.address
            ))
            .header("x-goog-api-key", &self.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    fn body(text: &str) -> Value {
        json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
    }

    /// The next plain request is served by the same channel and key, and charged once.
    async fn assert_serves_the_next_request(&self) {
        let r = self
            .generate("gemini-2.0-flash", &Self::body("Say hello"))
            .await;
        let gen_id = generation_id(&r);
        assert_eq!(r.status(), 200);
        assert_eq!(
            self.app.wait_generation(&gen_id).await.channel_id,
            Some(self.channel_id)
        );
        self.app
            .assert_charged_once(self.customer_id, START, &gen_id, GEMINI_NORMAL_COST)
            .await;
        assert_eq!(
            self.mock.count_by_key().get("AIza-upstream-1234").copied(),
            Some(2)
        );
    }

    async fn stop(self) {
        self.app.verify_ledger().await;
        self.app.assert_ledger_consistent().await;
        self.mock.stop().await;
        self.app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_400_that_echoes_api_key_invalid_goes_back_to_the_client_and_disables_nothing() {
    let g = GeminiSetup::start().await;
    let r = g
        .generate("echo-invalid", &GeminiSetup::body(KEY_WORDS))
        .await;
    let gen_id = generation_id(&r);
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["status"], "INVALID_ARGUMENT", "{err}");
    assert_failed_free(&g.app, &gen_id, 400).await;
    assert_charged_nothing(&g.app, g.customer_id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_channel_and_keys_enabled(&g.app, g.channel_id).await;
    g.assert_serves_the_next_request().await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_403_on_a_cached_content_the_request_named_goes_back_and_the_channel_serves_on() {
    let g = GeminiSetup::start().await;
    let mut body = GeminiSetup::body("Summarise the cached document");
    body["cachedContent"] = json!("cachedContents/another-tenants-cache");
    let r = g.generate("gemini-2.0-flash", &body).await;
    let gen_id = generation_id(&r);
    assert_eq!(r.status(), 403);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["status"], "PERMISSION_DENIED", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CachedContent"),
        "{err}"
    );
    assert_failed_free(&g.app, &gen_id, 403).await;
    assert_charged_nothing(&g.app, g.customer_id).await;
    assert_eq!(g.mock.received().len(), 1, "not retried");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_channel_and_keys_enabled(&g.app, g.channel_id).await;
    g.assert_serves_the_next_request().await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_disabled_only_after_its_test_request_fails_too() {
    // No health job during the test: only the relay and its confirmation touch the key.
    let s = Scenario::start_with(1.0, |c| c.tunables.health_interval_s = 3600).await;
    let id = s
        .app
        .add_channel(
            "revoked",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"priority": 10, "keys": ["sk-revoked-eeee5555"]}),
        )
        .await;
    // Served by the scenario's channel after the revoked key's 401.
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = generation_id(&r);
    assert_eq!(r.status(), 200);
    s.app
        .assert_charged_once(s.customer_id, START, &gen_id, NORMAL_COST)
        .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let c = loop {
        let c = channel(&s.app, id).await;
        if c["status"] == "auto_disabled" {
            break c;
        }
        assert!(Instant::now() < deadline, "channel not auto-disabled: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        c["disabled_reason"].as_str().unwrap().contains("401"),
        "{c}"
    );
    // The relay's try, then the one test request that confirmed it.
    assert_eq!(tries_with(&s, "sk-revoked-eeee5555"), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_failed_once_but_passes_its_test_request_stays_enabled_and_serves() {
    let s = Scenario::start_with(1.0, |c| c.tunables.health_interval_s = 3600).await;
    let id = s
        .app
        .add_channel(
            "flaky",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"priority": 10, "keys": ["sk-flaky-ffff6666"]}),
        )
        .await;
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let first = generation_id(&r);
    assert_eq!(r.status(), 200);
    s.app
        .assert_charged_once(s.customer_id, START, &first, NORMAL_COST)
        .await;
    // The 401 leads to one test request with that key, which succeeds.
    let deadline = Instant::now() + Duration::from_secs(3);
    while tries_with(&s, "sk-flaky-ffff6666") < 2 {
        assert!(
            Instant::now() < deadline,
            "no test request confirmed the key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_channel_and_keys_enabled(&s.app, id).await;
    // The key serves the next request.
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let second = generation_id(&r);
    assert_eq!(r.status(), 200);
    assert_eq!(s.app.wait_generation(&second).await.channel_id, Some(id));
    assert_eq!(tries_with(&s, "sk-flaky-ffff6666"), 3);
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - 2 * NORMAL_COST);
    assert_eq!(s.app.ledger(s.customer_id).await.len(), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_answers_are_refused_uncharged_and_never_open_the_breaker() {
    let s = Scenario::start_with(1.0, |c| c.max_upstream_mb = 1).await;
    disable_channel(&s.app, s.channel_id).await;
    let models = ["huge", "gpt-4o-mini"];
    let first = s
        .app
        .add_channel("first", &s.mock.base_url, &models, json!({"priority": 10}))
        .await;
    s.app
        .add_channel("second", &s.mock.base_url, &models, json!({"priority": 0}))
        .await;
    s.app.set_price("huge", 0.15, 0.6).await;

    // More oversize answers in a row than the breaker's threshold (5 in tests).
    for i in 1..=7 {
        let r = s.app.chat(&s.key, Scenario::body("huge")).await;
        let gen_id = generation_id(&r);
        assert_eq!(r.status(), 502, "request {i}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "upstream_error", "{err}");
        assert_eq!(err["error"]["message"], "answer too large", "{err}");
        assert_failed_free(&s.app, &gen_id, 502).await;
        assert_eq!(s.mock.received().len(), i, "not retried on another channel");
    }
    assert_charged_nothing(&s.app, s.customer_id).await;

    // The first channel's breaker stayed closed: it serves the next request.
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = generation_id(&r);
    assert_eq!(r.status(), 200);
    assert_eq!(s.app.wait_generation(&gen_id).await.channel_id, Some(first));
    s.app
        .assert_charged_once(s.customer_id, START, &gen_id, NORMAL_COST)
        .await;
    assert_channel_and_keys_enabled(&s.app, first).await;
    s.stop().await;
}

/// A channel (priority 10) that fails `fail-500` and serves `gpt-4o-mini`, and a
/// backup (priority 0) for `gpt-4o-mini` only; the scenario's channel is off.
async fn failing_model_and_backup(s: &Scenario) -> (i64, i64) {
    disable_channel(&s.app, s.channel_id).await;
    let shared = s
        .app
        .add_channel(
            "shared",
            &s.mock.base_url,
            &["fail-500", "gpt-4o-mini"],
            json!({"priority": 10}),
        )
        .await;
    let backup = s
        .app
        .add_channel("backup", &s.mock.base_url, &["gpt-4o-mini"], json!({}))
        .await;
    (shared, backup)
}

/// Sends a `fail-500` request with `key`; it fails with 502 and costs nothing.
async fn fail_once(s: &Scenario, key: &str) {
    let r = s.app.chat(key, Scenario::body("fail-500")).await;
    let gen_id = generation_id(&r);
    assert_eq!(r.status(), 502);
    assert_failed_free(&s.app, &gen_id, 502).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_one_customer_key_alone_never_take_the_channel_from_another_customer() {
    let s = Scenario::start(1.0).await;
    let (shared, _) = failing_model_and_backup(&s).await;
    let (bob, bob_key) = s.app.customer_with_key("bob", 1.0).await;
    // More failures than the breaker's threshold (5 in tests), all from one key.
    for _ in 0..7 {
        fail_once(&s, &s.key).await;
    }
    assert_charged_nothing(&s.app, s.customer_id).await;

    let r = s.app.chat(&bob_key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = generation_id(&r);
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.app.wait_generation(&gen_id).await.channel_id,
        Some(shared)
    );
    s.app
        .assert_charged_once(bob, START, &gen_id, NORMAL_COST)
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_two_customer_keys_open_the_channels_breaker() {
    let s = Scenario::start(1.0).await;
    let (_, backup) = failing_model_and_backup(&s).await;
    let (bob, bob_key) = s.app.customer_with_key("bob", 1.0).await;
    for key in [&s.key, &bob_key, &s.key, &bob_key, &s.key] {
        fail_once(&s, key).await;
    }
    assert_charged_nothing(&s.app, s.customer_id).await;

    let before = s.mock.received().len();
    let r = s.app.chat(&bob_key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = generation_id(&r);
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.app.wait_generation(&gen_id).await.channel_id,
        Some(backup)
    );
    assert_eq!(
        s.mock.received().len(),
        before + 1,
        "the open breaker skips it"
    );
    s.app
        .assert_charged_once(bob, START, &gen_id, NORMAL_COST)
        .await;
    s.stop().await;
}
