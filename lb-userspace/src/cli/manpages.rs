//! `lb manpages <DIR>` (hidden; `cargo xtask install` runs it): one man page per command
//! and subcommand, nested ones included (lb.1, lb-run.1, lb-vip.1, lb-vip-add.1, ...),
//! generated from the clap definitions, with the sections of
//! [`crate::cli::manpage_sections`] (FILES, ENVIRONMENT, SIGNALS, EXAMPLES, ...) after the
//! options.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use clap_mangen::{
    Man,
    roff::{Roff, bold, roman},
};

use crate::cli::manpage_sections::{self, Block, InstallPaths, Section};

#[derive(Debug, Args)]
pub(crate) struct ManpagesArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Where the install keeps default/lb and lb/lb.toml, for the FILES sections.
    #[arg(long, value_name = "DIR", default_value = "/etc")]
    pub(crate) sysconfdir: PathBuf,
    /// Where the install keeps README.md.gz, for the FILES sections.
    #[arg(long, value_name = "DIR", default_value = "/usr/share/doc/lb")]
    pub(crate) docdir: PathBuf,
}

/// Writes the pages of `lb`'s whole `command`.
pub(crate) fn run(args: &ManpagesArgs, command: clap::Command) -> anyhow::Result<()> {
    let paths = InstallPaths {
        sysconfdir: args.sysconfdir.clone(),
        docdir: args.docdir.clone(),
    };
    let pages = write(&args.dir, command, &paths)?;
    crate::cli::output::line(format_args!("{pages} man pages in {}", args.dir.display()))
}

/// Writes the pages into `dir`; how many.
pub(crate) fn write(
    dir: &Path,
    command: clap::Command,
    paths: &InstallPaths,
) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // As clap_mangen::generate_to: built once, so that subcommands carry their full
    // display names (lb-vip-add).
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let mut pages = 0;
    write_tree(dir, command, paths, &mut pages)?;
    Ok(pages)
}

fn write_tree(
    dir: &Path,
    command: clap::Command,
    paths: &InstallPaths,
    pages: &mut usize,
) -> anyhow::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(dir, sub.clone(), paths, pages)?;
    }
    let man = Man::new(command);
    let file = dir.join(man.get_filename());
    let page = render(&man, paths).with_context(|| format!("rendering {}", file.display()))?;
    std::fs::write(&file, page).with_context(|| format!("writing {}", file.display()))?;
    *pages += 1;
    Ok(())
}

/// clap_mangen's page with lb's own sections inserted before VERSION, where man(7)
/// puts them.
fn render(man: &Man, paths: &InstallPaths) -> anyhow::Result<Vec<u8>> {
    let mut page = Vec::new();
    man.render(&mut page)?;
    let title = man.get_filename();
    let name = title.strip_suffix(".1").unwrap_or(&title);
    let sections = manpage_sections::for_page(name, paths);
    if sections.is_empty() {
        return Ok(page);
    }
    let mut ours = Roff::new();
    for section in &sections {
        render_section(&mut ours, section);
    }
    let ours = ours.render().into_bytes();
    let at = find(&page, b"\n.SH VERSION").map_or(page.len(), |at| at + 1);
    page.splice(at..at, ours);
    Ok(page)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn render_section(roff: &mut Roff, section: &Section) {
    roff.control("SH", [section.title]);
    for block in &section.body {
        match block {
            Block::Text(text) => {
                roff.control("PP", []).text([roman(text.as_str())]);
            }
            Block::Item { tag, text } => {
                roff.control("TP", [])
                    .text([bold(tag.as_str())])
                    .text([roman(text.as_str())]);
            }
            Block::Example { what, lines } => {
                roff.control("PP", []).text([roman(*what)]);
                roff.control("RS", ["4"]).control("nf", []);
                for line in lines {
                    roff.text([roman(*line)]);
                }
                roff.control("fi", []).control("RE", []);
            }
        }
    }
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

    fn paths() -> InstallPaths {
        InstallPaths {
            sysconfdir: "/opt/lb/etc".into(),
            docdir: "/opt/lb/share/doc/lb".into(),
        }
    }

    #[test]
    fn one_page_per_command_with_its_full_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pages = write(dir.path(), Cli::command(), &paths()).expect("write");
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

    /// The section headings of a page, in order.
    fn headings(page: &str) -> Vec<&str> {
        page.lines()
            .filter_map(|line| line.strip_prefix(".SH "))
            .map(|h| h.trim_matches('"'))
            .collect()
    }

    #[test]
    fn lb_and_lb_run_document_files_environment_signals_and_examples() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), Cli::command(), &paths()).expect("write");
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("read");
        let lb = read("lb.1");
        let run = read("lb-run.1");
        for (name, page, wanted) in [
            (
                "lb.1",
                &lb,
                &[
                    "FILES",
                    "ENVIRONMENT",
                    "EXIT STATUS",
                    "EXAMPLES",
                    "SEE ALSO",
                ][..],
            ),
            (
                "lb-run.1",
                &run,
                &[
                    "CONFIGURATION FILE",
                    "SIGNALS",
                    "ENVIRONMENT",
                    "FILES",
                    "EXAMPLES",
                ][..],
            ),
        ] {
            let found = headings(page);
            for heading in wanted {
                assert!(
                    found.contains(heading),
                    "{name} has no {heading}: {found:?}"
                );
            }
            // Where man(7) puts them: after the options, before VERSION.
            let at = |heading| found.iter().position(|h| *h == heading);
            assert!(at("OPTIONS") < at("FILES"), "{name}: {found:?}");
            if let Some(version) = at("VERSION") {
                assert_eq!(version, found.len() - 1, "{name}: {found:?}");
            }
        }
        assert!(run.contains("SIGHUP") && run.contains("SIGTERM"), "{run}");
        assert!(run.contains("[[vip]]") && run.contains("backends"), "{run}");
        // The install's own paths, not the defaults.
        assert!(lb.contains("/opt/lb/etc/lb/lb.toml"), "{lb}");
        assert!(lb.contains("/opt/lb/share/doc/lb/README.md.gz"), "{lb}");
        let add = read("lb-vip-add.1");
        assert!(headings(&add).contains(&"EXAMPLES"), "{add}");
        let capture = read("lb-capture.1");
        for heading in ["OPTIONS", "SIGNALS", "OUTPUT", "EXAMPLES"] {
            assert!(headings(&capture).contains(&heading), "{capture}");
        }
    }
}
