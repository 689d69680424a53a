//! Admission: who is calling (key and user from the catalog snapshot, no SQL) and
//! whether they may call this model from this address.

use std::net::IpAddr;
use std::sync::Arc;

use billing::Price;
use chrono::Utc;
use store::catalog::{Catalog, ChannelKind, ChannelStatus, KeyEntry, Standing, UserEntry};

use crate::protocol::Protocol;
use crate::{RelayError, Router};

/// A caller that passed authentication.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: Arc<KeyEntry>,
    pub user: Arc<UserEntry>,
}

/// A caller admitted for one model, with what that model costs them.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub caller: Caller,
    pub model: String,
    pub price: Price,
    pub multiplier_ppm: i64,
}

/// Finds the key (given without its `Bearer ` prefix) and its user.
pub fn authenticate(catalog: &Catalog, raw_key: Option<&str>) -> Result<Caller, RelayError> {
    let raw = raw_key
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(RelayError::InvalidApiKey(
            "missing API key: send your sk- key as 'Authorization: Bearer', 'x-api-key' or 'x-goog-api-key'",
        ))?;
    let key = catalog
        .keys
        .get(&store::digest_secret(raw))
        .ok_or(RelayError::InvalidApiKey("invalid API key"))?;
    match key.status {
        Standing::Enabled => {}
        Standing::Disabled => return Err(RelayError::InvalidApiKey("this API key is disabled")),
        Standing::Other => return Err(RelayError::InvalidApiKey("invalid API key")),
    }
    if key.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(RelayError::InvalidApiKey("this API key has expired"));
    }
    let user = catalog
        .users
        .get(&key.user_id)
        .ok_or(RelayError::InvalidApiKey("invalid API key"))?;
    if user.status != Standing::Enabled {
        return Err(RelayError::UserDisabled);
    }
    Ok(Caller {
        key: Arc::clone(key),
        user: Arc::clone(user),
    })
}

/// Checks the caller's address.
pub fn check_ip(caller: &Caller, ip: Option<IpAddr>) -> Result<(), RelayError> {
    if caller.key.allows_ip(ip) {
        Ok(())
    } else {
        Err(RelayError::IpNotAllowed)
    }
}

/// Checks that the caller may use `model` and that it is priced and served by a
/// channel that can serve `proto`.
pub fn admit_model(
    catalog: &Catalog,
    router: &Router,
    caller: &Caller,
    model: &str,
    proto: Protocol,
) -> Result<Admitted, RelayError> {
    admit_where(
        catalog,
        router,
        caller,
        model,
        |k| proto.served_by(k),
        |p| meters(proto, p),
    )
}

/// [`admit_model`] for any kind of work: `served` names the channel types that can do
/// it, `metered` whether a price names the unit it is charged by.
pub fn admit_where(
    catalog: &Catalog,
    router: &Router,
    caller: &Caller,
    model: &str,
    served: impl Fn(ChannelKind) -> bool,
    metered: impl Fn(&Price) -> bool,
) -> Result<Admitted, RelayError> {
    if !caller.key.allows_model(model) {
        return Err(RelayError::ModelNotAllowed(model.to_owned()));
    }
    // A model nobody serves is unknown (404) before it is unpriced (403).
    if !router.serves_where(&caller.user.group, model, &served) {
        // Served, but only by channels that are out of service right now: 503, not 404.
        let resting = catalog.channels.iter().any(|c| {
            served(c.kind)
                && c.status == ChannelStatus::AutoDisabled
                && c.groups.contains(&caller.user.group)
                && (c.models.iter().any(|m| m == model) || c.model_mapping.contains_key(model))
        });
        return Err(if resting {
            RelayError::NoAvailableChannel
        } else {
            RelayError::ModelNotFound(model.to_owned())
        });
    }
    let price = catalog
        .prices
        .get(model)
        .copied()
        .filter(|p| metered(p))
        .ok_or_else(|| RelayError::ModelNotPriced(model.to_owned()))?;
    Ok(Admitted {
        caller: caller.clone(),
        model: model.to_owned(),
        price,
        multiplier_ppm: catalog.group_multiplier(&caller.user.group),
    })
}

/// Whether `price` names the unit `proto` is charged by (a token price above zero, or
/// `per_image`, `per_second`, `per_request` set — `per_request: 0` serves a model free
/// on purpose). A model priced only in another unit is not served: it would be free by
/// accident.
pub fn meters(proto: Protocol, price: &Price) -> bool {
    let tokens = price.input > 0 || price.output > 0;
    price.per_request.is_some()
        || match proto {
            Protocol::OpenAiImages
            | Protocol::OpenAiImageEdits
            | Protocol::OpenAiImageVariations => price.per_image.is_some(),
            Protocol::OpenAiSpeech | Protocol::OpenAiEmbeddings | Protocol::OpenAiModerations => {
                price.input > 0
            }
            Protocol::OpenAiTranscriptions | Protocol::OpenAiTranslations => {
                price.per_second.is_some() || tokens
            }
            Protocol::OpenAiChat
            | Protocol::OpenAiCompletions
            | Protocol::OpenAiFim
            | Protocol::OpenAiResponses
            | Protocol::AnthropicMessages
            | Protocol::GeminiGenerate => tokens,
        }
}

/// The models a caller may call in `proto`: priced, served to its group by a channel
/// that can serve `proto`, allowed by the key.
pub fn visible_models<'a>(
    catalog: &'a Catalog,
    router: &'a Router,
    caller: &Caller,
    proto: Protocol,
) -> Vec<&'a str> {
    router
        .models_for_group_where(&caller.user.group, |k| proto.served_by(k))
        .into_iter()
        .filter(|m| catalog.prices.contains_key(*m) && caller.key.allows_model(m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_priced_only_in_another_unit_is_not_served_free_by_accident() {
        let per_image = Price {
            per_image: Some(40_000),
            ..Price::default()
        };
        assert!(meters(Protocol::OpenAiImages, &per_image));
        assert!(!meters(Protocol::OpenAiChat, &per_image));
        let tokens = Price {
            input: 150_000,
            output: 600_000,
            ..Price::default()
        };
        assert!(meters(Protocol::OpenAiChat, &tokens));
        assert!(!meters(Protocol::OpenAiImages, &tokens));
        assert!(!meters(Protocol::OpenAiChat, &Price::default()));
        // Free on purpose.
        let free = Price {
            per_request: Some(0),
            ..Price::default()
        };
        assert!(meters(Protocol::OpenAiModerations, &free));
    }
}
