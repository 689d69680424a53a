//! Users, credits and transactions (API.md §2 "Users"), scoped by role: an admin sees
//! everyone, a reseller itself and its customers, a customer itself.

use actix_web::{HttpResponse, web};
use billing::accounts::{self, Entry, Posted};
use billing::wallet::Account;
use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, EntityTrait, ExprTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Deserialize;
use store::entities::{transaction, user};

use crate::auth::{AuthUser, Role, check_password_rules, hash_password};
use crate::util::{Page, Paging, credits, micros_of};
use crate::{AdminState, ApiError};

/// A user as the API shows it.
pub fn user_json(u: &user::Model) -> serde_json::Value {
    serde_json::json!({
        "id": u.id,
        "username": u.username,
        "role": u.role,
        "group": u.group_name,
        "parent_id": u.parent_id,
        "status": u.status,
        "balance": credits(u.balance),
        "used": credits(u.used),
        "created_at": u.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// Loads a user the caller may see, or 404.
pub async fn visible_user(
    state: &AdminState,
    who: &AuthUser,
    id: i64,
) -> Result<user::Model, ApiError> {
    user::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|u| who.sees(u))
        .ok_or(ApiError::NotFound)
}

/// The condition "user id is within the caller's scope" on a `user_id` column.
pub fn scope_condition<C: ColumnTrait>(who: &AuthUser, user_col: C) -> Condition {
    match who.role {
        Role::Admin => Condition::all(),
        Role::Customer => Condition::all().add(user_col.eq(who.id)),
        Role::Reseller => Condition::any().add(user_col.eq(who.id)).add(
            user_col.in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(user::Column::Id)
                    .from(user::Entity)
                    .and_where(Expr::col(user::Column::ParentId).eq(who.id))
                    .to_owned(),
            ),
        ),
    }
}

fn valid_username(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-@".contains(c))
}

fn valid_group(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
}

#[derive(Deserialize)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    pub role: String,
    #[serde(default)]
    pub group: Option<String>,
}

fn check_group(group: &str) -> Result<(), ApiError> {
    if valid_group(group) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "group",
            "group must be 1 to 64 letters, digits, _ or -",
        ))
    }
}

/// Creates a user: an admin creates any role, a reseller only its own customers (who
/// share its group).
pub async fn create_user(
    state: &AdminState,
    who: &AuthUser,
    body: CreateUser,
) -> Result<user::Model, ApiError> {
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::invalid("role", "role must be admin, reseller or customer"))?;
    let (parent_id, group) = match who.role {
        Role::Admin => (
            None,
            body.group
                .filter(|g| !g.trim().is_empty())
                .unwrap_or_else(|| "default".to_owned()),
        ),
        Role::Reseller if role == Role::Customer => (Some(who.id), who.group.clone()),
        _ => return Err(ApiError::Forbidden),
    };
    let username = body.username.trim().to_owned();
    if !valid_username(&username) {
        return Err(ApiError::invalid(
            "username",
            "username must be 1 to 64 letters, digits or _ . - @",
        ));
    }
    check_group(&group)?;
    check_password_rules(&body.password)?;
    let taken = user::Entity::find()
        .filter(user::Column::Username.eq(&username))
        .count(&state.db)
        .await?;
    if taken > 0 {
        return Err(ApiError::UsernameTaken);
    }
    let inserted = user::ActiveModel::enabled(
        username,
        hash_password(body.password).await?,
        role,
        group,
        parent_id,
    )
    .insert(&state.db)
    .await
    .map_err(|e| match e.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => ApiError::UsernameTaken,
        _ => ApiError::internal(e),
    })?;
    state
        .wallet
        .sync(&[billing::Synced {
            account: Account::User(inserted.id),
            limit: 0,
            rev: 0,
        }])
        .await?;
    state.reload().await;
    tracing::info!(user.id = who.id, created.id = inserted.id, role = %inserted.role, "user created");
    Ok(inserted)
}

/// `POST /api/users`
pub async fn create(
    state: web::Data<AdminState>,
    who: AuthUser,
    body: web::Json<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let inserted = create_user(&state, &who, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(user_json(&inserted)))
}

#[derive(Debug, Default, Deserialize)]
pub struct ListUsers {
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
}

/// The users in the caller's scope matching the filter, oldest first.
pub async fn list_users(
    state: &AdminState,
    who: &AuthUser,
    query: &ListUsers,
    paging: &Paging,
) -> Result<Page<user::Model>, ApiError> {
    let mut find = user::Entity::find().filter(scope_condition(who, user::Column::Id));
    if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
        find = find.filter(user::Column::Username.contains(q));
    }
    if let Some(role) = query.role.as_deref().filter(|r| !r.is_empty()) {
        find = find.filter(user::Column::Role.eq(role));
    }
    let total = find.clone().count(&state.db).await?;
    let items = find
        .order_by_asc(user::Column::Id)
        .offset(paging.offset())
        .limit(paging.per_page())
        .all(&state.db)
        .await?;
    Ok((items, total))
}

/// `GET /api/users`
pub async fn list(
    state: web::Data<AdminState>,
    who: AuthUser,
    query: web::Query<ListUsers>,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    let (items, total) = list_users(&state, &who, &query, &paging).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "items": items.iter().map(user_json).collect::<Vec<_>>(),
        "total": total,
    })))
}

