//! The relay pipeline end to end with no database and no Redis: an in-memory wallet and
//! ledger queue behind the `Funds` and `Records` traits, a hand-written upstream on a
//! local port. What is checked is the money: what was held, settled and recorded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing::{Account, BillingError, Charge, GenerationRecord, Hold};
use bytes::Bytes;
use relay_core::funds::{Funds, Pending, Records};
use relay_core::health::{BreakerConfig, Breakers, HealthSink, SuspectKey};
use relay_core::meter::Settler;
use relay_core::pipeline::{Inbound, Pipeline, Routing};
use relay_core::protocol::Protocol;
use relay_core::relay::ChatAnswer;
use relay_core::upstream::UpstreamClient;
use relay_core::{RelayError, Router};
use store::Catalog;
use store::catalog::{
    ChannelEntry, ChannelKind, ChannelSecret, ChannelStatus, KeyEntry, Standing, UserEntry,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY: &str = "sk-pipeline-test";
const MODEL: &str = "gpt-4o-mini";

/// A wallet in memory: one balance per user, holds taken from it.
#[derive(Default)]
struct MemoryFunds {
    balance: Mutex<HashMap<i64, i64>>,
    lease: AtomicU64,
    settled: Mutex<Vec<(i64, i64)>>,
    released: AtomicUsize,
}

impl Funds for MemoryFunds {
    fn reserve(
        &self,
        user_id: i64,
        key_id: Option<i64>,
        amount: i64,
    ) -> Pending<'_, Result<Hold, BillingError>> {
        Box::pin(async move {
            let mut b = self.balance.lock().unwrap();
            let left = b.entry(user_id).or_default();
            if *left < amount {
                return Err(BillingError::Insufficient);
            }
            *left -= amount;
            Ok(Hold {
                user_id,
                key_id,
                amount,
                lease: self.lease.fetch_add(1, Ordering::Relaxed),
            })
        })
    }

    fn settle(&self, hold: Hold, cost: i64) -> Pending<'_, Result<i64, BillingError>> {
        Box::pin(async move {
            let charged = cost.clamp(0, hold.amount);
            *self
                .balance
                .lock()
                .unwrap()
                .entry(hold.user_id)
                .or_default() += hold.amount - charged;
            self.settled.lock().unwrap().push((hold.amount, charged));
            Ok(charged)
        })
    }

    fn release(&self, hold: Hold) -> Pending<'_, Result<(), BillingError>> {
        Box::pin(async move {
            *self
                .balance
                .lock()
                .unwrap()
                .entry(hold.user_id)
                .or_default() += hold.amount;
            self.released.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    fn available(&self, account: Account) -> Pending<'_, Result<Option<i64>, BillingError>> {
        Box::pin(async move {
            Ok(match account {
                Account::User(id) => self.balance.lock().unwrap().get(&id).copied(),
                Account::Key(_) => None,
            })
        })
    }
}

/// The ledger queue in memory: what would have gone to the database.
#[derive(Default)]
struct MemoryRecords {
    submitted: Mutex<Vec<(GenerationRecord, Option<Charge>)>>,
}

impl Records for MemoryRecords {
    fn submit(&self, record: GenerationRecord, charge: Option<Charge>) {
        self.submitted.lock().unwrap().push((record, charge));
    }

    fn admit(&self) -> Pending<'_, bool> {
        Box::pin(async { true })
    }

    fn refuses(&self) -> bool {
        false
    }
}

struct NoHealth;

impl HealthSink for NoHealth {
    fn key_suspected(&self, _: SuspectKey) {}
    fn channel_failed(&self, _: i64, _: String) {}
}

/// An upstream that answers every request with `status` and `body`, counting them.
async fn upstream(status: u16, body: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let hits = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0_u8; 4096];
                loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                hits.fetch_add(1, Ordering::Relaxed);
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), hits)
}

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
const BROKEN: &str = r#"{"error":{"message":"upstream is down","type":"server_error"}}"#;

