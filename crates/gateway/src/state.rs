//! The process's one `AppState`, built once outside the server factory, and the
//! reloader that keeps its catalog snapshot fresh (never swapping in an older one).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use billing::{LedgerWriter, Wallet};
use relay_core::Router;
use relay_core::meter::Settler;
use relay_core::upstream::UpstreamClient;
use sea_orm::DatabaseConnection;
use store::secret::SecretBox;
use store::{Catalog, Shared};
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
}

impl AppState {
    /// Whether relay requests may be admitted: the database and Redis answer and the
    /// ledger writer's backlog has room.
    pub fn serving(&self) -> bool {
        self.availability.serving() && !self.writer.refuses()
    }

    /// What meters need to settle.
    pub fn settler(&self) -> Settler {
        Settler {
            wallet: Arc::clone(&self.wallet),
            writer: self.writer.clone(),
            tasks: self.tasks.clone(),
        }
    }
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
    pub defaults: admin_web::settings::Tunables,
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
        let t = admin_web::settings::effective(&self.db, self.defaults)
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
        self.breakers.set_config(relay_core::health::BreakerConfig {
            failures: t.breaker_failures,
            window: std::time::Duration::from_secs(t.breaker_window_s),
            cooldown: std::time::Duration::from_secs(t.breaker_cooldown_s),
        });
        Ok(())
    }

    /// Reloads here and publishes the change for every other instance.
    pub async fn reload_everywhere(&self) {
        if let Err(e) = self.reload_local().await {
            tracing::error!(error = ?e, "catalog reload failed");
        }
        if let Err(e) = self
            .shared
            .publish(&format!("catalog:{}", self.instance))
            .await
        {
            tracing::error!(error = ?e, "could not publish the catalog change");
        }
    }

    /// Follows the bus: reloads when another instance changed something.
    pub fn follow(&self) {
        if self.shared.redis_pool().is_none() {
            return;
        }
        let mut rx = self.shared.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(topic) = rx.recv().await {
                if topic.ends_with(&format!(":{}", me.instance)) {
                    continue;
                }
                if let Err(e) = me.reload_local().await {
                    tracing::error!(error = ?e, "catalog reload after a bus message failed");
                } else {
                    tracing::debug!(topic = %topic, "catalog reloaded from the bus");
                }
            }
        });
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
