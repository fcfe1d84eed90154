//! `lifeboat`: the operator's command line.

/// `println!` for the program's output: a reader that went away (`lifeboat snapshots | head`)
/// ends the program quietly instead of a panic; see [`output::write_line`].
macro_rules! out {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

mod args;
mod commands;
mod connect;
mod dashboard;
mod output;

use clap::Parser;

use crate::args::Cli;

#[tokio::main]
async fn main() {
    // Usage errors exit 1, as every other refusal does; exit 2 is for failed jobs, failed
    // verifications and overdue devices (README). Help and version exit 0.
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 })
    });
    // Warnings and errors only, `lifeboat up` included: it prints its own summary, not the
    // controller's and agent's INFO lines (LIFEBOAT_LOG=info shows them).
    lifeboat_proto::logs::init(cli.log.format, "warn");
    lifeboat_proto::transport::install_crypto_provider();
    let code = match commands::dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lifeboat: {}", one_line(&e));
            1
        }
    };
    std::process::exit(code);
}

/// An error and its causes on one line, without repeating a cause already in the message.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for c in e.chain() {
        let m = c.to_string();
        if s.contains(&m) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&m);
    }
    s
}
