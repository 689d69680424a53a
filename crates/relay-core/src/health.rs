//! Channel health on the hot path: a circuit breaker per channel (N failures within a
//! window open it for a cool-down, then one trial request decides), and the sink that
//! tests suspect keys and persists what must outlive this process (disabled keys and
//! channels). Whose fault a failure is: [`crate::fault`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use store::catalog::{ChannelEntry, ChannelSecret};

/// Breaker thresholds.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// Failures within `window` that open the breaker.
    pub failures: u32,
    pub window: Duration,
    /// How long an open breaker keeps the channel out before one trial.
    pub cooldown: Duration,
}

impl From<store::settings::Tunables> for BreakerConfig {
    fn from(t: store::settings::Tunables) -> Self {
        BreakerConfig {
            failures: t.breaker_failures,
            window: Duration::from_secs(t.breaker_window_s),
            cooldown: Duration::from_secs(t.breaker_cooldown_s),
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        store::settings::Tunables::DEFAULT.into()
    }
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    window_start: Option<Instant>,
    /// Customer keys whose requests failed in this window (at most [`MIN_CALLERS`]).
    callers: Vec<i64>,
    open_until: Option<Instant>,
    trial: Option<Trial>,
}

/// The one trial of a cooled-down channel, held by a request until it ends or expires.
#[derive(Clone, Copy, Debug)]
struct Trial {
    /// Which claim holds it, so a late release of an expired claim frees nothing else.
    id: u64,
    /// After this the claim counts as lost (its request hung or vanished).
    expires: Instant,
}

/// Distinct customer keys whose failures it takes to open a breaker: one customer
/// alone (slow generations, requests an upstream chokes on) cannot take a channel away
/// from everyone else.
pub const MIN_CALLERS: usize = 2;

/// How many locks the breakers are spread over (by channel id): requests to
/// different channels rarely wait on each other's breaker.
const SHARDS: usize = 16;

/// Every channel's breaker, in this process. A healthy process reads only two
/// atomics per request: a channel's shard of the breakers, and the dead keys, are
/// locked only while some channel has failed recently or some key was found dead.
#[derive(Debug, Default)]
pub struct Breakers {
    /// The thresholds; the admin's settings replace them on every catalog reload.
    config: Mutex<BreakerConfig>,
    shards: [Mutex<HashMap<i64, Breaker>>; SHARDS],
    /// How many channels have breaker state (the shards' sizes, kept under their locks).
    tracked: AtomicUsize,
    /// Keys found dead here, kept out until the catalog no longer has them.
    dead_keys: Mutex<HashMap<i64, Instant>>,
    /// How many keys `dead_keys` holds (kept under its lock).
    dead: AtomicUsize,
    /// The id of the next trial claim.
    next_trial: AtomicU64,
}

/// How long this process keeps a dead key out on its own, while the catalog reload
/// that removes it everywhere goes through.
const DEAD_KEY_TTL: Duration = Duration::from_secs(10);

/// What a breaker says about a channel right now.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Closed: use it.
    Open,
    /// Cooling down, or its trial is under way: skip it.
    Shut,
    /// Cool-down over: one trial request may go.
    Trial,
}

/// A claimed trial. Dropping it — whatever way the request ends: an early `continue`,
/// an error, a client that hung up — hands the trial back unless a success or a
/// failure already decided it.
#[must_use = "the trial is handed back as soon as the claim is dropped"]
#[derive(Debug)]
pub struct TrialClaim<'a> {
    breakers: &'a Breakers,
    channel: i64,
    id: u64,
}

impl Drop for TrialClaim<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.breakers.lock(self.channel).map.get_mut(&self.channel)
            && b.trial.is_some_and(|t| t.id == self.id)
        {
            b.trial = None;
        }
    }
}

