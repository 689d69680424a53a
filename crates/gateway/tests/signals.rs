//! The real `gateway` binary under SIGTERM and SIGKILL: an in-flight stream finishes,
//! its charge is flushed before exit, and the durable state stays consistent.

// Test code: clippy's allow-*-in-tests covers #[test] fns only, not this file's helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_stream_finish_and_its_charge_survives_a_restart() {
    let started = Instant::now();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().build().unwrap();
    let dir = TempDir::new();
    let upstream = start_mock_upstream().await;

    // First run: set up and stream.
    let mut gw = Gateway::start(&dir.0, "first");
    gw.wait_healthy(&http).await;
    let root = login_root(&http, &gw).await;
    let (s, me) = api(&http, &gw, reqwest::Method::GET, "/api/me", &root, None).await;
    assert_eq!(s, 200, "{me}");
    let root_id = me["id"].as_i64().unwrap();
    let (s, v) = api(
        &http,
        &gw,
        reqwest::Method::POST,
        &format!("/api/users/{root_id}/credits"),
        &root,
        Some(json!({"amount": 1})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api(
        &http,
        &gw,
        reqwest::Method::POST,
        "/api/channels",
        &root,
        Some(
            json!({"name": "mock", "type": "openai", "base_url": upstream,
            "keys": ["sk-upstream-secret-1234"], "models": [MODEL]}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api(
        &http,
        &gw,
        reqwest::Method::PUT,
        &format!("/api/pricing/models/{MODEL}"),
        &root,
        Some(json!({"input": 0.15, "output": 0.6})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api(
        &http,
        &gw,
        reqwest::Method::POST,
        "/api/keys",
        &root,
        Some(json!({"name": "signals"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"].as_str().unwrap().to_owned();

    let resp = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": MODEL, "stream": true,
            "messages": [{"role": "user", "content": "count"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let generation_id = resp
        .headers()
        .get("x-generation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned();
    let mut body = resp.bytes_stream();
    let mut text = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("no first chunk within 10 s")
        .expect("the stream ended before its first chunk")
        .unwrap();
    text.extend_from_slice(&first);

    let terminated_at = Instant::now();
    gw.sigterm();

    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => text.extend_from_slice(&c),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await
    .expect("the stream did not end within 20 s of SIGTERM");
    let stream_after = terminated_at.elapsed();
    let text = String::from_utf8_lossy(&text).into_owned();
    assert!(
        rest.is_ok(),
        "the stream broke after SIGTERM: {rest:?}; received so far:\n{text}"
    );
    assert!(
        text.contains("data: [DONE]"),
        "the stream after SIGTERM lacks [DONE]:\n{text}"
    );
    assert_eq!(
        text.matches("\"content\":\"x\"").count(),
        10,
        "every content chunk must arrive:\n{text}"
    );
    drop(body);
    // Nine more chunks 100 ms apart: the signal really landed mid-stream.
    assert!(
        stream_after >= Duration::from_millis(500),
        "the stream ended only {stream_after:?} after SIGTERM; was it in flight?"
    );

    let status = gw.wait_exit(Duration::from_secs(40)).await;
    let exit_after = terminated_at.elapsed();
    assert!(status.success(), "the gateway exited with {status}");
    drop(gw);

    // Second run on the same database.
    let mut gw = Gateway::start(&dir.0, "second");
    gw.wait_healthy(&http).await;
    let resp = http
        .get(gw.url(&format!("/v1/generation?id={generation_id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "generation {generation_id} after restart: {v}");
    let data = &v["data"];
    assert_credits(&data["total_cost"], 0.00002, &v);
    assert_eq!(data["tokens_completion"], json!(30), "{v}");
    assert_eq!(data["streamed"], json!(true), "{v}");
    let root = login_root(&http, &gw).await;
    let (s, me) = api(&http, &gw, reqwest::Method::GET, "/api/me", &root, None).await;
    assert_eq!(s, 200, "{me}");
    assert_credits(&me["balance"], 0.99998, &me);

    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(40)).await;
    assert!(
        status.success(),
        "the restarted gateway exited with {status}"
    );
    eprintln!(
        "stream ended {stream_after:?} and the gateway exited {exit_after:?} after SIGTERM; test took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_leaves_every_balance_equal_to_its_ledger() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new();
    let upstream = start_mock_upstream().await;
    let http = http_client(Duration::from_secs(30));
    let mut gw = Gateway::start(&dir.0, "first");
    gw.wait_healthy(&http).await;
    let (_, root, key) = provision(
        &http,
        &gw,
        &upstream,
        1.0,
        json!({"input": 0.15, "output": 0.6}),
    )
    .await;

    // Eight clients streaming back to back; each stream takes about a second.
    let url = gw.url("/v1/chat/completions");
    let body =
        json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, key, body) = (http.clone(), url.clone(), key.clone(), body.clone());
            tokio::spawn(async move {
                loop {
                    let Ok(resp) = http.post(&url).bearer_auth(&key).json(&body).send().await
                    else {
                        break;
                    };
                    let mut stream = resp.bytes_stream();
                    while let Some(chunk) = stream.next().await {
                        if chunk.is_err() {
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    for c in clients {
        let _ = c.await;
    }

    // The durable state is consistent, whatever was in flight.
    let (ok, report) = ledger_verify(&dir.0);
    assert!(ok, "ledger verify after SIGKILL: {report}");
    assert_eq!(report["ok"], true);

    // A restart rebuilds admission from the database and serves again.
    let mut gw = Gateway::start(&dir.0, "second");
    gw.wait_healthy(&http).await;
    let token = login_root(&http, &gw).await;
    let (_, tx) = api(
        &http,
        &gw,
        reqwest::Method::GET,
        &format!("/api/users/{root}/transactions?per_page=100"),
        &token,
        None,
    )
    .await;
    let consumed = tx["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "consume")
        .count();
    assert!(
        consumed >= 8,
        "expected streams to have completed before the kill, got {consumed}"
    );
    let (_, me) = api(&http, &gw, reqwest::Method::GET, "/api/me", &token, None).await;
    // Each completed stream costs 20 µc (12 × 0.15 + 30 × 0.6, rounded up).
    assert_credits(&me["balance"], 1.0 - consumed as f64 * 0.00002, &me);
    let resp = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await;
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(40)).await.success());
    let (ok, report) = ledger_verify(&dir.0);
    assert!(ok, "ledger verify after restart: {report}");
}
