//! The console and the JSON admin API (`/api/*`): authentication (argon2id, JWT),
//! users and credits, keys, channels and pricing, each scoped by the caller's role.

pub mod auth;
pub mod bootstrap;
pub mod channels;
pub mod client_ip;
pub mod console;
pub mod error;
pub mod keys;
pub mod ledger;
pub mod login_limit;
pub mod logs;
pub mod margins;
pub mod ops;
pub mod pricing;
pub mod redemptions;
pub mod routes;
pub mod settings;
pub mod state;
pub mod stats;
pub mod tasks;
pub mod users;
pub mod util;

pub use error::ApiError;
pub use routes::configure;
pub use state::{AdminState, ChannelTest, ChannelTester, Reload};
