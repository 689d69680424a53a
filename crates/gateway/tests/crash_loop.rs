//! `kill -9` under load, again and again, then the balance drained: whatever a crash
//! interrupts, the admission counters never end up above the database, so every
//! request served after the crashes is paid in full and every request beyond the
//! balance is refused with 402. Runs on the suite's backend (Postgres + Redis in CI).

// Test code: clippy's allow-*-in-tests covers #[test] fns only, not this file's helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Each stream reports 12 prompt and 30 completion tokens: 12 × 100 + 30 × 1000 µc.
const STREAM_COST: i64 = 31_200;

/// What the clients saw.
#[derive(Default)]
struct Tally {
    served: AtomicU64,
    refused: AtomicU64,
}

/// Streams back to back until `stop`, or (when `until_refused`) until a 402.
async fn client(
    http: reqwest::Client,
    url: String,
    key: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    until_refused: bool,
) {
    let body = json!({"model": MODEL, "stream": true, "max_tokens": 40,
        "messages": [{"role": "user", "content": "count to ten"}]});
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let resp = match http.post(&url).bearer_auth(&key).json(&body).send().await {
            Ok(r) => r,
            Err(_) => {
                // The gateway is down (killed, restarting).
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match resp.status().as_u16() {
            200 => {
                let mut text = Vec::new();
                let mut stream = resp.bytes_stream();
                let mut broken = false;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(c) => text.extend_from_slice(&c),
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                if !broken && String::from_utf8_lossy(&text).contains("[DONE]") {
                    tally.served.fetch_add(1, Ordering::Relaxed);
                }
            }
            402 => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                if until_refused {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => {
                let text = resp.text().await.unwrap_or_default();
                panic!("unexpected {other}: {text}");
            }
        }
    }
    assert!(
        !until_refused,
        "the balance was not exhausted within two minutes"
    );
}

/// A user's durable balance in micro-credits, through the admin API.
async fn balance_micros(http: &reqwest::Client, gw: &Gateway, token: &str, user: i64) -> i64 {
    let (s, v) = api(
        http,
        gw,
        reqwest::Method::GET,
        &format!("/api/users/{user}"),
        token,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    (v["balance"].as_f64().unwrap() * 1e6).round() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_kills_under_load_then_a_drained_balance_serves_nothing_unpaid() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new();
    let backend = Backend::from_env(&dir.0).await;
    let upstream = start_mock_upstream_paced(Duration::ZERO).await;
    let http = http_client(Duration::from_secs(30));
    let extra = [("TOLLGATE_LEASE_TTL_S", "1")];
    let mut gw = Gateway::start_on(&dir.0, "run0", &backend, &extra);
    let port = gw.port;
    gw.wait_healthy(&http).await;
    let (_, root, key) = provision(
        &http,
        &gw,
        &upstream,
        100.0,
        json!({"input": 100, "output": 1000}),
    )
    .await;
    let url = gw.url("/v1/chat/completions");

    // Thirty-two clients stream while the gateway is killed five times: the writer
    // always has a batch in flight when the kill lands.
    let stop = Arc::new(AtomicBool::new(false));
    let crash_tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(client(
                http.clone(),
                url.clone(),
                key.clone(),
                Arc::clone(&stop),
                Arc::clone(&crash_tally),
                false,
            ))
        })
        .collect();
    for run in 1..=5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        gw.sigkill();
        let (ok, report) = ledger_verify_on(&backend);
        assert!(ok, "ledger verify after kill {run}: {report}");
        gw = Gateway::start_at(&dir.0, &format!("run{run}"), &backend, &extra, port);
        gw.wait_healthy(&http).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        crash_tally.served.load(Ordering::Relaxed) >= 20,
        "the load did not get going: {} streams served",
        crash_tally.served.load(Ordering::Relaxed)
    );

    // The dead instances' holds are given back (lease TTL 1 s); everything settles.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let token = login_root(&http, &gw).await;
    // Set to 3 credits (about 96 streams) to drain, whatever the crashes left.
    let left = balance_micros(&http, &gw, &token, root).await;
    eprintln!(
        "{} streams served across five kills; {left} µc left",
        crash_tally.served.load(Ordering::Relaxed)
    );
    if left != 3_000_000 {
        let (s, v) = api(
            &http,
            &gw,
            reqwest::Method::POST,
            &format!("/api/users/{root}/credits"),
            &token,
            Some(json!({"amount": (3_000_000 - left) as f64 / 1e6})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    let before = balance_micros(&http, &gw, &token, root).await;
    assert_eq!(before, 3_000_000, "set to 3 credits");

    // Drain: no more crashes, so every stream served is charged in full, and the
    // clients stop only when refused.
    let drain_tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(client(
                http.clone(),
                url.clone(),
                key.clone(),
                Arc::new(AtomicBool::new(false)),
                Arc::clone(&drain_tally),
                true,
            ))
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = balance_micros(&http, &gw, &token, root).await;
    let served = i64::try_from(drain_tally.served.load(Ordering::Relaxed)).unwrap();
    assert_eq!(
        before - after,
        served * STREAM_COST,
        "{served} streams served while draining from {before} µc left {after} µc"
    );
    // Refused only when what is left cannot cover one request's hold (~42,500 µc).
    assert!((0..50_000).contains(&after), "refused with {after} µc left");
    let resp = http
        .post(&url)
        .bearer_auth(&key)
        .json(&json!({"model": MODEL, "stream": true, "max_tokens": 40,
            "messages": [{"role": "user", "content": "count to ten"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota", "{v}");

    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(40)).await.success());
    let (ok, report) = ledger_verify_on(&backend);
    assert!(ok, "ledger verify at the end: {report}");
    backend.drop_database().await;
}
