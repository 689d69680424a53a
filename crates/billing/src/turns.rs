//! One call in flight at a time, and those that come meanwhile go together with the
//! next: how the wallet sends its hot-path Redis scripts (`RESERVE`, `SETTLE`). Alone,
//! an item goes at once; under load several share one call, so the round trip and the
//! script's fixed cost are paid once for all of them.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::BillingError;

/// The items waiting for the call in flight.
pub(crate) struct Turns<T> {
    queue: Mutex<Queue<T>>,
    /// Most items one call takes.
    chunk: usize,
}

struct Queue<T> {
    waiting: Vec<(T, oneshot::Sender<Turn>)>,
    /// A call is in flight (its leader hands on when it ends).
    busy: bool,
}

/// What a waiting item is told.
enum Turn {
    /// It went with the call in flight, which answered this for it.
    Answered(Result<i64, BillingError>),
    /// It leads the next call.
    Lead,
}

impl<T: Copy> Turns<T> {
    pub(crate) fn new(chunk: usize) -> Self {
        Turns {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                busy: false,
            }),
            chunk: chunk.max(1),
        }
    }

    /// Sends `mine` in one call of `send` with every item waiting, or waits for the call
    /// in flight to end and goes with the next. `send` gets the items, `mine` first,
    /// and answers each in the same order; an item it gives no answer gets 0. When the
    /// call fails, every item in it gets the failure.
    ///
    /// `unclaimed` is told of each item whose call went but whose caller is gone (its
    /// future was dropped): with its answer, or `None` when the call failed or was
    /// dropped in flight and so may or may not have run. What the call did for it is
    /// then nobody's to undo but `unclaimed`'s.
    pub(crate) async fn take<F, Fut>(
        &self,
        mine: T,
        send: F,
        unclaimed: &(dyn Fn(T, Option<i64>) + Sync),
    ) -> Result<i64, BillingError>
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: Future<Output = Result<Vec<i64>, BillingError>>,
    {
        let waiting = {
            let mut q = lock(&self.queue);
            if q.busy {
                let (tx, rx) = oneshot::channel();
                q.waiting.push((mine, tx));
                Some(rx)
            } else {
                q.busy = true;
                None
            }
        };
        if let Some(rx) = waiting {
            let mut wait = Follower {
                turns: self,
                rx: Some(rx),
                item: mine,
                unclaimed,
            };
            let turn = match wait.rx.as_mut() {
                Some(rx) => rx.await,
                None => return Err(batch_failed(None)),
            };
            wait.rx = None;
            match turn {
                Ok(Turn::Answered(answer)) => return answer,
                Ok(Turn::Lead) => {}
                // The one in flight was dropped before handing on (shutdown).
                Err(_) => return Err(batch_failed(None)),
            }
        }
        // This item leads: it sends itself and those waiting, then hands the lead to
        // the first still waiting (also if this future is dropped meanwhile).
        let others: Vec<_> = {
            let mut q = lock(&self.queue);
            // Those whose callers are already gone are not sent at all.
            q.waiting.retain(|(_, tx)| !tx.is_closed());
            let n = q.waiting.len().min(self.chunk - 1);
            q.waiting.drain(..n).collect()
        };
        let items: Vec<T> = std::iter::once(mine)
            .chain(others.iter().map(|(item, _)| *item))
            .collect();
        let mut lead = LeadGuard {
            turns: self,
            in_flight: items.clone(),
            unclaimed,
        };
        let answers = send(items).await;
        lead.in_flight.clear();
        for (i, (item, tx)) in others.into_iter().enumerate() {
            let answer = match &answers {
                Ok(a) => Ok(a.get(i + 1).copied().unwrap_or(0)),
                Err(e) => Err(batch_failed(Some(e))),
            };
            if let Err(Turn::Answered(answer)) = tx.send(Turn::Answered(answer)) {
                unclaimed(item, answer.ok());
            }
        }
        drop(lead);
        answers.map(|a| a.first().copied().unwrap_or(0))
    }

    /// Hands the lead to the first item waiting, or ends it.
    fn pass_lead(&self) {
        let mut q = lock(&self.queue);
        while !q.waiting.is_empty() {
            let (_, tx) = q.waiting.remove(0);
            if tx.send(Turn::Lead).is_ok() {
                return;
            }
        }
        q.busy = false;
    }

    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        let q = lock(&self.queue);
        q.waiting.is_empty() && !q.busy
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        lock(&self.queue).waiting.len()
    }

    /// As if a call were in flight: what comes next waits (tests).
    #[cfg(test)]
    pub(crate) fn hold_busy(&self) {
        lock(&self.queue).busy = true;
    }

    /// As if the call in flight ended (tests).
    #[cfg(test)]
    pub(crate) fn end_call(&self) {
        self.pass_lead();
    }
}

