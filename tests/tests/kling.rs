//! Kling end to end: Kling's own shape (`/kling/v1/...`) and OpenAI's `/v1/videos`,
//! served by a `kling` channel (a mock Kling that checks its JWT), with the money:
//! per second of the asked duration, per image asked, released on failure.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::app::{TestApp, spawn_app_with};
use tollgate_tests::mock_kling::{ACCESS_KEY, MockKling, SECRET_KEY};
use tollgate_tests::mock_sora::content_bytes;

const START: i64 = 10_000_000;
const PER_SECOND: i64 = 100_000;
const PER_IMAGE: i64 = 50_000;

struct Setup {
    app: TestApp,
    kling: MockKling,
    user: i64,
    key: String,
}

async fn setup() -> Setup {
    let app = spawn_app_with(|c| c.tasks.allow_private_addresses = true).await;
    let kling = MockKling::start().await;
    let (status, v) = app
        .api(
            "POST",
            "/api/channels",
            &app.root_token,
            Some(
                json!({"name": "kling", "type": "kling", "base_url": kling.base_url,
                "keys": [format!("{ACCESS_KEY}|{SECRET_KEY}")],
                "models": ["kling-v1", "kling-fail", "kling-refuse", "kling-busy", "kling-v1-image", "kling-flaky"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    for model in [
        "kling-v1",
        "kling-fail",
        "kling-refuse",
        "kling-busy",
        "kling-flaky",
    ] {
        app.set_price_with(model, json!({"per_second": 0.1})).await;
    }
    app.set_price_with("kling-v1-image", json!({"per_image": 0.05}))
        .await;
    let (user, key) = app.customer_with_key("animator", 10.0).await;
    Setup {
        app,
        kling,
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
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn until_done(&self, path: &str) -> Value {
        for _ in 0..100 {
            let (status, v) = self.call("GET", path, None).await;
            assert_eq!(status, 200, "{v}");
            let word = v["data"]["task_status"].as_str().unwrap_or_default();
            if word != "submitted" && word != "processing" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{path} did not finish within 10 s");
    }
}

#[tokio::test]
async fn a_kling_video_is_signed_for_with_a_jwt_held_for_its_duration_and_charged_once() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/kling/v1/videos/text2video",
            Some(json!({"model_name": "kling-v1", "prompt": "a fox in snow", "duration": "10", "mode": "std"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"]["task_status"], "submitted");
    let id = v["data"]["task_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("task_"), "{v}");
    assert_eq!(s.app.balance(s.user).await, START - 10 * PER_SECOND);
    let (path, sent) = s.kling.submissions().last().unwrap().clone();
    assert_eq!(path, "/v1/videos/text2video");
    assert_eq!(
        (sent["duration"].clone(), sent["mode"].clone()),
        (json!("10"), json!("std"))
    );

    let done = s
        .until_done(&format!("/kling/v1/videos/text2video/{id}"))
        .await;
    assert_eq!(done["data"]["task_status"], "succeed", "{done}");
    assert_eq!(s.app.balance(s.user).await, START - 10 * PER_SECOND);
    let video = &done["data"]["task_result"]["videos"][0];
    assert_eq!(video["duration"], "10");
    let url = video["url"].as_str().unwrap();
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
    assert!(!s.kling.cdn_saw_a_key());
    // Another tenant gets 404 for it, and for its generation.
    let (_, other) = s.app.customer_with_key("other-studio", 1.0).await;
    for path in [
        format!("/kling/v1/videos/text2video/{id}"),
        format!("/v1/generation?id={id}"),
    ] {
        let status = s
            .app
            .http
            .get(format!("{}{path}", s.app.address))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{path}");
    }
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn kling_images_are_held_and_charged_per_image_and_each_has_its_own_url() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/kling/v1/images/generations",
            Some(json!({"model_name": "kling-v1-image", "prompt": "three cats", "n": 3})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["data"]["task_id"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - 3 * PER_IMAGE);
    let done = s
        .until_done(&format!("/kling/v1/images/generations/{id}"))
        .await;
    let images = done["data"]["task_result"]["images"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(images.len(), 3, "{done}");
    for (i, image) in images.iter().enumerate() {
        assert_eq!(image["index"], i);
        let got = reqwest::get(image["url"].as_str().unwrap()).await.unwrap();
        assert_eq!(got.status(), 200);
    }
    assert_eq!(s.app.balance(s.user).await, START - 3 * PER_IMAGE);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_failed_or_refused_kling_task_costs_nothing_and_answers_in_klings_envelope() {
    let s = setup().await;
    let (_, v) = s
        .call(
            "POST",
            "/kling/v1/videos/text2video",
            Some(json!({"model_name": "kling-fail", "prompt": "x"})),
        )
        .await;
    let id = v["data"]["task_id"].as_str().unwrap().to_owned();
    let done = s
        .until_done(&format!("/kling/v1/videos/text2video/{id}"))
        .await;
    assert_eq!(done["data"]["task_status"], "failed", "{done}");
    assert_eq!(
        done["data"]["task_status_msg"],
        "Failure to pass the risk control system"
    );
    let (status, body) = s
        .call(
            "POST",
            "/kling/v1/videos/text2video",
            Some(json!({"model_name": "kling-refuse", "prompt": "x"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["code"].as_i64().unwrap() > 0, "{body}");
    let (status, body) = s
        .call(
            "POST",
            "/kling/v1/videos/text2video",
            Some(json!({"model_name": "kling-v1", "model": "kling-v2-master", "prompt": "x"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(s.app.balance(s.user).await, START);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn openai_videos_with_a_reference_image_go_to_klings_image_to_video() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/v1/videos",
            Some(json!({"model": "kling-v1", "prompt": "make it move", "seconds": "5", "size": "720x1280",
                "input_reference": {"image_url": "https://example.com/still.png"}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let (path, sent) = s.kling.submissions().last().unwrap().clone();
    assert_eq!(path, "/v1/videos/image2video");
    assert_eq!(sent["image"], "https://example.com/still.png");
    assert_eq!(sent["aspect_ratio"], "9:16");
    assert_eq!(sent["duration"], "5");
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
async fn pro_mode_is_priced_under_its_own_name_or_refused_and_a_refusal_in_a_200_costs_nothing() {
    let s = setup().await;
    let body = json!({"model_name": "kling-v1", "prompt": "x", "duration": "5", "mode": "pro"});
    let (status, v) = s
        .call("POST", "/kling/v1/videos/text2video", Some(body.clone()))
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("kling-v1-pro"),
        "{v}"
    );
    assert!(s.kling.submissions().is_empty());
    s.app
        .set_price_with("kling-v1-pro", json!({"per_second": 0.35}))
        .await;
    let (status, v) = s
        .call("POST", "/kling/v1/videos/text2video", Some(body))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.app.balance(s.user).await, START - 5 * 350_000);
    // Kling over its concurrency limit answers 200 with code 1303: nothing held.
    let (status, v) = s
        .call(
            "POST",
            "/kling/v1/videos/text2video",
            Some(json!({"model_name": "kling-busy", "prompt": "x"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(s.app.balance(s.user).await, START - 5 * 350_000);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_kling_callback_gets_the_bare_task_with_signed_result_urls_from_tollgate() {
    use std::sync::{Arc, Mutex};
    let s = setup().await;
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = actix_web::web::Data::new(Arc::clone(&got));
    let (hook, handle) = tollgate_tests::mock_server::serve(move |cfg| {
        cfg.app_data(sink.clone()).route(
            "/kling-hook",
            actix_web::web::post().to(
                |sink: actix_web::web::Data<Arc<Mutex<Vec<Value>>>>,
                 body: actix_web::web::Json<Value>| async move {
                    sink.lock().unwrap().push(body.into_inner());
                    actix_web::HttpResponse::Ok().finish()
                },
            ),
        );
    });
    let (status, v) = s
        .call(
            "POST",
            "/kling/v1/videos/text2video",
            Some(json!({"model_name": "kling-v1", "prompt": "call back", "callback_url": format!("{hook}/kling-hook")})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["data"]["task_id"].as_str().unwrap().to_owned();
    let (_, sent) = s.kling.submissions().last().unwrap().clone();
    assert!(sent.get("callback_url").is_none(), "{sent}");
    for _ in 0..100 {
        let first = got.lock().unwrap().first().cloned();
        if let Some(body) = first {
            assert_eq!(body["task_id"], id.as_str(), "{body}");
            assert_eq!(body["task_status"], "succeed", "{body}");
            assert!(body.get("code").is_none(), "{body}");
            let url = body["task_result"]["videos"][0]["url"].as_str().unwrap();
            assert!(
                url.starts_with(&format!("{}/v1/tasks/{id}/content?", s.app.address)),
                "{url}"
            );
            assert_eq!(reqwest::get(url).await.unwrap().status(), 200);
            handle.stop(false).await;
            s.app.assert_ledger_consistent().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the callback was not called within 10 s");
}

#[tokio::test]
async fn a_kling_submission_whose_answer_was_lost_is_found_by_its_tag_never_sent_again_and_charged_once()
 {
    let s = setup().await;
    s.app
        .add_channel(
            "kling-slow",
            &s.kling.base_url,
            &["kling-slow-accept"],
            json!({"type": "kling", "keys": [format!("{ACCESS_KEY}|{SECRET_KEY}")], "timeout_s": 1}),
        )
        .await;
    s.app
        .set_price_with("kling-slow-accept", json!({"per_second": 0.1}))
        .await;
    let (status, v) = s
        .call(
            "POST",
            "/kling/v1/videos/text2video",
            Some(
                json!({"model_name": "kling-slow-accept", "prompt": "lost in transit",
                "duration": "5", "external_task_id": "my-own-42"}),
            ),
        )
        .await;
    // Taken upstream, its answer too late: the client gets the task, open.
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["task_status"], "submitted", "{v}");
    assert_eq!(v["data"]["task_info"]["external_task_id"], "my-own-42");
    let id = v["data"]["task_id"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - 5 * PER_SECOND);
    // Upstream it carries Tollgate's task id, not the client's.
    let (_, sent) = s.kling.submissions().last().unwrap().clone();
    assert_eq!(sent["external_task_id"], json!(id));
    // Another customer's video on the same account, made just after: the newest in
    // Kling's list, with its own tag.
    let (_, other_key) = s.app.customer_with_key("rival", 10.0).await;
    let resp = s
        .app
        .http
        .post(format!("{}/kling/v1/videos/text2video", s.app.address))
        .bearer_auth(&other_key)
        .json(
            &json!({"model_name": "kling-slow-accept", "prompt": "someone else's",
            "external_task_id": "my-own-42"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let done = s
        .until_done(&format!("/kling/v1/videos/text2video/{id}"))
        .await;
    assert_eq!(done["data"]["task_status"], "succeed", "{done}");
    assert_eq!(done["data"]["task_info"]["external_task_id"], "my-own-42");
    assert_eq!(s.kling.submissions().len(), 2, "never sent again");
    let task = billing::task::find(&s.app.db, &id).await.unwrap().unwrap();
    assert_eq!(task.upstream_status.as_deref(), Some("succeed"));
    // The mock numbers its tasks: this one is …799, the other customer's …800.
    assert_eq!(task.upstream_task_id.as_deref(), Some("866889456698785799"));
    assert_eq!(s.app.balance(s.user).await, START - 5 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn polls_that_fail_or_say_an_unknown_word_keep_a_kling_task_open_then_it_is_charged_once_and_served_in_ranges()
 {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/kling/v1/videos/text2video",
            Some(json!({"model_name": "kling-flaky", "prompt": "bumpy road", "duration": "5"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["data"]["task_id"].as_str().unwrap().to_owned();
    // 429, 500 and an unknown word on the way: open all along, then done, once.
    let done = s
        .until_done(&format!("/kling/v1/videos/text2video/{id}"))
        .await;
    assert_eq!(done["data"]["task_status"], "succeed", "{done}");
    assert_eq!(s.app.balance(s.user).await, START - 5 * PER_SECOND);
    let url = done["data"]["task_result"]["videos"][0]["url"]
        .as_str()
        .unwrap();
    tollgate_tests::mock_server::assert_served_in_ranges(url).await;
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_kling_video_that_costs_more_than_the_balance_is_refused_with_402_and_never_sent() {
    let s = setup().await;
    let (poor, key) = s.app.customer_with_key("short-of-credits", 0.2).await;
    let resp = s
        .app
        .http
        .post(format!("{}/kling/v1/videos/text2video", s.app.address))
        .bearer_auth(&key)
        .json(&json!({"model_name": "kling-v1", "prompt": "too long", "duration": "10"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    assert!(s.kling.submissions().is_empty());
    assert_eq!(s.app.balance(poor).await, 200_000);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_kling_image_to_video_goes_to_its_own_path_held_and_charged_for_its_duration() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/kling/v1/videos/image2video",
            Some(
                json!({"model_name": "kling-v1", "image": "https://example.com/still.png",
                "prompt": "make it move", "duration": "5"}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (path, sent) = s.kling.submissions().last().unwrap().clone();
    assert_eq!(path, "/v1/videos/image2video");
    assert_eq!(sent["image"], "https://example.com/still.png");
    let id = v["data"]["task_id"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - 5 * PER_SECOND);
    let done = s
        .until_done(&format!("/kling/v1/videos/image2video/{id}"))
        .await;
    assert_eq!(done["data"]["task_status"], "succeed", "{done}");
    assert_eq!(s.app.balance(s.user).await, START - 5 * PER_SECOND);
    // Asked under the other path, it is not there.
    let (status, _) = s
        .call("GET", &format!("/kling/v1/videos/text2video/{id}"), None)
        .await;
    assert_eq!(status, 404);
    s.app.assert_ledger_consistent().await;
}
