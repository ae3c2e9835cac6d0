//! `cargo xtask build`: the eBPF object (nightly, via lb-userspace's build.rs) and `lb`.

use std::path::PathBuf;

use clap::Args;

use crate::cmd;

#[derive(Args, Debug, Default)]
pub struct Options {
    /// Build with optimizations.
    #[arg(long)]
    pub release: bool,
}

/// Builds `lb` and returns the path of the binary.
pub fn run(options: &Options) -> anyhow::Result<PathBuf> {
    cmd::run(&mut command(options)?)?;
    Ok(lb_binary(options.release))
}

/// The cargo command that builds `lb`.
pub fn command(options: &Options) -> anyhow::Result<std::process::Command> {
    let mut cargo = cmd::cargo()?;
    cargo.args(["build", "--package", "lb-userspace", "--bin", "lb"]);
    if options.release {
        cargo.arg("--release");
    }
    Ok(cargo)
}

pub fn lb_binary(release: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::workspace_root().join("target"));
    target
        .join(if release { "release" } else { "debug" })
        .join("lb")
}
