//! The process's log output: human lines (the default) or one JSON object a line
//! (`TOLLGATE_LOG_FORMAT=json`) for a log system, on stdout; colours only when stdout
//! is a terminal. Every line of a relay request carries its span (generation id, key
//! id, model, channel), so a request is found by its generation id.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The log format `TOLLGATE_LOG_FORMAT` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `text` (or unset) or `json`; anything else is an error naming the variable.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("TOLLGATE_LOG_FORMAT").as_deref() {
            Err(_) | Ok("" | "text") => Ok(LogFormat::Text),
            Ok("json") => Ok(LogFormat::Json),
            Ok(other) => anyhow::bail!("TOLLGATE_LOG_FORMAT must be text or json, not '{other}'"),
        }
    }
}

/// Installs the process's subscriber (`RUST_LOG` filters, `info` by default).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}
