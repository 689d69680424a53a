//! Margins (admin): what was charged (revenue), what the serving channels' upstreams
//! charged for it (each generation records its channel's `costs` when it settles),
//! and the difference, grouped by model, channel, UTC day or reseller; and the models
//! whose list price is below a channel's cost.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr};
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect};
use serde::Deserialize;
use store::catalog::UpstreamCost;
use store::entities::{channel, generation, model_price, user};

use crate::auth::AuthUser;
use crate::util::credits;
use crate::{AdminState, ApiError};

/// A time window: from (inclusive), to (exclusive), either open.
pub type Window = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// How margin rows are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    Channel,
    Day,
    /// The customer's reseller (a reseller's own calls count as its own; a customer
    /// of the platform itself is `direct`).
    Reseller,
}

impl GroupBy {
    pub fn parse(text: Option<&str>) -> Result<Self, ApiError> {
        Ok(match text.map(str::trim).unwrap_or("model") {
            "" | "model" => GroupBy::Model,
            "channel" => GroupBy::Channel,
            "day" => GroupBy::Day,
            "reseller" => GroupBy::Reseller,
            _ => {
                return Err(ApiError::invalid(
                    "group_by",
                    "'group_by' must be model, channel, day or reseller",
                ));
            }
        })
    }

    fn key_sql(self, backend: DbBackend) -> &'static str {
        match (self, backend) {
            (GroupBy::Model, _) => "generations.model",
            (GroupBy::Channel, _) => "CAST(generations.channel_id AS TEXT)",
            (GroupBy::Day, DbBackend::Postgres) => {
                "to_char(generations.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            }
            (GroupBy::Day, _) => "substr(generations.created_at, 1, 10)",
            // By user here; folded into resellers afterwards.
            (GroupBy::Reseller, _) => "CAST(generations.user_id AS TEXT)",
        }
    }
}

/// One group's figures, in micro-credits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarginRow {
    /// The model, channel id, `YYYY-MM-DD` or reseller id; `None` for calls with no
    /// channel (refused before any) or no reseller.
    pub key: Option<String>,
    pub requests: i64,
    pub revenue: i64,
    pub upstream_cost: i64,
}

impl MarginRow {
    pub fn margin(&self) -> i64 {
        self.revenue - self.upstream_cost
    }
}

/// A model whose list price is below what a channel serving it pays upstream.
#[derive(Clone, Debug, PartialEq)]
pub struct BelowCost {
    pub model: String,
    pub channel_id: i64,
    pub channel: String,
    /// What was found: `input 0.15 < 0.2`, `ratio 1.1`.
    pub why: String,
}

/// Revenue, upstream cost and margin of the generations made in `[from, to)`, by
/// `group_by`, largest revenue first.
pub async fn margins(
    state: &AdminState,
    who: &AuthUser,
    (from, to): Window,
    group_by: GroupBy,
) -> Result<Vec<MarginRow>, ApiError> {
    who.require_admin()?;
    let key = group_by.key_sql(state.db.get_database_backend());
    let mut find = generation::Entity::find()
        .select_only()
        .column_as(Expr::cust(key), "key")
        .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "requests")
        .column_as(
            Expr::cust("CAST(COALESCE(SUM(generations.cost), 0) AS BIGINT)"),
            "revenue",
        )
        .column_as(
            Expr::cust("CAST(COALESCE(SUM(generations.upstream_cost), 0) AS BIGINT)"),
            "upstream_cost",
        )
        // Only what was served: a refused or failed call costs and earns nothing.
        .filter(generation::Column::Status.eq("success"));
    if let Some(from) = from {
        find = find.filter(generation::Column::CreatedAt.gte(from));
    }
    if let Some(to) = to {
        find = find.filter(generation::Column::CreatedAt.lt(to));
    }
    let rows: Vec<(Option<String>, i64, i64, i64)> = find
        .group_by(Expr::cust(key))
        .order_by(Expr::col(Alias::new("revenue")), Order::Desc)
        .into_tuple()
        .all(&state.db)
        .await?;
    let mut rows: Vec<MarginRow> = rows
        .into_iter()
        .map(|(key, requests, revenue, upstream_cost)| MarginRow {
            key,
            requests,
            revenue,
            upstream_cost,
        })
        .collect();
    if group_by == GroupBy::Reseller {
        rows = by_reseller(state, rows).await?;
    }
    Ok(rows)
}

