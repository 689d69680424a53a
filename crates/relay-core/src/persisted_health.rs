//! Channel health that outlives a request: a suspect key is tested with one small
//! request and disabled only when that fails too, and a channel's errors are recorded
//! (at most once a second); both persisted, then every instance reloads.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;

use crate::health::{Breakers, HealthSink, SuspectKey};
use crate::probe::confirm_dead;
use crate::upstream::UpstreamClient;

/// Has every instance reload its catalog after a change to channels (the binary owns
/// the snapshot and the bus).
pub trait Reload: Send + Sync {
    fn reload_everywhere(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Persists health changes and has every instance reload.
pub struct PersistedHealth {
    pub db: DatabaseConnection,
    /// Has every instance reload its catalog.
    pub reloader: Arc<dyn Reload>,
    /// Sends the test request that confirms a suspect key.
    client: UpstreamClient,
    /// Keeps a confirmed dead key out of this process at once.
    breakers: Arc<Breakers>,
    /// When each channel's `last_error` was last written (at most once a second).
    last_written: Mutex<HashMap<i64, Instant>>,
    /// When each suspect key was last tested (at most once per [`CONFIRM_EVERY`]).
    last_confirmed: Mutex<HashMap<i64, Instant>>,
}

/// How often one key may be tested on suspicion: a customer who can make an upstream
/// answer `permission_error` at will costs the channel at most one small request per key
/// in this time.
const CONFIRM_EVERY: Duration = Duration::from_secs(10);

impl PersistedHealth {
    /// The sink the relay reports to; `client` sends the confirming test requests and
    /// `breakers` keeps a confirmed dead key out of this process at once.
    pub fn new(
        db: DatabaseConnection,
        reloader: Arc<dyn Reload>,
        client: UpstreamClient,
        breakers: Arc<Breakers>,
    ) -> Self {
        PersistedHealth {
            db,
            reloader,
            client,
            breakers,
            last_written: Mutex::new(HashMap::new()),
            last_confirmed: Mutex::new(HashMap::new()),
        }
    }

    /// Claims the right to test `key_id` now; false when it was tested too recently.
    fn claim_confirmation(&self, key_id: i64) -> bool {
        let mut last = self
            .last_confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        last.retain(|_, at| now.duration_since(*at) < CONFIRM_EVERY);
        if last.contains_key(&key_id) {
            return false;
        }
        last.insert(key_id, now);
        true
    }
}

/// Marks a key auto-disabled (and its channel, when no key is left), then reloads
/// everywhere.
async fn disable_key(
    db: &DatabaseConnection,
    reloader: &dyn Reload,
    channel_id: i64,
    key_id: i64,
    reason: String,
) -> Result<(), sea_orm::DbErr> {
    if store::channel_health::auto_disable_key(db, channel_id, key_id, &reason).await? {
        reloader.reload_everywhere().await;
    }
    Ok(())
}

impl HealthSink for PersistedHealth {
    fn key_suspected(&self, suspect: SuspectKey) {
        if !self.claim_confirmation(suspect.key.id) {
            return;
        }
        let db = self.db.clone();
        let reloader = Arc::clone(&self.reloader);
        let client = self.client.clone();
        let breakers = Arc::clone(&self.breakers);
        tokio::spawn(async move {
            let SuspectKey {
                channel,
                key,
                reason,
            } = suspect;
            let key_id = key.id;
            if confirm_dead(&client, &channel, &key).await.is_none() {
                tracing::info!(
                    channel.id = channel.id,
                    channel_key.id = key_id,
                    suspicion = %reason,
                    "suspect channel key passed its test request; kept"
                );
                return;
            }
            breakers.kill_key(key_id);
            let reason = format!("{reason} (confirmed by a test request)");
            if let Err(e) = disable_key(&db, reloader.as_ref(), channel.id, key_id, reason).await {
                tracing::error!(error = ?e, "could not record a disabled channel key");
            }
        });
    }

    fn channel_failed(&self, channel_id: i64, error: String) {
        {
            let mut last = self.last_written.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if last
                .get(&channel_id)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
            {
                return;
            }
            last.insert(channel_id, now);
        }
        let db = self.db.clone();
        tokio::spawn(async move {
            if let Err(e) = store::channel_health::record_error(&db, channel_id, error).await {
                tracing::error!(error = ?e, "could not record a channel error");
            }
        });
    }
}
