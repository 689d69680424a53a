//! The batch commit on SQLite (the embedded default): multi-row `INSERT`s of a few
//! fixed sizes (each size's text is made once, and the driver keeps it prepared), with
//! values bound straight from the records. The writer runs in the gateway's process,
//! so what it spends is taken from the relay: building the same statements through the
//! query builder cost about a third of the gateway's CPU under load.

use std::borrow::Cow;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, SqliteConnection, SqlitePool};
use sea_orm::{DbErr, RuntimeErr};

use super::{
    Committed, Line, clean, runs_down, shortfall_error, split_short, user_gone, user_state,
};
use crate::wallet::{Account, Synced};
use crate::{BillingError, Charge, GenerationRecord};

fn db_err(e: sqlx::Error) -> BillingError {
    BillingError::from(DbErr::Exec(RuntimeErr::SqlxError(e.into())))
}

/// Rows per `INSERT`, largest first: a batch is cut into these sizes. Each statement
/// is a round trip to the driver's worker thread, so a batch of 700 (20 ms at 35k
/// requests/s) takes 11 of them, not 27. 128 rows of generations bind 3,584 values,
/// far below SQLite's limit of 32,766.
const SHAPES: [usize; 4] = [128, 32, 8, 1];

const GENERATION_COLUMNS: &str = "id, upstream_id, user_id, key_id, channel_id, provider_name, \
    model, upstream_model, endpoint, streamed, cancelled, finish_reason, tokens_prompt, \
    tokens_completion, tokens_cached, tokens_reasoning, tokens_cache_write, num_media, \
    latency_ms, generation_time_ms, cost, status, status_code, error, client_ip, attempts, \
    created_at, upstream_cost";
const GENERATION_ARITY: usize = 28;

const LEDGER_COLUMNS: &str = "user_id, kind, amount, balance_after, reference, note, created_at";
const LEDGER_ARITY: usize = 7;

/// `INSERT INTO table (columns) VALUES (?, …), …` for `rows` rows.
fn insert_text(table: &str, columns: &str, arity: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; arity].join(", "));
    format!(
        "INSERT INTO {table} ({columns}) VALUES {}",
        vec![row; rows].join(", ")
    )
}

/// The statement for `rows` rows (one of [`SHAPES`]), made once per process.
fn shaped(
    cell: &'static OnceLock<[String; SHAPES.len()]>,
    table: &str,
    columns: &str,
    arity: usize,
    rows: usize,
) -> &'static str {
    let texts = cell.get_or_init(|| SHAPES.map(|n| insert_text(table, columns, arity, n)));
    let at = SHAPES
        .iter()
        .position(|&n| n == rows)
        .unwrap_or(SHAPES.len() - 1);
    texts[at].as_str()
}

/// Cuts `0..n` into runs of the [`SHAPES`] sizes, largest first.
fn cut(n: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for size in SHAPES {
        while n - start >= size {
            out.push(start..start + size);
            start += size;
        }
    }
    out
}

pub(super) async fn commit(
    pool: &SqlitePool,
    batch: &[(GenerationRecord, Option<Charge>)],
) -> Result<Committed, BillingError> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    let now = Utc::now();
    let mut charged = vec![0_i64; batch.len()];
    let mut shortfall = vec![0_i64; batch.len()];
    let mut synced = Vec::new();
    let mut lines = Vec::new();
    for (user_id, items) in super::by_user(batch) {
        let total: i64 = items.iter().map(|(_, p)| p).sum();
        let debited = sqlx::query_as::<_, (i64, i64)>(
            "UPDATE users SET balance = balance - ?1, used = used + ?1, rev = rev + 1, \
             updated_at = ?2 WHERE id = ?3 AND balance >= ?1 RETURNING balance, rev",
        )
        .bind(total)
        .bind(now)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some((balance, rev)) = debited {
            runs_down(user_id, balance + total, &items, &mut charged, &mut lines);
            synced.push(user_state(user_id, balance, rev));
            continue;
        }
        // Short (the wallet should have made this impossible): each charge takes what
        // is left, in order; the rest is a reported shortfall. The update above holds
        // the write lock, so the balance read here stays until the commit.
        let Some((before, _)) =
            sqlx::query_as::<_, (i64, i64)>("SELECT balance, rev FROM users WHERE id = ?1")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
        else {
            user_gone(batch, user_id, &items, &mut shortfall);
            continue;
        };
        let taken = split_short(
            batch,
            user_id,
            before,
            &items,
            &mut charged,
            &mut shortfall,
            &mut lines,
        );
        let (balance, rev) = sqlx::query_as::<_, (i64, i64)>(
            "UPDATE users SET balance = balance - ?1, used = used + ?1, rev = rev + 1, \
             updated_at = ?2 WHERE id = ?3 RETURNING balance, rev",
        )
        .bind(taken)
        .bind(now)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        synced.push(user_state(user_id, balance, rev));
    }

    let by_key = super::by_key(batch, &charged);
    for (key_id, amount) in by_key {
        let row = sqlx::query_as::<_, (Option<i64>, i64, i64)>(
            "UPDATE api_keys SET used = used + ?1, rev = rev + 1, last_used_at = ?2 \
             WHERE id = ?3 RETURNING credit_limit, used, rev",
        )
        .bind(amount)
        .bind(now)
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some((Some(limit), used, rev)) = row {
            synced.push(Synced {
                account: Account::Key(key_id),
                limit: limit - used,
                rev,
            });
        }
    }

    insert_ledger(&mut tx, batch, &lines, now).await?;
    insert_generations(&mut tx, batch, &charged, &shortfall).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(Committed { charged, synced })
}