/// An item waiting for its turn. Dropped while waiting (its request's task ended with
/// the runtime, or its client went away), it still hands on a lead it was given and
/// never took up: a lead lost there would leave every later item waiting for good. An
/// answer that came for it and was never read goes to `unclaimed`.
struct Follower<'a, T: Copy> {
    turns: &'a Turns<T>,
    rx: Option<oneshot::Receiver<Turn>>,
    item: T,
    unclaimed: &'a (dyn Fn(T, Option<i64>) + Sync),
}

impl<T: Copy> Drop for Follower<'_, T> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            match rx.try_recv() {
                Ok(Turn::Lead) => self.turns.pass_lead(),
                Ok(Turn::Answered(answer)) => (self.unclaimed)(self.item, answer.ok()),
                Err(_) => {}
            }
        }
    }
}

/// Hands the lead on when the leading item ends, however it ends. Dropped with its
/// call in flight, it tells `unclaimed` of every item in it: the call may have run.
struct LeadGuard<'a, T: Copy> {
    turns: &'a Turns<T>,
    in_flight: Vec<T>,
    unclaimed: &'a (dyn Fn(T, Option<i64>) + Sync),
}

impl<T: Copy> Drop for LeadGuard<'_, T> {
    fn drop(&mut self) {
        for item in self.in_flight.drain(..) {
            (self.unclaimed)(item, None);
        }
        self.turns.pass_lead();
    }
}

