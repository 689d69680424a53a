//! sea-orm entities, one module per table. Money columns are `i64` micro-credits.

pub mod api_key;
pub mod channel;
pub mod channel_key;
pub mod generation;
pub mod group_multiplier;
pub mod model_price;
pub mod redemption_code;
pub mod setting;
pub mod task;
pub mod transaction;
pub mod user;
