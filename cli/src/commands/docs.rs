//! `lifeboat completions` and `lifeboat man`: generated from `args.rs`
//! (`lifeboat_proto::docs`).

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::args::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    lifeboat_proto::docs::completions(Cli::command(), "lifeboat", shell);
    Ok(())
}

/// Writes `lifeboat.1` and one page per command and subcommand into `dir`.
pub fn man_pages(dir: &Path) -> Result<()> {
    let n = lifeboat_proto::docs::man_pages(&Cli::command(), "lifeboat", dir)
        .with_context(|| format!("writing man pages to {}", dir.display()))?;
    println!("wrote {n} man pages to {}", dir.display());
    Ok(())
}
