//! Outages (DESIGN.md "Trust rules", issue 10 point 14): with Redis or the database
//! unreachable, relay and admin calls get `503 service_unavailable` with `Retry-After`
//! at once, `/readyz` answers 503, nothing is charged for what was refused, nothing
//! already answered is lost, and service resumes by itself when the service returns.
//! Each test takes away a service of its own — a `redis-server` it kills, a Postgres
//! cluster it stops — never the machine's shared ones.

// Test code: clippy's allow-*-in-tests covers #[test] fns only, not this file's helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::services::{PgCluster, RedisServer, skip_without};
use common::*;
use futures_util::StreamExt;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Each stream reports 12 prompt and 30 completion tokens: 12 × 100 + 30 × 1000 µc.
const COST: i64 = 31_200;
/// Served by a mock that takes about three seconds per stream.
const SLOW_MODEL: &str = "gpt-4o-mini-slow";
/// What the test mints for root, in µc.
const START: i64 = 5_000_000;
/// The longest a refusal, a readiness answer or an admin error may take.
const QUICK: Duration = Duration::from_secs(3);
/// The longest service may take to resume once the service is back.
const RESUME: Duration = Duration::from_secs(10);

/// Who pays, and with what.
struct Tenant {
    token: String,
    root: i64,
    /// A key without limits, and one with an rpm (the rate counter lives in Redis) and a
    /// credit limit (a wallet account of its own).
    keys: [String; 2],
    key_ids: [i64; 2],
}

/// Root gets [`START`] µc; a fast and a slow channel, both priced; two keys.
async fn set_up(http: &reqwest::Client, gw: &Gateway, fast: &str, slow: &str) -> Tenant {
    let token = login_root(http, gw).await;
    let (_, me) = api(http, gw, reqwest::Method::GET, "/api/me", &token, None).await;
    let root = me["id"].as_i64().unwrap();
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;
    let setup = [
        (
            post.clone(),
            format!("/api/users/{root}/credits"),
            json!({"amount": 5}),
        ),
        (
            post.clone(),
            "/api/channels".to_owned(),
            json!({"name": "fast", "type": "openai", "base_url": fast, "keys": ["sk-up"], "models": [MODEL]}),
        ),
        (
            post.clone(),
            "/api/channels".to_owned(),
            json!({"name": "slow", "type": "openai", "base_url": slow, "keys": ["sk-up"], "models": [SLOW_MODEL]}),
        ),
        (
            put.clone(),
            format!("/api/pricing/models/{MODEL}"),
            json!({"input": 100, "output": 1000}),
        ),
        (
            put,
            format!("/api/pricing/models/{SLOW_MODEL}"),
            json!({"input": 100, "output": 1000}),
        ),
    ];
    for (method, path, body) in setup {
        let (status, v) = api(http, gw, method, &path, &token, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {status} {v}");
    }
    let mut keys = Vec::new();
    let limited = json!({"name": "limited", "rpm": 10_000, "credit_limit": 2});
    for body in [json!({"name": "plain"}), limited] {
        let (status, v) = api(http, gw, post.clone(), "/api/keys", &token, Some(body)).await;
        assert_eq!(status, 201, "{v}");
        keys.push((
            v["key"].as_str().unwrap().to_owned(),
            v["id"].as_i64().unwrap(),
        ));
    }
    Tenant {
        token,
        root,
        keys: [keys[0].0.clone(), keys[1].0.clone()],
        key_ids: [keys[0].1, keys[1].1],
    }
}

fn chat(model: &str) -> Value {
    json!({"model": model, "stream": true, "max_tokens": 40,
        "messages": [{"role": "user", "content": "count to ten"}]})
}

/// What a client saw of one call.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
    elapsed: Duration,
}

impl Answer {
    /// A stream that ran to `[DONE]`.
    fn served(&self) -> bool {
        self.status == 200 && self.body.contains("data: [DONE]")
    }

    /// `503 service_unavailable` with `Retry-After`, answered within [`QUICK`].
    fn assert_unavailable(&self, what: &str) {
        assert_eq!(self.status, 503, "{what}: {self:?}");
        assert!(
            self.retry_after.is_some(),
            "{what}: no Retry-After: {self:?}"
        );
        assert!(
            self.body.contains("service_unavailable"),
            "{what}: {self:?}"
        );
        assert!(self.elapsed < QUICK, "{what} took {:?}", self.elapsed);
    }
}

async fn answer(resp: reqwest::Response, started: Instant) -> Answer {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.unwrap_or_default();
    Answer {
        status,
        retry_after,
        body,
        elapsed: started.elapsed(),
    }
}

