//! `mcr generate-docs DIR` (hidden): the man pages and shell completions the Debian
//! package installs (packaging/deb/build.sh), generated from the clap definitions at
//! package-build time rather than by a build script that every build would run.

use anyhow::{Context, Result};
use clap::{Command, CommandFactory};
use clap_complete::Shell;
use std::path::Path;

/// Writes `DIR/man/*.1` (mcr.1 and one page per subcommand, mcr-update.1, mcr-ctl-quiesce.1…)
/// and `DIR/completions/{bash/mcr,zsh/_mcr,fish/mcr.fish}`, the file names each shell's
/// completion loader looks for.
pub fn generate(out: &Path) -> Result<i32> {
    let man = out.join("man");
    create_dir(&man)?;
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_string();
    man_pages(&cmd, &man, &version)?;
    let mut visible = without_hidden_subcommands(&crate::Cli::command());
    for (shell, file) in [(Shell::Bash, "bash/mcr"), (Shell::Zsh, "zsh/_mcr"), (Shell::Fish, "fish/mcr.fish")] {
        let path = out.join("completions").join(file);
        create_dir(path.parent().unwrap_or(out))?;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut visible, "mcr", &mut script);
        std::fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{}", out.display());
    Ok(0)
}

/// One page for `cmd` and for each of its visible subcommands, recursively (as
/// clap_mangen::generate_to does, with the version in each page's footer).
fn man_pages(cmd: &Command, dir: &Path, version: &str) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir, version)?;
    }
    let page = clap_mangen::Man::new(cmd.clone()).source(format!("mcr {version}")).manual("mcr manual");
    let path = dir.join(page.get_filename());
    let mut text = Vec::new();
    page.render(&mut text)?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// clap_complete lists hidden subcommands too: this one (generate-docs) is for the
/// package build, not for users' tab key. Only the arguments and subcommands matter to
/// the completion scripts. `cmd` not built yet (clap adds --help and the help subcommand
/// when it is).
fn without_hidden_subcommands(cmd: &Command) -> Command {
    Command::new("mcr")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
