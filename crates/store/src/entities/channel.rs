//! An upstream provider account that serves some models to some groups.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "channels")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub name: String,
    /// `openai`, `azure`, `anthropic`, `gemini` (API.md calls it `type`).
    pub kind: String,
    pub base_url: String,
    /// JSON array of model names.
    pub models: String,
    /// JSON object alias -> upstream model.
    pub model_mapping: String,
    /// JSON array of group names.
    pub groups: String,
    pub priority: i32,
    pub weight: i32,
    /// JSON object of extra request headers.
    pub headers: String,
    pub timeout_s: i32,
    pub status: String,
    pub response_ms: Option<i32>,
    pub last_test_at: Option<DateTimeUtc>,
    pub last_error: Option<String>,
    pub disabled_reason: Option<String>,
    pub created_at: DateTimeUtc,
    /// JSON object model -> `{input, output}` (credits per 1M tokens) or `{ratio}` (of
    /// the list price): what the upstream charges, for margins.
    pub costs: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}