/// One streamed chat call, read to the end.
async fn relay(http: &reqwest::Client, gw: &Gateway, key: &str, model: &str) -> Answer {
    let started = Instant::now();
    let resp = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat(model))
        .send()
        .await
        .unwrap();
    answer(resp, started).await
}

/// An admin API call (`token` may be empty: login).
async fn admin(
    http: &reqwest::Client,
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Answer {
    let started = Instant::now();
    let mut req = http.request(method, gw.url(path));
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    answer(req.send().await.unwrap(), started).await
}

/// Starts a slow stream; the receiver fires at its first chunk, the task ends with
/// whether it ran to `[DONE]`.
fn slow_stream(
    http: &reqwest::Client,
    gw: &Gateway,
    key: &str,
) -> (oneshot::Receiver<()>, JoinHandle<bool>) {
    let req = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat(SLOW_MODEL));
    let (first, first_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "the slow stream was refused");
        let mut first = Some(first);
        let mut text = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return false };
            text.extend_from_slice(&chunk);
            if let Some(first) = first.take() {
                let _ = first.send(());
            }
        }
        String::from_utf8_lossy(&text).contains("data: [DONE]")
    });
    (first_rx, task)
}

/// Every relay, readiness and admin call answers 503 + `Retry-After` quickly.
async fn assert_refused(http: &reqwest::Client, gw: &Gateway, t: &Tenant, outage: &str) {
    for key in &t.keys {
        for model in [MODEL, SLOW_MODEL] {
            relay(http, gw, key, model)
                .await
                .assert_unavailable(&format!("relay {model} during the {outage} outage"));
        }
    }
    let ready = admin(http, gw, reqwest::Method::GET, "/readyz", "", None).await;
    ready.assert_unavailable_status(&format!("/readyz during the {outage} outage"));
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let calls = [
        (
            get,
            format!("/api/users/{}", t.root),
            None,
            t.token.as_str(),
        ),
        (
            post.clone(),
            format!("/api/users/{}/credits", t.root),
            Some(json!({"amount": 1})),
            t.token.as_str(),
        ),
        (
            post,
            "/api/auth/login".to_owned(),
            Some(json!({"username": "root", "password": ROOT_PASSWORD})),
            "",
        ),
    ];
    for (method, path, body, token) in calls {
        admin(http, gw, method.clone(), &path, token, body)
            .await
            .assert_unavailable(&format!("{method} {path} during the {outage} outage"));
    }
}

impl Answer {
    /// 503 with `Retry-After`, quickly (any body: `/readyz` reports what is down).
    fn assert_unavailable_status(&self, what: &str) {
        assert_eq!(self.status, 503, "{what}: {self:?}");
        assert!(
            self.retry_after.is_some(),
            "{what}: no Retry-After: {self:?}"
        );
        assert!(self.elapsed < QUICK, "{what} took {:?}", self.elapsed);
    }
}

