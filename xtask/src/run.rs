//! `cargo xtask run [--once] [-- <lb args>]`: build, then the demo lab, or `lb` itself.

use std::process::Command;

use clap::Args;

use crate::{build, cmd, demo};

#[derive(Args, Debug)]
pub struct Options {
    /// Build with optimizations.
    #[arg(long)]
    release: bool,
    /// Demo only: run one round, then clean up and exit (instead of waiting for Ctrl-C).
    #[arg(long)]
    once: bool,
    /// Demo only: nat (the lb between client and backends), or dsr-ipip / dsr-l2 (a router
    /// in front; replies go straight from the backends to the client).
    #[arg(long, value_enum, default_value = "nat")]
    mode: demo::DemoMode,
    /// Arguments for `lb` (after `--`), e.g. `-- run --iface eth0`. Without them, the demo.
    #[arg(last = true)]
    lb_args: Vec<String>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let lb = build::run(&build::Options {
        release: options.release,
    })?;
    if options.lb_args.is_empty() {
        return demo::run(&lb, options.once, options.mode);
    }
    let mut command = if cmd::is_root() {
        Command::new(&lb)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&lb);
        sudo
    };
    command.args(&options.lb_args);
    cmd::run(&mut command)
}
