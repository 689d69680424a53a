//! The money and states of asynchronous tasks (API.md §4). A task's hold is durable:
//! it is debited, with its ledger row, in the same transaction that creates the task,
//! so a restart loses nothing. Every way out of an open state is one conditional
//! update (`WHERE state IN (open states)`), and the charge or the release rides in the
//! same transaction, so however many pollers, instances or retries race, a task is
//! charged or released exactly once. Usage totals follow the ledger: a released task
//! adds nothing to any of them.

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend,
    EntityTrait, ExprTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Statement,
    TransactionTrait,
};
use store::entities::{api_key, generation, task, user};

use crate::accounts::{Entry, after_commit, post};
use crate::wallet::{Account, Synced};
use crate::{BillingError, Wallet};

/// A task's state. The upstream's own words are mapped to these in one place per
/// family; clients see only their family's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

/// A task's generation while it is open: `status` is `pending` (then `success` or
/// `error`, like any generation) and `finish_reason` is the task's state.
pub const PENDING: &str = "pending";

/// The states a task can still leave.
pub const OPEN: [&str; 2] = ["queued", "in_progress"];

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::InProgress => "in_progress",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
        }
    }

    /// The state stored as `word` (`None` for a word this build never writes).
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "queued" => State::Queued,
            "in_progress" => State::InProgress,
            "succeeded" => State::Succeeded,
            "failed" => State::Failed,
            "cancelled" => State::Cancelled,
            "expired" => State::Expired,
            _ => return None,
        })
    }

    pub fn is_open(self) -> bool {
        matches!(self, State::Queued | State::InProgress)
    }
}

/// A task to create, with the amount to hold for it.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub id: String,
    pub user_id: i64,
    pub key_id: i64,
    /// Whether the key has a credit limit (its `used` then bounds what it may hold).
    pub key_limited: bool,
    pub family: String,
    pub action: String,
    pub model: String,
    pub parent_id: Option<String>,
    /// The price the task is held at (JSON), kept for the final charge.
    pub pricing: String,
    pub held: i64,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub meta: String,
    /// The client route, for the task's generation record.
    pub endpoint: String,
    pub client_ip: Option<String>,
    /// When the poller first looks (after the submission has had time to land).
    pub first_poll_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
}

/// Creates the task with its hold: the user's balance is debited (never below zero),
/// the key's `used` grows by the hold (never past its credit limit), a `task_hold`
/// ledger row references the task, and the task's generation is recorded as queued,
/// all in one transaction. `Insufficient` when the balance or the key's limit cannot
/// cover the hold; nothing is written then.
pub async fn open(
    db: &DatabaseConnection,
    wallet: &Wallet,
    new: NewTask,
) -> Result<task::Model, BillingError> {
    let limited_key = new.key_limited.then_some(new.key_id);
    // The wallet first, so money already promised to in-flight requests stays theirs.
    let hold = wallet.reserve(new.user_id, limited_key, new.held).await?;
    let now = Utc::now();
    let written = async {
        let txn = db.begin().await?;
        let mut synced = Vec::with_capacity(2);
        if new.held > 0 {
            let posted = post(
                &txn,
                new.user_id,
                -new.held,
                &Entry {
                    kind: "task_hold",
                    note: None,
                    reference: Some(&new.id),
                },
            )
            .await?;
            synced.push(posted.synced(new.user_id));
        }
        if let Some(state) = key_used(&txn, new.key_id, new.held, new.key_limited, now).await? {
            synced.push(state);
        }
        let row = task::ActiveModel {
            id: Set(new.id.clone()),
            user_id: Set(new.user_id),
            key_id: Set(new.key_id),
            family: Set(new.family.clone()),
            action: Set(new.action.clone()),
            model: Set(new.model.clone()),
            parent_id: Set(new.parent_id.clone()),
            channel_id: Set(None),
            channel_key_id: Set(None),
            upstream_model: Set(None),
            upstream_task_id: Set(None),
            upstream_path: Set(None),
            state: Set(State::Queued.as_str().to_owned()),
            upstream_status: Set(None),
            progress: Set(0),
            pricing: Set(new.pricing.clone()),
            held: Set(new.held),
            charged: Set(0),
            idempotency_key: Set(new.idempotency_key.clone()),
            request_hash: Set(new.request_hash.clone()),
            meta: Set(new.meta.clone()),
            result: Set(None),
            error: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            finished_at: Set(None),
            next_poll_at: Set(new.first_poll_at),
            attempts: Set(0),
            deadline_at: Set(new.deadline_at),
            lease_owner: Set(None),
            lease_until: Set(None),
            deleted_at: Set(None),
            hook_attempts: Set(0),
            hook_next_at: Set(None),
            version: Set(0),
        };
        task::Entity::insert(row)
            .exec_without_returning(&txn)
            .await?;
        generation::Entity::insert(generation::ActiveModel {
            id: Set(new.id.clone()),
            upstream_id: Set(None),
            user_id: Set(new.user_id),
            key_id: Set(new.key_id),
            channel_id: Set(None),
            provider_name: Set(None),
            model: Set(new.model.clone()),
            upstream_model: Set(None),
            endpoint: Set(new.endpoint.clone()),
            streamed: Set(false),
            cancelled: Set(false),
            finish_reason: Set(Some(State::Queued.as_str().to_owned())),
            tokens_prompt: Set(0),
            tokens_completion: Set(0),
            tokens_cached: Set(0),
            tokens_reasoning: Set(0),
            tokens_cache_write: Set(0),
            num_media: Set(0),
            latency_ms: Set(None),
            generation_time_ms: Set(None),
            cost: Set(0),
            status: Set(PENDING.to_owned()),
            status_code: Set(200),
            error: Set(None),
            client_ip: Set(new.client_ip.clone()),
            attempts: Set(None),
            created_at: Set(now),
            upstream_cost: Set(0),
        })
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await?;
        Ok::<_, BillingError>(synced)
    }
    .await;
    match written {
        Ok(synced) => {
            after_commit(
                wallet
                    .flushed(new.user_id, limited_key, hold.lease, hold.amount, &synced)
                    .await,
            );
            find(db, &new.id)
                .await?
                .ok_or_else(|| BillingError::InvalidAmount("task vanished".into()))
        }
        Err(e) => {
            wallet.release(hold).await?;
            Err(e)
        }
    }
}

