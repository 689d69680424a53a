//! Upstream channels (API.md §2 "Channels", admin only). Keys are encrypted at rest
//! and never returned: a channel shows how many it has and their last four characters.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    TransactionTrait,
};
use serde::Deserialize;
use store::entities::{channel, channel_key};

use crate::auth::AuthUser;
use crate::state::ChannelTest;
use crate::{AdminState, ApiError};

/// Channel types API.md names (task platforms arrive with their own adapters).
const KNOWN_TYPES: &[&str] = &[
    "openai",
    "azure",
    "anthropic",
    "gemini",
    "volcengine",
    "kling",
    "dashscope",
    "midjourney",
    "suno",
];

/// A channel as the API shows it.
pub fn channel_json(c: &channel::Model, keys: &[channel_key::Model]) -> serde_json::Value {
    let parse =
        |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap_or(serde_json::Value::Null);
    let ts = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    serde_json::json!({
        "id": c.id,
        "name": c.name,
        "type": c.kind,
        "base_url": c.base_url,
        "models": parse(&c.models),
        "model_mapping": parse(&c.model_mapping),
        "groups": parse(&c.groups),
        "priority": c.priority,
        "weight": c.weight,
        "timeout_s": c.timeout_s,
        "status": c.status,
        "key_count": keys.iter().filter(|k| k.status == "enabled").count(),
        "keys_preview": keys.iter().map(|k| serde_json::json!({"id": k.id, "last4": k.last4, "status": k.status, "disabled_reason": k.disabled_reason})).collect::<Vec<_>>(),
        "response_ms": c.response_ms,
        "last_test_at": c.last_test_at.map(ts),
        "last_error": c.last_error,
        "disabled_reason": c.disabled_reason,
        "costs": c.costs.as_deref().map(parse).unwrap_or(serde_json::Value::Null),
        "created_at": ts(c.created_at),
    })
}

/// The body of create and patch; every field optional so one struct serves both.
#[derive(Debug, Deserialize, Default)]
pub struct ChannelBody {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub base_url: Option<String>,
    pub keys: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub model_mapping: Option<HashMap<String, String>>,
    pub groups: Option<Vec<String>>,
    pub priority: Option<i32>,
    pub weight: Option<i32>,
    pub headers: Option<HashMap<String, String>>,
    pub timeout_s: Option<i32>,
    pub status: Option<String>,
    /// model -> `{input, output}` or `{ratio}`; `null` clears.
    pub costs: Option<serde_json::Value>,
}

fn bad(field: &'static str, msg: &str) -> ApiError {
    ApiError::invalid(field, msg)
}

fn names(list: &[String], what: &'static str) -> Result<String, ApiError> {
    if list.is_empty() || list.iter().any(|s| s.trim().is_empty() || s.len() > 200) {
        return Err(ApiError::invalid(
            what,
            format!("{what} must be a non-empty list of names"),
        ));
    }
    serde_json::to_string(list).map_err(ApiError::internal)
}

