//! Runtime tunables an admin changes from the console or `PUT /api/settings`: retries
//! per request, circuit-breaker thresholds and the health-check interval. What they
//! are, their ranges and defaults, and how they resolve: `store::settings`.

use actix_web::{HttpResponse, web};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde::Deserialize;
use store::entities::setting;
pub use store::settings::{RULES, Tunables};

use crate::auth::AuthUser;
use crate::{AdminState, ApiError};

/// The tunables in force for this process's admin state.
pub async fn current(state: &AdminState) -> Result<Tunables, ApiError> {
    Ok(store::settings::effective(&state.db, state.tunables).await?)
}

/// New values; absent ones keep theirs.
#[derive(Debug, Default, Deserialize)]
pub struct TunablesPatch {
    pub max_tries: Option<i64>,
    pub breaker_failures: Option<i64>,
    pub breaker_window_s: Option<i64>,
    pub breaker_cooldown_s: Option<i64>,
    pub health_interval_s: Option<i64>,
}

/// Validates and stores new tunables (admin only), then tells every instance.
pub async fn save(
    state: &AdminState,
    who: &AuthUser,
    patch: &TunablesPatch,
) -> Result<Tunables, ApiError> {
    who.require_admin()?;
    let given = [
        patch.max_tries,
        patch.breaker_failures,
        patch.breaker_window_s,
        patch.breaker_cooldown_s,
        patch.health_interval_s,
    ];
    let mut checked = Vec::new();
    for ((name, ..), value) in RULES.iter().zip(given) {
        if value.is_none() {
            continue;
        }
        let v = store::settings::check(name, value)
            .map_err(|message| ApiError::invalid(name, message))?;
        checked.push((*name, v));
    }
    for (name, v) in checked {
        let existing = setting::Entity::find_by_id(name.to_owned())
            .one(&state.db)
            .await?;
        match existing {
            Some(row) => {
                let mut active: setting::ActiveModel = row.into();
                active.value = Set(v.to_string());
                active.update(&state.db).await?;
            }
            None => {
                setting::ActiveModel {
                    name: Set(name.to_owned()),
                    value: Set(v.to_string()),
                }
                .insert(&state.db)
                .await?;
            }
        }
    }
    state.reload().await;
    let now = current(state).await?;
    tracing::info!(user.id = who.id, tunables = ?now, "settings saved");
    Ok(now)
}

/// `GET /api/settings` (admin)
pub async fn get(state: web::Data<AdminState>, who: AuthUser) -> Result<HttpResponse, ApiError> {
    who.require_admin()?;
    Ok(HttpResponse::Ok().json(current(&state).await?))
}

/// `PUT /api/settings` (admin): any of the tunables.
pub async fn put(
    state: web::Data<AdminState>,
    who: AuthUser,
    body: web::Json<TunablesPatch>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(save(&state, &who, &body).await?))
}
