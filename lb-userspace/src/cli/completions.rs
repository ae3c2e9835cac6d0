//! `lb completions <SHELL>`: the shell's completion script on stdout, generated from the
//! clap definitions, so every subcommand and flag is in it, including later ones.

use std::io::Write as _;

use clap::Args;
use clap_complete::Shell;

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for, e.g. `lb completions bash > /etc/bash_completion.d/lb`.
    #[arg(value_enum, value_name = "SHELL")]
    pub(crate) shell: Shell,
}

/// Prints the script for `lb`'s whole `command`.
pub(crate) fn run(args: &CompletionsArgs, command: clap::Command) -> anyhow::Result<()> {
    let script = script(args.shell, command);
    crate::cli::output::with_stdout(|out| out.write_all(&script))
}

/// The completion script of `shell` for `command`.
pub(crate) fn script(shell: Shell, command: clap::Command) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut visible(command), "lb", &mut script);
    script
}

/// `full` without its hidden subcommands, which clap_complete would offer.
fn visible(full: clap::Command) -> clap::Command {
    let mut command = clap::Command::new(full.get_name().to_owned())
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
        .subcommand_required(full.is_subcommand_required_set());
    if let Some(version) = full.get_version() {
        command = command.version(version.to_owned());
    }
    if let Some(about) = full.get_about() {
        command = command.about(about.clone());
    }
    command
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _, error::ErrorKind};

    use super::*;
    use crate::cli::args::Cli;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        let subcommands: Vec<String> = Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name().to_owned())
            .collect();
        assert!(subcommands.contains(&"completions".to_owned()));
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(script(shell, Cli::command())).expect("UTF-8");
            for name in &subcommands {
                assert!(script.contains(name.as_str()), "{shell}: no `{name}`");
            }
            assert!(
                !script.contains("manpages"),
                "{shell}: the hidden `manpages` is completed"
            );
        }
    }

    #[test]
    fn an_unknown_shell_is_refused_with_the_ones_known() {
        let error = Cli::try_parse_from(["lb", "completions", "tcsh"]).expect_err("refused");
        assert_eq!(error.kind(), ErrorKind::InvalidValue);
        let text = error.to_string();
        assert!(text.contains("tcsh"), "{text}");
        for known in ["bash", "zsh", "fish"] {
            assert!(text.contains(known), "{text}");
        }
    }
}
