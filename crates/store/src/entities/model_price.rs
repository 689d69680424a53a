//! The price of one model. Token prices are micro-credits per 1M tokens; unit prices
//! are micro-credits per unit.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "model_prices")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub model: String,
    pub input: i64,
    pub output: i64,
    pub cached_input: Option<i64>,
    /// Prompt-cache writes; 1.25 × `input` when unset.
    pub cache_write: Option<i64>,
    /// The model's own output ceiling, in tokens: what a hold covers at most.
    pub max_output_tokens: Option<i64>,
    pub per_request: Option<i64>,
    pub per_image: Option<i64>,
    pub per_second: Option<i64>,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
