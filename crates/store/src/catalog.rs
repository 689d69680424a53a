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
    /// Keys by the SHA-256 of the full key ([`crate::digest_secret`]).
    pub keys: HashMap<[u8; 32], Arc<KeyEntry>>,
    pub users: HashMap<i64, Arc<UserEntry>>,
    pub channels: Vec<Arc<ChannelEntry>>,
    pub prices: HashMap<String, Price>,
    /// Group multipliers in parts per million.
    pub groups: HashMap<String, i64>,
    /// Every channel key that decrypts, whatever its status, by id: (channel id,
    /// secret). Asynchronous tasks are polled with the key that submitted them.
    pub all_keys: HashMap<i64, (i64, ChannelSecret)>,
}

/// What an upstream channel speaks, parsed once when the catalog loads (the relay
/// never compares type strings per request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    OpenAi,
    /// OpenAI's API on an Azure resource (deployments, `api-key`, `api-version`).
    Azure,
    Anthropic,
    Gemini,
    /// Volcengine Ark (Seedance video tasks).
    Volcengine,
    /// Kling (video and image tasks; the key is `access_key|secret_key`).
    Kling,
    /// Alibaba DashScope (Wan video and image tasks).
    Dashscope,
    /// A midjourney-proxy server (`mj-api-secret`).
    Midjourney,
    /// A Suno API server (music and lyrics tasks).
    Suno,
    /// A type this build does not know: such a channel serves nothing.
    Unknown,
}

impl ChannelKind {
    pub fn parse(kind: &str) -> Self {
        match kind {
            "openai" => ChannelKind::OpenAi,
            "azure" => ChannelKind::Azure,
            "anthropic" => ChannelKind::Anthropic,
            "gemini" => ChannelKind::Gemini,
            "volcengine" => ChannelKind::Volcengine,
            "kling" => ChannelKind::Kling,
            "dashscope" => ChannelKind::Dashscope,
            "midjourney" => ChannelKind::Midjourney,
            "suno" => ChannelKind::Suno,
            _ => ChannelKind::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::OpenAi => "openai",
            ChannelKind::Azure => "azure",
            ChannelKind::Anthropic => "anthropic",
            ChannelKind::Gemini => "gemini",
            ChannelKind::Volcengine => "volcengine",
            ChannelKind::Kling => "kling",
            ChannelKind::Dashscope => "dashscope",
            ChannelKind::Midjourney => "midjourney",
            ChannelKind::Suno => "suno",
            ChannelKind::Unknown => "unknown",
        }
    }
}

/// Whether a channel is in service: `enabled`, `auto_disabled` (by its breaker or a
/// dead key; it comes back on its own) or `disabled` (by an operator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelStatus {
    Enabled,
    AutoDisabled,
    Disabled,
}

impl ChannelStatus {
    /// Anything but the two known resting states reads as disabled.
    pub fn parse(status: &str) -> Self {
        match status {
            "enabled" => ChannelStatus::Enabled,
            "auto_disabled" => ChannelStatus::AutoDisabled,
            _ => ChannelStatus::Disabled,
        }
    }
}

/// A model's price, read once when the catalog loads. Token prices are micro-credits
/// per 1M tokens (equal to credits per 1M tokens × 10⁶); unit prices are micro-credits
/// per unit. What it costs is `billing`'s to say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    pub input: i64,
    pub output: i64,
    pub cached_input: Option<i64>,
    /// Prompt-cache writes; unset means 1.25 × `input` (Anthropic's list ratio).
    pub cache_write: Option<i64>,
    pub per_request: Option<i64>,
    pub per_image: Option<i64>,
    pub per_second: Option<i64>,
    /// The model's own output ceiling in tokens, when known: holds never assume more.
    pub max_output_tokens: Option<i64>,
}

impl From<&model_price::Model> for Price {
    fn from(m: &model_price::Model) -> Self {
        Price {
            input: m.input,
            output: m.output,
            cached_input: m.cached_input,
            cache_write: m.cache_write,
            max_output_tokens: m.max_output_tokens,
            per_request: m.per_request,
            per_image: m.per_image,
            per_second: m.per_second,
        }
    }
}

/// The three roles of API.md §1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Reseller,
    Customer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "reseller" => Some(Role::Reseller),
            "customer" => Some(Role::Customer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reseller => "reseller",
            Role::Customer => "customer",
        }
    }
}

/// Whether a customer key or a user may be used: anything but `enabled` may not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Enabled,
    Disabled,
    /// A status this build does not know (treated as not usable).
    Other,
}

impl Standing {
    pub fn parse(status: &str) -> Self {
        match status {
            "enabled" => Standing::Enabled,
            "disabled" => Standing::Disabled,
            _ => Standing::Other,
        }
    }
}

