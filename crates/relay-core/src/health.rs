//! Channel health on the hot path: a circuit breaker per channel (N failures within a
//! window open it for a cool-down, then one trial request decides), and the sink that
//! tests suspect keys and persists what must outlive this process (disabled keys and
//! channels). Whose fault a failure is: [`crate::fault`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use store::catalog::ChannelEntry;

/// Breaker thresholds.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// Failures within `window` that open the breaker.
    pub failures: u32,
    pub window: Duration,
    /// How long an open breaker keeps the channel out before one trial.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    window_start: Option<Instant>,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

/// Every channel's breaker, in this process.
#[derive(Debug, Default)]
pub struct Breakers {
    /// The thresholds; the admin's settings replace them on every catalog reload.
    config: Mutex<BreakerConfig>,
    map: Mutex<HashMap<i64, Breaker>>,
    /// Keys found dead here, kept out until the catalog no longer has them.
    dead_keys: Mutex<HashMap<i64, Instant>>,
}

/// How long this process keeps a dead key out on its own, while the catalog reload
/// that removes it everywhere goes through.
const DEAD_KEY_TTL: Duration = Duration::from_secs(10);

/// What a breaker says about a channel right now.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Closed: use it.
    Open,
    /// Cooling down: skip it.
    Shut,
    /// Cool-down over: one trial request may go.
    Trial,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config: Mutex::new(config),
            map: Mutex::new(HashMap::new()),
            dead_keys: Mutex::new(HashMap::new()),
        }
    }

    /// New thresholds, for the next failures.
    pub fn set_config(&self, config: BreakerConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    fn config(&self) -> BreakerConfig {
        *self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Breaker>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `channel` may be tried now (does not claim the trial).
    pub fn gate(&self, channel: i64) -> Gate {
        let map = self.lock();
        match map
            .get(&channel)
            .and_then(|b| b.open_until.map(|u| (u, b.trial_in_flight)))
        {
            None => Gate::Open,
            Some((until, _)) if Instant::now() < until => Gate::Shut,
            Some((_, true)) => Gate::Shut,
            Some((_, false)) => Gate::Trial,
        }
    }

    /// Claims the one trial of a cooled-down channel; false when another request has it.
    pub fn claim_trial(&self, channel: i64) -> bool {
        let mut map = self.lock();
        let b = map.entry(channel).or_default();
        if b.trial_in_flight {
            return false;
        }
        b.trial_in_flight = true;
        true
    }

    /// Keeps a dead key out of rotation in this process at once.
    pub fn kill_key(&self, key_id: i64) {
        self.dead_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key_id, Instant::now() + DEAD_KEY_TTL);
    }

    /// Keys recently found dead here.
    pub fn dead_keys(&self) -> Vec<i64> {
        let mut dead = self.dead_keys.lock().unwrap_or_else(|e| e.into_inner());
        if dead.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        dead.retain(|_, until| *until > now);
        dead.keys().copied().collect()
    }

    /// Records a try that says nothing about the channel's health (the request's own
    /// fault, a suspect key): a trial it held is handed back for the next request.
    pub fn neutral(&self, channel: i64) {
        if let Some(b) = self.lock().get_mut(&channel) {
            b.trial_in_flight = false;
        }
    }

    /// Records a success: the breaker closes.
    pub fn success(&self, channel: i64) {
        self.lock().remove(&channel);
    }

    /// Records a failure; returns true when this failure opened the breaker.
    pub fn failure(&self, channel: i64) -> bool {
        let now = Instant::now();
        let config = self.config();
        let mut map = self.lock();
        let b = map.entry(channel).or_default();
        if b.trial_in_flight {
            // The trial failed: cool down again.
            b.trial_in_flight = false;
            b.open_until = Some(now + config.cooldown);
            return true;
        }
        if b.window_start
            .is_none_or(|s| now.duration_since(s) > config.window)
        {
            b.window_start = Some(now);
            b.failures = 0;
        }
        b.failures += 1;
        if b.failures >= config.failures && b.open_until.is_none_or(|u| u <= now) {
            b.open_until = Some(now + config.cooldown);
            b.failures = 0;
            b.window_start = None;
            return true;
        }
        false
    }
}

/// A key that answered with a structured auth or quota error, and what it takes to
/// test it. (No `Debug`: it carries the key.)
pub struct SuspectKey {
    /// The channel the key belongs to, as the relay saw it.
    pub channel: Arc<ChannelEntry>,
    /// The key's id (`channel_keys.id`).
    pub key_id: i64,
    /// The key itself, for the test request; never logged.
    pub secret: String,
    /// Why it is suspected; shown to the admin when the test confirms it.
    pub reason: String,
}

/// Where the relay reports what must be persisted and shared with other instances.
pub trait HealthSink: Send + Sync {
    /// A key looks dead: test it with one small request, and only when that fails the
    /// same way disable it (and the channel, when no key is left).
    fn key_suspected(&self, suspect: SuspectKey);
    /// A try at a channel failed for a reason that does not kill the key.
    fn channel_failed(&self, channel_id: i64, error: String);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Breakers {
        Breakers::new(BreakerConfig {
            failures: 3,
            window: Duration::from_secs(60),
            cooldown: Duration::from_millis(50),
        })
    }

    #[test]
    fn a_breaker_opens_after_n_failures_and_lets_one_trial_through_after_the_cooldown() {
        let b = fast();
        assert!(!b.failure(1));
        assert!(!b.failure(1));
        assert_eq!(b.gate(1), Gate::Open);
        assert!(b.failure(1));
        assert_eq!(b.gate(1), Gate::Shut);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.gate(1), Gate::Trial);
        assert!(b.claim_trial(1));
        assert!(!b.claim_trial(1));
        assert_eq!(b.gate(1), Gate::Shut);
        // The trial fails: shut again for another cool-down.
        assert!(b.failure(1));
        assert_eq!(b.gate(1), Gate::Shut);
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.claim_trial(1));
        b.success(1);
        assert_eq!(b.gate(1), Gate::Open);
    }

    #[test]
    fn a_trial_that_ends_in_the_requests_own_fault_is_handed_back() {
        let b = fast();
        for _ in 0..3 {
            b.failure(1);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.claim_trial(1));
        assert_eq!(b.gate(1), Gate::Shut);
        b.neutral(1);
        assert_eq!(b.gate(1), Gate::Trial);
        assert!(b.claim_trial(1));
    }
}
