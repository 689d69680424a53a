//! `spawn_app`: the real gateway on port 0 with a database of its own, and typed
//! helpers for the admin API, the relay and the money checks every test makes.

use std::time::Duration;

use actix_web::web;
use gateway::state::AppState;
use gateway::{Application, Config};
use reqwest::StatusCode;
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, EntityTrait, QueryFilter, QueryOrder, Statement,
};
use serde_json::{Value, json};
use store::entities::{generation, transaction, user};

/// The root password every test app starts with.
pub const ROOT_PASSWORD: &str = "root-password-for-tests";

/// A running gateway under test.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub state: web::Data<AppState>,
    pub root_token: String,
    pub root_id: i64,
    /// The configuration it was started with (a second instance can share it).
    pub config: Config,
    /// A pool of the test's own on the app's database. The app's pool may hold
    /// connections made on the server's worker runtimes, which die with the server; the
    /// checks after a stop must not depend on them.
    pub db: sea_orm::DatabaseConnection,
    handle: actix_web::dev::ServerHandle,
    postgres: Option<(String, String)>,
    /// Every secret this test gave the gateway or got from it (channel keys, `sk-`
    /// keys, passwords, the instance's secrets): none may ever reach a log line.
    secrets: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Every log line the gateways of this test binary wrote (as JSON, at `debug` for
/// Tollgate's crates), kept to check that no secret is ever logged.
static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
    std::sync::OnceLock::new();

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this process's logs (once): what the gateways log in every test.
fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,gateway=debug,relay_core=debug,billing=debug,store=debug,admin_web=debug",
            ))
            .with_writer(move || LogSink(std::sync::Arc::clone(&sink)))
            .try_init();
        buf
    })
    .clone()
}

/// The secrets in an admin API call: keys and passwords sent, keys received.
fn secrets_in(sent: Option<&Value>, got: &Value) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(body) = sent {
        if let Some(keys) = body.get("keys").and_then(Value::as_array) {
            for key in keys.iter().filter_map(Value::as_str) {
                found.push(key.to_owned());
                // A key of two halves (Kling's `access_key|secret_key`): each alone too.
                found.extend(key.split('|').map(str::to_owned));
            }
        }
        for field in ["password", "new_password", "key"] {
            if let Some(p) = body.get(field).and_then(Value::as_str) {
                found.push(p.to_owned());
            }
        }
    }
    for field in ["key", "token"] {
        if let Some(k) = got.get(field).and_then(Value::as_str) {
            found.push(k.to_owned());
        }
    }
    // Short strings could occur by chance; real secrets are long.
    found.retain(|s| s.len() >= 12);
    found
}

/// Which backends this run tests: `TEST_DATABASE_URL` / `TEST_REDIS_URL` when set.
pub fn backend_name() -> &'static str {
    match (
        std::env::var("TEST_DATABASE_URL").is_ok(),
        std::env::var("TEST_REDIS_URL").is_ok(),
    ) {
        (true, true) => "postgres+redis",
        (true, false) => "postgres+memory",
        (false, true) => "sqlite+redis",
        (false, false) => "sqlite+memory",
    }
}

/// Starts a gateway with the default test configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a gateway, letting the test adjust the configuration first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    relay_core_tls();
    capture_logs();
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let (database_url, postgres) = match std::env::var("TEST_DATABASE_URL") {
        Ok(admin_url) => {
            let name = format!("tg_{unique}");
            let admin = Database::connect(&admin_url)
                .await
                .expect("TEST_DATABASE_URL must answer");
            admin
                .execute_raw(Statement::from_string(
                    admin.get_database_backend(),
                    format!("CREATE DATABASE \"{name}\""),
                ))
                .await
                .expect("create test database");
            let base = admin_url.split('?').next().unwrap();
            let root = &base[..base.rfind('/').unwrap()];
            (format!("{root}/{name}"), Some((admin_url.clone(), name)))
        }
        Err(_) => {
            let dir = std::env::temp_dir().join("tollgate-tests");
            std::fs::create_dir_all(&dir).unwrap();
            (
                format!("sqlite://{}/{unique}.db?mode=rwc", dir.display()),
                None,
            )
        }
    };
    let mut config = Config {
        addr: "127.0.0.1:0".to_owned(),
        database_url,
        redis_url: std::env::var("TEST_REDIS_URL").ok(),
        redis_prefix: format!("tgtest:{unique}"),
        root_password: Some(ROOT_PASSWORD.to_owned()),
        jwt_secret: Some(format!("jwt-{unique}")),
        secret_key: Some(store::secret::SecretBox::generate_text()),
        data_dir: std::env::temp_dir().join("tollgate-tests").join(&unique),
        max_body_mb: 1,
        max_upstream_mb: 64,
        workers: Some(2),
        handle_signals: false,
        tunables: store::settings::Tunables {
            breaker_cooldown_s: 1,
            health_interval_s: 1,
            ..store::settings::Tunables::DEFAULT
        },
        lease_ttl_s: 2,
        trusted_proxies: Default::default(),
        public_url: None,
        log_retention_days: None,
        log_retention_every: Duration::from_millis(300),
        tasks: relay_core::task::TaskSettings {
            poll_min: Duration::from_millis(200),
            poll_max: Duration::from_secs(1),
            ..relay_core::task::TaskSettings::default()
        },
    };
    adjust(&mut config);
    let has_root_password = config.root_password.is_some();
    let app = Application::build(config.clone())
        .await
        .expect("gateway builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut test = TestApp {
        address,
        http,
        state,
        root_token: String::new(),
        root_id: 0,
        db: store::db::connect(&config.database_url)
            .await
            .expect("the test's own connection to the app's database"),
        secrets: std::sync::Arc::new(std::sync::Mutex::new(
            [
                Some(ROOT_PASSWORD.to_owned()),
                config.secret_key.clone(),
                config.jwt_secret.clone(),
            ]
            .into_iter()
            .flatten()
            .collect(),
        )),
        config,
        handle,
        postgres,
    };
    if has_root_password {
        test.root_token = test.login("root", ROOT_PASSWORD).await;
        let (_, me) = test
            .api("GET", "/api/me", &test.root_token.clone(), None)
            .await;
        test.root_id = me["id"].as_i64().unwrap();
    }
    test
}