/// A customer key as admission sees it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub status: Standing,
    pub expires_at: Option<DateTime<Utc>>,
    pub models: Option<HashSet<String>>,
    pub allow_ips: Option<Vec<IpNet>>,
    pub rpm: Option<u32>,
    /// Tokens per minute (prompt + completion, counted at settlement).
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub max_concurrency: Option<u32>,
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
    /// `None`: a role this build does not know.
    pub role: Option<Role>,
    pub group: String,
    pub parent_id: Option<i64>,
    pub status: Standing,
    pub balance: i64,
    pub used: i64,
}

/// An upstream channel with its decrypted keys. Its `Debug` shows no key and no
/// header value (custom headers often carry credentials).
pub struct ChannelEntry {
    pub id: i64,
    pub name: String,
    pub kind: ChannelKind,
    pub base_url: String,
    pub models: Vec<String>,
    pub model_mapping: HashMap<String, String>,
    pub groups: Vec<String>,
    pub priority: i32,
    pub weight: u32,
    pub headers: Vec<(String, String)>,
    pub timeout_s: u64,
    pub status: ChannelStatus,
    pub keys: Vec<ChannelSecret>,
    /// Round-robin position over `keys`.
    pub next_key: AtomicUsize,
    /// What the upstream charges per model (for margins).
    pub costs: HashMap<String, UpstreamCost>,
    /// The base URL and headers as they go on the wire, built from the fields above.
    pub wire: crate::wire::Wire,
}

/// What an upstream charges for a model: micro-credits per 1M input and output
/// tokens, or a share of Tollgate's list price (parts per million).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamCost {
    Tokens { input: i64, output: i64 },
    Ratio { ppm: i64 },
}

impl UpstreamCost {
    /// Reads one model's cost as the API takes it: `{input, output}` in credits per
    /// 1M tokens, or `{ratio}`; anything else (negative, not a number) is an error.
    pub fn parse(v: &serde_json::Value) -> Result<Self, String> {
        let number = |name: &str| -> Result<Option<i64>, String> {
            match v.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(n) => n
                    .as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f <= 1e9)
                    .map(|f| Some((f * 1_000_000.0).round() as i64))
                    .ok_or_else(|| format!("'{name}' must be a number of credits, 0 or more")),
            }
        };
        match (number("input")?, number("output")?, number("ratio")?) {
            (None, None, Some(ppm)) => Ok(UpstreamCost::Ratio { ppm }),
            (input, output, None) if input.is_some() || output.is_some() => {
                Ok(UpstreamCost::Tokens {
                    input: input.unwrap_or(0),
                    output: output.unwrap_or(0),
                })
            }
            _ => Err("a cost is {input, output} (credits per 1M tokens) or {ratio}".into()),
        }
    }

    /// Parses a channel's `costs` object (model -> cost).
    pub fn parse_all(v: &serde_json::Value) -> Result<HashMap<String, Self>, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| "costs must be an object: model -> cost".to_owned())?;
        obj.iter()
            .map(|(model, c)| {
                UpstreamCost::parse(c)
                    .map(|c| (model.clone(), c))
                    .map_err(|e| format!("costs.{model}: {e}"))
            })
            .collect()
    }
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

/// One upstream key of a channel. Its `Debug` shows the id only.
#[derive(Clone)]
pub struct ChannelSecret {
    pub id: i64,
    pub secret: String,
    /// The header that carries it, built when the catalog loads
    /// ([`ChannelKind::auth_header`]).
    pub auth: Option<(http::HeaderName, http::HeaderValue)>,
}

impl ChannelSecret {
    /// Key `id` of a channel of `kind`.
    pub fn new(kind: ChannelKind, id: i64, secret: String) -> Self {
        ChannelSecret {
            id,
            auth: kind.auth_header(&secret),
            secret,
        }
    }
}

impl std::fmt::Debug for ChannelSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSecret")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for ChannelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ChannelEntry")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &without_credentials(&self.base_url))
            .field("models", &self.models)
            .field("model_mapping", &self.model_mapping)
            .field("groups", &self.groups)
            .field("priority", &self.priority)
            .field("weight", &self.weight)
            .field("header_names", &header_names)
            .field("timeout_s", &self.timeout_s)
            .field("status", &self.status)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// A base URL without what may carry a secret: user info and the query string.
