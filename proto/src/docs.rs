//! Documentation generated from a program's command-line definition (clap): shell
//! completions and man pages, so they never disagree with `--help`. The three programs'
//! `completions` and `man` commands call these.

use std::path::Path;

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
