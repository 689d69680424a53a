//! The store's one error type.

/// What can go wrong below the domain logic: the database, Redis, or a stored value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[from] sea_orm::DbErr),
    #[error("redis error")]
    Redis(#[from] deadpool_redis::redis::RedisError),
    #[error("redis pool error")]
    RedisPool(#[from] deadpool_redis::PoolError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Db(_) => "db",
            StoreError::Redis(_) => "redis",
            StoreError::RedisPool(_) => "redis_pool",
            StoreError::Config(_) => "config",
            StoreError::Corrupt(_) => "corrupt",
        }
    }

    /// Whether the database or Redis could not be reached (an outage: the caller
    /// answers 503 and retries later), as opposed to a query that was refused.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) => crate::db::is_unreachable(e),
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
            }
            StoreError::RedisPool(_) => true,
            StoreError::Config(_) | StoreError::Corrupt(_) => false,
        }
    }
}
