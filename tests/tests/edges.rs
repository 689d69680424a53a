//! The edges a hostile client pushes on (DESIGN.md "Trust rules", issue 10): login
//! limits under parallel guessing, the client IP behind (and in front of) proxies,
//! bodies that name their model ambiguously, and `count_tokens` under the key's rpm.

use admin_web::client_ip::TrustedProxies;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_tests::app::{ROOT_PASSWORD, TestApp, generation_id, spawn_app_with};
use tollgate_tests::scenario::{INPUT_PRICE, OUTPUT_PRICE};
use tollgate_tests::{MockOpenAi, Scenario};

/// Trusts one network of proxies.
fn trusted(net: &str) -> TrustedProxies {
    TrustedProxies::new(vec![net.parse().unwrap()])
}

/// A gateway that believes `X-Forwarded-For` from loopback (the test client's peer).
async fn behind_trusted_proxy() -> TestApp {
    spawn_app_with(|c| c.trusted_proxies = trusted("127.0.0.1/32")).await
}

/// `POST /api/auth/login`, optionally as forwarded for `xff`: the status.
async fn login_status(app: &TestApp, username: &str, password: &str, xff: Option<&str>) -> u16 {
    let mut req = app
        .http
        .post(format!("{}/api/auth/login", app.address))
        .json(&json!({"username": username, "password": password}));
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status == 429 {
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    }
    status
}

