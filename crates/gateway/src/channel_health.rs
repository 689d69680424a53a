//! Channel health that outlives a request: suspect keys tested with one small request
//! and disabled only when that fails too (persisted, then every instance reloads), the
//! admin's test button, and the job that re-tests auto-disabled channels and brings
//! back those that pass — never a channel an admin disabled by hand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web;
use admin_web::ApiError;
use relay_core::health::{Breakers, HealthSink, SuspectKey};
use relay_core::probe::{confirm_dead, probe};
use relay_core::upstream::UpstreamClient;
use sea_orm::DatabaseConnection;
use store::secret::SecretBox;

use crate::state::{AppState, Reloader};

/// Persists health changes and has every instance reload.
pub struct GatewayHealth {
    pub db: DatabaseConnection,
    pub reloader: Reloader,
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

impl GatewayHealth {
    /// The sink the relay reports to; `client` sends the confirming test requests and
    /// `breakers` keeps a confirmed dead key out of this process at once.
    pub fn new(
        db: DatabaseConnection,
        reloader: Reloader,
        client: UpstreamClient,
        breakers: Arc<Breakers>,
    ) -> Self {
        GatewayHealth {
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
    reloader: &Reloader,
    channel_id: i64,
    key_id: i64,
    reason: String,
) -> Result<(), sea_orm::DbErr> {
    if store::channel_health::auto_disable_key(db, channel_id, key_id, &reason).await? {
        reloader.reload_everywhere().await;
    }
    Ok(())
}

impl HealthSink for GatewayHealth {
    fn key_suspected(&self, suspect: SuspectKey) {
        if !self.claim_confirmation(suspect.key.id) {
            return;
        }
        let db = self.db.clone();
        let reloader = self.reloader.clone();
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
            if let Err(e) = disable_key(&db, &reloader, channel.id, key_id, reason).await {
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

/// Tests a channel with one small real request (the first key, `model` or the
/// channel's first model) and records the latency or the error on the channel. The
/// JSON API and the console's test button both end here.
pub async fn run_test(
    state: &AppState,
    id: i64,
    model: Option<String>,
) -> Result<admin_web::ChannelTest, ApiError> {
    let (_, entry, _) = store::channel_health::load_channel(&state.db, &state.secrets, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let model = model
        .or_else(|| entry.models.first().cloned())
        .ok_or_else(|| ApiError::BadRequest("the channel serves no model".into()))?;
    let upstream_model = entry.upstream_model(&model);
    let result = match entry.keys.first() {
        Some(key) => probe(&state.client, &entry, key, &upstream_model).await,
        None => Err("the channel has no key".to_owned()),
    };
    store::channel_health::record_test(&state.db, id, &result).await?;
    state.reloader.reload_everywhere().await;
    Ok(match result {
        Ok(ms) => admin_web::ChannelTest {
            ok: true,
            latency_ms: Some(ms),
            model,
            error: None,
        },
        Err(e) => admin_web::ChannelTest {
            ok: false,
            latency_ms: None,
            model,
            error: Some(e),
        },
    })
}

/// The console's and the API's channel test, done by the gateway.
pub struct GatewayTester(pub web::Data<AppState>);

impl admin_web::ChannelTester for GatewayTester {
    fn test(
        &self,
        channel_id: i64,
        model: Option<String>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<admin_web::ChannelTest, ApiError>> + Send + '_>,
    > {
        Box::pin(run_test(&self.0, channel_id, model))
    }
}

/// Re-tests every auto-disabled channel once; re-enables those whose test passes,
/// with the keys that passed. Channels disabled by an admin are never touched.
pub async fn retest_auto_disabled(
    db: &DatabaseConnection,
    secrets: &SecretBox,
    client: &UpstreamClient,
    reloader: &Reloader,
) {
    let Ok(channels) = store::channel_health::auto_disabled_channels(db).await else {
        return;
    };
    let mut changed = false;
    for ch in channels {
        let Ok(Some((_, entry, keys))) =
            store::channel_health::load_channel(db, secrets, ch.id).await
        else {
            continue;
        };
        let Some(model) = entry.models.first().cloned() else {
            continue;
        };
        let upstream_model = entry.upstream_model(&model);
        let mut passed = Vec::new();
        let mut last = Err(String::from("no key"));
        for key in &entry.keys {
            last = probe(client, &entry, key, &upstream_model).await;
            if last.is_ok() {
                passed.push(key.id);
            }
        }
        let _ = store::channel_health::record_test(
            db,
            ch.id,
            &last
                .clone()
                .or_else(|e| if passed.is_empty() { Err(e) } else { Ok(0) }),
        )
        .await;
        if passed.is_empty() {
            tracing::info!(
                channel.id = ch.id,
                "auto-disabled channel still failing its test"
            );
            continue;
        }
        let _ = keys;
        let ok = store::channel_health::re_enable(db, ch.id, passed)
            .await
            .is_ok();
        if ok {
            tracing::info!(
                channel.id = ch.id,
                "auto-disabled channel passed its test; re-enabled"
            );
            changed = true;
        }
    }
    if changed {
        reloader.reload_everywhere().await;
    }
}

/// Shared by the relay handlers.
pub type Health = Arc<GatewayHealth>;
