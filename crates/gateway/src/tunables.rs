//! The admin's tunables (`admin_web::settings`) applied to the gateway: stored values
//! override the environment at start; afterwards retries and breaker thresholds come
//! with every catalog reload (`state::Reloader`), and the health job reads its interval
//! afresh every round, so a change applies on every instance without a restart.

use std::time::Duration;

use actix_web::web;
use admin_web::settings::{self, Tunables};
use sea_orm::DatabaseConnection;

use crate::Config;
use crate::state::AppState;

/// The tunables as the environment set them.
pub fn from_config(config: &Config) -> Tunables {
    Tunables {
        max_tries: u32::try_from(config.max_tries).unwrap_or(u32::MAX),
        breaker_failures: config.breaker.failures,
        breaker_window_s: config.breaker.window.as_secs(),
        breaker_cooldown_s: config.breaker.cooldown.as_secs(),
        health_interval_s: config.health_interval_s,
    }
}

/// Overrides `config` with the stored tunables.
pub async fn apply_stored(db: &DatabaseConnection, config: &mut Config) -> anyhow::Result<()> {
    let t = settings::effective(db, from_config(config))
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the stored settings: {e:?}"))?;
    config.max_tries = usize::try_from(t.max_tries).unwrap_or(3);
    config.breaker.failures = t.breaker_failures;
    config.breaker.window = Duration::from_secs(t.breaker_window_s);
    config.breaker.cooldown = Duration::from_secs(t.breaker_cooldown_s);
    config.health_interval_s = t.health_interval_s;
    Ok(())
}

/// Re-tests auto-disabled channels every `health_interval_s`, read from the settings
/// before each wait (`defaults` when nothing is stored or the read fails).
pub fn spawn_health_job(state: web::Data<AppState>, defaults: Tunables) {
    tokio::spawn(async move {
        loop {
            let interval = settings::effective(&state.db, defaults)
                .await
                .map_or(defaults.health_interval_s, |t| t.health_interval_s);
            tokio::time::sleep(Duration::from_secs(interval.max(1))).await;
            crate::channel_health::retest_auto_disabled(
                &state.db,
                &state.secrets,
                &state.client,
                &state.reloader,
            )
            .await;
        }
    });
}
