//! The console's pages over plain HTTP (no JavaScript): status of every page, scoping
//! identical to the JSON API, CSRF rejection, validation errors next to their field,
//! security headers, and the things the console must never show.

use serde_json::json;
use tollgate_tests::app::ROOT_PASSWORD;
use tollgate_tests::console::{console_login, no_redirects};
use tollgate_tests::{NORMAL_COST, Scenario, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_redirects_to_the_console_and_the_console_to_its_login_page() {
    let app = spawn_app().await;
    let http = no_redirects();

    let root = http.get(format!("{}/", app.address)).send().await.unwrap();
    let console = http
        .get(format!("{}/console/keys", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(root.status(), 303);
    assert_eq!(root.headers()["location"], "/console");
    assert_eq!(console.status(), 303);
    assert_eq!(console.headers()["location"], "/console/login");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_and_assets_carry_the_security_headers() {
    let app = spawn_app().await;
    let root = app.console("root", ROOT_PASSWORD).await;

    for path in [
        "/console",
        "/console/login",
        "/static/console.css",
        "/console/nowhere",
    ] {
        let p = root.get(path).await;
        let csp = p.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(p.headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(p.headers["x-content-type-options"], "nosniff", "{path}");
    }
    let js = root.get("/static/console.js").await;
    assert_eq!(js.status, 200);
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(root.get("/static/nothing.css").await.status, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_http_only_and_same_site() {
    let app = spawn_app().await;

    let (answer, cookie) = console_login(&app, "root", ROOT_PASSWORD).await;

    assert_eq!(answer.status, 303);
    assert_eq!(answer.location(), "/console");
    assert!(cookie.is_some());
    let set = answer.headers["set-cookie"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        set.contains("httponly") && set.contains("samesite=lax"),
        "{set}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_shows_the_login_form_again_and_repeated_failures_are_rate_limited() {
    let app = spawn_app().await;

    let (wrong, cookie) = console_login(&app, "root", "not-the-password").await;
    let (unknown, _) = console_login(&app, "nobody", "not-the-password").await;
    for _ in 0..10 {
        console_login(&app, "root", "still-wrong").await;
    }
    let (limited, _) = console_login(&app, "root", ROOT_PASSWORD).await;

    assert_eq!(wrong.status, 401);
    assert!(cookie.is_none());
    assert!(
        wrong.body.contains("invalid username or password"),
        "{}",
        wrong.body
    );
    assert_eq!(unknown.status, 401);
    assert!(unknown.body.contains("invalid username or password"));
    assert_eq!(limited.status, 429);
    assert!(
        limited.body.contains("too many attempts"),
        "{}",
        limited.body
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_post_without_its_csrf_cookie_is_refused_with_403() {
    let app = spawn_app().await;

    let resp = no_redirects()
        .post(format!("{}/console/login", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf=forged&username=root&password={ROOT_PASSWORD}"
        ))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("set-cookie").is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_page_renders_for_an_admin() {
    let s = Scenario::start(1.0).await;
    let gen_resp = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = tollgate_tests::app::generation_id(&gen_resp);
    s.app.wait_generation(&gen_id).await;
    let root = s.app.console("root", ROOT_PASSWORD).await;

    for path in [
        "/console".to_owned(),
        "/console/".to_owned(),
        "/console/channels".to_owned(),
        "/console/channels/new".to_owned(),
        format!("/console/channels/{}", s.channel_id),
        "/console/keys".to_owned(),
        format!("/console/keys/{}", s.key_id),
        "/console/users".to_owned(),
        "/console/users?q=ali&role=customer".to_owned(),
        format!("/console/users/{}", s.customer_id),
        "/console/pricing".to_owned(),
        "/console/pricing?model=gpt-4o-mini".to_owned(),
        "/console/logs".to_owned(),
        "/console/logs?status=success&model=gpt-4o-mini&from=2020-01-01T00:00".to_owned(),
        format!("/console/logs/{gen_id}"),
        "/console/redemptions".to_owned(),
        "/console/tasks".to_owned(),
        "/console/margins".to_owned(),
        "/console/margins?group_by=reseller&from=2020-01-01T00:00".to_owned(),
        "/console/tasks?state=open&family=midjourney".to_owned(),
        "/console/settings".to_owned(),
        "/console/account".to_owned(),
    ] {
        let p = root.get(&path).await;
        assert_eq!(p.status, 200, "{path}: {}", p.body);
        assert!(
            p.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(p.headers["cache-control"], "no-store", "{path}");
    }
    let dashboard = root.get("/console").await.body;
    assert!(
        dashboard.contains("<svg class=\"chart\""),
        "charts are drawn server-side"
    );
    assert!(dashboard.contains("gpt-4o-mini"), "top models");
    let log = root.get(&format!("/console/logs/{gen_id}")).await.body;
    assert!(
        log.contains("0.00002 credits"),
        "the generation's cost: {log}"
    );
    assert!(log.contains("Attempts"));
    // The logs page links its filters' export; the export is the session's scope.
    let logs = root.get("/console/logs?status=success").await.body;
    assert!(
        logs.contains(r#"href="/console/logs.csv?status=success""#),
        "{logs}"
    );
    let csv = root.get("/console/logs.csv?status=success").await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    assert!(csv.body.starts_with("id,created_at,"), "{}", csv.body);
    assert!(csv.body.contains(&gen_id), "{}", csv.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_and_pages_answer_404() {
    let app = spawn_app().await;
    let root = app.console("root", ROOT_PASSWORD).await;

    for path in [
        "/console/users/9999",
        "/console/users/not-a-number",
        "/console/keys/9999",
        "/console/channels/9999",
        "/console/logs/gen-nothing",
        "/console/nowhere",
    ] {
        let p = root.get(path).await;
        assert_eq!(p.status, 404, "{path}");
        assert!(p.body.contains("404"), "{path}: an HTML error page");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_post_without_the_sessions_csrf_token_is_refused_with_403_and_changes_nothing() {
    let s = Scenario::start(1.0).await;
    let root = s.app.console("root", ROOT_PASSWORD).await;
    let customer = s.customer_id.to_string();
    let posts: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            "/console/users".into(),
            vec![
                ("username", "mallory"),
                ("password", "password-123"),
                ("role", "admin"),
            ],
        ),
        (
            format!("/console/users/{customer}/credits"),
            vec![("amount", "100")],
        ),
        (
            format!("/console/users/{customer}/status"),
            vec![("status", "disabled")],
        ),
        ("/console/keys".into(), vec![("name", "stolen")]),
        (format!("/console/keys/{}/delete", s.key_id), vec![]),
        (
            "/console/channels".into(),
            vec![
                ("name", "evil"),
                ("type", "openai"),
                ("base_url", "http://evil.example"),
                ("keys", "k"),
                ("models", "m"),
            ],
        ),
        (format!("/console/channels/{}/delete", s.channel_id), vec![]),
        (
            "/console/pricing/models".into(),
            vec![("model", "gpt-4o-mini"), ("input", "0")],
        ),
        ("/console/settings".into(), vec![("max_tries", "1")]),
        ("/console/cache/refresh".into(), vec![]),
        (
            "/console/redemptions".into(),
            vec![("name", "b"), ("amount", "5"), ("count", "1")],
        ),
        (
            "/console/account/password".into(),
            vec![
                ("current_password", ROOT_PASSWORD),
                ("password", "new-password-1"),
            ],
        ),
        ("/console/logout".into(), vec![]),
    ];

    for (path, fields) in &posts {
        let none = root.post_raw(path, fields).await;
        let mut forged = vec![("csrf", "0123456789abcdef0123456789abcdef")];
        forged.extend_from_slice(fields);
        let wrong = root.post_raw(path, &forged).await;
        assert_eq!(none.status, 403, "{path} without a token");
        assert_eq!(wrong.status, 403, "{path} with a forged token");
    }

    // Nothing happened: the customer is still enabled with its credits, the key and the
    // channel still exist, and the session still works.
    let (_, alice) = s
        .app
        .api(
            "GET",
            &format!("/api/users/{customer}"),
            &s.app.root_token,
            None,
        )
        .await;
    assert_eq!(alice["status"], "enabled");
    assert_eq!(alice["balance"], 1.0);
    let (_, keys) = s.app.api("GET", "/api/keys", &s.app.root_token, None).await;
    assert_eq!(keys["total"], 1);
    let (status, _) = s
        .app
        .api(
            "GET",
            &format!("/api/channels/{}", s.channel_id),
            &s.app.root_token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(root.get("/console").await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_sees_only_its_own_things_and_admin_pages_are_refused() {
    let s = Scenario::start(1.0).await;
    let bob = s.app.create_user("bob", "customer").await;
    let bob_token = s.app.login("bob", "password-123").await;
    let (bob_key, _) = s.app.create_key(&bob_token, json!({"name": "bobs"})).await;
    let resp = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let gen_id = tollgate_tests::app::generation_id(&resp);
    s.app.wait_generation(&gen_id).await;
    let alice = s.app.console("alice", "password-123").await;
    let bob_console = s.app.console("bob", "password-123").await;

    assert_eq!(alice.get("/console/channels").await.status, 403);
    assert_eq!(alice.get("/console/settings").await.status, 403);
    assert_eq!(
        alice.get(&format!("/console/users/{bob}")).await.status,
        404
    );
    assert_eq!(
        alice.get(&format!("/console/keys/{bob_key}")).await.status,
        404
    );
    assert_eq!(
        bob_console
            .get(&format!("/console/logs/{gen_id}"))
            .await
            .status,
        404
    );
    assert_eq!(
        alice.get(&format!("/console/logs/{gen_id}")).await.status,
        200
    );
    let users = alice.get("/console/users").await.body;
    assert!(
        users.contains("alice") && !users.contains(">bob<"),
        "{users}"
    );
    let keys = alice.get("/console/keys").await.body;
    assert!(!keys.contains("bobs"));
    let pricing = alice.get("/console/pricing").await;
    assert_eq!(pricing.status, 200);
    assert!(pricing.body.contains("gpt-4o-mini") && !pricing.body.contains("Set a model"));
    let set_price = alice
        .post(
            "/console/pricing/models",
            &[("model", "gpt-4o-mini"), ("input", "0")],
        )
        .await;
    assert_eq!(set_price.status, 403);
    let delete_bobs = alice
        .post(&format!("/console/keys/{bob_key}/delete"), &[])
        .await;
    assert_eq!(delete_bobs.status, 404);
    let bobs_logs = alice.get(&format!("/console/logs?user_id={bob}")).await;
    assert_eq!(bobs_logs.status, 200);
    assert!(
        bobs_logs.body.contains("0 generations match"),
        "{}",
        bobs_logs.body
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseller_manages_its_customers_but_not_another_resellers() {
    let app = spawn_app().await;
    let r1 = app.create_user("reseller-one", "reseller").await;
    app.create_user("reseller-two", "reseller").await;
    app.mint(r1, 10.0).await;
    let two_token = app.login("reseller-two", "password-123").await;
    let (_, other) = app
        .api(
            "POST",
            "/api/users",
            &two_token,
            Some(json!({"username": "carol", "password": "password-123", "role": "customer"})),
        )
        .await;
    let carol = other["id"].as_i64().unwrap();
    let one = app.console("reseller-one", "password-123").await;

    let created = one
        .post(
            "/console/users",
            &[
                ("username", "dave"),
                ("password", "password-123"),
                ("role", "admin"),
            ],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    let dave: i64 = created
        .location()
        .trim_start_matches("/console/users/")
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let moved = one
        .post(
            &format!("/console/users/{dave}/credits"),
            &[("amount", "4"), ("note", "welcome")],
        )
        .await;
    assert_eq!(moved.status, 303, "{}", moved.body);
    let too_much = one
        .post(
            &format!("/console/users/{dave}/credits"),
            &[("amount", "100")],
        )
        .await;
    let foreign = one.get(&format!("/console/users/{carol}")).await;
    let foreign_credits = one
        .post(
            &format!("/console/users/{carol}/credits"),
            &[("amount", "1")],
        )
        .await;

    let (_, d) = app
        .api("GET", &format!("/api/users/{dave}"), &app.root_token, None)
        .await;
    assert_eq!(d["role"], "customer", "a reseller creates customers only");
    assert_eq!(d["parent_id"], r1);
    assert_eq!(d["balance"], 4.0);
    assert_eq!(app.balance(r1).await, 6_000_000);
    assert_eq!(too_much.status, 402);
    assert!(
        too_much.body.contains(r#"id="amount-error""#),
        "{}",
        too_much.body
    );
    assert_eq!(foreign.status, 404);
    assert_eq!(foreign_credits.status, 404);
    let list = one.get("/console/users").await.body;
    assert!(list.contains("dave") && !list.contains("carol"));
    app.verify_ledger().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_errors_are_shown_next_to_their_field() {
    let app = spawn_app().await;
    let root = app.console("root", ROOT_PASSWORD).await;

    let short = root
        .post(
            "/console/users",
            &[
                ("username", "eve"),
                ("password", "short"),
                ("role", "customer"),
            ],
        )
        .await;
    let taken = root
        .post(
            "/console/users",
            &[
                ("username", "root"),
                ("password", "password-123"),
                ("role", "customer"),
            ],
        )
        .await;
    let rpm = root
        .post("/console/keys", &[("name", "k"), ("rpm", "lots")])
        .await;
    let limit = root
        .post("/console/keys", &[("name", "k"), ("credit_limit", "-1")])
        .await;
    let price = root
        .post(
            "/console/pricing/models",
            &[("model", "m"), ("input", "-2")],
        )
        .await;
    let settings = root.post("/console/settings", &[("max_tries", "99")]).await;
    let logs = root.get("/console/logs?from=yesterday").await;
    let password = root
        .post(
            "/console/account/password",
            &[
                ("current_password", "wrong-one"),
                ("password", "new-password-1"),
            ],
        )
        .await;

    for (page, status, field) in [
        (&short, 400, "password"),
        (&taken, 409, "username"),
        (&rpm, 400, "rpm"),
        (&limit, 400, "credit_limit"),
        (&price, 400, "input"),
        (&settings, 400, "max_tries"),
        (&logs, 400, "from"),
        (&password, 401, "current_password"),
    ] {
        assert_eq!(page.status, status, "{field}: {}", page.body);
        assert!(
            page.body.contains(&format!(r#"id="{field}-error""#)),
            "{field}: {}",
            page.body
        );
        assert!(
            page.body
                .contains(&format!(r#"aria-describedby="{field}-error""#)),
            "{field}"
        );
    }
    assert!(
        short.body.contains(r#"value="eve""#),
        "what was typed stays"
    );
    let (_, users) = app.api("GET", "/api/users", &app.root_token, None).await;
    assert_eq!(users["total"], 1, "nothing was created");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_keys_are_never_shown_again_not_even_after_a_form_error() {
    let mock = tollgate_tests::MockOpenAi::start().await;
    let app = spawn_app().await;
    let root = app.console("root", ROOT_PASSWORD).await;
    let secret = "sk-upstream-very-secret-9876";

    let bad = root
        .post(
            "/console/channels",
            &[
                ("name", "up"),
                ("type", "openai"),
                ("base_url", "not a url"),
                ("keys", secret),
                ("models", "gpt-4o-mini"),
            ],
        )
        .await;
    let ok = root
        .post(
            "/console/channels",
            &[
                ("name", "up"),
                ("type", "openai"),
                ("base_url", &mock.base_url),
                ("keys", secret),
                ("models", "gpt-4o-mini, gpt-4o"),
                ("model_mapping", "gpt-4o=gpt-4o-2024"),
                ("groups", "default"),
                ("priority", "2"),
                ("weight", "3"),
                ("timeout_s", "30"),
                ("status", "enabled"),
            ],
        )
        .await;
    let (_, channels) = app.api("GET", "/api/channels", &app.root_token, None).await;
    let id = channels["items"][0]["id"].as_i64().unwrap();
    let list = root.get("/console/channels").await.body;
    let edit = root.get(&format!("/console/channels/{id}")).await.body;
    // Saving the edit form with the keys field empty keeps the keys.
    let saved = root
        .post(
            &format!("/console/channels/{id}"),
            &[
                ("name", "up2"),
                ("type", "openai"),
                ("base_url", &mock.base_url),
                ("keys", ""),
                ("models", "gpt-4o-mini"),
                ("priority", "1"),
                ("weight", "1"),
                ("timeout_s", "30"),
                ("status", "enabled"),
            ],
        )
        .await;

    assert_eq!(bad.status, 400);
    assert!(bad.body.contains(r#"id="base_url-error""#));
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(saved.status, 303, "{}", saved.body);
    for html in [&bad.body, &list, &edit] {
        assert!(!html.contains(secret), "a channel key was rendered");
    }
    assert!(list.contains("…9876"), "{list}");
    assert!(edit.contains("gpt-4o=gpt-4o-2024"), "{edit}");
    let (_, ch) = app
        .api("GET", &format!("/api/channels/{id}"), &app.root_token, None)
        .await;
    assert_eq!(ch["name"], "up2");
    assert_eq!(ch["key_count"], 1);
    assert_eq!(ch["keys_preview"][0]["last4"], "9876");
    mock.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_test_button_shows_the_latency_and_disable_enable_and_delete_work() {
    let s = Scenario::start(0.0).await;
    let root = s.app.console("root", ROOT_PASSWORD).await;
    let id = s.channel_id;

    let tested = root
        .post(&format!("/console/channels/{id}/test"), &[])
        .await;
    let disabled = root
        .post(
            &format!("/console/channels/{id}/status"),
            &[("status", "disabled")],
        )
        .await;
    let (_, after_disable) = s
        .app
        .api(
            "GET",
            &format!("/api/channels/{id}"),
            &s.app.root_token,
            None,
        )
        .await;
    let enabled = root
        .post(
            &format!("/console/channels/{id}/status"),
            &[("status", "enabled")],
        )
        .await;
    let (_, after_enable) = s
        .app
        .api(
            "GET",
            &format!("/api/channels/{id}"),
            &s.app.root_token,
            None,
        )
        .await;
    let deleted = root
        .post(&format!("/console/channels/{id}/delete"), &[])
        .await;

    assert_eq!(tested.status, 200);
    assert!(
        tested
            .body
            .contains(&format!("Channel #{id} answered gpt-4o-mini in")),
        "{}",
        tested.body
    );
    assert_eq!(disabled.status, 303);
    assert_eq!(after_disable["status"], "disabled");
    assert_eq!(enabled.status, 303);
    assert_eq!(after_enable["status"], "enabled");
    assert!(after_enable["response_ms"].is_number());
    assert_eq!(deleted.status, 303);
    assert_eq!(
        root.get(&format!("/console/channels/{id}")).await.status,
        404
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_is_shown_once_works_and_can_be_limited_disabled_and_deleted() {
    let s = Scenario::start(1.0).await;
    let alice = s.app.console("alice", "password-123").await;

    let created = alice
        .post(
            "/console/keys",
            &[
                ("name", "console key"),
                ("rpm", "30"),
                ("tpm", "5000"),
                ("max_concurrency", "2"),
                ("models", "gpt-4o-mini"),
            ],
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let start = created.body.find("sk-").unwrap();
    let key = created.body[start..start + 51].to_owned();
    assert!(key[3..].chars().all(|c| c.is_ascii_alphanumeric()), "{key}");
    assert!(created.body.contains(r#"data-copy="new-key""#));
    let list = alice.get("/console/keys").await.body;
    assert!(!list.contains(&key), "the key is shown only once");
    assert_eq!(
        s.app
            .chat(&key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        200
    );

    let (_, keys) = s.app.api("GET", "/api/keys", &s.customer_token, None).await;
    let made = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "console key")
        .unwrap()
        .clone();
    assert_eq!(
        (made["tpm"].clone(), made["max_concurrency"].clone()),
        (json!(5000), json!(2)),
        "{made}"
    );
    let id = made["id"].as_i64().unwrap();
    let limited = alice
        .post(
            &format!("/console/keys/{id}"),
            &[
                ("name", "renamed"),
                ("credit_limit", "0.5"),
                ("expires_on", "2099-12-31"),
                ("models", ""),
                ("allow_ips", "127.0.0.1"),
                ("rpm", ""),
                ("tpm", "900"),
                ("max_concurrency", ""),
            ],
        )
        .await;
    assert_eq!(limited.status, 303, "{}", limited.body);
    let (_, k) = s.app.api("GET", "/api/keys", &s.customer_token, None).await;
    let k = k["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(k["name"], "renamed");
    assert_eq!(k["credit_limit"], 0.5);
    assert_eq!(k["models"], serde_json::Value::Null);
    assert_eq!(k["allow_ips"], json!(["127.0.0.1"]));
    assert_eq!(k["rpm"], serde_json::Value::Null);
    assert_eq!(k["tpm"], 900);
    assert_eq!(k["max_concurrency"], serde_json::Value::Null);
    assert!(
        k["expires_at"]
            .as_str()
            .unwrap()
            .starts_with("2099-12-31T23:59:59")
    );

    let disabled = alice
        .post(
            &format!("/console/keys/{id}/status"),
            &[("status", "disabled")],
        )
        .await;
    assert_eq!(disabled.status, 303);
    assert_eq!(
        s.app
            .chat(&key, Scenario::body("gpt-4o-mini"))
            .await
            .status(),
        401
    );
    let deleted = alice.post(&format!("/console/keys/{id}/delete"), &[]).await;
    assert_eq!(deleted.status, 303);
    assert_eq!(alice.get(&format!("/console/keys/{id}")).await.status, 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sets_prices_group_multipliers_and_settings_from_the_console() {
    let app = spawn_app().await;
    let root = app.console("root", ROOT_PASSWORD).await;

    let price = root
        .post(
            "/console/pricing/models",
            &[
                ("model", "gpt-4o-mini"),
                ("input", "0.15"),
                ("output", "0.6"),
                ("cached_input", "0.075"),
            ],
        )
        .await;
    let group = root
        .post(
            "/console/pricing/groups",
            &[("group", "vip"), ("multiplier", "0.8")],
        )
        .await;
    let bad_group = root
        .post(
            "/console/pricing/groups",
            &[("group", "bad group"), ("multiplier", "1")],
        )
        .await;
    let settings = root
        .post(
            "/console/settings",
            &[
                ("max_tries", "2"),
                ("breaker_failures", "7"),
                ("breaker_window_s", "90"),
                ("breaker_cooldown_s", "20"),
                ("health_interval_s", "600"),
            ],
        )
        .await;
    let refreshed = root.post("/console/cache/refresh", &[]).await;

    assert_eq!(price.status, 303, "{}", price.body);
    assert_eq!(group.status, 303, "{}", group.body);
    assert_eq!(bad_group.status, 400);
    assert!(bad_group.body.contains(r#"id="group-error""#));
    assert_eq!(settings.status, 303, "{}", settings.body);
    assert_eq!(refreshed.status, 200);
    assert!(
        refreshed.body.contains("1 priced models"),
        "{}",
        refreshed.body
    );
    let (_, pricing) = app.api("GET", "/api/pricing", &app.root_token, None).await;
    assert_eq!(
        pricing["models"]["gpt-4o-mini"],
        json!({"input": 0.15, "output": 0.6, "cached_input": 0.075})
    );
    assert_eq!(pricing["groups"]["vip"], 0.8);
    let (_, stored) = app.api("GET", "/api/settings", &app.root_token, None).await;
    assert_eq!(
        stored,
        json!({"max_tries": 2, "breaker_failures": 7, "breaker_window_s": 90, "breaker_cooldown_s": 20, "health_interval_s": 600})
    );
    let page = root.get("/console/settings").await.body;
    assert!(page.contains(r#"value="600""#));
    let removed = root
        .post(
            "/console/pricing/models/delete",
            &[("model", "gpt-4o-mini")],
        )
        .await;
    assert_eq!(removed.status, 303);
    let (_, pricing) = app.api("GET", "/api/pricing", &app.root_token, None).await;
    assert_eq!(pricing["models"], json!({}));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_settings_are_applied_when_an_instance_starts() {
    let app = spawn_app().await;
    let (status, v) = app
        .api(
            "PUT",
            "/api/settings",
            &app.root_token,
            Some(json!({"max_tries": 5, "health_interval_s": 42})),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    let second = app.second_instance().await;

    assert_eq!(second.state.config.tunables.max_tries, 5);
    assert_eq!(second.state.config.tunables.health_interval_s, 42);
    let (status, _) = app
        .api(
            "PUT",
            "/api/settings",
            &app.root_token,
            Some(json!({"max_tries": 0})),
        )
        .await;
    assert_eq!(status, 400);
    second.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_refresh_answers_counts_to_admins_only() {
    let s = Scenario::start(0.0).await;

    let (status, counts) = s
        .app
        .api("POST", "/api/cache/refresh", &s.app.root_token, None)
        .await;
    let (refused, _) = s
        .app
        .api("POST", "/api/cache/refresh", &s.customer_token, None)
        .await;
    let alice = s.app.console("alice", "password-123").await;
    let console_refused = alice.post("/console/cache/refresh", &[]).await;

    assert_eq!(status, 200);
    assert_eq!(
        counts,
        json!({"channels": 1, "keys": 1, "users": 2, "models_priced": 9})
    );
    assert_eq!(refused, 403);
    assert_eq!(console_refused.status, 403);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redemption_codes_are_created_shown_once_and_redeemed_from_the_console() {
    let app = spawn_app().await;
    let customer = app.create_user("erin", "customer").await;
    let root = app.console("root", ROOT_PASSWORD).await;
    let erin = app.console("erin", "password-123").await;

    let created = root
        .post(
            "/console/redemptions",
            &[("name", "launch"), ("amount", "2.5"), ("count", "2")],
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let codes_at =
        created.body.find(r#"<code id="new-codes">"#).unwrap() + r#"<code id="new-codes">"#.len();
    let code = created.body[codes_at..]
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let list = root.get("/console/redemptions").await.body;
    assert!(!list.contains(&code), "codes are shown only at creation");
    let redeemed = erin.post("/console/redeem", &[("code", &code)]).await;
    let again = erin.post("/console/redeem", &[("code", &code)]).await;
    let customer_batch = erin
        .post(
            "/console/redemptions",
            &[("name", "x"), ("amount", "1"), ("count", "1")],
        )
        .await;

    assert_eq!(redeemed.status, 200);
    assert!(
        redeemed.body.contains("Redeemed 2.50 credits"),
        "{}",
        redeemed.body
    );
    assert_eq!(again.status, 404);
    assert!(again.body.contains(r#"id="code-error""#));
    assert_eq!(customer_batch.status, 403);
    assert_eq!(app.balance(customer).await, 2_500_000);
    assert!(root.get("/console/redemptions").await.body.contains("used"));
    app.verify_ledger().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_ends_the_session_and_a_new_password_replaces_the_old() {
    let app = spawn_app().await;
    app.create_user("frank", "customer").await;
    let frank = app.console("frank", "password-123").await;

    let changed = frank
        .post(
            "/console/account/password",
            &[
                ("current_password", "password-123"),
                ("password", "brand-new-password"),
            ],
        )
        .await;
    let logout = frank.post("/console/logout", &[]).await;
    let after = frank.get("/console").await;
    let (old, _) = console_login(&app, "frank", "password-123").await;
    let (new, _) = console_login(&app, "frank", "brand-new-password").await;

    assert_eq!(changed.status, 303);
    assert_eq!(changed.location(), "/console/account?done=password_changed");
    assert_eq!(logout.status, 303);
    assert_eq!(logout.location(), "/console/login");
    assert_eq!(after.status, 303, "the old session no longer works");
    assert_eq!(old.status, 401);
    assert_eq!(new.status, 303);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_is_shown_as_such_and_its_keys_stop() {
    let s = Scenario::start(1.0).await;
    let root = s.app.console("root", ROOT_PASSWORD).await;

    let disabled = root
        .post(
            &format!("/console/users/{}/status", s.customer_id),
            &[("status", "disabled")],
        )
        .await;
    let page = root
        .get(&format!("/console/users/{}", s.customer_id))
        .await
        .body;
    let call = s.app.chat(&s.key, Scenario::body("gpt-4o-mini")).await;
    let self_disable = root
        .post(
            &format!("/console/users/{}/status", s.app.root_id),
            &[("status", "disabled")],
        )
        .await;

    assert_eq!(disabled.status, 303);
    assert!(
        page.contains(r#"<span class="badge disabled">disabled</span>"#),
        "{page}"
    );
    assert_ne!(call.status(), 200);
    assert_eq!(self_disable.status, 400);
    assert!(self_disable.body.contains("you cannot disable yourself"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_stats_count_requests_errors_and_spend_per_day() {
    let s = Scenario::start(1.0).await;
    for model in ["gpt-4o-mini", "gpt-4o-mini", "bad-request"] {
        let resp = s.app.chat(&s.key, Scenario::body(model)).await;
        let id = tollgate_tests::app::generation_id(&resp);
        s.app.wait_generation(&id).await;
    }

    let (status, stats) = s
        .app
        .api("GET", "/api/stats?days=7", &s.customer_token, None)
        .await;

    assert_eq!(status, 200, "{stats}");
    let days = stats["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    let today = &days[6];
    assert_eq!(today["requests"], 3);
    assert_eq!(today["errors"], 1);
    assert_eq!(today["spend"], billing::micros_to_credits(2 * NORMAL_COST));
    assert_eq!(stats["top_models"][0]["model"], "gpt-4o-mini");
    assert_eq!(stats["top_models"][0]["requests"], 2);
    let alice = s.app.console("alice", "password-123").await;
    let dash = alice.get("/console").await.body;
    assert!(dash.contains("33.3%"), "error rate: {dash}");
    s.stop().await;
}
