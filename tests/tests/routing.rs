//! Routing and resilience end to end: failover across channels that fail in different
//! ways, dead keys, breakers, the health job, weights — and never a charge for a
//! failure.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::mock_openai::reset_upstream;
use tollgate_tests::{NORMAL_COST, Scenario};

const START: i64 = 1_000_000;

fn attempts(g: &store::entities::generation::Model) -> Vec<Value> {
    serde_json::from_str::<Value>(g.attempts.as_deref().unwrap())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

async fn channel(s: &Scenario, id: i64) -> Value {
    s.app
        .api(
            "GET",
            &format!("/api/channels/{id}"),
            &s.app.root_token,
            None,
        )
        .await
        .1
}

/// Disables the scenario's catch-all channel so only the test's own channels serve.
async fn only_test_channels(s: &Scenario) {
    let (st, _) = s
        .app
        .api(
            "PATCH",
            &format!("/api/channels/{}", s.channel_id),
            &s.app.root_token,
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_channels_two_failing_differently_every_request_succeeds_and_is_charged_once() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    let m = &s.mock.base_url;
    s.app
        .add_channel(
            "five-hundred",
            m,
            &["gpt-4o-mini"],
            json!({"priority": 10, "model_mapping": {"gpt-4o-mini": "fail-500"}}),
        )
        .await;
    s.app
        .add_channel(
            "garbage",
            m,
            &["gpt-4o-mini"],
            json!({"priority": 10, "model_mapping": {"gpt-4o-mini": "malformed"}}),
        )
        .await;
    let good = s
        .app
        .add_channel("good", m, &["gpt-4o-mini"], json!({"priority": 0}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["x-generation-id"].to_str().unwrap().to_owned());
    }
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - 8 * NORMAL_COST);
    for id in &ids {
        let g = s.app.generation(id).await;
        let a = attempts(&g);
        assert_eq!(a.last().unwrap()["channel_id"], good, "{a:?}");
        assert_eq!(g.cost, NORMAL_COST);
        // The higher tier was tried first (until its breakers opened).
        assert!(a.len() <= 3);
    }
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_channel_fails_the_client_gets_the_documented_error_and_pays_nothing() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    let m = &s.mock.base_url;
    let reset = reset_upstream().await;
    s.app
        .add_channel(
            "five-hundred",
            m,
            &["gpt-4o-mini"],
            json!({"model_mapping": {"gpt-4o-mini": "fail-500"}}),
        )
        .await;
    s.app
        .add_channel(
            "empty",
            m,
            &["gpt-4o-mini"],
            json!({"model_mapping": {"gpt-4o-mini": "empty"}}),
        )
        .await;
    s.app
        .add_channel("reset", &reset, &["gpt-4o-mini"], json!({}))
        .await;
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(r.status(), 502);
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    let text = body.to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.contains("sk-upstream"),
        "{text}"
    );
    s.app.settled().await;
    let g = s.app.generation(&gen_id).await;
    let classes: Vec<String> = attempts(&g)
        .iter()
        .map(|a| a["error"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = classes.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["connect", "malformed", "status_500"],
        "{classes:?}"
    );
    assert_eq!(s.app.balance(s.customer_id).await, START);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_hangs_past_its_timeout_gets_504_and_costs_nothing() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    s.app
        .add_channel(
            "hangs",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"timeout_s": 1, "model_mapping": {"gpt-4o-mini": "slow"}}),
        )
        .await;
    let started = Instant::now();
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "upstream_timeout"
    );
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_channel_is_skipped_and_never_shown_to_the_client_as_429() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    s.app
        .add_channel(
            "limited",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"priority": 5, "model_mapping": {"gpt-4o-mini": "fail-429"}}),
        )
        .await;
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(r.status(), 502);
    s.app
        .add_channel("fine", &s.mock.base_url, &["gpt-4o-mini"], json!({}))
        .await;
    assert_eq!(
        s.app
            .chat(&s.key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - NORMAL_COST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_disabled_with_its_reason_and_the_channel_serves_on_its_other_key() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    let id = s
        .app
        .add_channel(
            "two-keys",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"keys": ["sk-revoked-aaaa1111", "sk-good-bbbb2222"]}),
        )
        .await;
    for _ in 0..4 {
        assert_eq!(
            s.app
                .chat(&s.key, Scenario::body("gpt-4o-mini"))
                .await
                .status(),
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = channel(&s, id).await;
    assert_eq!(c["status"], "enabled");
    assert_eq!(c["key_count"], 1);
    let revoked = c["keys_preview"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["last4"] == "1111")
        .unwrap()
        .clone();
    assert_eq!(revoked["status"], "auto_disabled");
    let reason = revoked["disabled_reason"].as_str().unwrap();
    assert!(
        reason.contains("401") && !reason.contains("https://"),
        "{reason}"
    );
    // The dead key was tried, then tested once before it was disabled (requests sent
    // while the test ran may have tried it too, each moving on to the good key); once
    // disabled it is never tried again.
    let tries = || {
        s.mock
            .count_by_key()
            .get("Bearer sk-revoked-aaaa1111")
            .copied()
            .unwrap_or(0)
    };
    let disabled_after = tries();
    assert!((2..=4).contains(&disabled_after), "{disabled_after}");
    for _ in 0..2 {
        assert_eq!(
            s.app
                .chat(&s.key, Scenario::body("gpt-4o-mini"))
                .await
                .status(),
            200
        );
    }
    assert_eq!(tries(), disabled_after);
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - 6 * NORMAL_COST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_only_key_is_revoked_is_auto_disabled_and_comes_back_once_its_test_passes()
{
    let s = Scenario::start(1.0).await;
    let id = s
        .app
        .add_channel(
            "revoked",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"priority": 10, "keys": ["sk-revoked-cccc3333"]}),
        )
        .await;
    // Served by the fallback channel; the revoked one is disabled on the way.
    assert_eq!(
        s.app
            .chat(&s.key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let c = channel(&s, id).await;
        if c["status"] == "auto_disabled" {
            assert!(c["disabled_reason"].as_str().unwrap().contains("401"));
            break;
        }
        assert!(Instant::now() < deadline, "channel not auto-disabled: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The test button shows the failure without leaking anything.
    let (_, t) = s
        .app
        .api(
            "POST",
            &format!("/api/channels/{id}/test"),
            &s.app.root_token,
            Some(json!({})),
        )
        .await;
    assert_eq!(t["ok"], false);
    assert!(t["error"].as_str().unwrap().contains("401"));
    assert!(!t.to_string().contains("sk-revoked-cccc3333"));
    // The provider reinstates the key: the health job (every second in tests) notices.
    s.mock.accept_revoked_keys();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = channel(&s, id).await;
        if c["status"] == "enabled" {
            assert_eq!(c["key_count"], 1);
            assert!(c["disabled_reason"].is_null());
            assert!(c["last_test_at"].is_string());
            break;
        }
        assert!(Instant::now() < deadline, "channel did not come back: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, t) = s
        .app
        .api(
            "POST",
            &format!("/api/channels/{id}/test"),
            &s.app.root_token,
            None,
        )
        .await;
    assert_eq!(t["ok"], true, "{t}");
    assert!(t["latency_ms"].is_number());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_disabled_by_an_admin_is_never_re_enabled_by_the_health_job() {
    let s = Scenario::start(1.0).await;
    let (st, _) = s
        .app
        .api(
            "PATCH",
            &format!("/api/channels/{}", s.channel_id),
            &s.app.root_token,
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(channel(&s, s.channel_id).await["status"], "disabled");
    assert_eq!(
        s.app
            .chat(&s.key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        404
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_credit_key_is_disabled_like_a_revoked_one() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    let id = s
        .app
        .add_channel(
            "broke",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"keys": ["sk-broke-dddd4444"]}),
        )
        .await;
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(r.status(), 502);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = channel(&s, id).await;
    assert_eq!(c["status"], "auto_disabled");
    assert!(
        c["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("insufficient_quota")
    );
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_keeps_a_failing_channel_out_after_repeated_failures() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    let bad = s
        .app
        .add_channel(
            "flaky",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"priority": 10, "model_mapping": {"gpt-4o-mini": "fail-500"}}),
        )
        .await;
    s.app
        .add_channel("steady", &s.mock.base_url, &["gpt-4o-mini"], json!({}))
        .await;
    let (bob, bob_key) = s.app.customer_with_key("bob", 1.0).await;
    // Five failures from two customers open the breaker (the test threshold).
    for key in [&s.key, &bob_key, &s.key, &bob_key, &s.key] {
        assert_eq!(
            s.app
                .chat(key, Scenario::body("gpt-4o-mini"))
                .await
                .status(),
            200
        );
    }
    let before = s.mock.received().len();
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.mock.received().len(),
        before + 1,
        "the open breaker should skip the flaky channel"
    );
    s.app.settled().await;
    assert!(
        attempts(&s.app.generation(&gen_id).await)
            .iter()
            .all(|a| a["channel_id"] != bad)
    );
    // After the cool-down (1 s in tests) one trial goes to it again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = s.mock.received().len();
    assert_eq!(
        s.app
            .chat(&s.key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );
    assert_eq!(s.mock.received().len(), before + 2);
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - 5 * NORMAL_COST);
    assert_eq!(s.app.balance(bob).await, START - 2 * NORMAL_COST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_traffic_within_a_tier() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    s.app
        .add_channel(
            "light",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"weight": 1, "keys": ["sk-light-0001"]}),
        )
        .await;
    s.app
        .add_channel(
            "heavy",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"weight": 3, "keys": ["sk-heavy-0003"]}),
        )
        .await;
    let n = 200;
    for _ in 0..n {
        assert_eq!(
            s.app
                .chat(&s.key, Scenario::body("gpt-4o-mini"))
                .await
                .status(),
            200
        );
    }
    let heavy = s
        .mock
        .count_by_key()
        .get("Bearer sk-heavy-0003")
        .copied()
        .unwrap_or(0);
    let share = heavy as f64 / f64::from(n);
    // 0.75 expected; ±0.1 is more than four standard deviations at n = 200.
    assert!((share - 0.75).abs() < 0.1, "heavy share {share}");
    s.app.settled().await;
    assert_eq!(
        s.app.balance(s.customer_id).await,
        START - i64::from(n) * NORMAL_COST
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fails_over_before_its_first_byte_and_is_billed_once() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    let m = &s.mock.base_url;
    s.app
        .add_channel(
            "dead",
            m,
            &["gpt-4o-mini"],
            json!({"priority": 10, "model_mapping": {"gpt-4o-mini": "fail-500"}}),
        )
        .await;
    s.app
        .add_channel("alive", m, &["gpt-4o-mini"], json!({}))
        .await;
    let mut body = Scenario::body("gpt-4o-mini");
    body["stream"] = json!(true);
    let r = s.app.chat(&s.key, body).await;
    assert_eq!(r.status(), 200);
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(!text.contains("error"), "{text}");
    s.app.settled().await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(attempts(&g).len(), 2);
    assert_eq!(g.cost, NORMAL_COST);
    assert_eq!(s.app.balance(s.customer_id).await, START - NORMAL_COST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_breaker_is_open_the_client_gets_503_no_available_channel() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    s.app
        .add_channel(
            "flaky",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"model_mapping": {"gpt-4o-mini": "fail-500"}}),
        )
        .await;
    let (bob, bob_key) = s.app.customer_with_key("bob", 1.0).await;
    for key in [&s.key, &bob_key, &s.key, &bob_key, &s.key] {
        assert_eq!(
            s.app
                .chat(key, Scenario::body("gpt-4o-mini"))
                .await
                .status(),
            502
        );
    }
    let before = s.mock.received().len();
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "no_available_channel"
    );
    assert_eq!(s.mock.received().len(), before);
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START);
    assert_eq!(s.app.balance(bob).await, START);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_count_saved_in_settings_applies_at_once_without_a_restart() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    for name in ["down-1", "down-2", "down-3"] {
        s.app
            .add_channel(
                name,
                &s.mock.base_url,
                &["gpt-4o-mini"],
                json!({"model_mapping": {"gpt-4o-mini": "fail-500"}}),
            )
            .await;
    }
    let tries = |n: usize| {
        let s = &s;
        async move {
            let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
            assert_eq!(r.status(), 502);
            let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
            s.app.settled().await;
            assert_eq!(attempts(&s.app.generation(&gen_id).await).len(), n);
        }
    };
    tries(3).await;
    let (st, v) = s
        .app
        .api(
            "PUT",
            "/api/settings",
            &s.app.root_token,
            Some(json!({"max_tries": 1, "breaker_failures": 1000})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    tries(1).await;
    assert_eq!(s.app.balance(s.customer_id).await, START);
    s.stop().await;
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
async fn a_trial_that_cannot_use_the_channels_only_key_hands_the_trial_back_and_the_channel_serves_again()
 {
    // No health job: only the relay and its key confirmation touch the key.
    let s = Scenario::start_with(1.0, |c| c.tunables.health_interval_s = 3600).await;
    only_test_channels(&s).await;
    let (bob, bob_key) = s.app.customer_with_key("bob", 1.0).await;
    let reset = reset_upstream().await;
    // Its only key answers 401 to its first request, then works.
    let single = s
        .app
        .add_channel(
            "single-key",
            &reset,
            &["gpt-4o-mini"],
            json!({"priority": 10, "keys": ["sk-flaky-trial-0001"]}),
        )
        .await;
    let backup = s
        .app
        .add_channel("backup", &s.mock.base_url, &["gpt-4o-mini"], json!({}))
        .await;
    // Broken connections for two customers open the single-key channel's breaker.
    for key in [&s.key, &bob_key, &s.key, &bob_key, &s.key] {
        let r = s.app.chat(key, Scenario::body("gpt-4o-mini")).await;
        assert_eq!(r.status(), 200);
    }
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    assert_eq!(r.status(), 200);
    s.app.settled().await;
    assert_eq!(
        attempts(&s.app.generation(&gen_id).await).len(),
        1,
        "breaker open"
    );

    // The channel is mended while it cools down.
    let (st, v) = s
        .app
        .api(
            "PATCH",
            &format!("/api/channels/{single}"),
            &s.app.root_token,
            Some(json!({"base_url": s.mock.base_url})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The trial: the key's 401 makes it a suspect, so the request cannot use the
    // channel's only key again and is served by the backup.
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    assert_eq!(r.status(), 200);
    s.app.settled().await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(g.channel_id, Some(backup));
    let a = attempts(&g);
    assert_eq!(
        (a[0]["channel_id"].as_i64(), a[0]["status"].as_i64()),
        (Some(single), Some(401)),
        "{a:?}"
    );
    // The key passes its test request and stays.
    let deadline = Instant::now() + Duration::from_secs(3);
    while tries_with(&s, "sk-flaky-trial-0001") < 2 {
        assert!(Instant::now() < deadline, "no test request for the key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The trial was handed back: the next request takes it and the channel serves.
    let r = s.app.chat(&bob_key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.app.wait_generation(&gen_id).await.channel_id,
        Some(single)
    );
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - 5 * NORMAL_COST);
    assert_eq!(s.app.balance(bob).await, START - 3 * NORMAL_COST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_stream_request_whose_upstream_times_out_is_not_sent_again_elsewhere() {
    let s = Scenario::start(1.0).await;
    only_test_channels(&s).await;
    s.app
        .add_channel(
            "hangs",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"priority": 10, "timeout_s": 1, "model_mapping": {"gpt-4o-mini": "slow"}}),
        )
        .await;
    s.app
        .add_channel("fast", &s.mock.base_url, &["gpt-4o-mini"], json!({}))
        .await;
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "upstream_timeout"
    );
    // The first upstream may still be generating (and billing): tried once only.
    assert_eq!(s.mock.received().len(), 1);
    s.app.settled().await;
    assert_eq!(attempts(&s.app.generation(&gen_id).await).len(), 1);
    assert_eq!(s.app.balance(s.customer_id).await, START);
    s.stop().await;
}
