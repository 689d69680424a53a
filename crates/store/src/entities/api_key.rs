//! A customer's `sk-` key; only its SHA-256 is stored.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    #[sea_orm(unique)]
    pub key_hash: String,
    pub preview: String,
    pub status: String,
    pub used: i64,
    /// Bumped by every change of `used` or `credit_limit` (see `users.rev`).
    pub rev: i64,
    pub credit_limit: Option<i64>,
    pub expires_at: Option<DateTimeUtc>,
    /// JSON array of model names, or NULL for "all the group may use".
    pub models: Option<String>,
    /// JSON array of IPs/CIDRs, or NULL for "any".
    pub allow_ips: Option<String>,
    pub rpm: Option<i32>,
    /// Tokens (prompt + completion) per minute, counted at settlement.
    pub tpm: Option<i64>,
    /// Requests in flight at once.
    pub max_concurrency: Option<i32>,
    pub last_used_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
