//! Helpers for the tests that run the real `gateway` binary: a hand-written mock
//! upstream, the child process (killed on drop, its log printed when the test failed),
//! the backend it runs on, and the admin API.

// Test code: clippy's allow-*-in-tests covers #[test] fns only, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

pub mod services;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ROOT_PASSWORD: &str = "root-password-for-signals";
pub const SECRET_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
pub const MODEL: &str = "gpt-4o-mini";

// ---------------------------------------------------------------------------------------
// The mock upstream: hand-written HTTP/1.1, one task per connection.

/// Starts the mock on a free port and returns its base URL.
pub async fn start_mock_upstream() -> String {
    start_mock_upstream_paced(Duration::from_millis(100)).await
}

/// The mock, with `pace` between its ten content chunks.
pub async fn start_mock_upstream_paced(pace: Duration) -> String {
    let port = accept_forever(move |conn| async move {
        let _ = serve_connection(conn, pace).await;
    })
    .await;
    format!("http://127.0.0.1:{port}")
}

/// Listens on a free port and serves each connection with `serve` in a task of its
/// own, for ever; returns the port.
async fn accept_forever<F, Fut>(serve: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            if let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn));
            }
        }
    });
    port
}

/// The mock behind TLS with the certificate chain and key in `cert` and `key` (PEM
/// files); returns its port.
pub async fn start_tls_upstream(cert: &Path, key: &Path) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    accept_forever(move |conn| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(tls) = acceptor.accept(conn).await {
                let _ = serve_connection(tls, Duration::from_millis(5)).await;
            }
        }
    })
    .await
}

/// Reads one request (headers, then `Content-Length` bytes of body) and answers it.
async fn serve_connection<S>(mut conn: S, pace: Duration) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // Asked as a proxy (absolute form, `POST http://host/path`): answered the same.
    let path = target
        .strip_prefix("http://")
        .and_then(|rest| rest.find('/').map(|at| &rest[at..]))
        .unwrap_or(target);
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
        tokio::time::sleep(pace).await;
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
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
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

/// A port that was free a moment ago, for a gateway child to listen on. It is picked
/// at random below the kernel's ephemeral range: a port the kernel handed out for
/// `bind(0)` is just as soon handed to some test's outgoing connection, and a CI run
/// failed once on a child that found its port taken that way ("Address already in
/// use"). No port is handed out twice in one test process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (
        ephemeral_low.saturating_sub(12_000).max(10_000),
        ephemeral_low,
    );
    let state = std::collections::hash_map::RandomState::new();
    let tries = if high > low + 1_000 { 2_000 } else { 0 };
    for attempt in 0_u64..tries {
        let mut h = state.build_hasher();
        h.write_u64(attempt);
        let port = low + u16::try_from(h.finish() % u64::from(high - low)).unwrap();
        let mut given = GIVEN.lock().unwrap();
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A test's HTTP client: rustls with the gateway's crypto provider (ring), and every
/// call limited to `timeout`.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(timeout).build().unwrap()
}

/// A running `gateway` child; killed on drop (its log is printed if the test failed).
pub struct Gateway {
    pub child: Child,
    pub base: String,
    pub port: u16,
    pub log: PathBuf,
}

impl Gateway {
    /// Starts the binary on SQLite in `dir` (no Redis).
    pub fn start(dir: &Path, name: &str) -> Self {
        Self::start_on(dir, name, &Backend::sqlite(dir), &[])
    }

    /// Starts the binary on `backend`, with `extra` environment variables.
    pub fn start_on(dir: &Path, name: &str, backend: &Backend, extra: &[(&str, &str)]) -> Self {
        Self::start_at(dir, name, backend, extra, free_port())
    }

    /// Like [`Gateway::start_on`], on a given port (a restart keeps its address).
    pub fn start_at(
        dir: &Path,
        name: &str,
        backend: &Backend,
        extra: &[(&str, &str)],
        port: u16,
    ) -> Self {
        Self::start_through(&[], dir, name, backend, extra, port)
    }

