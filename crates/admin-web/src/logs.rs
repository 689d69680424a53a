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
pub(crate) fn parse_time(
    name: &'static str,
    text: Option<&str>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
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
    let find = log_query(who, filter)?;
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

/// The generations in the caller's scope matching `filter`, unordered.
fn log_query(
    who: &AuthUser,
    filter: &LogFilter,
) -> Result<sea_orm::Select<generation::Entity>, ApiError> {
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
    Ok(find)
}

/// The columns of `/api/logs.csv`, in order.
pub const CSV_COLUMNS: [&str; 19] = [
    "id",
    "created_at",
    "user_id",
    "key_id",
    "model",
    "channel_id",
    "provider_name",
    "endpoint",
    "status",
    "status_code",
    "streamed",
    "tokens_prompt",
    "tokens_completion",
    "tokens_cached",
    "tokens_reasoning",
    "tokens_cache_write",
    "cost",
    "latency_ms",
    "error",
];

/// Rows fetched from the database at a time while exporting.
const CSV_CHUNK: u64 = 500;

/// Micro-credits as credits with six decimals (`-0.000150`).
fn credits_text(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// One CSV field, quoted when it holds a comma, a quote or a line break; a field a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@` first) gets a leading `'`.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) && text.parse::<f64>().is_err()
    {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// A generation as one CSV line.
pub fn csv_line(g: &generation::Model) -> String {
    let opt = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let fields = [
        g.id.clone(),
        g.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        g.user_id.to_string(),
        g.key_id.to_string(),
        g.model.clone(),
        opt(g.channel_id),
        g.provider_name.clone().unwrap_or_default(),
        g.endpoint.clone(),
        g.status.clone(),
        g.status_code.to_string(),
        g.streamed.to_string(),
        g.tokens_prompt.to_string(),
        g.tokens_completion.to_string(),
        g.tokens_cached.to_string(),
        g.tokens_reasoning.to_string(),
        g.tokens_cache_write.to_string(),
        credits_text(g.cost),
        opt(g.latency_ms),
        g.error.clone().unwrap_or_default(),
    ];
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// The generations in the caller's scope matching `filter` as CSV, newest first,
/// streamed a few hundred rows at a time (never the whole export in memory).
pub fn csv_stream(
    db: sea_orm::DatabaseConnection,
    who: &AuthUser,
    filter: &LogFilter,
) -> Result<impl futures_util::Stream<Item = Result<web::Bytes, ApiError>> + use<>, ApiError> {
    use sea_orm::Condition;
    let query = log_query(who, filter)?;
    let header = web::Bytes::from(format!("{}\r\n", CSV_COLUMNS.join(",")));
    // Keyset paging on (created_at, id), so rows written meanwhile neither repeat nor
    // shift the pages.
    let rows = futures_util::stream::try_unfold(
        (db, query, None::<(DateTime<Utc>, String)>, false),
        |(db, query, after, done)| async move {
            if done {
                return Ok(None);
            }
            let mut page = query.clone();
            if let Some((at, id)) = &after {
                page = page.filter(
                    Condition::any()
                        .add(generation::Column::CreatedAt.lt(*at))
                        .add(
                            Condition::all()
                                .add(generation::Column::CreatedAt.eq(*at))
                                .add(generation::Column::Id.lt(id.clone())),
                        ),
                );
            }
            let items = page
                .order_by_desc(generation::Column::CreatedAt)
                .order_by_desc(generation::Column::Id)
                .limit(CSV_CHUNK)
                .all(&db)
                .await
                .map_err(ApiError::from)?;
            let last = items.last().map(|g| (g.created_at, g.id.clone()));
            let done = u64::try_from(items.len()).unwrap_or(0) < CSV_CHUNK;
            if items.is_empty() {
                return Ok(None);
            }
            let text: String = items.iter().map(csv_line).collect();
            Ok(Some((web::Bytes::from(text), (db, query, last, done))))
        },
    );
    Ok(futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok(header) }),
        rows,
    ))
}

/// `GET /api/logs.csv`: `/api/logs`'s rows (same filters, same scope, all pages) as
/// CSV, amounts in credits with six decimals.
pub async fn csv(
    state: web::Data<AdminState>,
    who: AuthUser,
    filter: web::Query<LogFilter>,
) -> Result<HttpResponse, ApiError> {
    let body = csv_stream(state.db.clone(), &who, &filter)?;
    Ok(HttpResponse::Ok()
        .insert_header(("content-type", "text/csv; charset=utf-8"))
        .insert_header((
            "content-disposition",
            "attachment; filename=\"tollgate-logs.csv\"",
        ))
        .streaming(body))
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