/// `GET /api/users/{id}`
pub async fn get(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let u = visible_user(&state, &who, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(user_json(&u)))
}

#[derive(Debug, Default, Deserialize)]
pub struct PatchUser {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// Changes a user's status, group (admin only) or password. Disabling a user stops
/// its keys at once; nobody changes itself this way.
pub async fn update_user(
    state: &AdminState,
    who: &AuthUser,
    id: i64,
    body: PatchUser,
) -> Result<user::Model, ApiError> {
    let target = visible_user(state, who, id).await?;
    if who.role == Role::Customer || (who.role == Role::Reseller && target.id == who.id) {
        return Err(ApiError::Forbidden);
    }
    let mut active: user::ActiveModel = target.clone().into();
    if let Some(status) = body.status {
        if status != "enabled" && status != "disabled" {
            return Err(ApiError::invalid(
                "status",
                "status must be enabled or disabled",
            ));
        }
        if target.id == who.id && status == "disabled" {
            return Err(ApiError::invalid("status", "you cannot disable yourself"));
        }
        active.status = Set(status);
    }
    if let Some(group) = body.group {
        who.require_admin()?;
        check_group(&group)?;
        active.group_name = Set(group);
    }
    if let Some(password) = body.password {
        check_password_rules(&password)?;
        active.password_hash = Set(hash_password(password).await?);
    }
    active.updated_at = Set(Utc::now());
    let updated = active.update(&state.db).await?;
    state.reload().await;
    Ok(updated)
}

/// `PATCH /api/users/{id}`
pub async fn patch(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<i64>,
    body: web::Json<PatchUser>,
) -> Result<HttpResponse, ApiError> {
    let updated = update_user(&state, &who, id.into_inner(), body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(user_json(&updated)))
}

#[derive(Deserialize)]
pub struct CreditsBody {
    pub amount: f64,
    #[serde(default)]
    pub note: Option<String>,
}

/// Adds (or, when negative, takes back) credits: an admin mints or removes; a
/// reseller moves credits between itself and its customer. Never makes a balance
/// negative. Answers the target's new balance.
pub async fn move_credits(
    state: &AdminState,
    who: &AuthUser,
    id: i64,
    amount: f64,
    note: Option<&str>,
) -> Result<Posted, ApiError> {
    let target = visible_user(state, who, id).await?;
    let amount = micros_of("amount", amount)?;
    if amount == 0 {
        return Err(ApiError::invalid("amount", "amount must not be zero"));
    }
    let note = note
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| n.chars().take(500).collect::<String>());
    let posted = match who.role {
        Role::Admin => {
            let kind = if amount > 0 { "mint" } else { "adjust" };
            let reference = format!("by:{}", who.id);
            accounts::adjust(
                &state.db,
                &state.wallet,
                target.id,
                amount,
                Entry {
                    kind,
                    note: note.as_deref(),
                    reference: Some(&reference),
                },
            )
            .await?
        }
        Role::Reseller if target.parent_id == Some(who.id) => {
            if amount > 0 {
                accounts::transfer(
                    &state.db,
                    &state.wallet,
                    who.id,
                    target.id,
                    amount,
                    note.as_deref(),
                )
                .await?
                .1
            } else {
                accounts::transfer(
                    &state.db,
                    &state.wallet,
                    target.id,
                    who.id,
                    -amount,
                    note.as_deref(),
                )
                .await?
                .0
            }
        }
        _ => return Err(ApiError::Forbidden),
    };
    tracing::info!(
        user.id = who.id,
        target.id = target.id,
        amount_micros = amount,
        "credits moved"
    );
    Ok(posted)
}

/// `POST /api/users/{id}/credits`
pub async fn add_credits(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<i64>,
    body: web::Json<CreditsBody>,
) -> Result<HttpResponse, ApiError> {
    let posted = move_credits(
        &state,
        &who,
        id.into_inner(),
        body.amount,
        body.note.as_deref(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "balance": credits(posted.balance),
        "transaction_id": posted.transaction_id,
    })))
}

/// A visible user's ledger, newest first.
pub async fn list_transactions(
    state: &AdminState,
    who: &AuthUser,
    id: i64,
    paging: &Paging,
) -> Result<Page<transaction::Model>, ApiError> {
    let target = visible_user(state, who, id).await?;
    let find = transaction::Entity::find().filter(transaction::Column::UserId.eq(target.id));
    let total = find.clone().count(&state.db).await?;
    let items = find
        .order_by_desc(transaction::Column::Id)
        .offset(paging.offset())
        .limit(paging.per_page())
        .all(&state.db)
        .await?;
    Ok((items, total))
}

/// `GET /api/users/{id}/transactions`
pub async fn transactions(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<i64>,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    let (items, total) = list_transactions(&state, &who, id.into_inner(), &paging).await?;
    let items: Vec<_> = items
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id,
                "kind": t.kind,
                "amount": credits(t.amount),
                "balance_after": credits(t.balance_after),
                "reference": t.reference,
                "note": t.note,
                "created_at": t.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"items": items, "total": total})))
}
