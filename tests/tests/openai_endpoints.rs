//! OpenAI endpoints beyond chat: embeddings, legacy completions, image generations
//! (charged per image that came back with data).

use serde_json::{Value, json};
use tollgate_tests::Scenario;

const START: i64 = 1_000_000;

async fn post(s: &Scenario, path: &str, body: Value) -> reqwest::Response {
    s.app
        .http
        .post(format!("{}{path}", s.app.address))
        .bearer_auth(&s.key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn channel_and_prices(s: &Scenario) {
    let models = [
        "omni-moderation-latest",
        "text-embedding-3-small",
        "gpt-3.5-turbo-instruct",
        "dall-e-3",
        "image-partial",
        "image-empty",
        "image-fail",
    ];
    s.app
        .add_channel("endpoints", &s.mock.base_url, &models, json!({}))
        .await;
    s.app.set_price("text-embedding-3-small", 1.0, 0.0).await;
    s.app.set_price("omni-moderation-latest", 1.0, 0.0).await;
    s.app.set_price("gpt-3.5-turbo-instruct", 1.5, 2.0).await;
    for m in ["dall-e-3", "image-partial", "image-empty", "image-fail"] {
        let (st, v) = s
            .app
            .api(
                "PUT",
                &format!("/api/pricing/models/{m}"),
                &s.app.root_token,
                Some(json!({"input": 0, "output": 0, "per_image": 0.04})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_charged_for_their_prompt_tokens() {
    let s = Scenario::start(1.0).await;
    channel_and_prices(&s).await;
    let r = post(
        &s,
        "/v1/embeddings",
        json!({"model": "text-embedding-3-small", "input": "hello world"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 3);
    s.app.settled().await;
    // 8 tokens × 1.0 credit per 1M = 8 µc.
    assert_eq!(s.app.balance(s.customer_id).await, START - 8);
    assert_eq!(s.app.generation(&gen_id).await.tokens_prompt, 8);
    let r = post(
        &s,
        "/v1/embeddings",
        json!({"model": "text-embedding-3-small"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("'input'"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_completions_are_charged_plain_and_streamed() {
    let s = Scenario::start(1.0).await;
    channel_and_prices(&s).await;
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["choices"][0]["text"],
        "Hello there"
    );
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello", "stream": true}),
    )
    .await;
    let text = r.text().await.unwrap();
    assert!(text.contains("\"Hello\"") && text.ends_with("data: [DONE]\n\n"));
    assert!(
        !text.contains("\"choices\":[]"),
        "usage chunk the client did not ask for leaked"
    );
    s.app.settled().await;
    // 5 × 1.5 + 7 × 2.0 = 21.5 µc → 22, twice.
    assert_eq!(s.app.balance(s.customer_id).await, START - 44);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_charged_per_image_returned_with_data_and_an_empty_answer_costs_nothing() {
    let s = Scenario::start(1.0).await;
    channel_and_prices(&s).await;
    let r = post(
        &s,
        "/v1/images/generations",
        json!({"model": "dall-e-3", "prompt": "a cat", "n": 2, "size": "1024x1024"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let full = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    let r = post(
        &s,
        "/v1/images/generations",
        json!({"model": "image-partial", "prompt": "a cat", "n": 2}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let partial = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    let r = post(
        &s,
        "/v1/images/generations",
        json!({"model": "image-empty", "prompt": "a cat"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let empty = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    let r = post(
        &s,
        "/v1/images/generations",
        json!({"model": "image-fail", "prompt": "a cat"}),
    )
    .await;
    assert_eq!(r.status(), 502);
    s.app.settled().await;
    assert_eq!(s.app.generation(&full).await.cost, 80_000);
    assert_eq!(s.app.generation(&full).await.num_media, 2);
    assert_eq!(s.app.generation(&partial).await.cost, 40_000);
    assert_eq!(s.app.generation(&empty).await.cost, 0);
    assert_eq!(s.app.balance(s.customer_id).await, START - 120_000);
    // The extra fields the seeds' clients send go through untouched.
    let sent = s
        .mock
        .received()
        .into_iter()
        .find(|r| r.path == "/v1/images/generations")
        .unwrap();
    assert_eq!(sent.body["size"], "1024x1024");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderations_without_a_usage_report_are_charged_by_counting_their_input() {
    let s = Scenario::start(1.0).await;
    channel_and_prices(&s).await;
    // No model: OpenAI's default is used (and priced).
    let r = post(
        &s,
        "/v1/moderations",
        json!({"input": "I want to hug everyone"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_owned();
    assert_eq!(
        r.json::<Value>().await.unwrap()["results"][0]["flagged"],
        false
    );
    s.app.settled().await;
    let g = s.app.generation(&gen_id).await;
    assert_eq!(g.model, "omni-moderation-latest");
    assert!(g.tokens_prompt > 3, "input counted: {}", g.tokens_prompt);
    assert_eq!(g.cost, g.tokens_prompt);
    assert_eq!(s.app.balance(s.customer_id).await, START - g.cost);
    s.stop().await;
}
