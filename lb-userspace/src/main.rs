//! `lb`: parse the command line and dispatch.

use clap::Parser as _;
use lb_userspace::{
    api,
    cli::{Cli, Command},
    commands, daemon,
};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let socket = api::socket_path(cli.api.as_deref());
    match cli.command {
        Command::Run(args) => daemon::run(args, cli.api.as_deref()).await,
        Command::Vip(command) => commands::vip(&socket, command),
        Command::Backend(command) => commands::backend(&socket, command),
        Command::Conntrack(command) => commands::conntrack(&socket, command),
        Command::Stats(args) => commands::stats(&socket, args),
        Command::Status(output) => commands::status(&socket, output),
        Command::Down(args) => commands::down(&socket, args),
    }
}