/// Validates the body into the active model (creation requires the core fields).
fn apply(body: &ChannelBody, m: &mut channel::ActiveModel, creating: bool) -> Result<(), ApiError> {
    if let Some(name) = &body.name {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(bad("name", "name must be 1 to 100 characters"));
        }
        m.name = Set(name.to_owned());
    } else if creating {
        return Err(bad("name", "'name' is required"));
    }
    if let Some(kind) = &body.kind {
        if !KNOWN_TYPES.contains(&kind.as_str()) {
            return Err(bad(
                "type",
                "type must be one of openai, azure, anthropic, gemini",
            ));
        }
        m.kind = Set(kind.clone());
    } else if creating {
        return Err(bad("type", "'type' is required"));
    }
    if let Some(url) = &body.base_url {
        let url = url.trim().trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(bad(
                "base_url",
                "base_url must be an http(s) URL such as https://api.openai.com",
            ));
        }
        m.base_url = Set(url.to_owned());
    } else if creating {
        return Err(bad("base_url", "'base_url' is required"));
    }
    if let Some(models) = &body.models {
        m.models = Set(names(models, "models")?);
    } else if creating {
        return Err(bad("models", "'models' is required"));
    }
    if let Some(mapping) = &body.model_mapping {
        if mapping
            .iter()
            .any(|(a, b)| a.trim().is_empty() || b.trim().is_empty())
        {
            return Err(bad(
                "model_mapping",
                "model_mapping must map names to names",
            ));
        }
        m.model_mapping = Set(serde_json::to_string(mapping).map_err(ApiError::internal)?);
    } else if creating {
        m.model_mapping = Set("{}".to_owned());
    }
    if let Some(groups) = &body.groups {
        m.groups = Set(names(groups, "groups")?);
    } else if creating {
        m.groups = Set(r#"["default"]"#.to_owned());
    }
    if let Some(p) = body.priority {
        m.priority = Set(p);
    } else if creating {
        m.priority = Set(0);
    }
    if let Some(w) = body.weight {
        if !(1..=10_000).contains(&w) {
            return Err(bad("weight", "weight must be 1 to 10000"));
        }
        m.weight = Set(w);
    } else if creating {
        m.weight = Set(1);
    }
    if let Some(h) = &body.headers {
        m.headers = Set(serde_json::to_string(h).map_err(ApiError::internal)?);
    } else if creating {
        m.headers = Set("{}".to_owned());
    }
    if let Some(t) = body.timeout_s {
        if !(1..=3600).contains(&t) {
            return Err(bad("timeout_s", "timeout_s must be 1 to 3600"));
        }
        m.timeout_s = Set(t);
    } else if creating {
        m.timeout_s = Set(300);
    }
    match &body.costs {
        Some(serde_json::Value::Null) => m.costs = Set(None),
        Some(costs) => {
            store::catalog::UpstreamCost::parse_all(costs).map_err(|e| bad("costs", &e))?;
            m.costs = Set(Some(costs.to_string()));
        }
        None if creating => m.costs = Set(None),
        None => {}
    }
    if let Some(s) = &body.status {
        if s != "enabled" && s != "disabled" {
            return Err(bad("status", "status must be enabled or disabled"));
        }
        m.status = Set(s.clone());
        m.disabled_reason = Set(None);
    } else if creating {
        m.status = Set("enabled".to_owned());
    }
    Ok(())
}

fn key_rows(
    state: &AdminState,
    channel_id: i64,
    keys: &[String],
) -> Result<Vec<channel_key::ActiveModel>, ApiError> {
    if keys.is_empty() || keys.iter().any(|k| k.trim().is_empty()) {
        return Err(bad(
            "keys",
            "keys must be a non-empty list of upstream keys",
        ));
    }
    keys.iter()
        .map(|k| {
            let k = k.trim();
            let last4: String = k
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Ok(channel_key::ActiveModel {
                channel_id: Set(channel_id),
                secret: Set(state.secrets.seal(k)?),
                last4: Set(last4),
                status: Set("enabled".to_owned()),
                disabled_reason: Set(None),
                created_at: Set(Utc::now()),
                ..Default::default()
            })
        })
        .collect()
}

async fn keys_of(state: &AdminState, id: i64) -> Result<Vec<channel_key::Model>, ApiError> {
    Ok(channel_key::Entity::find()
        .filter(channel_key::Column::ChannelId.eq(id))
        .order_by_asc(channel_key::Column::Id)
        .all(&state.db)
        .await?)
}

/// A channel with its keys (for their previews and statuses, never their secrets).
pub type ChannelWithKeys = (channel::Model, Vec<channel_key::Model>);

/// Creates a channel with its keys (encrypted at rest).
pub async fn create_channel(
    state: &AdminState,
    who: &AuthUser,
    body: &ChannelBody,
) -> Result<ChannelWithKeys, ApiError> {
    who.require_admin()?;
    let mut m = channel::ActiveModel {
        created_at: Set(Utc::now()),
        ..Default::default()
    };
    apply(body, &mut m, true)?;
    let keys = body
        .keys
        .as_deref()
        .ok_or_else(|| bad("keys", "'keys' is required"))?;
    let txn = state.db.begin().await?;
    let c = m.insert(&txn).await?;
    for k in key_rows(state, c.id, keys)? {
        k.insert(&txn).await?;
    }
    txn.commit().await?;
    state.reload().await;
    tracing::info!(user.id = who.id, channel.id = c.id, "channel created");
    let keys = keys_of(state, c.id).await?;
    Ok((c, keys))
}

/// `POST /api/channels`
pub async fn create(
    state: web::Data<AdminState>,
    who: AuthUser,
    body: web::Json<ChannelBody>,
) -> Result<HttpResponse, ApiError> {
    let (c, keys) = create_channel(&state, &who, &body).await?;
    Ok(HttpResponse::Created().json(channel_json(&c, &keys)))
}

