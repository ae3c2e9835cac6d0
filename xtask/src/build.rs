//! `cargo xtask build`: the eBPF object (nightly, via lb-userspace's build.rs) and `lb`.

use std::path::PathBuf;

use clap::Args;

use crate::cmd;

#[derive(Args, Debug, Default)]
pub(crate) struct Options {
    /// Build with optimizations.
    #[arg(long)]
    pub release: bool,
}

/// Builds `lb` and returns the path of the binary.
pub(crate) fn run(options: &Options) -> anyhow::Result<PathBuf> {
    let mut cargo = cmd::cargo()?;
    cargo.args(["build", "--package", "lb-userspace", "--bin", "lb"]);
    if options.release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)?;
    Ok(lb_binary(options.release))
}

pub(crate) fn lb_binary(release: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| cmd::workspace_root().join("target"), PathBuf::from);
    target
        .join(if release { "release" } else { "debug" })
        .join("lb")
}
