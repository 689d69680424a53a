//! Relay errors exactly as API.md "Relay errors" lists them, each costing nothing.

use serde_json::{Value, json};
use tollgate_tests::{NORMAL_COST, Scenario};

async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    assert!(resp.headers().contains_key("x-generation-id"));
    let v: Value = resp.json().await.unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_problems_answer_401_invalid_api_key_and_say_which() {
    let s = Scenario::start(1.0).await;
    let url = format!("{}/v1/chat/completions", s.app.address);
    let r = s
        .app
        .http
        .post(&url)
        .json(&Scenario::body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 401);
    let (st, code, _) = error_of(
        s.app
            .chat("sk-unknown", Scenario::body("gpt-4o-mini"))
            .await,
    )
    .await;
    assert_eq!((st, code.as_str()), (401, "invalid_api_key"));

    let (k_disabled, key_disabled) = s
        .app
        .create_key(&s.customer_token, json!({"name": "d"}))
        .await;
    s.app
        .api(
            "PATCH",
            &format!("/api/keys/{k_disabled}"),
            &s.customer_token,
            Some(json!({"status": "disabled"})),
        )
        .await;
    let (st, code, msg) = error_of(
        s.app
            .chat(&key_disabled, Scenario::body("gpt-4o-mini"))
            .await,
    )
    .await;
    assert_eq!((st, code.as_str()), (401, "invalid_api_key"));
    assert!(msg.contains("disabled"), "{msg}");

    let (_, key_expired) = s
        .app
        .create_key(
            &s.customer_token,
            json!({"name": "e", "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    let (st, _, msg) = error_of(
        s.app
            .chat(&key_expired, Scenario::body("gpt-4o-mini"))
            .await,
    )
    .await;
    assert_eq!(st, 401);
    assert!(msg.contains("expired"), "{msg}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_is_stopped_at_once() {
    let s = Scenario::start(1.0).await;
    assert_eq!(
        s.app
            .chat(&s.key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );
    s.app
        .api(
            "PATCH",
            &format!("/api/users/{}", s.customer_id),
            &s.app.root_token,
            Some(json!({"status": "disabled"})),
        )
        .await;
    let (st, code, _) = error_of(s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await).await;
    assert_eq!((st, code.as_str()), (403, "user_disabled"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_and_unusable_models_get_their_codes_and_cost_nothing() {
    let s = Scenario::start(1.0).await;
    s.app
        .add_channel("unpriced", &s.mock.base_url, &["no-price"], json!({}))
        .await;
    s.app.set_price("no-channel", 1.0, 1.0).await;
    let (_, only_mini) = s
        .app
        .create_key(
            &s.customer_token,
            json!({"name": "m", "models": ["gpt-4o-mini"]}),
        )
        .await;
    let url = format!("{}/v1/chat/completions", s.app.address);
    let raw = |body: &'static str| {
        s.app
            .http
            .post(&url)
            .bearer_auth(&s.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (st, code, _) = error_of(raw("{not json").await.unwrap()).await;
    assert_eq!((st, code.as_str()), (400, "invalid_request"));
    let (st, _, msg) = error_of(raw(r#"{"messages":[]}"#).await.unwrap()).await;
    assert_eq!(st, 400);
    assert!(msg.contains("'model'"));
    for (key, model, status, code) in [
        (&s.key, "no-price", 403, "model_not_priced"),
        (&s.key, "no-channel", 404, "model_not_found"),
        (&only_mini, "reasoner", 403, "model_not_allowed"),
    ] {
        let (st, c, _) = error_of(s.app.chat(key, Scenario::body(model)).await).await;
        assert_eq!((st, c.as_str()), (status, code), "{model}");
    }
    let big = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let r = s
        .app
        .http
        .post(&url)
        .bearer_auth(&s.key)
        .body(big)
        .send()
        .await
        .unwrap();
    let (st, code, _) = error_of(r).await;
    assert_eq!((st, code.as_str()), (413, "request_too_large"));
    assert!(s.mock.received().is_empty());
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allowlists_rpm_and_credit_limits_are_enforced() {
    let s = Scenario::start(1.0).await;
    let (_, elsewhere) = s
        .app
        .create_key(
            &s.customer_token,
            json!({"name": "ip", "allow_ips": ["10.0.0.0/8"]}),
        )
        .await;
    let (st, code, _) = error_of(s.app.chat(&elsewhere, Scenario::body("gpt-4o-mini")).await).await;
    assert_eq!((st, code.as_str()), (403, "ip_not_allowed"));
    let (_, local) = s
        .app
        .create_key(
            &s.customer_token,
            json!({"name": "ip2", "allow_ips": ["127.0.0.1"]}),
        )
        .await;
    assert_eq!(
        s.app
            .chat(&local, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );

    let (_, slow) = s
        .app
        .create_key(&s.customer_token, json!({"name": "rpm", "rpm": 2}))
        .await;
    assert_eq!(
        s.app
            .chat(&slow, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );
    assert_eq!(
        s.app
            .chat(&slow, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );
    let r = s.app.chat(&slow, Scenario::body("gpt-4o-mini")).await;
    assert!(r.headers().contains_key("retry-after"));
    let (st, code, _) = error_of(r).await;
    assert_eq!((st, code.as_str()), (429, "rate_limited"));

    // A limit of 0.00007 credits = 70 µc: the hold of a max_tokens=30 request (its
    // ~87 bytes of prompt at 0.15 plus 30 × 0.6 = 32 µc) fits twice, not three times
    // (each costs 20 µc).
    let (limited_id, limited) = s
        .app
        .create_key(
            &s.customer_token,
            json!({"name": "cap", "credit_limit": 0.00007}),
        )
        .await;
    let mut body = Scenario::body("gpt-4o-mini");
    body["max_tokens"] = json!(30);
    let mut served = 0;
    for _ in 0..4 {
        let r = s.app.chat(&limited, body.clone()).await;
        match r.status().as_u16() {
            200 => served += 1,
            402 => assert_eq!(error_of(r).await.1, "insufficient_quota"),
            other => panic!("status {other}"),
        }
        s.app.settled().await;
    }
    assert_eq!(served, 2);
    let (_, keys) = s.app.api("GET", "/api/keys", &s.customer_token, None).await;
    let k = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == limited_id)
        .unwrap()
        .clone();
    assert_eq!(k["used"], 0.00004);
    assert_eq!(
        s.app.balance(s.customer_id).await,
        1_000_000 - 5 * NORMAL_COST
    );
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_balance_gets_402_insufficient_quota() {
    let s = Scenario::start(0.0).await;
    let (st, code, _) = error_of(s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await).await;
    assert_eq!((st, code.as_str()), (402, "insufficient_quota"));
    assert!(s.mock.received().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_gives_the_user_and_a_limited_key_their_whole_reservation_back() {
    use billing::wallet::Account;
    let s = Scenario::start(1.0).await;
    let (key_id, key) = s
        .app
        .create_key(
            &s.customer_token,
            json!({"name": "cap", "credit_limit": 0.5}),
        )
        .await;
    let wallet = &s.app.state.wallet;
    let before_user = wallet
        .available(Account::User(s.customer_id))
        .await
        .unwrap();
    let before_key = wallet.available(Account::Key(key_id)).await.unwrap();
    assert_eq!(before_key, Some(500_000));
    for model in ["fail-500", "bad-request"] {
        let r = s.app.chat(&key, Scenario::body(model)).await;
        assert!(r.status().is_client_error() || r.status().is_server_error());
    }
    s.app.settled().await;
    assert_eq!(
        wallet
            .available(Account::User(s.customer_id))
            .await
            .unwrap(),
        before_user
    );
    assert_eq!(
        wallet.available(Account::Key(key_id)).await.unwrap(),
        before_key
    );
    // A served request leaves exactly its cost out of both.
    assert_eq!(
        s.app
            .chat(&key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );
    s.app.settled().await;
    assert_eq!(
        wallet.available(Account::Key(key_id)).await.unwrap(),
        Some(500_000 - NORMAL_COST)
    );
    assert_eq!(
        wallet
            .available(Account::User(s.customer_id))
            .await
            .unwrap(),
        before_user.map(|b| b - NORMAL_COST)
    );
    s.stop().await;
}
