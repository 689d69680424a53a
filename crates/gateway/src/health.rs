//! Liveness and readiness.

use actix_web::{HttpResponse, web};

use crate::state::AppState;

/// `GET /healthz`: the process runs.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// `GET /readyz`: the database (and Redis, when configured) answer.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let db = store::db::ping(&state.db).await;
    let redis = match state.shared.redis_pool() {
        None => None,
        Some(_) => Some(state.shared.ping().await.is_ok()),
    };
    let ok = db && redis.unwrap_or(true);
    let body = serde_json::json!({
        "database": if db { "ok" } else { "down" },
        "redis": match redis { None => "not configured", Some(true) => "ok", Some(false) => "down" },
    });
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
