//! Metering one request: the money held for it, and on completion the settlement
//! (charge what was used, release the rest) and the generation record. Settlement runs
//! at once where it need not wait (the in-process wallet), else on a tracked task, so a
//! client that goes away, or a shutdown, never skips it.

use billing::Cost;
use std::sync::Arc;
use std::time::Instant;

use billing::{Charge, GenerationRecord, Hold, Price, Usage};

use crate::funds::{Funds, Records};
use crate::limits::{Slot, TokenBudget};

use crate::metrics::Settled;
use tokio_util::task::TaskTracker;

/// What settling needs, shared by every request.
#[derive(Clone)]
pub struct Settler {
    pub wallet: Arc<dyn Funds>,
    pub writer: Arc<dyn Records>,
    pub tasks: TaskTracker,
    /// What `/metrics` shows.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The money side of one request in flight.
pub struct Meter {
    settler: Settler,
    /// The request's span: its settlement logs under it.
    span: tracing::Span,
    hold: Option<Hold>,
    price: Price,
    multiplier_ppm: i64,
    key_limited: bool,
    pub record: GenerationRecord,
    pub started: Instant,
    pub first_byte: Option<Instant>,
    /// The key's concurrency slot, given back when the request ends.
    slot: Option<Slot>,
    /// Where the request's tokens are counted against its key's `tpm`.
    tokens: Option<TokenBudget>,
    /// What the serving channel's upstream charges for the model (for margins).
    pub upstream_cost: Option<store::catalog::UpstreamCost>,
}

/// What the upstream charged for `usage`, at `cost` (or as a share of the list price:
/// `price` without any group multiplier).
pub fn upstream_cost_of(
    cost: Option<store::catalog::UpstreamCost>,
    price: &Price,
    usage: &Usage,
) -> i64 {
    use store::catalog::UpstreamCost;
    match cost {
        None => 0,
        Some(UpstreamCost::Tokens { input, output }) => Price {
            input,
            output,
            ..Price::default()
        }
        .cost(usage, 1_000_000),
        Some(UpstreamCost::Ratio { ppm }) => {
            let list = i128::from(price.cost(usage, 1_000_000));
            i64::try_from((list * i128::from(ppm) + 999_999) / 1_000_000).unwrap_or(i64::MAX)
        }
    }
}

/// How a request ended.
pub enum Outcome {
    /// Served: charge `usage`.
    Served(Usage),
    /// Failed: charge nothing; the status and error class go on the record.
    Failed { status: u16, error: String },
}

impl Meter {
    pub fn new(
        settler: Settler,
        hold: Hold,
        price: Price,
        multiplier_ppm: i64,
        record: GenerationRecord,
        started: Instant,
    ) -> Self {
        Meter {
            key_limited: hold.key_id.is_some(),
            settler,
            hold: Some(hold),
            price,
            multiplier_ppm,
            record,
            started,
            first_byte: None,
            span: tracing::Span::current(),
            slot: None,
            tokens: None,
            upstream_cost: None,
        }
    }

    /// With the key's concurrency slot and token budget.
    pub fn with_limits(mut self, slot: Option<Slot>, tokens: Option<TokenBudget>) -> Self {
        self.slot = slot;
        self.tokens = tokens;
        self
    }

    /// Marks the moment the first byte went to the client (once).
    pub fn mark_first_byte(&mut self) {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
    }

