//! The billing crate's one error type.

use store::StoreError;

/// Why a money operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The user's balance (or the key's credit limit) cannot cover the amount.
    #[error("insufficient balance")]
    Insufficient,
    /// An amount given by a client is not a valid credit amount.
    #[error("invalid amount: {0}")]
    InvalidAmount(String),
    #[error("storage error")]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for BillingError {
    fn from(e: sea_orm::DbErr) -> Self {
        BillingError::Store(StoreError::Db(e))
    }
}

impl From<deadpool_redis::redis::RedisError> for BillingError {
    fn from(e: deadpool_redis::redis::RedisError) -> Self {
        BillingError::Store(StoreError::Redis(e))
    }
}

impl From<deadpool_redis::PoolError> for BillingError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        BillingError::Store(StoreError::RedisPool(e))
    }
}

impl BillingError {
    /// A stable code for API answers and logs.
    pub fn code(&self) -> &'static str {
        match self {
            BillingError::Insufficient => "insufficient_balance",
            BillingError::InvalidAmount(_) => "invalid_amount",
            BillingError::Store(e) => e.code(),
        }
    }
}
