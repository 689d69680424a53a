//! `gateway`: start Tollgate with the configuration from the environment, or run an
//! operator command (`gateway ledger verify`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use gateway::{Application, Config};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: gateway                 start the gateway (configured by environment)
       gateway ledger verify   check balance = sum of ledger for every user (exit 1 on a difference)";

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::from_env()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            let app = Application::build(config).await?;
            app.run_until_stopped().await?;
            Ok(ExitCode::SUCCESS)
        }
        ["ledger", "verify"] => ledger_verify(&config).await,
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