    /// Settles and records, on a tracked task.
    pub fn finish(mut self, outcome: Outcome) {
        let Some(hold) = self.hold.take() else { return };
        let now = Instant::now();
        let mut record = std::mem::take(&mut self.record);
        record.generation_time_ms = Some(ms(now - self.started));
        record.latency_ms = Some(ms(self.first_byte.unwrap_or(now) - self.started));
        let metrics = &self.settler.metrics;
        let status = match &outcome {
            Outcome::Served(_) => record.status_code,
            Outcome::Failed { status, .. } => *status,
        };
        metrics.request(
            &record.endpoint,
            &record.model,
            status,
            (now - self.started).as_secs_f64(),
        );
        if let (Outcome::Served(_), Some(first)) = (&outcome, self.first_byte) {
            metrics.first_byte(record.channel_id, (first - self.started).as_secs_f64());
        }
        metrics.settled(match outcome {
            Outcome::Served(_) => Settled::Charged,
            Outcome::Failed { .. } => Settled::Released,
        });
        let settler = self.settler.clone();
        let (price, mult, key_limited) = (self.price, self.multiplier_ppm, self.key_limited);
        let span = self.span.clone();
        let upstream = self.upstream_cost;
        // The request has ended: its slot goes back now, its tokens count once settled.
        self.slot.take();
        let tokens = self.tokens.take();
        settle_now_or_track(
            &self.settler.tasks,
            tracing::Instrument::instrument(
                async move {
                    match outcome {
                        Outcome::Served(usage) => {
                            record.usage = usage;
                            record.status = "success";
                            record.upstream_cost = upstream_cost_of(upstream, &price, &usage);
                            let cost = price.cost(&usage, mult);
                            let (user_id, key_id, lease) =
                                (hold.user_id, record.key_id, hold.lease);
                            let held = hold.amount;
                            let pending = match settler.wallet.settle(hold, cost).await {
                                Ok(pending) => pending,
                                Err(e) => {
                                    // The counters are unreachable, the database is not the
                                    // counters: what was served is still charged (never more than
                                    // held); the counters follow once they answer again.
                                    tracing::error!(error = %e, generation.id = %record.id, "wallet unreachable at settlement; charging through the ledger");
                                    cost.clamp(0, held)
                                }
                            };
                            tracing::debug!(cost, held, "settled");
                            settler.writer.submit(
                                record,
                                Some(Charge {
                                    user_id,
                                    key_id,
                                    key_limited,
                                    pending,
                                    lease,
                                }),
                            );
                            if let Some(budget) = tokens {
                                budget
                                    .spend(usage.prompt_tokens + usage.completion_tokens)
                                    .await;
                            }
                        }
                        Outcome::Failed { status, error } => {
                            record.status = "error";
                            record.status_code = status;
                            record.error = Some(error);
                            if let Err(e) = settler.wallet.release(hold).await {
                                tracing::error!(error = %e, "releasing a hold failed");
                            }
                            tracing::debug!(status, "released");
                            settler.writer.submit(record, None);
                        }
                    }
                },
                span,
            ),
        );
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            // Dropped without an outcome: nothing was delivered that we know of.
            let settler = self.settler.clone();
            let mut record = std::mem::take(&mut self.record);
            record.status = "error";
            record.status_code = 499;
            record.cancelled = true;
            record.error = Some("cancelled".into());
            record.generation_time_ms = Some(ms(self.started.elapsed()));
            let metrics = &self.settler.metrics;
            metrics.request(
                &record.endpoint,
                &record.model,
                499,
                self.started.elapsed().as_secs_f64(),
            );
            metrics.settled(Settled::Cancelled);
            settle_now_or_track(
                &self.settler.tasks,
                tracing::Instrument::instrument(
                    async move {
                        if let Err(e) = settler.wallet.release(hold).await {
                            tracing::error!(error = %e, "releasing a hold failed");
                        }
                        tracing::debug!("released: the client left");
                        settler.writer.submit(record, None);
                    },
                    self.span.clone(),
                ),
            );
        }
    }
}

/// Runs `settle` here and now, and only when it has to wait (for Redis) the rest of it
/// on a tracked task. Most settlements (the in-process wallet) finish in this first
/// poll: a task per request was an allocation, a queueing and a second poll of a
/// future that had nothing to wait for. Polling first with a waker that does nothing is
/// sound: the task's own first poll registers its waker wherever the future waits.
fn settle_now_or_track<F>(tasks: &TaskTracker, settle: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut settle = Box::pin(settle);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if settle.as_mut().poll(&mut cx).is_pending() {
        tasks.spawn(settle);
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_settlement_with_nothing_to_wait_for_runs_at_once_and_one_that_waits_finishes_on_a_tracked_task()
     {
        let tasks = TaskTracker::new();
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        settle_now_or_track(&tasks, async move { flag.store(true, Ordering::SeqCst) });
        assert!(done.load(Ordering::SeqCst), "ran in the first poll");
        assert!(tasks.is_empty(), "and needed no task");

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        settle_now_or_track(&tasks, async move {
            let _ = rx.await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!(!done.load(Ordering::SeqCst));
        assert_eq!(tasks.len(), 1, "the waiting rest is tracked");
        // Woken through the task's own waker, not the one of the first poll.
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
        tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
        assert!(done.load(Ordering::SeqCst));
    }
}
