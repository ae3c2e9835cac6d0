//! `lb manpages <DIR>` (hidden; `cargo xtask install` runs it): one man page per command
//! and subcommand, nested ones included (lb.1, lb-run.1, lb-vip.1, lb-vip-add.1, ...),
//! generated from the clap definitions.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ManpagesArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,
}

/// Writes the pages of `lb`'s whole `command`.
pub(crate) fn run(args: &ManpagesArgs, command: clap::Command) -> anyhow::Result<()> {
    let pages = write(&args.dir, command)?;
    crate::cli::output::line(format_args!("{pages} man pages in {}", args.dir.display()))
}

/// Writes the pages into `dir`; how many.
pub(crate) fn write(dir: &Path, command: clap::Command) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pages = page_names(&command).len();
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing the man pages into {}", dir.display()))?;
    Ok(pages)
}

/// The pages `lb manpages` writes, without `.1`: `lb`, then `lb-<command>` for every
/// visible command, nested ones included (`lb-vip-add`).
pub fn page_names(command: &clap::Command) -> Vec<String> {
    fn walk(command: &clap::Command, name: &str, names: &mut Vec<String>) {
        names.push(name.to_owned());
        for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
            walk(sub, &format!("{name}-{}", sub.get_name()), names);
        }
    }
    let mut names = Vec::new();
    walk(command, "lb", &mut names);
    names
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::cli::args::Cli;

    #[test]
    fn one_page_per_command_with_its_full_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pages = write(dir.path(), Cli::command()).expect("write");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), pages);
        let mut expected: Vec<String> = page_names(&Cli::command())
            .iter()
            .map(|n| format!("{n}.1"))
            .collect();
        expected.sort();
        assert_eq!(names, expected);
        for expected in [
            "lb.1",
            "lb-run.1",
            "lb-vip.1",
            "lb-vip-add.1",
            "lb-completions.1",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("manpages")), "{names:?}");
        let page = std::fs::read_to_string(dir.path().join("lb-vip-add.1")).expect("read");
        assert!(
            page.starts_with(".ie") || page.contains(".TH lb-vip-add 1"),
            "{page}"
        );
    }
}