fn channel(id: i64, priority: i32, base_url: String) -> Arc<ChannelEntry> {
    Arc::new(ChannelEntry {
        id,
        name: format!("ch{id}"),
        kind: ChannelKind::OpenAi,
        models: vec![MODEL.into()],
        model_mapping: HashMap::new(),
        groups: vec!["default".into()],
        priority,
        weight: 1,
        headers: Vec::new(),
        timeout_s: 10,
        status: ChannelStatus::Enabled,
        keys: vec![ChannelSecret::new(
            ChannelKind::OpenAi,
            id * 10,
            format!("sk-up-{id}"),
        )],
        next_key: AtomicUsize::new(0),
        costs: Default::default(),
        wire: store::wire::Wire::of(ChannelKind::OpenAi, &base_url, &[]),
        base_url,
    })
}

/// One customer (user 1, key 7) and the given channels; gpt-4o-mini at 0.1 / 1.0
/// credits per 1M tokens (100 / 1,000 µc).
fn catalog(channels: Vec<Arc<ChannelEntry>>) -> Catalog {
    let mut c = Catalog::default();
    c.keys.insert(
        store::digest_secret(KEY),
        Arc::new(KeyEntry {
            id: 7,
            user_id: 1,
            name: "k".into(),
            status: Standing::Enabled,
            expires_at: None,
            models: None,
            allow_ips: None,
            rpm: None,
            tpm: None,
            max_concurrency: None,
            credit_limit: None,
            used: 0,
        }),
    );
    c.users.insert(
        1,
        Arc::new(UserEntry {
            id: 1,
            username: "alice".into(),
            role: Some(store::catalog::Role::Customer),
            group: "default".into(),
            parent_id: None,
            status: Standing::Enabled,
            balance: 0,
            used: 0,
        }),
    );
    c.prices.insert(
        MODEL.into(),
        store::catalog::Price {
            input: 100_000_000,
            output: 1_000_000_000,
            ..Default::default()
        },
    );
    c.channels = channels;
    c
}

fn pipeline(funds: &Arc<MemoryFunds>, records: &Arc<MemoryRecords>) -> Pipeline {
    Pipeline {
        settler: Settler {
            wallet: Arc::clone(funds) as Arc<dyn Funds>,
            writer: Arc::clone(records) as Arc<dyn Records>,
            tasks: tokio_util::task::TaskTracker::new(),
            metrics: Arc::new(relay_core::metrics::Metrics::new()),
        },
        shared: Arc::new(store::Shared::memory()),
        availability: Arc::new(store::Availability::default()),
        client: UpstreamClient::new().unwrap(),
        breakers: Arc::new(Breakers::new(BreakerConfig::default())),
        health: Arc::new(NoHealth),
        max_body_mb: 1,
        max_upstream_mb: 1,
    }
}

fn chat_request() -> Inbound<futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, ()>>>> {
    let body = format!(
        r#"{{"model":"{MODEL}","max_tokens":100,"messages":[{{"role":"user","content":"hello"}}]}}"#
    );
    Inbound {
        proto: Protocol::OpenAiChat,
        key: Some(KEY.into()),
        ip: None,
        declared_len: Some(body.len()),
        content_type: Some("application/json".into()),
        body: futures_util::stream::iter(vec![Ok(Bytes::from(body))]),
        gemini: None,
        extra: Vec::new(),
    }
}

/// Runs one request; waits for its settlement task.
async fn run(pipeline: &Pipeline, catalog: &Catalog) -> Result<ChatAnswer, RelayError> {
    let router = Router::build(catalog);
    let routing = Routing {
        catalog,
        router: &router,
        max_tries: 3,
    };
    let answered = pipeline.relay(routing, chat_request()).await;
    pipeline.settler.tasks.close();
    tokio::time::timeout(Duration::from_secs(5), pipeline.settler.tasks.wait())
        .await
        .unwrap();
    answered.result
}

/// 12 prompt tokens × 100 µc + 30 completion tokens × 1,000 µc.
const COST: i64 = 12 * 100 + 30 * 1_000;

