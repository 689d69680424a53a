//! Sustained load on the real binary (on the suite's backend: Postgres + Redis in CI):
//! the gateway's memory stays bounded, and every answered generation is in the
//! database within 2 s of its answer (API.md), while the load goes on and after it.

// Test code: clippy's allow-*-in-tests covers #[test] fns only, not this file's helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;

const CLIENTS: usize = 16;
const LOAD: Duration = Duration::from_secs(8);
const VISIBLE_WITHIN: Duration = Duration::from_secs(2);
/// How far resident memory may rise above its level after the first second of load.
const RSS_GROWTH_MIB: u64 = 48;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn generations_in(db: &sea_orm::DatabaseConnection, ids: &[String]) -> usize {
    let mut found = 0;
    for chunk in ids.chunks(500) {
        let list = chunk
            .iter()
            .map(|id| format!("'{}'", id.replace('\'', "")))
            .collect::<Vec<_>>()
            .join(",");
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM generations WHERE id IN ({list})"),
            ))
            .await
            .unwrap()
            .unwrap();
        found += usize::try_from(row.try_get::<i64>("", "n").unwrap()).unwrap();
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sustained_load_memory_stays_bounded_and_every_generation_is_visible_within_two_seconds()
 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new();
    let backend = Backend::from_env(&dir.0).await;
    let upstream = start_mock_upstream_paced(Duration::ZERO).await;
    let mut gw = Gateway::start_on(&dir.0, "gw", &backend, &[("RUST_LOG", "warn")]);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    gw.wait_healthy(&http).await;
    let (_, _, key) = provision(
        &http,
        &gw,
        &upstream,
        1_000_000.0,
        json!({"input": 0.1, "output": 1.0}),
    )
    .await;
    let db = sea_orm::Database::connect(&backend.database_url)
        .await
        .unwrap();
    let pid = gw.child.id();

    // (generation id, when its answer ended), for every request answered 200.
    let answered: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop_at = Instant::now() + LOAD;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, key, answered) = (
            http.clone(),
            gw.url("/v1/chat/completions"),
            key.clone(),
            Arc::clone(&answered),
        );
        clients.push(tokio::spawn(async move {
            let body = json!({"model": MODEL, "stream": true, "max_tokens": 40,
                "messages": [{"role": "user", "content": "count to ten"}]});
            let mut refused = 0_u32;
            while Instant::now() < stop_at {
                let resp = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let id = resp
                    .headers()
                    .get("x-generation-id")
                    .map(|v| v.to_str().unwrap().to_owned());
                let mut stream = resp.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    chunk.unwrap();
                }
                match status {
                    200 => answered
                        .lock()
                        .unwrap()
                        .push((id.expect("a generation id"), Instant::now())),
                    // The backlog bound may refuse (never more than now and then).
                    503 => refused += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            refused
        }));
    }

    // While the load runs: resident memory, and how soon sampled answers are visible.
    let mut rss_after_warmup = 0;
    let mut rss_peak = 0;
    let mut late = Vec::new();
    let mut sampled = 0;
    let load_started = Instant::now();
    while Instant::now() < stop_at {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let rss = rss_kib(pid);
        if load_started.elapsed() < Duration::from_secs(1) {
            rss_after_warmup = rss_after_warmup.max(rss);
        }
        rss_peak = rss_peak.max(rss);
        let sample = answered.lock().unwrap().last().cloned();
        if let Some((id, at)) = sample {
            sampled += 1;
            loop {
                if generations_in(&db, std::slice::from_ref(&id)).await == 1 {
                    break;
                }
                if at.elapsed() > VISIBLE_WITHIN {
                    late.push(id.clone());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let mut refused = 0;
    for c in clients {
        refused += c.await.unwrap();
    }
    let answered = std::mem::take(&mut *answered.lock().unwrap());
    let last = answered.iter().map(|(_, at)| *at).max().unwrap();
    let ids: Vec<String> = answered.into_iter().map(|(id, _)| id).collect();
    tokio::time::sleep(VISIBLE_WITHIN.saturating_sub(last.elapsed())).await;
    let visible = generations_in(&db, &ids).await;

    eprintln!(
        "sustained load: {} answered ({:.0}/s), {refused} refused, {sampled} sampled, rss {} KiB after 1 s, peak {} KiB",
        ids.len(),
        ids.len() as f64 / LOAD.as_secs_f64(),
        rss_after_warmup,
        rss_peak
    );
    assert!(ids.len() > 200, "the load ran: {} answered", ids.len());
    assert!(
        sampled > 10 && late.is_empty(),
        "{} of {sampled} sampled generations were not visible within 2 s: {late:?}",
        late.len()
    );
    assert_eq!(
        visible,
        ids.len(),
        "every answered generation is in the database 2 s after the last answer"
    );
    assert!(
        rss_peak <= rss_after_warmup + RSS_GROWTH_MIB * 1024,
        "resident memory grew from {rss_after_warmup} KiB to {rss_peak} KiB under load"
    );
    let (ok, report) = ledger_verify_on(&backend);
    assert!(ok, "ledger verifies after the load: {report}");
    drop(gw);
    backend.drop_database().await;
}
