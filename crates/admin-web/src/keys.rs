//! Customer `sk-` keys (API.md §2 "Keys"): shown once at creation, stored as SHA-256.

use actix_web::{HttpResponse, web};
use billing::wallet::Account;
use chrono::{DateTime, Utc};
use rand::Rng;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde::Deserialize;
use store::entities::api_key;

use crate::auth::AuthUser;
use crate::users::{scope_condition, visible_user};
use crate::util::{Page, Paging, credits, micros_of, nullable};
use crate::{AdminState, ApiError};

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new key: `sk-` and 48 random base62 characters.
pub fn generate_key() -> String {
    let mut rng = rand::rng();
    let body: String = (0..48)
        .map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())]))
        .collect();
    format!("sk-{body}")
}

/// `sk-abcd…wxyz`: enough to recognise a key, never enough to use it.
pub fn preview(key: &str) -> String {
    let body = key.strip_prefix("sk-").unwrap_or(key);
    let head: String = body.chars().take(4).collect();
    let tail: String = body
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("sk-{head}…{tail}")
}

/// A stored JSON list of names (models, IPs) as a list, or `None` for "no limit".
pub fn stored_list(text: Option<&str>) -> Option<Vec<String>> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

fn json_list(text: Option<&str>) -> serde_json::Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A key as the API lists it (never the key itself).
pub fn key_json(k: &api_key::Model) -> serde_json::Value {
    serde_json::json!({
        "id": k.id,
        "name": k.name,
        "user_id": k.user_id,
        "preview": k.preview,
        "status": k.status,
        "used": credits(k.used),
        "credit_limit": k.credit_limit.map(credits),
        "expires_at": k.expires_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "models": json_list(k.models.as_deref()),
        "allow_ips": json_list(k.allow_ips.as_deref()),
        "rpm": k.rpm,
        "tpm": k.tpm,
        "max_concurrency": k.max_concurrency,
        "last_used_at": k.last_used_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "created_at": k.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::invalid("name", "name must be 1 to 64 characters"));
    }
    Ok(name.to_owned())
}

fn parse_limit(limit: Option<f64>) -> Result<Option<i64>, ApiError> {
    limit
        .map(|l| {
            let m = micros_of("credit_limit", l)?;
            if m < 0 {
                return Err(ApiError::invalid(
                    "credit_limit",
                    "credit_limit must not be negative",
                ));
            }
            Ok(m)
        })
        .transpose()
}

fn parse_models(models: Option<Vec<String>>) -> Result<Option<String>, ApiError> {
    models
        .map(|m| {
            if m.iter().any(|s| s.trim().is_empty()) {
                return Err(ApiError::invalid(
                    "models",
                    "models must be non-empty names",
                ));
            }
            serde_json::to_string(&m).map_err(ApiError::internal)
        })
        .transpose()
}

fn parse_ips(ips: Option<Vec<String>>) -> Result<Option<String>, ApiError> {
    ips.map(|list| {
        store::catalog::parse_ip_list(&list).map_err(|m| ApiError::invalid("allow_ips", m))?;
        serde_json::to_string(&list).map_err(ApiError::internal)
    })
    .transpose()
}

fn parse_rpm(rpm: Option<i64>) -> Result<Option<i32>, ApiError> {
    rpm.map(|r| {
        i32::try_from(r)
            .ok()
            .filter(|r| *r > 0)
            .ok_or_else(|| ApiError::invalid("rpm", "rpm must be a positive whole number"))
    })
    .transpose()
}

fn parse_tpm(tpm: Option<i64>) -> Result<Option<i64>, ApiError> {
    tpm.map(|t| {
        Some(t)
            .filter(|t| *t > 0)
            .ok_or_else(|| ApiError::invalid("tpm", "tpm must be a positive whole number"))
    })
    .transpose()
}

fn parse_concurrency(n: Option<i64>) -> Result<Option<i32>, ApiError> {
    n.map(|n| {
        i32::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::invalid(
                "max_concurrency",
                "max_concurrency must be a positive whole number",
            )
        })
    })
    .transpose()
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateKey {
    pub name: String,
    #[serde(default)]
    pub user_id: Option<i64>,
    #[serde(default)]
    pub credit_limit: Option<f64>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub allow_ips: Option<Vec<String>>,
    #[serde(default)]
    pub rpm: Option<i64>,
    #[serde(default)]
    pub tpm: Option<i64>,
    #[serde(default)]
    pub max_concurrency: Option<i64>,
}

