//! `cargo xtask soak [--secs N]`: the soak test (tests/tests/soak.rs) on the release build,
//! 10 minutes by default: mixed TCP/UDP traffic through the VIPs while backends are added,
//! drained and removed every second; no failed request to a backend that stayed, and the
//! daemon's memory and descriptors within their stated bounds (judged only on runs of
//! 120 s or more; shorter ones check weaker bounds and say so). `cargo xtask test` runs it
//! for 12 s.

use clap::Args;

use crate::{build, cmd};

#[derive(Args, Debug)]
pub(crate) struct Options {
    /// How long to soak, in seconds.
    #[arg(long, default_value_t = 600)]
    secs: u64,
}

pub(crate) fn run(options: &Options) -> anyhow::Result<()> {
    if !cmd::is_root() {
        anyhow::bail!("the soak runs lb in network namespaces: run `cargo xtask soak` as root");
    }
    let lb = build::run(&build::Options { release: true })?;
    eprintln!("soak: {} s against {}", options.secs, lb.display());
    cmd::run(
        cmd::release_test("lab", "soak")?
            .env("LB_SOAK_SECS", options.secs.to_string())
            .env("LB_BIN", lb),
    )
}
