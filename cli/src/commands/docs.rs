//! Documentation generated from the command line's definition: shell completions and man
//! pages, so they never disagree with `--help`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::args::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "lifeboat", &mut std::io::stdout());
    Ok(())
}

/// Writes `lifeboat.1` and one page per command and subcommand (`lifeboat-recover-plan.1`)
/// into `dir`, creating it.
pub fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    let mut written = 0usize;
    write_pages(&cmd, "lifeboat", dir, &mut written)?;
    println!("wrote {written} man pages to {}", dir.display());
    Ok(())
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path, written: &mut usize) -> Result<()> {
    let page = cmd
        .clone()
        .display_name(name)
        .bin_name(name.replace('-', " "));
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .with_context(|| format!("rendering {name}.1"))?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
