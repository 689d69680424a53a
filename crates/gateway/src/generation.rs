//! `GET /v1/generation?id=` and `GET /api/v1/generation?id=`: a customer looks up one
//! of its generations by our id or the upstream's, in OpenRouter's shape.

use actix_web::{HttpRequest, HttpResponse, web};
use admin_web::logs::generation_json;
use relay_core::RelayError;
use relay_core::admission;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};
use serde::Deserialize;
use store::entities::generation;

use crate::relay::{bearer, openai_error};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct Lookup {
    #[serde(default)]
    id: Option<String>,
}

/// Mounts both lookup paths.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/generation", web::get().to(lookup))
        .route("/api/v1/generation", web::get().to(lookup));
}

async fn lookup(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<Lookup>,
) -> HttpResponse {
    let tag = String::new();
    let snap = state.snapshot.load();
    let caller = match admission::authenticate(&snap.catalog, bearer(&req)) {
        Ok(c) => c,
        Err(e) => return openai_error(&e, &tag),
    };
    let Some(id) = query.id.as_deref().filter(|i| !i.is_empty()) else {
        return openai_error(&RelayError::InvalidRequest("'id' is required".into()), &tag);
    };
    let found = generation::Entity::find()
        .filter(
            Condition::any()
                .add(generation::Column::Id.eq(id))
                .add(generation::Column::UpstreamId.eq(id)),
        )
        .filter(generation::Column::UserId.eq(caller.user.id))
        .one(&state.db)
        .await;
    match found {
        Ok(Some(g)) => HttpResponse::Ok().json(serde_json::json!({"data": generation_json(&g)})),
        Ok(None) => HttpResponse::NotFound().json(serde_json::json!({
            "error": {"message": "generation not found", "type": "not_found_error", "code": "not_found", "param": "id"}
        })),
        Err(e) => {
            tracing::error!(error = ?e, "generation lookup failed");
            openai_error(&RelayError::Internal, &tag)
        }
    }
}
