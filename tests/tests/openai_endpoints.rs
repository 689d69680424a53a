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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fim_completions_go_to_beta_completions_with_their_suffix_and_are_charged_by_usage() {
    let s = Scenario::start(1.0).await;
    s.app
        .add_channel("deepseek", &s.mock.base_url, &["deepseek-chat"], json!({}))
        .await;
    s.app.set_price("deepseek-chat", 1.0, 2.0).await;
    let resp = post(
        &s,
        "/beta/completions",
        json!({"model": "deepseek-chat", "prompt": "def fib(a):", "suffix": "    return fib(a-1) + fib(a-2)", "max_tokens": 64}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let gen_id = tollgate_tests::app::generation_id(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["text"], "Hello there");
    let r = s.mock.received().pop().unwrap();
    assert_eq!(r.path, "/beta/completions");
    assert_eq!(r.body["suffix"], "    return fib(a-1) + fib(a-2)");
    // 5 prompt tokens at 1 credit/1M and 7 completion tokens at 2 credits/1M.
    s.app
        .assert_charged_once(s.customer_id, START, &gen_id, 5 + 14)
        .await;
    s.stop().await;
}

/// What each call of `tests/python/openai_media_check.py` costs, in µc, in order.
const MEDIA_COSTS: [(&str, i64); 6] = [
    ("/v1/images/edits", 2 * 40_000),  // two images at 0.04
    ("/v1/images/variations", 20_000), // one image at 0.02
    ("/v1/audio/speech", 11 * 15),     // 11 characters at 15 per 1M
    // Whisper is asked for verbose_json, whose duration (7.2 s) is rounded up.
    ("/v1/audio/transcriptions", 8 * 100),
    ("/v1/audio/transcriptions", 8 * 100),
    ("/v1/audio/translations", 8 * 100),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_uploads_files_and_gets_audio_through_the_gateway_charged_by_natural_unit() {
    let s = Scenario::start(1.0).await;
    let models = ["gpt-image-1", "dall-e-2", "tts-1", "whisper-1"];
    s.app
        .add_channel("media", &s.mock.base_url, &models, json!({}))
        .await;
    for (model, price) in [
        ("gpt-image-1", json!({"per_image": 0.04})),
        ("dall-e-2", json!({"per_image": 0.02})),
        ("tts-1", json!({"input": 15.0, "output": 0.0})),
        ("whisper-1", json!({"per_second": 0.0001})),
    ] {
        s.app.set_price_with(model, price).await;
    }
    let stdout =
        tollgate_tests::python::run_sdk_script("openai_media_check.py", &s.app.address, &s.key)
            .await;
    eprintln!("{stdout}");

    // The upstream saw each upload whole: the edit's two images and its mask.
    let seen = s.mock.received();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    let expected: Vec<&str> = MEDIA_COSTS.iter().map(|(p, _)| *p).collect();
    assert_eq!(paths, expected);
    let files = seen[0].body["files"].as_array().unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(files[2]["field"], "mask");
    assert!(files.iter().all(|f| f["bytes"] == 72));
    assert_eq!(seen[0].body["prompt"], "Add a hat");
    assert_eq!(seen[3].body["files"][0]["bytes"], 20_000);

    s.app.settled().await;
    let ledger = s.app.ledger(s.customer_id).await;
    let charges: Vec<i64> = ledger
        .iter()
        .filter(|t| t.kind == "consume")
        .map(|t| -t.amount)
        .collect();
    let costs: Vec<i64> = MEDIA_COSTS.iter().map(|(_, c)| *c).collect();
    assert_eq!(charges, costs, "{ledger:?}");
    let total: i64 = costs.iter().sum();
    assert_eq!(s.app.balance(s.customer_id).await, START - total);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_image_edit_costs_nothing_and_a_form_without_a_file_is_a_400() {
    let s = Scenario::start(1.0).await;
    s.app
        .add_channel("media", &s.mock.base_url, &["image-empty"], json!({}))
        .await;
    s.app
        .set_price_with("image-empty", json!({"per_image": 0.04}))
        .await;
    let form = |with_file: bool| {
        let mut f = reqwest::multipart::Form::new()
            .text("model", "image-empty")
            .text("prompt", "a hat");
        if with_file {
            f = f.part(
                "image",
                reqwest::multipart::Part::bytes(vec![0u8; 32]).file_name("a.png"),
            );
        }
        f
    };
    let send = |f: reqwest::multipart::Form| {
        s.app
            .http
            .post(format!("{}/v1/images/edits", s.app.address))
            .bearer_auth(&s.key)
            .multipart(f)
            .send()
    };
    let resp = send(form(true)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = send(form(false)).await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("file"),
        "{v}"
    );
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, START);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_calls_completions_embeddings_moderations_and_images_charged_exactly() {
    let s = Scenario::start(1.0).await;
    channel_and_prices(&s).await;
    s.app
        .add_channel("deepseek", &s.mock.base_url, &["deepseek-chat"], json!({}))
        .await;
    s.app.set_price("deepseek-chat", 1.0, 2.0).await;
    let stdout =
        tollgate_tests::python::run_sdk_script("openai_endpoints_check.py", &s.app.address, &s.key)
            .await;
    eprintln!("{stdout}");
    s.app.settled().await;
    let ledger = s.app.ledger(s.customer_id).await;
    let charges: Vec<&store::entities::transaction::Model> =
        ledger.iter().filter(|t| t.kind == "consume").collect();
    assert_eq!(charges.len(), 5, "{ledger:?}");
    let mut costs = Vec::new();
    for t in &charges {
        let g = s.app.generation(t.reference.as_deref().unwrap()).await;
        assert_eq!(-t.amount, g.cost);
        costs.push((g.endpoint.clone(), g.cost, g.tokens_prompt));
    }
    // 5 × 1.5 + 7 × 2 = 21.5 µc, rounded up once.
    assert_eq!((costs[0].0.as_str(), costs[0].1), ("/v1/completions", 22));
    assert_eq!((costs[1].0.as_str(), costs[1].1), ("/v1/embeddings", 8));
    // No usage report: the input is counted locally, 1 credit per 1M tokens.
    assert_eq!(costs[2].0, "/v1/moderations");
    assert!(costs[2].2 > 3 && costs[2].1 == costs[2].2, "{costs:?}");
    assert_eq!(
        (costs[3].0.as_str(), costs[3].1),
        ("/v1/images/generations", 80_000)
    );
    // 5 prompt tokens at 1 and 7 completion tokens at 2 credits per 1M.
    assert_eq!((costs[4].0.as_str(), costs[4].1), ("/beta/completions", 19));
    s.stop().await;
}
