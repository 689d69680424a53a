//! Veo end to end: Google's own shape (`:predictLongRunning` and the operation) and
//! OpenAI's `/v1/videos`, served by a `gemini` channel (a mock Gemini API), with the
//! money: the seconds asked times the videos asked, released when Google fails or
//! filters every video.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::app::{TestApp, spawn_app};
use tollgate_tests::mock_sora::content_bytes;
use tollgate_tests::mock_veo::{KEY, MockVeo};

const START: i64 = 10_000_000;
const PER_SECOND: i64 = 100_000;

struct Setup {
    app: TestApp,
    veo: MockVeo,
    user: i64,
    key: String,
}

async fn setup() -> Setup {
    let app = spawn_app().await;
    let veo = MockVeo::start().await;
    let (status, v) = app
        .api(
            "POST",
            "/api/channels",
            &app.root_token,
            Some(
                json!({"name": "veo", "type": "gemini", "base_url": veo.base_url, "keys": [KEY],
                "models": ["veo-3.0-generate-001", "veo-filtered", "veo-fail", "veo-partial", "veo-flaky"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    for model in [
        "veo-3.0-generate-001",
        "veo-filtered",
        "veo-fail",
        "veo-partial",
        "veo-flaky",
    ] {
        app.set_price_with(model, json!({"per_second": 0.1})).await;
    }
    let (user, key) = app.customer_with_key("cinematographer", 10.0).await;
    Setup {
        app,
        veo,
        user,
        key,
    }
}

impl Setup {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .app
            .http
            .request(
                method.parse().unwrap(),
                format!("{}{path}", self.app.address),
            )
            .header("x-goog-api-key", &self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn until_done(&self, name: &str) -> Value {
        for _ in 0..100 {
            let (status, v) = self.call("GET", &format!("/v1beta/{name}"), None).await;
            assert_eq!(status, 200, "{v}");
            if v["done"] == true {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{name} was not done within 10 s");
    }
}

#[tokio::test]
async fn a_veo_operation_is_held_for_every_video_asked_and_its_videos_are_signed_tollgate_urls() {
    let s = setup().await;
    let (status, op) = s
        .call(
            "POST",
            "/v1beta/models/veo-3.0-generate-001:predictLongRunning",
            Some(json!({"instances": [{"prompt": "a lighthouse in a storm"}],
                "parameters": {"durationSeconds": 8, "sampleCount": 2, "aspectRatio": "16:9"}})),
        )
        .await;
    assert_eq!(status, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    assert!(
        name.starts_with("models/veo-3.0-generate-001/operations/task_"),
        "{op}"
    );
    assert_eq!(s.app.balance(s.user).await, START - 16 * PER_SECOND);
    let (model, sent) = s.veo.submissions().last().unwrap().clone();
    assert_eq!(model, "veo-3.0-generate-001");
    assert_eq!(sent["parameters"]["aspectRatio"], "16:9");
    let done = s.until_done(&name).await;
    let samples = done["response"]["generateVideoResponse"]["generatedSamples"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(samples.len(), 2, "{done}");
    for sample in &samples {
        let uri = sample["video"]["uri"].as_str().unwrap();
        assert!(uri.starts_with(&s.app.address), "{uri}");
        let got = reqwest::get(uri).await.unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.bytes().await.unwrap().to_vec(), content_bytes());
    }
    // As google-genai downloads it: the file name with the key, no signature.
    let uri = samples[1]["video"]["uri"].as_str().unwrap();
    assert!(uri.contains("/v1beta/files/task_"), "{uri}");
    let plain = uri.split('?').next().unwrap();
    let with_key = s
        .app
        .http
        .get(format!("{plain}?alt=media"))
        .header("x-goog-api-key", &s.key)
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 200);
    assert_eq!(with_key.bytes().await.unwrap().to_vec(), content_bytes());
    assert_eq!(
        reqwest::get(format!("{plain}?alt=media"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(s.app.balance(s.user).await, START - 16 * PER_SECOND);
    // Another tenant gets 404 for the operation and its generation.
    let (_, other) = s.app.customer_with_key("other-cinematographer", 1.0).await;
    let status = s
        .app
        .http
        .get(format!("{}/v1beta/{name}", s.app.address))
        .header("x-goog-api-key", &other)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    let task_id = name.rsplit('/').next().unwrap();
    let status = s
        .app
        .http
        .get(format!("{}/v1/generation?id={task_id}", s.app.address))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    let status = s
        .app
        .http
        .get(format!("{plain}?alt=media"))
        .header("x-goog-api-key", &other)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_veo_operation_google_fails_or_filters_whole_costs_nothing() {
    let s = setup().await;
    for (model, status) in [("veo-filtered", "SAFETY"), ("veo-fail", "INVALID_ARGUMENT")] {
        let (_, op) = s
            .call(
                "POST",
                &format!("/v1beta/models/{model}:predictLongRunning"),
                Some(json!({"instances": [{"prompt": "x"}]})),
            )
            .await;
        let done = s.until_done(op["name"].as_str().unwrap()).await;
        assert_eq!(done["error"]["status"], status, "{done}");
        assert!(done.get("response").is_none(), "{done}");
    }
    assert_eq!(s.app.balance(s.user).await, START);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn openai_videos_are_served_by_a_gemini_channel_as_a_veo_operation() {
    let s = setup().await;
    let resp = s
        .app
        .http
        .post(format!("{}/v1/videos", s.app.address))
        .bearer_auth(&s.key)
        .json(&json!({"model": "veo-3.0-generate-001", "prompt": "tide", "seconds": "8", "size": "720x1280"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    let (_, sent) = s.veo.submissions().last().unwrap().clone();
    assert_eq!(
        sent,
        json!({"instances": [{"prompt": "tide"}], "parameters": {"durationSeconds": 8, "sampleCount": 1, "aspectRatio": "9:16", "resolution": "720p"}})
    );
    let mut done = Value::Null;
    for _ in 0..100 {
        let v: Value = s
            .app
            .http
            .get(format!("{}/v1/videos/{id}", s.app.address))
            .bearer_auth(&s.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] == "completed" || v["status"] == "failed" {
            done = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["status"], "completed", "{done}");
    let bytes = s
        .app
        .http
        .get(format!("{}/v1/videos/{id}/content", s.app.address))
        .bearer_auth(&s.key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.to_vec(), content_bytes());
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_veo_operation_with_some_videos_filtered_is_charged_for_the_videos_delivered() {
    let s = setup().await;
    let (_, op) = s
        .call(
            "POST",
            "/v1beta/models/veo-partial:predictLongRunning",
            Some(json!({"instances": [{"prompt": "x"}], "parameters": {"durationSeconds": 6, "sampleCount": 3}})),
        )
        .await;
    assert_eq!(s.app.balance(s.user).await, START - 18 * PER_SECOND);
    let done = s.until_done(op["name"].as_str().unwrap()).await;
    let samples = done["response"]["generateVideoResponse"]["generatedSamples"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(samples, 2, "{done}");
    assert_eq!(s.app.balance(s.user).await, START - 12 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn operation_polls_that_fail_keep_a_veo_task_open_then_it_is_charged_once_and_served_in_ranges()
 {
    let s = setup().await;
    let (status, op) = s
        .call(
            "POST",
            "/v1beta/models/veo-flaky:predictLongRunning",
            Some(json!({"instances": [{"prompt": "rain"}], "parameters": {"durationSeconds": 8}})),
        )
        .await;
    assert_eq!(status, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    let done = s.until_done(&name).await;
    let uri = done["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
        .as_str()
        .unwrap_or_else(|| panic!("{done}"));
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    tollgate_tests::mock_server::assert_served_in_ranges(uri).await;
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_veo_operation_that_costs_more_than_the_balance_is_refused_with_402_and_never_sent() {
    let s = setup().await;
    let (poor, key) = s.app.customer_with_key("short-of-credits", 0.2).await;
    let resp = s
        .app
        .http
        .post(format!(
            "{}/v1beta/models/veo-3.0-generate-001:predictLongRunning",
            s.app.address
        ))
        .header("x-goog-api-key", &key)
        .json(&json!({"instances": [{"prompt": "too long"}], "parameters": {"durationSeconds": 8}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    assert!(s.veo.submissions().is_empty());
    assert_eq!(s.app.balance(poor).await, 200_000);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_veo_submission_whose_answer_was_lost_is_never_sent_again_and_released_at_the_deadline() {
    let app =
        tollgate_tests::app::spawn_app_with(|c| c.tasks.deadline = Duration::from_secs(5)).await;
    let veo = MockVeo::start().await;
    app.add_channel(
        "veo-slow",
        &veo.base_url,
        &["veo-slow-accept"],
        json!({"type": "gemini", "keys": [KEY], "timeout_s": 1}),
    )
    .await;
    app.set_price_with("veo-slow-accept", json!({"per_second": 0.1}))
        .await;
    let (user, key) = app.customer_with_key("cinematographer", 10.0).await;
    let s = Setup {
        app,
        veo,
        user,
        key,
    };
    let (status, op) = s
        .call(
            "POST",
            "/v1beta/models/veo-slow-accept:predictLongRunning",
            Some(json!({"instances": [{"prompt": "lost"}], "parameters": {"durationSeconds": 8}})),
        )
        .await;
    assert_eq!(status, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    let id = name.rsplit('/').next().unwrap().to_owned();
    let task = s.app.task_when_ended(&id).await;
    assert_eq!(
        (task.state.as_str(), task.upstream_task_id),
        ("expired", None)
    );
    assert_eq!(s.veo.submissions().len(), 1);
    assert_eq!(s.app.balance(s.user).await, START);
    // The operation says so, Google-shaped.
    let (_, done) = s.call("GET", &format!("/v1beta/{name}"), None).await;
    assert_eq!(done["done"], true, "{done}");
    assert!(done["error"].is_object(), "{done}");
    s.app.assert_ledger_consistent().await;
}
