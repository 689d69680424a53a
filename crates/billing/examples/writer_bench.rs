//! How many settled generations per second the batched writer commits.
//!
//! `cargo run --release -p billing --example writer_bench -- <DATABASE_URL> [records] [users] [REDIS_URL]`
//! (a fresh database: it creates users and writes generations, charges and ledger
//! rows; with a Redis URL the wallet's counters live there, as in production).
//! `bench/writer.sh` makes a throw-away Postgres database and runs it. The holds are
//! taken and settled first; the clock runs from the first record handed to the writer
//! until the last is committed and its hold released in the wallet.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary"
)]

use std::sync::Arc;
use std::time::Instant;

use billing::wallet::Account;
use billing::{Charge, GenerationRecord, LedgerWriter, Usage, Wallet};
use sea_orm::ActiveModelTrait;
use store::entities::user;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .expect("usage: writer_bench <DATABASE_URL> [records] [users]");
    let records: usize = args.get(2).map_or(50_000, |n| n.parse().unwrap());
    let users: i64 = args.get(3).map_or(100, |n| n.parse().unwrap());
    let db = store::db::connect(url).await.unwrap();
    let shared = match args.get(4) {
        Some(redis) => store::Shared::redis(redis, &format!("tgbench{}", std::process::id()))
            .await
            .unwrap(),
        None => store::Shared::memory(),
    };
    let wallet = Arc::new(Wallet::new(db.clone(), &shared));
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for i in 0..users {
        let u = user::ActiveModel::enabled(
            format!(
                "bench-{i}-{}",
                now.timestamp_nanos_opt().unwrap_or_default()
            ),
            String::new(),
            store::catalog::Role::Customer,
            "default".into(),
            None,
        )
        .insert(&db)
        .await
        .unwrap();
        wallet
            .sync(&[billing::Synced {
                account: Account::User(u.id),
                limit: 0,
                rev: 0,
            }])
            .await
            .unwrap();
        let mint = billing::accounts::Entry {
            kind: "mint",
            note: Some("bench"),
            reference: None,
        };
        billing::accounts::adjust(&db, &wallet, u.id, 1_000_000_000_000, mint)
            .await
            .unwrap();
        ids.push(u.id);
    }
    let mut settled = Vec::with_capacity(records);
    for i in 0..records {
        let user_id = ids[i % ids.len()];
        let hold = wallet.reserve(user_id, None, 40).await.unwrap();
        let lease = hold.lease;
        let pending = wallet.settle(hold, 20).await.unwrap();
        let record = GenerationRecord {
            id: format!(
                "gen-bench-{i}-{}",
                now.timestamp_nanos_opt().unwrap_or_default()
            ),
            upstream_id: Some(format!("chatcmpl-{i}")),
            user_id,
            key_id: 1,
            channel_id: Some(1),
            provider_name: Some("bench".into()),
            model: "gpt-4o-mini".into(),
            upstream_model: Some("gpt-4o-mini-2024-07-18".into()),
            endpoint: "/v1/chat/completions".into(),
            streamed: false,
            cancelled: false,
            finish_reason: Some("stop".into()),
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 30,
                ..Usage::default()
            },
            latency_ms: Some(5),
            generation_time_ms: Some(5),
            status: "success",
            status_code: 200,
            error: None,
            client_ip: Some("127.0.0.1".into()),
            attempts: Vec::new(),
            created_at: now,
            upstream_cost: 0,
        };
        settled.push((
            record,
            Charge {
                user_id,
                key_id: 1,
                key_limited: false,
                pending,
                lease,
            },
        ));
    }
    // The writer on a pool of its own, as the gateway runs it.
    let writer_db = store::db::connect_writer(url).await.unwrap();
    let (writer, _task) = LedgerWriter::start(writer_db, Arc::clone(&wallet));
    let started = Instant::now();
    for (record, charge) in settled {
        writer.submit(record, Some(charge));
    }
    let queued = started.elapsed();
    writer.flush().await;
    let total = started.elapsed();
    let report = billing::verify::verify(&db).await.unwrap();
    println!(
        "writer: {records} settled generations for {users} users in {:.2} s (queued in {:.2} s) = {:.0} generations/s; ledger verify ok={}",
        total.as_secs_f64(),
        queued.as_secs_f64(),
        records as f64 / total.as_secs_f64(),
        report.ok
    );
}
