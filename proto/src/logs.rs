//! The log setup the three programs share: human-readable on a terminal (with colours
//! unless `NO_COLOR`), plain text when written to a file or a pipe, one JSON object per
//! line with `--log-format json` (for a log shipper). Levels from `LIFEBOAT_LOG`
//! (`tracing` filter syntax), else the program's default.

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not a log format: text or json")),
        }
    }
}

/// `--log-format`, declared once for the three programs (each flattens it into its
/// command line).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct LogArgs {
    /// How log lines are written: text (plain, or coloured on a terminal) or json (one
    /// object per line).
    #[arg(
        long = "log-format",
        value_name = "LOG_FORMAT",
        global = true,
        default_value = "text",
        env = "LIFEBOAT_LOG_FORMAT"
    )]
    pub format: LogFormat,
}

/// Sends the process's logs to stderr in `format`, at `LIFEBOAT_LOG`'s levels or
/// `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_env("LIFEBOAT_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .init(),
    }
}