impl TestApp {
    /// Calls the admin API; returns the status and the JSON body (Null when empty).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(token);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let got = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.secrets
            .lock()
            .unwrap()
            .extend(secrets_in(body.as_ref(), &got));
        (status, got)
    }

    /// Remembers a secret the test handed the gateway another way (a console form).
    pub fn secret(&self, secret: &str) {
        self.secrets.lock().unwrap().push(secret.to_owned());
    }

    /// Stops checking the logs for this test's secrets (a test that leaks one on
    /// purpose, to see the check catch it).
    pub fn forget_secrets(&self) {
        self.secrets.lock().unwrap().clear();
    }

    /// Panics when any secret this test gave the gateway or got from it appears in a
    /// log line of this process.
    pub fn assert_no_secret_logged(&self) {
        let Some(logs) = LOGS.get() else { return };
        let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        let secrets = self.secrets.lock().unwrap().clone();
        for secret in &secrets {
            if let Some(at) = logs.find(secret.as_str()) {
                let line_start = logs[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
                panic!(
                    "a secret was logged: {}",
                    &logs[line_start..line_end].replace(secret.as_str(), "<THE SECRET>")
                );
            }
        }
    }

    /// Logs in and returns the token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/api/auth/login", self.address))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "login of {username}");
        let token = resp.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        // A session token is a secret too.
        self.secret(&token);
        self.secret(password);
        token
    }

    /// Creates a user as root and returns its id.
    pub async fn create_user(&self, username: &str, role: &str) -> i64 {
        let (s, v) = self
            .api(
                "POST",
                "/api/users",
                &self.root_token,
                Some(json!({"username": username, "password": "password-123", "role": role})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    /// Root mints credits to a user.
    pub async fn mint(&self, user_id: i64, credits: f64) {
        let (s, v) = self
            .api(
                "POST",
                &format!("/api/users/{user_id}/credits"),
                &self.root_token,
                Some(json!({"amount": credits})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    /// Root adds an OpenAI channel at `base_url` serving `models`.
    pub async fn add_channel(
        &self,
        name: &str,
        base_url: &str,
        models: &[&str],
        extra: Value,
    ) -> i64 {
        let mut body = json!({"name": name, "type": "openai", "base_url": base_url, "keys": ["sk-upstream-secret-1234"], "models": models});
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                body[k] = v;
            }
        }
        let (s, v) = self
            .api("POST", "/api/channels", &self.root_token, Some(body))
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    /// Root prices a model (credits per 1M tokens).
    pub async fn set_price(&self, model: &str, input: f64, output: f64) {
        let (s, v) = self
            .api(
                "PUT",
                &format!("/api/pricing/models/{model}"),
                &self.root_token,
                Some(json!({"input": input, "output": output})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    /// Creates a key (as `token`'s user unless `body` names another) and returns it.
    pub async fn create_key(&self, token: &str, body: Value) -> (i64, String) {
        let (s, v) = self.api("POST", "/api/keys", token, Some(body)).await;
        assert_eq!(s, 201, "{v}");
        (
            v["id"].as_i64().unwrap(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    /// A customer with `credits` and a key of its own: (user id, key).
    pub async fn customer_with_key(&self, username: &str, credits: f64) -> (i64, String) {
        let id = self.create_user(username, "customer").await;
        self.mint(id, credits).await;
        let token = self.login(username, "password-123").await;
        let (_, key) = self.create_key(&token, json!({"name": "test"})).await;
        (id, key)
    }

    /// `POST /v1/chat/completions` with a key.
    pub async fn chat(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.address))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Waits until every settlement has run and the writer has committed it.
    pub async fn settled(&self) {
        for _ in 0..500 {
            if self.state.tasks.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.state.writer.flush().await;
    }

    /// A user's durable balance in micro-credits.
    pub async fn balance(&self, user_id: i64) -> i64 {
        user::Entity::find_by_id(user_id)
            .one(&self.db)
            .await
            .unwrap()
            .unwrap()
            .balance
    }

    /// A user's ledger, oldest first.
    pub async fn ledger(&self, user_id: i64) -> Vec<transaction::Model> {
        transaction::Entity::find()
            .filter(transaction::Column::UserId.eq(user_id))
            .order_by_asc(transaction::Column::Id)
            .all(&self.db)
            .await
            .unwrap()
    }

    /// Asserts balance = Σ ledger for every user, and no balance below zero.
    pub async fn assert_ledger_consistent(&self) {
        for u in user::Entity::find().all(&self.db).await.unwrap() {
            let sum: i64 = self.ledger(u.id).await.iter().map(|t| t.amount).sum();
            assert_eq!(
                u.balance, sum,
                "user {} balance {} != ledger sum {sum}",
                u.username, u.balance
            );
            assert!(u.balance >= 0, "user {} is negative", u.username);
        }
        if !self.root_token.is_empty() {
            let (status, report) = self
                .api("GET", "/api/ledger/verify", &self.root_token, None)
                .await;
            assert_eq!(status, 200, "{report}");
            assert_eq!(report["ok"], true, "ledger verify: {report}");
        }
    }

    /// Root prices `model` with the fields of `body` (credits per 1M tokens / per unit).
    pub async fn set_price_with(&self, model: &str, body: Value) {
        let (st, v) = self
            .api(
                "PUT",
                &format!("/api/pricing/models/{model}"),
                &self.root_token,
                Some(body),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }

    /// Asserts that `user_id`, which started with `start` µc and one mint, was charged
    /// exactly once, `cost` µc, for the generation `gen_id`.
    pub async fn assert_charged_once(&self, user_id: i64, start: i64, gen_id: &str, cost: i64) {
        self.settled().await;
        assert_eq!(self.balance(user_id).await, start - cost);
        let ledger = self.ledger(user_id).await;
        assert_eq!(ledger.len(), 2, "{ledger:?}");
        assert_eq!(ledger[1].kind, "consume");
        assert_eq!(ledger[1].amount, -cost);
        assert_eq!(ledger[1].balance_after, start - cost);
        assert_eq!(ledger[1].reference.as_deref(), Some(gen_id));
    }

    /// Settles, then checks balance = Σ ledger for every user (through the test's own
    /// pool, so it also works after the server stopped).
    pub async fn verify_ledger(&self) {
        self.settled().await;
        let report = billing::verify::verify(&self.db).await.unwrap();
        assert!(
            report.ok,
            "ledger verify at the end of the test: {report:?}"
        );
    }

    /// Waits (up to 5 s) for a generation to be recorded, then returns it.
    pub async fn wait_generation(&self, id: &str) -> generation::Model {
        for _ in 0..100 {
            self.settled().await;
            if let Some(g) = generation::Entity::find_by_id(id.to_owned())
                .one(&self.db)
                .await
                .unwrap()
            {
                return g;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("generation {id} not recorded within 5 s")
    }

    /// A generation row by id.
    pub async fn generation(&self, id: &str) -> generation::Model {
        generation::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("generation {id} not recorded"))
    }

    /// Task `id` once it has left the open states (at most 15 s).
    pub async fn task_when_ended(&self, id: &str) -> store::entities::task::Model {
        for _ in 0..150 {
            let task = billing::task::find(&self.db, id).await.unwrap().unwrap();
            if task.state != "queued" && task.state != "in_progress" {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("task {id} was still open after 15 s");
    }

    /// Starts another instance on the same database and Redis namespace.
    pub async fn second_instance(&self) -> TestApp {
        let (db, prefix, secret, jwt) = (
            self.config.database_url.clone(),
            self.config.redis_prefix.clone(),
            self.config.secret_key.clone(),
            self.config.jwt_secret.clone(),
        );
        let mut other = spawn_app_with(move |c| {
            c.database_url = db;
            c.redis_prefix = prefix;
            c.secret_key = secret;
            c.jwt_secret = jwt;
        })
        .await;
        // The database belongs to the first instance; the one made for this is unused.
        if let Some((admin_url, name)) = other.postgres.take() {
            drop_database(&admin_url, &name).await;
        }
        other
    }

    /// Stops the server gracefully: in-flight requests finish, writes are flushed.
    pub async fn stop_gracefully(&self) {
        self.handle.stop(true).await;
    }

    /// Stops the gateway and drops its Postgres database.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        if let Some((admin_url, name)) = &self.postgres
            && let Ok(admin) = Database::connect(admin_url).await
        {
            let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            let _ = admin
                .execute_raw(Statement::from_string(admin.get_database_backend(), drop))
                .await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_no_secret_logged();
        }
    }
}

fn relay_core_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(admin) = Database::connect(admin_url).await {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = admin
            .execute_raw(Statement::from_string(admin.get_database_backend(), drop))
            .await;
    }
}

/// The `X-Generation-Id` of an answer (every relay answer has one).
pub fn generation_id(resp: &reqwest::Response) -> String {
    let id = resp
        .headers()
        .get("x-generation-id")
        .unwrap_or_else(|| panic!("no x-generation-id on a {} answer", resp.status()))
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("gen-"), "{id}");
    id
}