/// Rows by user folded into rows by reseller: a customer's parent, a reseller itself,
/// `None` for the platform's own customers.
async fn by_reseller(state: &AdminState, rows: Vec<MarginRow>) -> Result<Vec<MarginRow>, ApiError> {
    let users: std::collections::HashMap<i64, (Option<i64>, String)> = user::Entity::find()
        .all(&state.db)
        .await?
        .into_iter()
        .map(|u| (u.id, (u.parent_id, u.role)))
        .collect();
    let mut folded: Vec<MarginRow> = Vec::new();
    for r in rows {
        let id = r.key.as_deref().and_then(|k| k.parse::<i64>().ok());
        let reseller = match id.and_then(|id| users.get(&id).map(|u| (id, u))) {
            Some((_, (Some(parent), _))) => Some(parent.to_string()),
            Some((id, (None, role))) if role == "reseller" => Some(id.to_string()),
            _ => None,
        };
        match folded.iter_mut().find(|f| f.key == reseller) {
            Some(f) => {
                f.requests += r.requests;
                f.revenue += r.revenue;
                f.upstream_cost += r.upstream_cost;
            }
            None => folded.push(MarginRow { key: reseller, ..r }),
        }
    }
    folded.sort_by_key(|r| std::cmp::Reverse(r.revenue));
    Ok(folded)
}

/// Every (model, channel) whose configured upstream cost is above the model's list
/// price: per token (input or output), or as a ratio above 1.
pub async fn below_cost(state: &AdminState) -> Result<Vec<BelowCost>, ApiError> {
    let channels = channel::Entity::find()
        .filter(channel::Column::Costs.is_not_null())
        .all(&state.db)
        .await?;
    let prices = model_price::Entity::find().all(&state.db).await?;
    let mut out = Vec::new();
    for c in channels {
        let costs = c
            .costs
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| UpstreamCost::parse_all(&v).ok())
            .unwrap_or_default();
        let mut models: Vec<_> = costs.into_iter().collect();
        models.sort_by(|a, b| a.0.cmp(&b.0));
        for (model, cost) in models {
            let price = prices.iter().find(|p| p.model == model);
            let why = match (cost, price) {
                (UpstreamCost::Ratio { ppm }, _) if ppm > 1_000_000 => {
                    Some(format!("costs {:.2}× the list price", ppm as f64 / 1e6))
                }
                (UpstreamCost::Tokens { input, output }, Some(p))
                    if input > p.input || output > p.output =>
                {
                    Some(format!(
                        "upstream {} / {} per 1M tokens, list {} / {}",
                        billing::micros_to_credits(input),
                        billing::micros_to_credits(output),
                        billing::micros_to_credits(p.input),
                        billing::micros_to_credits(p.output)
                    ))
                }
                _ => None,
            };
            if let Some(why) = why {
                out.push(BelowCost {
                    model,
                    channel_id: c.id,
                    channel: c.name.clone(),
                    why,
                });
            }
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
pub struct MarginQuery {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub group_by: Option<String>,
}

impl MarginQuery {
    pub fn window(&self) -> Result<Window, ApiError> {
        Ok((
            crate::logs::parse_time("from", self.from.as_deref())?,
            crate::logs::parse_time("to", self.to.as_deref())?,
        ))
    }
}

/// `GET /api/stats/margin?from=&to=&group_by=model|channel|day|reseller` (admin).
pub async fn get(
    state: web::Data<AdminState>,
    who: AuthUser,
    query: web::Query<MarginQuery>,
) -> Result<HttpResponse, ApiError> {
    who.require_admin()?;
    let group_by = GroupBy::parse(query.group_by.as_deref())?;
    let rows = margins(&state, &who, query.window()?, group_by).await?;
    let flagged = below_cost(&state).await?;
    let total = |f: fn(&MarginRow) -> i64| rows.iter().map(f).sum::<i64>();
    let items: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "key": r.key,
                "requests": r.requests,
                "revenue": credits(r.revenue),
                "upstream_cost": credits(r.upstream_cost),
                "margin": credits(r.margin()),
                "below_cost": r.upstream_cost > r.revenue,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "items": items,
        "totals": {
            "requests": total(|r| r.requests),
            "revenue": credits(total(|r| r.revenue)),
            "upstream_cost": credits(total(|r| r.upstream_cost)),
            "margin": credits(total(MarginRow::margin)),
        },
        "priced_below_cost": flagged.iter().map(|b| serde_json::json!({
            "model": b.model, "channel_id": b.channel_id, "channel": b.channel, "why": b.why,
        })).collect::<Vec<_>>(),
    })))
}
