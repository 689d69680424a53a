//! Wan end to end: DashScope's own shape and OpenAI's `/v1/videos`, served by a
//! `dashscope` channel (a mock DashScope that insists on `X-DashScope-Async`), with the
//! money: per second of the asked duration, per image made, released on failure or
//! cancellation.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::app::{TestApp, spawn_app_with};
use tollgate_tests::mock_dashscope::{KEY, MockDashscope};
use tollgate_tests::mock_sora::content_bytes;

const START: i64 = 10_000_000;
const PER_SECOND: i64 = 100_000;
const PER_IMAGE: i64 = 50_000;
const VIDEO: &str = "/api/v1/services/aigc/video-generation/video-synthesis";
const IMAGE: &str = "/api/v1/services/aigc/text2image/image-synthesis";

struct Setup {
    app: TestApp,
    ds: MockDashscope,
    user: i64,
    key: String,
}

async fn setup() -> Setup {
    let app = spawn_app_with(|c| c.tasks.allow_private_addresses = true).await;
    let ds = MockDashscope::start().await;
    let (status, v) = app
        .api(
            "POST",
            "/api/channels",
            &app.root_token,
            Some(
                json!({"name": "wan", "type": "dashscope", "base_url": ds.base_url, "keys": [KEY],
                "models": ["wan2.2-t2v-plus", "wan-fail", "wan-refuse", "wanx2.1-t2i-turbo", "wan-flaky"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    for model in ["wan2.2-t2v-plus", "wan-fail", "wan-refuse", "wan-flaky"] {
        app.set_price_with(model, json!({"per_second": 0.1})).await;
    }
    app.set_price_with("wanx2.1-t2i-turbo", json!({"per_image": 0.05}))
        .await;
    let (user, key) = app.customer_with_key("painter", 10.0).await;
    Setup { app, ds, user, key }
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
            .bearer_auth(&self.key)
            .header("x-dashscope-async", "enable");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn until_done(&self, id: &str) -> Value {
        for _ in 0..100 {
            let (status, v) = self.call("GET", &format!("/api/v1/tasks/{id}"), None).await;
            assert_eq!(status, 200, "{v}");
            let word = v["output"]["task_status"].as_str().unwrap_or_default();
            if word != "PENDING" && word != "RUNNING" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("task {id} did not finish within 10 s");
    }
}

#[tokio::test]
async fn a_wan_video_is_held_for_its_duration_charged_what_dashscope_reports_and_served_signed() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            VIDEO,
            Some(json!({"model": "wan2.2-t2v-plus", "input": {"prompt": "a kite"}, "parameters": {"size": "1280*720", "duration": 8}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["task_status"], "PENDING");
    let id = v["output"]["task_id"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    let done = s.until_done(&id).await;
    assert_eq!(done["output"]["task_status"], "SUCCEEDED", "{done}");
    assert_eq!(done["usage"]["video_duration"], 8);
    let url = done["output"]["video_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/v1/tasks/{id}/content?", s.app.address)),
        "{url}"
    );
    assert_eq!(
        reqwest::get(url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        content_bytes()
    );
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    // A day later DashScope's OSS URL has expired: Tollgate asks for a fresh one.
    s.ds.expire_urls();
    let again = reqwest::get(url).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.bytes().await.unwrap().to_vec(), content_bytes());
    // Another tenant gets 404 for it, for its cancellation and for its generation.
    let (_, other) = s.app.customer_with_key("other-painter", 1.0).await;
    for (method, path) in [
        ("GET", format!("/api/v1/tasks/{id}")),
        ("POST", format!("/api/v1/tasks/{id}/cancel")),
        ("GET", format!("/v1/generation?id={id}")),
    ] {
        let status = s
            .app
            .http
            .request(method.parse().unwrap(), format!("{}{path}", s.app.address))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{method} {path}");
    }
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn wan_images_are_held_for_what_was_asked_and_charged_for_what_was_made() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            IMAGE,
            Some(json!({"model": "wanx2.1-t2i-turbo", "input": {"prompt": "four dogs"}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["output"]["task_id"].as_str().unwrap().to_owned();
    // No `n`: held for DashScope's default of four.
    assert_eq!(s.app.balance(s.user).await, START - 4 * PER_IMAGE);
    let done = s.until_done(&id).await;
    let results = done["output"]["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3, "{done}");
    for r in &results {
        assert_eq!(
            reqwest::get(r["url"].as_str().unwrap())
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // One image failed its check upstream: three are charged.
    assert_eq!(s.app.balance(s.user).await, START - 3 * PER_IMAGE);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_failed_refused_or_cancelled_wan_task_costs_nothing() {
    let s = setup().await;
    let (_, v) = s
        .call(
            "POST",
            VIDEO,
            Some(json!({"model": "wan-fail", "input": {"prompt": "x"}})),
        )
        .await;
    let id = v["output"]["task_id"].as_str().unwrap().to_owned();
    let done = s.until_done(&id).await;
    assert_eq!(done["output"]["task_status"], "FAILED", "{done}");
    assert_eq!(done["output"]["code"], "DataInspectionFailed");
    let (status, body) = s
        .call(
            "POST",
            VIDEO,
            Some(json!({"model": "wan-refuse", "input": {"prompt": "x"}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["code"].is_string(), "{body}");
    let (_, v) = s
        .call(
            "POST",
            VIDEO,
            Some(json!({"model": "wan2.2-t2v-plus", "input": {"prompt": "never mind"}})),
        )
        .await;
    let id = v["output"]["task_id"].as_str().unwrap().to_owned();
    let (status, body) = s
        .call("POST", &format!("/api/v1/tasks/{id}/cancel"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, v) = s.call("GET", &format!("/api/v1/tasks/{id}"), None).await;
    assert_eq!(v["output"]["task_status"], "CANCELED", "{v}");
    assert_eq!(s.app.balance(s.user).await, START);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn openai_videos_are_served_by_a_dashscope_channel_as_an_async_task() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/v1/videos",
            Some(json!({"model": "wan2.2-t2v-plus", "prompt": "rain", "seconds": "5", "size": "1280x720"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let (path, sent) = s.ds.submissions().last().unwrap().clone();
    assert_eq!(path, VIDEO);
    assert_eq!(
        sent["parameters"],
        json!({"duration": 5, "size": "1280*720"})
    );
    assert_eq!(sent["input"]["prompt"], "rain");
    let mut done = Value::Null;
    for _ in 0..100 {
        let (_, v) = s.call("GET", &format!("/v1/videos/{id}"), None).await;
        if v["status"] == "completed" || v["status"] == "failed" {
            done = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(s.app.balance(s.user).await, START - 5 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_resolution_with_a_price_of_its_own_is_held_and_charged_at_that_price() {
    let s = setup().await;
    s.app
        .set_price_with("wan2.2-t2v-plus-1080p", json!({"per_second": 0.3}))
        .await;
    let (status, v) = s
        .call(
            "POST",
            VIDEO,
            Some(json!({"model": "wan2.2-t2v-plus", "input": {"prompt": "sharp"}, "parameters": {"size": "1920*1080", "duration": 5}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["output"]["task_id"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - 5 * 300_000);
    // A resolution without a price of its own is held at the model's price.
    let (status, v) = s
        .call(
            "POST",
            VIDEO,
            Some(json!({"model": "wan2.2-t2v-plus", "input": {"prompt": "soft"}, "parameters": {"size": "832*480", "duration": 5}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        s.app.balance(s.user).await,
        START - 5 * 300_000 - 5 * PER_SECOND
    );
    // The price follows the field the model reads: text-to-video reads `size` (a
    // cheaper `resolution` beside it changes nothing), image-to-video reads
    // `resolution` (a small `size` beside it changes nothing).
    s.app
        .set_price_with("wan2.2-t2v-plus-480p", json!({"per_second": 0.01}))
        .await;
    let before = s.app.balance(s.user).await;
    let (status, v) = s
        .call(
            "POST",
            VIDEO,
            Some(json!({"model": "wan2.2-t2v-plus", "input": {"prompt": "x"}, "parameters": {"size": "1920*1080", "resolution": "480P", "duration": 5}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.app.balance(s.user).await, before - 5 * 300_000);
    let (status, v) = s
        .call(
            "POST",
            VIDEO,
            Some(json!({"model": "wan2.2-t2v-plus", "input": {"prompt": "x", "img_url": "https://example.com/a.png"}, "parameters": {"size": "832*480", "duration": 5}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        s.app.balance(s.user).await,
        before - 5 * 300_000 - 5 * PER_SECOND
    );
    assert_eq!(
        s.until_done(&id).await["output"]["task_status"],
        "SUCCEEDED"
    );
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn polls_that_fail_or_say_an_unknown_word_keep_a_wan_task_open_then_it_is_charged_once_and_served_in_ranges()
 {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            VIDEO,
            Some(json!({"model": "wan-flaky", "input": {"prompt": "a kite"}, "parameters": {"duration": 5}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["output"]["task_id"].as_str().unwrap().to_owned();
    let done = s.until_done(&id).await;
    assert_eq!(done["output"]["task_status"], "SUCCEEDED", "{done}");
    assert_eq!(s.app.balance(s.user).await, START - 5 * PER_SECOND);
    let url = done["output"]["video_url"].as_str().unwrap();
    tollgate_tests::mock_server::assert_served_in_ranges(url).await;
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_wan_video_that_costs_more_than_the_balance_is_refused_with_402_and_never_sent() {
    let s = setup().await;
    let (poor, key) = s.app.customer_with_key("short-of-credits", 0.2).await;
    let resp = s
        .app
        .http
        .post(format!("{}{VIDEO}", s.app.address))
        .bearer_auth(&key)
        .header("x-dashscope-async", "enable")
        .json(&json!({"model": "wan2.2-t2v-plus", "input": {"prompt": "too long"}, "parameters": {"duration": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    assert!(s.ds.submissions().is_empty());
    assert_eq!(s.app.balance(poor).await, 200_000);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_wan_image_to_image_edit_goes_to_its_own_path_and_is_charged_per_image_made() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/api/v1/services/aigc/image2image/image-synthesis",
            Some(json!({"model": "wanx2.1-t2i-turbo",
                "input": {"function": "stylization_all", "prompt": "as a watercolour",
                    "base_image_url": "https://example.com/photo.png"},
                "parameters": {"n": 2}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (path, sent) = s.ds.submissions().last().unwrap().clone();
    assert_eq!(path, "/api/v1/services/aigc/image2image/image-synthesis");
    assert_eq!(
        sent["input"]["base_image_url"],
        "https://example.com/photo.png"
    );
    assert_eq!(s.app.balance(s.user).await, START - 2 * PER_IMAGE);
    let id = v["output"]["task_id"].as_str().unwrap().to_owned();
    let done = s.until_done(&id).await;
    assert_eq!(done["output"]["task_status"], "SUCCEEDED", "{done}");
    // The mock makes one image fewer than asked: one is charged.
    assert_eq!(s.app.balance(s.user).await, START - PER_IMAGE);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_wan_submission_whose_answer_was_lost_is_never_sent_again_and_released_at_the_deadline() {
    let app = spawn_app_with(|c| {
        c.tasks.allow_private_addresses = true;
        c.tasks.deadline = Duration::from_secs(5);
    })
    .await;
    let ds = MockDashscope::start().await;
    app.add_channel(
        "wan-slow",
        &ds.base_url,
        &["wan-slow-accept"],
        json!({"type": "dashscope", "keys": [KEY], "timeout_s": 1}),
    )
    .await;
    app.set_price_with("wan-slow-accept", json!({"per_second": 0.1}))
        .await;
    let (user, key) = app.customer_with_key("painter", 10.0).await;
    let s = Setup { app, ds, user, key };
    let (status, v) = s
        .call(
            "POST",
            VIDEO,
            Some(json!({"model": "wan-slow-accept", "input": {"prompt": "lost"}, "parameters": {"duration": 5}})),
        )
        .await;
    // Taken upstream, its answer too late: open, held, never sent again; DashScope's
    // task list cannot tell it apart, so its deadline frees the hold.
    assert_eq!(status, 200, "{v}");
    let id = v["output"]["task_id"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - 5 * PER_SECOND);
    let task = s.app.task_when_ended(&id).await;
    assert_eq!(
        (task.state.as_str(), task.upstream_task_id),
        ("expired", None)
    );
    assert_eq!(s.ds.submissions().len(), 1);
    assert_eq!(s.app.balance(s.user).await, START);
    s.app.assert_ledger_consistent().await;
}