/// Moves the key's `used` by `delta` (a hold when positive, a release when negative);
/// a hold on a key with a credit limit only fits under it. Returns the key's wallet
/// state when it has a limit.
async fn key_used<C: ConnectionTrait>(
    conn: &C,
    key_id: i64,
    delta: i64,
    limited: bool,
    now: DateTime<Utc>,
) -> Result<Option<Synced>, BillingError> {
    if delta == 0 {
        return Ok(None);
    }
    let mut update = api_key::Entity::update_many()
        .col_expr(
            api_key::Column::Used,
            Expr::col(api_key::Column::Used).add(delta),
        )
        .col_expr(api_key::Column::Rev, Expr::col(api_key::Column::Rev).add(1))
        .col_expr(api_key::Column::LastUsedAt, Expr::value(now))
        .filter(api_key::Column::Id.eq(key_id));
    if limited && delta > 0 {
        update = update.filter(
            Condition::any()
                .add(api_key::Column::CreditLimit.is_null())
                .add(
                    Expr::col(api_key::Column::CreditLimit)
                        .sub(Expr::col(api_key::Column::Used))
                        .gte(delta),
                ),
        );
    }
    let rows = update.exec_with_returning(conn).await?;
    let Some(key) = rows.first() else {
        return if limited && delta > 0 {
            Err(BillingError::Insufficient)
        } else {
            Ok(None)
        };
    };
    Ok(key.credit_limit.map(|limit| Synced {
        account: Account::Key(key.id),
        limit: limit - key.used,
        rev: key.rev,
    }))
}

/// The task `id`, whoever owns it.
pub async fn find(db: &DatabaseConnection, id: &str) -> Result<Option<task::Model>, BillingError> {
    Ok(task::Entity::find_by_id(id.to_owned()).one(db).await?)
}

/// The task `id` when `user_id` owns it and has not deleted it.
pub async fn find_owned(
    db: &DatabaseConnection,
    id: &str,
    user_id: i64,
) -> Result<Option<task::Model>, BillingError> {
    Ok(task::Entity::find_by_id(id.to_owned())
        .filter(task::Column::UserId.eq(user_id))
        .filter(task::Column::DeletedAt.is_null())
        .one(db)
        .await?)
}