/// Creates a key for a user in the caller's scope (the caller by default). Answers
/// the row and the key itself, which is never available again.
pub async fn create_key(
    state: &AdminState,
    who: &AuthUser,
    body: CreateKey,
) -> Result<(api_key::Model, String), ApiError> {
    let owner = visible_user(state, who, body.user_id.unwrap_or(who.id)).await?;
    let key = generate_key();
    let credit_limit = parse_limit(body.credit_limit)?;
    let row = api_key::ActiveModel {
        user_id: Set(owner.id),
        name: Set(check_name(&body.name)?),
        key_hash: Set(store::hash_secret(&key)),
        preview: Set(preview(&key)),
        status: Set("enabled".to_owned()),
        used: Set(0),
        // Explicit, not the column default: SQLite can return NULL for a
        // default of a column added by ALTER TABLE in `RETURNING`.
        rev: Set(0),
        credit_limit: Set(credit_limit),
        expires_at: Set(body.expires_at),
        models: Set(parse_models(body.models)?),
        allow_ips: Set(parse_ips(body.allow_ips)?),
        rpm: Set(parse_rpm(body.rpm)?),
        tpm: Set(parse_tpm(body.tpm)?),
        max_concurrency: Set(parse_concurrency(body.max_concurrency)?),
        last_used_at: Set(None),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(&state.db)
    .await?;
    if let Some(limit) = credit_limit {
        state
            .wallet
            .sync(&[billing::Synced {
                account: Account::Key(row.id),
                limit,
                rev: 0,
            }])
            .await?;
    }
    state.reload().await;
    tracing::info!(
        user.id = who.id,
        key.id = row.id,
        owner.id = owner.id,
        "key created"
    );
    Ok((row, key))
}

/// `POST /api/keys`
pub async fn create(
    state: web::Data<AdminState>,
    who: AuthUser,
    body: web::Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let (row, key) = create_key(&state, &who, body.into_inner()).await?;
    let mut out = key_json(&row);
    out["key"] = serde_json::Value::from(key);
    Ok(HttpResponse::Created().json(out))
}

#[derive(Deserialize)]
pub struct ListKeys {
    #[serde(default)]
    pub user_id: Option<i64>,
}

/// The caller's keys and those of users in its scope (one user's with `user_id`),
/// newest first; deleted keys are gone.
pub async fn list_keys(
    state: &AdminState,
    who: &AuthUser,
    user_id: Option<i64>,
    paging: &Paging,
) -> Result<Page<api_key::Model>, ApiError> {
    let mut find = api_key::Entity::find()
        .filter(api_key::Column::Status.ne("deleted"))
        .filter(scope_condition(who, api_key::Column::UserId));
    if let Some(uid) = user_id {
        find = find.filter(api_key::Column::UserId.eq(uid));
    }
    let total = find.clone().count(&state.db).await?;
    let items = find
        .order_by_desc(api_key::Column::Id)
        .offset(paging.offset())
        .limit(paging.per_page())
        .all(&state.db)
        .await?;
    Ok((items, total))
}

/// `GET /api/keys`
pub async fn list(
    state: web::Data<AdminState>,
    who: AuthUser,
    query: web::Query<ListKeys>,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    let (items, total) = list_keys(&state, &who, query.user_id, &paging).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "items": items.iter().map(key_json).collect::<Vec<_>>(),
        "total": total,
    })))
}

/// A key the caller may see (not deleted), or 404.
pub async fn visible_key(
    state: &AdminState,
    who: &AuthUser,
    id: i64,
) -> Result<api_key::Model, ApiError> {
    let key = api_key::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|k| k.status != "deleted")
        .ok_or(ApiError::NotFound)?;
    visible_user(state, who, key.user_id).await?;
    Ok(key)
}

#[derive(Debug, Default, Deserialize)]
pub struct PatchKey {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub credit_limit: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub allow_ips: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub tpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_concurrency: Option<Option<i64>>,
}

/// Changes a key; takes effect on the next request, on every instance.
pub async fn update_key(
    state: &AdminState,
    who: &AuthUser,
    id: i64,
    body: PatchKey,
) -> Result<api_key::Model, ApiError> {
    let key = visible_key(state, who, id).await?;
    let mut active: api_key::ActiveModel = key.clone().into();
    if let Some(name) = body.name {
        active.name = Set(check_name(&name)?);
    }
    if let Some(status) = body.status {
        if status != "enabled" && status != "disabled" {
            return Err(ApiError::invalid(
                "status",
                "status must be enabled or disabled",
            ));
        }
        active.status = Set(status);
    }
    let mut new_limit = None;
    if let Some(limit) = body.credit_limit {
        let limit = parse_limit(limit)?;
        active.credit_limit = Set(limit);
        new_limit = Some(limit);
    }
    if let Some(expires) = body.expires_at {
        active.expires_at = Set(expires);
    }
    if let Some(models) = body.models {
        active.models = Set(parse_models(models)?);
    }
    if let Some(ips) = body.allow_ips {
        active.allow_ips = Set(parse_ips(ips)?);
    }
    if let Some(rpm) = body.rpm {
        active.rpm = Set(parse_rpm(rpm)?);
    }
    if let Some(tpm) = body.tpm {
        active.tpm = Set(parse_tpm(tpm)?);
    }
    if let Some(n) = body.max_concurrency {
        active.max_concurrency = Set(parse_concurrency(n)?);
    }
    let updated = active.update(&state.db).await?;
    if new_limit.is_some() {
        // The counter takes the new limit from the database at a new revision,
        // keeping what the key holds.
        state.wallet.resync_key(updated.id).await?;
    }
    state.reload().await;
    Ok(updated)
}

/// `PATCH /api/keys/{id}`
pub async fn patch(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<i64>,
    body: web::Json<PatchKey>,
) -> Result<HttpResponse, ApiError> {
    let updated = update_key(&state, &who, id.into_inner(), body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(key_json(&updated)))
}

/// Deletes a key: it stops working at once; its history stays.
pub async fn delete_key(state: &AdminState, who: &AuthUser, id: i64) -> Result<(), ApiError> {
    let key = visible_key(state, who, id).await?;
    let mut active: api_key::ActiveModel = key.into();
    active.status = Set("deleted".to_owned());
    active.update(&state.db).await?;
    state.reload().await;
    tracing::info!(user.id = who.id, key.id = id, "key deleted");
    Ok(())
}

/// `DELETE /api/keys/{id}`
pub async fn delete(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    delete_key(&state, &who, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sk_and_48_base62_characters_and_previews_hide_the_middle() {
        let k = generate_key();
        assert_eq!(k.len(), 51);
        assert!(k[3..].chars().all(|c| c.is_ascii_alphanumeric()));
        let p = preview(&k);
        assert!(p.starts_with(&k[..7]) && p.ends_with(&k[47..]));
        assert_ne!(generate_key(), k);
    }
}
