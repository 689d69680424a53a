//! Operator commands run from the `gateway` binary beside a running deployment
//! (`gateway login unlock <username>`), on the same shared state it uses.

use anyhow::Context;
use store::Shared;

use crate::Config;

/// What `gateway login unlock` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlock {
    /// The username's failure count is gone from Redis: every instance lets it log in.
    Cleared,
    /// No Redis is configured: the counters live inside the gateway's own process,
    /// where this command cannot reach them; restarting the gateway clears them.
    InProcess,
}

impl Unlock {
    /// The line the command prints for the operator.
    pub fn message(self, username: &str) -> String {
        match self {
            Unlock::Cleared => format!("login failures of '{username}' cleared"),
            Unlock::InProcess => format!(
                "REDIS_URL is not set: the login counters live in the running gateway; \
                 restart it to clear those of '{username}'"
            ),
        }
    }
}

/// Clears the per-username login failure count of `username` in the Redis of
/// `config` (`REDIS_URL`, `TOLLGATE_REDIS_PREFIX`), so a user locked out from every
/// address it has not logged in from can log in again. Per-IP counts stay.
pub async fn login_unlock(config: &Config, username: &str) -> anyhow::Result<Unlock> {
    let Some(url) = &config.redis_url else {
        return Ok(Unlock::InProcess);
    };
    let shared = Shared::redis(url, &config.redis_prefix)
        .await
        .context("cannot reach Redis at REDIS_URL")?;
    admin_web::login_limit::unlock(&shared, username)
        .await
        .map_err(|e| anyhow::anyhow!("cannot clear the login failures: {e}"))?;
    tracing::info!("login failures of one username cleared by the operator");
    Ok(Unlock::Cleared)
}