#[tokio::test]
async fn a_served_request_is_charged_its_usage_and_recorded_with_the_charge() {
    let (url, _) = upstream(200, COMPLETION).await;
    let funds = Arc::new(MemoryFunds::default());
    funds.balance.lock().unwrap().insert(1, 1_000_000);
    let records = Arc::new(MemoryRecords::default());
    let p = pipeline(&funds, &records);
    let answer = run(&p, &catalog(vec![channel(1, 0, url)])).await.unwrap();
    assert!(matches!(answer, ChatAnswer::Complete(_)));
    let settled = funds.settled.lock().unwrap().clone();
    assert_eq!(settled.len(), 1, "one settlement");
    assert_eq!(settled[0].1, COST, "charged the reported usage");
    assert!(settled[0].0 >= COST, "the hold covered it");
    assert_eq!(funds.balance.lock().unwrap()[&1], 1_000_000 - COST);
    let submitted = records.submitted.lock().unwrap();
    let (record, charge) = &submitted[0];
    assert_eq!(record.status, "success");
    assert_eq!(
        (record.usage.prompt_tokens, record.usage.completion_tokens),
        (12, 30)
    );
    assert_eq!(charge.unwrap().pending, COST);
}

#[tokio::test]
async fn a_channel_that_fails_is_retried_on_the_next_and_the_request_is_charged_once() {
    let (bad, bad_hits) = upstream(500, BROKEN).await;
    let (good, good_hits) = upstream(200, COMPLETION).await;
    let funds = Arc::new(MemoryFunds::default());
    funds.balance.lock().unwrap().insert(1, 1_000_000);
    let records = Arc::new(MemoryRecords::default());
    let p = pipeline(&funds, &records);
    // The failing channel has the higher priority: it is tried first.
    let cat = catalog(vec![channel(1, 10, bad), channel(2, 0, good)]);
    run(&p, &cat).await.unwrap();
    assert_eq!(bad_hits.load(Ordering::Relaxed), 1);
    assert_eq!(good_hits.load(Ordering::Relaxed), 1);
    assert_eq!(funds.settled.lock().unwrap().len(), 1);
    assert_eq!(funds.balance.lock().unwrap()[&1], 1_000_000 - COST);
    let submitted = records.submitted.lock().unwrap();
    assert_eq!(submitted.len(), 1, "one generation for the request");
    let attempts: serde_json::Value =
        serde_json::from_str(&submitted[0].0.attempts_json().unwrap()).unwrap();
    assert_eq!(attempts.as_array().unwrap().len(), 2, "{attempts}");
    assert_eq!(submitted[0].0.channel_id, Some(2));
}

#[tokio::test]
async fn when_every_channel_fails_the_hold_is_released_and_nothing_is_charged() {
    let (bad, _) = upstream(500, BROKEN).await;
    let funds = Arc::new(MemoryFunds::default());
    funds.balance.lock().unwrap().insert(1, 1_000_000);
    let records = Arc::new(MemoryRecords::default());
    let p = pipeline(&funds, &records);
    let err = run(&p, &catalog(vec![channel(1, 0, bad)]))
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), 502);
    assert!(funds.settled.lock().unwrap().is_empty());
    assert_eq!(funds.released.load(Ordering::Relaxed), 1);
    assert_eq!(funds.balance.lock().unwrap()[&1], 1_000_000);
    let submitted = records.submitted.lock().unwrap();
    assert_eq!(submitted[0].0.status, "error");
    assert!(submitted[0].1.is_none(), "no charge");
}

#[tokio::test]
async fn a_request_the_balance_cannot_cover_never_reaches_an_upstream_and_is_recorded_uncharged() {
    let (url, hits) = upstream(200, COMPLETION).await;
    let funds = Arc::new(MemoryFunds::default());
    funds.balance.lock().unwrap().insert(1, 10);
    let records = Arc::new(MemoryRecords::default());
    let p = pipeline(&funds, &records);
    let err = run(&p, &catalog(vec![channel(1, 0, url)]))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RelayError::InsufficientQuota), "{err:?}");
    assert_eq!(hits.load(Ordering::Relaxed), 0);
    assert_eq!(funds.balance.lock().unwrap()[&1], 10);
    let submitted = records.submitted.lock().unwrap();
    assert_eq!(submitted[0].0.status_code, 402);
    assert!(submitted[0].1.is_none());
}
