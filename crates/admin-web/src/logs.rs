//! Logs and generations (API.md §2 "Logs and generations"): every relay request's
//! record, listed and looked up within the caller's scope, and the generation's JSON
//! shape that `/v1/generation` shares.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Deserialize;
use store::entities::generation;

use crate::auth::AuthUser;
use crate::users::scope_condition;
use crate::util::{Page, Paging, credits};
use crate::{AdminState, ApiError};

/// A generation in OpenRouter's shape, as `GET /v1/generation` answers it in `data`.
pub fn generation_json(g: &generation::Model) -> serde_json::Value {
    serde_json::json!({
        "id": g.id,
        "upstream_id": g.upstream_id,
        "model": g.model,
        "provider_name": g.provider_name,
        "created_at": g.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "streamed": g.streamed,
        "cancelled": g.cancelled,
        "finish_reason": g.finish_reason,
        "tokens_prompt": g.tokens_prompt,
        "tokens_completion": g.tokens_completion,
        "native_tokens_cached": g.tokens_cached,
        "native_tokens_reasoning": g.tokens_reasoning,
        "num_media_completion": g.num_media,
        "latency": g.latency_ms,
        "generation_time": g.generation_time_ms,
        "total_cost": credits(g.cost),
        "status": g.status,
    })
}

/// A log entry: the generation plus who made it, where it went and how it ended —
/// things the owner of the key sees in its console but not through `/v1/generation`.
pub fn log_json(g: &generation::Model) -> serde_json::Value {
    with_fields(
        generation_json(g),
        [
            ("user_id", g.user_id.into()),
            ("key_id", g.key_id.into()),
            ("channel_id", g.channel_id.into()),
            ("endpoint", g.endpoint.clone().into()),
            ("status_code", g.status_code.into()),
            ("error", g.error.clone().into()),
            ("client_ip", g.client_ip.clone().into()),
        ],
    )
}

fn with_fields(
    mut v: serde_json::Value,
    fields: impl IntoIterator<Item = (&'static str, serde_json::Value)>,
) -> serde_json::Value {
    if let Some(map) = v.as_object_mut() {
        map.extend(fields.into_iter().map(|(k, f)| (k.to_owned(), f)));
    }
    v
}

/// `GET /api/logs` filters; paging comes separately (`util::Paging`).
#[derive(Debug, Default, Deserialize)]
pub struct LogFilter {
    #[serde(default)]
    pub user_id: Option<i64>,
    #[serde(default)]
    pub key_id: Option<i64>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// RFC 3339; entries at or after it.
    #[serde(default)]
    pub from: Option<String>,
    /// RFC 3339; entries strictly before it.
    #[serde(default)]
    pub to: Option<String>,
}

/// RFC 3339; also, in UTC, what a browser's date and time fields send
/// (`2025-01-31T08:30`, `2025-01-31`).
fn parse_time(name: &'static str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    text.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&Utc))
                .ok()
                .or_else(|| {
                    chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M")
                        .ok()
                        .or_else(|| {
                            chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                                .ok()
                                .and_then(|d| d.and_hms_opt(0, 0, 0))
                        })
                        .map(|n| n.and_utc())
                })
                .ok_or_else(|| {
                    ApiError::invalid(
                        name,
                        format!("'{name}' must be an RFC 3339 time, like 2025-01-31T00:00:00Z"),
                    )
                })
        })
        .transpose()
}

/// The generations in the caller's scope matching `filter`, newest first; `from` is
/// inclusive and `to` exclusive, so consecutive windows neither overlap nor leave gaps.
pub async fn list_logs(
    state: &AdminState,
    who: &AuthUser,
    filter: &LogFilter,
    paging: &Paging,
) -> Result<Page<generation::Model>, ApiError> {
    let from = parse_time("from", filter.from.as_deref())?;
    let to = parse_time("to", filter.to.as_deref())?;
    let mut find =
        generation::Entity::find().filter(scope_condition(who, generation::Column::UserId));
    if let Some(uid) = filter.user_id {
        find = find.filter(generation::Column::UserId.eq(uid));
    }
    if let Some(kid) = filter.key_id {
        find = find.filter(generation::Column::KeyId.eq(kid));
    }
    if let Some(model) = filter
        .model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        find = find.filter(generation::Column::Model.eq(model));
    }
    match filter.status.as_deref().filter(|s| !s.is_empty()) {
        None => {}
        Some(status @ ("success" | "error" | "pending")) => {
            find = find.filter(generation::Column::Status.eq(status));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "status",
                "'status' must be success, error or pending",
            ));
        }
    }
    if let Some(from) = from {
        find = find.filter(generation::Column::CreatedAt.gte(from));
    }
    if let Some(to) = to {
        find = find.filter(generation::Column::CreatedAt.lt(to));
    }
    let total = find.clone().count(&state.db).await?;
    let items = find
        .order_by_desc(generation::Column::CreatedAt)
        .order_by_desc(generation::Column::Id)
        .offset(paging.offset())
        .limit(paging.per_page())
        .all(&state.db)
        .await?;
    Ok((items, total))
}

/// `GET /api/logs`
pub async fn list(
    state: web::Data<AdminState>,
    who: AuthUser,
    filter: web::Query<LogFilter>,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    let (items, total) = list_logs(&state, &who, &filter, &paging).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "items": items.iter().map(log_json).collect::<Vec<_>>(),
        "total": total,
    })))
}

/// One generation in the caller's scope, or 404.
pub async fn find_log(
    state: &AdminState,
    who: &AuthUser,
    id: &str,
) -> Result<generation::Model, ApiError> {
    generation::Entity::find_by_id(id.to_owned())
        .filter(scope_condition(who, generation::Column::UserId))
        .one(&state.db)
        .await?
        .ok_or(ApiError::NotFound)
}

/// A generation's tries, one per channel tried, in order (an empty list when none).
pub fn attempts_of(g: &generation::Model) -> serde_json::Value {
    g.attempts
        .as_deref()
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_else(|| serde_json::json!([]))
}

/// `GET /api/logs/{generation_id}`: the log entry with its tries (`attempts`, one per
/// channel tried, in order); 404 outside the caller's scope.
pub async fn get(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let g = find_log(&state, &who, &id).await?;
    Ok(HttpResponse::Ok().json(with_fields(log_json(&g), [("attempts", attempts_of(&g))])))
}
