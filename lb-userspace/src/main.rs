//! `lb`: parse the command line and dispatch.

use clap::Parser as _;
use lb_userspace::{cli::Cli, cli::Command, daemon};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => daemon::run(args).await,
    }
}
