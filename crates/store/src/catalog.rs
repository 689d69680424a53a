//! The catalog: keys, users, channels and prices loaded from the database into one
//! immutable snapshot. The hot path reads it instead of SQL; every write through the
//! API reloads it and the bus tells the other instances to do the same.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use crate::StoreError;
use crate::entities::{api_key, channel, channel_key, group_multiplier, model_price, user};
use crate::secret::SecretBox;

/// Everything the relay needs to admit and route a request.
#[derive(Default)]
pub struct Catalog {
    /// Keys by the SHA-256 hex of the full key.
    pub keys: HashMap<String, Arc<KeyEntry>>,
    pub users: HashMap<i64, Arc<UserEntry>>,
    pub channels: Vec<Arc<ChannelEntry>>,
    pub prices: HashMap<String, model_price::Model>,
    /// Group multipliers in parts per million.
    pub groups: HashMap<String, i64>,
}

/// A customer key as admission sees it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub models: Option<HashSet<String>>,
    pub allow_ips: Option<Vec<IpNet>>,
    pub rpm: Option<u32>,
    pub credit_limit: Option<i64>,
    pub used: i64,
}

impl KeyEntry {
    /// Whether a request from `ip` may use this key.
    pub fn allows_ip(&self, ip: Option<IpAddr>) -> bool {
        match (&self.allow_ips, ip) {
            (None, _) => true,
            (Some(nets), Some(ip)) => nets.iter().any(|n| n.contains(&ip)),
            (Some(_), None) => false,
        }
    }

    /// Whether this key may call `model` (the owner's group is checked by routing).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// A user as admission and scoping see it.
#[derive(Debug)]
pub struct UserEntry {
    pub id: i64,
    pub username: String,
    pub role: String,
    pub group: String,
    pub parent_id: Option<i64>,
    pub status: String,
    pub balance: i64,
    pub used: i64,
}

/// An upstream channel with its decrypted keys.
#[derive(Debug)]
pub struct ChannelEntry {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub models: Vec<String>,
    pub model_mapping: HashMap<String, String>,
    pub groups: Vec<String>,
    pub priority: i32,
    pub weight: u32,
    pub headers: Vec<(String, String)>,
    pub timeout_s: u64,
    pub status: String,
    pub keys: Vec<ChannelSecret>,
    /// Round-robin position over `keys`.
    pub next_key: AtomicUsize,
}

impl ChannelEntry {
    /// The name this channel's upstream knows `model` by (its `model_mapping`, else the
    /// same name).
    pub fn upstream_model(&self, model: &str) -> String {
        self.model_mapping
            .get(model)
            .cloned()
            .unwrap_or_else(|| model.to_owned())
    }

    /// The next key in rotation that is not in `skip`.
    pub fn rotate_key(&self, skip: &[i64]) -> Option<&ChannelSecret> {
        let n = self.keys.len();
        let start = self.next_key.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.keys[(start + i) % n])
            .find(|k| !skip.contains(&k.id))
    }
}

/// One usable upstream key of a channel.
#[derive(Debug)]
pub struct ChannelSecret {
    pub id: i64,
    pub secret: String,
}