async fn insert_ledger(
    tx: &mut SqliteConnection,
    batch: &[(GenerationRecord, Option<Charge>)],
    lines: &[Line],
    now: DateTime<Utc>,
) -> Result<(), BillingError> {
    static TEXT: OnceLock<[String; SHAPES.len()]> = OnceLock::new();
    for run in cut(lines.len()) {
        let text = shaped(
            &TEXT,
            "transactions",
            LEDGER_COLUMNS,
            LEDGER_ARITY,
            run.len(),
        );
        let mut q = sqlx::query(text);
        for l in &lines[run] {
            let r = &batch[l.index].0;
            q = q
                .bind(l.user_id)
                .bind("consume")
                .bind(-l.amount)
                .bind(l.balance_after)
                .bind(r.id.as_str())
                .bind(clean(&r.model))
                .bind(now);
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    Ok(())
}

fn text(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(clean)
}

async fn insert_generations(
    tx: &mut SqliteConnection,
    batch: &[(GenerationRecord, Option<Charge>)],
    charged: &[i64],
    shortfall: &[i64],
) -> Result<(), BillingError> {
    static TEXT: OnceLock<[String; SHAPES.len()]> = OnceLock::new();
    for run in cut(batch.len()) {
        let sql = shaped(
            &TEXT,
            "generations",
            GENERATION_COLUMNS,
            GENERATION_ARITY,
            run.len(),
        );
        let mut q = sqlx::query(sql);
        for i in run {
            let r = &batch[i].0;
            let u = &r.usage;
            q = q
                .bind(r.id.as_str())
                .bind(text(&r.upstream_id))
                .bind(r.user_id)
                .bind(r.key_id)
                .bind(r.channel_id)
                .bind(text(&r.provider_name))
                .bind(clean(&r.model))
                .bind(text(&r.upstream_model))
                .bind(r.endpoint.as_str())
                .bind(r.streamed)
                .bind(r.cancelled)
                .bind(text(&r.finish_reason))
                .bind(u.prompt_tokens)
                .bind(u.completion_tokens)
                .bind(u.cached_tokens)
                .bind(u.reasoning_tokens)
                .bind(u.cache_write_tokens)
                .bind(u.images)
                .bind(r.latency_ms)
                .bind(r.generation_time_ms)
                .bind(charged[i])
                .bind(r.status)
                .bind(i32::from(r.status_code))
                .bind(match shortfall_error(shortfall[i]) {
                    Some(owed) => Some(Cow::Owned(owed)),
                    None => text(&r.error),
                })
                .bind(text(&r.client_ip))
                .bind(r.attempts_json().as_deref().map(clean))
                .bind(r.created_at)
                .bind(r.upstream_cost);
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{SHAPES, cut, insert_text};

    #[test]
    fn a_batch_is_cut_into_the_few_prepared_insert_sizes() {
        let sizes: Vec<usize> = cut(87).iter().map(std::ops::Range::len).collect();
        assert_eq!(sizes, [32, 32, 8, 8, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(cut(87).last().map(|r| r.end), Some(87));
        assert!(cut(0).is_empty());
        let sizes: Vec<usize> = cut(300).iter().map(std::ops::Range::len).collect();
        assert_eq!(sizes, [128, 128, 32, 8, 1, 1, 1, 1]);
        assert!(SHAPES.windows(2).all(|w| w[0] > w[1]) && SHAPES.last() == Some(&1));
    }

    #[test]
    fn an_insert_has_one_placeholder_per_value() {
        let sql = insert_text("t", "a, b", 2, 3);
        assert_eq!(sql, "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)");
    }
}
