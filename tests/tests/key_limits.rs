//! Per-key limits beyond rpm (API.md keys: `tpm`, `max_concurrency`): tokens per
//! minute counted at settlement and checked at admission, requests in flight, both
//! refused with `429 rate_limited` and `Retry-After`, both shared by every instance
//! (through Redis when the suite runs on it), and a refused call costs nothing.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_tests::app::TestApp;
use tollgate_tests::{NORMAL_COST, Scenario};

/// The tokens of one normal call (12 prompt + 30 completion).
const CALL_TOKENS: i64 = 42;

/// A second instance on the same database and counters when the suite runs on Redis
/// (in-process counters are one instance's own).
async fn other_instance(s: &Scenario) -> Option<TestApp> {
    match std::env::var("TEST_REDIS_URL") {
        Ok(_) => Some(s.app.second_instance().await),
        Err(_) => None,
    }
}

/// Waits until `app`'s catalog shows the scenario key with `seen` (another instance
/// reloads when told over the bus, a moment after the change).
async fn until_seen(app: &TestApp, key_id: i64, seen: impl Fn(&store::catalog::KeyEntry) -> bool) {
    for _ in 0..200 {
        let snap = app.state.snapshot.load_full();
        if snap
            .catalog
            .keys
            .values()
            .any(|k| k.id == key_id && seen(k))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the key's change did not reach {}", app.address);
}

/// Sets the scenario key's limits.
async fn limit(s: &Scenario, body: Value) {
    let (status, v) = s
        .app
        .api(
            "PATCH",
            &format!("/api/keys/{}", s.key_id),
            &s.customer_token,
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

async fn chat_at(app: &TestApp, key: &str, model: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(key)
        .json(&Scenario::body(model))
        .send()
        .await
        .unwrap()
}

/// A slow stream by `key` at `app`, its first chunk read (it is in flight).
async fn slow_stream(
    app: &TestApp,
    key: &str,
) -> impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin + use<> {
    let stream = app
        .http
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(key)
        .json(&json!({"model": "slow-stream", "stream": true,
            "messages": [{"role": "user", "content": "tick"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    body.next().await.unwrap().unwrap();
    body
}

/// Calls `call` again (a slot's give-back is asynchronous: a moment) until it is
/// served; fails when it never is.
async fn until_served<F, Fut>(call: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let mut status = 0;
    for _ in 0..50 {
        status = call().await;
        if status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("still refused after a second: {status}");
}

/// Waits, when the minute is about to turn, for the next one (a test's calls then
/// fall in one minute window).
async fn a_fresh_minute() {
    let second = chrono::Utc::now().timestamp().rem_euclid(60);
    if second > 45 {
        tokio::time::sleep(Duration::from_secs(u64::try_from(61 - second).unwrap())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_its_tokens_per_minute_is_refused_until_the_minute_turns_on_every_instance() {
    let s = Scenario::start(1.0).await;
    let other = other_instance(&s).await;
    let second = other.as_ref().unwrap_or(&s.app);
    limit(&s, json!({"tpm": 2 * CALL_TOKENS})).await;
    until_seen(second, s.key_id, |k| k.tpm == Some(84)).await;
    a_fresh_minute().await;

    // Two calls fit (the check is on what settled before each), on either instance.
    for app in [&s.app, second] {
        let resp = chat_at(app, &s.key, "gpt-4o-mini").await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        app.settled().await;
    }
    // The minute is spent: refused everywhere, with the seconds left in the minute.
    for app in [second, &s.app] {
        let resp = chat_at(app, &s.key, "gpt-4o-mini").await;
        assert_eq!(resp.status(), 429);
        let wait: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "rate_limited");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("tokens per minute"),
            "{v}"
        );
    }
    s.app.settled().await;
    assert_eq!(
        s.app.balance(s.customer_id).await,
        1_000_000 - 2 * NORMAL_COST,
        "a refused call costs nothing"
    );
    // Lifting the limit lets it through at once.
    limit(&s, json!({"tpm": null})).await;
    assert_eq!(chat_at(&s.app, &s.key, "gpt-4o-mini").await.status(), 200);
    if let Some(o) = other {
        o.stop().await;
    }
    s.stop().await;
}

/// A chat call's status and `Retry-After`, its body read to the end.
async fn answered(app: &TestApp, key: &str, model: &str) -> (u16, Option<String>) {
    let resp = chat_at(app, key, model).await;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    resp.bytes().await.unwrap();
    (status, retry)
}

/// Calls `key` at `app` again and again, one at a time, until it is refused; what it
/// was answered, in order.
async fn until_refused(app: &TestApp, key: &str) -> Vec<(u16, Option<String>)> {
    let mut seen = Vec::new();
    for _ in 0..40 {
        let (status, retry) = answered(app, key, "gpt-4o-mini").await;
        seen.push((status, retry));
        if status != 200 {
            break;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_both_instances_stops_at_the_tokens_per_minute_and_counts_every_token_once() {
    let s = Scenario::start(1.0).await;
    let other = other_instance(&s).await;
    let second = other.as_ref().unwrap_or(&s.app);
    const LIMIT_CALLS: usize = 10;
    const WORKERS: usize = 8;
    limit(&s, json!({"tpm": LIMIT_CALLS as i64 * CALL_TOKENS})).await;
    until_seen(second, s.key_id, |k| k.tpm == Some(420)).await;
    a_fresh_minute().await;
    let (window, _) = relay_core::limits::tpm_window(s.key_id, chrono::Utc::now().timestamp());

    // Eight clients at once, half on each instance, each calling until refused.
    let key = &s.key;
    let workers =
        (0..WORKERS).map(|i| until_refused(if i % 2 == 0 { &s.app } else { second }, key));
    let seen: Vec<_> = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let served = seen.iter().filter(|(st, _)| *st == 200).count();
    let refused: Vec<_> = seen.iter().filter(|(st, _)| *st != 200).collect();
    // Every client ended refused, as rate_limited with the seconds left in the minute.
    assert_eq!(refused.len(), WORKERS, "{seen:?}");
    for (status, retry) in &refused {
        assert_eq!(*status, 429);
        let wait: u64 = retry.as_deref().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
    }
    // Nothing is refused before the minute is spent; past it, only what was already
    // admitted when the last tokens were counted (counted at settlement: a request in
    // flight, or one whose count was a moment behind its answer, per client).
    assert!(served >= LIMIT_CALLS, "refused early: {served} served");
    assert!(served <= LIMIT_CALLS + 2 * WORKERS, "{served} served");
    s.app.settled().await;
    second.settled().await;
    // Every served token counted once in the shared minute, whichever instance served it.
    assert_eq!(
        s.app.state.shared.count(&window).await.unwrap(),
        served as i64 * CALL_TOKENS
    );
    assert_eq!(
        second.state.shared.count(&window).await.unwrap(),
        served as i64 * CALL_TOKENS
    );
    // The minute is spent for both instances, and the refused calls cost nothing.
    for app in [&s.app, second] {
        assert_eq!(chat_at(app, &s.key, "gpt-4o-mini").await.status(), 429);
    }
    assert_eq!(
        s.app.balance(s.customer_id).await,
        1_000_000 - served as i64 * NORMAL_COST
    );
    s.app.assert_ledger_consistent().await;
    if let Some(o) = other {
        o.stop().await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_runs_at_most_its_max_concurrency_requests_at_once_across_instances() {
    let s = Scenario::start(1.0).await;
    let other = other_instance(&s).await;
    let second = other.as_ref().unwrap_or(&s.app);
    limit(&s, json!({"max_concurrency": 2})).await;
    until_seen(second, s.key_id, |k| k.max_concurrency == Some(2)).await;

    // Six slow calls (3 s each) at once, split across the instances: two run.
    let key = &s.key;
    let calls = (0..6).map(|i| {
        let app = if i % 2 == 0 { &s.app } else { second };
        answered(app, key, "slow")
    });
    let results = futures_util::future::join_all(calls).await;
    let served = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(served, 2, "{results:?}");
    assert_eq!(refused.len(), 4, "{results:?}");
    assert!(refused.iter().all(|(_, r)| r.as_deref() == Some("1")));

    // A stream holds its slot until it ends.
    limit(&s, json!({"max_concurrency": 1})).await;
    until_seen(second, s.key_id, |k| k.max_concurrency == Some(1)).await;
    let mut body = slow_stream(&s.app, &s.key).await;
    assert_eq!(chat_at(second, &s.key, "gpt-4o-mini").await.status(), 429);
    while let Some(chunk) = body.next().await {
        chunk.unwrap();
    }
    // Given back when it ended (the release is asynchronous: a moment).
    until_served(|| async {
        chat_at(second, &s.key, "gpt-4o-mini")
            .await
            .status()
            .as_u16()
    })
    .await;
    s.app.settled().await;
    second.settled().await;
    s.app.assert_ledger_consistent().await;
    if let Some(o) = other {
        o.stop().await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_limits_are_set_shown_and_checked_through_the_api() {
    let s = Scenario::start(1.0).await;
    let (status, v) = s
        .app
        .api(
            "POST",
            "/api/keys",
            &s.customer_token,
            Some(json!({"name": "limited", "tpm": 1000, "max_concurrency": 3})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["tpm"].clone(), v["max_concurrency"].clone()),
        (json!(1000), json!(3))
    );
    for bad in [
        json!({"tpm": 0}),
        json!({"max_concurrency": -1}),
        json!({"tpm": "many"}),
    ] {
        let (status, v) = s
            .app
            .api(
                "PATCH",
                &format!("/api/keys/{}", v["id"]),
                &s.customer_token,
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
    let (_, list) = s.app.api("GET", "/api/keys", &s.customer_token, None).await;
    let shown = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "limited")
        .unwrap()
        .clone();
    assert_eq!(
        (shown["tpm"].clone(), shown["max_concurrency"].clone()),
        (json!(1000), json!(3))
    );
    // In the console too.
    let console = s.app.console("alice", "password-123").await;
    let page = console.get(&format!("/console/keys/{}", v["id"])).await;
    assert!(
        page.body.contains(r#"name="tpm""#) && page.body.contains(r#"value="1000""#),
        "{}",
        page.body
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_submission_is_refused_over_the_keys_tokens_per_minute_or_concurrency_and_holds_nothing()
 {
    let s = Scenario::start(10.0).await;
    let sora = tollgate_tests::mock_sora::MockSora::start().await;
    s.app
        .add_channel("sora", &sora.base_url, &["sora-2"], json!({}))
        .await;
    s.app
        .set_price_with("sora-2", json!({"per_second": 0.1}))
        .await;
    let submit = || async {
        let resp = s
            .app
            .http
            .post(format!("{}/v1/videos", s.app.address))
            .bearer_auth(&s.key)
            .json(&json!({"model": "sora-2", "prompt": "a lighthouse", "seconds": "4"}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry = resp.headers().contains_key("retry-after");
        let v: Value = resp.json().await.unwrap();
        (status, retry, v)
    };
    let start = s.app.balance(s.customer_id).await;

    // The minute's tokens spent by a chat: no video either.
    limit(&s, json!({"tpm": CALL_TOKENS})).await;
    a_fresh_minute().await;
    chat_at(&s.app, &s.key, "gpt-4o-mini")
        .await
        .bytes()
        .await
        .unwrap();
    s.app.settled().await;
    let (status, retry, v) = submit().await;
    assert_eq!((status, retry), (429, true), "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");

    // Its one slot taken by a stream: no video while the stream runs.
    limit(&s, json!({"tpm": null, "max_concurrency": 1})).await;
    let mut body = slow_stream(&s.app, &s.key).await;
    let (status, retry, v) = submit().await;
    assert_eq!((status, retry), (429, true), "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    while let Some(chunk) = body.next().await {
        chunk.unwrap();
    }
    s.app.settled().await;
    // Nothing held or charged for the refused submissions: only the two chats.
    let chats = s.app.balance(s.customer_id).await;
    assert!(start - chats < 1_000, "{start} → {chats}");
    // Once the stream is over, the slot is the video's; a submission gives it back
    // once the upstream has answered (a moment after: the release is asynchronous),
    // so submissions one after another are each taken.
    for _ in 0..3 {
        until_served(|| async { submit().await.0 }).await;
    }
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}
