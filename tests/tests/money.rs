//! Concurrency and money: admission never lets spending exceed a balance, on one
//! instance or several sharing Postgres and Redis.

use serde_json::json;
use tollgate_tests::app::backend_name;
use tollgate_tests::{Scenario, TestApp};

/// Output-only price, so that a request with `max_tokens: 30` reserves exactly what it
/// costs: 30 × 0.6 = 18 µc.
const COST: i64 = 18;

async fn fire(apps: &[&TestApp], key: &str, n: usize) -> (usize, usize) {
    let mut body = tollgate_tests::Scenario::body("gpt-4o-mini");
    body["max_tokens"] = json!(30);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let app = apps[i % apps.len()];
            let (http, url, key, body) = (
                app.http.clone(),
                format!("{}/v1/chat/completions", app.address),
                key.to_owned(),
                body.clone(),
            );
            tokio::spawn(async move {
                http.post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            402 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, refused)
}

async fn fund_exactly(s: &Scenario, requests: i64) {
    s.app.set_price("gpt-4o-mini", 0.0, 0.6).await;
    let (st, v) = s
        .app
        .api(
            "POST",
            &format!("/api/users/{}/credits", s.customer_id),
            &s.app.root_token,
            Some(json!({"amount": (requests * COST) as f64 / 1e6})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_concurrent_requests_against_a_balance_for_twenty_serve_exactly_twenty() {
    let s = Scenario::start(0.0).await;
    fund_exactly(&s, 20).await;
    let (ok, refused) = fire(&[&s.app], &s.key, 60).await;
    assert_eq!((ok, refused), (20, 40));
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, 0);
    let consumed = s
        .app
        .ledger(s.customer_id)
        .await
        .iter()
        .filter(|t| t.kind == "consume")
        .count();
    assert_eq!(consumed, 20);
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_the_store_together_serve_exactly_what_the_balance_covers() {
    let s = Scenario::start(0.0).await;
    fund_exactly(&s, 20).await;
    if !backend_name().ends_with("redis") {
        // Without Redis each instance has its own admission counters, so only one
        // instance may serve a database: this backend checks the single instance.
        let (ok, _) = fire(&[&s.app], &s.key, 60).await;
        assert_eq!(ok, 20);
        s.stop().await;
        return;
    }
    let other = s.app.second_instance().await;
    let (ok, refused) = fire(&[&s.app, &other], &s.key, 60).await;
    assert_eq!((ok, refused), (20, 40));
    other.settled().await;
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, 0);
    s.app.assert_ledger_consistent().await;
    other.stop_gracefully().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_key_credit_limit_takes_effect_at_once_and_keeps_what_was_spent() {
    let s = Scenario::start(1.0).await;
    s.app.set_price("gpt-4o-mini", 0.0, 0.6).await;
    let (key_id, key) = s
        .app
        .create_key(
            &s.customer_token,
            json!({"name": "cap", "credit_limit": 0.000036}),
        )
        .await;
    let (ok, _) = fire(&[&s.app], &key, 4).await;
    assert_eq!(ok, 2);
    s.app.settled().await;
    let (st, _) = s
        .app
        .api(
            "PATCH",
            &format!("/api/keys/{key_id}"),
            &s.customer_token,
            Some(json!({"credit_limit": 0.000072})),
        )
        .await;
    assert_eq!(st, 200);
    let (ok, _) = fire(&[&s.app], &key, 4).await;
    assert_eq!(ok, 2, "36 µc more room is two more requests, not four");
    s.app.settled().await;
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reservations_of_an_instance_that_dies_are_given_back() {
    use billing::wallet::Account;
    let s = Scenario::start(1.0).await;
    if !backend_name().ends_with("redis") {
        // In process, reservations die with the process and a restart rebuilds the
        // counters from the database (the SIGKILL test in crates/gateway covers it).
        s.stop().await;
        return;
    }
    let other = s.app.second_instance().await;
    let user = Account::User(s.customer_id);
    assert_eq!(
        s.app.state.wallet.available(user).await.unwrap(),
        Some(1_000_000)
    );
    // The other instance reserves for a request and then dies without settling it.
    let _hold = other
        .state
        .wallet
        .reserve(s.customer_id, None, 300_000)
        .await
        .unwrap();
    assert_eq!(
        s.app.state.wallet.available(user).await.unwrap(),
        Some(700_000)
    );
    other.state.wallet.stop_heartbeat().await;
    // This instance notices the silence (lease TTL 2 s in tests) and gives it back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    while s.app.state.wallet.available(user).await.unwrap() != Some(1_000_000) {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead instance's hold was not given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    other.stop_gracefully().await;
    s.stop().await;
}