/// Those of tasks `ids` of `family` that `user_id` owns and has not deleted (any
/// other id is left out), in id order.
pub async fn find_many_owned(
    db: &DatabaseConnection,
    ids: &[String],
    user_id: i64,
    family: &str,
) -> Result<Vec<task::Model>, BillingError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(task::Entity::find()
        .filter(task::Column::Id.is_in(ids.iter().cloned()))
        .filter(task::Column::UserId.eq(user_id))
        .filter(task::Column::Family.eq(family))
        .filter(task::Column::DeletedAt.is_null())
        .order_by_asc(task::Column::Id)
        .all(db)
        .await?)
}

/// The task a key submitted under `idempotency_key`, if any.
pub async fn find_idempotent(
    db: &DatabaseConnection,
    key_id: i64,
    idempotency_key: &str,
) -> Result<Option<task::Model>, BillingError> {
    Ok(task::Entity::find()
        .filter(task::Column::KeyId.eq(key_id))
        .filter(task::Column::IdempotencyKey.eq(idempotency_key))
        .one(db)
        .await?)
}

/// A page of `user_id`'s tasks of `family`, in id (= creation) order, after the cursor.
pub async fn list_owned(
    db: &DatabaseConnection,
    user_id: i64,
    family: &str,
    after: Option<&str>,
    (offset, limit): (u64, u64),
    ascending: bool,
) -> Result<Vec<task::Model>, BillingError> {
    let mut query = task::Entity::find()
        .filter(task::Column::UserId.eq(user_id))
        .filter(task::Column::Family.eq(family))
        .filter(task::Column::DeletedAt.is_null());
    if let Some(after) = after {
        query = if ascending {
            query.filter(task::Column::Id.gt(after))
        } else {
            query.filter(task::Column::Id.lt(after))
        };
    }
    query = if ascending {
        query.order_by_asc(task::Column::Id)
    } else {
        query.order_by_desc(task::Column::Id)
    };
    Ok(query.offset(offset).limit(limit).all(db).await?)
}

/// How many tasks of `family` `user_id` has (not deleted).
pub async fn count_owned(
    db: &DatabaseConnection,
    user_id: i64,
    family: &str,
) -> Result<u64, BillingError> {
    use sea_orm::PaginatorTrait;
    Ok(task::Entity::find()
        .filter(task::Column::UserId.eq(user_id))
        .filter(task::Column::Family.eq(family))
        .filter(task::Column::DeletedAt.is_null())
        .count(db)
        .await?)
}

/// Whether a task's client named a callback (kept in its meta as `hook`).
fn has_hook(meta: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(meta)
        .ok()
        .is_some_and(|m| m.get("hook").is_some_and(|h| h.is_string()))
}

/// Callbacks due now, oldest first.
pub async fn hooks_due(
    db: &DatabaseConnection,
    limit: u64,
) -> Result<Vec<task::Model>, BillingError> {
    Ok(task::Entity::find()
        .filter(task::Column::HookNextAt.lte(Utc::now()))
        .order_by_asc(task::Column::HookNextAt)
        .limit(limit)
        .all(db)
        .await?)
}

/// Takes a due callback for one delivery (until `until`): only one instance does.
pub async fn hook_claim(
    db: &DatabaseConnection,
    t: &task::Model,
    until: DateTime<Utc>,
) -> Result<bool, BillingError> {
    let Some(seen) = t.hook_next_at else {
        return Ok(false);
    };
    let done = task::Entity::update_many()
        .col_expr(task::Column::HookNextAt, Expr::value(until))
        .filter(task::Column::Id.eq(t.id.clone()))
        .filter(task::Column::HookNextAt.eq(seen))
        .exec(db)
        .await?;
    Ok(done.rows_affected == 1)
}

