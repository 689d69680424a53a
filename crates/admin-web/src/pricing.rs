//! Model prices and group multipliers (API.md §2 "Pricing"). Readable by every
//! logged-in user; only admins change them. A model with no price is never served.

use actix_web::{HttpResponse, web};
use chrono::Utc;
use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel};
use serde::Deserialize;
use store::entities::{group_multiplier, model_price};

use crate::auth::AuthUser;
use crate::util::{credits, micros_of};
use crate::{AdminState, ApiError};

fn price_json(p: &model_price::Model) -> serde_json::Value {
    let mut v = serde_json::json!({"input": credits(p.input), "output": credits(p.output)});
    for (name, value) in [
        ("cached_input", p.cached_input),
        ("cache_write", p.cache_write),
        ("per_request", p.per_request),
        ("per_image", p.per_image),
        ("per_second", p.per_second),
    ] {
        if let Some(x) = value {
            v[name] = credits(x);
        }
    }
    if let Some(n) = p.max_output_tokens {
        v["max_output_tokens"] = serde_json::Value::from(n);
    }
    v
}

/// Every model price (by name) and every group multiplier, as stored.
pub async fn pricing_table(
    state: &AdminState,
) -> Result<(Vec<model_price::Model>, Vec<group_multiplier::Model>), ApiError> {
    let mut prices = model_price::Entity::find().all(&state.db).await?;
    prices.sort_by(|a, b| a.model.cmp(&b.model));
    let mut groups = group_multiplier::Entity::find().all(&state.db).await?;
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((prices, groups))
}

/// `GET /api/pricing`
pub async fn get(state: web::Data<AdminState>, _who: AuthUser) -> Result<HttpResponse, ApiError> {
    let (prices, groups) = pricing_table(&state).await?;
    let mut models = serde_json::Map::new();
    for p in &prices {
        models.insert(p.model.clone(), price_json(p));
    }
    let mut gs = serde_json::Map::new();
    gs.insert("default".into(), serde_json::Value::from(1.0));
    for g in &groups {
        gs.insert(g.name.clone(), credits(g.multiplier_ppm));
    }
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({"currency": "USD", "models": models, "groups": gs})))
}

#[derive(Debug, Default, Deserialize)]
pub struct PriceBody {
    pub input: Option<f64>,
    pub output: Option<f64>,
    #[serde(default, deserialize_with = "crate::util::nullable")]
    pub cached_input: Option<Option<f64>>,
    #[serde(default, deserialize_with = "crate::util::nullable")]
    pub cache_write: Option<Option<f64>>,
    #[serde(default, deserialize_with = "crate::util::nullable")]
    pub per_request: Option<Option<f64>>,
    #[serde(default, deserialize_with = "crate::util::nullable")]
    pub per_image: Option<Option<f64>>,
    #[serde(default, deserialize_with = "crate::util::nullable")]
    pub per_second: Option<Option<f64>>,
    /// The model's own output ceiling in tokens (bounds holds); `null` clears it.
    #[serde(default, deserialize_with = "crate::util::nullable")]
    pub max_output_tokens: Option<Option<i64>>,
}

fn amount(v: f64, field: &'static str) -> Result<i64, ApiError> {
    let m = micros_of(field, v)?;
    if m < 0 {
        return Err(ApiError::invalid(
            field,
            format!("{field} must not be negative"),
        ));
    }
    Ok(m)
}

fn optional(
    v: Option<Option<f64>>,
    field: &'static str,
    current: Option<i64>,
) -> Result<Option<i64>, ApiError> {
    match v {
        None => Ok(current),
        Some(None) => Ok(None),
        Some(Some(x)) => amount(x, field).map(Some),
    }
}

