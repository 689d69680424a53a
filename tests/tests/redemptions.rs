//! Redemption codes: admins mint, resellers prepay, a code credits exactly once (even
//! under concurrent use), and a code is shown only in its creation answer.

use std::sync::Arc;

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use store::entities::{redemption_code, transaction};
use tollgate_tests::{TestApp, spawn_app};

/// Creates a batch as `token`'s user; returns the status and the body.
async fn create_codes(app: &TestApp, token: &str, amount: f64, count: i64) -> (u16, Value) {
    let (s, v) = app
        .api(
            "POST",
            "/api/redemptions",
            token,
            Some(json!({"name": "spring promo", "amount": amount, "count": count})),
        )
        .await;
    (s.as_u16(), v)
}

/// The codes of a `201` creation answer.
fn codes_of(v: &Value) -> Vec<String> {
    v["codes"]
        .as_array()
        .unwrap_or_else(|| panic!("no codes in {v}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

async fn redeem(app: &TestApp, token: &str, code: &str) -> (u16, Value) {
    let (s, v) = app
        .api("POST", "/api/redeem", token, Some(json!({"code": code})))
        .await;
    (s.as_u16(), v)
}

/// Creates a user as root and logs it in.
async fn user(app: &TestApp, name: &str, role: &str) -> (i64, String) {
    let id = app.create_user(name, role).await;
    (id, app.login(name, "password-123").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeemed_code_adds_exactly_its_amount_once_and_then_shows_as_used() {
    // Arrange
    let app = spawn_app().await;
    let (alice, alice_token) = user(&app, "alice", "customer").await;
    app.mint(alice, 1.0).await;
    let (s, v) = create_codes(&app, &app.root_token, 2.5, 3).await;
    assert_eq!(s, 201, "{v}");
    let codes = codes_of(&v);
    assert_eq!(codes.len(), 3);
    assert!(codes.iter().all(|c| c.starts_with("tg-") && c.len() == 35));

    // Act
    let (s, v) = redeem(&app, &alice_token, &codes[1]).await;

    // Assert
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["balance"].as_f64(), v["amount"].as_f64()),
        (Some(3.5), Some(2.5))
    );
    assert_eq!(app.balance(alice).await, 3_500_000);
    let last = app.ledger(alice).await.pop().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.amount, last.balance_after),
        ("redeem", 2_500_000, 3_500_000)
    );
    let (s, list) = app
        .api("GET", "/api/redemptions", &app.root_token, None)
        .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["total"], 3);
    let items = list["items"].as_array().unwrap();
    let used: Vec<&Value> = items.iter().filter(|i| i["status"] == "used").collect();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["used_by"], alice);
    assert_eq!(used[0]["amount"], 2.5);
    assert!(used[0]["used_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(items.iter().filter(|i| i["status"] == "unused").count(), 2);
    // A second use, of the same code or of nonsense, is refused and changes nothing.
    for code in [codes[1].as_str(), "tg-not-a-code"] {
        let (s, v) = redeem(&app, &alice_token, code).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("invalid_code")),
            "{v}"
        );
    }
    assert_eq!(app.balance(alice).await, 3_500_000);
    // Customers neither see nor make codes.
    let (s, _) = app.api("GET", "/api/redemptions", &alice_token, None).await;
    assert_eq!(s, 403);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_redemptions_of_one_code_credit_exactly_once() {
    // Arrange: one code, ten customers ready to race for it.
    let app = spawn_app().await;
    let (s, v) = create_codes(&app, &app.root_token, 5.0, 1).await;
    assert_eq!(s, 201, "{v}");
    let code = codes_of(&v).remove(0);
    let mut customers = Vec::new();
    for i in 0..10 {
        customers.push(user(&app, &format!("racer{i}"), "customer").await);
    }
    let start = Arc::new(tokio::sync::Barrier::new(customers.len()));

    // Act
    let tasks: Vec<_> = customers
        .iter()
        .map(|(_, token)| {
            let (http, url, token, code) = (
                app.http.clone(),
                format!("{}/api/redeem", app.address),
                token.clone(),
                code.clone(),
            );
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                let r = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"code": code}))
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }

    // Assert
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 404).count(),
        9,
        "{statuses:?}"
    );
    let mut total = 0;
    for (id, _) in &customers {
        total += app.balance(*id).await;
    }
    assert_eq!(total, 5_000_000);
    let credits = transaction::Entity::find()
        .filter(transaction::Column::Kind.eq("redeem"))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(credits, 1);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resellers_codes_are_paid_up_front_and_listed_only_to_it() {
    // Arrange
    let app = spawn_app().await;
    let (reseller, reseller_token) = user(&app, "res", "reseller").await;
    let (_, other_token) = user(&app, "res2", "reseller").await;
    let (customer, customer_token) = user(&app, "cust", "customer").await;
    app.mint(reseller, 10.0).await;

    // Act: 2 × 3 credits fit in 10; 2 more do not fit in what is left.
    let (s, v) = create_codes(&app, &reseller_token, 3.0, 2).await;
    assert_eq!(s, 201, "{v}");
    let codes = codes_of(&v);
    let (short, refused) = create_codes(&app, &reseller_token, 3.0, 2).await;

    // Assert
    assert_eq!(app.balance(reseller).await, 4_000_000);
    let ledger = app.ledger(reseller).await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(
        (ledger[1].kind.as_str(), ledger[1].amount),
        ("transfer_out", -6_000_000)
    );
    assert_eq!(
        (short, refused["error"]["code"].as_str()),
        (402, Some("insufficient_balance"))
    );
    let stored = redemption_code::Entity::find()
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 2, "a refused batch creates nothing");
    // Scoping: the reseller lists its own codes only; another reseller sees none.
    let (s, _) = create_codes(&app, &app.root_token, 1.0, 1).await;
    assert_eq!(s, 201);
    let (_, mine) = app
        .api("GET", "/api/redemptions", &reseller_token, None)
        .await;
    assert_eq!(mine["total"], 2, "{mine}");
    assert!(
        mine["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["created_by"] == reseller)
    );
    let (_, theirs) = app.api("GET", "/api/redemptions", &other_token, None).await;
    assert_eq!(theirs["total"], 0);
    let (_, all) = app
        .api("GET", "/api/redemptions", &app.root_token, None)
        .await;
    assert_eq!(all["total"], 3);
    // A customer cannot make codes.
    let (s, v) = create_codes(&app, &customer_token, 1.0, 1).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    // Redeeming a prepaid code moves credits already paid for; it creates none.
    let (s, v) = redeem(&app, &customer_token, &codes[0]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(app.balance(customer).await, 3_000_000);
    assert_eq!(app.balance(reseller).await, 4_000_000);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_outside_the_limits_are_refused_and_the_largest_one_is_accepted() {
    let app = spawn_app().await;
    let long_name = "x".repeat(65);
    for body in [
        json!({"name": "a", "amount": 1, "count": 0}),
        json!({"name": "a", "amount": 1, "count": 1001}),
        json!({"name": "a", "amount": 0, "count": 1}),
        json!({"name": "a", "amount": -1, "count": 1}),
        json!({"name": "a", "amount": 0.0000001, "count": 1}),
        json!({"name": " ", "amount": 1, "count": 1}),
        json!({"name": long_name, "amount": 1, "count": 1}),
    ] {
        let (s, v) = app
            .api(
                "POST",
                "/api/redemptions",
                &app.root_token,
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, 400, "{body}: {v}");
    }
    let stored = redemption_code::Entity::find()
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    let (s, v) = create_codes(&app, &app.root_token, 0.000001, 1000).await;
    assert_eq!(s, 201);
    let mut codes = codes_of(&v);
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 1000);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_appear_only_in_the_creation_answer_and_are_stored_as_hashes() {
    let app = spawn_app().await;
    let (alice, alice_token) = user(&app, "alice", "customer").await;
    let (_, v) = create_codes(&app, &app.root_token, 1.0, 3).await;
    let codes = codes_of(&v);
    let (s, _) = redeem(&app, &alice_token, &codes[0]).await;
    assert_eq!(s, 200);

    let (_, list) = app
        .api("GET", "/api/redemptions", &app.root_token, None)
        .await;
    let (_, paged) = app
        .api(
            "GET",
            "/api/redemptions?page=2&per_page=1",
            &app.root_token,
            None,
        )
        .await;
    let (_, ledger) = app
        .api(
            "GET",
            &format!("/api/users/{alice}/transactions"),
            &alice_token,
            None,
        )
        .await;

    assert_eq!(
        (
            paged["total"].as_u64(),
            paged["items"].as_array().map(Vec::len)
        ),
        (Some(3), Some(1))
    );
    for shown in [&list, &paged, &ledger] {
        let text = shown.to_string();
        assert!(codes.iter().all(|c| !text.contains(c.as_str())), "{text}");
        assert!(!text.contains("code_hash"));
    }
    let stored = redemption_code::Entity::find().all(&app.db).await.unwrap();
    for code in &codes {
        assert!(stored.iter().all(|r| r.code_hash != *code));
        assert!(
            stored
                .iter()
                .any(|r| r.code_hash == store::hash_secret(code))
        );
    }
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_redemptions_are_rate_limited_per_user() {
    let app = spawn_app().await;
    let (_, mallory) = user(&app, "mallory", "customer").await;
    let (_, alice) = user(&app, "alice", "customer").await;
    let (_, v) = create_codes(&app, &app.root_token, 1.0, 2).await;
    let codes = codes_of(&v);
    for i in 0..20 {
        let (s, _) = redeem(&app, &mallory, &format!("tg-guess{i}")).await;
        assert_eq!(s, 404);
    }

    let (s, v) = redeem(&app, &mallory, &codes[0]).await;
    let (other, _) = redeem(&app, &alice, &codes[1]).await;

    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(other, 200, "another user is not limited");
    app.assert_ledger_consistent().await;
    app.stop().await;
}