/// Records a delivery: done (`next` none) or to be tried again at `next`.
pub async fn hook_tried(
    db: &DatabaseConnection,
    id: &str,
    attempts: i32,
    next: Option<DateTime<Utc>>,
) -> Result<(), BillingError> {
    task::Entity::update_many()
        .col_expr(task::Column::HookAttempts, Expr::value(attempts))
        .col_expr(task::Column::HookNextAt, Expr::value(next))
        .filter(task::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Keeps a finished task's result as the upstream describes it now (a fresh storage
/// URL); state and money are untouched.
pub async fn refresh_result(
    db: &DatabaseConnection,
    id: &str,
    result: &str,
) -> Result<(), BillingError> {
    task::Entity::update_many()
        .col_expr(task::Column::Result, Expr::value(result))
        .filter(task::Column::Id.eq(id))
        .filter(task::Column::State.eq(State::Succeeded.as_str()))
        .exec(db)
        .await?;
    Ok(())
}

/// Hides a task from its owner's lists and reads (its records and money stay).
pub async fn delete_owned(
    db: &DatabaseConnection,
    id: &str,
    user_id: i64,
) -> Result<bool, BillingError> {
    let done = task::Entity::update_many()
        .col_expr(task::Column::DeletedAt, Expr::value(Utc::now()))
        .filter(task::Column::Id.eq(id))
        .filter(task::Column::UserId.eq(user_id))
        .filter(task::Column::DeletedAt.is_null())
        .exec(db)
        .await?;
    Ok(done.rows_affected == 1)
}

/// What the upstream said when it took the task.
#[derive(Clone, Debug)]
pub struct Submitted {
    pub channel_id: i64,
    pub channel_key_id: i64,
    pub provider_name: String,
    pub upstream_model: String,
    pub upstream_task_id: Option<String>,
    /// The path the task was submitted to.
    pub upstream_path: String,
    pub state: State,
    pub upstream_status: Option<String>,
    pub progress: i32,
    /// JSON of every upstream attempt, for the generation record.
    pub attempts: Option<String>,
    pub next_poll_at: DateTime<Utc>,
    pub latency_ms: i64,
}

/// Records which upstream took the task (an open task only).
pub async fn submitted(
    db: &DatabaseConnection,
    id: &str,
    s: &Submitted,
) -> Result<(), BillingError> {
    let now = Utc::now();
    let txn = db.begin().await?;
    task::Entity::update_many()
        .col_expr(task::Column::ChannelId, Expr::value(s.channel_id))
        .col_expr(task::Column::ChannelKeyId, Expr::value(s.channel_key_id))
        .col_expr(
            task::Column::UpstreamModel,
            Expr::value(s.upstream_model.clone()),
        )
        .col_expr(
            task::Column::UpstreamTaskId,
            Expr::value(s.upstream_task_id.clone()),
        )
        .col_expr(
            task::Column::UpstreamPath,
            Expr::value(s.upstream_path.clone()),
        )
        .col_expr(task::Column::State, Expr::value(s.state.as_str()))
        .col_expr(
            task::Column::UpstreamStatus,
            Expr::value(s.upstream_status.clone()),
        )
        .col_expr(task::Column::Progress, Expr::value(s.progress))
        .col_expr(task::Column::NextPollAt, Expr::value(s.next_poll_at))
        .col_expr(task::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            task::Column::Version,
            Expr::col(task::Column::Version).add(1),
        )
        .filter(task::Column::Id.eq(id))
        .filter(task::Column::State.is_in(OPEN))
        .exec(&txn)
        .await?;
    generation::Entity::update_many()
        .col_expr(generation::Column::ChannelId, Expr::value(s.channel_id))
        .col_expr(
            generation::Column::ProviderName,
            Expr::value(s.provider_name.clone()),
        )
        .col_expr(
            generation::Column::UpstreamModel,
            Expr::value(s.upstream_model.clone()),
        )
        .col_expr(
            generation::Column::FinishReason,
            Expr::value(s.state.as_str()),
        )
        .col_expr(
            generation::Column::Attempts,
            Expr::value(s.attempts.clone()),
        )
        .col_expr(generation::Column::LatencyMs, Expr::value(s.latency_ms))
        .filter(generation::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// Whether a task for `model` other than `id`, opened since `since`, is still being
/// sent (open, no channel recorded yet): its upstream job may already exist without
/// Tollgate knowing whose it is.
pub async fn sending(
    db: &DatabaseConnection,
    id: &str,
    model: &str,
    since: DateTime<Utc>,
) -> Result<bool, BillingError> {
    Ok(task::Entity::find()
        .filter(task::Column::Id.ne(id))
        .filter(task::Column::Model.eq(model))
        .filter(task::Column::ChannelId.is_null())
        .filter(task::Column::UpstreamTaskId.is_null())
        .filter(task::Column::State.is_in(OPEN))
        .filter(task::Column::CreatedAt.gte(since))
        .one(db)
        .await?
        .is_some())
}

/// Links an open task whose submission went unconfirmed to the upstream task found
/// to be it (once: only while it has none, and only if no other task of the channel
/// has that upstream id). One statement checks and writes; on Postgres, where two
/// such statements for different tasks would not see each other, an advisory lock on
/// the channel and upstream id makes them take turns.
pub async fn link_upstream(
    db: &DatabaseConnection,
    id: &str,
    channel_id: i64,
    upstream_id: &str,
) -> Result<bool, BillingError> {
    let backend = db.get_database_backend();
    let txn = db.begin().await?;
    if backend == DbBackend::Postgres {
        let digest = store::hash_bytes(format!("{channel_id}\n{upstream_id}").as_bytes());
        let lock = u64::from_str_radix(&digest[..16], 16).unwrap_or(0) as i64;
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            "SELECT pg_advisory_xact_lock($1)",
            [lock.into()],
        ))
        .await?;
    }
    let sql = match backend {
        DbBackend::Postgres => {
            "UPDATE tasks SET upstream_task_id = $1, upstream_status = 'reconciled', \
             version = version + 1 WHERE id = $2 AND upstream_task_id IS NULL \
             AND state IN ('queued', 'in_progress') AND NOT EXISTS \
             (SELECT 1 FROM tasks o WHERE o.channel_id = $3 AND o.upstream_task_id = $1)"
        }
        _ => {
            "UPDATE tasks SET upstream_task_id = ?1, upstream_status = 'reconciled', \
             version = version + 1 WHERE id = ?2 AND upstream_task_id IS NULL \
             AND state IN ('queued', 'in_progress') AND NOT EXISTS \
             (SELECT 1 FROM tasks o WHERE o.channel_id = ?3 AND o.upstream_task_id = ?1)"
        }
    };
    let done = txn
        .execute_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [upstream_id.into(), id.into(), channel_id.into()],
        ))
        .await?;
    txn.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Takes up to `limit` open tasks due for a poll, for `owner`, until `ttl` from now.
/// A task leased by another live poller is skipped (on Postgres without waiting for
/// it: `FOR UPDATE SKIP LOCKED`), so pollers never do the same task at once.
pub async fn lease_due(
    db: &DatabaseConnection,
    owner: &str,
    ttl: Duration,
    limit: u64,
) -> Result<Vec<task::Model>, BillingError> {
    let now = Utc::now();
    let free = || {
        Condition::any()
            .add(task::Column::LeaseUntil.is_null())
            .add(task::Column::LeaseUntil.lt(now))
    };
    let mut due = task::Entity::find()
        .select_only()
        .column(task::Column::Id)
        .filter(task::Column::State.is_in(OPEN))
        .filter(task::Column::NextPollAt.lte(now))
        .filter(free())
        .order_by_asc(task::Column::NextPollAt)
        .limit(limit);
    if db.get_database_backend() == DbBackend::Postgres {
        due = due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    Ok(task::Entity::update_many()
        .col_expr(task::Column::LeaseOwner, Expr::value(owner))
        .col_expr(task::Column::LeaseUntil, Expr::value(now + ttl))
        .filter(task::Column::Id.in_subquery(due.into_query()))
        .filter(task::Column::State.is_in(OPEN))
        .filter(free())
        .exec_with_returning(db)
        .await?)
}

/// Leases one open task for `owner` (a client's read asking for a fresh state), unless
/// another poller holds it.
pub async fn lease_one(
    db: &DatabaseConnection,
    id: &str,
    owner: &str,
    ttl: Duration,
) -> Result<Option<task::Model>, BillingError> {
    let now = Utc::now();
    let rows = task::Entity::update_many()
        .col_expr(task::Column::LeaseOwner, Expr::value(owner))
        .col_expr(task::Column::LeaseUntil, Expr::value(now + ttl))
        .filter(task::Column::Id.eq(id))
        .filter(task::Column::State.is_in(OPEN))
        .filter(
            Condition::any()
                .add(task::Column::LeaseUntil.is_null())
                .add(task::Column::LeaseUntil.lt(now)),
        )
        .exec_with_returning(db)
        .await?;
    Ok(rows.into_iter().next())
}

/// A poll that left the task open: its state, the upstream's word and progress, and
/// when to look again. Applies only while `owner` holds the lease; gives it up.
#[derive(Clone, Debug)]
pub struct Progress {
    pub state: State,
    pub upstream_status: Option<String>,
    pub progress: i32,
    pub next_poll_at: DateTime<Utc>,
    /// Whether this poll failed to get an answer (counted as an attempt).
    pub failed_poll: bool,
}

pub async fn progressed(
    db: &DatabaseConnection,
    id: &str,
    owner: &str,
    p: &Progress,
) -> Result<bool, BillingError> {
    let mut update = task::Entity::update_many()
        .col_expr(task::Column::NextPollAt, Expr::value(p.next_poll_at))
        .col_expr(task::Column::UpdatedAt, Expr::value(Utc::now()))
        .col_expr(
            task::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            task::Column::LeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            task::Column::Version,
            Expr::col(task::Column::Version).add(1),
        );
    if p.failed_poll {
        update = update.col_expr(
            task::Column::Attempts,
            Expr::col(task::Column::Attempts).add(1),
        );
    } else {
        update = update
            .col_expr(task::Column::State, Expr::value(p.state.as_str()))
            .col_expr(
                task::Column::UpstreamStatus,
                Expr::value(p.upstream_status.clone()),
            )
            .col_expr(task::Column::Progress, Expr::value(p.progress))
            .col_expr(task::Column::Attempts, Expr::value(0));
    }
    let done = update
        .filter(task::Column::Id.eq(id))
        .filter(task::Column::State.is_in(OPEN))
        .filter(task::Column::LeaseOwner.eq(owner))
        .exec(db)
        .await?;
    Ok(done.rows_affected == 1)
}

/// How a task ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// `Succeeded`, `Failed`, `Cancelled` or `Expired`.
    pub state: State,
    /// What success costs (capped at the hold); ignored for any other end.
    pub cost: i64,
    pub upstream_status: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub progress: i32,
    /// What the serving channel's upstream charged for a success (its `costs`), in
    /// micro-credits; recorded on the task's generation for margins.
    pub upstream_cost: i64,
}

/// Ends an open task: one conditional transition, with the charge (success) or the
/// release (anything else) in the same transaction. `Ok(false)` when the task had
/// already ended (another poller, instance or request got there first): nothing is
/// charged or released twice.
///
/// A transaction that lost a race with another writer (on SQLite, a poll of the same
/// task committed between this one's read and its write) is run again: it rolled back
/// whole, and the task is read anew.
pub async fn finish(
    db: &DatabaseConnection,
    wallet: &Wallet,
    id: &str,
    outcome: &Outcome,
) -> Result<bool, BillingError> {
    let mut wait = std::time::Duration::from_millis(5);
    for _ in 0..4 {
        match finish_once(db, wallet, id, outcome).await {
            Err(BillingError::Store(store::StoreError::Db(e))) if store::db::is_contended(&e) => {
                tracing::debug!(task.id = %id, error = %e, "finishing a task lost a race; again");
                tokio::time::sleep(wait).await;
                wait *= 3;
            }
            other => return other,
        }
    }
    finish_once(db, wallet, id, outcome).await
}

async fn finish_once(
    db: &DatabaseConnection,
    wallet: &Wallet,
    id: &str,
    outcome: &Outcome,
) -> Result<bool, BillingError> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let Some(current) = task::Entity::find_by_id(id.to_owned()).one(&txn).await? else {
        return Ok(false);
    };
    if !State::parse(&current.state).is_some_and(State::is_open) {
        return Ok(false);
    }
    let success = outcome.state == State::Succeeded;
    let charge = if success {
        outcome.cost.clamp(0, current.held)
    } else {
        0
    };
    if success && outcome.cost > current.held {
        tracing::error!(task.id = %id, cost = outcome.cost, held = current.held, "a task cost more than its hold; charged the hold");
    }
    let refund = current.held - charge;
    let moved = task::Entity::update_many()
        .col_expr(task::Column::State, Expr::value(outcome.state.as_str()))
        .col_expr(
            task::Column::UpstreamStatus,
            Expr::value(outcome.upstream_status.clone()),
        )
        .col_expr(task::Column::Progress, Expr::value(outcome.progress))
        .col_expr(task::Column::Charged, Expr::value(charge))
        .col_expr(task::Column::Result, Expr::value(outcome.result.clone()))
        .col_expr(task::Column::Error, Expr::value(outcome.error.clone()))
        .col_expr(task::Column::FinishedAt, Expr::value(now))
        // The client's callback is scheduled with the end itself: a crash right
        // after cannot lose it.
        .col_expr(
            task::Column::HookNextAt,
            Expr::value(has_hook(&current.meta).then_some(now)),
        )
        .col_expr(task::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            task::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            task::Column::LeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            task::Column::Version,
            Expr::col(task::Column::Version).add(1),
        )
        .filter(task::Column::Id.eq(id))
        .filter(task::Column::State.is_in(OPEN))
        .exec(&txn)
        .await?;
    if moved.rows_affected != 1 {
        return Ok(false);
    }
    let mut synced = Vec::with_capacity(2);
    if refund > 0 {
        let posted = post(
            &txn,
            current.user_id,
            refund,
            &Entry {
                kind: "task_refund",
                note: None,
                reference: Some(id),
            },
        )
        .await?;
        synced.push(posted.synced(current.user_id));
    }
    if charge > 0 {
        user::Entity::update_many()
            .col_expr(
                user::Column::Used,
                Expr::col(user::Column::Used).add(charge),
            )
            .filter(user::Column::Id.eq(current.user_id))
            .exec(&txn)
            .await?;
    }
    if let Some(state) = key_used(&txn, current.key_id, -refund, false, now).await? {
        synced.push(state);
    }
    let latency = (now - current.created_at).num_milliseconds();
    generation::Entity::update_many()
        .col_expr(
            generation::Column::Status,
            Expr::value(if success { "success" } else { "error" }),
        )
        .col_expr(generation::Column::Cost, Expr::value(charge))
        .col_expr(
            generation::Column::UpstreamCost,
            Expr::value(if success { outcome.upstream_cost } else { 0 }),
        )
        .col_expr(
            generation::Column::Error,
            Expr::value(outcome.error.clone()),
        )
        .col_expr(
            generation::Column::FinishReason,
            Expr::value(outcome.state.as_str()),
        )
        .col_expr(
            generation::Column::NumMedia,
            Expr::value(i64::from(success)),
        )
        .col_expr(generation::Column::GenerationTimeMs, Expr::value(latency))
        .col_expr(
            generation::Column::StatusCode,
            Expr::value(if success { 200 } else { 502 }),
        )
        .filter(generation::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    if !synced.is_empty() {
        after_commit(wallet.sync(&synced).await);
    }
    Ok(true)
}

/// How long a signed result URL works.
pub const URL_TTL_S: i64 = 24 * 3600;

/// What a result URL's signature covers: the task, its owner, the expiry.
pub fn url_message(id: &str, user_id: i64, expires: i64) -> String {
    format!("{id}\n{user_id}\n{expires}")
}

/// The result URLs an upstream left for task `t` (never shown to clients).
pub fn result_urls(t: &task::Model) -> Vec<String> {
    let result: serde_json::Value = t
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    if let Some(url) = result.get("video_url").and_then(|u| u.as_str()) {
        return vec![url.to_owned()];
    }
    result
        .get("urls")
        .and_then(|u| u.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Tollgate URLs of task `t`'s results under `base` (`scheme://host`, or nothing for
/// a page of this site), signed for its owner until `expires`: a Midjourney image at
/// `/mj/image/{id}` (where its clients look), any other result at
/// `/v1/tasks/{id}/content`, `index` picking one of several.
pub fn signed_urls(
    signer: &store::secret::SecretBox,
    t: &task::Model,
    base: &str,
    expires: i64,
) -> Vec<String> {
    let signature = signer.sign(&url_message(&t.id, t.user_id, expires));
    let route = if t.family == "midjourney" {
        format!("/mj/image/{}", t.id)
    } else {
        format!("/v1/tasks/{}/content", t.id)
    };
    let first = format!(
        "{}{route}?expires={expires}&signature={signature}",
        base.trim_end_matches('/')
    );
    (0..result_urls(t).len())
        .map(|i| {
            if i == 0 {
                first.clone()
            } else {
                format!("{first}&index={i}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn every_state_reads_back_as_written_and_only_two_are_open() {
        for s in [
            State::Queued,
            State::InProgress,
            State::Succeeded,
            State::Failed,
            State::Cancelled,
            State::Expired,
        ] {
            assert_eq!(State::parse(s.as_str()), Some(s));
            assert_eq!(s.is_open(), super::OPEN.contains(&s.as_str()));
        }
        assert_eq!(State::parse("SUCCESS"), None);
    }
}
