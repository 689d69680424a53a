//! The admin JSON API: authentication, role scoping, credits, keys, channels, pricing.

use serde_json::{Value, json};
use tollgate_tests::{Scenario, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unknown_user_get_the_same_answer_and_repeated_failures_are_limited()
 {
    let app = spawn_app().await;
    let login = |u: &'static str, p: &'static str| {
        let app = &app;
        async move {
            let r = app
                .http
                .post(format!("{}/api/auth/login", app.address))
                .json(&json!({"username": u, "password": p}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s1, b1) = login("root", "wrong-password").await;
    let (s2, b2) = login("nobody", "wrong-password").await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(b1, b2);
    assert_eq!(b1["error"]["code"], "invalid_credentials");
    for _ in 0..8 {
        login("root", "wrong-password").await;
    }
    let (s, b) = login("root", tollgate_tests::app::ROOT_PASSWORD).await;
    assert_eq!(s, 429, "{b}");
    assert_eq!(b["error"]["code"], "rate_limited");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_returns_a_token_that_logout_revokes() {
    let app = spawn_app().await;
    let r = app
        .http
        .post(format!("{}/api/auth/login", app.address))
        .json(&json!({"username": "root", "password": tollgate_tests::app::ROOT_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("HttpOnly")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["user"]["role"], "admin");
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    let token = v["token"].as_str().unwrap().to_owned();
    let (s, me) = app.api("GET", "/api/me", &token, None).await;
    assert_eq!(s, 200);
    assert_eq!(me["username"], "root");
    assert_eq!(me["balance"], 0.0);
    let (s, _) = app.api("POST", "/api/auth/logout", &token, None).await;
    assert_eq!(s, 204);
    let (s, v) = app.api("GET", "/api/me", &token, None).await;
    assert_eq!(s, 401, "{v}");
    let (s, _) = app.api("GET", "/api/me", "not-a-jwt", None).await;
    assert_eq!(s, 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_root_password_a_random_one_is_made_and_no_default_works() {
    let app = tollgate_tests::app::spawn_app_with(|c| c.root_password = None).await;
    for guess in ["", "root", "admin", "password", "123456", "tollgate"] {
        let r = app
            .http
            .post(format!("{}/api/auth/login", app.address))
            .json(&json!({"username": "root", "password": guess}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "password {guess:?} must not work");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resellers_see_only_their_customers_and_others_get_404() {
    let app = spawn_app().await;
    let r1 = app.create_user("reseller1", "reseller").await;
    app.create_user("reseller2", "reseller").await;
    let t1 = app.login("reseller1", "password-123").await;
    let t2 = app.login("reseller2", "password-123").await;
    let (s, c1) = app
        .api(
            "POST",
            "/api/users",
            &t1,
            Some(json!({"username": "cust1", "password": "password-123", "role": "customer"})),
        )
        .await;
    assert_eq!(s, 201, "{c1}");
    assert_eq!(c1["parent_id"], r1);
    let c1 = c1["id"].as_i64().unwrap();
    // A reseller creates customers only.
    let (s, _) = app
        .api(
            "POST",
            "/api/users",
            &t1,
            Some(json!({"username": "x", "password": "password-123", "role": "reseller"})),
        )
        .await;
    assert_eq!(s, 403);
    // The other reseller cannot see, patch, fund or list it.
    for (m, path, body) in [
        ("GET", format!("/api/users/{c1}"), None),
        (
            "PATCH",
            format!("/api/users/{c1}"),
            Some(json!({"status": "disabled"})),
        ),
        (
            "POST",
            format!("/api/users/{c1}/credits"),
            Some(json!({"amount": 1})),
        ),
        ("GET", format!("/api/users/{c1}/transactions"), None),
    ] {
        let (s, v) = app.api(m, &path, &t2, body).await;
        assert_eq!(s, 404, "{m} {path}: {v}");
    }
    let (_, list) = app.api("GET", "/api/users", &t2, None).await;
    assert_eq!(list["total"], 1);
    let (_, list) = app.api("GET", "/api/users", &t1, None).await;
    assert_eq!(list["total"], 2);
    let (_, all) = app
        .api("GET", "/api/users?role=customer", &app.root_token, None)
        .await;
    assert_eq!(all["total"], 1);
    // Duplicate usernames are refused.
    let (s, v) = app
        .api(
            "POST",
            "/api/users",
            &app.root_token,
            Some(json!({"username": "cust1", "password": "password-123", "role": "customer"})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (409, Some("username_taken"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reseller_transfers_move_credits_without_creating_any_and_never_overdraw() {
    let app = spawn_app().await;
    let r = app.create_user("res", "reseller").await;
    app.mint(r, 10.0).await;
    let t = app.login("res", "password-123").await;
    let (_, c) = app
        .api(
            "POST",
            "/api/users",
            &t,
            Some(json!({"username": "cust", "password": "password-123", "role": "customer"})),
        )
        .await;
    let c = c["id"].as_i64().unwrap();
    let (s, v) = app
        .api(
            "POST",
            &format!("/api/users/{c}/credits"),
            &t,
            Some(json!({"amount": 4.25, "note": "march"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["balance"], 4.25);
    assert_eq!(app.balance(r).await, 5_750_000);
    assert_eq!(app.balance(c).await, 4_250_000);
    // More than the reseller has: refused, nothing moves.
    let (s, v) = app
        .api(
            "POST",
            &format!("/api/users/{c}/credits"),
            &t,
            Some(json!({"amount": 6})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (402, Some("insufficient_balance"))
    );
    // Taking back more than the customer has: refused.
    let (s, _) = app
        .api(
            "POST",
            &format!("/api/users/{c}/credits"),
            &t,
            Some(json!({"amount": -5})),
        )
        .await;
    assert_eq!(s, 402);
    let (s, v) = app
        .api(
            "POST",
            &format!("/api/users/{c}/credits"),
            &t,
            Some(json!({"amount": -0.25})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(app.balance(r).await + app.balance(c).await, 10_000_000);
    // An admin cannot remove more than a balance holds either.
    let (s, _) = app
        .api(
            "POST",
            &format!("/api/users/{c}/credits"),
            &app.root_token,
            Some(json!({"amount": -100})),
        )
        .await;
    assert_eq!(s, 402);
    // Customers cannot move credits at all; amounts with 7 decimals are refused.
    let ct = app.login("cust", "password-123").await;
    let (s, _) = app
        .api(
            "POST",
            &format!("/api/users/{c}/credits"),
            &ct,
            Some(json!({"amount": 1})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = app
        .api(
            "POST",
            &format!("/api/users/{c}/credits"),
            &app.root_token,
            Some(json!({"amount": 0.0000001})),
        )
        .await;
    assert_eq!(s, 400);
    let (_, tx) = app
        .api("GET", &format!("/api/users/{c}/transactions"), &ct, None)
        .await;
    let kinds: Vec<&str> = tx["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["transfer_out", "transfer_in"]);
    assert_eq!(tx["items"][1]["note"], "march");
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_shown_once_listed_by_preview_and_stops_working_when_deleted() {
    let s = Scenario::start(1.0).await;
    let (st, list) = s.app.api("GET", "/api/keys", &s.customer_token, None).await;
    assert_eq!(st, 200);
    let item = &list["items"][0];
    assert!(item.get("key").is_none());
    let preview = item["preview"].as_str().unwrap();
    assert!(preview.starts_with(&s.key[..7]) && preview.ends_with(&s.key[s.key.len() - 4..]));
    assert!(!list.to_string().contains(&s.key));
    assert_eq!(
        s.app
            .chat(&s.key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );
    let (st, _) = s
        .app
        .api(
            "DELETE",
            &format!("/api/keys/{}", s.key_id),
            &s.customer_token,
            None,
        )
        .await;
    assert_eq!(st, 204);
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(r.status(), 401);
    // Another customer cannot touch a key it does not own.
    let other = s.app.create_user("mallory", "customer").await;
    let mt = s.app.login("mallory", "password-123").await;
    let (_, k2) = s
        .app
        .create_key(&s.customer_token, json!({"name": "second"}))
        .await;
    let (st, _) = s
        .app
        .api(
            "PATCH",
            &format!("/api/keys/{k2}"),
            &mt,
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .app
        .api(
            "POST",
            "/api/keys",
            &mt,
            Some(json!({"name": "x", "user_id": s.customer_id})),
        )
        .await;
    assert_eq!(st, 404);
    let _ = other;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_keys_are_never_returned_and_only_admins_manage_channels() {
    let s = Scenario::start(1.0).await;
    let (st, list) = s
        .app
        .api("GET", "/api/channels", &s.app.root_token, None)
        .await;
    assert_eq!(st, 200);
    let text = list.to_string();
    assert!(!text.contains("sk-upstream-secret-1234"));
    assert_eq!(list["items"][0]["key_count"], 1);
    assert_eq!(list["items"][0]["keys_preview"][0]["last4"], "1234");
    assert_eq!(list["items"][0]["type"], "openai");
    // Stored encrypted, too.
    let raw = store::entities::channel_key::Entity::find_all_secrets(&s.app.db).await;
    assert!(raw.iter().all(|k| !k.contains("sk-upstream")));
    let (st, _) = s
        .app
        .api("GET", "/api/channels", &s.customer_token, None)
        .await;
    assert_eq!(st, 403);
    let (st, v) = s.app.api("POST", "/api/channels", &s.app.root_token, Some(json!({"name": "x", "type": "openai", "base_url": "ftp://x", "keys": ["k"], "models": ["m"]}))).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = s.app.api("POST", "/api/channels", &s.app.root_token, Some(json!({"name": "x", "type": "openai", "base_url": "http://x.example", "models": ["m"]}))).await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("'keys'"));
    // Disabling the only channel makes the model unavailable at once.
    let (st, _) = s
        .app
        .api(
            "PATCH",
            &format!("/api/channels/{}", s.channel_id),
            &s.app.root_token,
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(st, 200);
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pricing_is_readable_by_everyone_and_changed_only_by_admins() {
    let s = Scenario::start(1.0).await;
    let (st, p) = s
        .app
        .api("GET", "/api/pricing", &s.customer_token, None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(p["models"]["gpt-4o-mini"]["input"], 0.15);
    assert_eq!(p["groups"]["default"], 1.0);
    let (st, _) = s
        .app
        .api(
            "PUT",
            "/api/pricing/models/x",
            &s.customer_token,
            Some(json!({"input": 1})),
        )
        .await;
    assert_eq!(st, 403);
    let (st, v) = s
        .app
        .api(
            "PUT",
            "/api/pricing/groups/default",
            &s.app.root_token,
            Some(json!({"multiplier": 1.5})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // 19.8 µc × 1.5 = 29.7 → 30 µc.
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(r.status(), 200);
    s.app.settled().await;
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000 - 30);
    let (st, _) = s
        .app
        .api(
            "DELETE",
            "/api/pricing/models/gpt-4o-mini",
            &s.app.root_token,
            None,
        )
        .await;
    assert_eq!(st, 204);
    let r = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "model_not_priced"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_with_page_and_per_page() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.create_user(&format!("user{i}"), "customer").await;
    }
    let (s, v) = app
        .api(
            "GET",
            "/api/users?page=2&per_page=2&role=customer",
            &app.root_token,
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["total"], 3);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    for i in 0..3 {
        app.create_key(&app.root_token, json!({"name": format!("k{i}")}))
            .await;
    }
    let (s, v) = app
        .api("GET", "/api/keys?page=1&per_page=2", &app.root_token, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["total"].as_i64(), v["items"].as_array().unwrap().len()),
        (Some(3), 2)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_ends_every_session_opened_before_it() {
    let app = spawn_app().await;
    app.create_user("erin", "customer").await;
    let old = app.login("erin", "password-123").await;
    let other = app.login("erin", "password-123").await;
    let (s, _) = app.api("GET", "/api/me", &other, None).await;
    assert_eq!(s, 200);
    let resp = app
        .http
        .patch(format!("{}/api/me", app.address))
        .bearer_auth(&old)
        .json(&json!({"current_password": "password-123", "password": "a-new-password-9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let fresh = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("tollgate_session="))
        .and_then(|c| c.split(';').next())
        .expect("a fresh session cookie")
        .to_owned();
    // The stolen (or any older) token stops working; the fresh one works.
    for token in [&old, &other] {
        let (s, _) = app.api("GET", "/api/me", token, None).await;
        assert_eq!(s, 401);
    }
    let (s, _) = app.api("GET", "/api/me", &fresh, None).await;
    assert_eq!(s, 200);
    // An admin's reset ends the user's sessions too.
    let again = app.login("erin", "a-new-password-9").await;
    let (id, _) = {
        let (_, me) = app.api("GET", "/api/me", &again, None).await;
        (me["id"].as_i64().unwrap(), ())
    };
    let (s, _) = app
        .api(
            "PATCH",
            &format!("/api/users/{id}"),
            &app.root_token,
            Some(json!({"password": "reset-by-admin-1"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app.api("GET", "/api/me", &again, None).await;
    assert_eq!(s, 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_the_api_on_a_cookie_alone_needs_the_sessions_csrf_header() {
    let app = spawn_app().await;
    let token = app.root_token.clone();
    let refresh = |csrf: Option<String>| {
        let mut req = app
            .http
            .post(format!("{}/api/cache/refresh", app.address))
            .header("cookie", format!("tollgate_session={token}"));
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.send()
    };
    // Another site's form can carry the cookie but not the header.
    let resp = refresh(None).await.unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "csrf_rejected");
    let resp = refresh(Some("0".repeat(32))).await.unwrap();
    assert_eq!(resp.status(), 403);
    let good = admin_web::console::session::csrf_of(&token);
    assert_eq!(refresh(Some(good)).await.unwrap().status(), 200);
    // Reads by cookie, and changes by Bearer, need nothing more.
    let me = app
        .http
        .get(format!("{}/api/me", app.address))
        .header("cookie", format!("tollgate_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let (s, _) = app.api("POST", "/api/cache/refresh", &token, None).await;
    assert_eq!(s, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_current_passwords_on_a_password_change_are_limited_like_logins() {
    let app = spawn_app().await;
    app.create_user("fay", "customer").await;
    let token = app.login("fay", "password-123").await;
    let change = |current: &'static str| {
        let (app, token) = (&app, &token);
        async move {
            let body = json!({"current_password": current, "password": "a-new-password-9"});
            let (s, v) = app.api("PATCH", "/api/me", token, Some(body)).await;
            (s.as_u16(), v)
        }
    };
    for _ in 0..10 {
        let (s, v) = change("a-wrong-guess").await;
        assert_eq!(s, 401, "{v}");
    }
    // The guessing stops, even for the right password, and nothing changed.
    let (s, v) = change("password-123").await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    let (s, _) = app.api("GET", "/api/me", &token, None).await;
    assert_eq!(s, 200);
    app.stop().await;
}