impl Catalog {
    /// Loads the whole catalog. Channel keys that do not decrypt are left out (and logged).
    pub async fn load(db: &DatabaseConnection, secrets: &SecretBox) -> Result<Self, StoreError> {
        let users = user::Entity::find().all(db).await?;
        let keys = api_key::Entity::find()
            .filter(api_key::Column::Status.ne("deleted"))
            .all(db)
            .await?;
        let channels = channel::Entity::find().all(db).await?;
        let channel_keys = channel_key::Entity::find()
            .filter(channel_key::Column::Status.eq("enabled"))
            .all(db)
            .await?;
        let prices = model_price::Entity::find().all(db).await?;
        let groups = group_multiplier::Entity::find().all(db).await?;

        let mut secrets_by_channel: HashMap<i64, Vec<ChannelSecret>> = HashMap::new();
        for k in channel_keys {
            match secrets.open(&k.secret) {
                Ok(secret) => secrets_by_channel
                    .entry(k.channel_id)
                    .or_default()
                    .push(ChannelSecret { id: k.id, secret }),
                Err(e) => {
                    tracing::error!(channel.id = k.channel_id, channel_key.id = k.id, error = %e,
                    "channel key cannot be decrypted; is TOLLGATE_SECRET_KEY the one it was stored with?")
                }
            }
        }

        Ok(Catalog {
            keys: keys
                .into_iter()
                .map(|k| (k.key_hash.clone(), Arc::new(key_entry(k))))
                .collect(),
            users: users
                .into_iter()
                .map(|u| (u.id, Arc::new(user_entry(u))))
                .collect(),
            channels: channels
                .into_iter()
                .map(|c| {
                    let keys = secrets_by_channel.remove(&c.id).unwrap_or_default();
                    Arc::new(channel_entry_from(c, keys))
                })
                .collect(),
            prices: prices.into_iter().map(|p| (p.model.clone(), p)).collect(),
            groups: groups
                .into_iter()
                .map(|g| (g.name, g.multiplier_ppm))
                .collect(),
        })
    }

    /// The multiplier of `group` in parts per million (1.0 when unset).
    pub fn group_multiplier(&self, group: &str) -> i64 {
        self.groups.get(group).copied().unwrap_or(1_000_000)
    }
}

/// Parses a JSON array of IPs or CIDRs; a bare IP becomes a host network.
pub fn parse_ip_list(items: &[String]) -> Result<Vec<IpNet>, String> {
    items
        .iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("'{s}' is not an IP address or CIDR"))
        })
        .collect()
}

fn json_list(text: Option<&str>) -> Option<Vec<String>> {
    text.and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
}

fn key_entry(k: api_key::Model) -> KeyEntry {
    let allow_ips = json_list(k.allow_ips.as_deref()).map(|ips| {
        parse_ip_list(&ips).unwrap_or_else(|e| {
            tracing::error!(key.id = k.id, error = %e, "stored allow_ips is invalid; denying all");
            Vec::new()
        })
    });
    KeyEntry {
        id: k.id,
        user_id: k.user_id,
        name: k.name,
        status: k.status,
        expires_at: k.expires_at,
        models: json_list(k.models.as_deref()).map(|m| m.into_iter().collect()),
        allow_ips,
        rpm: k.rpm.and_then(|r| u32::try_from(r).ok()),
        credit_limit: k.credit_limit,
        used: k.used,
    }
}

fn user_entry(u: user::Model) -> UserEntry {
    UserEntry {
        id: u.id,
        username: u.username,
        role: u.role,
        group: u.group_name,
        parent_id: u.parent_id,
        status: u.status,
        balance: u.balance,
        used: u.used,
    }
}

/// A channel row and its decrypted keys as the relay uses them.
pub fn channel_entry_from(c: channel::Model, keys: Vec<ChannelSecret>) -> ChannelEntry {
    let headers: HashMap<String, String> = serde_json::from_str(&c.headers).unwrap_or_default();
    ChannelEntry {
        id: c.id,
        name: c.name,
        kind: c.kind,
        base_url: c.base_url,
        models: serde_json::from_str(&c.models).unwrap_or_default(),
        model_mapping: serde_json::from_str(&c.model_mapping).unwrap_or_default(),
        groups: serde_json::from_str(&c.groups).unwrap_or_default(),
        priority: c.priority,
        weight: u32::try_from(c.weight).unwrap_or(1),
        headers: headers.into_iter().collect(),
        timeout_s: u64::try_from(c.timeout_s).unwrap_or(300),
        status: c.status,
        keys,
        next_key: AtomicUsize::new(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_lists_accept_addresses_and_cidrs_and_reject_words() {
        let nets = parse_ip_list(&["10.0.0.0/8".into(), "127.0.0.1".into(), "::1".into()]).unwrap();
        assert_eq!(nets.len(), 3);
        assert!(nets[1].contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
        assert!(parse_ip_list(&["localhost".into()]).is_err());
    }
}
