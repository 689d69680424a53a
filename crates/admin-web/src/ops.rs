//! Operations: `POST /api/cache/refresh` reloads the catalog here and on every other
//! instance (through the invalidation bus), for edits made directly in the database.

use actix_web::{HttpResponse, web};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde::Serialize;
use store::entities::{api_key, channel, model_price, user};

use crate::auth::AuthUser;
use crate::{AdminState, ApiError};

/// What the catalog holds after a refresh.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CacheCounts {
    /// Enabled channels.
    pub channels: u64,
    /// Keys that are not deleted.
    pub keys: u64,
    pub users: u64,
    pub models_priced: u64,
}

/// Reloads channels, keys, users and prices on every instance (admin only).
pub async fn refresh_cache(state: &AdminState, who: &AuthUser) -> Result<CacheCounts, ApiError> {
    who.require_admin()?;
    state.reload().await;
    let counts = CacheCounts {
        channels: channel::Entity::find()
            .filter(channel::Column::Status.eq("enabled"))
            .count(&state.db)
            .await?,
        keys: api_key::Entity::find()
            .filter(api_key::Column::Status.ne("deleted"))
            .count(&state.db)
            .await?,
        users: user::Entity::find().count(&state.db).await?,
        models_priced: model_price::Entity::find().count(&state.db).await?,
    };
    tracing::info!(user.id = who.id, ?counts, "cache refreshed everywhere");
    Ok(counts)
}

/// `POST /api/cache/refresh` (admin)
pub async fn refresh(
    state: web::Data<AdminState>,
    who: AuthUser,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(refresh_cache(&state, &who).await?))
}
