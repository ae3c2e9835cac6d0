//! The `lb` command line: clap definitions that convert into model types, the client
//! commands, and how their answers are rendered.

pub mod args;
pub mod commands;
pub mod decap;
pub mod explain;
pub mod render;
pub mod watch;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::{api::client, daemon};
use args::{Cli, Command};

/// Parses the command line and runs it. Only `lb run` starts a tokio runtime (multi-threaded:
/// probes, the sweep and the servers run beside the controller); the client commands are
/// one blocking request each, and `lb decap` blocking netlink, bpf and sysctl calls.
pub fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let socket = client::socket_path(cli.api.as_deref());
    match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(daemon::run::run(args.into(), cli.api.as_deref())),
        Command::Vip(command) => commands::vip(&socket, command),
        Command::Backend(command) => commands::backend(&socket, command),
        Command::Conntrack(command) => commands::conntrack(&socket, command),
        Command::Stats(args) => commands::stats(&socket, args),
        Command::Status(output) => commands::status(&socket, output),
        Command::Node(command) => commands::node(&socket, command),
        Command::Down(args) => commands::down(&socket, args),
        Command::Decap(command) => decap::run(command),
        Command::Explain(args) => explain::run(&socket, args),
    }
}