/// The error an item that went in a failed call is given (the leader's, when it is
/// Redis's own).
fn batch_failed(leader: Option<&BillingError>) -> BillingError {
    use deadpool_redis::redis;
    match leader {
        Some(BillingError::Store(store::StoreError::Redis(e))) => {
            BillingError::Store(store::StoreError::Redis(e.clone()))
        }
        _ => BillingError::Store(store::StoreError::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the batch could not be sent to Redis",
        )))),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_that_come_during_a_call_go_together_in_the_next_each_with_its_own_answer() {
        let turns = Turns::<i64>::new(200);
        let calls = AtomicUsize::new(0);
        let send = |items: Vec<i64>| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move { Ok(items.iter().map(|i| i * 10).collect()) }
        };
        turns.hold_busy();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut waiting: Vec<_> = (1..=5)
            .map(|i| Box::pin(turns.take(i, send, &|_, _| {})))
            .collect();
        for w in &mut waiting {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(turns.waiting(), 5);
        turns.end_call();
        let mut answers = Vec::new();
        for w in waiting {
            answers.push(w.await.unwrap());
        }
        assert_eq!(answers, [10, 20, 30, 40, 50]);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(turns.idle());
        // Alone, an item goes at once.
        assert_eq!(turns.take(7, send, &|_, _| {}).await.unwrap(), 70);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_failed_call_fails_every_item_in_it_and_the_next_call_goes() {
        let turns = Turns::<i64>::new(200);
        turns.hold_busy();
        let fail = |_: Vec<i64>| async { Err(batch_failed(None)) };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut waiting: Vec<_> = (0..3)
            .map(|i| Box::pin(turns.take(i, fail, &|_, _| {})))
            .collect();
        for w in &mut waiting {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        turns.end_call();
        for w in waiting {
            // Each may have run: a caller told so treats it as Redis being unreachable.
            match w.await {
                Err(BillingError::Store(e)) => assert!(e.is_unavailable()),
                other => panic!("expected an unavailable store, got {other:?}"),
            }
        }
        assert!(turns.idle());
        let ok = |items: Vec<i64>| async move { Ok(items) };
        assert_eq!(turns.take(4, ok, &|_, _| {}).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn an_item_dropped_after_it_was_handed_the_lead_hands_it_on() {
        let turns = Turns::<i64>::new(200);
        let ok = |items: Vec<i64>| async move { Ok(items) };
        // A call is in flight; an item comes and waits for its turn.
        turns.hold_busy();
        let mut waiting = Box::pin(turns.take(1, ok, &|_, _| {}));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert_eq!(turns.waiting(), 1);
        // The call in flight ends and hands the lead to it; its task is dropped before
        // it runs again (a worker stopping).
        turns.end_call();
        drop(waiting);
        // The lead was handed on, not lost: the next item goes at once.
        assert!(turns.idle());
        let next = tokio::time::timeout(Duration::from_secs(5), turns.take(2, ok, &|_, _| {}))
            .await
            .expect("an item after a dropped lead must not wait for good");
        assert_eq!(next.unwrap(), 2);
    }
    #[tokio::test]
    async fn an_answer_whose_caller_went_away_during_the_call_is_handed_to_unclaimed() {
        let turns = Turns::<i64>::new(200);
        let lost = Mutex::new(Vec::new());
        let unclaimed = |item, answer| lost.lock().unwrap().push((item, answer));
        let gate = tokio::sync::Semaphore::new(0);
        let send = |items: Vec<i64>| {
            let gate = &gate;
            async move {
                let _open = gate.acquire().await.unwrap();
                Ok(items.iter().map(|i| i * 10).collect())
            }
        };
        turns.hold_busy();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut first = Box::pin(turns.take(1, send, &unclaimed));
        let mut second = Box::pin(turns.take(2, send, &unclaimed));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        // The first is handed the lead and sends both; the second's caller goes away
        // while the call is in flight.
        turns.end_call();
        assert!(first.as_mut().poll(&mut cx).is_pending());
        drop(second);
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), 10);
        assert_eq!(*lost.lock().unwrap(), [(2, Some(20))]);
        assert!(turns.idle());
    }

    #[tokio::test]
    async fn an_item_whose_caller_went_away_before_its_call_is_not_sent() {
        let turns = Turns::<i64>::new(200);
        let sent = Mutex::new(Vec::new());
        let send = |items: Vec<i64>| {
            sent.lock().unwrap().extend(items.iter().copied());
            async move { Ok(items) }
        };
        let unclaimed = |_, _| panic!("nothing was sent for it");
        turns.hold_busy();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut first = Box::pin(turns.take(1, send, &unclaimed));
        let mut second = Box::pin(turns.take(2, send, &unclaimed));
        let mut third = Box::pin(turns.take(3, send, &unclaimed));
        for w in [&mut first, &mut second, &mut third] {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        drop(second);
        turns.end_call();
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(third.await.unwrap(), 3);
        assert_eq!(*sent.lock().unwrap(), [1, 3]);
    }

    #[tokio::test]
    async fn a_lead_dropped_with_its_call_in_flight_hands_every_item_in_it_to_unclaimed() {
        let turns = Turns::<i64>::new(200);
        let lost = Mutex::new(Vec::new());
        let unclaimed = |item, answer| lost.lock().unwrap().push((item, answer));
        let never = |_: Vec<i64>| std::future::pending::<Result<Vec<i64>, BillingError>>();
        turns.hold_busy();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut first = Box::pin(turns.take(1, never, &unclaimed));
        let mut second = Box::pin(turns.take(2, never, &unclaimed));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        turns.end_call();
        // The first leads and sends both; its task is dropped with the call in flight.
        assert!(first.as_mut().poll(&mut cx).is_pending());
        drop(first);
        assert_eq!(*lost.lock().unwrap(), [(1, None), (2, None)]);
        // The second is told its call failed (it may have run), and the lead goes on.
        assert!(second.await.is_err());
        assert!(turns.idle());
    }
}
