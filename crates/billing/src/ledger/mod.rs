//! The batched writer: generations, charges and their ledger rows are committed off
//! the request path, many requests to one transaction. A charge's balance change and
//! its ledger row are always in the same transaction, so `balance = Σ ledger` holds
//! even if the process dies between batches.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, ExprTrait,
    QueryFilter,
};
use store::entities::{generation, user};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::wallet::{Account, Synced};
use crate::{BillingError, Usage, Wallet};

mod postgres;
mod sqlite;

/// Everything known about one relay request when it ends.
#[derive(Clone, Debug, Default)]
pub struct GenerationRecord {
    pub id: String,
    pub upstream_id: Option<String>,
    pub user_id: i64,
    pub key_id: i64,
    pub channel_id: Option<i64>,
    pub provider_name: Option<String>,
    pub model: String,
    pub upstream_model: Option<String>,
    pub endpoint: String,
    pub streamed: bool,
    pub cancelled: bool,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    pub latency_ms: Option<i64>,
    pub generation_time_ms: Option<i64>,
    pub status: &'static str,
    pub status_code: u16,
    pub error: Option<String>,
    pub client_ip: Option<String>,
    /// The channels tried, in order; stored as JSON, written by the writer (not on
    /// the request's own path).
    pub attempts: Vec<Attempt>,
    pub created_at: DateTime<Utc>,
    /// What the serving channel's upstream charged (its `costs`), micro-credits.
    pub upstream_cost: i64,
}

/// One try at one channel, kept on the generation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attempt {
    pub channel_id: i64,
    pub channel: String,
    pub status: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

impl GenerationRecord {
    /// The attempts as stored (`None` when no channel was tried).
    pub fn attempts_json(&self) -> Option<String> {
        if self.attempts.is_empty() {
            return None;
        }
        serde_json::to_string(&self.attempts).ok()
    }

    /// About how long [`GenerationRecord::attempts_json`] is, without writing it.
    fn attempts_len(&self) -> usize {
        self.attempts
            .iter()
            .map(|a| 80 + a.channel.len() + a.error.as_ref().map_or(0, String::len))
            .sum()
    }
}

/// A settled charge waiting to be committed: `pending` is what the wallet holds for it.
#[derive(Clone, Copy, Debug)]
pub struct Charge {
    pub user_id: i64,
    pub key_id: i64,
    /// Whether the key has a wallet account (a credit limit).
    pub key_limited: bool,
    pub pending: i64,
    /// The hold's lease, released when the charge is committed.
    pub lease: u64,
}

enum Msg {
    Record(Box<GenerationRecord>, Option<Charge>),
    Flush(oneshot::Sender<()>),
}

/// Records waiting for the database, at most [`MAX_BACKLOG`] (and [`MAX_BACKLOG_BYTES`])
/// before admission refuses new requests; records of requests already admitted are
/// always kept, so the backlog can pass the bound only by what is in flight.
pub const MAX_BACKLOG: usize = 10_000;

/// The backlog's bound in bytes (records carry error texts and attempt lists).
pub const MAX_BACKLOG_BYTES: usize = 16 << 20;

/// Past this share of either bound (in quarters), admission waits for the writer to
/// catch up before it admits: the relay slows before it refuses.
const SLOW_AT_QUARTERS: usize = 3;

/// How long admission waits for the backlog to drain before it refuses.
const ADMIT_WAIT: Duration = Duration::from_millis(250);

/// Hands records to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct LedgerWriter {
    tx: mpsc::UnboundedSender<Msg>,
    backlog: Arc<AtomicUsize>,
    backlog_bytes: Arc<AtomicUsize>,
    db_down: Arc<AtomicBool>,
}

impl GenerationRecord {
    /// About how much memory the record holds while it waits for the writer.
    fn footprint(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        std::mem::size_of::<Self>()
            + self.id.capacity()
            + self.model.capacity()
            + self.endpoint.capacity()
            + text(&self.upstream_id)
            + text(&self.provider_name)
            + text(&self.upstream_model)
            + text(&self.finish_reason)
            + text(&self.error)
            + text(&self.client_ip)
            + self.attempts.capacity() * std::mem::size_of::<Attempt>()
            + self
                .attempts
                .iter()
                .map(|a| a.channel.capacity() + text(&a.error))
                .sum::<usize>()
    }
}

