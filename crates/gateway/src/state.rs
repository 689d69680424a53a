//! The process's one `AppState`, built once outside the server factory, and the
//! reloader that keeps its catalog snapshot fresh (never swapping in an older one).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use billing::{LedgerWriter, Wallet};
use relay_core::Router;
use relay_core::upstream::UpstreamClient;
use sea_orm::DatabaseConnection;
use store::secret::SecretBox;
use store::{Catalog, Shared};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::Config;

/// The catalog and the routing index built from it, swapped together.
#[derive(Default)]
pub struct Snapshot {
    /// When its load began, in this process's reload order: a snapshot whose load began
    /// later saw every change committed before that, so a higher version is fresher.
    pub version: u64,
    pub catalog: Catalog,
    pub router: Router,
    /// Channels tried per request (the admin's setting, else the environment's).
    pub max_tries: usize,
}

impl Snapshot {
    /// What the relay pipeline reads of it.
    pub fn routing(&self) -> relay_core::pipeline::Routing<'_> {
        relay_core::pipeline::Routing {
            catalog: &self.catalog,
            router: &self.router,
            max_tries: self.max_tries,
        }
    }
}

/// Shared by every worker and handler.
pub struct AppState {
    /// The durable store.
    pub db: DatabaseConnection,
    /// Counters, flags and the invalidation bus (memory or Redis).
    pub shared: Arc<Shared>,
    /// Admission counters.
    pub wallet: Arc<Wallet>,
    /// The batched writer of generations and charges.
    pub writer: LedgerWriter,
    /// Settlement tasks, waited for at shutdown.
    pub tasks: TaskTracker,
    /// Keys, users, channels, prices and routes, as of the last reload.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// The pooled upstream client.
    pub client: UpstreamClient,
    /// Decrypts channel keys when the catalog loads.
    pub secrets: SecretBox,
    /// The settings this process started with.
    pub config: Config,
    /// This instance's id on the invalidation bus.
    pub instance: String,
    /// Catalog reload + broadcast.
    pub reloader: Reloader,
    /// Per-channel circuit breakers (this process).
    pub breakers: Arc<relay_core::health::Breakers>,
    /// Persists disabled keys and channels.
    pub health: crate::channel_health::Health,
    /// Whether the database and Redis answer (probed every second).
    pub availability: Arc<store::Availability>,
    /// What `GET /metrics` shows.
    pub metrics: Arc<relay_core::metrics::Metrics>,
    /// The relay's request pipeline (sharing the parts above).
    pub pipeline: relay_core::pipeline::Pipeline,
    /// Asynchronous tasks (videos): submission, polling, content.
    pub jobs: Arc<relay_core::task::TaskEngine>,
}

/// Loads the catalog and swaps it in; tells other instances when asked to.
#[derive(Clone)]
pub struct Reloader {
    pub db: DatabaseConnection,
    pub secrets: SecretBox,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub shared: Arc<Shared>,
    pub instance: String,
    /// The environment's tunables, for settings nobody stored.
    pub defaults: store::settings::Tunables,
    /// Takes the breaker thresholds of every reload.
    pub breakers: Arc<relay_core::health::Breakers>,
    /// The last version handed to a load; shared by every clone.
    pub versions: Arc<AtomicU64>,
}

/// Installs `fresh` unless the snapshot in place is as fresh or fresher; true when it
/// went in. Concurrent loads finish in any order: a load that began before a change may
/// end after the load that saw it, and must then be dropped, never swapped in.
pub fn install_if_newer(slot: &ArcSwap<Snapshot>, fresh: Arc<Snapshot>) -> bool {
    let mut current = slot.load_full();
    loop {
        if current.version >= fresh.version {
            return false;
        }
        let seen = slot.compare_and_swap(&current, Arc::clone(&fresh));
        if Arc::ptr_eq(&seen, &current) {
            return true;
        }
        current = arc_swap::Guard::into_inner(seen);
    }
}

