//! Asynchronous tasks for operators (API.md §4): every task in the caller's scope
//! (scoped as logs are), filtered by state, family and user, with its signed result
//! URLs; and an admin's cancel of an open task, which releases its hold.

use actix_web::{HttpResponse, web};
use billing::task::{self as store_task, Outcome, State};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Deserialize;
use store::entities::task;

use crate::auth::{AuthUser, Role};
use crate::users::scope_condition;
use crate::util::{Page, Paging, credits};
use crate::{AdminState, ApiError};

/// The families a task can belong to.
pub const FAMILIES: [&str; 7] = [
    "videos",
    "seedance",
    "kling",
    "dashscope",
    "veo",
    "midjourney",
    "suno",
];

/// The states a filter may name (`open`: queued or in progress).
pub const STATES: [&str; 7] = [
    "open",
    "queued",
    "in_progress",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
];

/// `GET /api/tasks` filters; paging comes separately.
#[derive(Debug, Default, Deserialize)]
pub struct TaskFilter {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub user_id: Option<i64>,
}

/// The tasks in the caller's scope matching `filter`, newest first.
pub async fn list_tasks(
    state: &AdminState,
    who: &AuthUser,
    filter: &TaskFilter,
    paging: &Paging,
) -> Result<Page<task::Model>, ApiError> {
    let mut find = task::Entity::find()
        .filter(scope_condition(who, task::Column::UserId))
        .filter(task::Column::DeletedAt.is_null());
    match filter
        .state
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => {}
        Some("open") => {
            find = find.filter(task::Column::State.is_in(["queued", "in_progress"]));
        }
        Some(s) if STATES.contains(&s) => find = find.filter(task::Column::State.eq(s)),
        Some(_) => {
            return Err(ApiError::invalid(
                "state",
                format!("'state' must be one of {}", STATES.join(", ")),
            ));
        }
    }
    match filter
        .family
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => {}
        Some(f) if FAMILIES.contains(&f) => find = find.filter(task::Column::Family.eq(f)),
        Some(_) => {
            return Err(ApiError::invalid(
                "family",
                format!("'family' must be one of {}", FAMILIES.join(", ")),
            ));
        }
    }
    if let Some(uid) = filter.user_id {
        find = find.filter(task::Column::UserId.eq(uid));
    }
    let total = find.clone().count(&state.db).await?;
    let items = find
        .order_by_desc(task::Column::Id)
        .offset(paging.offset())
        .limit(paging.per_page())
        .all(&state.db)
        .await?;
    Ok((items, total))
}

/// Signed URLs of a finished task's results, relative to this site (for the console
/// and API clients on the same address), valid a day.
pub fn result_links(state: &AdminState, t: &task::Model) -> Vec<String> {
    if t.state != State::Succeeded.as_str() {
        return Vec::new();
    }
    store_task::signed_urls(
        &state.secrets,
        t,
        "",
        chrono::Utc::now().timestamp() + store_task::URL_TTL_S,
    )
}

/// A task as the admin API shows it.
pub fn task_json(state: &AdminState, t: &task::Model) -> serde_json::Value {
    let ts =
        |at: chrono::DateTime<chrono::Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    serde_json::json!({
        "id": t.id,
        "user_id": t.user_id,
        "key_id": t.key_id,
        "family": t.family,
        "action": t.action,
        "model": t.model,
        "state": t.state,
        "upstream_status": t.upstream_status,
        "progress": t.progress,
        "held": credits(t.held),
        "charged": credits(t.charged),
        "channel_id": t.channel_id,
        "error": t.error,
        "created_at": ts(t.created_at),
        "finished_at": t.finished_at.map(ts),
        "results": result_links(state, t),
    })
}

/// `GET /api/tasks?state=&family=&user_id=&page=&per_page=`
pub async fn list(
    state: web::Data<AdminState>,
    who: AuthUser,
    filter: web::Query<TaskFilter>,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    let (items, total) = list_tasks(&state, &who, &filter, &paging).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "items": items.iter().map(|t| task_json(&state, t)).collect::<Vec<_>>(),
        "total": total,
    })))
}

/// Cancels an open task as an admin: it ends `cancelled` and its hold goes back, in
/// one conditional transition (a task that ended meanwhile is left as it ended). The
/// upstream may still finish the job; Tollgate will not charge for it.
pub async fn cancel_task(
    state: &AdminState,
    who: &AuthUser,
    id: &str,
) -> Result<task::Model, ApiError> {
    if who.role != Role::Admin {
        return Err(ApiError::Forbidden);
    }
    let t = store_task::find(&state.db, id)
        .await?
        .filter(|t| t.deleted_at.is_none())
        .ok_or(ApiError::NotFound)?;
    if !State::parse(&t.state).is_some_and(State::is_open) {
        return Err(ApiError::BadRequest(format!(
            "task '{id}' is {}: only an open task can be cancelled",
            t.state
        )));
    }
    let outcome = Outcome {
        state: State::Cancelled,
        cost: 0,
        upstream_status: t.upstream_status.clone(),
        result: None,
        error: Some(format!("cancelled: by admin {}", who.username)),
        progress: t.progress,
        upstream_cost: 0,
    };
    let ended = store_task::finish(&state.db, &state.wallet, id, &outcome).await?;
    if !ended {
        return Err(ApiError::BadRequest(format!(
            "task '{id}' ended before it could be cancelled"
        )));
    }
    tracing::info!(task.id = %id, admin = who.id, "task cancelled by an admin");
    store_task::find(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// `POST /api/tasks/{id}/cancel` (admin).
pub async fn cancel(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = cancel_task(&state, &who, &id).await?;
    Ok(HttpResponse::Ok().json(task_json(&state, &t)))
}