const MAX_BATCH: usize = 512;
/// How long the writer gathers records before it commits them. Every commit rewrites
/// the tail pages of each table and index it touches (on SQLite, whole pages into the
/// WAL), so fewer, larger batches write far less per record: 5 ms made 1.6 page writes
/// per request under load, 20 ms about a third of that. Visibility (2 s) is unaffected.
const GATHER: Duration = Duration::from_millis(20);

impl LedgerWriter {
    /// Starts the writer task.
    pub fn start(db: DatabaseConnection, wallet: Arc<Wallet>) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = LedgerWriter {
            tx,
            backlog: Arc::new(AtomicUsize::new(0)),
            backlog_bytes: Arc::new(AtomicUsize::new(0)),
            db_down: Arc::new(AtomicBool::new(false)),
        };
        let task = tokio::spawn(run(db, wallet, rx, writer.clone()));
        (writer, task)
    }

    /// Queues a generation (and its charge, if any) for the next batch.
    pub fn submit(&self, record: GenerationRecord, charge: Option<Charge>) {
        let bytes = record.footprint();
        self.backlog.fetch_add(1, Ordering::Relaxed);
        self.backlog_bytes.fetch_add(bytes, Ordering::Relaxed);
        if self.tx.send(Msg::Record(Box::new(record), charge)).is_err() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
            self.backlog_bytes.fetch_sub(bytes, Ordering::Relaxed);
            tracing::error!("ledger writer is gone; a generation was not recorded");
        }
    }

    /// Records submitted and not yet committed.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Bytes those records hold (about).
    pub fn backlog_bytes(&self) -> usize {
        self.backlog_bytes.load(Ordering::Relaxed)
    }

    /// Whether new requests must be refused: the backlog is full, or the writer's
    /// last attempt found the database unreachable.
    pub fn refuses(&self) -> bool {
        self.backlog() >= MAX_BACKLOG
            || self.backlog_bytes() >= MAX_BACKLOG_BYTES
            || self.db_down.load(Ordering::Relaxed)
    }

    /// Whether the backlog is past the share of its bounds where admission slows.
    fn pressed(&self) -> bool {
        self.backlog() * 4 >= MAX_BACKLOG * SLOW_AT_QUARTERS
            || self.backlog_bytes() * 4 >= MAX_BACKLOG_BYTES * SLOW_AT_QUARTERS
    }

    /// Admission's question: may a new request start? Below three quarters of the
    /// backlog's bounds, yes at once; above, the request waits (up to 250 ms) for the
    /// writer to catch up, which slows the relay to the writer's pace, and is refused
    /// if the backlog is still full (or the database unreachable).
    pub async fn admit(&self) -> bool {
        if self.db_down.load(Ordering::Relaxed) {
            return false;
        }
        if !self.pressed() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
        while self.pressed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        !self.refuses()
    }

    /// Waits until everything submitted before this call is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(
    db: DatabaseConnection,
    wallet: Arc<Wallet>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    writer: LedgerWriter,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut waiters = Vec::new();
        let mut push = |m: Msg, batch: &mut Vec<(GenerationRecord, Option<Charge>)>| match m {
            Msg::Record(r, c) => batch.push((*r, c)),
            Msg::Flush(w) => waiters.push(w),
        };
        push(first, &mut batch);
        // Gather by sleeping, then draining: a receiver waiting in `recv` is woken (a
        // thread hand-off) by every record sent, a sleeping one by none.
        let deadline = tokio::time::Instant::now() + GATHER;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => push(m, &mut batch),
                Err(mpsc::error::TryRecvError::Empty) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep_until(deadline).await;
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit_with_retry(&db, &wallet, &batch, &writer.db_down).await;
            let bytes: usize = batch.iter().map(|(r, _)| r.footprint()).sum();
            writer.backlog.fetch_sub(batch.len(), Ordering::Relaxed);
            writer.backlog_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// Commits a batch. While the database is unreachable the batch is held and retried
