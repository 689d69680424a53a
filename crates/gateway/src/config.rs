//! Configuration from the environment (DESIGN.md "Configuration"); everything optional.

use std::net::IpAddr;
use std::path::PathBuf;

use admin_web::client_ip::TrustedProxies;
use anyhow::Context;
use ipnet::IpNet;

/// The gateway's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// `TOLLGATE_ADDR`: where to listen (port 0 picks a free one).
    pub addr: String,
    /// `DATABASE_URL`: SQLite (default) or Postgres.
    pub database_url: String,
    /// `REDIS_URL`: shared state between instances; unset = in-process.
    pub redis_url: Option<String>,
    /// `TOLLGATE_REDIS_PREFIX`: namespace of every Redis key (default `tollgate`).
    pub redis_prefix: String,
    /// `TOLLGATE_ROOT_PASSWORD`: root's password at first start.
    pub root_password: Option<String>,
    /// `TOLLGATE_JWT_SECRET`: session signing secret; generated and stored when unset.
    pub jwt_secret: Option<String>,
    /// `TOLLGATE_SECRET_KEY`: 32-byte key (hex) that encrypts channel keys at rest.
    pub secret_key: Option<String>,
    /// Where the generated secret key lives when `TOLLGATE_SECRET_KEY` is unset.
    pub data_dir: PathBuf,
    /// `TOLLGATE_MAX_BODY_MB`: request body limit.
    pub max_body_mb: usize,
    /// `TOLLGATE_MAX_UPSTREAM_MB`: the largest upstream answer relayed; a larger one is
    /// the request's problem (`502 upstream_error`, "answer too large").
    pub max_upstream_mb: usize,
    /// `TOLLGATE_WORKERS`: HTTP worker threads (default: one per core).
    pub workers: Option<usize>,
    /// Whether the server handles SIGINT/SIGTERM itself (off in tests).
    pub handle_signals: bool,
    /// `TOLLGATE_MAX_TRIES` (channels tried per request), `TOLLGATE_BREAKER_FAILURES`,
    /// `_WINDOW_S`, `_COOLDOWN_S` (a channel with that many failures within the window
    /// is skipped for the cool-down, then tried once) and `TOLLGATE_HEALTH_INTERVAL_S`
    /// (how often auto-disabled channels are re-tested): the defaults of the tunables an
    /// admin may change at run time (`store::settings`), which win once stored.
    pub tunables: store::settings::Tunables,
    /// `TOLLGATE_LEASE_TTL_S` (Redis only): an instance silent this long is taken for
    /// dead and its reservations are given back.
    pub lease_ttl_s: u64,
    /// `TOLLGATE_TRUSTED_PROXIES`: comma-separated CIDRs of reverse proxies whose
    /// `X-Forwarded-For` is believed; unset = the client is the peer.
    pub trusted_proxies: TrustedProxies,
    /// `TOLLGATE_TASK_POLL_S` (first poll interval of an asynchronous task, slowing to
    /// `TOLLGATE_TASK_POLL_MAX_S` as it ages) and `TOLLGATE_TASK_DEADLINE_S` (an open
    /// task this old expires and its hold is released), `TOLLGATE_TASK_LEASE_S` (how
    /// long a poller holds the tasks it took).
    pub tasks: relay_core::task::TaskSettings,
    /// `TOLLGATE_PUBLIC_URL`: the address clients reach Tollgate at (`https://host`),
    /// under which result URLs are signed; unset, the request's own host.
    pub public_url: Option<String>,
    /// `TOLLGATE_LOG_RETENTION_DAYS`: generation records older than this many days
    /// are deleted (the ledger never is); unset, they are kept.
    pub log_retention_days: Option<u32>,
    /// How often the retention job sweeps (hourly; the first sweep comes a minute
    /// after start, or sooner when this is shorter).
    pub log_retention_every: std::time::Duration,
}

