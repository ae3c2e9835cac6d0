//! `cargo xtask run [-- <lb args>]`: build, then run `lb` as root.

use std::process::Command;

use clap::Args;

use crate::{build, cmd};

#[derive(Args, Debug)]
pub struct Options {
    /// Build with optimizations.
    #[arg(long)]
    release: bool,
    /// Arguments for `lb` (after `--`), e.g. `-- run --iface eth0`.
    #[arg(last = true)]
    lb_args: Vec<String>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let lb = build::run(&build::Options {
        release: options.release,
    })?;
    let args: Vec<String> = if options.lb_args.is_empty() {
        vec!["--help".to_owned()]
    } else {
        options.lb_args.clone()
    };
    let mut command = if cmd::is_root() {
        Command::new(&lb)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&lb);
        sudo
    };
    command.args(&args);
    cmd::run(&mut command)
}