impl Reloader {
    /// Reloads this instance's snapshot from the database. The version is taken before
    /// the first read, so the result is installed only if no load that began later has
    /// been installed already.
    pub async fn reload_local(&self) -> Result<(), store::StoreError> {
        let version = self.versions.fetch_add(1, Ordering::SeqCst) + 1;
        let catalog = Catalog::load(&self.db, &self.secrets).await?;
        let router = Router::build(&catalog);
        // The admin's tunables travel with the catalog: a change applies on every
        // instance at its next reload.
        let t = store::settings::effective(&self.db, self.defaults)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = ?e, "cannot read the settings; keeping the defaults");
                self.defaults
            });
        let max_tries = usize::try_from(t.max_tries).unwrap_or(1);
        let fresh = Arc::new(Snapshot {
            version,
            catalog,
            router,
            max_tries,
        });
        if !install_if_newer(&self.snapshot, fresh) {
            tracing::debug!(
                version,
                "a newer catalog snapshot is in place; this one is dropped"
            );
            return Ok(());
        }
        self.breakers.set_config(t.into());
        Ok(())
    }

    /// Reloads until a load succeeds, waiting longer after each failure (up to
    /// [`RETRY_MAX`]): a change that was announced must not be missed because the
    /// database blinked, or a disabled key would go on serving here.
    pub async fn reload_until_done(&self) {
        let tries = until_ok(|| self.reload_local(), RETRY_FIRST, RETRY_MAX).await;
        if tries > 1 {
            tracing::info!(tries, "catalog reloaded after failed tries");
        }
    }

    /// Reloads here and publishes the change for every other instance. A failed local
    /// reload goes on in the background until it succeeds.
    pub async fn reload_everywhere(&self) {
        if let Err(e) = self.reload_local().await {
            tracing::error!(error = ?e, "catalog reload failed; retrying in the background");
            let me = self.clone();
            tokio::spawn(async move { me.reload_until_done().await });
        }
        if let Err(e) = self
            .shared
            .publish(&format!("catalog:{}", self.instance))
            .await
        {
            tracing::error!(error = ?e, "could not publish the catalog change");
        }
    }

    /// Follows the bus: reloads when another instance changed something, and every
    /// [`SAFETY_NET`] whatever the bus said (a message lost with a dead connection is
    /// healed within that). Only with Redis: a single instance has no one to hear from.
    pub fn follow(&self) {
        if self.shared.redis_pool().is_none() {
            return;
        }
        let rx = self.shared.subscribe();
        let me = self.clone();
        tokio::spawn(async move { me.follow_bus(rx, SAFETY_NET).await });
    }

    /// The loop behind [`Reloader::follow`]: each wake-up (a message from another
    /// instance, or the periodic tick) leads to one reload, retried until it succeeds.
    async fn follow_bus(&self, mut rx: mpsc::Receiver<String>, every: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let own = format!(":{}", self.instance);
        let mut bus_open = true;
        loop {
            let cause = tokio::select! {
                topic = rx.recv(), if bus_open => match topic {
                    Some(topic) if topic.ends_with(&own) => continue,
                    Some(topic) => topic,
                    None => {
                        tracing::error!("the invalidation bus ended; reloading on the timer only");
                        bus_open = false;
                        continue;
                    }
                },
                _ = tick.tick() => "periodic".to_owned(),
            };
            // Messages already queued are covered by the load that begins after them.
            while rx.try_recv().is_ok() {}
            self.reload_until_done().await;
            tracing::debug!(cause = %cause, "catalog reloaded");
        }
    }
}

/// The first wait after a failed reload; it doubles after each further failure.
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between two tries of a reload.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// With Redis, how often every instance reloads whatever the bus said.
pub const SAFETY_NET: Duration = Duration::from_secs(15);

