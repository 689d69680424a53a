//! The OpenAI chat relay end to end: forwarding, streaming, metering, and the money
//! after every call.

use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_tests::{NORMAL_COST, Scenario};

const START: i64 = 1_000_000; // 1 credit in µc

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streaming_chat_is_forwarded_and_charged_exactly() {
    let s = Scenario::start(1.0).await;
    let resp = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 200);
    let gen_id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(gen_id.starts_with("gen-"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello! How can I help?"
    );
    assert_eq!(body["usage"]["completion_tokens"], 30);

    // The upstream got the client's body with the channel's key, and (as the client
    // named no output limit) the limit the hold covers.
    let got = s.mock.received();
    assert_eq!(got.len(), 1);
    let mut sent = Scenario::body("gpt-4o-mini");
    sent["max_tokens"] = json!(relay_core::hold::DEFAULT_MAX_OUTPUT);
    assert_eq!(got[0].body, sent);
    assert_eq!(
        got[0].authorization.as_deref(),
        Some("Bearer sk-upstream-secret-1234")
    );

    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - NORMAL_COST);
    let ledger = s.app.ledger(s.customer_id).await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger[1].kind, "consume");
    assert_eq!(ledger[1].amount, -NORMAL_COST);
    assert_eq!(ledger[1].balance_after, START - NORMAL_COST);
    assert_eq!(ledger[1].reference.as_deref(), Some(gen_id.as_str()));
    let g = s.app.generation(&gen_id).await;
    assert_eq!(
        (g.tokens_prompt, g.tokens_completion, g.cost),
        (12, 30, NORMAL_COST)
    );
    assert_eq!(g.status, "success");
    assert_eq!(g.upstream_id.as_deref(), Some("chatcmpl-mock123"));
    assert_eq!(g.finish_reason.as_deref(), Some("stop"));
    assert!(!g.streamed);
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_chat_is_forwarded_event_by_event_and_charged_from_the_usage_report() {
    let s = Scenario::start(1.0).await;
    let mut body = Scenario::body("gpt-4o-mini");
    body["stream"] = json!(true);
    let resp = s.app.chat(&s.key, body).await;
    assert_eq!(resp.status(), 200);
    // With its charset, like the providers: a plain HTTP client decodes non-ASCII
    // text right.
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let gen_id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let content: String = events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "Hello! How can I help?");
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    // The client did not ask for usage: the chunk the gateway asked for is not shown.
    assert!(
        !text.contains("\"choices\":[]"),
        "usage-only chunk leaked: {text}"
    );
    assert_eq!(
        s.mock.received()[0].body["stream_options"]["include_usage"],
        true
    );

    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - NORMAL_COST);
    let g = s.app.generation(&gen_id).await;
    assert!(g.streamed);
    assert_eq!(
        (g.tokens_prompt, g.tokens_completion, g.cost),
        (12, 30, NORMAL_COST)
    );
    assert_eq!(g.upstream_id.as_deref(), Some("chatcmpl-mockstream"));
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_for_stream_usage_gets_the_usage_chunk() {
    let s = Scenario::start(1.0).await;
    let mut body = Scenario::body("gpt-4o-mini");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = s.app.chat(&s.key, body).await.text().await.unwrap();
    assert!(text.contains("\"choices\":[]"));
    assert!(text.contains("\"completion_tokens\":30"));
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - NORMAL_COST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_and_reasoning_tokens_are_billed_at_their_prices() {
    let s = Scenario::start(1.0).await;
    let (st, v) = s
        .app
        .api(
            "PUT",
            "/api/pricing/models/reasoner",
            &s.app.root_token,
            Some(json!({"input": 1.0, "output": 2.0, "cached_input": 0.5})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let resp = s.app.chat(&s.key, Scenario::body("reasoner")).await;
    assert_eq!(resp.status(), 200);
    let gen_id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    s.app.settled().await;
    // 96 × 1.0 + 4 × 0.5 + 40 × 2.0 (reasoning included in completion) = 178 µc.
    assert_eq!(s.app.balance(s.customer_id).await, START - 178);
    let g = s.app.generation(&gen_id).await;
    assert_eq!((g.tokens_cached, g.tokens_reasoning, g.cost), (4, 10, 178));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_mapping_sends_the_upstream_name_and_prices_the_name_the_client_asked_for() {
    let s = Scenario::start(1.0).await;
    s.app
        .add_channel(
            "mapped",
            &s.mock.base_url,
            &["house-model"],
            json!({"model_mapping": {"house-model": "reasoner"}}),
        )
        .await;
    s.app.set_price("house-model", 1.0, 1.0).await;
    let resp = s.app.chat(&s.key, Scenario::body("house-model")).await;
    assert_eq!(resp.status(), 200);
    let gen_id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.mock.received()[0].body["model"], "reasoner");
    s.app.settled().await;
    // 100 prompt × 1.0 + 40 completion × 1.0 at house-model's price, not reasoner's.
    assert_eq!(s.app.balance(s.customer_id).await, START - 140);
    let g = s.app.generation(&gen_id).await;
    assert_eq!(g.model, "house-model");
    assert_eq!(g.upstream_model.as_deref(), Some("reasoner-2024-07-18"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_costs_nothing_and_is_recorded() {
    let s = Scenario::start(1.0).await;
    for (model, status, code) in [
        ("fail-500", 502, "upstream_error"),
        ("fail-429", 502, "upstream_error"),
    ] {
        let resp = s.app.chat(&s.key, Scenario::body(model)).await;
        assert_eq!(resp.status(), status, "{model}");
        let gen_id = resp.headers()["x-generation-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            !msg.contains("127.0.0.1") && !msg.contains("sk-upstream"),
            "{msg}"
        );
        s.app.settled().await;
        let g = s.app.generation(&gen_id).await;
        assert_eq!((g.status.as_str(), g.cost), ("error", 0));
        assert!(
            g.attempts
                .unwrap()
                .contains(&format!("status_{}", &model[5..]))
        );
    }
    assert_eq!(s.app.balance(s.customer_id).await, START);
    assert_eq!(s.app.ledger(s.customer_id).await.len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_rejection_of_the_request_goes_back_with_its_status_and_costs_nothing() {
    let s = Scenario::start(1.0).await;
    let resp = s.app.chat(&s.key, Scenario::body("bad-request")).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("temperature")
    );
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_channel_is_skipped_for_the_next_one_and_the_request_is_charged_once() {
    let s = Scenario::start(1.0).await;
    // A higher-priority channel that maps the model to a failing one.
    s.app
        .add_channel(
            "broken",
            &s.mock.base_url,
            &["gpt-4o-mini"],
            json!({"priority": 10, "model_mapping": {"gpt-4o-mini": "fail-500"}}),
        )
        .await;
    let resp = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 200);
    let gen_id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let models: Vec<Value> = s
        .mock
        .received()
        .iter()
        .map(|r| r.body["model"].clone())
        .collect();
    assert_eq!(models, vec![json!("fail-500"), json!("gpt-4o-mini")]);
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START - NORMAL_COST);
    let attempts: Value =
        serde_json::from_str(&s.app.generation(&gen_id).await.attempts.unwrap()).unwrap();
    assert_eq!(attempts.as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_midway_is_ended_cleanly_and_billed_for_what_was_delivered() {
    let s = Scenario::start(1.0).await;
    let mut body = Scenario::body("cut-stream");
    body["stream"] = json!(true);
    let resp = s.app.chat(&s.key, body).await;
    assert_eq!(resp.status(), 200);
    let gen_id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"Hello\""));
    assert!(text.contains("stream_incomplete"), "{text}");
    s.app.settled().await;
    let g = s.app.generation(&gen_id).await;
    // "Hello" + "!" delivered: 6 bytes ≈ 2 tokens, priced; prompt estimated from the body.
    assert_eq!(g.tokens_completion, 2);
    assert!(g.cost > 0 && g.cost < NORMAL_COST, "cost {}", g.cost);
    assert_eq!(s.app.balance(s.customer_id).await, START - g.cost);
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_overdraw_the_balance() {
    // Each request reserves at most 12 prompt-estimate tokens × 0.15 + 30 × 0.6 → and
    // costs exactly 20 µc. Fund exactly enough reservation room for some, not all.
    let s = Scenario::start(0.0).await;
    s.app.mint(s.customer_id, 0.0002).await; // 200 µc
    let mut body = Scenario::body("gpt-4o-mini");
    body["max_tokens"] = json!(30);
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let http = s.app.http.clone();
            let url = format!("{}/v1/chat/completions", s.app.address);
            let key = s.key.clone();
            let body = body.clone();
            tokio::spawn(async move {
                http.post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            402 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    s.app.settled().await;
    let balance = s.app.balance(s.customer_id).await;
    assert!(balance >= 0);
    assert_eq!(balance, 200 - ok * NORMAL_COST);
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    s.app.assert_ledger_consistent().await;
    // Whatever is left cannot pay for another reservation.
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_models_lists_exactly_what_the_key_may_call() {
    let s = Scenario::start(1.0).await;
    s.app
        .add_channel("unpriced", &s.mock.base_url, &["no-price-model"], json!({}))
        .await;
    let (_, limited) = s
        .app
        .create_key(
            &s.customer_token,
            json!({"name": "only-mini", "models": ["gpt-4o-mini"]}),
        )
        .await;
    let list = |key: String| {
        let app = &s.app;
        async move {
            let v: Value = app
                .http
                .get(format!("{}/v1/models", app.address))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let all = list(s.key.clone()).await;
    assert!(all.contains(&"gpt-4o-mini".to_owned()));
    assert!(!all.contains(&"no-price-model".to_owned()));
    assert_eq!(list(limited).await, vec!["gpt-4o-mini".to_owned()]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_finds_its_generation_by_either_id_and_nobody_else_does() {
    let s = Scenario::start(1.0).await;
    let resp = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    s.app.settled().await;
    for id in [gen_id.as_str(), "chatcmpl-mock123"] {
        let v: Value = s
            .app
            .http
            .get(format!("{}/v1/generation?id={id}", s.app.address))
            .bearer_auth(&s.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"]["id"], gen_id.as_str());
        assert_eq!(v["data"]["total_cost"], 0.00002);
        assert_eq!(v["data"]["tokens_completion"], 30);
    }
    let bob = s.app.create_user("bob", "customer").await;
    let bob_token = s.app.login("bob", "password-123").await;
    let (_, bob_key) = s
        .app
        .create_key(&bob_token, json!({"name": "b", "user_id": bob}))
        .await;
    let resp = s
        .app
        .http
        .get(format!("{}/api/v1/generation?id={gen_id}", s.app.address))
        .bearer_auth(&bob_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_usage_report_is_charged_by_counting_its_tokens() {
    let s = Scenario::start(1.0).await;
    let mut body = Scenario::body("no-usage");
    body["stream"] = json!(true);
    let resp = s.app.chat(&s.key, body).await;
    let gen_id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    s.app.settled().await;
    let g = s.app.generation(&gen_id).await;
    // Prompt: 3 priming + 3 per message + "user" (1) + "Say hello" (2) = 9 tokens.
    // Completion: "Hello! How can I help?" = 7 tokens (cl100k).
    assert_eq!((g.tokens_prompt, g.tokens_completion), (9, 7));
    // 9 × 0.15 + 7 × 0.6 = 5.55 µc → 6.
    assert_eq!(g.cost, 6);
    assert_eq!(s.app.balance(s.customer_id).await, START - 6);
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_pays_only_for_what_was_delivered() {
    let s = Scenario::start(1.0).await;
    let mut body = Scenario::body("slow-stream");
    body["stream"] = json!(true);
    let resp = s.app.chat(&s.key, body).await;
    let gen_id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    while seen.matches("tick").count() < 3 {
        seen.push_str(&String::from_utf8_lossy(
            &stream.next().await.unwrap().unwrap(),
        ));
    }
    drop(stream);
    // The gateway notices at its next write to the closed connection, then settles.
    let g = s.app.wait_generation(&gen_id).await;
    assert!(g.cancelled, "{g:?}");
    assert!(g.streamed);
    assert!(
        (3..20).contains(&g.tokens_completion),
        "completion {} (20 would be the whole stream)",
        g.tokens_completion
    );
    assert!(g.cost > 0);
    assert_eq!(s.app.balance(s.customer_id).await, START - g.cost);
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}
