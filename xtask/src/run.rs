//! `cargo xtask run [--once] [--mode M] [--nodes N] [-- <lb args>]`: build, then the demo lab, or `lb` itself.

use std::process::Command;

use clap::Args;

use crate::{build, cmd, demo};

#[derive(Args, Debug)]
pub(crate) struct Options {
    /// Build with optimizations.
    #[arg(long)]
    release: bool,
    /// Demo only: run one round, then clean up and exit (instead of waiting for Ctrl-C).
    #[arg(long)]
    once: bool,
    /// Demo only: nat (replies come back through the lb), or dsr-ipip / dsr-l2 (a router
    /// in front; replies go straight from the backends to the client). Any of them with
    /// --nodes.
    #[arg(long, value_enum, default_value = "nat")]
    mode: demo::DemoMode,
    /// Demo only: how many lb nodes. 1: the lb alone; 2 to 5: the scale-out demo, the
    /// nodes behind a router that learns the VIP from each over BGP and spreads flows
    /// over them by ECMP.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = parse_nodes)]
    nodes: usize,
    /// Arguments for `lb` (after `--`), e.g. `-- run --iface eth0`. Without them, the demo.
    #[arg(last = true)]
    lb_args: Vec<String>,
}

pub(crate) fn run(options: &Options) -> anyhow::Result<()> {
    let lb = build::run(&build::Options {
        release: options.release,
    })?;
    if options.lb_args.is_empty() {
        return demo::run(&lb, options.once, options.mode, options.nodes);
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

/// `--nodes`: 1 (the single-node demos) to [`demo::MAX_NODES`] (the scale-out demo).
fn parse_nodes(text: &str) -> Result<usize, String> {
    let nodes: usize = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of lb nodes"))?;
    if !(1..=demo::MAX_NODES).contains(&nodes) {
        return Err(format!(
            "the demo runs 1 lb node (the single-node demos) or 2 to {} (the scale-out demo, the nodes behind an ECMP router)",
            demo::MAX_NODES
        ));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_1_to_the_maximum() {
        assert_eq!(parse_nodes("1"), Ok(1));
        assert_eq!(parse_nodes("5"), Ok(5));
        for bad in ["0", "6", "-1", "three"] {
            assert!(parse_nodes(bad).is_err(), "{bad}");
        }
    }
}
