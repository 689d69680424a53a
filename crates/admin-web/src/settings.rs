//! Runtime tunables an admin changes from the console or `PUT /api/settings`: retries
//! per request, circuit-breaker thresholds and the health-check interval. Stored in
//! the `settings` table (one row per name); a stored value wins over the environment.

use actix_web::{HttpResponse, web};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
};
use serde::{Deserialize, Serialize};
use store::entities::setting;

use crate::auth::AuthUser;
use crate::{AdminState, ApiError};

/// The tunables, each with its unit in its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunables {
    /// Channels tried per request before the client gets an error.
    pub max_tries: u32,
    /// Failures within the window that open a channel's breaker.
    pub breaker_failures: u32,
    pub breaker_window_s: u64,
    /// How long an open breaker keeps a channel out.
    pub breaker_cooldown_s: u64,
    /// How often auto-disabled channels are re-tested.
    pub health_interval_s: u64,
}

/// Each tunable: its stored name and the range it must be in.
const RULES: [(&str, u64, u64); 5] = [
    ("max_tries", 1, 10),
    ("breaker_failures", 1, 1000),
    ("breaker_window_s", 1, 86_400),
    ("breaker_cooldown_s", 1, 86_400),
    ("health_interval_s", 1, 86_400),
];

impl Tunables {
    fn values(&self) -> [u64; 5] {
        [
            u64::from(self.max_tries),
            u64::from(self.breaker_failures),
            self.breaker_window_s,
            self.breaker_cooldown_s,
            self.health_interval_s,
        ]
    }

    fn from_values(v: [u64; 5]) -> Self {
        Tunables {
            max_tries: u32::try_from(v[0]).unwrap_or(u32::MAX),
            breaker_failures: u32::try_from(v[1]).unwrap_or(u32::MAX),
            breaker_window_s: v[2],
            breaker_cooldown_s: v[3],
            health_interval_s: v[4],
        }
    }
}

/// The tunables in force: the stored ones, else `defaults` (the environment's).
pub async fn effective<C: ConnectionTrait>(
    db: &C,
    defaults: Tunables,
) -> Result<Tunables, ApiError> {
    let names: Vec<&str> = RULES.iter().map(|r| r.0).collect();
    let rows = setting::Entity::find()
        .filter(setting::Column::Name.is_in(names))
        .all(db)
        .await?;
    let mut values = defaults.values();
    for (i, (name, lo, hi)) in RULES.iter().enumerate() {
        if let Some(v) = rows
            .iter()
            .find(|r| r.name == *name)
            .and_then(|r| r.value.trim().parse::<u64>().ok())
            .filter(|v| (*lo..=*hi).contains(v))
        {
            values[i] = v;
        }
    }
    Ok(Tunables::from_values(values))
}

/// The tunables in force for this process's admin state.
pub async fn current(state: &AdminState) -> Result<Tunables, ApiError> {
    effective(&state.db, state.tunables).await
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
    for ((name, lo, hi), value) in RULES.iter().zip(given) {
        let Some(v) = value else { continue };
        let v = u64::try_from(v)
            .ok()
            .filter(|v| (*lo..=*hi).contains(v))
            .ok_or_else(|| {
                ApiError::invalid(
                    name,
                    format!("{name} must be a whole number from {lo} to {hi}"),
                )
            })?;
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
