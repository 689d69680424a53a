//! The health job, on the tunables of `store::settings`: retries and breaker
//! thresholds come with every catalog reload (`state::Reloader`), and the health job
//! reads its interval afresh every round, so an admin's change applies on every
//! instance without a restart.

use std::time::Duration;

use actix_web::web;
use store::settings::{self, Tunables};

use crate::state::AppState;

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

/// Deletes generation records older than `days`, `every` apart (hourly; the first
/// sweep a minute after start), a thousand at a time; the ledger is never touched.
pub fn spawn_retention_job(state: web::Data<AppState>, days: u32, every: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(every.min(Duration::from_secs(60))).await;
        loop {
            let before = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
            match store::retention::sweep(&state.db, before, 1000, Duration::from_millis(200)).await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, days, "old generation records deleted"),
                Err(e) => tracing::warn!(error = %e, "deleting old generation records failed"),
            }
            tokio::time::sleep(every).await;
        }
    });
}