    /// Like [`Gateway::start_at`], run through `wrapper` (a program and its arguments
    /// that executes the gateway, such as `prlimit --nofile=256:`).
    pub fn start_through(
        wrapper: &[&str],
        dir: &Path,
        name: &str,
        backend: &Backend,
        extra: &[(&str, &str)],
        port: u16,
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let gateway = env!("CARGO_BIN_EXE_gateway");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(gateway),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(gateway);
                cmd
            }
        };
        cmd.env("TOLLGATE_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &backend.database_url)
            .env("TOLLGATE_ROOT_PASSWORD", ROOT_PASSWORD)
            .env("TOLLGATE_SECRET_KEY", SECRET_KEY)
            .env("TOLLGATE_DATA_DIR", dir.join("data"))
            .env("RUST_LOG", "info")
            .env_remove("TOLLGATE_JWT_SECRET");
        match &backend.redis {
            Some((url, prefix)) => cmd
                .env("REDIS_URL", url)
                .env("TOLLGATE_REDIS_PREFIX", prefix),
            None => cmd.env_remove("REDIS_URL"),
        };
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Gateway {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            log,
        }
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Polls `GET /healthz` until it answers 200 (at most 30 s).
    pub async fn wait_healthy(&mut self, http: &reqwest::Client) {
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

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
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

/// Secrets the binary tests hand a gateway (besides customer keys, found by shape).
const SECRETS: [&str; 5] = [
    ROOT_PASSWORD,
    SECRET_KEY,
    "sk-upstream-secret-1234",
    "sk-dead-upstream-key-5678",
    "mj-crash-secret",
];

/// The first secret written in `log`: one of [`SECRETS`], or a customer key (`sk-`
/// and 48 letters and digits).
fn secret_in(log: &str) -> Option<String> {
    if let Some(s) = SECRETS.iter().find(|s| log.contains(*s)) {
        return Some((*s).to_owned());
    }
    log.match_indices("sk-").find_map(|(at, _)| {
        let tail: String = log[at + 3..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        (tail.len() >= 48).then(|| format!("sk-{tail}"))
    })
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if std::thread::panicking() {
            eprintln!("----- {} -----\n{log}", self.log.display());
        } else if let Some(secret) = secret_in(&log) {
            panic!(
                "a secret ({}…) is in the gateway's log {}",
                &secret[..secret.len().min(6)],
                self.log.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Admin API helpers.

pub async fn api(
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

pub async fn login_root(http: &reqwest::Client, gw: &Gateway) -> String {
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

/// Root of a fresh gateway: `credits` minted to itself, a channel on `upstream` serving
/// [`MODEL`] priced at `price` (credits per 1M tokens), and a key of its own.
/// Returns (root's token, root's id, the key).
pub async fn provision(
    http: &reqwest::Client,
    gw: &Gateway,
    upstream: &str,
    credits: f64,
    price: Value,
) -> (String, i64, String) {
    let token = login_root(http, gw).await;
    let (_, me) = api(http, gw, reqwest::Method::GET, "/api/me", &token, None).await;
    let root = me["id"].as_i64().unwrap();
    let setup = [
        (
            reqwest::Method::POST,
            format!("/api/users/{root}/credits"),
            json!({"amount": credits}),
        ),
        (
            reqwest::Method::POST,
            "/api/channels".to_owned(),
            json!({"name": "mock", "type": "openai", "base_url": upstream, "keys": ["sk-up"], "models": [MODEL]}),
        ),
        (
            reqwest::Method::PUT,
            format!("/api/pricing/models/{MODEL}"),
            price,
        ),
        (
            reqwest::Method::POST,
            "/api/keys".to_owned(),
            json!({"name": "load"}),
        ),
    ];
    let mut key = Value::Null;
    for (method, path, body) in setup {
        let (status, v) = api(http, gw, method, &path, &token, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {v}");
        key = v;
    }
    (token, root, key["key"].as_str().unwrap().to_owned())
}

/// Credits are JSON numbers; serde_json's default float parsing may be 1 ULP off.
pub fn assert_credits(got: &Value, want: f64, context: &Value) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {context}"));
    assert!((got - want).abs() < 1e-12, "{got} != {want}: {context}");
}

// ---------------------------------------------------------------------------------------

/// Where a gateway under test keeps its state: SQLite in the test's directory, or
/// (with `TEST_DATABASE_URL` / `TEST_REDIS_URL`) a Postgres database and a Redis
/// namespace of the test's own.
pub struct Backend {
    pub database_url: String,
    pub redis: Option<(String, String)>,
    /// (admin URL, database name) of a Postgres database to drop at the end.
    postgres: Option<(String, String)>,
}

impl Backend {
    /// SQLite in `dir`, in process.
    pub fn sqlite(dir: &Path) -> Self {
        Backend {
            database_url: format!("sqlite://{}?mode=rwc", dir.join("t.db").display()),
            redis: None,
            postgres: None,
        }
    }

    /// A database and (optionally) a Redis URL with its key prefix, owned elsewhere.
    pub fn new(database_url: String, redis: Option<(String, String)>) -> Self {
        Backend {
            database_url,
            redis,
            postgres: None,
        }
    }

    /// The backend the suite runs on (see `TEST_DATABASE_URL`, `TEST_REDIS_URL`).
    pub async fn from_env(dir: &Path) -> Self {
        let unique = format!(
            "{}_{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let mut backend = Backend::sqlite(dir);
        if let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") {
            use sea_orm::ConnectionTrait;
            let name = format!("tg_bin_{unique}");
            let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .unwrap();
            let base = admin_url.split('?').next().unwrap();
            let root = &base[..base.rfind('/').unwrap()];
            backend.database_url = format!("{root}/{name}");
            backend.postgres = Some((admin_url, name));
        }
        if let Ok(url) = std::env::var("TEST_REDIS_URL") {
            backend.redis = Some((url, format!("tgbin:{unique}")));
        }
        backend
    }

    /// Drops the test's Postgres database (call after every gateway stopped).
    pub async fn drop_database(&self) {
        use sea_orm::ConnectionTrait;
        if let Some((admin_url, name)) = &self.postgres
            && let Ok(admin) = sea_orm::Database::connect(admin_url).await
        {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

/// `gateway ledger verify` on `backend`: (exit success, report).
pub fn ledger_verify_on(backend: &Backend) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["ledger", "verify"])
        .env("DATABASE_URL", &backend.database_url)
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not a report: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), report)
}

/// `gateway ledger verify` on SQLite in `dir`: (exit success, report).
pub fn ledger_verify(dir: &Path) -> (bool, Value) {
    ledger_verify_on(&Backend::sqlite(dir))
}
