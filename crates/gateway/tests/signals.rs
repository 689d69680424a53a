//! The real `gateway` binary under SIGTERM: an in-flight stream finishes, its charge is
//! flushed before exit, and the generation is still there after a restart.

// Test code: clippy's allow-*-in-tests covers #[test] fns only, not this file's helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROOT_PASSWORD: &str = "root-password-for-signals";
const SECRET_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const MODEL: &str = "gpt-4o-mini";

// ---------------------------------------------------------------------------------------
// The mock upstream: hand-written HTTP/1.1, one task per connection.

/// Starts the mock on a free port and returns its base URL.
async fn start_mock_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = serve_connection(conn).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// Reads one request (headers, then `Content-Length` bytes of body) and answers it.
async fn serve_connection(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let content_length = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < header_end + content_length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Value = serde_json::from_slice(&buf[header_end..]).unwrap_or(Value::Null);

    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let is_chat = method == "POST" && path.split('?').next() == Some("/v1/chat/completions");
    if !is_chat || body["stream"] != json!(true) {
        let msg = br#"{"error":{"message":"mock: only streaming chat","type":"invalid_request_error","param":null,"code":null}}"#;
        let head = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            msg.len()
        );
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(msg).await?;
        return conn.shutdown().await;
    }

    conn.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n",
    )
    .await?;
    conn.flush().await?;
    let content = json!({"id": "chatcmpl-sig", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}]});
    for _ in 0..10 {
        conn.write_all(format!("data: {content}\n\n").as_bytes())
            .await?;
        conn.flush().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finish = json!({"id": "chatcmpl-sig", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let usage = json!({"id": "chatcmpl-sig", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}});
    conn.write_all(format!("data: {finish}\n\ndata: {usage}\n\ndata: [DONE]\n\n").as_bytes())
        .await?;
    conn.flush().await?;
    conn.shutdown().await
}

// ---------------------------------------------------------------------------------------
// The gateway process.

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("tollgate-signals-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A running `gateway` child; killed on drop (its log is printed if the test failed).
struct Gateway {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Gateway {
    fn start(dir: &Path, name: &str) -> Self {
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let db = dir.join("t.db");
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env("TOLLGATE_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", db.display()),
            )
            .env("TOLLGATE_ROOT_PASSWORD", ROOT_PASSWORD)
            .env("TOLLGATE_SECRET_KEY", SECRET_KEY)
            .env("TOLLGATE_DATA_DIR", dir.join("data"))
            .env("RUST_LOG", "info")
            .env_remove("REDIS_URL")
            .env_remove("TOLLGATE_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Gateway {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Polls `GET /healthz` until it answers 200 (at most 30 s).
    async fn wait_healthy(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = http.get(self.url("/healthz")).send().await
                && resp.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the gateway exited before it was healthy: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the gateway was not healthy within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit on its own.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit within {limit:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("----- {} -----\n{log}", self.log.display());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Admin API helpers.

async fn api(
    http: &reqwest::Client,
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, gw.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn login_root(http: &reqwest::Client, gw: &Gateway) -> String {
    let resp = http
        .post(gw.url("/api/auth/login"))
        .json(&json!({"username": "root", "password": ROOT_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "root login");
    let v: Value = resp.json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// Credits are JSON numbers; serde_json's default float parsing may be 1 ULP off.
fn assert_credits(got: &Value, want: f64, context: &Value) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {context}"));
    assert!((got - want).abs() < 1e-12, "{got} != {want}: {context}");
}

// ---------------------------------------------------------------------------------------

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

/// `gateway ledger verify` on the test's database: (exit success, report).
fn ledger_verify(dir: &Path) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["ledger", "verify"])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.join("t.db").display()),
        )
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not a report: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_leaves_every_balance_equal_to_its_ledger() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new();
    let upstream = start_mock_upstream().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut gw = Gateway::start(&dir.0, "first");
    gw.wait_healthy(&http).await;
    let token = login_root(&http, &gw).await;
    let (_, me) = api(&http, &gw, reqwest::Method::GET, "/api/me", &token, None).await;
    let root = me["id"].as_i64().unwrap();
    let setup = [
        (
            reqwest::Method::POST,
            format!("/api/users/{root}/credits"),
            json!({"amount": 1}),
        ),
        (
            reqwest::Method::POST,
            "/api/channels".to_owned(),
            json!({"name": "mock", "type": "openai", "base_url": upstream, "keys": ["sk-up"], "models": [MODEL]}),
        ),
        (
            reqwest::Method::PUT,
            format!("/api/pricing/models/{MODEL}"),
            json!({"input": 0.15, "output": 0.6}),
        ),
    ];
    for (method, path, body) in setup {
        let (status, v) = api(&http, &gw, method, &path, &token, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {v}");
    }
    let (_, key) = api(
        &http,
        &gw,
        reqwest::Method::POST,
        "/api/keys",
        &token,
        Some(json!({"name": "load"})),
    )
    .await;
    let key = key["key"].as_str().unwrap().to_owned();

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