/// Runs `attempt` until it succeeds, waiting `first` after the first failure and twice
/// as long after each next one, at most `max`; returns how many tries it took.
pub async fn until_ok<F, Fut, E>(mut attempt: F, first: Duration, max: Duration) -> u32
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Debug,
{
    let mut wait = first;
    let mut tries = 0u32;
    loop {
        tries = tries.saturating_add(1);
        match attempt().await {
            Ok(()) => return tries,
            Err(e) => {
                tracing::error!(error = ?e, tries, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "catalog reload failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(max);
            }
        }
    }
}

impl admin_web::Reload for Reloader {
    fn reload(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.reload_everywhere())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            version,
            ..Snapshot::default()
        })
    }

    #[test]
    fn a_snapshot_goes_in_only_when_it_is_newer_than_the_one_in_place() {
        let slot = ArcSwap::from(snapshot(0));
        assert!(install_if_newer(&slot, snapshot(2)));
        assert_eq!(slot.load().version, 2);
        // A load that began earlier but finished later is dropped.
        assert!(!install_if_newer(&slot, snapshot(1)));
        assert_eq!(slot.load().version, 2);
        // So is one of the same version.
        assert!(!install_if_newer(&slot, snapshot(2)));
        assert!(install_if_newer(&slot, snapshot(3)));
        assert_eq!(slot.load().version, 3);
    }

    #[tokio::test]
    async fn a_failing_attempt_is_retried_with_growing_waits_until_it_succeeds() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let started = std::time::Instant::now();
        let tries = until_ok(
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 4 {
                    Err("database unavailable")
                } else {
                    Ok(())
                }
            },
            Duration::from_millis(10),
            Duration::from_millis(25),
        )
        .await;
        assert_eq!((tries, calls.load(Ordering::SeqCst)), (4, 4));
        // Waits of 10, 20 and 25 (capped) ms.
        assert!(
            started.elapsed() >= Duration::from_millis(55),
            "{:?}",
            started.elapsed()
        );
    }

    /// A reloader on a fresh SQLite database of its own.
    async fn sqlite_reloader() -> Reloader {
        let dir = std::env::temp_dir().join("tollgate-state-tests");
        let file = dir.join(format!("{}.db", uuid::Uuid::now_v7().simple()));
        let db = store::db::connect(&format!("sqlite://{}?mode=rwc", file.display()))
            .await
            .unwrap();
        let secrets = SecretBox::from_text(&SecretBox::generate_text()).unwrap();
        Reloader {
            db,
            secrets,
            snapshot: Arc::new(ArcSwap::from(snapshot(0))),
            shared: Arc::new(Shared::memory()),
            instance: "test".into(),
            defaults: store::settings::Tunables::DEFAULT,
            breakers: Arc::new(relay_core::health::Breakers::default()),
            versions: Arc::new(AtomicU64::new(0)),
        }
    }

    async fn sql(db: &DatabaseConnection, statement: &str) {
        use sea_orm::ConnectionTrait;
        db.execute_unprepared(statement).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_that_fails_while_the_database_is_away_is_retried_until_it_succeeds() {
        let reloader = sqlite_reloader().await;
        // The database loses the channels table for a while: every load fails.
        sql(&reloader.db, "ALTER TABLE channels RENAME TO channels_away").await;
        assert!(reloader.reload_local().await.is_err());
        let retrying = tokio::spawn({
            let reloader = reloader.clone();
            async move { reloader.reload_until_done().await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!retrying.is_finished(), "no load can succeed yet");
        assert_eq!(reloader.snapshot.load().version, 0);
        // It comes back: the pending reload goes through by itself.
        sql(&reloader.db, "ALTER TABLE channels_away RENAME TO channels").await;
        tokio::time::timeout(Duration::from_secs(10), retrying)
            .await
            .expect("the reload is retried until it succeeds")
            .unwrap();
        assert!(reloader.snapshot.load().version > 0);
    }

    #[test]
    fn racing_installs_leave_the_newest_snapshot_in_place() {
        let slot = Arc::new(ArcSwap::from(snapshot(0)));
        // Started newest first, so older ones keep arriving after newer ones.
        let threads: Vec<_> = (1..=64u64)
            .rev()
            .map(|v| {
                let slot = Arc::clone(&slot);
                std::thread::spawn(move || install_if_newer(&slot, snapshot(v)))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(slot.load().version, 64);
    }
}
