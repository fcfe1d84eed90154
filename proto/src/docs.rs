//! Documentation generated from a program's command-line definition (clap): shell
//! completions and man pages, so they never disagree with `--help`. The three programs'
//! `completions` and `man` commands call these.

use std::path::{Path, PathBuf};

/// The `completions` and `man` commands, the same in the three programs (each flattens
/// them into its own commands and runs them with its own command line).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DocsCmd {
    /// Print this program's shell completion script (e.g. `lifeboat completions bash >
    /// /etc/bash_completion.d/lifeboat`; the same for lifeboat-controller and
    /// lifeboat-agent).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for this program and each of its commands (e.g. lifeboat.1,
    /// lifeboat-backup.1, ...) into a directory (e.g. /usr/local/share/man/man1).
    Man {
        #[arg(long)]
        out: PathBuf,
    },
}

impl DocsCmd {
    /// Runs it for the program `bin`, whose command line is `cmd`.
    pub fn run(&self, cmd: clap::Command, bin: &str) -> std::io::Result<()> {
        match self {
            DocsCmd::Completions { shell } => completions(cmd, bin, *shell),
            DocsCmd::Man { out } => {
                let n = man_pages(&cmd, bin, out).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("writing man pages to {}: {e}", out.display()),
                    )
                })?;
                println!("wrote {n} man pages to {}", out.display());
            }
        }
        Ok(())
    }
}

/// Writes the completion script of `cmd` (the program `bin`) for `shell` to stdout.
pub fn completions(mut cmd: clap::Command, bin: &str, shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut cmd, bin, &mut std::io::stdout());
}

/// Writes `BIN.1` and one page per command and subcommand (`BIN-recover-plan.1`) into
/// `dir`, creating it; returns how many.
pub fn man_pages(cmd: &clap::Command, bin: &str, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut written = 0;
    write_pages(cmd, bin, dir, &mut written)?;
    Ok(written)
}

fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut usize,
) -> std::io::Result<()> {
    let page = cmd
        .clone()
        .display_name(name)
        .bin_name(name.replace('-', " "));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
