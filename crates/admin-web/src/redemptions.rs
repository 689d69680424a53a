//! Redemption codes (API.md §2 "Redemption codes"): admins mint batches, resellers
//! prepay theirs, any logged-in user redeems one. Codes appear only in the creation
//! answer; the money rules live in `billing::redemption`.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use billing::redemption::{self, Funding, MAX_CODES_PER_BATCH, NewBatch, Redeemed};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Deserialize;
use store::entities::redemption_code;

use crate::auth::{AuthUser, Role};
use crate::util::{Page, Paging, credits, micros_of};
use crate::{AdminState, ApiError};

/// Failed redemptions by one user within the window before it is refused.
const MAX_FAILED_REDEEMS: i64 = 20;
const REDEEM_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A code as the API lists it (never the code itself).
fn code_json(c: &redemption_code::Model) -> serde_json::Value {
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    serde_json::json!({
        "id": c.id,
        "name": c.name,
        "amount": credits(c.amount),
        "status": c.status,
        "created_by": c.created_by,
        "used_by": c.used_by,
        "used_at": c.used_at.map(time),
        "created_at": time(c.created_at),
    })
}

fn check_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::invalid("name", "name must be 1 to 64 characters"));
    }
    Ok(name)
}

fn check_count(count: i64) -> Result<usize, ApiError> {
    usize::try_from(count)
        .ok()
        .filter(|c| (1..=MAX_CODES_PER_BATCH).contains(c))
        .ok_or_else(|| {
            ApiError::invalid("count", format!("count must be 1 to {MAX_CODES_PER_BATCH}"))
        })
}

#[derive(Deserialize)]
pub struct CreateCodes {
    pub name: String,
    pub amount: f64,
    pub count: i64,
}

/// Creates a batch of codes: an admin mints, a reseller pays the batch up front
/// (`InsufficientBalance` when short). Answers the codes, shown only this once.
pub async fn create_codes(
    state: &AdminState,
    who: &AuthUser,
    name: &str,
    amount: f64,
    count: i64,
) -> Result<Vec<String>, ApiError> {
    let funding = match who.role {
        Role::Admin => Funding::Minted,
        Role::Reseller => Funding::Prepaid,
        Role::Customer => return Err(ApiError::Forbidden),
    };
    let amount = micros_of("amount", amount)?;
    if amount <= 0 {
        return Err(ApiError::invalid("amount", "amount must be positive"));
    }
    let issued = redemption::create_codes(
        &state.db,
        &state.wallet,
        NewBatch {
            name: check_name(name)?,
            amount,
            count: check_count(count)?,
            created_by: who.id,
            funding,
        },
    )
    .await?;
    tracing::info!(
        user.id = who.id,
        codes = issued.codes.len(),
        amount_micros = amount,
        "redemption codes created"
    );
    Ok(issued.codes)
}

/// `POST /api/redemptions`: an admin mints; a reseller pays the batch up front.
pub async fn create(
    state: web::Data<AdminState>,
    who: AuthUser,
    body: web::Json<CreateCodes>,
) -> Result<HttpResponse, ApiError> {
    let codes = create_codes(&state, &who, &body.name, body.amount, body.count).await?;
    Ok(HttpResponse::Created().json(serde_json::json!({"codes": codes})))
}

/// The codes the caller may list: an admin every code, a reseller those it created.
pub async fn list_codes(
    state: &AdminState,
    who: &AuthUser,
    paging: &Paging,
) -> Result<Page<redemption_code::Model>, ApiError> {
    let mut find = redemption_code::Entity::find();
    match who.role {
        Role::Admin => {}
        Role::Reseller => find = find.filter(redemption_code::Column::CreatedBy.eq(who.id)),
        Role::Customer => return Err(ApiError::Forbidden),
    }
    let total = find.clone().count(&state.db).await?;
    let items = find
        .order_by_desc(redemption_code::Column::Id)
        .offset(paging.offset())
        .limit(paging.per_page())
        .all(&state.db)
        .await?;
    Ok((items, total))
}

/// `GET /api/redemptions`: an admin sees every code, a reseller the codes it created.
pub async fn list(
    state: web::Data<AdminState>,
    who: AuthUser,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    let (items, total) = list_codes(&state, &who, &paging).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "items": items.iter().map(code_json).collect::<Vec<_>>(),
        "total": total,
    })))
}

#[derive(Deserialize)]
pub struct RedeemBody {
    pub code: String,
}

/// Redeems a code for the caller: it works exactly once; repeated failures are
/// limited per user, so codes cannot be guessed by volume.
pub async fn redeem_code(
    state: &AdminState,
    who: &AuthUser,
    code: &str,
) -> Result<Redeemed, ApiError> {
    let limiter = format!("redeem:{}", who.id);
    if state.shared.count(&limiter).await? >= MAX_FAILED_REDEEMS {
        return Err(ApiError::RateLimited);
    }
    let Some(r) = redemption::redeem(&state.db, &state.wallet, who.id, code.trim()).await? else {
        state.shared.incr(&limiter, REDEEM_WINDOW).await?;
        return Err(ApiError::InvalidCode);
    };
    tracing::info!(
        user.id = who.id,
        code.id = r.code_id,
        amount_micros = r.amount,
        "code redeemed"
    );
    Ok(r)
}

/// `POST /api/redeem`
pub async fn redeem(
    state: web::Data<AdminState>,
    who: AuthUser,
    body: web::Json<RedeemBody>,
) -> Result<HttpResponse, ApiError> {
    let r = redeem_code(&state, &who, &body.code).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "balance": credits(r.balance),
        "amount": credits(r.amount),
        "transaction_id": r.transaction_id,
    })))
}
