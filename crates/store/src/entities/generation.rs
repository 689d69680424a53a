//! One relay request, successful or not, as the customer can look it up.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "generations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub upstream_id: Option<String>,
    pub user_id: i64,
    pub key_id: i64,
    pub channel_id: Option<i64>,
    pub provider_name: Option<String>,
    pub model: String,
    pub upstream_model: Option<String>,
    pub endpoint: String,
    pub streamed: bool,
    pub cancelled: bool,
    pub finish_reason: Option<String>,
    pub tokens_prompt: i64,
    pub tokens_completion: i64,
    pub tokens_cached: i64,
    pub tokens_reasoning: i64,
    /// Prompt tokens written to the provider's cache (Anthropic), priced as `cache_write`.
    pub tokens_cache_write: i64,
    pub num_media: i64,
    pub latency_ms: Option<i64>,
    pub generation_time_ms: Option<i64>,
    pub cost: i64,
    pub status: String,
    pub status_code: i32,
    pub error: Option<String>,
    pub client_ip: Option<String>,
    /// JSON array of attempts (channel, status, latency, error class).
    pub attempts: Option<String>,
    pub created_at: DateTimeUtc,
    /// What the serving channel's upstream charged for it (its `costs`), in
    /// micro-credits; 0 when the channel names no cost.
    pub upstream_cost: i64,
}

impl ActiveModelBehavior for ActiveModel {}
