//! Channel health done by the binary: the admin's test button, and the job that
//! re-tests auto-disabled channels and brings back those that pass — never a channel an
//! admin disabled by hand. What a failed request reports (suspect keys, channel
//! errors) is `relay_core::persisted_health`.

use std::sync::Arc;

use actix_web::web;
use admin_web::ApiError;
use relay_core::probe::probe;
use relay_core::upstream::UpstreamClient;
use sea_orm::DatabaseConnection;
use store::secret::SecretBox;

use crate::state::{AppState, Reloader};

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
pub type Health = Arc<relay_core::persisted_health::PersistedHealth>;

impl relay_core::persisted_health::Reload for Reloader {
    fn reload_everywhere(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(Reloader::reload_everywhere(self))
    }
}
