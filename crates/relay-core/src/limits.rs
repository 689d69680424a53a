//! Per-key limits beyond rpm (API.md keys: `tpm`, `max_concurrency`), shared across
//! instances through the same counters as rpm (Redis, or this process):
//! - tokens per minute: a request's prompt and completion tokens are added to its
//!   key's minute when it settles; a request is refused while the key's current minute
//!   is spent (`Retry-After`: the seconds left in the minute);
//! - requests in flight: a request takes one of its key's slots at admission and gives
//!   it back when it ends (its stream included); a slot whose holder died lapses after
//!   [`SLOT_TTL`].

use std::sync::Arc;
use std::time::Duration;

use store::cache::Name;

use crate::RelayError;
use crate::admission::Caller;
use crate::pipeline::Pipeline;

/// How long a slot is kept by a holder that never gave it back (a crashed instance).
pub const SLOT_TTL: Duration = Duration::from_secs(15 * 60);

/// A request in flight, holding one of its key's slots; given back when dropped.
pub struct Slot {
    shared: Arc<store::Shared>,
    key: Name,
    member: Name,
    /// Where the give-back runs (the settlements' tracker: a shutdown waits for it).
    tasks: tokio_util::task::TaskTracker,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (shared, key, member) = (
            Arc::clone(&self.shared),
            self.key.clone(),
            self.member.clone(),
        );
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tasks.spawn(async move {
                if let Err(e) = shared.release(&key, &member).await {
                    tracing::warn!(error = %e, "giving back a concurrency slot failed; it lapses");
                }
            });
        }
    }
}

/// Where a key's tokens are counted: its counter for the minute of `now` (seconds
/// since the epoch), and the seconds left in that minute.
pub fn tpm_window(key_id: i64, now: i64) -> (Name, u64) {
    let minute = now.div_euclid(60);
    let left = 60 - now.rem_euclid(60);
    (
        Name::new(format_args!("tpm:{key_id}:{minute}")),
        u64::try_from(left).unwrap_or(60),
    )
}

/// What a request's settlement adds to its key's tokens per minute.
pub struct TokenBudget {
    pub shared: Arc<store::Shared>,
    pub key_id: i64,
}

impl TokenBudget {
    /// Adds `tokens` to the key's current minute.
    pub async fn spend(&self, tokens: i64) {
        if tokens <= 0 {
            return;
        }
        let (window, _) = tpm_window(self.key_id, chrono::Utc::now().timestamp());
        if let Err(e) = self
            .shared
            .add(&window, tokens, Duration::from_secs(120))
            .await
        {
            tracing::warn!(error = %e, "counting a key's tokens per minute failed");
        }
    }
}

fn unavailable(e: &store::StoreError) -> RelayError {
    if e.is_unavailable() {
        tracing::warn!(error = ?e, "rate-limit counter unreachable");
        RelayError::ServiceUnavailable
    } else {
        tracing::error!(error = ?e, "rate-limit counter failed");
        RelayError::Internal
    }
}

impl Pipeline {
    /// Refuses a key whose tokens this minute reached its `tpm`.
    pub async fn check_tpm(&self, caller: &Caller) -> Result<(), RelayError> {
        let Some(limit) = caller.key.tpm else {
            return Ok(());
        };
        let (window, left) = tpm_window(caller.key.id, chrono::Utc::now().timestamp());
        let spent = self
            .shared
            .count(&window)
            .await
            .map_err(|e| unavailable(&e))?;
        if u64::try_from(spent).unwrap_or(0) >= limit {
            return Err(RelayError::TokensPerMinute {
                limit,
                retry_after: left,
            });
        }
        Ok(())
    }

    /// Takes one of the key's `max_concurrency` slots for this request (none to take
    /// when the key has no such limit), or refuses it.
    pub async fn take_slot(&self, caller: &Caller) -> Result<Option<Slot>, RelayError> {
        let Some(limit) = caller.key.max_concurrency else {
            return Ok(None);
        };
        // The guard exists before the slot is asked for: whatever happens to this
        // request meanwhile (its client leaves, Redis answers too late), a slot taken
        // for it is given back (giving back one never taken is harmless).
        let slot = Slot {
            shared: Arc::clone(&self.shared),
            key: Name::new(format_args!("inflight:{}", caller.key.id)),
            member: Name::new(format_args!("{}", uuid::Uuid::now_v7().simple())),
            tasks: self.settler.tasks.clone(),
        };
        let taken = self
            .shared
            .acquire(&slot.key, &slot.member, limit, SLOT_TTL)
            .await
            .map_err(|e| unavailable(&e))?;
        if !taken {
            return Err(RelayError::TooManyInFlight(limit));
        }
        Ok(Some(slot))
    }

    /// The key's token budget, when it has a `tpm`.
    pub fn token_budget(&self, caller: &Caller) -> Option<TokenBudget> {
        caller.key.tpm.map(|_| TokenBudget {
            shared: Arc::clone(&self.shared),
            key_id: caller.key.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::tpm_window;

    #[test]
    fn a_minute_window_names_its_minute_and_the_seconds_left() {
        let (name, left) = tpm_window(7, 120);
        assert_eq!((&*name, left), ("tpm:7:2", 60));
        let (name, left) = tpm_window(7, 179);
        assert_eq!((&*name, left), ("tpm:7:2", 1));
        // The longest name there can be still fits on the stack, and reads back whole.
        let (name, _) = tpm_window(i64::MIN, i64::MIN);
        assert_eq!(
            &*name,
            format!("tpm:{}:{}", i64::MIN, i64::MIN.div_euclid(60))
        );
    }
}
