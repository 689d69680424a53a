//! `/v1/videos` end to end: the real gateway, a mock Sora upstream, and the money after
//! every step (the hold at submission, exactly one charge or release at the end).

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::app::TestApp;
use tollgate_tests::mock_sora::{MockSora, content_bytes};
use tollgate_tests::spawn_app;

/// 0.1 credits per second of video.
const PER_SECOND: i64 = 100_000;
const START: i64 = 10_000_000;

struct Setup {
    app: TestApp,
    sora: MockSora,
    user: i64,
    key: String,
}

async fn setup() -> Setup {
    let app = spawn_app().await;
    let sora = MockSora::start().await;
    app.add_channel(
        "sora",
        &sora.base_url,
        &[
            "sora-2",
            "sora-fail",
            "sora-refuse",
            "sora-429",
            "sora-odd",
            "sora-short",
            "sora-flaky-poll",
        ],
        json!({}),
    )
    .await;
    for model in [
        "sora-2",
        "sora-fail",
        "sora-refuse",
        "sora-429",
        "sora-odd",
        "sora-short",
        "sora-flaky-poll",
    ] {
        app.set_price_with(model, json!({"per_second": 0.1})).await;
    }
    let (user, key) = app.customer_with_key("filmmaker", 10.0).await;
    Setup {
        app,
        sora,
        user,
        key,
    }
}

impl Setup {
    async fn create(&self, key: &str, body: Value) -> (u16, Value) {
        let resp = self
            .app
            .http
            .post(format!("{}/v1/videos", self.app.address))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let resp = self
            .app
            .http
            .get(format!("{}{path}", self.app.address))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Reads the video until it is no longer queued or in progress (at most 10 s).
    async fn until_done(&self, id: &str) -> Value {
        for _ in 0..100 {
            let (status, v) = self.get(&self.key, &format!("/v1/videos/{id}")).await;
            assert_eq!(status, 200, "{v}");
            if v["status"] != "queued" && v["status"] != "in_progress" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("video {id} did not finish within 10 s");
    }

    /// `DELETE /v1/videos/{id}` by `key`.
    async fn delete(&self, key: &str, id: &str) -> reqwest::Response {
        self.app
            .http
            .delete(format!("{}/v1/videos/{id}", self.app.address))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// A channel serving `sora-slow-accept` (the mock answers after 2 s) with a 1 s
    /// timeout: every submission's answer is lost.
    async fn slow_channel(&self) {
        self.app
            .add_channel(
                "sora-slow",
                &self.sora.base_url,
                &["sora-slow-accept"],
                json!({"timeout_s": 1}),
            )
            .await;
        self.app
            .set_price_with("sora-slow-accept", json!({"per_second": 0.1}))
            .await;
    }

    /// The user's ledger as (kind, amount, reference).
    async fn ledger(&self) -> Vec<(String, i64, Option<String>)> {
        self.app
            .ledger(self.user)
            .await
            .into_iter()
            .map(|t| (t.kind, t.amount, t.reference))
            .collect()
    }
}

#[tokio::test]
async fn a_video_is_held_at_submission_and_charged_exactly_once_when_it_completes() {
    let s = setup().await;
    let (status, v) = s
        .create(&s.key, json!({"model": "sora-2", "prompt": "a calico cat playing piano", "seconds": "8", "size": "1280x720"}))
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("task_"), "{v}");
    assert_eq!(v["object"], "video");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["seconds"], "8");
    assert_eq!(v["size"], "1280x720");
    assert_eq!(v["prompt"], "a calico cat playing piano");
    assert!(v["error"].is_null() && v["completed_at"].is_null(), "{v}");
    // Nothing of the upstream shows: its id, its URL.
    assert!(!v.to_string().contains("\"video_"), "{v}");
    assert!(!v.to_string().contains("127.0.0.1"), "{v}");

    // Held at once, with its ledger row.
    let hold = 8 * PER_SECOND;
    assert_eq!(s.app.balance(s.user).await, START - hold);
    assert_eq!(
        s.ledger().await.last().unwrap(),
        &("task_hold".to_owned(), -hold, Some(id.clone()))
    );
    let g = s.app.generation(&id).await;
    assert_eq!(
        (g.status.as_str(), g.finish_reason.as_deref(), g.cost),
        ("pending", Some("queued"), 0)
    );

    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100);
    assert!(done["completed_at"].is_i64());

