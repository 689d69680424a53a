//! `gateway`: start Tollgate with the configuration from the environment, or run an
//! operator command (`gateway ledger verify`, `gateway login unlock <username>`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use gateway::{Application, Config};

const USAGE: &str = "usage: gateway                 start the gateway (configured by environment)
       gateway ledger verify   check balance = sum of ledger for every user (exit 1 on a difference)
       gateway login unlock <username>
                               clear the username's login failures in Redis (exit 1 without REDIS_URL:
                               the counters are in the gateway's process, and a restart clears them)";

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    gateway::logging::init(gateway::logging::LogFormat::from_env()?);
    warn_about_the_old_allocator_variable();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::from_env()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            raise_open_file_limit();
            let app = Application::build(config).await?;
            app.run_until_stopped().await?;
            Ok(ExitCode::SUCCESS)
        }
        ["ledger", "verify"] => ledger_verify(&config).await,
        ["login", "unlock", username] => login_unlock(&config, username).await,
        ["-h" | "--help" | "help"] => {
            writeln!(std::io::stdout(), "{USAGE}")?;
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            writeln!(std::io::stderr(), "{USAGE}")?;
            Ok(ExitCode::from(2))
        }
    }
}

/// Prints the verification report as JSON; exit code 1 when anything differs.
async fn ledger_verify(config: &Config) -> anyhow::Result<ExitCode> {
    let db = store::db::connect(&config.database_url)
        .await
        .context("cannot open the database")?;
    let report = billing::verify::verify(&db)
        .await
        .map_err(|e| anyhow::anyhow!("verification failed: {e:?}"))?;
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&report)?
    )?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Clears a username's login failures; exit code 1 when they live in a gateway process
/// this command cannot reach.
async fn login_unlock(config: &Config, username: &str) -> anyhow::Result<ExitCode> {
    let outcome = gateway::cli::login_unlock(config, username).await?;
    writeln!(std::io::stdout(), "{}", outcome.message(username))?;
    Ok(match outcome {
        gateway::cli::Unlock::Cleared => ExitCode::SUCCESS,
        gateway::cli::Unlock::InProcess => ExitCode::FAILURE,
    })
}

/// jemalloc, not glibc's malloc. Measured with `bench/run.sh` (SQLite, interleaved
/// A/B, 6 s runs): idle RSS 45 -> 30 MiB and peak 52 -> 40 MiB, throughput the same or
/// better. glibc kept a login's 19 MiB argon2 buffer for good: its mmap threshold rises
/// to the size of the first such buffer freed, so the next ones come from an arena that
/// is never trimmed. mimalloc was tried and rejected: 52 MiB at start.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Every client connection kept alive (up to 120 s idle), upstream connection and
/// database connection is an open file, and the soft limit a service starts with is
/// often 1,024 (systemd's default) under a hard limit far above it: the soft limit is
/// raised to the hard one, as nginx and Go's runtime do. Failing that, the gateway
/// runs with what it has and says so.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// On Linux jemalloc also serves C's malloc, so it reads `MALLOC_CONF`: the prefixed
/// name that earlier releases documented would now be ignored without a word.
fn warn_about_the_old_allocator_variable() {
    if cfg!(target_os = "linux") && std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
        tracing::warn!("_RJEM_MALLOC_CONF is not read on Linux any more; set MALLOC_CONF instead");
    }
}