/// (the charges are owed; `db_down` makes admission refuse meanwhile); when the
/// database answers but refuses the batch three times, its records go one by one so
/// that one bad record cannot hold back the others.
async fn commit_with_retry(
    db: &DatabaseConnection,
    wallet: &Arc<Wallet>,
    batch: &[(GenerationRecord, Option<Charge>)],
    db_down: &AtomicBool,
) {
    let mut delay = Duration::from_millis(100);
    let mut refusals = 0;
    loop {
        match commit(db, batch).await {
            Ok(done) => {
                db_down.store(false, Ordering::Relaxed);
                let holds: Vec<crate::wallet::Committed> = batch
                    .iter()
                    .filter_map(|(_, c)| c.as_ref())
                    .map(|c| crate::wallet::Committed {
                        user_id: c.user_id,
                        key_id: c.key_limited.then_some(c.key_id),
                        lease: c.lease,
                        pending: c.pending,
                    })
                    .collect();
                if let Err(e) = wallet.flushed_many(&holds, &done.synced).await {
                    tracing::warn!(error = ?e, "batched wallet update failed; following one by one");
                    for (item, charged) in batch.iter().zip(&done.charged) {
                        follow_wallet(wallet, item, *charged, &done.synced).await;
                    }
                }
                return;
            }
            Err(e) if unreachable(&e) || !store::db::ping(db).await => {
                if !db_down.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = ?e, batch.len = batch.len(), "database unreachable; holding the ledger batch");
                }
            }
            Err(e) => {
                db_down.store(false, Ordering::Relaxed);
                refusals += 1;
                tracing::error!(error = ?e, batch.len = batch.len(), "ledger batch failed; retrying");
                if refusals >= 3 {
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    for item in batch {
        let charged = commit_one(db, item, db_down).await;
        follow_wallet(wallet, item, charged, &[]).await;
    }
}

fn unreachable(e: &BillingError) -> bool {
    matches!(e, BillingError::Store(s) if s.is_unavailable())
}

/// Commits a single record: held for as long as the database is unreachable, at most
/// three tries while it answers (then the record itself is at fault: it is logged and
/// dropped uncharged rather than blocking the writer).
async fn commit_one(
    db: &DatabaseConnection,
    item: &(GenerationRecord, Option<Charge>),
    db_down: &AtomicBool,
) -> i64 {
    let mut failures = 0;
    let mut delay = Duration::from_millis(100);
    loop {
        match commit(db, std::slice::from_ref(item)).await {
            Ok(done) => return done.charged.first().copied().unwrap_or(0),
            Err(e) => {
                // A commit whose answer was lost may have landed: then it is done.
                if let Ok(Some(g)) = generation::Entity::find_by_id(item.0.id.clone())
                    .one(db)
                    .await
                {
                    return g.cost;
                }
                if store::db::ping(db).await {
                    db_down.store(false, Ordering::Relaxed);
                    failures += 1;
                    if failures >= 3 {
                        tracing::error!(error = ?e, generation.id = %item.0.id,
                            "generation could not be recorded; dropped without charge");
                        return 0;
                    }
                } else {
                    db_down.store(true, Ordering::Relaxed);
                    tracing::warn!("database unreachable; holding the ledger record");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// After a commit: the pending charge leaves the wallet's `held`, and the accounts
/// take the balance the commit left (`synced`; read from the database when the
/// commit's own answer is unknown).
async fn follow_wallet(
    wallet: &Arc<Wallet>,
    item: &(GenerationRecord, Option<Charge>),
    charged: i64,
    synced: &[Synced],
) {
    let Some(c) = item.1 else { return };
    let key = c.key_limited.then_some(c.key_id);
    let result = if synced.is_empty() {
        match wallet.read_states(c.user_id, key).await {
            Ok(states) => {
                wallet
                    .flushed(c.user_id, key, c.lease, c.pending, &states)
                    .await
            }
            Err(e) => Err(e),
        }
    } else {
        wallet
            .flushed(c.user_id, key, c.lease, c.pending, synced)
            .await
    };
    if let Err(e) = result {
        tracing::error!(error = ?e, user.id = c.user_id, charged, "wallet not updated after commit; retrying in the background");
        // The commit is done: the counters must follow (idempotently), or the pending
        // charge stays held. Retried off the writer's path.
        let (wallet, synced) = (Arc::clone(wallet), synced.to_vec());
        tokio::spawn(async move {
            for wait in crate::wallet::RETRIES {
                tokio::time::sleep(wait).await;
                let states = if synced.is_empty() {
                    match wallet.read_states(c.user_id, key).await {
                        Ok(s) => s,
                        Err(_) => continue,
                    }
                } else {
                    synced.clone()
                };
                if wallet
                    .flushed(c.user_id, key, c.lease, c.pending, &states)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tracing::error!(
                user.id = c.user_id,
                "wallet still not updated after commit; the next refresh sets its limit"
            );
        });
    }
}

/// What a committed batch charged each record, and the accounts' states after it.
struct Committed {
    charged: Vec<i64>,
    synced: Vec<Synced>,
}

/// A ledger line of a batch: the charge of record `index`, and the balance after it.
struct Line {
    index: usize,
    user_id: i64,
    amount: i64,
    balance_after: i64,
}

/// The batch's positive charges by user: (record index, pending amount), in order.
fn by_user(batch: &[(GenerationRecord, Option<Charge>)]) -> BTreeMap<i64, Vec<(usize, i64)>> {
    let mut by_user: BTreeMap<i64, Vec<(usize, i64)>> = BTreeMap::new();
    for (i, (_, charge)) in batch.iter().enumerate() {
        if let Some(c) = charge.filter(|c| c.pending > 0) {
            by_user.entry(c.user_id).or_default().push((i, c.pending));
        }
    }
    by_user
}

/// The batch's charges summed per key (what each key's `used` grows by).
fn by_key(batch: &[(GenerationRecord, Option<Charge>)], charged: &[i64]) -> BTreeMap<i64, i64> {
    let mut by_key: BTreeMap<i64, i64> = BTreeMap::new();
    for (i, (_, charge)) in batch.iter().enumerate() {
        if let Some(c) = charge.filter(|_| charged[i] > 0) {
            *by_key.entry(c.key_id).or_default() += charged[i];
        }
    }
    by_key
}

/// A user deleted while their requests ran: nothing can be taken, every charge is a
/// reported shortfall.
fn user_gone(
    batch: &[(GenerationRecord, Option<Charge>)],
    user_id: i64,
    items: &[(usize, i64)],
    shortfall: &mut [i64],
) {
    for &(i, pending) in items {
        report_shortfall(&batch[i].0.id, user_id, pending, 0);
        shortfall[i] = pending;
    }
}

/// The wallet state a user's debit left.
fn user_state(user_id: i64, balance: i64, rev: i64) -> Synced {
    Synced {
        account: Account::User(user_id),
        limit: balance,
        rev,
    }
}

/// A user's charges, all covered by one debit of their total: each is charged in full
/// and its ledger line carries the balance running down from `before`.
fn runs_down(
    user_id: i64,
    before: i64,
    items: &[(usize, i64)],
    charged: &mut [i64],
    lines: &mut Vec<Line>,
) {
    let mut balance = before;
    for &(index, pending) in items {
        balance -= pending;
        charged[index] = pending;
        lines.push(Line {
            index,
            user_id,
            amount: pending,
            balance_after: balance,
        });
    }
}

/// A user's charges when the balance `before` cannot cover them all: each takes what
/// is left, in order, and what it could not take is its shortfall (reported). Returns
/// the total taken.
fn split_short(
    batch: &[(GenerationRecord, Option<Charge>)],
    user_id: i64,
    before: i64,
    items: &[(usize, i64)],
    charged: &mut [i64],
    shortfall: &mut [i64],
    lines: &mut Vec<Line>,
) -> i64 {
    let mut balance = Ord::max(before, 0);
    let mut taken = 0;
    for &(index, pending) in items {
        let amount = Ord::min(pending, balance);
        if amount < pending {
            report_shortfall(&batch[index].0.id, user_id, pending, amount);
            shortfall[index] = pending - amount;
        }
        if amount > 0 {
            balance -= amount;
            taken += amount;
            charged[index] = amount;
            lines.push(Line {
                index,
                user_id,
                amount,
                balance_after: balance,
            });
        }
    }
    taken
}

fn report_shortfall(generation: &str, user_id: i64, pending: i64, charged: i64) {
    crate::metrics::SHORTFALLS.fetch_add(1, Ordering::Relaxed);
    crate::metrics::SHORTFALL_MICROS.fetch_add(
        u64::try_from(pending - charged).unwrap_or(0),
        Ordering::Relaxed,
    );
    tracing::error!(
        user.id = user_id,
        generation.id = %generation,
        pending,
        charged,
        "settled charge exceeds the balance; charged what was there"
    );
}

/// The generation's error when its charge fell short.
fn shortfall_error(shortfall: i64) -> Option<String> {
    (shortfall > 0).then(|| format!("charge_shortfall: {shortfall} µc owed were not charged"))
}

/// Commits one batch, in one transaction. Charges are summed per user (one conditional
/// update each) and per key; every charge gets its own ledger row, with the balance
/// after it. A charge the balance cannot fully cover (the wallet should make that
/// impossible) takes what is there and is reported as an error with a metric, never
/// passed over silently.
async fn commit(
    db: &DatabaseConnection,
    batch: &[(GenerationRecord, Option<Charge>)],
) -> Result<Committed, BillingError> {
    match db.get_database_backend() {
        DbBackend::Postgres => postgres::commit(db.get_postgres_connection_pool(), batch).await,
        _ => sqlite::commit(db.get_sqlite_connection_pool(), batch).await,
    }
}

/// A user's balance after a debit, at the revision the debit gave it.
#[derive(Clone, Copy, Debug)]
pub struct After {
    pub balance: i64,
    pub rev: i64,
}

impl After {
    /// The wallet state this leaves for `user_id`.
    pub fn synced(self, user_id: i64) -> Synced {
        Synced {
            account: Account::User(user_id),
            limit: self.balance,
            rev: self.rev,
        }
    }
}

/// `UPDATE users SET balance = balance - n, rev = rev + 1 [, used = used + n]
/// WHERE id = ? AND balance >= n`, returning the state after, or `None` when the
/// balance was short.
pub(crate) async fn conditional_debit<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    amount: i64,
    consumed: bool,
    now: DateTime<Utc>,
) -> Result<Option<After>, BillingError> {
    let mut update = user::Entity::update_many()
        .col_expr(
            user::Column::Balance,
            Expr::col(user::Column::Balance).sub(amount),
        )
        .col_expr(user::Column::Rev, Expr::col(user::Column::Rev).add(1));
    if consumed {
        update = update.col_expr(
            user::Column::Used,
            Expr::col(user::Column::Used).add(amount),
        );
    }
    let rows = update
        .col_expr(user::Column::UpdatedAt, Expr::value(now))
        .filter(user::Column::Id.eq(user_id))
        .filter(user::Column::Balance.gte(amount))
        .exec_with_returning(conn)
        .await?;
    Ok(rows.first().map(|u| After {
        balance: u.balance,
        rev: u.rev,
    }))
}

/// Text from upstreams goes into the database: NUL bytes (which Postgres refuses) are
/// dropped.
fn clean(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', ""))
    } else {
        Cow::Borrowed(s)
    }
}

fn clean_opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(|s| clean(s).into_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::task::Poll;

    use super::{LedgerWriter, MAX_BACKLOG, MAX_BACKLOG_BYTES};

    /// A writer whose task never runs: its backlog is whatever the test sets.
    fn stalled() -> LedgerWriter {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::mem::forget(rx);
        LedgerWriter {
            tx,
            backlog: Arc::new(AtomicUsize::new(0)),
            backlog_bytes: Arc::new(AtomicUsize::new(0)),
            db_down: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Polls `admit` once: `Some(answer)` if it answered at once, `None` if it waits.
    fn admit_now(w: &LedgerWriter) -> Option<bool> {
        let mut fut = std::pin::pin!(w.admit());
        let waker = std::task::Waker::noop();
        match fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            Poll::Ready(ok) => Some(ok),
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn admission_passes_a_light_backlog_slows_past_three_quarters_and_refuses_a_full_one() {
        let w = stalled();
        assert_eq!(admit_now(&w), Some(true), "an empty backlog admits at once");
        w.backlog.store(MAX_BACKLOG * 3 / 4 - 1, Ordering::Relaxed);
        assert_eq!(
            admit_now(&w),
            Some(true),
            "under three quarters admits at once"
        );

        w.backlog.store(MAX_BACKLOG * 3 / 4, Ordering::Relaxed);
        assert_eq!(admit_now(&w), None, "past three quarters admission waits");
        // The writer catches up while the request waits: it is admitted.
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.admit().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        w.backlog.store(10, Ordering::Relaxed);
        assert!(waiting.await.unwrap());

        // Full and not draining: refused once the wait is over.
        w.backlog.store(MAX_BACKLOG, Ordering::Relaxed);
        assert!(w.refuses());
        assert!(!w.admit().await);
        w.backlog.store(0, Ordering::Relaxed);

        // The bound in bytes counts as much as the bound in records.
        w.backlog_bytes.store(MAX_BACKLOG_BYTES, Ordering::Relaxed);
        assert!(w.refuses());
        assert!(!w.admit().await);
        w.backlog_bytes.store(0, Ordering::Relaxed);

        // A database found unreachable refuses at once.
        w.db_down.store(true, Ordering::Relaxed);
        assert_eq!(admit_now(&w), Some(false));
    }
}
