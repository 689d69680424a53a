//! Liveness, readiness, and the availability of what the relay depends on: the
//! database and Redis are probed every second, and while either is unreachable relay
//! requests are refused with `503 service_unavailable` before anything is held.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use sea_orm::DatabaseConnection;
use store::{Availability, Shared};

use crate::state::AppState;

/// How long a probe waits for an answer before it calls the service unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes the database (and Redis, when configured) once.
async fn probe(db: &DatabaseConnection, shared: &Shared) -> (bool, bool) {
    let db_ok = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, db.ping()).await,
        Ok(Ok(()))
    );
    let redis_ok = match shared.redis_pool() {
        None => true,
        Some(_) => matches!(
            tokio::time::timeout(PROBE_TIMEOUT, shared.ping()).await,
            Ok(Ok(()))
        ),
    };
    (db_ok, redis_ok)
}

/// Probes every second, logging each change.
pub fn spawn_probe(db: DatabaseConnection, shared: Arc<Shared>, availability: Arc<Availability>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let (db_ok, redis_ok) = probe(&db, &shared).await;
            if availability.set_database(db_ok) {
                if db_ok {
                    tracing::info!("database reachable again");
                } else {
                    tracing::error!("database unreachable; refusing relay requests");
                }
            }
            if availability.set_redis(redis_ok) {
                if redis_ok {
                    tracing::info!("redis reachable again");
                } else {
                    tracing::error!("redis unreachable; refusing relay requests");
                }
            }
        }
    });
}

/// `GET /healthz`: the process runs.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// `GET /readyz`: the database (and Redis, when configured) answer now, and the ledger
/// writer is keeping up.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (db, redis) = probe(&state.db, &state.shared).await;
    let configured = state.shared.redis_pool().is_some();
    let writer = !state.writer.refuses();
    let body = serde_json::json!({
        "database": if db { "ok" } else { "down" },
        "redis": match (configured, redis) { (false, _) => "not configured", (true, true) => "ok", (true, false) => "down" },
        "ledger_backlog": state.writer.backlog(),
    });
    if db && redis && writer {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, "2"))
            .json(body)
    }
}

/// `GET /metrics`: the Prometheus (OpenMetrics) text exposition.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let snap = state.snapshot.load();
    let channels: Vec<(i64, bool)> = snap
        .catalog
        .channels
        .iter()
        .map(|c| {
            let open = state.breakers.gate(c.id) != relay_core::health::Gate::Open;
            (c.id, open)
        })
        .collect();
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render(state.writer.backlog(), &channels))
}
