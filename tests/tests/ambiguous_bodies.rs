//! Bodies that an upstream could read otherwise than the relay priced them (API.md §3):
//! multipart forms whose part names or boundary parse differently elsewhere, JSON
//! fields under another case, OpenRouter's model fallbacks, and Responses run in the
//! background. Each is refused with 400, reaches no upstream and costs nothing.

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use tollgate_tests::Scenario;

/// The status and body of a relay answer.
async fn status_and_body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v)
}

/// Asserts a 400 `invalid_request` in OpenAI's shape and returns its message.
fn assert_invalid_request(what: &str, status: u16, v: &Value) -> String {
    assert_eq!(status, 400, "{what}: {v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{what}: {v}");
    v["error"]["message"].as_str().unwrap().to_owned()
}

/// Asserts nothing went upstream and the customer paid nothing (the mint alone).
async fn assert_nothing_forwarded_or_charged(s: &Scenario) {
    assert!(s.mock.received().is_empty(), "{:?}", s.mock.received());
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000);
    assert_eq!(s.app.ledger(s.customer_id).await.len(), 1);
}

/// A scenario whose channel also serves the media models, each priced.
async fn media_scenario() -> Scenario {
    let s = Scenario::start(1.0).await;
    let models = ["dall-e-2", "gpt-image-1", "whisper-1", "gpt-4o-transcribe"];
    s.app
        .add_channel("media", &s.mock.base_url, &models, json!({}))
        .await;
    for (model, price) in [
        ("dall-e-2", json!({"per_image": 0.02})),
        ("gpt-image-1", json!({"per_image": 0.04})),
        ("whisper-1", json!({"per_second": 0.0001})),
        ("gpt-4o-transcribe", json!({"per_second": 0.001})),
    ] {
        s.app.set_price_with(model, price).await;
    }
    s
}

/// A raw multipart body with boundary `XyZ`: each part is its `Content-Disposition`
/// value and its content.
fn raw_form(parts: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (disposition, content) in parts {
        out.extend_from_slice(
            format!("--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n{content}\r\n").as_bytes(),
        );
    }
    out.extend_from_slice(b"--XyZ--\r\n");
    out
}

const IMAGE: (&str, &str) = (r#"form-data; name="image"; filename="a.png""#, "PNGDATA");
const AUDIO: (&str, &str) = (r#"form-data; name="file"; filename="a.mp3""#, "ID3DATA");
const FORM: &str = "multipart/form-data; boundary=XyZ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_tricks_that_upstreams_parse_otherwise_are_refused_and_cost_nothing() {
    let s = media_scenario().await;
    let edits = "/v1/images/edits";
    let cases: [(&str, &str, &str, Vec<u8>); 6] = [
        (
            // Go and Python read this part's name as `q;name=model`.
            "a semicolon inside a quoted name",
            edits,
            FORM,
            raw_form(&[(r#"form-data; name="q;name=model""#, "dall-e-2"), IMAGE]),
        ),
        (
            // RFC 2231: Go and Python decode `name*` as `model`.
            "an RFC 2231 name",
            edits,
            FORM,
            raw_form(&[
                (r#"form-data; name="model""#, "dall-e-2"),
                (
                    "form-data; name=\"note\"; name*=UTF-8''model",
                    "gpt-image-1",
                ),
                IMAGE,
            ]),
        ),
        (
            "an RFC 2231 name on a transcription",
            "/v1/audio/transcriptions",
            FORM,
            raw_form(&[
                ("form-data; name*=UTF-8''model", "gpt-4o-transcribe"),
                (r#"form-data; name="model""#, "whisper-1"),
                AUDIO,
            ]),
        ),
        (
            "a name given twice in one part",
            edits,
            FORM,
            raw_form(&[
                (r#"form-data; name="prompt"; name="model""#, "dall-e-2"),
                IMAGE,
            ]),
        ),
        (
            // Go's multipart reader skips parts that are not form-data.
            "a part that is not form-data",
            edits,
            FORM,
            raw_form(&[(r#"attachment; name="model""#, "dall-e-2"), IMAGE]),
        ),
        (
            // Python takes the last boundary, we took the first.
            "a content type with two boundaries",
            "/v1/audio/transcriptions",
            "multipart/form-data; boundary=XyZ; boundary=AbC",
            raw_form(&[(r#"form-data; name="model""#, "whisper-1"), AUDIO]),
        ),
    ];
    for (what, path, content_type, body) in cases {
        let resp = s
            .app
            .http
            .post(format!("{}{path}", s.app.address))
            .bearer_auth(&s.key)
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, v) = status_and_body(resp).await;
        assert_invalid_request(what, status, &v);
    }
    assert_nothing_forwarded_or_charged(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_form_with_quoted_and_escaped_names_is_still_served() {
    let s = media_scenario().await;
    let body = raw_form(&[
        ("form-data; name=model", "dall-e-2"),
        (r#"form-data; name="a\"b""#, "x"),
        IMAGE,
    ]);
    let resp = s
        .app
        .http
        .post(format!("{}/v1/images/edits", s.app.address))
        .bearer_auth(&s.key)
        .header(CONTENT_TYPE, r#"multipart/form-data; boundary="XyZ""#)
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, v) = status_and_body(resp).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.mock.received().len(), 1);
    s.app.settled().await;
    // One image of dall-e-2 at 0.02 credits.
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000 - 20_000);
    s.stop().await;
}

/// `POST {path}` with a JSON body and the scenario's key.
async fn post_json(s: &Scenario, path: &str, body: &Value) -> (u16, Value) {
    let resp = s
        .app
        .http
        .post(format!("{}{path}", s.app.address))
        .bearer_auth(&s.key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap();
    status_and_body(resp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responses_request_run_in_the_background_is_refused_and_costs_nothing() {
    let s = Scenario::start(1.0).await;
    for body in [
        json!({"model": "gpt-4o-mini", "input": "Say hello", "background": true}),
        json!({"model": "gpt-4o-mini", "input": "Say hello", "Background": true}),
    ] {
        let (status, v) = post_json(&s, "/v1/responses", &body).await;
        let message = assert_invalid_request(&body.to_string(), status, &v);
        assert!(message.contains("background"), "{message}");
    }
    assert_nothing_forwarded_or_charged(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_fallbacks_routes_and_a_shadowed_best_of_are_refused_on_every_endpoint() {
    let s = Scenario::start(1.0).await;
    let messages = json!([{"role": "user", "content": "Say hello"}]);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "models": ["gpt-4o"], "messages": messages}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "route": "fallback", "messages": messages}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "models": ["gpt-4o"], "input": "hi"}),
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-4o-mini", "prompt": "hi", "best_of": 1, "Best_of": 20}),
        ),
    ];
    for (path, body) in &cases {
        let (status, v) = post_json(&s, path, body).await;
        assert_invalid_request(&format!("{path} {body}"), status, &v);
    }
    let anthropic = json!({"model": "gpt-4o-mini", "max_tokens": 16, "models": ["gpt-4o"],
                           "messages": messages});
    let (status, v) = post_json(&s, "/v1/messages", &anthropic).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_nothing_forwarded_or_charged(&s).await;
    s.stop().await;
}
