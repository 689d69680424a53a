//! Usage over time for the dashboard and `GET /api/stats`: requests, errors and spend
//! per UTC day, and the most used models, within the caller's scope.

use actix_web::{HttpResponse, web};
use chrono::{Duration, NaiveDate, Utc};
use sea_orm::sea_query::{Alias, Expr};
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};
use store::entities::generation;

use crate::auth::AuthUser;
use crate::users::scope_condition;
use crate::util::credits;
use crate::{AdminState, ApiError};

/// One UTC day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DayStats {
    pub day: NaiveDate,
    pub requests: i64,
    pub errors: i64,
    /// Micro-credits.
    pub spend: i64,
}

/// One model's share.
#[derive(Clone, Debug, Serialize)]
pub struct ModelStats {
    pub model: String,
    pub requests: i64,
    /// Micro-credits.
    pub spend: i64,
}

/// The dashboard's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    /// Every day of the window, oldest first (days without traffic are zeros).
    pub days: Vec<DayStats>,
    /// At most five, most requested first.
    pub top_models: Vec<ModelStats>,
}

/// The first ten characters of `created_at` as stored are its UTC date on SQLite (text);
/// Postgres formats its timestamp.
fn day_sql(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        _ => "substr(created_at, 1, 10)",
    }
}

/// Usage over the last `days` UTC days (1 to 90), today included.
pub async fn usage(state: &AdminState, who: &AuthUser, days: u32) -> Result<Usage, ApiError> {
    let days = days.clamp(1, 90);
    let today = Utc::now().date_naive();
    let first = today - Duration::days(i64::from(days) - 1);
    let since = first.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let day = day_sql(state.db.get_database_backend());
    let rows: Vec<(String, i64, i64, i64)> = generation::Entity::find()
        .select_only()
        .column_as(Expr::cust(day), "day")
        .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "requests")
        .column_as(
            Expr::cust("CAST(SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS BIGINT)"),
            "errors",
        )
        .column_as(Expr::cust("CAST(SUM(cost) AS BIGINT)"), "spend")
        .filter(scope_condition(who, generation::Column::UserId))
        .filter(generation::Column::CreatedAt.gte(since))
        .group_by(Expr::cust(day))
        .into_tuple()
        .all(&state.db)
        .await?;
    let days = (0..days)
        .map(|i| {
            let d = first + Duration::days(i64::from(i));
            let key = d.format("%Y-%m-%d").to_string();
            rows.iter().find(|r| r.0 == key).map_or(
                DayStats {
                    day: d,
                    requests: 0,
                    errors: 0,
                    spend: 0,
                },
                |r| DayStats {
                    day: d,
                    requests: r.1,
                    errors: r.2,
                    spend: r.3,
                },
            )
        })
        .collect();
    let top: Vec<(String, i64, i64)> = generation::Entity::find()
        .select_only()
        .column(generation::Column::Model)
        .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "requests")
        .column_as(Expr::cust("CAST(SUM(cost) AS BIGINT)"), "spend")
        .filter(scope_condition(who, generation::Column::UserId))
        .filter(generation::Column::CreatedAt.gte(since))
        .group_by(generation::Column::Model)
        .order_by(Expr::col(Alias::new("requests")), Order::Desc)
        .limit(5)
        .into_tuple()
        .all(&state.db)
        .await?;
    Ok(Usage {
        days,
        top_models: top
            .into_iter()
            .map(|(model, requests, spend)| ModelStats {
                model,
                requests,
                spend,
            })
            .collect(),
    })
}

#[derive(Deserialize)]
pub struct StatsQuery {
    #[serde(default)]
    pub days: Option<u32>,
}

/// `GET /api/stats?days=14`: the dashboard's figures (amounts in credits).
pub async fn get(
    state: web::Data<AdminState>,
    who: AuthUser,
    query: web::Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let u = usage(&state, &who, query.days.unwrap_or(14)).await?;
    let days: Vec<_> = u
        .days
        .iter()
        .map(|d| {
            serde_json::json!({"day": d.day, "requests": d.requests, "errors": d.errors, "spend": credits(d.spend)})
        })
        .collect();
    let models: Vec<_> = u
        .top_models
        .iter()
        .map(|m| serde_json::json!({"model": m.model, "requests": m.requests, "spend": credits(m.spend)}))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"days": days, "top_models": models})))
}