impl Config {
    /// Reads the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let number = |name: &str, default: usize| -> anyhow::Result<usize> {
            var(name).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .with_context(|| format!("{name} must be a whole number"))
            })
        };
        Ok(Config {
            addr: var("TOLLGATE_ADDR").unwrap_or_else(|| "127.0.0.1:3000".to_owned()),
            database_url: var("DATABASE_URL")
                .unwrap_or_else(|| store::db::DEFAULT_DATABASE_URL.to_owned()),
            redis_url: var("REDIS_URL"),
            redis_prefix: var("TOLLGATE_REDIS_PREFIX").unwrap_or_else(|| "tollgate".to_owned()),
            root_password: var("TOLLGATE_ROOT_PASSWORD"),
            jwt_secret: var("TOLLGATE_JWT_SECRET"),
            secret_key: var("TOLLGATE_SECRET_KEY"),
            data_dir: PathBuf::from(var("TOLLGATE_DATA_DIR").unwrap_or_else(|| "data".to_owned())),
            max_body_mb: number("TOLLGATE_MAX_BODY_MB", 32)?,
            max_upstream_mb: number("TOLLGATE_MAX_UPSTREAM_MB", 64)?.max(1),
            tunables: store::settings::Tunables::from_env(var).map_err(anyhow::Error::msg)?,
            workers: var("TOLLGATE_WORKERS")
                .map(|v| v.parse())
                .transpose()
                .context("TOLLGATE_WORKERS must be a whole number")?,
            handle_signals: true,
            lease_ttl_s: u64::try_from(number("TOLLGATE_LEASE_TTL_S", 15)?)
                .unwrap_or(15)
                .max(1),
            trusted_proxies: trusted_proxies(&var("TOLLGATE_TRUSTED_PROXIES").unwrap_or_default())
                .context("TOLLGATE_TRUSTED_PROXIES")?,
            public_url: var("TOLLGATE_PUBLIC_URL"),
            log_retention_days: var("TOLLGATE_LOG_RETENTION_DAYS")
                .map(|v| v.trim().parse::<u32>())
                .transpose()
                .context("TOLLGATE_LOG_RETENTION_DAYS must be a whole number of days")?
                .map(|d| {
                    anyhow::ensure!(
                        (1..=36_500).contains(&d),
                        "TOLLGATE_LOG_RETENTION_DAYS must be 1 to 36500"
                    );
                    Ok(d)
                })
                .transpose()?,
            log_retention_every: std::time::Duration::from_secs(3600),
            tasks: {
                let secs = |name: &str, default: usize| -> anyhow::Result<std::time::Duration> {
                    let n = number(name, default)?;
                    anyhow::ensure!(n >= 1, "{name} must be at least 1");
                    Ok(std::time::Duration::from_secs(u64::try_from(n)?))
                };
                // Bounded, so that no setting can overflow a timestamp or park a
                // task's hold for months.
                let hour = std::time::Duration::from_secs(3600);
                let poll_min = secs("TOLLGATE_TASK_POLL_S", 5)?.min(hour);
                relay_core::task::TaskSettings {
                    poll_min,
                    poll_max: secs("TOLLGATE_TASK_POLL_MAX_S", 60)?.clamp(poll_min, hour),
                    deadline: secs("TOLLGATE_TASK_DEADLINE_S", 86_400)?.min(30 * 24 * hour),
                    // How long a poller holds the tasks it took: after a crash, its
                    // tasks wait this long for another poller.
                    lease: secs("TOLLGATE_TASK_LEASE_S", 900)?.min(hour),
                    ..relay_core::task::TaskSettings::default()
                }
            },
        })
    }

    /// The channel-key encryption key: from the environment, else from
    /// `data/secret.key`, generated there on first start.
    pub fn secret_key_text(&self) -> anyhow::Result<String> {
        if let Some(k) = &self.secret_key {
            return Ok(k.clone());
        }
        let path = self.data_dir.join("secret.key");
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Ok(text.trim().to_owned());
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create {}", self.data_dir.display()))?;
        let key = store::secret::SecretBox::generate_text();
        write_private(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
        tracing::warn!(path = %path.display(), "generated a new secret key for channel keys; back it up");
        Ok(key)
    }
}

/// Comma-separated CIDRs; a bare address is a network of one.
fn trusted_proxies(list: &str) -> anyhow::Result<TrustedProxies> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| anyhow::anyhow!("'{p}' is not a CIDR (10.0.0.0/8) or an IP address"))
        })
        .collect::<anyhow::Result<_>>()
        .map(TrustedProxies::new)
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses_and_junk_is_refused() {
        let t = trusted_proxies(" 10.0.0.0/8, 192.0.2.7 ,").unwrap();
        let nets: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.7/32".parse().unwrap(),
        ];
        assert_eq!(t, TrustedProxies::new(nets));
        assert_eq!(trusted_proxies("").unwrap(), TrustedProxies::default());
        assert!(trusted_proxies("10.0.0.0/8, nonsense").is_err());
    }
}
