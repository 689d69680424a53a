//! What the real `gateway` binary writes to its log: with `TOLLGATE_LOG_FORMAT=json`
//! one JSON object a line, every line of a request carrying its generation id, key,
//! model and channel; in the human format, no colour codes when the output is a file.

// Test code: clippy's allow-*-in-tests covers #[test] fns only, not this file's helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Starts a gateway with `env`, makes two streamed calls (tried on a dead channel
/// first), stops it; its log and the generation ids.
async fn run(dir: &TempDir, name: &str, env: &[(&str, &str)]) -> (String, Vec<String>, String) {
    let http = http_client(Duration::from_secs(20));
    let upstream = start_mock_upstream().await;
    let mut gw = Gateway::start_on(&dir.0, name, &Backend::sqlite(&dir.0), env);
    gw.wait_healthy(&http).await;
    let (token, _, key) = provision(
        &http,
        &gw,
        &upstream,
        1.0,
        json!({"input": 0.15, "output": 0.6}),
    )
    .await;
    // A second channel that refuses connections, tried first: its failure is logged.
    let (status, v) = api(
        &http,
        &gw,
        reqwest::Method::POST,
        "/api/channels",
        &token,
        Some(json!({"name": "dead", "type": "openai", "base_url": format!("http://127.0.0.1:{}", free_port()),
            "keys": ["sk-dead-upstream-key-5678"], "models": [MODEL], "priority": 10})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids = Vec::new();
    for stream in [true, true] {
        let resp = http
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": MODEL, "stream": stream,
                "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        ids.push(
            resp.headers()["x-generation-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        resp.bytes().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(20)).await;
    (std::fs::read_to_string(&gw.log).unwrap(), ids, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_and_a_request_is_found_by_its_generation_id() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new();
    let (log, ids, key) = run(
        &dir,
        "json",
        &[
            ("TOLLGATE_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,relay_core=debug"),
        ],
    )
    .await;
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{log}");
    for id in &ids {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| l["span"]["generation.id"] == id.as_str())
            .collect();
        // The failed try on the dead channel (the first call's, at least), and the
        // settlement.
        assert!(
            id != &ids[0]
                || mine
                    .iter()
                    .any(|l| l["fields"]["message"] == "upstream try failed"),
            "{id}: {mine:?}"
        );
        let settled = mine
            .iter()
            .find(|l| l["fields"]["message"] == "settled")
            .unwrap_or_else(|| panic!("{id}: no settlement line in {mine:?}"));
        assert!(settled["span"]["key.id"].is_number(), "{settled}");
        assert_eq!(settled["span"]["model"], MODEL);
        assert!(settled["span"]["channel.id"].is_number(), "{settled}");
        assert!(settled["timestamp"].is_string() && settled["level"] == "DEBUG");
    }
    assert!(!log.contains(&key) && !log.contains("sk-dead-upstream-key-5678"));
    assert!(!log.contains('\u{1b}'), "colour codes in a JSON log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_human_log_has_no_colour_codes_when_written_to_a_file() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new();
    let (log, ids, _) = run(&dir, "text", &[]).await;
    assert!(log.contains("tollgate listening"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    // The span is on the line: a request's failed try names its generation.
    assert!(
        log.lines()
            .any(|l| l.contains("upstream try failed") && l.contains(&ids[0])),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_still_setting_the_old_allocator_variable_is_told_it_is_not_read() {
    let http = http_client(Duration::from_secs(20));
    let dir = TempDir::new();
    let mut gw = Gateway::start_on(
        &dir.0,
        "old-allocator-variable",
        &Backend::sqlite(&dir.0),
        &[("_RJEM_MALLOC_CONF", "narenas:4")],
    );
    gw.wait_healthy(&http).await;
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&gw.log).unwrap();
    assert!(
        log.contains("_RJEM_MALLOC_CONF is not read on Linux any more; set MALLOC_CONF instead"),
        "{log}"
    );
}

/// A service often starts with a soft open-file limit of 1,024 (systemd's default)
/// under a much higher hard one; kept-alive client connections alone could use that
/// up. The gateway raises its soft limit to the hard one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_under_a_low_soft_open_file_limit_raises_it_to_the_hard_one() {
    let http = http_client(Duration::from_secs(20));
    let (_, hard) = open_file_limits(&std::process::id().to_string());
    assert!(
        hard > 256,
        "this test needs a hard limit above 256 (it is {hard})"
    );
    // util-linux's prlimit sets the soft limit and executes the gateway.
    let dir = TempDir::new();
    let mut gw = Gateway::start_through(
        &["prlimit", "--nofile=256:", "--"],
        &dir.0,
        "open-file-limit",
        &Backend::sqlite(&dir.0),
        &[],
        free_port(),
    );
    gw.wait_healthy(&http).await;
    let child = gw.child.id().to_string();
    assert_eq!(open_file_limits(&child), (hard, hard));
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(20)).await;
}

/// A process's soft and hard open-file limits, from `/proc/PID/limits`.
fn open_file_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut n = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (n.next().unwrap(), n.next().unwrap())
}
