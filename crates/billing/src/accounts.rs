//! Rare money movements that go straight to the database in one transaction and then
//! adjust the wallets: admin mints and removals, reseller transfers. A debit is reserved
//! in the wallet first, so money already promised to in-flight requests cannot leave.

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, ExprTrait,
    QueryFilter, TransactionTrait,
};
use store::entities::{transaction, user};

use crate::ledger::conditional_debit;
use crate::wallet::{Account, Synced};
use crate::{BillingError, Wallet};

/// One side of a committed movement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Posted {
    pub balance: i64,
    pub transaction_id: i64,
    /// The user's revision after this movement (what the wallet follows).
    pub rev: i64,
}

impl Posted {
    /// The wallet state this movement left for `user_id`.
    pub fn synced(&self, user_id: i64) -> Synced {
        Synced {
            account: Account::User(user_id),
            limit: self.balance,
            rev: self.rev,
        }
    }
}

/// A ledger entry to post with a movement.
pub struct Entry<'a> {
    pub kind: &'a str,
    pub note: Option<&'a str>,
    pub reference: Option<&'a str>,
}

/// Creates (`amount > 0`) or removes (`amount < 0`) credits on one user's balance.
/// Removal never takes a balance below zero (nor below what in-flight requests hold).
pub async fn adjust(
    db: &DatabaseConnection,
    wallet: &Wallet,
    user_id: i64,
    amount: i64,
    entry: Entry<'_>,
) -> Result<Posted, BillingError> {
    if amount == 0 {
        return Err(BillingError::InvalidAmount(
            "amount must not be zero".into(),
        ));
    }
    let hold = if amount < 0 {
        Some(wallet.reserve(user_id, None, -amount).await?)
    } else {
        None
    };
    let result = async {
        let txn = db.begin().await?;
        let posted = post(&txn, user_id, amount, &entry).await?;
        txn.commit().await?;
        Ok::<_, BillingError>(posted)
    }
    .await;
    // Once the transaction is committed the money has moved: a counter that fails to
    // follow is logged (it errs conservative until rebuilt), never reported as failure,
    // so nobody retries a movement that happened.
    match (result, hold) {
        (Ok(posted), Some(hold)) => {
            after_commit(
                wallet
                    .flushed(
                        user_id,
                        None,
                        hold.lease,
                        hold.amount,
                        &[posted.synced(user_id)],
                    )
                    .await,
            );
            Ok(posted)
        }
        (Ok(posted), None) => {
            after_commit(wallet.sync(&[posted.synced(user_id)]).await);
            Ok(posted)
        }
        (Err(e), hold) => {
            if let Some(hold) = hold {
                wallet.release(hold).await?;
            }
            Err(e)
        }
    }
}

/// Moves `amount > 0` from one user to another in one transaction, never creating
/// credits; returns the (source, destination) postings.
pub async fn transfer(
    db: &DatabaseConnection,
    wallet: &Wallet,
    from: i64,
    to: i64,
    amount: i64,
    note: Option<&str>,
) -> Result<(Posted, Posted), BillingError> {
    if amount <= 0 {
        return Err(BillingError::InvalidAmount(
            "transfer amount must be positive".into(),
        ));
    }
    let hold = wallet.reserve(from, None, amount).await?;
    let result = async {
        let txn = db.begin().await?;
        let reference = format!("transfer:{from}->{to}");
        let out = post(
            &txn,
            from,
            -amount,
            &Entry {
                kind: "transfer_out",
                note,
                reference: Some(&reference),
            },
        )
        .await?;
        let inn = post(
            &txn,
            to,
            amount,
            &Entry {
                kind: "transfer_in",
                note,
                reference: Some(&reference),
            },
        )
        .await?;
        txn.commit().await?;
        Ok::<_, BillingError>((out, inn))
    }
    .await;
    match result {
        Ok((out, inn)) => {
            after_commit(
                wallet
                    .flushed(from, None, hold.lease, amount, &[out.synced(from)])
                    .await,
            );
            after_commit(wallet.sync(&[inn.synced(to)]).await);
            Ok((out, inn))
        }
        Err(e) => {
            wallet.release(hold).await?;
            Err(e)
        }
    }
}

pub(crate) fn after_commit(result: Result<(), BillingError>) {
    if let Err(e) = result {
        tracing::error!(error = ?e, "wallet counter not updated after a committed movement");
    }
}

/// Changes a balance by `amount` (conditionally when negative) and appends its ledger row.
pub(crate) async fn post<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    amount: i64,
    entry: &Entry<'_>,
) -> Result<Posted, BillingError> {
    let now = Utc::now();
    let after = if amount < 0 {
        conditional_debit(conn, user_id, -amount, false, now)
            .await?
            .ok_or(BillingError::Insufficient)?
    } else {
        user::Entity::update_many()
            .col_expr(
                user::Column::Balance,
                Expr::col(user::Column::Balance).add(amount),
            )
            .col_expr(user::Column::Rev, Expr::col(user::Column::Rev).add(1))
            .col_expr(user::Column::UpdatedAt, Expr::value(now))
            .filter(user::Column::Id.eq(user_id))
            .exec_with_returning(conn)
            .await?
            .first()
            .map(|u| crate::ledger::After {
                balance: u.balance,
                rev: u.rev,
            })
            .ok_or(BillingError::Insufficient)?
    };
    let balance = after.balance;
    let row = transaction::Entity::insert(transaction::ActiveModel {
        user_id: Set(user_id),
        kind: Set(entry.kind.to_owned()),
        amount: Set(amount),
        balance_after: Set(balance),
        reference: Set(entry.reference.map(str::to_owned)),
        note: Set(entry.note.map(str::to_owned)),
        created_at: Set(now),
        ..Default::default()
    })
    .exec(conn)
    .await?;
    Ok(Posted {
        balance,
        transaction_id: row.last_insert_id,
        rev: after.rev,
    })
}
