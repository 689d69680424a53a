//! "Fresh snapshots only" (DESIGN.md, Trust rules) end to end: however many catalog
//! reloads race with a key's deletion or disabling, the key is refused within a second
//! and stays refused — a reload that started before the change never installs its
//! older snapshot over a newer one.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use tollgate_tests::{TestApp, spawn_app};

/// Rounds of create → race → check; the race was lost in 14 of 80 trials before.
const ROUNDS: usize = 30;

/// Concurrent `POST /api/cache/refresh` calls fired with each deletion.
const REFRESHES: usize = 6;

/// The status `GET /v1/models` answers for `key` (200 while the key works, 401 after).
async fn models_status(app: &TestApp, key: &str) -> u16 {
    app.http
        .get(format!("{}/v1/models", app.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Changes key `id` as its owner: `DELETE` it, or `PATCH` it disabled.
async fn revoke(app: &TestApp, token: &str, id: i64, delete: bool) {
    let (method, body) = if delete {
        ("DELETE", None)
    } else {
        ("PATCH", Some(json!({"status": "disabled"})))
    };
    let (status, v) = app
        .api(method, &format!("/api/keys/{id}"), token, body)
        .await;
    assert!(status.is_success(), "{method} key {id}: {status} {v}");
}

async fn refresh(app: &TestApp) {
    let (status, v) = app
        .api("POST", "/api/cache/refresh", &app.root_token, None)
        .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_or_disabled_key_stays_refused_however_many_reloads_race_with_the_change() {
    let app = spawn_app().await;
    let (user_id, _) = app.customer_with_key("alice", 1.0).await;
    let token = app.login("alice", "password-123").await;
    for round in 0..ROUNDS {
        let (id, key) = app
            .create_key(&token, json!({"name": format!("k{round}")}))
            .await;
        assert_eq!(models_status(&app, &key).await, 200, "round {round}");

        let delete = round % 2 == 0;
        let refreshes = join_all((0..REFRESHES).map(|_| refresh(&app)));
        tokio::join!(refreshes, revoke(&app, &token, id, delete));

        let deadline = Instant::now() + Duration::from_secs(1);
        while models_status(&app, &key).await != 401 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the {} key still works a second later",
                if delete { "deleted" } else { "disabled" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(
                models_status(&app, &key).await,
                401,
                "round {round}: the key came back"
            );
        }
    }
    // Nothing here moves money: the customer still has exactly its mint.
    app.settled().await;
    assert_eq!(app.balance(user_id).await, 1_000_000);
    assert_eq!(app.ledger(user_id).await.len(), 1);
    app.assert_ledger_consistent().await;
    app.stop().await;
}
