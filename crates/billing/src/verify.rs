//! `ledger verify`: the invariant every user's money obeys — balance equals the sum
//! of its ledger, and no balance is below zero — checked against the database.

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde::Serialize;

use crate::BillingError;

/// One user whose balance and ledger disagree (or whose balance is negative).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Difference {
    pub user_id: i64,
    pub username: String,
    pub balance: i64,
    pub ledger_sum: i64,
}

/// What a verification found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub users_checked: u64,
    pub transactions: u64,
    pub differences: Vec<Difference>,
}

/// Compares every user's balance with the sum of its ledger rows, in one query.
pub async fn verify(db: &DatabaseConnection) -> Result<Report, BillingError> {
    let backend = db.get_database_backend();
    let sql = "SELECT u.id AS user_id, u.username AS username, u.balance AS balance, \
               CAST(COALESCE(t.total, 0) AS BIGINT) AS ledger_sum, \
               CAST(COALESCE(t.n, 0) AS BIGINT) AS n \
               FROM users u LEFT JOIN \
               (SELECT user_id, SUM(amount) AS total, COUNT(*) AS n FROM transactions GROUP BY user_id) t \
               ON t.user_id = u.id ORDER BY u.id";
    let rows = db
        .query_all_raw(Statement::from_string(backend, sql))
        .await?;
    let mut differences = Vec::new();
    let mut transactions = 0_u64;
    for row in &rows {
        let balance: i64 = row.try_get("", "balance")?;
        let ledger_sum: i64 = row.try_get("", "ledger_sum")?;
        let n: i64 = row.try_get("", "n")?;
        transactions += u64::try_from(n).unwrap_or(0);
        if balance != ledger_sum || balance < 0 {
            differences.push(Difference {
                user_id: row.try_get("", "user_id")?,
                username: row.try_get("", "username")?,
                balance,
                ledger_sum,
            });
        }
    }
    Ok(Report {
        ok: differences.is_empty(),
        users_checked: rows.len() as u64,
        transactions,
        differences,
    })
}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    use store::entities::{transaction, user};

    use super::*;

    async fn user(db: &DatabaseConnection, name: &str, balance: i64) -> i64 {
        let mut u = user::ActiveModel::enabled(
            name.into(),
            String::new(),
            store::catalog::Role::Customer,
            "default".into(),
            None,
        );
        u.balance = Set(balance);
        u.insert(db).await.unwrap().id
    }

    async fn entry(db: &DatabaseConnection, user_id: i64, amount: i64) {
        transaction::ActiveModel {
            user_id: Set(user_id),
            kind: Set("mint".into()),
            amount: Set(amount),
            balance_after: Set(0),
            reference: Set(None),
            note: Set(None),
            created_at: Set(chrono::Utc::now()),
            ..Default::default()
        }
        .insert(db)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_balance_that_is_not_the_sum_of_its_ledger_is_reported() {
        let dir = std::env::temp_dir().join(format!("tg-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/v.db?mode=rwc", dir.display());
        let _ = std::fs::remove_file(dir.join("v.db"));
        let db = store::db::connect(&url).await.unwrap();
        let good = user(&db, "good", 150).await;
        entry(&db, good, 100).await;
        entry(&db, good, 50).await;
        let empty = user(&db, "empty", 0).await;
        let bad = user(&db, "bad", 70).await;
        entry(&db, bad, 60).await;
        let report = verify(&db).await.unwrap();
        assert!(!report.ok);
        assert_eq!(report.users_checked, 3);
        assert_eq!(report.transactions, 3);
        assert_eq!(
            report.differences,
            vec![Difference {
                user_id: bad,
                username: "bad".into(),
                balance: 70,
                ledger_sum: 60
            }]
        );
        let _ = empty;
    }
}
