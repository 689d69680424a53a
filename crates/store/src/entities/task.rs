//! `tasks`: one asynchronous job (a video, later a drawing or a song), from submission to
//! its final state. See `migrations/src/m20261205_000001_tasks.rs`.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tasks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: i64,
    pub key_id: i64,
    pub family: String,
    pub action: String,
    pub model: String,
    pub parent_id: Option<String>,
    pub channel_id: Option<i64>,
    pub channel_key_id: Option<i64>,
    pub upstream_model: Option<String>,
    pub upstream_task_id: Option<String>,
    pub upstream_path: Option<String>,
    pub state: String,
    pub upstream_status: Option<String>,
    pub progress: i32,
    pub pricing: String,
    pub held: i64,
    pub charged: i64,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub meta: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    pub next_poll_at: DateTimeUtc,
    pub attempts: i32,
    pub deadline_at: DateTimeUtc,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTimeUtc>,
    pub deleted_at: Option<DateTimeUtc>,
    pub hook_attempts: i32,
    pub hook_next_at: Option<DateTimeUtc>,
    pub version: i64,
}

impl ActiveModelBehavior for ActiveModel {}
