//! Money for Tollgate: prices and metering (usage -> cost in micro-credits), the
//! wallets that admit requests without SQL, and the batched writer that commits
//! charges, ledger rows and generations together.

pub mod accounts;
pub mod credits;
pub mod error;
pub mod images;
pub mod ledger;
pub mod metrics;
pub mod price;
pub mod redemption;
pub mod task;
mod turns;
pub mod verify;
pub mod wallet;

pub use credits::{credits_to_micros, micros_to_credits};
pub use error::BillingError;
pub use ledger::{Attempt, Charge, GenerationRecord, LedgerWriter};
pub use price::{Cost, Price, Usage};
pub use wallet::{Account, Hold, Synced, Wallet};