/// One shard of the breakers, locked; its change in size is added to `tracked` when
/// the lock ends.
struct Locked<'a> {
    map: std::sync::MutexGuard<'a, HashMap<i64, Breaker>>,
    tracked: &'a AtomicUsize,
    len: usize,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let now = self.map.len();
        if now > self.len {
            self.tracked.fetch_add(now - self.len, Ordering::Release);
        } else if now < self.len {
            self.tracked.fetch_sub(self.len - now, Ordering::Release);
        }
    }
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config: Mutex::new(config),
            ..Breakers::default()
        }
    }

    /// New thresholds, for the next failures.
    pub fn set_config(&self, config: BreakerConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    fn config(&self) -> BreakerConfig {
        *self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shard of `channel`'s breaker, locked.
    fn lock(&self, channel: i64) -> Locked<'_> {
        let shard = usize::try_from(channel.rem_euclid(SHARDS as i64)).unwrap_or(0);
        let map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        Locked {
            len: map.len(),
            map,
            tracked: &self.tracked,
        }
    }

    /// Whether any channel has breaker state (no lock taken).
    fn any_tracked(&self) -> bool {
        self.tracked.load(Ordering::Acquire) > 0
    }

    /// Whether `channel` may be tried now (does not claim the trial). A trial whose
    /// claim has expired counts as lost: the next request may take it.
    pub fn gate(&self, channel: i64) -> Gate {
        if !self.any_tracked() {
            return Gate::Open;
        }
        let now = Instant::now();
        let locked = self.lock(channel);
        let Some(b) = locked.map.get(&channel) else {
            return Gate::Open;
        };
        match b.open_until {
            None => Gate::Open,
            Some(until) if now < until => Gate::Shut,
            Some(_) if b.trial.is_some_and(|t| t.expires > now) => Gate::Shut,
            Some(_) => Gate::Trial,
        }
    }

    /// Claims the one trial of a cooled-down channel for at most `lease` (the channel's
    /// timeout); `None` when another request holds it.
    pub fn claim_trial(&self, channel: i64, lease: Duration) -> Option<TrialClaim<'_>> {
        let now = Instant::now();
        let mut locked = self.lock(channel);
        let b = locked.map.entry(channel).or_default();
        if b.trial.is_some_and(|t| t.expires > now) {
            return None;
        }
        let id = self.next_trial.fetch_add(1, Ordering::Relaxed);
        b.trial = Some(Trial {
            id,
            expires: now + lease,
        });
        Some(TrialClaim {
            breakers: self,
            channel,
            id,
        })
    }

    /// Keeps a dead key out of rotation in this process at once.
    pub fn kill_key(&self, key_id: i64) {
        let mut dead = self.dead_keys.lock().unwrap_or_else(|e| e.into_inner());
        dead.insert(key_id, Instant::now() + DEAD_KEY_TTL);
        self.dead.store(dead.len(), Ordering::Release);
    }

    /// Keys recently found dead here.
    pub fn dead_keys(&self) -> Vec<i64> {
        if self.dead.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut dead = self.dead_keys.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        dead.retain(|_, until| *until > now);
        self.dead.store(dead.len(), Ordering::Release);
        dead.keys().copied().collect()
    }

    /// Records a success: the breaker closes.
    pub fn success(&self, channel: i64) {
        if self.any_tracked() {
            self.lock(channel).map.remove(&channel);
        }
    }

    /// Records a channel fault met by a request of customer key `caller`; returns true
    /// when this failure opened the breaker. A failed trial opens it again at once;
    /// otherwise it opens at the configured count within the window, and only when
    /// at least [`MIN_CALLERS`] distinct keys failed.
    pub fn failure(&self, channel: i64, caller: i64) -> bool {
        let now = Instant::now();
        let config = self.config();
        let mut locked = self.lock(channel);
        let b = locked.map.entry(channel).or_default();
        if b.trial.take().is_some() {
            // The trial failed: cool down again.
            b.open_until = Some(now + config.cooldown);
            return true;
        }
        if b.window_start
            .is_none_or(|s| now.duration_since(s) > config.window)
        {
            b.window_start = Some(now);
            b.failures = 0;
            b.callers.clear();
        }
        b.failures = b.failures.saturating_add(1);
        if b.callers.len() < MIN_CALLERS && !b.callers.contains(&caller) {
            b.callers.push(caller);
        }
        if b.failures >= config.failures
            && b.callers.len() >= MIN_CALLERS
            && b.open_until.is_none_or(|u| u <= now)
        {
            b.open_until = Some(now + config.cooldown);
            b.failures = 0;
            b.window_start = None;
            b.callers.clear();
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
    /// The key (its id is `channel_keys.id`), for the test request; never logged.
    pub key: ChannelSecret,
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

    const LEASE: Duration = Duration::from_secs(60);

    /// Opens channel 1's breaker with failures from keys 10 and 20.
    fn open(b: &Breakers) {
        assert!(!b.failure(1, 10));
        assert!(!b.failure(1, 20));
        assert!(b.failure(1, 10));
    }

    #[test]
    fn a_breaker_opens_after_n_failures_and_lets_one_trial_through_after_the_cooldown() {
        let b = fast();
        assert!(!b.failure(1, 10));
        assert!(!b.failure(1, 20));
        assert_eq!(b.gate(1), Gate::Open);
        assert!(b.failure(1, 10));
        assert_eq!(b.gate(1), Gate::Shut);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.gate(1), Gate::Trial);
        let claim = b.claim_trial(1, LEASE).unwrap();
        assert!(b.claim_trial(1, LEASE).is_none());
        assert_eq!(b.gate(1), Gate::Shut);
        // The trial fails: shut again for another cool-down.
        assert!(b.failure(1, 10));
        drop(claim);
        assert_eq!(b.gate(1), Gate::Shut);
        std::thread::sleep(Duration::from_millis(60));
        let claim = b.claim_trial(1, LEASE).unwrap();
        b.success(1);
        drop(claim);
        assert_eq!(b.gate(1), Gate::Open);
    }

    #[test]
    fn a_healthy_process_keeps_no_breaker_state_and_a_success_clears_a_failure() {
        let b = fast();
        assert!(!b.any_tracked());
        assert_eq!(b.gate(1), Gate::Open);
        b.success(1);
        assert!(!b.any_tracked());
        assert!(!b.failure(1, 10));
        assert!(b.any_tracked());
        b.success(1);
        assert!(!b.any_tracked());
        assert!(b.dead_keys().is_empty());
        b.kill_key(7);
        assert_eq!(b.dead_keys(), vec![7]);
    }

    #[test]
    fn failures_from_one_customer_key_alone_never_open_the_breaker() {
        let b = fast();
        for _ in 0..50 {
            assert!(!b.failure(1, 10));
        }
        assert_eq!(b.gate(1), Gate::Open);
        // A second key's failure completes what the window already counted.
        assert!(b.failure(1, 20));
        assert_eq!(b.gate(1), Gate::Shut);
    }

    #[test]
    fn a_dropped_trial_claim_hands_the_trial_back() {
        let b = fast();
        open(&b);
        std::thread::sleep(Duration::from_millis(60));
        let claim = b.claim_trial(1, LEASE).unwrap();
        assert_eq!(b.gate(1), Gate::Shut);
        // The request ended without a verdict (no usable key, its own fault, a client
        // that hung up): the next request may take the trial.
        drop(claim);
        assert_eq!(b.gate(1), Gate::Trial);
        assert!(b.claim_trial(1, LEASE).is_some());
    }

    #[test]
    fn a_trial_claim_older_than_its_lease_counts_as_lost() {
        let b = fast();
        open(&b);
        std::thread::sleep(Duration::from_millis(60));
        let stale = b.claim_trial(1, Duration::from_millis(20)).unwrap();
        assert_eq!(b.gate(1), Gate::Shut);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.gate(1), Gate::Trial);
        let fresh = b.claim_trial(1, LEASE).unwrap();
        // The lost claim's late release does not free the trial someone else holds.
        drop(stale);
        assert_eq!(b.gate(1), Gate::Shut);
        drop(fresh);
        assert_eq!(b.gate(1), Gate::Trial);
    }
}
