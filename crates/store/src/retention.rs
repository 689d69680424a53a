//! Retention of generation records (`TOLLGATE_LOG_RETENTION_DAYS`): records older than
//! the window are deleted a small batch at a time, so the database never holds a long
//! lock. The ledger is never touched: balance = Σ ledger holds whatever is deleted
//! here, and a ledger row's reference may outlive its generation.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::StoreError;
use crate::entities::generation;

/// Deletes up to `batch` finished generations created before `before`, oldest first;
/// returns how many went. An open task's record (`pending`) is kept until it ends.
pub async fn sweep_batch(
    db: &DatabaseConnection,
    before: DateTime<Utc>,
    batch: u64,
) -> Result<u64, StoreError> {
    let ids: Vec<String> = generation::Entity::find()
        .select_only()
        .column(generation::Column::Id)
        .filter(generation::Column::CreatedAt.lt(before))
        .filter(generation::Column::Status.ne("pending"))
        .order_by_asc(generation::Column::CreatedAt)
        .limit(batch)
        .into_tuple()
        .all(db)
        .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let done = generation::Entity::delete_many()
        .filter(generation::Column::Id.is_in(ids))
        .exec(db)
        .await?;
    Ok(done.rows_affected)
}

/// Deletes every finished generation created before `before`, `batch` at a time with
/// `pause` between batches; returns how many went.
pub async fn sweep(
    db: &DatabaseConnection,
    before: DateTime<Utc>,
    batch: u64,
    pause: std::time::Duration,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let n = sweep_batch(db, before, batch).await?;
        total += n;
        if n < batch {
            return Ok(total);
        }
        tokio::time::sleep(pause).await;
    }
}
