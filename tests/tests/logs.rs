//! Logs (`/api/logs`) and the client-app balance endpoints
//! (`/v1/dashboard/billing/*`), end to end: what a call leaves behind, who may see it,
//! and the numbers chat front ends read.

use serde_json::{Value, json};
use tollgate_tests::{NORMAL_COST, Scenario};

/// Makes a chat call and returns its generation id.
async fn call(s: &Scenario, key: &str, model: &str) -> String {
    let resp = s.app.chat(key, Scenario::body(model)).await;
    resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// `GET /api/logs{query}` as `token`; asserts 200.
async fn logs(s: &Scenario, token: &str, query: &str) -> Value {
    let (status, v) = s
        .app
        .api("GET", &format!("/api/logs{query}"), token, None)
        .await;
    assert_eq!(status, 200, "{query}: {v}");
    v
}

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A client app's `GET {path}` with an `sk-` key.
async fn dashboard(s: &Scenario, key: &str, path: &str) -> (u16, Value) {
    let resp = s
        .app
        .http
        .get(format!("{}{path}", s.app.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_calls_appear_in_its_logs_newest_first_with_cost_and_tokens() {
    let s = Scenario::start(1.0).await;
    let first = call(&s, &s.key, "gpt-4o-mini").await;
    let second = call(&s, &s.key, "reasoner").await;
    s.app.settled().await;

    let v = logs(&s, &s.customer_token, "").await;

    assert_eq!(v["total"], 2);
    assert_eq!(ids(&v), vec![second.clone(), first.clone()]);
    let newest = &v["items"][0];
    assert_eq!(newest["model"], "reasoner");
    assert_eq!(
        (
            newest["tokens_prompt"].as_i64(),
            newest["tokens_completion"].as_i64()
        ),
        (Some(100), Some(40))
    );
    assert_eq!(newest["native_tokens_cached"], 4);
    assert_eq!(newest["native_tokens_reasoning"], 10);
    let reasoner_cost = s.app.generation(&second).await.cost;
    assert!(reasoner_cost > 0);
    assert_eq!(
        newest["total_cost"],
        billing::micros_to_credits(reasoner_cost)
    );
    let oldest = &v["items"][1];
    assert_eq!(oldest["model"], "gpt-4o-mini");
    assert_eq!(oldest["tokens_prompt"], 12);
    assert_eq!(oldest["tokens_completion"], 30);
    assert_eq!(
        oldest["total_cost"],
        billing::micros_to_credits(NORMAL_COST)
    );
    assert_eq!(oldest["status"], "success");
    assert_eq!(oldest["upstream_id"], "chatcmpl-mock123");
    assert_eq!(oldest["provider_name"], "mock");
    assert_eq!(oldest["user_id"], s.customer_id);
    assert_eq!(oldest["key_id"], s.key_id);
    assert_eq!(oldest["channel_id"], s.channel_id);
    assert_eq!(oldest["endpoint"], "/v1/chat/completions");
    assert_eq!(oldest["status_code"], 200);
    assert_eq!(oldest["error"], Value::Null);
    assert_eq!(oldest["client_ip"], "127.0.0.1");
    // Paging: one per page, still newest first.
    let page2 = logs(&s, &s.customer_token, "?per_page=1&page=2").await;
    assert_eq!(page2["total"], 2);
    assert_eq!(ids(&page2), vec![first]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_filter_by_model_status_key_and_time_window() {
    let s = Scenario::start(1.0).await;
    let (other_key_id, other_key) = s
        .app
        .create_key(&s.customer_token, json!({"name": "second"}))
        .await;
    let a = call(&s, &s.key, "gpt-4o-mini").await;
    let b = call(&s, &other_key, "reasoner").await;
    let c = call(&s, &s.key, "fail-500").await;
    s.app.settled().await;
    let t = &s.customer_token;

    assert_eq!(ids(&logs(&s, t, "?model=reasoner").await), vec![b.clone()]);
    assert_eq!(ids(&logs(&s, t, "?status=error").await), vec![c.clone()]);
    assert_eq!(
        ids(&logs(&s, t, "?status=success").await),
        vec![b.clone(), a.clone()]
    );
    assert_eq!(
        ids(&logs(&s, t, &format!("?key_id={}", s.key_id)).await),
        vec![c.clone(), a.clone()]
    );
    assert_eq!(
        ids(&logs(&s, t, &format!("?key_id={other_key_id}&model=reasoner")).await),
        vec![b.clone()]
    );
    assert_eq!(
        ids(&logs(&s, t, &format!("?user_id={}", s.customer_id)).await).len(),
        3
    );
    // `from` is inclusive, `to` exclusive.
    let all = logs(&s, t, "").await;
    let newest_at = all["items"][0]["created_at"].as_str().unwrap().to_owned();
    assert_eq!(
        ids(&logs(&s, t, &format!("?from={newest_at}")).await),
        vec![c.clone()]
    );
    assert_eq!(
        ids(&logs(&s, t, &format!("?to={newest_at}")).await),
        vec![b.clone(), a.clone()]
    );
    let wide = logs(&s, t, "?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z").await;
    assert_eq!(wide["total"], 3);
    assert_eq!(logs(&s, t, "?from=2100-01-01T00:00:00Z").await["total"], 0);

    for bad in [
        "?from=yesterday",
        "?to=2024-13-01",
        "?status=ok",
        "?key_id=abc",
    ] {
        let (status, v) = s.app.api("GET", &format!("/api/logs{bad}"), t, None).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{bad}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_logged_as_an_error_with_its_attempts_and_costs_nothing() {
    let s = Scenario::start(1.0).await;
    let resp = s.app.chat(&s.key, Scenario::body("fail-500")).await;
    assert_eq!(resp.status(), 502);
    let id = resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    s.app.settled().await;

    let listed = logs(&s, &s.customer_token, "").await;
    assert_eq!(ids(&listed), vec![id.clone()]);
    let (status, g) = s
        .app
        .api("GET", &format!("/api/logs/{id}"), &s.customer_token, None)
        .await;

    assert_eq!(status, 200, "{g}");
    assert_eq!(g["status"], "error");
    assert_eq!(g["total_cost"], 0.0);
    assert_eq!(g["status_code"], 502);
    assert_eq!(g["error"], "upstream_error");
    assert_eq!(g["model"], "fail-500");
    let attempts = g["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{g}");
    assert_eq!(attempts[0]["channel_id"], s.channel_id);
    assert_eq!(attempts[0]["status"], 500);
    assert!(attempts[0]["error"].is_string());
    assert_eq!(s.app.balance(s.customer_id).await, 1_000_000);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_calls_detail_shows_the_channel_it_was_served_by() {
    let s = Scenario::start(1.0).await;
    let id = call(&s, &s.key, "gpt-4o-mini").await;
    s.app.settled().await;

    let (status, g) = s
        .app
        .api("GET", &format!("/api/logs/{id}"), &s.customer_token, None)
        .await;

    assert_eq!(status, 200, "{g}");
    assert_eq!(g["id"], id.as_str());
    assert_eq!(g["total_cost"], billing::micros_to_credits(NORMAL_COST));
    assert_eq!(g["endpoint"], "/v1/chat/completions");
    let attempts = g["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["channel_id"], s.channel_id);
    assert_eq!(attempts[0]["channel"], "mock");
    assert_eq!(attempts[0]["status"], 200);
    let (status, v) = s
        .app
        .api("GET", "/api/logs/gen-nope", &s.customer_token, None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseller_sees_its_customers_logs_and_nobody_else_does() {
    let s = Scenario::start(1.0).await;
    s.app.create_user("rita", "reseller").await;
    s.app.create_user("rob", "reseller").await;
    let rita = s.app.login("rita", "password-123").await;
    let rob = s.app.login("rob", "password-123").await;
    let (status, carl) = s
        .app
        .api(
            "POST",
            "/api/users",
            &rita,
            Some(json!({"username": "carl", "password": "password-123", "role": "customer"})),
        )
        .await;
    assert_eq!(status, 201, "{carl}");
    let carl_id = carl["id"].as_i64().unwrap();
    s.app.mint(carl_id, 1.0).await;
    let carl_token = s.app.login("carl", "password-123").await;
    let (_, carl_key) = s.app.create_key(&carl_token, json!({"name": "c"})).await;
    let carls = call(&s, &carl_key, "gpt-4o-mini").await;
    let alices = call(&s, &s.key, "gpt-4o-mini").await;
    s.app.settled().await;

    let seen_by_rita = logs(&s, &rita, "").await;
    assert_eq!(ids(&seen_by_rita), vec![carls.clone()]);
    assert_eq!(seen_by_rita["items"][0]["user_id"], carl_id);
    let (status, g) = s
        .app
        .api("GET", &format!("/api/logs/{carls}"), &rita, None)
        .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["user_id"], carl_id);
    // Asking for someone outside its scope finds nothing.
    let (status, _) = s
        .app
        .api("GET", &format!("/api/logs/{alices}"), &rita, None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        logs(&s, &rita, &format!("?user_id={}", s.customer_id)).await["total"],
        0
    );

    let seen_by_rob = logs(&s, &rob, "").await;
    assert_eq!(seen_by_rob["total"], 0);
    assert_eq!(seen_by_rob["items"], json!([]));
    let (status, v) = s
        .app
        .api("GET", &format!("/api/logs/{carls}"), &rob, None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "not_found");

    assert_eq!(
        ids(&logs(&s, &s.customer_token, "").await),
        vec![alices.clone()]
    );
    let (status, _) = s
        .app
        .api(
            "GET",
            &format!("/api/logs/{carls}"),
            &s.customer_token,
            None,
        )
        .await;
    assert_eq!(status, 404);

    assert_eq!(
        ids(&logs(&s, &s.app.root_token, "").await),
        vec![alices, carls]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_endpoints_report_the_users_balance_in_openais_legacy_shapes() {
    let s = Scenario::start(1.0).await;
    call(&s, &s.key, "gpt-4o-mini").await;
    s.app.settled().await;

    let (status, sub) = dashboard(&s, &s.key, "/v1/dashboard/billing/subscription").await;
    let (status2, usage) = dashboard(
        &s,
        &s.key,
        "/v1/dashboard/billing/usage?start_date=2025-01-01&end_date=2025-02-01",
    )
    .await;

    assert_eq!((status, status2), (200, 200));
    assert_eq!(
        sub,
        json!({"object": "billing_subscription", "has_payment_method": true,
               "soft_limit_usd": 1.0, "hard_limit_usd": 1.0, "system_hard_limit_usd": 1.0,
               "access_until": 0})
    );
    // Hundredths of a credit: 20 µc = 0.002.
    assert_eq!(usage, json!({"object": "list", "total_usage": 0.002}));
    // What a front end shows as left is the balance.
    let left =
        sub["hard_limit_usd"].as_f64().unwrap() - usage["total_usage"].as_f64().unwrap() / 100.0;
    let balance = billing::micros_to_credits(s.app.balance(s.customer_id).await);
    assert!((left - balance).abs() < 1e-9, "{left} vs {balance}");
    assert_eq!(balance, 0.99998);
    // The same answers without `/v1` (NextChat's path), and fresh after a top-up.
    s.app.mint(s.customer_id, 2.0).await;
    let (_, sub) = dashboard(&s, &s.key, "/dashboard/billing/subscription").await;
    assert_eq!(sub["hard_limit_usd"], 3.0);
    let (_, usage) = dashboard(&s, &s.key, "/dashboard/billing/usage").await;
    assert_eq!(usage["total_usage"], 0.002);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_credit_limit_reports_its_limit_its_own_usage_and_its_expiry() {
    let s = Scenario::start(1.0).await;
    let (_, limited) = s
        .app
        .create_key(
            &s.customer_token,
            json!({"name": "limited", "credit_limit": 0.5, "expires_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    call(&s, &limited, "gpt-4o-mini").await;
    call(&s, &s.key, "gpt-4o-mini").await;
    s.app.settled().await;

    let (_, sub) = dashboard(&s, &limited, "/v1/dashboard/billing/subscription").await;
    let (_, usage) = dashboard(&s, &limited, "/v1/dashboard/billing/usage").await;
    let (_, user_usage) = dashboard(&s, &s.key, "/v1/dashboard/billing/usage").await;

    assert_eq!(sub["hard_limit_usd"], 0.5);
    assert_eq!(sub["soft_limit_usd"], 0.5);
    assert_eq!(sub["access_until"], 4_070_908_800_i64);
    assert_eq!(usage["total_usage"], 0.002);
    // The owner's figure counts both keys.
    assert_eq!(user_usage["total_usage"], 0.004);

    let (status, err) = dashboard(&s, "sk-nope", "/v1/dashboard/billing/subscription").await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "invalid_api_key");
    s.stop().await;
}

/// `GET {path}` as `token`, the body as text; asserts 200 and a CSV.
async fn csv_text(s: &Scenario, token: &str, path: &str) -> String {
    let resp = s
        .app
        .http
        .get(format!("{}{path}", s.app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    resp.text().await.unwrap()
}

/// Every row of `/api/logs{query}`, page by page.
async fn all_logs(s: &Scenario, token: &str, query: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    for page in 1.. {
        let sep = if query.is_empty() { "?" } else { "&" };
        let v = logs(s, token, &format!("{query}{sep}per_page=100&page={page}")).await;
        let items = v["items"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        rows.extend(items);
    }
    rows
}

/// Inserts `n` generations for the scenario's customer, one second apart, some failed.
async fn many_generations(s: &Scenario, n: i64) {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    use store::entities::generation;
    let start = chrono::Utc::now() - chrono::Duration::hours(2);
    for i in 0..n {
        let failed = i % 7 == 0;
        generation::ActiveModel {
            id: Set(format!("gen-bulk-{i:05}")),
            upstream_id: Set(None),
            user_id: Set(s.customer_id),
            key_id: Set(s.key_id),
            channel_id: Set(Some(s.channel_id)),
            provider_name: Set(Some("mock, \"quoted\"".into())),
            model: Set("gpt-4o-mini".into()),
            upstream_model: Set(None),
            endpoint: Set("/v1/chat/completions".into()),
            streamed: Set(i % 2 == 0),
            cancelled: Set(false),
            finish_reason: Set(None),
            tokens_prompt: Set(10 + i),
            tokens_completion: Set(20),
            tokens_cached: Set(0),
            tokens_reasoning: Set(0),
            tokens_cache_write: Set(0),
            num_media: Set(0),
            latency_ms: Set(Some(5)),
            generation_time_ms: Set(Some(9)),
            cost: Set(if failed { 0 } else { 1_234 + i }),
            status: Set(if failed { "error" } else { "success" }.into()),
            status_code: Set(if failed { 502 } else { 200 }),
            error: Set(failed.then(|| "=upstream said, \"no\"\nagain".to_owned())),
            client_ip: Set(None),
            attempts: Set(None),
            // Pairs share a second: the export's paging must neither skip nor repeat.
            created_at: Set(start + chrono::Duration::seconds(i / 2)),
            upstream_cost: Set(0),
        }
        .insert(&s.app.db)
        .await
        .unwrap();
    }
}

/// The rows of a CSV export (a quoted field may hold commas, quotes and line breaks).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_export_has_every_row_of_the_logs_in_order_with_six_decimal_credits() {
    let s = Scenario::start(1.0).await;
    call(&s, &s.key, "gpt-4o-mini").await;
    s.app.settled().await;
    many_generations(&s, 1_203).await;

    let api_rows = all_logs(&s, &s.customer_token, "").await;
    let text = csv_text(&s, &s.customer_token, "/api/logs.csv").await;
    let rows = parse_csv(&text);
    assert_eq!(rows[0][0], "id");
    assert_eq!(rows[0][16], "cost");
    assert!(
        !rows[0].iter().any(|c| c == "upstream_model"),
        "the channel's mapping is the operator's"
    );
    let body = &rows[1..];
    assert_eq!(body.len(), api_rows.len(), "one CSV row per log row");
    assert_eq!(body.len(), 1_204);
    // Every column against the same row of /api/logs (text as the CSV writes it).
    let text_of = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let same = [
        (0, "id"),
        (1, "created_at"),
        (2, "user_id"),
        (3, "key_id"),
        (4, "model"),
        (5, "channel_id"),
        (6, "provider_name"),
        (7, "endpoint"),
        (8, "status"),
        (9, "status_code"),
        (10, "streamed"),
        (11, "tokens_prompt"),
        (12, "tokens_completion"),
        (13, "native_tokens_cached"),
        (14, "native_tokens_reasoning"),
        (17, "latency"),
    ];
    for (csv, api) in body.iter().zip(&api_rows) {
        assert_eq!(csv.len(), 19, "{csv:?}");
        for (column, field) in same {
            assert_eq!(
                csv[column],
                text_of(&api[field]),
                "{field} of {}",
                api["id"]
            );
        }
        let micros = (api["total_cost"].as_f64().unwrap() * 1e6).round() as i64;
        assert_eq!(
            csv[16],
            format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
        );
        assert_eq!(
            csv[18],
            api["error"]
                .as_str()
                .map_or(String::new(), |e| format!("'{e}"))
        );
    }
    assert!(
        body.iter().any(|r| r[6] == "mock, \"quoted\""),
        "quoting survives"
    );
    assert_eq!(
        rows.iter()
            .skip(1)
            .filter(|r| r[16] == format!("0.{:06}", NORMAL_COST))
            .count(),
        1
    );

    // The same filters as /api/logs.
    let failed_api = all_logs(&s, &s.customer_token, "?status=error").await;
    let failed = parse_csv(&csv_text(&s, &s.customer_token, "/api/logs.csv?status=error").await);
    assert_eq!(failed.len() - 1, failed_api.len());
    assert!(failed[1..].iter().all(|r| r[8] == "error"));
    let (status, v) = s
        .app
        .api("GET", "/api/logs.csv?status=bogus", &s.customer_token, None)
        .await;
    assert_eq!(status, 400, "{v}");

    // Scoped as the logs are: another customer exports nothing of it.
    s.app.create_user("mallory", "customer").await;
    let other = s.app.login("mallory", "password-123").await;
    let theirs = parse_csv(&csv_text(&s, &other, "/api/logs.csv").await);
    assert_eq!(theirs.len(), 1, "only the header");
    // Root exports everything.
    let all = parse_csv(&csv_text(&s, &s.app.root_token, "/api/logs.csv").await);
    assert_eq!(all.len() - 1, 1_204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_records_in_batches_and_never_the_ledger() {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    use store::entities::generation;
    let s = Scenario::start(1.0).await;
    let kept = call(&s, &s.key, "gpt-4o-mini").await;
    let old = call(&s, &s.key, "gpt-4o-mini").await;
    s.app.settled().await;
    many_generations(&s, 25).await;
    // Made 40 days ago.
    generation::Entity::update_many()
        .col_expr(
            generation::Column::CreatedAt,
            sea_orm::sea_query::Expr::value(chrono::Utc::now() - chrono::Duration::days(40)),
        )
        .filter(generation::Column::Id.ne(kept.clone()))
        .exec(&s.app.db)
        .await
        .unwrap();
    let balance = s.app.balance(s.customer_id).await;

    let before = chrono::Utc::now() - chrono::Duration::days(30);
    assert_eq!(
        store::retention::sweep_batch(&s.app.db, before, 10)
            .await
            .unwrap(),
        10
    );
    let rest = store::retention::sweep(&s.app.db, before, 10, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rest, 16);
    assert_eq!(
        generation::Entity::find().count(&s.app.db).await.unwrap(),
        1
    );
    let (status, _) = s
        .app
        .api("GET", &format!("/api/logs/{old}"), &s.customer_token, None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .app
        .api("GET", &format!("/api/logs/{kept}"), &s.customer_token, None)
        .await;
    assert_eq!(status, 200);
    // The ledger is whole: both calls are still charged, balance = Σ ledger.
    assert_eq!(s.app.balance(s.customer_id).await, balance);
    assert_eq!(balance, 1_000_000 - 2 * NORMAL_COST);
    s.app.assert_ledger_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_reaches_a_log_line_fails_the_test_that_used_it() {
    let s = Scenario::start(1.0).await;
    call(&s, &s.key, "gpt-4o-mini").await;
    s.app.settled().await;
    // Clean so far: the calls, the settlement, the admin API.
    s.app.assert_no_secret_logged();
    tracing::warn!(target: "gateway", leaked = %s.key, "a careless line");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.app.assert_no_secret_logged()
    }));
    let message = caught
        .expect_err("the leak went unnoticed")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains("a careless line") && message.contains("<THE SECRET>"));
    assert!(!message.contains(&s.key));
    s.app.forget_secrets();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_retention_period_the_gateway_itself_deletes_old_records_and_keeps_the_ledger() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use store::entities::generation;
    // TOLLGATE_LOG_RETENTION_DAYS=30, its job sweeping every 300 ms in tests.
    let s = Scenario::start_with(1.0, |c| c.log_retention_days = Some(30)).await;
    let kept = call(&s, &s.key, "gpt-4o-mini").await;
    let old = call(&s, &s.key, "gpt-4o-mini").await;
    s.app.settled().await;
    generation::Entity::update_many()
        .col_expr(
            generation::Column::CreatedAt,
            sea_orm::sea_query::Expr::value(chrono::Utc::now() - chrono::Duration::days(40)),
        )
        .filter(generation::Column::Id.eq(old.clone()))
        .exec(&s.app.db)
        .await
        .unwrap();
    let balance = s.app.balance(s.customer_id).await;
    let mut gone = false;
    for _ in 0..100 {
        if generation::Entity::find_by_id(old.clone())
            .one(&s.app.db)
            .await
            .unwrap()
            .is_none()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the 40-day-old record is still there");
    assert!(
        generation::Entity::find_by_id(kept)
            .one(&s.app.db)
            .await
            .unwrap()
            .is_some()
    );
    // The ledger is whole: the balance is what it was, and balance = Σ ledger.
    assert_eq!(s.app.balance(s.customer_id).await, balance);
    s.app.assert_ledger_consistent().await;
    s.stop().await;
}