/// How many of `statuses` are 401 and how many 429; nothing else is allowed.
fn tally(statuses: &[u16]) -> (usize, usize) {
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(unauthorized + limited, statuses.len(), "{statuses:?}");
    (unauthorized, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_parallel_wrong_passwords_from_one_ip_get_at_most_ten_evaluated() {
    let app = spawn_app_with(|_| {}).await;

    let guesses = (0..400).map(|i| {
        let app = &app;
        async move { login_status(app, "root", &format!("wrong-{i}"), None).await }
    });
    let statuses = join_all(guesses).await;

    let (unauthorized, limited) = tally(&statuses);
    assert_eq!(unauthorized, 10, "evaluated guesses: {unauthorized}");
    assert_eq!(limited, 390);
    assert_eq!(login_status(&app, "root", ROOT_PASSWORD, None).await, 429);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_usernames_guesses_spread_over_many_ips_stop_at_twenty() {
    let app = behind_trusted_proxy().await;
    app.create_user("carol", "customer").await;

    // 60 guesses at root, each from a client IP of its own.
    let guesses = (0..60).map(|i| {
        let app = &app;
        async move {
            let xff = format!("10.1.{i}.1");
            login_status(app, "root", "wrong-password", Some(&xff)).await
        }
    });
    let statuses = join_all(guesses).await;

    let (unauthorized, limited) = tally(&statuses);
    assert_eq!(unauthorized, 20, "evaluated guesses: {unauthorized}");
    assert_eq!(limited, 40);
    // Root's password from a fresh address is refused too...
    let fresh = Some("10.2.0.1");
    assert_eq!(login_status(&app, "root", ROOT_PASSWORD, fresh).await, 429);
    // ...but root is not locked out where it logged in before (the test's first
    // login came from 127.0.0.1), and other users are not limited by root's count.
    assert_eq!(login_status(&app, "root", ROOT_PASSWORD, None).await, 200);
    assert_eq!(
        login_status(&app, "carol", "password-123", fresh).await,
        200
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_for_from_an_untrusted_peer_passes_no_allowlist_and_dodges_no_login_limit() {
    // Proxies are trusted, but not the test client's loopback address.
    let app = spawn_app_with(|c| c.trusted_proxies = trusted("192.0.2.0/24")).await;
    let mock = MockOpenAi::start().await;
    app.add_channel("mock", &mock.base_url, &["gpt-4o-mini"], json!({}))
        .await;
    app.set_price("gpt-4o-mini", INPUT_PRICE, OUTPUT_PRICE)
        .await;
    let (customer_id, _) = app.customer_with_key("dan", 1.0).await;
    let token = app.login("dan", "password-123").await;
    let (_, key) = app
        .create_key(
            &token,
            json!({"name": "office", "allow_ips": ["10.0.0.0/8"]}),
        )
        .await;

    let resp = app
        .http
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(&key)
        .header("x-forwarded-for", "10.1.2.3")
        .json(&Scenario::body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "ip_not_allowed");
    assert!(mock.received().is_empty());

    for i in 0..10 {
        let xff = format!("10.3.{i}.1");
        assert_eq!(login_status(&app, "dan", "wrong", Some(&xff)).await, 401);
    }
    assert_eq!(
        login_status(&app, "dan", "password-123", Some("10.4.0.1")).await,
        429
    );
    app.settled().await;
    assert_eq!(app.balance(customer_id).await, 1_000_000);
    app.verify_ledger().await;
    mock.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_allowlist_and_the_log_see_the_forwarded_client_ip() {
    let app = behind_trusted_proxy().await;
    let mock = MockOpenAi::start().await;
    app.add_channel("mock", &mock.base_url, &["gpt-4o-mini"], json!({}))
        .await;
    app.set_price("gpt-4o-mini", INPUT_PRICE, OUTPUT_PRICE)
        .await;
    let (_, _) = app.customer_with_key("erin", 1.0).await;
    let token = app.login("erin", "password-123").await;
    let (_, office) = app
        .create_key(
            &token,
            json!({"name": "office", "allow_ips": ["10.0.0.0/8"]}),
        )
        .await;
    let (_, local) = app
        .create_key(&token, json!({"name": "local", "allow_ips": ["127.0.0.1"]}))
        .await;
    let chat = |key: &str, xff: &str| {
        app.http
            .post(format!("{}/v1/chat/completions", app.address))
            .bearer_auth(key)
            .header("x-forwarded-for", xff)
            .json(&Scenario::body("gpt-4o-mini"))
            .send()
    };

    // A spoofed left-most entry is not believed; the proxy's own hop is skipped.
    let resp = chat(&office, "203.0.113.9, 10.1.2.3, 127.0.0.1")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let gen_id = generation_id(&resp);
    let generation = app.wait_generation(&gen_id).await;
    assert_eq!(generation.client_ip.as_deref(), Some("10.1.2.3"));
    let (st, logged) = app
        .api("GET", &format!("/api/logs/{gen_id}"), &token, None)
        .await;
    assert_eq!(st, 200, "{logged}");
    assert_eq!(logged["client_ip"], "10.1.2.3");

    let refused = [(&office, "10.1.2.3, 203.0.113.9"), (&local, "10.1.2.3")];
    for (key, xff) in refused {
        let resp = chat(key, xff).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{xff}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "ip_not_allowed");
    }
    assert_eq!(mock.received().len(), 1);
    app.verify_ledger().await;
    mock.stop().await;
    app.stop().await;
}

/// The status and error code of a relay answer.
async fn status_and_code(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_body_naming_its_model_under_another_case_is_refused_and_not_forwarded() {
    let s = Scenario::start(1.0).await;
    s.app
        .add_channel("big", &s.mock.base_url, &["gpt-4o"], json!({}))
        .await;
    s.app.set_price("gpt-4o", 2.5, 10.0).await;
    let messages = json!([{"role": "user", "content": "Say hello"}]);
    let bodies = [
        json!({"model": "gpt-4o-mini", "Model": "gpt-4o", "messages": messages}),
        json!({"MODEL": "gpt-4o", "model": "gpt-4o-mini", "messages": messages}),
        json!({"Model": "gpt-4o-mini", "messages": messages}),
    ];
    for body in bodies {
        let (status, v) = status_and_code(s.app.chat(&s.key, body.clone()).await).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    assert!(s.mock.received().is_empty(), "{:?}", s.mock.received());
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000);
    assert_eq!(s.app.ledger(s.customer_id).await.len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_naming_its_model_twice_is_refused_on_image_edits_and_transcriptions() {
    let s = Scenario::start(1.0).await;
    let models = ["dall-e-2", "gpt-image-1", "whisper-1", "gpt-4o-transcribe"];
    s.app
        .add_channel("media", &s.mock.base_url, &models, json!({}))
        .await;
    s.app
        .set_price_with("dall-e-2", json!({"per_image": 0.02}))
        .await;
    s.app
        .set_price_with("gpt-image-1", json!({"per_image": 0.04}))
        .await;
    s.app
        .set_price_with("whisper-1", json!({"per_second": 0.0001}))
        .await;
    s.app
        .set_price_with("gpt-4o-transcribe", json!({"per_second": 0.001}))
        .await;
    let file =
        |name: &str| reqwest::multipart::Part::bytes(vec![7u8; 64]).file_name(name.to_owned());
    let forms = [
        (
            "/v1/images/edits",
            reqwest::multipart::Form::new()
                .text("model", "dall-e-2")
                .text("prompt", "a hat")
                .part("image", file("a.png"))
                .text("model", "gpt-image-1"),
        ),
        (
            "/v1/audio/transcriptions",
            reqwest::multipart::Form::new()
                .text("model", "whisper-1")
                .part("file", file("a.mp3"))
                .text("model", "gpt-4o-transcribe"),
        ),
    ];
    for (path, form) in forms {
        let resp = s
            .app
            .http
            .post(format!("{}{path}", s.app.address))
            .bearer_auth(&s.key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let (status, v) = status_and_code(resp).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("model"),
            "{v}"
        );
    }
    assert!(s.mock.received().is_empty(), "{:?}", s.mock.received());
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000);
    assert_eq!(s.app.ledger(s.customer_id).await.len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_endpoints_obey_the_keys_rpm() {
    let s = Scenario::start(1.0).await;
    let (_, key) = s
        .app
        .create_key(&s.customer_token, json!({"name": "rpm", "rpm": 3}))
        .await;
    let anthropic = || {
        s.app
            .http
            .post(format!("{}/v1/messages/count_tokens", s.app.address))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .json(&Scenario::body("gpt-4o-mini"))
            .send()
    };
    let gemini = || {
        s.app
            .http
            .post(format!(
                "{}/v1beta/models/gpt-4o-mini:countTokens",
                s.app.address
            ))
            .header("x-goog-api-key", &key)
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}))
            .send()
    };

    assert_eq!(anthropic().await.unwrap().status(), 200);
    assert_eq!(gemini().await.unwrap().status(), 200);
    assert_eq!(anthropic().await.unwrap().status(), 200);
    for resp in [anthropic().await.unwrap(), gemini().await.unwrap()] {
        assert_eq!(resp.status(), 429);
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            Some("60")
        );
    }
    let (_, v) = status_and_code(anthropic().await.unwrap()).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    let (_, v) = status_and_code(gemini().await.unwrap()).await;
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{v}");
    // The rpm is the key's, shared with the relay itself.
    assert_eq!(
        s.app
            .chat(&key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        429
    );
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_unlocks_a_username_locked_from_every_new_address() {
    let app = behind_trusted_proxy().await;
    for i in 0..20 {
        let xff = format!("10.5.{i}.1");
        assert_eq!(
            login_status(&app, "root", "wrong-password", Some(&xff)).await,
            401
        );
    }
    let fresh = Some("10.6.0.1");
    assert_eq!(login_status(&app, "root", ROOT_PASSWORD, fresh).await, 429);

    // What `gateway login unlock root` runs, with the gateway's own configuration.
    let outcome = gateway::cli::login_unlock(&app.config, "root")
        .await
        .unwrap();

    if app.config.redis_url.is_some() {
        assert_eq!(outcome, gateway::cli::Unlock::Cleared);
        assert_eq!(login_status(&app, "root", ROOT_PASSWORD, fresh).await, 200);
    } else {
        // The counters live in the gateway's process: only a restart clears them.
        assert_eq!(outcome, gateway::cli::Unlock::InProcess);
        assert_eq!(login_status(&app, "root", ROOT_PASSWORD, fresh).await, 429);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_for_with_a_non_ascii_byte_still_names_the_client_behind_the_proxy() {
    let app = behind_trusted_proxy().await;
    let mock = MockOpenAi::start().await;
    app.add_channel("mock", &mock.base_url, &["gpt-4o-mini"], json!({}))
        .await;
    app.set_price("gpt-4o-mini", INPUT_PRICE, OUTPUT_PRICE)
        .await;
    let (_, _) = app.customer_with_key("erin", 1.0).await;
    let token = app.login("erin", "password-123").await;
    let (_, local) = app
        .create_key(&token, json!({"name": "local", "allow_ips": ["127.0.0.1"]}))
        .await;
    // A spoofed left-most hop with a byte that is not ASCII: the rest still counts.
    let xff = reqwest::header::HeaderValue::from_bytes(b"\xff203.0.113.9, 10.1.2.3").unwrap();
    let resp = app
        .http
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(&local)
        .header("x-forwarded-for", xff)
        .json(&Scenario::body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let (status, v) = status_and_code(resp).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "ip_not_allowed");
    assert!(mock.received().is_empty());
    app.verify_ledger().await;
    mock.stop().await;
    app.stop().await;
}
