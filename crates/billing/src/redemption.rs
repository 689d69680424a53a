//! Redemption codes: batches minted by admins or prepaid by resellers, each code shown
//! once and stored only as its SHA-256, and redeemed exactly once. Claiming a code and
//! crediting the redeemer happen in one transaction, so a code's credits land once or
//! not at all, whatever the concurrency.

use chrono::Utc;
use rand::Rng;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait,
};
use store::entities::redemption_code;

use crate::accounts::{Entry, Posted, after_commit, post};
use crate::{BillingError, Wallet, micros_to_credits};

/// The most codes one batch may hold.
pub const MAX_CODES_PER_BATCH: usize = 1000;
/// Anything longer than this cannot be a code; it is refused without a lookup.
const MAX_CODE_LEN: usize = 128;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Who pays for a batch of codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Funding {
    /// An admin's codes: credits are created when a code is redeemed, not before.
    Minted,
    /// A reseller's codes: the whole batch leaves its balance now, so redeeming one
    /// only moves credits that were already paid for.
    Prepaid,
}

/// A batch to create.
#[derive(Clone, Copy, Debug)]
pub struct NewBatch<'a> {
    pub name: &'a str,
    /// Micro-credits each code is worth.
    pub amount: i64,
    pub count: usize,
    pub created_by: i64,
    pub funding: Funding,
}

/// A created batch: the codes in clear (their only appearance) and, when prepaid,
/// the creator's posting.
#[derive(Debug)]
pub struct Issued {
    pub codes: Vec<String>,
    pub paid: Option<Posted>,
}

/// A successful redemption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redeemed {
    pub code_id: i64,
    /// Micro-credits the code added.
    pub amount: i64,
    /// The redeemer's balance after it.
    pub balance: i64,
    pub transaction_id: i64,
}

/// A new code: `tg-` and 32 base62 characters from the thread's CSPRNG (~190 bits).
pub fn generate_code() -> String {
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())]))
        .collect();
    format!("tg-{body}")
}

/// Creates a batch of codes. A prepaid batch's total is reserved in the wallet first
/// and debited in the same transaction that inserts the codes: either the codes exist
/// and are paid for, or neither.
pub async fn create_codes(
    db: &DatabaseConnection,
    wallet: &Wallet,
    batch: NewBatch<'_>,
) -> Result<Issued, BillingError> {
    if batch.amount <= 0 {
        return Err(BillingError::InvalidAmount(
            "amount must be positive".into(),
        ));
    }
    if !(1..=MAX_CODES_PER_BATCH).contains(&batch.count) {
        return Err(BillingError::InvalidAmount(format!(
            "count must be 1 to {MAX_CODES_PER_BATCH}"
        )));
    }
    let total = i64::try_from(batch.count)
        .ok()
        .and_then(|n| batch.amount.checked_mul(n))
        .ok_or_else(|| BillingError::InvalidAmount("amount × count is too large".into()))?;
    let codes: Vec<String> = (0..batch.count).map(|_| generate_code()).collect();
    let hold = match batch.funding {
        Funding::Prepaid => Some(wallet.reserve(batch.created_by, None, total).await?),
        Funding::Minted => None,
    };
    let result = insert_batch(db, &batch, &codes, total).await;
    match (result, hold) {
        (Ok(paid), Some(hold)) => {
            let synced: Vec<_> = paid.iter().map(|p| p.synced(batch.created_by)).collect();
            after_commit(
                wallet
                    .flushed(batch.created_by, None, hold.lease, hold.amount, &synced)
                    .await,
            );
            Ok(Issued { codes, paid })
        }
        (Ok(paid), None) => Ok(Issued { codes, paid }),
        (Err(e), hold) => {
            if let Some(hold) = hold {
                wallet.release(hold).await?;
            }
            Err(e)
        }
    }
}

/// Inserts the codes' hashes and, for a prepaid batch, debits its total with a
/// `transfer_out` row naming the codes' id range — one transaction.
async fn insert_batch(
    db: &DatabaseConnection,
    batch: &NewBatch<'_>,
    codes: &[String],
    total: i64,
) -> Result<Option<Posted>, BillingError> {
    let now = Utc::now();
    let rows = codes.iter().map(|code| redemption_code::ActiveModel {
        name: Set(batch.name.to_owned()),
        code_hash: Set(store::hash_secret(code)),
        amount: Set(batch.amount),
        status: Set("unused".to_owned()),
        created_by: Set(batch.created_by),
        used_by: Set(None),
        used_at: Set(None),
        created_at: Set(now),
        ..Default::default()
    });
    let txn = db.begin().await?;
    let ids = redemption_code::Entity::insert_many(rows)
        .exec_with_returning_keys(&txn)
        .await?;
    let paid = match batch.funding {
        Funding::Minted => None,
        Funding::Prepaid => {
            let first = ids.iter().min().copied().unwrap_or_default();
            let last = ids.iter().max().copied().unwrap_or_default();
            let reference = if first == last {
                format!("redemption:{first}")
            } else {
                format!("redemption:{first}..{last}")
            };
            let note = format!(
                "{} redemption codes of {} credits: {}",
                batch.count,
                micros_to_credits(batch.amount),
                batch.name
            );
            Some(
                post(
                    &txn,
                    batch.created_by,
                    -total,
                    &Entry {
                        kind: "transfer_out",
                        note: Some(&note),
                        reference: Some(&reference),
                    },
                )
                .await?,
            )
        }
    };
    txn.commit().await?;
    Ok(paid)
}