/// Every channel with its keys, oldest first.
pub async fn list_channels(
    state: &AdminState,
    who: &AuthUser,
) -> Result<Vec<ChannelWithKeys>, ApiError> {
    who.require_admin()?;
    let channels = channel::Entity::find()
        .order_by_asc(channel::Column::Id)
        .all(&state.db)
        .await?;
    let keys = channel_key::Entity::find()
        .order_by_asc(channel_key::Column::Id)
        .all(&state.db)
        .await?;
    Ok(channels
        .into_iter()
        .map(|c| {
            let mine: Vec<_> = keys
                .iter()
                .filter(|k| k.channel_id == c.id)
                .cloned()
                .collect();
            (c, mine)
        })
        .collect())
}

/// `GET /api/channels`
pub async fn list(state: web::Data<AdminState>, who: AuthUser) -> Result<HttpResponse, ApiError> {
    let items: Vec<_> = list_channels(&state, &who)
        .await?
        .iter()
        .map(|(c, keys)| channel_json(c, keys))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"total": items.len(), "items": items})))
}

/// One channel with its keys.
pub async fn get_channel(
    state: &AdminState,
    who: &AuthUser,
    id: i64,
) -> Result<ChannelWithKeys, ApiError> {
    who.require_admin()?;
    let c = channel::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((c, keys_of(state, id).await?))
}

/// `GET /api/channels/{id}`
pub async fn get(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let (c, keys) = get_channel(&state, &who, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(channel_json(&c, &keys)))
}

/// Changes any creation field; `keys` replaces all keys.
pub async fn update_channel(
    state: &AdminState,
    who: &AuthUser,
    id: i64,
    body: &ChannelBody,
) -> Result<ChannelWithKeys, ApiError> {
    who.require_admin()?;
    let c = channel::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut m: channel::ActiveModel = c.into();
    apply(body, &mut m, false)?;
    let new_keys = body
        .keys
        .as_deref()
        .map(|keys| key_rows(state, id, keys))
        .transpose()?;
    let txn = state.db.begin().await?;
    let c = m.update(&txn).await?;
    if let Some(rows) = new_keys {
        channel_key::Entity::delete_many()
            .filter(channel_key::Column::ChannelId.eq(id))
            .exec(&txn)
            .await?;
        for k in rows {
            k.insert(&txn).await?;
        }
    }
    txn.commit().await?;
    state.reload().await;
    tracing::info!(user.id = who.id, channel.id = id, "channel changed");
    Ok((c, keys_of(state, id).await?))
}

/// `PATCH /api/channels/{id}`: any creation field; `keys` replaces all keys.
pub async fn patch(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<i64>,
    body: web::Json<ChannelBody>,
) -> Result<HttpResponse, ApiError> {
    let (c, keys) = update_channel(&state, &who, id.into_inner(), &body).await?;
    Ok(HttpResponse::Ok().json(channel_json(&c, &keys)))
}

/// Deletes a channel and its keys.
pub async fn delete_channel(state: &AdminState, who: &AuthUser, id: i64) -> Result<(), ApiError> {
    who.require_admin()?;
    let txn = state.db.begin().await?;
    let gone = channel::Entity::delete_by_id(id).exec(&txn).await?;
    if gone.rows_affected == 0 {
        return Err(ApiError::NotFound);
    }
    channel_key::Entity::delete_many()
        .filter(channel_key::Column::ChannelId.eq(id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    state.reload().await;
    tracing::info!(user.id = who.id, channel.id = id, "channel deleted");
    Ok(())
}

/// `DELETE /api/channels/{id}`
pub async fn delete(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    delete_channel(&state, &who, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The body of `POST /api/channels/{id}/test`: the model to test (else the channel's
/// first).
#[derive(serde::Deserialize, Default)]
pub struct TestBody {
    #[serde(default)]
    model: Option<String>,
}

/// `POST /api/channels/{id}/test`: one small real request; latency or the error.
pub async fn test(
    state: web::Data<AdminState>,
    who: AuthUser,
    id: web::Path<i64>,
    body: Option<web::Json<TestBody>>,
) -> Result<HttpResponse, ApiError> {
    let model = body.and_then(|b| b.into_inner().model);
    let result = test_channel(&state, &who, id.into_inner(), model).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "ok": result.ok,
        "latency_ms": result.latency_ms,
        "model": result.model,
        "error": result.error,
    })))
}

/// Sends one small real request through the channel (the gateway does it, see
/// [`crate::state::ChannelTester`]) and records the latency or the error.
pub async fn test_channel(
    state: &AdminState,
    who: &AuthUser,
    id: i64,
    model: Option<String>,
) -> Result<ChannelTest, ApiError> {
    who.require_admin()?;
    let model = model.filter(|m| !m.trim().is_empty());
    let result = state.tester.test(id, model).await?;
    tracing::info!(
        user.id = who.id,
        channel.id = id,
        ok = result.ok,
        "channel tested"
    );
    Ok(result)
}