    // Charged the hold (8 s made), once: no refund row, however often it is read.
    for _ in 0..3 {
        s.get(&s.key, &format!("/v1/videos/{id}")).await;
    }
    assert_eq!(s.app.balance(s.user).await, START - hold);
    let rows: Vec<_> = s
        .ledger()
        .await
        .into_iter()
        .filter(|r| r.2.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(
        rows,
        vec![("task_hold".to_owned(), -hold, Some(id.clone()))]
    );
    let g = s.app.generation(&id).await;
    assert_eq!(
        (
            g.status.as_str(),
            g.finish_reason.as_deref(),
            g.cost,
            g.model.as_str()
        ),
        ("success", Some("succeeded"), hold, "sora-2")
    );

    // The generation lookup shows it like any other.
    let (status, looked) = s.get(&s.key, &format!("/v1/generation?id={id}")).await;
    assert_eq!(status, 200, "{looked}");
    assert_eq!(looked["data"]["status"], "success");
    assert_eq!(looked["data"]["finish_reason"], "succeeded");
    assert_eq!(looked["data"]["total_cost"], 0.8);

    // The multipart the SDK sends since openai 2.27 works the same.
    let form = reqwest::multipart::Form::new()
        .text("prompt", "a dog")
        .text("model", "sora-2")
        .text("seconds", "4");
    let resp = s
        .app
        .http
        .post(format!("{}/v1/videos", s.app.address))
        .bearer_auth(&s.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let second = v["id"].as_str().unwrap().to_owned();
    assert_eq!(s.until_done(&second).await["status"], "completed");
    assert_eq!(s.app.balance(s.user).await, START - hold - 4 * PER_SECOND);
    let (ct, fields) = s.sora.submissions().last().unwrap().clone();
    assert!(ct.starts_with("multipart/form-data"), "{ct}");
    assert_eq!(fields["prompt"], "a dog");
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_video_that_comes_out_shorter_is_charged_for_what_was_made_and_the_rest_released() {
    let s = setup().await;
    let (status, v) = s
        .create(
            &s.key,
            json!({"model": "sora-short", "prompt": "waves", "seconds": "12"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - 12 * PER_SECOND);
    assert_eq!(s.until_done(&id).await["status"], "completed");
    assert_eq!(s.app.balance(s.user).await, START - 4 * PER_SECOND);
    let rows: Vec<_> = s
        .ledger()
        .await
        .into_iter()
        .filter(|r| r.2.as_deref() == Some(id.as_str()))
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("task_hold".to_owned(), -12 * PER_SECOND),
            ("task_refund".to_owned(), 8 * PER_SECOND)
        ]
    );
    assert_eq!(s.app.generation(&id).await.cost, 4 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_failed_video_costs_nothing_and_says_why() {
    let s = setup().await;
    let (status, v) = s
        .create(
            &s.key,
            json!({"model": "sora-fail", "prompt": "something forbidden"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - 4 * PER_SECOND);
    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "moderation_blocked", "{done}");
    assert_eq!(s.app.balance(s.user).await, START);
    let g = s.app.generation(&id).await;
    assert_eq!(
        (g.status.as_str(), g.finish_reason.as_deref(), g.cost),
        ("error", Some("failed"), 0)
    );
    // No content for a failed video.
    let (status, body) = s.get(&s.key, &format!("/v1/videos/{id}/content")).await;
    assert_eq!(status, 400, "{body}");
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_refused_submission_costs_nothing_and_the_client_gets_the_upstreams_reason() {
    let s = setup().await;
    let (status, body) = s
        .create(
            &s.key,
            json!({"model": "sora-refuse", "prompt": "x", "size": "9x9"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Supported values"),
        "{body}"
    );
    let (status, body) = s
        .create(&s.key, json!({"model": "sora-429", "prompt": "x"}))
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error");
    assert_eq!(s.app.balance(s.user).await, START);
    // Both are recorded as failed tasks, charged nothing.
    let (status, list) = s.get(&s.key, "/v1/videos?order=asc").await;
    assert_eq!(status, 200, "{list}");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{list}");
    assert!(data.iter().all(|v| v["status"] == "failed"), "{list}");
    // Bad input never reaches the upstream, nor holds anything.
    let before = s.sora.submissions().len();
    let (status, body) = s
        .create(&s.key, json!({"model": "sora-2", "seconds": "4"}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s
        .create(
            &s.key,
            json!({"model": "sora-2", "prompt": "x", "seconds": "forever"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(s.sora.submissions().len(), before);
    assert_eq!(s.app.balance(s.user).await, START);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_video_that_costs_more_than_the_balance_is_refused_before_it_is_sent() {
    let s = setup().await;
    let (poor, poor_key) = s.app.customer_with_key("poor", 0.5).await;
    let (status, body) = s
        .create(
            &poor_key,
            json!({"model": "sora-2", "prompt": "x", "seconds": "8"}),
        )
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert!(s.sora.submissions().is_empty());
    assert_eq!(s.app.balance(poor).await, 500_000);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn another_tenant_gets_404_for_a_video_its_content_its_remix_and_its_deletion() {
    let s = setup().await;
    let (_, other_key) = s.app.customer_with_key("neighbour", 10.0).await;
    let (_, v) = s
        .create(&s.key, json!({"prompt": "mine", "seconds": "4"}))
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(s.until_done(&id).await["status"], "completed");
    for path in [
        format!("/v1/videos/{id}"),
        format!("/v1/videos/{id}/content"),
        format!("/v1/generation?id={id}"),
    ] {
        let (status, body) = s.get(&other_key, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let resp = s
        .app
        .http
        .post(format!("{}/v1/videos/{id}/remix", s.app.address))
        .bearer_auth(&other_key)
        .json(&json!({"prompt": "theirs now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = s.delete(&other_key, &id).await;
    assert_eq!(resp.status(), 404);
    let (_, list) = s.get(&other_key, "/v1/videos").await;
    assert_eq!(list["data"], json!([]), "{list}");
    // The owner still has it, whole.
    let (status, _) = s.get(&s.key, &format!("/v1/videos/{id}")).await;
    assert_eq!(status, 200);
    let (status, _) = s.get(&s.key, &format!("/v1/generation?id={id}")).await;
    assert_eq!(status, 200);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn an_open_video_cannot_be_deleted_and_is_still_charged_once_when_it_completes() {
    let s = setup().await;
    let (_, v) = s
        .create(&s.key, json!({"prompt": "not yet", "seconds": "8"}))
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    let resp = s.delete(&s.key, &id).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    assert_eq!(s.until_done(&id).await["status"], "completed");
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    // Once finished it can be, and the charge stands.
    let resp = s.delete(&s.key, &id).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn content_streams_from_the_upstream_with_ranges_and_variants() {
    let s = setup().await;
    let (_, v) = s
        .create(&s.key, json!({"prompt": "bytes", "seconds": "4"}))
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(s.until_done(&id).await["status"], "completed");
    let url = format!("{}/v1/videos/{id}/content", s.app.address);
    let whole = s
        .app
        .http
        .get(&url)
        .bearer_auth(&s.key)
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "video/mp4");
    assert_eq!(whole.headers()["content-length"], "1000");
    assert_eq!(whole.bytes().await.unwrap().to_vec(), content_bytes());
    let part = s
        .app
        .http
        .get(&url)
        .bearer_auth(&s.key)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 100-199/1000");
    assert_eq!(
        part.bytes().await.unwrap().to_vec(),
        content_bytes()[100..200].to_vec()
    );
    let thumb = s
        .app
        .http
        .get(format!("{url}?variant=thumbnail"))
        .bearer_auth(&s.key)
        .send()
        .await
        .unwrap();
    assert_eq!(thumb.headers()["content-type"], "image/webp");
    // Reading content costs nothing more.
    assert_eq!(s.app.balance(s.user).await, START - 4 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_task_and_another_body_is_a_conflict() {
    let s = setup().await;
    let send = |body: Value| {
        s.app
            .http
            .post(format!("{}/v1/videos", s.app.address))
            .bearer_auth(&s.key)
            .header("idempotency-key", "retry-42")
            .json(&body)
            .send()
    };
    let body = json!({"prompt": "once", "seconds": "8"});
    let (a, b) = tokio::join!(send(body.clone()), send(body.clone()));
    let (a, b): (Value, Value) = (
        a.unwrap().json().await.unwrap(),
        b.unwrap().json().await.unwrap(),
    );
    assert_eq!(a["id"], b["id"], "{a} {b}");
    let again: Value = send(body).await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], a["id"]);
    assert_eq!(s.sora.submissions().len(), 1);
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    let other = send(json!({"prompt": "twice", "seconds": "8"}))
        .await
        .unwrap();
    assert_eq!(other.status(), 409);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn an_unknown_upstream_status_keeps_the_task_open_and_uncharged_until_the_upstream_decides() {
    let s = setup().await;
    let (_, v) = s
        .create(&s.key, json!({"model": "sora-odd", "prompt": "odd"}))
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, v) = s.get(&s.key, &format!("/v1/videos/{id}")).await;
        // The SDK's poller only knows four words: an unknown one reads as queued.
        assert_eq!(v["status"], "queued", "{v}");
    }
    assert!(s.sora.polls() >= 2, "polled {} times", s.sora.polls());
    assert_eq!(s.app.balance(s.user).await, START - 4 * PER_SECOND);
    let task = billing::task::find(&s.app.db, &id).await.unwrap().unwrap();
    assert_eq!(
        (task.state.as_str(), task.upstream_status.as_deref()),
        ("queued", Some("rendering_frames"))
    );
    let metrics = s
        .app
        .http
        .get(format!("{}/metrics", s.app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_task_unknown_status_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(counted >= 1, "{metrics}");
    // The console's logs show it as a pending generation, its state as the reason.
    let (status, logs) = s
        .app
        .api("GET", "/api/logs?status=pending", &s.app.root_token, None)
        .await;
    assert_eq!(status, 200, "{logs}");
    let pending: Vec<&Value> = logs["items"].as_array().unwrap().iter().collect();
    assert_eq!(pending.len(), 1, "{logs}");
    assert_eq!(pending[0]["id"], id.as_str());
    assert_eq!(pending[0]["finish_reason"], "queued");
    s.sora.finish_odd_jobs();
    assert_eq!(s.until_done(&id).await["status"], "completed");
    assert_eq!(s.app.balance(s.user).await, START - 4 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn the_background_poller_finishes_a_task_nobody_reads() {
    let s = setup().await;
    let (_, v) = s
        .create(&s.key, json!({"model": "sora-fail", "prompt": "unwatched"}))
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    for _ in 0..100 {
        let task = billing::task::find(&s.app.db, &id).await.unwrap().unwrap();
        if task.state == "failed" {
            assert_eq!(s.app.balance(s.user).await, START);
            s.app.assert_ledger_consistent().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the poller did not finish the task within 10 s");
}

#[tokio::test]
async fn two_instances_reading_and_polling_together_charge_a_task_once() {
    let s = setup().await;
    let other = s.app.second_instance().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let model = if i % 2 == 0 { "sora-2" } else { "sora-fail" };
        let (status, v) = s
            .create(&s.key, json!({"model": model, "prompt": format!("p{i}")}))
            .await;
        assert_eq!(status, 200, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let read = |app: &TestApp, id: String| {
        let req = app
            .http
            .get(format!("{}/v1/videos/{id}", app.address))
            .bearer_auth(&s.key)
            .send();
        async move { req.await.unwrap().json::<Value>().await.unwrap() }
    };
    for _ in 0..40 {
        let reads: Vec<_> = ids
            .iter()
            .flat_map(|id| [read(&s.app, id.clone()), read(&other, id.clone())])
            .collect();
        let seen = futures_util::future::join_all(reads).await;
        if seen
            .iter()
            .all(|v| v["status"] == "completed" || v["status"] == "failed")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two completed at 4 s, two failed: charged 8 s in all, each task's money moved once.
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    for (i, id) in ids.iter().enumerate() {
        let kinds: Vec<String> = s
            .ledger()
            .await
            .into_iter()
            .filter(|r| r.2.as_deref() == Some(id.as_str()))
            .map(|r| r.0)
            .collect();
        let want: Vec<&str> = if i % 2 == 0 {
            vec!["task_hold"]
        } else {
            vec!["task_hold", "task_refund"]
        };
        assert_eq!(kinds, want, "task {id}");
    }
    s.app.assert_ledger_consistent().await;
    other.stop().await;
}

#[tokio::test]
async fn a_remix_goes_to_the_same_upstream_with_the_same_key_and_is_held_like_its_source() {
    let s = setup().await;
    let (_, v) = s
        .create(&s.key, json!({"prompt": "original", "seconds": "8"}))
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    // Not remixable before it is done.
    let early = s
        .app
        .http
        .post(format!("{}/v1/videos/{id}/remix", s.app.address))
        .bearer_auth(&s.key)
        .json(&json!({"prompt": "too soon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 400);
    assert_eq!(s.until_done(&id).await["status"], "completed");
    let resp = s
        .app
        .http
        .post(format!("{}/v1/videos/{id}/remix", s.app.address))
        .bearer_auth(&s.key)
        .json(&json!({"prompt": "now in winter"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let remix: Value = resp.json().await.unwrap();
    assert_eq!(remix["remixed_from_video_id"], id.as_str());
    assert_eq!(remix["seconds"], "8");
    let rid = remix["id"].as_str().unwrap().to_owned();
    assert_eq!(s.until_done(&rid).await["status"], "completed");
    assert_eq!(s.app.balance(s.user).await, START - 16 * PER_SECOND);
    // Deleting: the finished video leaves the owner's list.
    let resp = s.delete(&s.key, &id).await;
    assert_eq!(resp.status(), 200);
    let deleted: Value = resp.json().await.unwrap();
    assert_eq!(
        deleted,
        json!({"id": id, "object": "video.deleted", "deleted": true})
    );
    let (status, _) = s.get(&s.key, &format!("/v1/videos/{id}")).await;
    assert_eq!(status, 404);
    let (_, list) = s.get(&s.key, "/v1/videos").await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![rid.as_str()]);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_webhook_gets_the_finished_video_from_tollgate_and_never_reaches_the_upstream() {
    use std::sync::{Arc, Mutex};
    let app = tollgate_tests::app::spawn_app_with(|c| c.tasks.allow_private_addresses = true).await;
    let sora = MockSora::start().await;
    app.add_channel("sora", &sora.base_url, &["sora-2"], json!({}))
        .await;
    app.set_price_with("sora-2", json!({"per_second": 0.1}))
        .await;
    let (_, key) = app.customer_with_key("hooked", 10.0).await;
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = actix_web::web::Data::new(Arc::clone(&got));
    let (hook_url, handle) = tollgate_tests::mock_server::serve(move |cfg| {
        cfg.app_data(sink.clone()).route(
            "/hook",
            actix_web::web::post().to(
                |sink: actix_web::web::Data<Arc<Mutex<Vec<Value>>>>,
                 body: actix_web::web::Json<Value>| async move {
                    sink.lock().unwrap().push(body.into_inner());
                    actix_web::HttpResponse::NoContent().finish()
                },
            ),
        );
    });
    let resp = app
        .http
        .post(format!("{}/v1/videos", app.address))
        .bearer_auth(&key)
        .json(&json!({"prompt": "call me", "webhook_url": format!("{hook_url}/hook")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, sent) = sora.submissions().last().unwrap().clone();
    assert!(sent.get("webhook_url").is_none(), "{sent}");
    for _ in 0..100 {
        let first = got.lock().unwrap().first().cloned();
        if let Some(v) = first {
            assert_eq!(v["id"], id.as_str());
            assert_eq!(v["status"], "completed");
            assert!(!v.to_string().contains("hook"), "{v}");
            handle.stop(false).await;
            app.assert_ledger_consistent().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the webhook was not called within 10 s");
}

#[tokio::test]
async fn a_webhook_to_an_internal_address_is_refused_before_anything_is_held() {
    let s = setup().await;
    for hook in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/hook",
        "file:///etc/passwd",
    ] {
        let (status, body) = s
            .create(&s.key, json!({"prompt": "x", "webhook_url": hook}))
            .await;
        assert_eq!(status, 400, "{hook}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }
    assert!(s.sora.submissions().is_empty());
    assert_eq!(s.app.balance(s.user).await, START);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_request_that_could_be_read_as_a_longer_or_dearer_video_is_refused_unheld() {
    let s = setup().await;
    // JSON read case-insensitively by some upstreams (Go's decoder).
    let (status, body) = s
        .create(&s.key, json!({"prompt": "x", "Seconds": "12"}))
        .await;
    assert_eq!(status, 400, "{body}");
    // A form whose last `model` part is what a Python upstream reads.
    let form = reqwest::multipart::Form::new()
        .text("model", "sora-2")
        .text("prompt", "x")
        .text("model", "sora-2-pro");
    let resp = s
        .app
        .http
        .post(format!("{}/v1/videos", s.app.address))
        .bearer_auth(&s.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(s.sora.submissions().is_empty());
    assert_eq!(s.app.balance(s.user).await, START);
    // Text commands in the prompt (read by some upstreams) are refused.
    let (status, body) = s
        .create(
            &s.key,
            json!({"prompt": "x --dur 12 --rs 1080p", "seconds": "4"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // The seconds held are the seconds sent, even when the client sent a number.
    let (status, v) = s.create(&s.key, json!({"prompt": "x", "seconds": 8})).await;
    assert_eq!(status, 200, "{v}");
    let (_, sent) = s.sora.submissions().last().unwrap().clone();
    assert_eq!(sent["seconds"], "8");
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_submission_whose_answer_was_lost_is_found_upstream_never_sent_again_and_charged_once() {
    let s = setup().await;
    s.slow_channel().await;
    let (status, v) = s
        .create(
            &s.key,
            json!({"model": "sora-slow-accept", "prompt": "lost in transit"}),
        )
        .await;
    // The upstream took it but its answer came too late: the client gets the task,
    // open, and it is not sent anywhere again.
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "queued", "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(s.app.balance(s.user).await, START - 4 * PER_SECOND);
    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(s.sora.submissions().len(), 1);
    assert_eq!(s.app.balance(s.user).await, START - 4 * PER_SECOND);
    let task = billing::task::find(&s.app.db, &id).await.unwrap().unwrap();
    assert!(task.upstream_task_id.is_some());
    s.app.assert_ledger_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lost_submissions_with_one_prompt_are_linked_to_two_different_videos_by_two_instances()
{
    let s = setup().await;
    s.slow_channel().await;
    let (other_user, other_key) = s.app.customer_with_key("copycat", 10.0).await;
    let second = s.app.second_instance().await;
    let body = json!({"model": "sora-slow-accept", "prompt": "the same words"});
    let ((a, va), (b, vb)) = tokio::join!(s.create(&s.key, body.clone()), async {
        let resp = second
            .http
            .post(format!("{}/v1/videos", second.address))
            .bearer_auth(&other_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap())
    });
    assert_eq!((a, b), (200, 200), "{va} {vb}");
    // Both instances poll both; each lost submission is linked to one video, never
    // both to the same one.
    let ids = [va["id"].as_str().unwrap(), vb["id"].as_str().unwrap()];
    let mut linked = Vec::new();
    for id in ids {
        let mut task = None;
        for _ in 0..100 {
            let t = billing::task::find(&s.app.db, id).await.unwrap().unwrap();
            if t.state == "succeeded" {
                task = Some(t);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let task = task.unwrap_or_else(|| panic!("{id} did not finish"));
        linked.push(task.upstream_task_id.unwrap());
    }
    assert_ne!(linked[0], linked[1]);
    assert_eq!(s.sora.submissions().len(), 2);
    s.app.settled().await;
    assert_eq!(s.app.balance(s.user).await, START - 4 * PER_SECOND);
    assert_eq!(s.app.balance(other_user).await, START - 4 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
    second.stop().await;
}

#[tokio::test]
async fn a_video_model_priced_only_per_image_is_refused_not_served_free() {
    let s = setup().await;
    s.app
        .add_channel("sora-img", &s.sora.base_url, &["sora-img"], json!({}))
        .await;
    s.app
        .set_price_with("sora-img", json!({"per_image": 0.1}))
        .await;
    let (status, body) = s
        .create(&s.key, json!({"model": "sora-img", "prompt": "x"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "model_not_priced");
    assert!(s.sora.submissions().is_empty());
}

#[tokio::test]
async fn polls_that_fail_with_429_and_500_are_retried_and_the_video_is_charged_once() {
    let s = setup().await;
    let (_, v) = s
        .create(
            &s.key,
            json!({"model": "sora-flaky-poll", "prompt": "bumpy road"}),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(s.app.balance(s.user).await, START - 4 * PER_SECOND);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_task_leased_by_a_poller_that_died_is_taken_over_when_its_lease_runs_out_and_settled_once()
 {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    use store::entities::task;
    let s = setup().await;
    let (_, v) = s
        .create(&s.key, json!({"prompt": "orphan", "seconds": "8"}))
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    // A poller of another instance took it and was killed (kill -9) mid-poll: its
    // lease is still there, for a little while.
    task::Entity::update_many()
        .col_expr(
            task::Column::LeaseOwner,
            Expr::value("tasks-killed-instance"),
        )
        .col_expr(
            task::Column::LeaseUntil,
            Expr::value(chrono::Utc::now() + chrono::Duration::milliseconds(1500)),
        )
        .filter(task::Column::Id.eq(id.clone()))
        .exec(&s.app.db)
        .await
        .unwrap();
    // While the dead poller's lease holds, nobody polls it (reads answer from the
    // database).
    let before = s.sora.polls();
    for _ in 0..3 {
        let (_, v) = s.get(&s.key, &format!("/v1/videos/{id}")).await;
        assert_eq!(v["status"], "queued", "{v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(s.sora.polls(), before);
    // Then this instance takes it over and finishes it, charging it once.
    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(s.app.balance(s.user).await, START - 8 * PER_SECOND);
    let rows = s
        .ledger()
        .await
        .into_iter()
        .filter(|r| r.2.as_deref() == Some(id.as_str()))
        .count();
    assert_eq!(rows, 1);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_webhook_that_fails_is_tried_again_from_the_database_until_it_answers() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    let app = tollgate_tests::app::spawn_app_with(|c| c.tasks.allow_private_addresses = true).await;
    let sora = MockSora::start().await;
    app.add_channel("sora", &sora.base_url, &["sora-2"], json!({}))
        .await;
    app.set_price_with("sora-2", json!({"per_second": 0.1}))
        .await;
    let (_, key) = app.customer_with_key("patient", 10.0).await;
    let calls = Arc::new(AtomicU32::new(0));
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    type Seen = (Arc<AtomicU32>, Arc<Mutex<Vec<Value>>>);
    let state = actix_web::web::Data::new((Arc::clone(&calls), Arc::clone(&got)));
    let (hook_url, handle) = tollgate_tests::mock_server::serve(move |cfg| {
        cfg.app_data(state.clone()).route(
            "/hook",
            actix_web::web::post().to(
                |state: actix_web::web::Data<Seen>, body: actix_web::web::Json<Value>| async move {
                    // Down for the first two deliveries.
                    if state.0.fetch_add(1, Ordering::SeqCst) < 2 {
                        return actix_web::HttpResponse::ServiceUnavailable().finish();
                    }
                    state.1.lock().unwrap().push(body.into_inner());
                    actix_web::HttpResponse::Ok().finish()
                },
            ),
        );
    });
    let resp = app
        .http
        .post(format!("{}/v1/videos", app.address))
        .bearer_auth(&key)
        .json(&json!({"prompt": "keep trying", "webhook_url": format!("{hook_url}/hook")}))
        .send()
        .await
        .unwrap();
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..150 {
        let first = got.lock().unwrap().first().cloned();
        if let Some(v) = first {
            assert_eq!(v["id"], id.as_str());
            assert_eq!(calls.load(Ordering::SeqCst), 3);
            // The delivery is recorded once Tollgate has the hook's answer.
            let mut recorded = (0, Some(chrono::Utc::now()));
            for _ in 0..50 {
                let task = billing::task::find(&app.db, &id).await.unwrap().unwrap();
                recorded = (task.hook_attempts, task.hook_next_at);
                if recorded.1.is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(recorded, (3, None));
            // Delivered once: nothing more is sent.
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(calls.load(Ordering::SeqCst), 3);
            handle.stop(false).await;
            app.assert_ledger_consistent().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the webhook was not delivered within 15 s");
}

#[tokio::test]
async fn a_task_that_failed_over_shows_every_upstream_attempt_with_its_state_and_cost_in_the_logs()
{
    let s = setup().await;
    // Tried first, and down (nothing listens there): the submission goes on to the next.
    let dead = s
        .app
        .add_channel(
            "dead-sora",
            "http://127.0.0.1:9",
            &["sora-2"],
            json!({"priority": 10}),
        )
        .await;
    let (status, v) = s
        .create(
            &s.key,
            json!({"prompt": "second time lucky", "seconds": "4"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(s.until_done(&id).await["status"], "completed");
    assert_eq!(s.sora.submissions().len(), 1);
    let (status, log) = s
        .app
        .api("GET", &format!("/api/logs/{id}"), &s.app.root_token, None)
        .await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["status"], "success", "{log}");
    assert_eq!(log["finish_reason"], "succeeded", "{log}");
    assert_eq!(log["total_cost"], 0.4, "{log}");
    let attempts = log["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{log}");
    assert_eq!(attempts[0]["channel_id"], dead, "{log}");
    assert!(attempts[0]["error"].is_string(), "{log}");
    assert_eq!(attempts[1]["status"], 200, "{log}");
    s.app.assert_ledger_consistent().await;
}