/// Redeems `code` for `user_id`; `None` when no unused code matches (unknown, used,
/// revoked). Exactly once: the claim is one conditional update
/// (`… SET status = 'used' WHERE code_hash = ? AND status = 'unused'`) whose returned
/// row decides the winner, and it commits together with the credit and its `redeem`
/// ledger row. A concurrent claimant waits on the row and then matches nothing.
pub async fn redeem(
    db: &DatabaseConnection,
    wallet: &Wallet,
    user_id: i64,
    code: &str,
) -> Result<Option<Redeemed>, BillingError> {
    let code = code.trim();
    if code.is_empty() || code.len() > MAX_CODE_LEN {
        return Ok(None);
    }
    let now = Utc::now();
    let txn = db.begin().await?;
    let claimed = redemption_code::Entity::update_many()
        .col_expr(redemption_code::Column::Status, Expr::value("used"))
        .col_expr(redemption_code::Column::UsedBy, Expr::value(user_id))
        .col_expr(redemption_code::Column::UsedAt, Expr::value(now))
        .filter(redemption_code::Column::CodeHash.eq(store::hash_secret(code)))
        .filter(redemption_code::Column::Status.eq("unused"))
        .exec_with_returning(&txn)
        .await?;
    let [claimed] = claimed.as_slice() else {
        // Nothing claimed (or, impossibly, more than one row for a unique hash).
        txn.rollback().await?;
        return Ok(None);
    };
    let reference = format!("redemption:{}", claimed.id);
    let posted = post(
        &txn,
        user_id,
        claimed.amount,
        &Entry {
            kind: "redeem",
            note: Some(&claimed.name),
            reference: Some(&reference),
        },
    )
    .await?;
    txn.commit().await?;
    after_commit(wallet.sync(&[posted.synced(user_id)]).await);
    Ok(Some(Redeemed {
        code_id: claimed.id,
        amount: claimed.amount,
        balance: posted.balance,
        transaction_id: posted.transaction_id,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use sea_orm::{ActiveModelTrait, PaginatorTrait};
    use store::Shared;
    use store::entities::{transaction, user};

    use super::*;
    use crate::wallet::Account;

    /// A fresh SQLite file (an in-memory database would differ per pooled connection).
    async fn setup() -> (DatabaseConnection, Arc<Wallet>) {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-billing-redemption-{}-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        let db = store::db::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        let wallet = Arc::new(Wallet::new(db.clone(), &Shared::memory()));
        (db, wallet)
    }

    async fn user_with(db: &DatabaseConnection, wallet: &Wallet, name: &str, balance: i64) -> i64 {
        let u = user::ActiveModel::enabled(
            name.to_owned(),
            String::new(),
            store::catalog::Role::Reseller,
            "default".to_owned(),
            None,
        )
        .insert(db)
        .await
        .unwrap();
        wallet
            .sync(&[crate::Synced {
                account: Account::User(u.id),
                limit: 0,
                rev: 0,
            }])
            .await
            .unwrap();
        if balance > 0 {
            crate::accounts::adjust(
                db,
                wallet,
                u.id,
                balance,
                Entry {
                    kind: "mint",
                    note: None,
                    reference: None,
                },
            )
            .await
            .unwrap();
        }
        u.id
    }

    fn batch(created_by: i64, funding: Funding, amount: i64, count: usize) -> NewBatch<'static> {
        NewBatch {
            name: "promo",
            amount,
            count,
            created_by,
            funding,
        }
    }

    async fn balance(db: &DatabaseConnection, id: i64) -> i64 {
        user::Entity::find_by_id(id)
            .one(db)
            .await
            .unwrap()
            .unwrap()
            .balance
    }

    #[test]
    fn codes_are_tg_and_32_base62_characters_and_never_repeat() {
        let a = generate_code();
        assert_eq!(a.len(), 35);
        assert!(a.starts_with("tg-"));
        assert!(a[3..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(generate_code(), a);
    }

    #[tokio::test]
    async fn a_code_is_stored_only_as_its_hash_and_redeems_once() {
        let (db, wallet) = setup().await;
        let admin = user_with(&db, &wallet, "root", 0).await;
        let alice = user_with(&db, &wallet, "alice", 0).await;
        let issued = create_codes(&db, &wallet, batch(admin, Funding::Minted, 2_500_000, 2))
            .await
            .unwrap();
        assert_eq!(issued.codes.len(), 2);
        assert!(issued.paid.is_none());
        let stored = redemption_code::Entity::find().all(&db).await.unwrap();
        assert!(stored.iter().all(|c| !issued.codes.contains(&c.code_hash)));
        let code = &issued.codes[0];
        let r = redeem(&db, &wallet, alice, &format!(" {code}\n"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.amount, r.balance), (2_500_000, 2_500_000));
        assert!(redeem(&db, &wallet, alice, code).await.unwrap().is_none());
        assert!(
            redeem(&db, &wallet, alice, "tg-nope")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(balance(&db, alice).await, 2_500_000);
        assert_eq!(
            wallet.available(Account::User(alice)).await.unwrap(),
            Some(2_500_000)
        );
        let row = redemption_code::Entity::find_by_id(r.code_id)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((row.status.as_str(), row.used_by), ("used", Some(alice)));
        // A revoked code is refused like a used one.
        redemption_code::Entity::update_many()
            .col_expr(redemption_code::Column::Status, Expr::value("revoked"))
            .filter(redemption_code::Column::Status.eq("unused"))
            .exec(&db)
            .await
            .unwrap();
        assert!(
            redeem(&db, &wallet, alice, &issued.codes[1])
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(balance(&db, alice).await, 2_500_000);
    }

    #[tokio::test]
    async fn concurrent_redemptions_of_one_code_credit_exactly_once() {
        let (db, wallet) = setup().await;
        let admin = user_with(&db, &wallet, "root", 0).await;
        let alice = user_with(&db, &wallet, "alice", 0).await;
        let code = create_codes(&db, &wallet, batch(admin, Funding::Minted, 1_000, 1))
            .await
            .unwrap()
            .codes
            .remove(0);
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (db, wallet, code) = (db.clone(), Arc::clone(&wallet), code.clone());
                tokio::spawn(async move { redeem(&db, &wallet, alice, &code).await.unwrap() })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap().is_some());
        }
        assert_eq!(wins, 1);
        assert_eq!(balance(&db, alice).await, 1_000);
        let redeems = transaction::Entity::find()
            .filter(transaction::Column::Kind.eq("redeem"))
            .count(&db)
            .await
            .unwrap();
        assert_eq!(redeems, 1);
    }

    #[tokio::test]
    async fn a_prepaid_batch_is_paid_up_front_or_not_created_at_all() {
        let (db, wallet) = setup().await;
        let reseller = user_with(&db, &wallet, "res", 10_000_000).await;
        let issued = create_codes(
            &db,
            &wallet,
            batch(reseller, Funding::Prepaid, 3_000_000, 2),
        )
        .await
        .unwrap();
        assert_eq!(issued.paid.map(|p| p.balance), Some(4_000_000));
        assert_eq!(
            wallet.available(Account::User(reseller)).await.unwrap(),
            Some(4_000_000)
        );
        let short = create_codes(
            &db,
            &wallet,
            batch(reseller, Funding::Prepaid, 3_000_000, 2),
        )
        .await;
        assert!(matches!(short, Err(BillingError::Insufficient)));
        assert_eq!(redemption_code::Entity::find().count(&db).await.unwrap(), 2);
        assert_eq!(balance(&db, reseller).await, 4_000_000);
        // The refused batch left nothing held.
        assert_eq!(
            wallet.available(Account::User(reseller)).await.unwrap(),
            Some(4_000_000)
        );
        let ledger = transaction::Entity::find()
            .filter(transaction::Column::UserId.eq(reseller))
            .all(&db)
            .await
            .unwrap();
        assert_eq!(ledger.iter().map(|t| t.amount).sum::<i64>(), 4_000_000);
        assert_eq!(ledger[1].kind, "transfer_out");
    }

    #[tokio::test]
    async fn nonsense_amounts_and_counts_are_refused_before_anything_is_written() {
        let (db, wallet) = setup().await;
        let admin = user_with(&db, &wallet, "root", 0).await;
        for (amount, count) in [
            (0, 1),
            (-5, 1),
            (1, 0),
            (1, MAX_CODES_PER_BATCH + 1),
            (i64::MAX, 2),
        ] {
            let r = create_codes(&db, &wallet, batch(admin, Funding::Minted, amount, count)).await;
            assert!(
                matches!(r, Err(BillingError::InvalidAmount(_))),
                "{amount} × {count}"
            );
        }
        assert_eq!(redemption_code::Entity::find().count(&db).await.unwrap(), 0);
    }
}
