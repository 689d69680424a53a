//! Seedance end to end: Ark's own shape (`/seedance/v3/contents/generations/tasks`)
//! and OpenAI's `/v1/videos`, both served by a `volcengine` channel (a mock Ark), with
//! the money after every step: held for the most the asked video can use in tokens,
//! charged the tokens Ark reports, released when it fails or is cancelled.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::app::{TestApp, spawn_app_with};
use tollgate_tests::mock_ark::MockArk;
use tollgate_tests::mock_sora::content_bytes;

const START: i64 = 20_000_000;
/// 10 credits per 1M output tokens: 10 µc a token.
const PER_TOKEN: i64 = 10;
/// The hold of a 5 s 720p video: ceil(1470 × 630 × 121 / 1024) tokens.
const HOLD_720P_5S: i64 = 109_432 * PER_TOKEN;
/// What Ark reports for it: 1280 × 720 × 121 / 1024.
const MADE_720P_5S: i64 = 108_900 * PER_TOKEN;
const PATH: &str = "/seedance/v3/contents/generations/tasks";

struct Setup {
    app: TestApp,
    ark: MockArk,
    user: i64,
    key: String,
}

async fn setup_with(allow_private: bool) -> Setup {
    let app = spawn_app_with(|c| c.tasks.allow_private_addresses = allow_private).await;
    let ark = MockArk::start().await;
    let (status, v) = app
        .api(
            "POST",
            "/api/channels",
            &app.root_token,
            Some(
                json!({"name": "ark", "type": "volcengine", "base_url": ark.base_url,
                "keys": ["ark-secret-key-5678"],
                "models": ["seedance-pro", "seedance-fail", "seedance-refuse", "seedance-flaky"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    for model in [
        "seedance-pro",
        "seedance-fail",
        "seedance-refuse",
        "seedance-flaky",
    ] {
        app.set_price_with(model, json!({"output": 10.0})).await;
    }
    let (user, key) = app.customer_with_key("director", 20.0).await;
    Setup {
        app,
        ark,
        user,
        key,
    }
}

async fn setup() -> Setup {
    setup_with(true).await
}

impl Setup {
    async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .app
            .http
            .request(
                method.parse().unwrap(),
                format!("{}{path}", self.app.address),
            )
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn until_done(&self, id: &str) -> Value {
        for _ in 0..100 {
            let (status, v) = self
                .call("GET", &format!("{PATH}/{id}"), &self.key, None)
                .await;
            assert_eq!(status, 200, "{v}");
            if v["status"] != "queued" && v["status"] != "running" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("task {id} did not finish within 10 s");
    }

    async fn kinds(&self, id: &str) -> Vec<(String, i64)> {
        self.app
            .ledger(self.user)
            .await
            .into_iter()
            .filter(|t| t.reference.as_deref() == Some(id))
            .map(|t| (t.kind, t.amount))
            .collect()
    }
}

fn text(prompt: &str) -> Value {
    json!({"model": "seedance-pro", "content": [
        {"type": "text", "text": prompt},
        {"type": "image_url", "image_url": {"url": "https://example.com/first.png"}}
    ]})
}

#[tokio::test]
async fn a_seedance_task_is_held_by_tokens_charged_what_ark_reports_and_its_video_is_a_signed_tollgate_url()
 {
    let s = setup().await;
    let (status, v) = s
        .call("POST", PATH, &s.key, Some(text("a cat --rs 720p --dur 5")))
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v, json!({ "id": id }));
    assert_eq!(s.app.balance(s.user).await, START - HOLD_720P_5S);
    // The upstream got the request as sent, with its own key.
    let sent = s.ark.submissions().last().unwrap().clone();
    assert_eq!(sent["content"][0]["text"], "a cat --rs 720p --dur 5");
    assert_eq!(
        sent["content"][1]["image_url"]["url"],
        "https://example.com/first.png"
    );

    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["usage"]["completion_tokens"], 108_900);
    assert_eq!(s.app.balance(s.user).await, START - MADE_720P_5S);
    assert_eq!(
        s.kinds(&id).await,
        vec![
            ("task_hold".to_owned(), -HOLD_720P_5S),
            ("task_refund".to_owned(), HOLD_720P_5S - MADE_720P_5S)
        ]
    );
    assert_eq!(s.app.generation(&id).await.cost, MADE_720P_5S);

    // The video is ours, signed, and works without a key (an <video> tag).
    let url = done["content"]["video_url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{}/v1/tasks/{id}/content?", s.app.address)),
        "{url}"
    );
    assert!(!done.to_string().contains("tos"), "{done}");
    let whole = reqwest::get(&url).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.bytes().await.unwrap().to_vec(), content_bytes());
    let part = s
        .app
        .http
        .get(&url)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.bytes().await.unwrap().to_vec(),
        content_bytes()[..10].to_vec()
    );
    assert!(
        !s.ark.storage_saw_a_key(),
        "the channel key went to the storage URL"
    );
    // A day later Ark's storage URL has expired: Tollgate asks Ark for a fresh one.
    s.ark.expire_urls();
    let again = reqwest::get(&url).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.bytes().await.unwrap().to_vec(), content_bytes());
    // A tampered or expired URL is nothing.
    let tampered = url.replace("signature=", "signature=00");
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 404);
    let (base, _) = url.split_once("expires=").unwrap();
    let expired = format!("{base}expires=1&signature=00");
    assert_eq!(reqwest::get(&expired).await.unwrap().status(), 404);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_failed_seedance_task_costs_nothing_and_another_tenant_never_sees_it() {
    let s = setup().await;
    let (_, other) = s.app.customer_with_key("rival", 5.0).await;
    let mut body = text("forbidden --rs 720p");
    body["model"] = json!("seedance-fail");
    let (status, v) = s.call("POST", PATH, &s.key, Some(body)).await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    for (method, path) in [
        ("GET", format!("{PATH}/{id}")),
        ("DELETE", format!("{PATH}/{id}")),
        ("GET", format!("/v1/generation?id={id}")),
    ] {
        let (status, _) = s.call(method, &path, &other, None).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["error"]["code"], "OutputVideoSensitiveContentDetected",
        "{done}"
    );
    assert!(done.get("content").is_none(), "{done}");
    assert_eq!(s.app.balance(s.user).await, START);
    let (_, list) = s.call("GET", PATH, &other, None).await;
    assert_eq!(list, json!({"items": [], "total": 0}));
    let (_, mine) = s
        .call(
            "GET",
            &format!("{PATH}?page_num=1&page_size=10"),
            &s.key,
            None,
        )
        .await;
    assert_eq!(mine["total"], 1, "{mine}");
    // A refused submission costs nothing either, and says why.
    let mut refused = text("x");
    refused["model"] = json!("seedance-refuse");
    let (status, body) = s.call("POST", PATH, &s.key, Some(refused)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(s.app.balance(s.user).await, START);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_queued_seedance_task_can_be_cancelled_and_its_hold_comes_back() {
    let s = setup().await;
    let (_, v) = s
        .call(
            "POST",
            PATH,
            &s.key,
            Some(text("never mind --rs 480p --dur 10")),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(s.app.balance(s.user).await < START);
    let (status, body) = s
        .call("DELETE", &format!("{PATH}/{id}"), &s.key, None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.app.balance(s.user).await, START);
    let (_, v) = s.call("GET", &format!("{PATH}/{id}"), &s.key, None).await;
    assert_eq!(v["status"], "cancelled", "{v}");
    // A running task cannot be stopped.
    let (_, v) = s
        .call("POST", PATH, &s.key, Some(text("keep going --rs 480p")))
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    let mut seen = Value::Null;
    for _ in 0..50 {
        let (_, v) = s.call("GET", &format!("{PATH}/{id}"), &s.key, None).await;
        seen = v;
        if seen["status"] != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["status"], "running", "{seen}");
    let (status, _) = s
        .call("DELETE", &format!("{PATH}/{id}"), &s.key, None)
        .await;
    assert_eq!(status, 400);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn openai_videos_are_served_by_a_seedance_channel_in_arks_terms() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/v1/videos",
            &s.key,
            Some(json!({"model": "seedance-pro", "prompt": "waves at dusk", "seconds": "5", "size": "1280x720"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let sent = s.ark.submissions().last().unwrap().clone();
    assert_eq!(
        sent["content"][0]["text"],
        "waves at dusk --dur 5 --rs 720p --ratio 16:9"
    );
    assert_eq!(s.app.balance(s.user).await, START - HOLD_720P_5S);
    let mut done = Value::Null;
    for _ in 0..100 {
        let (_, v) = s
            .call("GET", &format!("/v1/videos/{id}"), &s.key, None)
            .await;
        if v["status"] == "completed" || v["status"] == "failed" {
            done = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(s.app.balance(s.user).await, START - MADE_720P_5S);
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
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_result_url_that_points_inside_the_network_is_not_fetched() {
    // The default: upstream result URLs must be public addresses; the mock's storage
    // is on loopback, so the finished video cannot be fetched through Tollgate.
    let s = setup_with(false).await;
    let (_, v) = s
        .call("POST", PATH, &s.key, Some(text("a cat --rs 720p --dur 5")))
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let url = done["content"]["video_url"].as_str().unwrap();
    assert_eq!(reqwest::get(url).await.unwrap().status(), 502);
    s.app.assert_ledger_consistent().await;
}

/// A mock Ark behind a `volcengine` channel serving `seedance-slow-accept` (the mock
/// answers after 2 s) with a 1 s timeout: every submission's answer is lost.
async fn slow_ark(app: &TestApp) -> MockArk {
    let ark = MockArk::start().await;
    app.add_channel(
        "ark-slow",
        &ark.base_url,
        &["seedance-slow-accept"],
        json!({"type": "volcengine", "keys": ["ark-secret-key-5678"], "timeout_s": 1}),
    )
    .await;
    app.set_price_with("seedance-slow-accept", json!({"output": 10.0}))
        .await;
    ark
}

#[tokio::test]
async fn an_ark_submission_whose_answer_was_lost_is_not_guessed_at_and_its_hold_comes_back_at_the_deadline()
 {
    let app = spawn_app_with(|c| {
        c.tasks.allow_private_addresses = true;
        c.tasks.deadline = Duration::from_secs(6);
    })
    .await;
    let ark = slow_ark(&app).await;
    let (user, key) = app.customer_with_key("director", 20.0).await;
    let s = Setup {
        app,
        ark,
        user,
        key,
    };
    let body = json!({"model": "seedance-slow-accept",
        "content": [{"type": "text", "text": "lost in transit --rs 720p --dur 5"}]});
    let (status, v) = s.call("POST", PATH, &s.key, Some(body)).await;
    // Taken upstream, its answer too late: the client gets the task, open.
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - HOLD_720P_5S);
    // Ark's task list names no prompt: which job is this one could only be guessed
    // (and a guess could hand one tenant's video to another), so none is made. The
    // deadline ends it, free.
    let mut last = Value::Null;
    for _ in 0..200 {
        let (_, v) = s.call("GET", &format!("{PATH}/{id}"), &s.key, None).await;
        last = v;
        if last["status"] != "queued" && last["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["status"], "failed", "{last}");
    let task = billing::task::find(&s.app.db, &id).await.unwrap().unwrap();
    assert_eq!(
        (task.state.as_str(), task.upstream_task_id),
        ("expired", None)
    );
    assert_eq!(s.ark.submissions().len(), 1, "never sent again");
    assert_eq!(s.app.balance(s.user).await, START);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_task_is_linked_to_one_lost_submission_even_when_two_pollers_try_at_once() {
    let app = spawn_app_with(|c| c.tasks.allow_private_addresses = true).await;
    let _ark = slow_ark(&app).await;
    let mut lost = Vec::new();
    for name in ["first", "second", "third", "fourth"] {
        let (_, key) = app.customer_with_key(name, 20.0).await;
        let resp = app
            .http
            .post(format!("{}{PATH}", app.address))
            .bearer_auth(&key)
            .json(&json!({"model": "seedance-slow-accept",
                "content": [{"type": "text", "text": "lost --rs 720p --dur 5"}]}))
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        lost.push(v["id"].as_str().unwrap().to_owned());
    }
    let channel = billing::task::find(&app.db, &lost[0])
        .await
        .unwrap()
        .unwrap()
        .channel_id
        .unwrap();
    // Two pollers each found "cgt-same" for their task at the same moment: one link.
    for (pair, upstream) in lost.chunks(2).zip(["cgt-same-1", "cgt-same-2"]) {
        let (a, b) = tokio::join!(
            billing::task::link_upstream(&app.db, &pair[0], channel, upstream),
            billing::task::link_upstream(&app.db, &pair[1], channel, upstream),
        );
        let linked = [a.unwrap(), b.unwrap()];
        assert_eq!(linked.iter().filter(|l| **l).count(), 1, "{linked:?}");
    }
    app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn polls_that_fail_or_say_an_unknown_word_keep_a_seedance_task_open_then_it_is_charged_once()
{
    let s = setup().await;
    let body = json!({"model": "seedance-flaky",
        "content": [{"type": "text", "text": "a bumpy road --rs 720p --dur 5"}]});
    let (status, v) = s.call("POST", PATH, &s.key, Some(body)).await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(s.app.balance(s.user).await, START - MADE_720P_5S);
    let url = done["content"]["video_url"].as_str().unwrap();
    tollgate_tests::mock_server::assert_served_in_ranges(url).await;
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_seedance_video_that_costs_more_than_the_balance_is_refused_with_402_and_never_sent() {
    let s = setup().await;
    let (poor, key) = s.app.customer_with_key("short-of-credits", 0.2).await;
    let (status, body) = s
        .call(
            "POST",
            PATH,
            &key,
            Some(text("too long --rs 1080p --dur 10")),
        )
        .await;
    assert_eq!(status, 402, "{body}");
    assert!(s.ark.submissions().is_empty());
    assert_eq!(s.app.balance(poor).await, 200_000);
    s.app.assert_ledger_consistent().await;
}
