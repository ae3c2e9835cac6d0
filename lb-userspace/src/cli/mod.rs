//! The `lb` command line: clap definitions that convert into model types, the client
//! commands, and how their answers are rendered.

pub mod args;
pub mod capture;
pub mod commands;
pub mod completions;
pub mod decap;
pub mod explain;
pub mod logging;
mod manpage_sections;
pub mod manpages;
mod no_daemon;
pub mod output;
pub mod pcapng;
pub mod render;
pub mod version;
pub mod watch;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

use crate::{api::client, daemon};
use args::{Cli, Command};

/// `lb`'s whole command-line definition (for completions and man pages).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the command line and runs it; a reader that closed stdout early ends it quietly
/// and successfully (`lb backend list | head -1`).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    logging::init(format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if output::is_stdout_closed(&error) => ExitCode::SUCCESS,
        Err(error) => {
            logging::report_failure(format, &error);
            ExitCode::FAILURE
        }
    }
}

/// Only `lb run` starts a tokio runtime (multi-threaded: probes, the sweep and the servers
/// run beside the controller); the client commands are one blocking request each (`lb
/// capture` a blocking stream, with a small runtime on a thread of its own for Ctrl-C and
/// SIGTERM), and `lb decap` blocking netlink, bpf and sysctl calls.
fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = client::socket_path(cli.api.as_deref());
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(daemon::run::run((*args).into(), cli.api.as_deref())),
        Command::Vip(command) => commands::vip(&socket, command),
        Command::Backend(command) => commands::backend(&socket, command),
        Command::Conntrack(command) => commands::conntrack(&socket, command),
        Command::Stats(args) => commands::stats(&socket, args),
        Command::Status(output) => commands::status(&socket, output),
        Command::Node(command) => commands::node(&socket, command),
        Command::Down(args) => commands::down(&socket, args),
        Command::Decap(command) => decap::run(command),
        Command::Reload(output) => commands::reload(&socket, output),
        Command::Completions(args) => completions::run(&args, command()),
        Command::Manpages(args) => manpages::run(&args, command()),
        Command::CheckConfig(args) => commands::check_config(args),
        Command::Explain(args) => explain::run(&socket, args),
        Command::Capture(args) => capture::run(&socket, args),
    };
    result.map_err(|error| no_daemon::with_remedy(error, &socket))
}
