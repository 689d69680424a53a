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
            StoreError::Redis(e) => redis_unavailable(e),
            StoreError::RedisPool(_) => true,
            StoreError::Config(_) | StoreError::Corrupt(_) => false,
        }
    }
}

/// Whether Redis could not serve: unreachable, or up but unable to answer for now
/// (`LOADING` its data, `READONLY` replica after a failover, `MASTERDOWN`, `OOM` at its
/// memory limit). Each passes by itself; none is the request's fault.
fn redis_unavailable(e: &deadpool_redis::redis::RedisError) -> bool {
    use deadpool_redis::redis::{ErrorKind, ServerErrorKind};
    let server_down = matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading | ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown
        )
    );
    server_down
        || e.code() == Some("OOM")
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
}

#[cfg(test)]
mod tests {
    use deadpool_redis::redis::{self, RedisError};

    use super::*;

    /// The error Redis answers with `line` (`-CODE message`).
    fn redis_error(line: &str) -> RedisError {
        redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
            .unwrap()
            .extract_error()
            .unwrap_err()
    }

    #[test]
    fn a_redis_loading_read_only_masterless_or_full_is_unavailable() {
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "READONLY You can't write against a read only replica.",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "OOM command not allowed when used memory > 'maxmemory'.",
        ] {
            let e = StoreError::Redis(redis_error(line));
            assert!(e.is_unavailable(), "{line}");
        }
    }

    #[test]
    fn a_redis_command_error_is_not_an_outage() {
        for line in [
            "ERR wrong number of arguments",
            "NOSCRIPT No matching script",
        ] {
            assert!(
                !StoreError::Redis(redis_error(line)).is_unavailable(),
                "{line}"
            );
        }
    }
}
