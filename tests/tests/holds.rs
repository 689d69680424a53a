//! The hold is an upper bound, and what is charged is what was used: requests without
//! an output limit get the limit their hold covers, a stream that produced nothing is
//! not charged, a cut stream pays for its whole prompt whatever its shape, and a
//! transcription pays for the audio's real length (issue 10, points 2 to 5).

use serde_json::{Value, json};
use tollgate_tests::app::generation_id;
use tollgate_tests::{Scenario, TestApp};

/// Adds a channel on the scenario's mock serving `models`, each priced with `price`.
async fn serve(s: &Scenario, models: &[&str], price: Value) {
    s.app
        .add_channel("extra", &s.mock.base_url, models, json!({}))
        .await;
    for m in models {
        s.app.set_price_with(m, price.clone()).await;
    }
}

async fn set_balance(app: &TestApp, user: i64, micros: i64) {
    let now = app.balance(user).await;
    if now != micros {
        let (st, v) = app
            .api(
                "POST",
                &format!("/api/users/{user}/credits"),
                &app.root_token,
                Some(json!({"amount": (micros - now) as f64 / 1e6})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    assert_eq!(app.balance(user).await, micros);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_calls_without_an_output_limit_never_use_more_than_the_balance_pays_for() {
    // A model that writes until stopped: 10,000 tokens (6,000 µc at 0.6) unless told
    // a limit. The balance covers about eight holds of 4,096 output tokens.
    let s = Scenario::start(0.0).await;
    serve(&s, &["long-answer"], json!({"input": 0.15, "output": 0.6})).await;
    set_balance(&s.app, s.customer_id, 20_000).await;
    let body =
        json!({"model": "long-answer", "messages": [{"role": "user", "content": "Write on"}]});
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, key, body) = (
                s.app.http.clone(),
                format!("{}/v1/chat/completions", s.app.address),
                s.key.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                let resp = http
                    .post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), generation_id(&resp))
            })
        })
        .collect();
    let mut served = Vec::new();
    for c in calls {
        let (status, id) = c.await.unwrap();
        assert!(status == 200 || status == 402, "{status}");
        if status == 200 {
            served.push(id);
        }
    }
    assert!(!served.is_empty());
    s.app.settled().await;
    // Every request reached the upstream with an output limit, and every one served
    // was charged its whole cost: nothing was capped, nothing served for free.
    let limits: Vec<i64> = s
        .mock
        .received()
        .iter()
        .map(|r| {
            r.body["max_tokens"]
                .as_i64()
                .expect("an output limit was set")
        })
        .collect();
    assert_eq!(limits.len(), served.len());
    assert!(limits.iter().all(|n| *n <= 4096), "{limits:?}");
    let mut charged = 0;
    for id in &served {
        let g = s.app.generation(id).await;
        let expected = (12 * 150_000 + g.tokens_completion * 600_000 + 999_999) / 1_000_000;
        assert_eq!(g.cost, expected, "{g:?}");
        assert!(g.tokens_completion <= 4096);
        charged += g.cost;
    }
    assert_eq!(s.app.balance(s.customer_id).await, 20_000 - charged);
    assert!(s.app.balance(s.customer_id).await >= 0);

    // A balance too small for the model's ceiling still gets an answer, limited to
    // what it can pay for.
    set_balance(&s.app, s.customer_id, 1_000).await;
    let resp = s.app.chat(&s.key, body.clone()).await;
    assert_eq!(resp.status(), 200);
    let id = generation_id(&resp);
    s.app.settled().await;
    let g = s.app.generation(&id).await;
    let limit = s.mock.received().last().unwrap().body["max_tokens"]
        .as_i64()
        .unwrap();
    assert!((1..1_700).contains(&limit), "{limit}");
    assert_eq!(g.tokens_completion, limit);
    assert!(g.cost <= 1_000);
    assert_eq!(s.app.balance(s.customer_id).await, 1_000 - g.cost);

    // The model's own ceiling, when priced, bounds the hold and the limit sent.
    s.app
        .set_price_with("long-answer", json!({"max_output_tokens": 100}))
        .await;
    set_balance(&s.app, s.customer_id, 1_000_000).await;
    let resp = s.app.chat(&s.key, body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(s.mock.received().last().unwrap().body["max_tokens"], 100);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_sent_only_its_role_and_stalled_is_a_failed_request_charged_nothing() {
    let s = Scenario::start(1.0).await;
    serve(
        &s,
        &["stall-after-role"],
        json!({"input": 0.15, "output": 0.6}),
    )
    .await;
    let (st, v) = s
        .app
        .api(
            "PATCH",
            &format!("/api/channels/{}", s.channel_id),
            &s.app.root_token,
            Some(json!({"timeout_s": 1})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // The extra channel serves the stalling model; give it the short timeout too.
    let (_, channels) = s
        .app
        .api("GET", "/api/channels", &s.app.root_token, None)
        .await;
    for c in channels["items"].as_array().unwrap() {
        let id = c["id"].as_i64().unwrap();
        s.app
            .api(
                "PATCH",
                &format!("/api/channels/{id}"),
                &s.app.root_token,
                Some(json!({"timeout_s": 1})),
            )
            .await;
    }
    let start = s.app.balance(s.customer_id).await;
    let mut body = Scenario::body("stall-after-role");
    body["stream"] = json!(true);
    let resp = s.app.chat(&s.key, body).await;
    assert_eq!(resp.status(), 200);
    let id = generation_id(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.contains("stream_timeout"), "{text}");
    let g = s.app.wait_generation(&id).await;
    assert_eq!(g.status, "error", "{g:?}");
    assert_eq!(g.cost, 0);
    assert_eq!(g.status_code, 504);
    assert_eq!(s.app.balance(s.customer_id).await, start);
    assert_eq!(s.app.ledger(s.customer_id).await.len(), 1, "only the mint");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_responses_stream_pays_for_its_whole_prompt_however_it_is_shaped() {
    let s = Scenario::start(1.0).await;
    let words = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(250);
    let start = s.app.balance(s.customer_id).await;
    let resp = s
        .app
        .http
        .post(format!("{}/v1/responses", s.app.address))
        .bearer_auth(&s.key)
        .json(&json!({
            "model": "cut-stream",
            "stream": true,
            "instructions": words,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": words}]},
                {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"q\":\"fox\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": words},
            ],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = generation_id(&resp);
    let _ = resp.text().await;
    let g = s.app.wait_generation(&id).await;
    let one = relay_core::tokens::count_text("cut-stream", &words);
    assert!(one > 2_500, "{one}");
    // Instructions, the message and the tool output: three times the text at least
    // (the old count saw three tokens).
    assert!(g.tokens_prompt >= 3 * one, "{g:?}");
    assert!(g.tokens_completion > 0, "{g:?}");
    let expected =
        (g.tokens_prompt * 150_000 + g.tokens_completion * 600_000 + 999_999) / 1_000_000;
    assert_eq!(g.cost, expected);
    assert_eq!(s.app.balance(s.customer_id).await, start - expected);
    s.stop().await;
}

/// A transcription form: `model`, an optional `response_format`, and `file`.
fn transcription_form(
    model: &str,
    format: Option<&str>,
    file: Vec<u8>,
) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().text("model", model.to_owned());
    if let Some(f) = format {
        form = form.text("response_format", f.to_owned());
    }
    form.part(
        "file",
        reqwest::multipart::Part::bytes(file).file_name("voice.mp3"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_bitrate_transcription_pays_for_its_real_length_in_any_format() {
    let s = Scenario::start(1.0).await;
    // 0.0001 credits (100 µc) a second.
    serve(&s, &["whisper-lowrate"], json!({"per_second": 0.0001})).await;
    // 30 kB of audio: 2 s at 128 kbit/s, but this recording plays for a minute.
    let audio = vec![0xFF_u8; 30_000];
    let mut total = 0;
    for (format, check) in [
        ("text", "Hello from the recording.\n"),
        (
            "srt",
            "1\n00:00:00,000 --> 00:01:00,000\nHello from the recording.\n",
        ),
        (
            "vtt",
            "WEBVTT\n\n00:00:00.000 --> 00:01:00.000\nHello from the recording.",
        ),
    ] {
        let resp = s
            .app
            .http
            .post(format!("{}/v1/audio/transcriptions", s.app.address))
            .bearer_auth(&s.key)
            .multipart(transcription_form(
                "whisper-lowrate",
                Some(format),
                audio.clone(),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let id = generation_id(&resp);
        let text = resp.text().await.unwrap();
        assert!(text.starts_with(check), "{format}: {text:?}");
        let g = s.app.wait_generation(&id).await;
        assert_eq!(g.cost, 60 * 100, "{format}: {g:?}");
        total += g.cost;
    }
    // The upstream was asked for the format that states the duration.
    for r in s.mock.received() {
        assert_eq!(r.body["response_format"], "verbose_json", "{:?}", r.body);
    }
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000 - total);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_priced_only_per_image_is_not_served_free_on_chat() {
    let s = Scenario::start(1.0).await;
    serve(&s, &["image-only"], json!({"per_image": 0.04})).await;
    let resp = s.app.chat(&s.key, Scenario::body("image-only")).await;
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_priced", "{v}");
    assert!(s.mock.received().is_empty());
    // Free on purpose is said with per_request: 0.
    s.app
        .set_price_with("image-only", json!({"per_request": 0}))
        .await;
    let resp = s.app.chat(&s.key, Scenario::body("image-only")).await;
    assert_eq!(resp.status(), 200);
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000);
    s.stop().await;
}
