//! The writer's batches, on SQLite and (with `TEST_DATABASE_URL`) on Postgres: charges
//! a balance cannot cover take what is there, in order, never below zero, and every
//! shortfall is reported; a batch larger than one statement is recorded whole; the
//! ledger still sums to the balance.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use billing::{Charge, GenerationRecord, LedgerWriter, Usage, Wallet};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
};
use store::entities::{generation, user};

fn unique() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The databases to run on: a SQLite file, and a fresh Postgres database when the
/// suite has one. Returns (URL, what to drop afterwards).
async fn databases() -> Vec<(String, Option<(String, String)>)> {
    let dir = std::env::temp_dir().join(format!("tg_ledger_short_{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = vec![(
        format!("sqlite://{}?mode=rwc", dir.join("t.db").display()),
        None,
    )];
    if let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") {
        let name = format!("tg_short_{}", unique());
        let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        let base = admin_url.split('?').next().unwrap();
        let root = &base[..base.rfind('/').unwrap()];
        out.push((format!("{root}/{name}"), Some((admin_url, name))));
    }
    out
}

/// A new customer named `name-…` holding `balance` µc (minted through the ledger).
async fn customer(
    db: &sea_orm::DatabaseConnection,
    wallet: &Arc<Wallet>,
    name: &str,
    balance: i64,
) -> user::Model {
    let created = user::ActiveModel::enabled(
        format!("{name}-{}", unique()),
        String::new(),
        store::catalog::Role::Customer,
        "default".into(),
        None,
    )
    .insert(db)
    .await
    .unwrap();
    let mint = billing::accounts::Entry {
        kind: "mint",
        note: Some("test"),
        reference: None,
    };
    billing::accounts::adjust(db, wallet, created.id, balance, mint)
        .await
        .unwrap();
    created
}

fn record(id: &str, user_id: i64) -> GenerationRecord {
    GenerationRecord {
        id: id.to_owned(),
        upstream_id: None,
        user_id,
        key_id: 1,
        channel_id: Some(1),
        provider_name: Some("ch".into()),
        model: "gpt-4o-mini".into(),
        upstream_model: None,
        endpoint: "/v1/chat/completions".into(),
        streamed: false,
        cancelled: false,
        finish_reason: Some("stop".into()),
        usage: Usage::default(),
        latency_ms: Some(1),
        generation_time_ms: Some(1),
        status: "success",
        status_code: 200,
        error: None,
        client_ip: None,
        attempts: Vec::new(),
        created_at: chrono::Utc::now(),
        upstream_cost: 0,
    }
}

fn charge(user_id: i64, pending: i64, lease: u64) -> Option<Charge> {
    Some(Charge {
        user_id,
        key_id: 1,
        key_limited: false,
        pending,
        lease,
    })
}

#[tokio::test]
async fn charges_a_balance_cannot_cover_take_what_is_there_and_the_rest_is_a_reported_shortfall() {
    for (url, drop) in databases().await {
        let db = store::db::connect(&url).await.unwrap();
        let wallet = Arc::new(Wallet::new(db.clone(), &store::Shared::memory()));
        let alice = customer(&db, &wallet, "alice", 50).await;
        let shortfalls = billing::metrics::SHORTFALLS.load(Ordering::Relaxed);

        // Three charges in one batch against 50 µc: 40 in full, 10 of the next 40,
        // nothing of the last 5; and a charge for a user that no longer exists.
        let (writer, _task) = LedgerWriter::start(db.clone(), Arc::clone(&wallet));
        let ids = ["gen-a", "gen-b", "gen-c", "gen-gone"];
        writer.submit(record(ids[0], alice.id), charge(alice.id, 40, 1));
        writer.submit(record(ids[1], alice.id), charge(alice.id, 40, 2));
        writer.submit(record(ids[2], alice.id), charge(alice.id, 5, 3));
        writer.submit(record(ids[3], 999_999), charge(999_999, 7, 4));
        writer.flush().await;

        let after = user::Entity::find_by_id(alice.id)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.balance, 0, "{url}: never below zero");
        assert_eq!(after.used, 50, "{url}: used is what was taken");
        let mut costs = Vec::new();
        for id in ids {
            let g = generation::Entity::find_by_id(id.to_owned())
                .one(&db)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{url}: {id} recorded"));
            costs.push((g.cost, g.error));
        }
        assert_eq!(costs[0], (40, None), "{url}");
        assert_eq!(
            costs[1],
            (
                10,
                Some("charge_shortfall: 30 µc owed were not charged".into())
            ),
            "{url}"
        );
        assert_eq!(
            costs[2],
            (
                0,
                Some("charge_shortfall: 5 µc owed were not charged".into())
            ),
            "{url}"
        );
        assert_eq!(
            costs[3],
            (
                0,
                Some("charge_shortfall: 7 µc owed were not charged".into())
            ),
            "{url}"
        );
        assert!(
            billing::metrics::SHORTFALLS.load(Ordering::Relaxed) >= shortfalls + 3,
            "{url}: every shortfall is counted, the gone user's too"
        );
        ledger_sums_to_balances(&db, &url).await;
        drop_db(drop).await;
    }
}

#[tokio::test]
async fn a_batch_larger_than_the_largest_insert_is_recorded_whole_and_charged_exactly() {
    for (url, drop) in databases().await {
        let db = store::db::connect(&url).await.unwrap();
        let wallet = Arc::new(Wallet::new(db.clone(), &store::Shared::memory()));
        let bob = customer(&db, &wallet, "bob", 1_000).await;
        // 300 at once: more than one of the largest statements (128 rows) in a batch,
        // on the writer's own pool as the gateway opens it (one connection on SQLite).
        let writer_db = store::db::connect_writer(&url).await.unwrap();
        let (writer, _task) = LedgerWriter::start(writer_db, Arc::clone(&wallet));
        let tag = unique();
        for i in 0..300_u64 {
            let mut r = record(&format!("gen-{tag}-{i}"), bob.id);
            r.upstream_id = Some(format!("chatcmpl-{tag}-{i}"));
            writer.submit(r, charge(bob.id, 1 + i64::from(i % 3 == 0), i + 1));
        }
        writer.flush().await;
        let after = user::Entity::find_by_id(bob.id)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        let owed: i64 = (0..300).map(|i| 1 + i64::from(i % 3 == 0)).sum();
        assert_eq!((after.balance, after.used), (1_000 - owed, owed), "{url}");
        for i in [0, 127, 128, 255, 256, 299] {
            let g = generation::Entity::find_by_id(format!("gen-{tag}-{i}"))
                .one(&db)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{url}: generation {i} recorded"));
            assert_eq!(g.cost, 1 + i64::from(i % 3 == 0), "{url}: {i}");
            assert_eq!(g.upstream_id, Some(format!("chatcmpl-{tag}-{i}")), "{url}");
        }
        let recorded = generation::Entity::find()
            .filter(generation::Column::UserId.eq(bob.id))
            .count(&db)
            .await
            .unwrap();
        assert_eq!(recorded, 300, "{url}");
        ledger_sums_to_balances(&db, &url).await;
        drop_db(drop).await;
    }
}

async fn ledger_sums_to_balances(db: &sea_orm::DatabaseConnection, url: &str) {
    let report = billing::verify::verify(db).await.unwrap();
    assert!(
        report.ok,
        "{url}: balance = Σ ledger: {:?}",
        report.differences
    );
}

async fn drop_db(drop: Option<(String, String)>) {
    if let Some((admin_url, name)) = drop {
        let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}