fn without_credentials(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => url.to_owned(),
    }
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
        // Every key, whatever its status: only enabled ones serve new requests, but a
        // task submitted with a key that was disabled since is still polled and its
        // content fetched with that key (the upstream knows the task only there).
        let channel_keys = channel_key::Entity::find().all(db).await?;
        let prices = model_price::Entity::find().all(db).await?;
        let groups = group_multiplier::Entity::find().all(db).await?;

        let kinds: HashMap<i64, ChannelKind> = channels
            .iter()
            .map(|c| (c.id, ChannelKind::parse(&c.kind)))
            .collect();
        let mut secrets_by_channel: HashMap<i64, Vec<ChannelSecret>> = HashMap::new();
        let mut all_keys: HashMap<i64, (i64, ChannelSecret)> = HashMap::new();
        for k in channel_keys {
            let kind = kinds
                .get(&k.channel_id)
                .copied()
                .unwrap_or(ChannelKind::Unknown);
            match secrets.open(&k.secret) {
                Ok(secret) => {
                    let secret = ChannelSecret::new(kind, k.id, secret);
                    if k.status == "enabled" {
                        secrets_by_channel
                            .entry(k.channel_id)
                            .or_default()
                            .push(secret.clone());
                    }
                    all_keys.insert(k.id, (k.channel_id, secret));
                }
                Err(e) => {
                    tracing::error!(channel.id = k.channel_id, channel_key.id = k.id, error = %e,
                    "channel key cannot be decrypted; is TOLLGATE_SECRET_KEY the one it was stored with?")
                }
            }
        }

        Ok(Catalog {
            keys: keys
                .into_iter()
                .filter_map(|k| {
                    let mut digest = [0_u8; 32];
                    if hex::decode_to_slice(&k.key_hash, &mut digest).is_err() {
                        tracing::error!(
                            key.id = k.id,
                            "stored key hash is not SHA-256 hex; the key cannot be used"
                        );
                        return None;
                    }
                    Some((digest, Arc::new(key_entry(k))))
                })
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
            prices: prices
                .into_iter()
                .map(|p| (p.model.clone(), Price::from(&p)))
                .collect(),
            groups: groups
                .into_iter()
                .map(|g| (g.name, g.multiplier_ppm))
                .collect(),
            all_keys,
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
        status: Standing::parse(&k.status),
        expires_at: k.expires_at,
        models: json_list(k.models.as_deref()).map(|m| m.into_iter().collect()),
        allow_ips,
        rpm: k.rpm.and_then(|r| u32::try_from(r).ok()),
        tpm: k.tpm.and_then(|t| u64::try_from(t).ok()),
        max_concurrency: k.max_concurrency.and_then(|c| u32::try_from(c).ok()),
        credit_limit: k.credit_limit,
        used: k.used,
    }
}

fn user_entry(u: user::Model) -> UserEntry {
    UserEntry {
        id: u.id,
        username: u.username,
        role: Role::parse(&u.role),
        group: u.group_name,
        parent_id: u.parent_id,
        status: Standing::parse(&u.status),
        balance: u.balance,
        used: u.used,
    }
}

/// A channel row and its decrypted keys as the relay uses them.
pub fn channel_entry_from(c: channel::Model, keys: Vec<ChannelSecret>) -> ChannelEntry {
    let headers: HashMap<String, String> = serde_json::from_str(&c.headers).unwrap_or_default();
    let headers: Vec<(String, String)> = headers.into_iter().collect();
    let kind = ChannelKind::parse(&c.kind);
    ChannelEntry {
        id: c.id,
        name: c.name,
        kind,
        wire: crate::wire::Wire::of(kind, &c.base_url, &headers),
        base_url: c.base_url,
        models: serde_json::from_str(&c.models).unwrap_or_default(),
        model_mapping: serde_json::from_str(&c.model_mapping).unwrap_or_default(),
        groups: serde_json::from_str(&c.groups).unwrap_or_default(),
        priority: c.priority,
        weight: u32::try_from(c.weight).unwrap_or(1),
        headers,
        timeout_s: u64::try_from(c.timeout_s).unwrap_or(300),
        status: ChannelStatus::parse(&c.status),
        keys,
        next_key: AtomicUsize::new(0),
        costs: c
            .costs
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| UpstreamCost::parse_all(&v).ok())
            .unwrap_or_default(),
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

    #[test]
    fn debug_output_of_a_channel_shows_no_key_header_value_or_url_credentials() {
        let channel = ChannelEntry {
            id: 7,
            name: "main".into(),
            kind: ChannelKind::OpenAi,
            base_url: "https://user:pa55word@api.example.com/v1?key=AIzaSecretInQuery".into(),
            models: vec!["gpt-4o-mini".into()],
            model_mapping: HashMap::new(),
            groups: vec!["default".into()],
            priority: 0,
            weight: 1,
            headers: vec![("X-Upstream-Token".into(), "hdr-secret-value".into())],
            timeout_s: 60,
            status: ChannelStatus::Enabled,
            keys: vec![ChannelSecret::new(
                ChannelKind::OpenAi,
                3,
                "sk-live-supersecret".into(),
            )],
            next_key: AtomicUsize::new(0),
            costs: Default::default(),
            wire: Default::default(),
        };
        let shown = format!("{channel:?} {:#?}", channel.keys[0]);
        for secret in [
            "sk-live-supersecret",
            "hdr-secret-value",
            "pa55word",
            "AIzaSecretInQuery",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("X-Upstream-Token") && shown.contains("id: 3"),
            "{shown}"
        );
        assert!(shown.contains("https://api.example.com/v1"), "{shown}");
    }
}
