//! OpenAI's legacy billing endpoints (`/v1/dashboard/billing/subscription` and
//! `/usage`), which chat front ends (NextChat, LobeChat, ChatGPT-Next-Web forks) call
//! with the user's `sk-` key to show "used / total". The shapes and the meaning of the
//! numbers follow one-api / new-api, which those front ends are tested against.

use actix_web::{HttpRequest, HttpResponse, web};
use relay_core::RelayError;
use relay_core::admission::{self, Caller};
use sea_orm::EntityTrait;
use store::entities::{api_key, user};

use crate::relay::{bearer, openai_error};
use crate::state::AppState;

/// Mounts both endpoints, with and without `/v1`: NextChat asks for
/// `{base}/dashboard/billing/…` with the bare origin as its base.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for prefix in ["/v1", ""] {
        cfg.route(
            &format!("{prefix}/dashboard/billing/subscription"),
            web::get().to(subscription),
        )
        .route(
            &format!("{prefix}/dashboard/billing/usage"),
            web::get().to(usage),
        );
    }
}

/// What a key can spend, read fresh from the database (the snapshot only authenticates).
struct Figures {
    /// The total the front end shows, in µc: the key's credit limit, or the user's
    /// balance plus what it has used.
    total: i64,
    /// What has been spent against `total`, in µc.
    used: i64,
    /// The key's expiry (unix seconds), 0 when it never expires.
    access_until: i64,
}

/// For a key with a credit limit, its limit and its own `used`; otherwise the owner's
/// balance + used and the owner's `used`. Either way `total - used` is what is left,
/// which is exactly what front ends compute (`hard_limit_usd - total_usage / 100`).
async fn figures(state: &AppState, caller: &Caller) -> Result<Figures, RelayError> {
    let internal = |e: sea_orm::DbErr| {
        tracing::error!(error = ?e, "billing figures could not be read");
        RelayError::Internal
    };
    let key = api_key::Entity::find_by_id(caller.key.id)
        .one(&state.db)
        .await
        .map_err(internal)?
        .ok_or(RelayError::InvalidApiKey("invalid API key"))?;
    let access_until = key.expires_at.map_or(0, |t| t.timestamp());
    if let Some(limit) = key.credit_limit {
        return Ok(Figures {
            total: limit,
            used: key.used,
            access_until,
        });
    }
    let owner = user::Entity::find_by_id(key.user_id)
        .one(&state.db)
        .await
        .map_err(internal)?
        .ok_or(RelayError::InvalidApiKey("invalid API key"))?;
    Ok(Figures {
        total: owner.balance.saturating_add(owner.used),
        used: owner.used,
        access_until,
    })
}

async fn authorized(state: &AppState, req: &HttpRequest) -> Result<Figures, RelayError> {
    let caller = admission::authenticate(&state.snapshot.load().catalog, bearer(req))?;
    admission::check_ip(&caller, crate::relay::client_ip(state, req))?;
    figures(state, &caller).await
}

/// `GET /v1/dashboard/billing/subscription`: the total in credits as every `*_usd`
/// limit (the display currency, whatever it is), and the key's expiry.
pub async fn subscription(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    match authorized(&state, &req).await {
        Ok(f) => {
            let total = billing::micros_to_credits(f.total);
            HttpResponse::Ok().json(serde_json::json!({
                "object": "billing_subscription",
                "has_payment_method": true,
                "soft_limit_usd": total,
                "hard_limit_usd": total,
                "system_hard_limit_usd": total,
                "access_until": f.access_until,
            }))
        }
        Err(e) => openai_error(&e, ""),
    }
}

/// `GET /v1/dashboard/billing/usage?start_date=&end_date=`: `total_usage` in hundredths
/// of a credit, as OpenAI answered in cents. It is everything spent against the total
/// of `/subscription` (the limited key's `used`, else the owner's `used`), so the dates
/// are accepted and ignored: front ends ask for "this month" but subtract the answer
/// from the all-time total to show what is left, which only a cumulative figure gets
/// right. one-api and new-api answer the same way.
pub async fn usage(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    match authorized(&state, &req).await {
        Ok(f) => HttpResponse::Ok().json(serde_json::json!({
            "object": "list",
            "total_usage": micros_to_hundredths(f.used),
        })),
        Err(e) => openai_error(&e, ""),
    }
}

/// Micro-credits as hundredths of a credit (one division, so as exact as an f64 can be).
fn micros_to_hundredths(micros: i64) -> f64 {
    micros as f64 / (billing::credits::MICROS_PER_CREDIT / 100) as f64
}

#[cfg(test)]
mod tests {
    use super::micros_to_hundredths;

    #[test]
    fn usage_is_in_hundredths_of_a_credit() {
        assert_eq!(micros_to_hundredths(1_000_000), 100.0);
        assert_eq!(micros_to_hundredths(20), 0.002);
        assert_eq!(micros_to_hundredths(0), 0.0);
    }
}
