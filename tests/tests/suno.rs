//! Suno end to end: the Suno shape (`/suno/...`) served by a `suno` channel (a mock
//! Suno API server), with the money: `suno_music` / `suno_lyrics` per task, charged
//! once on success, nothing on a refusal or a failure; clip files streamed through
//! signed Tollgate URLs; tasks invisible to other tenants; polling batched.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::app::{TestApp, spawn_app_with};
use tollgate_tests::mock_sora::content_bytes;
use tollgate_tests::mock_suno::{KEY, MockSuno};

const START: i64 = 10_000_000;
const MUSIC: i64 = 300_000;
const LYRICS: i64 = 10_000;

struct Setup {
    app: TestApp,
    suno: MockSuno,
    user: i64,
    key: String,
}

async fn setup() -> Setup {
    let app = spawn_app_with(|c| c.tasks.allow_private_addresses = true).await;
    let suno = MockSuno::start().await;
    let (status, v) = app
        .api(
            "POST",
            "/api/channels",
            &app.root_token,
            Some(
                json!({"name": "suno", "type": "suno", "base_url": suno.base_url,
                "keys": [KEY], "models": ["suno_music", "suno_lyrics"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    app.set_price_with("suno_music", json!({"per_request": 0.3}))
        .await;
    app.set_price_with("suno_lyrics", json!({"per_request": 0.01}))
        .await;
    let (user, key) = app.customer_with_key("composer", 10.0).await;
    Setup {
        app,
        suno,
        user,
        key,
    }
}

impl Setup {
    async fn call_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
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

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.key, method, path, body).await
    }

    async fn submit(&self, action: &str, body: Value) -> String {
        let (status, v) = self
            .call("POST", &format!("/suno/submit/{action}"), Some(body))
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["code"], "success", "{v}");
        v["data"].as_str().unwrap().to_owned()
    }

    async fn until_done(&self, id: &str) -> Value {
        for _ in 0..100 {
            let (status, v) = self.call("GET", &format!("/suno/fetch/{id}"), None).await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["code"], "success", "{v}");
            if matches!(v["data"]["status"].as_str(), Some("SUCCESS" | "FAILURE")) {
                return v["data"].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("task {id} did not finish within 10 s");
    }
}

#[tokio::test]
async fn a_song_is_charged_once_and_its_clips_stream_from_signed_tollgate_urls() {
    let s = setup().await;
    let id = s
        .submit(
            "music",
            json!({"gpt_description_prompt": "a happy song about weekends", "mv": "chirp-v3-5",
                "make_instrumental": false, "notify_hook": "https://hooks.example.com/suno"}),
        )
        .await;
    assert!(id.starts_with("task_"), "{id}");
    let (action, sent) = s.suno.submissions().last().unwrap().clone();
    assert_eq!(action, "MUSIC");
    assert_eq!(sent["mv"], "chirp-v3-5");
    assert!(sent.get("notify_hook").is_none(), "{sent}");
    assert_eq!(s.app.balance(s.user).await, START - MUSIC);

    let done = s.until_done(&id).await;
    assert_eq!(done["task_id"], id.as_str());
    assert_eq!(done["action"], "MUSIC");
    assert_eq!(done["progress"], "100%");
    assert_eq!(done["fail_reason"], "");
    assert!(done["finish_time"].as_i64().unwrap() >= done["submit_time"].as_i64().unwrap());
    let clips = done["data"].as_array().unwrap();
    assert_eq!(clips.len(), 2, "{done}");
    assert!(!done.to_string().contains(&s.suno.base_url), "{done}");
    assert!(clips[0].get("user_id").is_none(), "{done}");
    assert_eq!(clips[0]["metadata"]["duration"], 128.92);
    for clip in clips {
        for field in ["audio_url", "video_url", "image_url", "image_large_url"] {
            let url = clip[field].as_str().unwrap();
            assert!(
                url.starts_with(&format!("{}/v1/tasks/{id}/content?", s.app.address)),
                "{field}: {url}"
            );
        }
    }
    let audio = reqwest::get(clips[1]["audio_url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(audio.status(), 200);
    assert_eq!(audio.headers()["content-type"], "audio/mpeg");
    assert_eq!(audio.bytes().await.unwrap().to_vec(), content_bytes());
    let cover = reqwest::get(clips[0]["image_url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(cover.headers()["content-type"], "image/jpeg");
    let part = s
        .app
        .http
        .get(clips[0]["video_url"].as_str().unwrap())
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-type"], "video/mp4");
    assert_eq!(
        part.bytes().await.unwrap().to_vec(),
        content_bytes()[10..20]
    );
    assert_eq!(s.app.balance(s.user).await, START - MUSIC);
    let g = s.app.generation(&id).await;
    assert_eq!((g.model.as_str(), g.cost), ("suno_music", MUSIC));
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn lyrics_are_charged_at_their_own_price_and_read_as_text() {
    let s = setup().await;
    let id = s
        .submit("lyrics", json!({"prompt": "a cat rock song"}))
        .await;
    let done = s.until_done(&id).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["action"], "LYRICS");
    assert!(
        done["data"]["text"].as_str().unwrap().contains("[Verse]"),
        "{done}"
    );
    assert_eq!(done["data"]["title"], "喵星摇滚");
    assert_eq!(
        done["data"]["id"],
        id.as_str(),
        "the upstream's id never shows"
    );
    assert_eq!(s.app.balance(s.user).await, START - LYRICS);
    let (status, v) = s.call("POST", "/suno/submit/lyrics", Some(json!({}))).await;
    assert_eq!(
        (status, v["code"].clone()),
        (400, json!("invalid_request")),
        "{v}"
    );
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_refused_failed_or_empty_song_costs_nothing() {
    let s = setup().await;
    let (status, v) = s
        .call(
            "POST",
            "/suno/submit/music",
            Some(json!({"prompt": "please refuse this"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["data"], Value::Null);
    assert_eq!(v["message"], "prompt contains banned words");
    let failed = s
        .submit("music", json!({"prompt": "x", "mv": "chirp-fail"}))
        .await;
    let empty = s
        .submit("music", json!({"prompt": "x", "mv": "chirp-empty"}))
        .await;
    let done = s.until_done(&failed).await;
    assert_eq!(done["status"], "FAILURE");
    assert_eq!(
        done["fail_reason"],
        "Unable to generate: the prompt breaks our policy"
    );
    assert_eq!(done["data"], Value::Null);
    assert_eq!(s.until_done(&empty).await["status"], "FAILURE");
    assert_eq!(s.app.balance(s.user).await, START);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn an_unknown_suno_status_keeps_the_song_open_and_held() {
    let s = setup().await;
    let id = s
        .submit("music", json!({"prompt": "x", "mv": "chirp-weird"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, v) = s.call("GET", &format!("/suno/fetch/{id}"), None).await;
    assert!(
        matches!(
            v["data"]["status"].as_str(),
            Some("SUBMITTED" | "NOT_START" | "IN_PROGRESS")
        ),
        "{v}"
    );
    assert_eq!(s.app.balance(s.user).await, START - MUSIC);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn a_continuation_goes_to_the_songs_own_upstream_and_only_for_its_owner() {
    let s = setup().await;
    let first = s.submit("music", json!({"prompt": "[Verse] one"})).await;
    let done = s.until_done(&first).await;
    let clip = done["data"][0]["id"].as_str().unwrap().to_owned();
    let (_, other) = s.app.customer_with_key("other-band", 1.0).await;
    let (status, v) = s
        .call_as(&other, "POST", "/suno/submit/music",
            Some(json!({"prompt": "[Verse] two", "task_id": first, "continue_clip_id": clip, "continue_at": 60})))
        .await;
    assert_eq!(
        (status, v["code"].clone()),
        (404, json!("task_not_exist")),
        "{v}"
    );
    let (status, _) = s
        .call("POST", "/suno/submit/music",
            Some(json!({"prompt": "[Verse] two", "task_id": first, "continue_clip_id": "not-a-clip"})))
        .await;
    assert_eq!(status, 400);
    let second = s
        .submit("music", json!({"prompt": "[Verse] two", "task_id": first, "continue_clip_id": clip, "continue_at": 60}))
        .await;
    let (_, sent) = s.suno.submissions().last().unwrap().clone();
    assert!(
        !sent["task_id"].as_str().unwrap().starts_with("task_"),
        "{sent}"
    );
    assert_eq!(sent["continue_clip_id"], clip.as_str());
    assert_eq!(sent["continue_at"], 60);
    assert_eq!(s.until_done(&second).await["status"], "SUCCESS");
    assert_eq!(s.app.balance(s.user).await, START - 2 * MUSIC);
    // Others see none of it, one by one or in a batch.
    let (status, _) = s
        .call_as(&other, "GET", &format!("/suno/fetch/{first}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, v) = s
        .call_as(
            &other,
            "POST",
            "/suno/fetch",
            Some(json!({"ids": [first, second]})),
        )
        .await;
    assert_eq!((status, v["data"].clone()), (200, json!([])));
    let (_, mine) = s
        .call(
            "POST",
            "/suno/fetch",
            Some(json!({"ids": [first, second, "task_nope"]})),
        )
        .await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 2, "{mine}");
    s.app.assert_ledger_consistent().await;
}

#[tokio::test]
async fn many_open_songs_are_polled_in_batches() {
    let s = setup().await;
    let n = 60;
    s.app.mint(s.user, 20.0).await;
    let ids: Vec<String> = futures_util::future::join_all(
        (0..n).map(|i| s.submit("music", json!({"prompt": format!("song {i}")}))),
    )
    .await;
    for _ in 0..200 {
        let (_, v) = s
            .call("POST", "/suno/fetch", Some(json!({"ids": ids})))
            .await;
        if v["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "SUCCESS")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, v) = s
        .call("POST", "/suno/fetch", Some(json!({"ids": ids})))
        .await;
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "SUCCESS"),
        "{v}"
    );
    assert_eq!(s.suno.fetches(), 0, "no song was polled on its own");
    let batches = s.suno.batches();
    assert!(
        batches.len() * 4 <= n,
        "{} batch calls: {batches:?}",
        batches.len()
    );
    assert_eq!(
        s.app.balance(s.user).await,
        START + 20_000_000 - n as i64 * MUSIC
    );
    s.app.assert_ledger_consistent().await;
}