/// Creates or updates a model's price (admin only); absent fields keep their value.
pub async fn set_model_price(
    state: &AdminState,
    who: &AuthUser,
    model: &str,
    body: PriceBody,
) -> Result<model_price::Model, ApiError> {
    who.require_admin()?;
    let model = model.trim().to_owned();
    if model.is_empty() || model.len() > 200 {
        return Err(ApiError::invalid(
            "model",
            "model name must be 1 to 200 characters",
        ));
    }
    let existing = model_price::Entity::find_by_id(model.clone())
        .one(&state.db)
        .await?;
    let cur = existing.clone().unwrap_or(model_price::Model {
        model: model.clone(),
        input: 0,
        output: 0,
        cached_input: None,
        cache_write: None,
        max_output_tokens: None,
        per_request: None,
        per_image: None,
        per_second: None,
        updated_at: Utc::now(),
    });
    let next = model_price::Model {
        model: model.clone(),
        input: body
            .input
            .map(|v| amount(v, "input"))
            .transpose()?
            .unwrap_or(cur.input),
        output: body
            .output
            .map(|v| amount(v, "output"))
            .transpose()?
            .unwrap_or(cur.output),
        cached_input: optional(body.cached_input, "cached_input", cur.cached_input)?,
        cache_write: optional(body.cache_write, "cache_write", cur.cache_write)?,
        max_output_tokens: match body.max_output_tokens {
            None => cur.max_output_tokens,
            Some(None) => None,
            Some(Some(n)) if n > 0 => Some(n),
            Some(Some(_)) => {
                return Err(ApiError::invalid(
                    "max_output_tokens",
                    "max_output_tokens must be a positive whole number",
                ));
            }
        },
        per_request: optional(body.per_request, "per_request", cur.per_request)?,
        per_image: optional(body.per_image, "per_image", cur.per_image)?,
        per_second: optional(body.per_second, "per_second", cur.per_second)?,
        updated_at: Utc::now(),
    };
    let mut active = next.clone().into_active_model();
    let saved = if existing.is_some() {
        active.model = sea_orm::ActiveValue::Unchanged(model.clone());
        for col in [
            model_price::Column::Input,
            model_price::Column::Output,
            model_price::Column::CachedInput,
            model_price::Column::CacheWrite,
            model_price::Column::MaxOutputTokens,
            model_price::Column::PerRequest,
            model_price::Column::PerImage,
            model_price::Column::PerSecond,
            model_price::Column::UpdatedAt,
        ] {
            active.reset(col);
        }
        active.update(&state.db).await?
    } else {
        active.insert(&state.db).await?
    };
    state.reload().await;
    tracing::info!(user.id = who.id, model = %saved.model, "price set");
    Ok(saved)
}

/// `PUT /api/pricing/models/{model}`: creates or updates; absent fields keep their value.
pub async fn put_model(
    state: web::Data<AdminState>,
    who: AuthUser,
    model: web::Path<String>,
    body: web::Json<PriceBody>,
) -> Result<HttpResponse, ApiError> {
    let saved = set_model_price(&state, &who, &model, body.into_inner()).await?;
    let mut out = price_json(&saved);
    out["model"] = serde_json::Value::from(saved.model.clone());
    Ok(HttpResponse::Ok().json(out))
}

/// Removes a model's price (admin only): the model is no longer served.
pub async fn delete_model_price(
    state: &AdminState,
    who: &AuthUser,
    model: &str,
) -> Result<(), ApiError> {
    who.require_admin()?;
    let gone = model_price::Entity::delete_by_id(model.to_owned())
        .exec(&state.db)
        .await?;
    if gone.rows_affected == 0 {
        return Err(ApiError::NotFound);
    }
    state.reload().await;
    tracing::info!(user.id = who.id, model = %model, "price removed");
    Ok(())
}

/// `DELETE /api/pricing/models/{model}`
pub async fn delete_model(
    state: web::Data<AdminState>,
    who: AuthUser,
    model: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    delete_model_price(&state, &who, &model).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
pub struct GroupBody {
    pub multiplier: f64,
}

/// Sets a group's price multiplier (admin only); answers it in parts per million.
pub async fn set_group_multiplier(
    state: &AdminState,
    who: &AuthUser,
    group: &str,
    multiplier: f64,
) -> Result<i64, ApiError> {
    who.require_admin()?;
    let name = group.trim().to_owned();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    {
        return Err(ApiError::invalid(
            "group",
            "group must be 1 to 64 letters, digits, _ or -",
        ));
    }
    let ppm = micros_of("multiplier", multiplier)?;
    if !(0..=1_000_000_000).contains(&ppm) {
        return Err(ApiError::invalid(
            "multiplier",
            "multiplier must be between 0 and 1000",
        ));
    }
    let row = group_multiplier::Model {
        name: name.clone(),
        multiplier_ppm: ppm,
        updated_at: Utc::now(),
    };
    let exists = group_multiplier::Entity::find_by_id(name.clone())
        .one(&state.db)
        .await?
        .is_some();
    let mut active = row.into_active_model();
    if exists {
        active.name = sea_orm::ActiveValue::Unchanged(name.clone());
        active.reset(group_multiplier::Column::MultiplierPpm);
        active.reset(group_multiplier::Column::UpdatedAt);
        active.update(&state.db).await?;
    } else {
        active.insert(&state.db).await?;
    }
    state.reload().await;
    tracing::info!(user.id = who.id, group = %name, multiplier_ppm = ppm, "group multiplier set");
    Ok(ppm)
}

/// `PUT /api/pricing/groups/{group}`
pub async fn put_group(
    state: web::Data<AdminState>,
    who: AuthUser,
    group: web::Path<String>,
    body: web::Json<GroupBody>,
) -> Result<HttpResponse, ApiError> {
    let ppm = set_group_multiplier(&state, &who, &group, body.multiplier).await?;
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({"name": group.trim(), "multiplier": credits(ppm)})))
}
