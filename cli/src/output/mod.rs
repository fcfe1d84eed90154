//! Human tables and `--json` for listings: the shared helpers here, one module per
//! command group's listings.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};

mod access;
mod fleet;
mod jobs;
mod recovery;
mod snapshots;

pub use access::*;
pub use fleet::*;
pub use jobs::*;
pub use lifeboat_core::units::bytes;
pub use recovery::*;
pub use snapshots::*;

/// Writes one line of output. When the reader has gone away (a pipe into `head` that has
/// read enough), the program ends quietly with status 0: the reader took what it wanted.
/// Any other write error (a full disk behind a redirection) ends it with a message and
/// status 1.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("lifeboat: cannot write the output: {e}");
        std::process::exit(1);
    }
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

/// Prints a listing: a JSON array with `--json`, a table for humans otherwise.
pub fn listing<T>(
    json: bool,
    items: &[T],
    to_json: fn(&T) -> serde_json::Value,
    header: &[&str],
    to_row: fn(&T) -> Vec<String>,
) {
    if json {
        out!(
            "{}",
            serde_json::Value::Array(items.iter().map(to_json).collect())
        );
    } else {
        out!("{}", table(header, items.iter().map(to_row).collect()));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Milliseconds for humans: "850 ms", "12.3 s", "4m 10s".
pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
    }
}