/// Polls `/readyz` until it answers `want` (at most `limit`).
async fn wait_ready(http: &reqwest::Client, gw: &Gateway, want: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let a = admin(http, gw, reqwest::Method::GET, "/readyz", "", None).await;
        if a.status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {want} within {limit:?}: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls until the relay refuses (the gateway learns of an outage within its probe's
/// second; what it serves until then is paid like any call); returns how many were
/// served meanwhile.
async fn wait_refusing(http: &reqwest::Client, gw: &Gateway, key: &str) -> i64 {
    let started = Instant::now();
    let mut served = 0;
    loop {
        let a = relay(http, gw, key, MODEL).await;
        if !a.served() {
            a.assert_unavailable("the first refusal");
            return served;
        }
        served += 1;
        assert!(
            started.elapsed() < QUICK * 2,
            "still serving {:?} into the outage",
            started.elapsed()
        );
    }
}

/// Calls until a request is served again (refusals meanwhile are 503); returns how long
/// that took.
async fn wait_served(http: &reqwest::Client, gw: &Gateway, key: &str) -> Duration {
    let started = Instant::now();
    loop {
        let a = relay(http, gw, key, MODEL).await;
        if a.served() {
            return started.elapsed();
        }
        a.assert_unavailable("a relay call while the service comes back");
        assert!(
            started.elapsed() < RESUME * 2,
            "service did not resume within {:?}",
            RESUME * 2
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The durable books of one user, read from the database itself.
#[derive(Debug, PartialEq, Eq)]
struct Books {
    balance: i64,
    /// `consume` ledger rows, how many distinct generations they name, and their sum.
    consume_rows: i64,
    consume_refs: i64,
    consumed: i64,
    /// Successful generations, and what they cost.
    served: i64,
    served_cost: i64,
}

impl Books {
    /// The books after `served` requests were served from [`START`].
    fn after(served: i64) -> Self {
        Books {
            balance: START - served * COST,
            consume_rows: served,
            consume_refs: served,
            consumed: -served * COST,
            served,
            served_cost: served * COST,
        }
    }
}

async fn read_books(url: &str, user: i64) -> Result<Books, sea_orm::DbErr> {
    let db = sea_orm::Database::connect(url).await?;
    let backend = db.get_database_backend();
    let row = |sql: String| {
        let db = &db;
        async move {
            db.query_one_raw(Statement::from_string(backend, sql))
                .await?
                .ok_or_else(|| sea_orm::DbErr::RecordNotFound("no row".into()))
        }
    };
    let u = row(format!("SELECT balance FROM users WHERE id = {user}")).await?;
    let t = row(format!(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COUNT(DISTINCT reference) AS BIGINT) AS refs, \
         CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS total \
         FROM transactions WHERE user_id = {user} AND kind = 'consume'"
    ))
    .await?;
    let g = row(format!(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(cost), 0) AS BIGINT) AS cost \
         FROM generations WHERE user_id = {user} AND status = 'success'"
    ))
    .await?;
    let books = Books {
        balance: u.try_get("", "balance")?,
        consume_rows: t.try_get("", "n")?,
        consume_refs: t.try_get("", "refs")?,
        consumed: t.try_get("", "total")?,
        served: g.try_get("", "n")?,
        served_cost: g.try_get("", "cost")?,
    };
    db.close().await?;
    Ok(books)
}

/// Polls the database until its books are exactly those of `served` paid requests
/// (records land within seconds); fails with what it last read.
async fn assert_books(url: &str, user: i64, served: i64, when: &str) {
    let want = Books::after(served);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = read_books(url, user).await;
        if got.as_ref().is_ok_and(|b| *b == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: the books are {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the database says each wallet account may spend: (account, limit).
async fn durable_limits(url: &str, t: &Tenant) -> Vec<(String, i64)> {
    let db = sea_orm::Database::connect(url).await.unwrap();
    let backend = db.get_database_backend();
    let mut out = Vec::new();
    let key = t.key_ids[1];
    for (acct, sql) in [
        (
            format!("u:{}", t.root),
            format!("SELECT balance AS v FROM users WHERE id = {}", t.root),
        ),
        (
            format!("k:{key}"),
            format!("SELECT credit_limit - used AS v FROM api_keys WHERE id = {key}"),
        ),
    ] {
        let row = db
            .query_one_raw(Statement::from_string(backend, sql))
            .await
            .unwrap()
            .unwrap();
        out.push((acct, row.try_get::<i64>("", "v").unwrap()));
    }
    db.close().await.unwrap();
    out
}

/// Once idle, every wallet counter in Redis is exactly its database state with nothing
/// held: no hold lost in the outage keeps money locked, and none lets money out.
async fn assert_counters_exact(redis: &RedisServer, prefix: &str, url: &str, t: &Tenant) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let want: Vec<_> = durable_limits(url, t)
            .await
            .into_iter()
            .map(|(acct, limit)| (acct, vec![limit.to_string(), "0".to_owned()]))
            .collect();
        let got: Vec<_> = want
            .iter()
            .map(|(acct, _)| {
                let key = format!("{prefix}:w:{acct}");
                (acct.clone(), redis.cli(&["HMGET", &key, "limit", "held"]))
            })
            .collect();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "wallet counters (account, [limit, held]) are {got:?}, the database says {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Serves one paid call per key, asserting the books after each.
async fn serve_paid(
    http: &reqwest::Client,
    gw: &Gateway,
    t: &Tenant,
    url: &str,
    served: &mut i64,
    when: &str,
) {
    for key in &t.keys {
        let a = relay(http, gw, key, MODEL).await;
        assert!(a.served(), "{when}: {a:?}");
        *served += 1;
        assert_books(url, t.root, *served, when).await;
    }
}

/// The admin API shows the balance the books hold.
async fn assert_api_balance(http: &reqwest::Client, gw: &Gateway, t: &Tenant, served: i64) {
    let path = format!("/api/users/{}", t.root);
    let (s, me) = api(http, gw, reqwest::Method::GET, &path, &t.token, None).await;
    assert_eq!(s, 200, "{me}");
    assert_credits(&me["balance"], (START - served * COST) as f64 / 1e6, &me);
}

/// Stops the gateway gracefully and checks balance = Σ ledger for every user
/// (`PRINT_GATEWAY_LOG=1` prints its log, also when the test passes).
async fn finish(mut gw: Gateway, backend: &Backend) {
    let (ok, report) = ledger_verify_on(backend);
    assert!(ok, "ledger verify while running: {report}");
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(40)).await.success());
    let (ok, report) = ledger_verify_on(backend);
    assert!(ok, "ledger verify after the stop: {report}");
    if std::env::var_os("PRINT_GATEWAY_LOG").is_some() {
        eprintln!("{}", std::fs::read_to_string(&gw.log).unwrap_or_default());
    }
}

fn client() -> reqwest::Client {
    http_client(Duration::from_secs(30))
}

fn unique_prefix() -> String {
    format!(
        "tgoutage:{}:{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_refuses_calls_with_503_charges_nothing_and_service_resumes_when_it_returns()
{
    if !RedisServer::installed() {
        return skip_without("redis-server");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new();
    let mut redis = RedisServer::start(&dir.0);
    let url = Backend::sqlite(&dir.0).database_url;
    let prefix = unique_prefix();
    let backend = Backend::new(url.clone(), Some((redis.url(), prefix.clone())));
    let fast = start_mock_upstream_paced(Duration::from_millis(10)).await;
    let slow = start_mock_upstream_paced(Duration::from_millis(300)).await;
    let http = client();
    let mut gw = Gateway::start_on(&dir.0, "gateway", &backend, &[]);
    gw.wait_healthy(&http).await;
    let t = set_up(&http, &gw, &fast, &slow).await;
    // A second instance on the same database and Redis, following the first's changes.
    let mut other = Gateway::start_on(&dir.0, "other", &backend, &[]);
    other.wait_healthy(&http).await;
    let mut served = 0;
    assert_books(&url, t.root, served, "after the mint").await;
    serve_paid(&http, &gw, &t, &url, &mut served, "before the outage").await;

    // Redis dies while a stream is in flight.
    let (first_chunk, in_flight) = slow_stream(&http, &gw, &t.keys[0]);
    first_chunk.await.unwrap();
    redis.kill();
    assert_refused(&http, &gw, &t, "Redis").await;
    assert_books(&url, t.root, served, "refused calls are not charged").await;
    assert!(in_flight.await.unwrap(), "the stream in flight was cut");
    served += 1;
    assert_books(&url, t.root, served, "the stream in flight is charged once").await;
    assert_refused(&http, &gw, &t, "Redis").await;

    // Redis comes back empty, as after a crash.
    redis.restart();
    let resumed = wait_served(&http, &gw, &t.keys[0]).await;
    served += 1;
    assert!(resumed < RESUME, "service resumed only after {resumed:?}");
    assert_books(&url, t.root, served, "the first call after the outage").await;
    wait_ready(&http, &gw, 200, QUICK).await;
    serve_paid(&http, &gw, &t, &url, &mut served, "after the outage").await;
    assert_api_balance(&http, &gw, &t, served).await;

    // The other instance hears of a key made after the outage, through the bus.
    let body = Some(json!({"name": "after"}));
    let (s, v) = api(
        &http,
        &gw,
        reqwest::Method::POST,
        "/api/keys",
        &t.token,
        body,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = relay(&http, &other, v["key"].as_str().unwrap(), MODEL).await;
        if a.served() {
            served += 1;
            break;
        }
        assert_eq!(a.status, 401, "{a:?}");
        assert!(
            Instant::now() < deadline,
            "the other instance never saw the new key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_books(&url, t.root, served, "a call on the other instance").await;
    assert_counters_exact(&redis, &prefix, &url, &t).await;
    finish(other, &backend).await;
    finish(gw, &backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_refuses_calls_with_503_within_seconds_and_its_counters_come_back_exact() {
    if !RedisServer::installed() {
        return skip_without("redis-server");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new();
    let redis = RedisServer::start(&dir.0);
    let url = Backend::sqlite(&dir.0).database_url;
    let prefix = unique_prefix();
    let backend = Backend::new(url.clone(), Some((redis.url(), prefix.clone())));
    let fast = start_mock_upstream_paced(Duration::from_millis(10)).await;
    let slow = start_mock_upstream_paced(Duration::from_millis(300)).await;
    let http = client();
    let mut gw = Gateway::start_on(&dir.0, "gateway", &backend, &[]);
    gw.wait_healthy(&http).await;
    let t = set_up(&http, &gw, &fast, &slow).await;
    let mut served = 0;
    serve_paid(&http, &gw, &t, &url, &mut served, "before the outage").await;

    // Redis hangs (keeping its data) with a stream in flight on each key.
    let in_flight: Vec<_> = t.keys.iter().map(|k| slow_stream(&http, &gw, k)).collect();
    let mut tasks = Vec::new();
    for (first_chunk, task) in in_flight {
        first_chunk.await.unwrap();
        tasks.push(task);
    }
    redis.pause();
    assert_refused(&http, &gw, &t, "hung Redis").await;
    assert_books(&url, t.root, served, "refused calls are not charged").await;
    for task in tasks {
        assert!(task.await.unwrap(), "a stream in flight was cut");
        served += 1;
    }
    assert_books(
        &url,
        t.root,
        served,
        "the streams in flight are charged once",
    )
    .await;
    // Hung longer than any pool or response timeout: every wallet update that followed
    // those charges has failed by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_refused(&http, &gw, &t, "hung Redis").await;

    // Redis answers again, with everything it held before.
    redis.resume();
    let resumed = wait_served(&http, &gw, &t.keys[0]).await;
    served += 1;
    assert!(resumed < RESUME, "service resumed only after {resumed:?}");
    serve_paid(&http, &gw, &t, &url, &mut served, "after the outage").await;
    assert_counters_exact(&redis, &prefix, &url, &t).await;
    finish(gw, &backend).await;
}

/// The database goes away with streams in flight and a burst just answered; see the
/// two tests below.
async fn database_outage(with_redis: bool) {
    let Some(bindir) = PgCluster::bindir() else {
        return skip_without("Postgres (initdb, pg_ctl)");
    };
    if with_redis && !RedisServer::installed() {
        return skip_without("redis-server");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new();
    let cluster = PgCluster::create(bindir);
    let redis = with_redis.then(|| RedisServer::start(&dir.0));
    let url = cluster.url();
    let backend = Backend::new(
        url.clone(),
        redis.as_ref().map(|r| (r.url(), unique_prefix())),
    );
    let fast = start_mock_upstream_paced(Duration::from_millis(10)).await;
    let slow = start_mock_upstream_paced(Duration::from_millis(300)).await;
    let http = client();
    let mut gw = Gateway::start_on(&dir.0, "gateway", &backend, &[]);
    gw.wait_healthy(&http).await;
    let t = set_up(&http, &gw, &fast, &slow).await;
    let mut served = 0;
    assert_books(&url, t.root, served, "after the mint").await;
    serve_paid(&http, &gw, &t, &url, &mut served, "before the outage").await;

    // Streams in flight, a burst answered, and the database stops at once.
    let in_flight: Vec<_> = (0..3)
        .map(|i| slow_stream(&http, &gw, &t.keys[i % 2]))
        .collect();
    let mut tasks = Vec::new();
    for (first_chunk, task) in in_flight {
        first_chunk.await.unwrap();
        tasks.push(task);
    }
    let burst: Vec<_> = (0..8)
        .map(|i| {
            let (http, key) = (http.clone(), t.keys[i % 2].clone());
            let url = gw.url("/v1/chat/completions");
            tokio::spawn(async move {
                let resp = http
                    .post(url)
                    .bearer_auth(key)
                    .json(&chat(MODEL))
                    .send()
                    .await
                    .unwrap();
                answer(resp, Instant::now()).await.served()
            })
        })
        .collect();
    for b in burst {
        assert!(b.await.unwrap(), "a call of the burst was not served");
        served += 1;
    }
    cluster.stop_immediate();
    for task in tasks {
        assert!(task.await.unwrap(), "a stream in flight was cut");
        served += 1;
    }
    wait_ready(&http, &gw, 503, QUICK * 2).await;
    served += wait_refusing(&http, &gw, &t.keys[0]).await;
    assert_refused(&http, &gw, &t, "database").await;

    // The database comes back: everything answered is recorded and charged once.
    cluster.start();
    let resumed = wait_served(&http, &gw, &t.keys[0]).await;
    served += 1;
    assert!(resumed < RESUME, "service resumed only after {resumed:?}");
    assert_books(&url, t.root, served, "everything answered is on the books").await;
    wait_ready(&http, &gw, 200, QUICK).await;
    serve_paid(&http, &gw, &t, &url, &mut served, "after the outage").await;
    assert_api_balance(&http, &gw, &t, served).await;
    finish(gw, &backend).await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_refuses_calls_with_503_and_loses_no_answered_request() {
    database_outage(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_with_redis_refuses_calls_with_503_and_loses_no_answered_request() {
    database_outage(true).await;
}
