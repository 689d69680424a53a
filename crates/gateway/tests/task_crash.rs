//! `kill -9` of the real `gateway` binary while it polls asynchronous tasks, again and
//! again, then a restart: every task ends charged exactly once (one hold, never a
//! refund or a second charge), and the ledger verifies. Runs on the suite's backend
//! (Postgres + Redis in CI).

// Test code: clippy's allow-*-in-tests covers #[test] fns only, not this file's helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use common::*;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

const SECRET: &str = "mj-crash-secret";
const TASKS: usize = 16;

/// A midjourney-proxy that finishes a task 3 s after it was submitted and answers
/// every poll slowly (so kills land mid-poll).
#[derive(Default)]
struct Proxy {
    started: HashMap<String, Instant>,
    next: u64,
}

type Shared = web::Data<Arc<Mutex<Proxy>>>;

fn task(id: &str, at: Instant, base: &str) -> Value {
    if at.elapsed() < Duration::from_secs(3) {
        json!({"id": id, "action": "IMAGINE", "status": "IN_PROGRESS", "progress": "50%",
            "prompt": "p", "submitTime": 1, "imageUrl": null, "buttons": [], "properties": {}})
    } else {
        json!({"id": id, "action": "IMAGINE", "status": "SUCCESS", "progress": "100%",
            "prompt": "p", "submitTime": 1, "finishTime": 2,
            "imageUrl": format!("{base}/attachments/{id}.png"), "buttons": [], "properties": {}})
    }
}

async fn start_proxy() -> String {
    let state = web::Data::new(Arc::new(Mutex::new(Proxy::default())));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let b = base.clone();
    let server = actix_web::HttpServer::new(move || {
        let b = b.clone();
        let b2 = b.clone();
        actix_web::App::new()
            .app_data(state.clone())
            .route(
                "/mj/submit/imagine",
                web::post().to(|s: Shared| async move {
                    let mut p = s.lock().unwrap();
                    p.next += 1;
                    let id = format!("17000000000{}", p.next);
                    p.started.insert(id.clone(), Instant::now());
                    HttpResponse::Ok().json(
                        json!({"code": 1, "description": "ok", "result": id, "properties": {}}),
                    )
                }),
            )
            .route(
                "/mj/task/list-by-condition",
                web::post().to(move |s: Shared, body: web::Json<Value>| {
                    let b = b.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let p = s.lock().unwrap();
                        let found: Vec<Value> = body["ids"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|id| {
                                let id = id.as_str()?;
                                Some(task(id, *p.started.get(id)?, &b))
                            })
                            .collect();
                        HttpResponse::Ok().json(found)
                    }
                }),
            )
            .route(
                "/mj/task/{id}/fetch",
                web::get().to(move |s: Shared, id: web::Path<String>| {
                    let b = b2.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let p = s.lock().unwrap();
                        match p.started.get(id.as_str()) {
                            Some(at) => HttpResponse::Ok().json(task(&id, *at, &b)),
                            None => HttpResponse::Ok().finish(),
                        }
                    }
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_polled_through_repeated_kill_9_are_each_charged_exactly_once() {
    let http = http_client(Duration::from_secs(10));
    let dir = TempDir::new();
    let backend = Backend::from_env(&dir.0).await;
    let proxy = start_proxy().await;
    let env = [
        ("TOLLGATE_TASK_POLL_S", "1"),
        ("TOLLGATE_TASK_POLL_MAX_S", "1"),
        ("TOLLGATE_TASK_LEASE_S", "2"),
    ];
    let mut gw = Gateway::start_on(&dir.0, "run-0", &backend, &env);
    gw.wait_healthy(&http).await;
    let port = gw.port;

    let token = login_root(&http, &gw).await;
    let (_, me) = api(&http, &gw, reqwest::Method::GET, "/api/me", &token, None).await;
    let root = me["id"].as_i64().unwrap();
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            format!("/api/users/{root}/credits"),
            json!({"amount": 10}),
        ),
        (
            reqwest::Method::POST,
            "/api/channels".to_owned(),
            json!({"name": "mj", "type": "midjourney", "base_url": proxy, "keys": [SECRET], "models": ["mj_imagine"]}),
        ),
        (
            reqwest::Method::PUT,
            "/api/pricing/models/mj_imagine".to_owned(),
            json!({"per_request": 0.1}),
        ),
    ] {
        let (status, v) = api(&http, &gw, method, &path, &token, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {v}");
    }
    let (_, key) = api(
        &http,
        &gw,
        reqwest::Method::POST,
        "/api/keys",
        &token,
        Some(json!({"name": "mj"})),
    )
    .await;
    let key = key["key"].as_str().unwrap().to_owned();

    let mut ids = Vec::new();
    for i in 0..TASKS {
        let v: Value = http
            .post(gw.url("/mj/submit/imagine"))
            .header("mj-api-secret", &key)
            .json(&json!({"prompt": format!("crash {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["code"], 1, "{v}");
        ids.push(v["result"].as_str().unwrap().to_owned());
    }

    // Killed mid-poll, again and again, across the moment the tasks finish upstream.
    for run in 1..=4 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        gw.sigkill();
        gw = Gateway::start_at(&dir.0, &format!("run-{run}"), &backend, &env, port);
        gw.wait_healthy(&http).await;
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list: Value = http
            .post(gw.url("/mj/task/list-by-condition"))
            .header("mj-api-secret", &key)
            .json(&json!({"ids": ids}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let done = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["status"] == "SUCCESS")
            .count();
        if done == TASKS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {TASKS} finished: {list}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(30)).await;

    let db = sea_orm::Database::connect(&backend.database_url)
        .await
        .unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT kind, COUNT(*) AS n, SUM(amount) AS total FROM transactions \
             WHERE kind LIKE 'task%' GROUP BY kind ORDER BY kind",
        ))
        .await
        .unwrap();
    let kinds: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get::<String>("", "kind").unwrap(),
                r.try_get::<i64>("", "n").unwrap(),
                r.try_get::<i64>("", "total").unwrap_or_else(|_| {
                    // Postgres sums bigints as numeric.
                    r.try_get::<sea_orm::prelude::Decimal>("", "total")
                        .map(|d| d.to_string().parse().unwrap())
                        .unwrap()
                }),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![(
            "task_hold".to_owned(),
            TASKS as i64,
            -(TASKS as i64) * 100_000
        )],
        "one hold per task, kept whole; no refund, no second charge"
    );
    let balance = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT balance FROM users WHERE id = {root}"),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "balance")
        .unwrap();
    assert_eq!(balance, 10_000_000 - TASKS as i64 * 100_000);
    let charged = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM tasks WHERE state = 'succeeded' AND charged = 100000",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(charged, TASKS as i64);
    drop(db);
    let (ok, report) = ledger_verify_on(&backend);
    assert!(ok, "ledger verify after the crashes: {report}");
    backend.drop_database().await;
}
