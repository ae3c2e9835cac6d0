//! Command-line definitions. One subcommand per operator task; `run` is the daemon.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version,
    about = "An XDP layer-4 load balancer: one cluster IP in front of a server cluster"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the XDP datapath, attach it to interfaces and report its counters until stopped.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interfaces to attach to (repeat the flag or list several names).
    #[arg(long = "iface", value_name = "IF", required = true, num_args = 1.., action = clap::ArgAction::Append)]
    pub ifaces: Vec<String>,

    /// XDP attach mode: native (driver), skb (generic), or auto (native, else skb with a warning).
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,

    /// VIPs and backends to start with (TOML; see the README).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Maglev table size per VIP: a prime; larger tables spread weights more finely.
    #[arg(long, value_name = "PRIME", default_value_t = lb_common::consts::DEFAULT_MAGLEV_SIZE)]
    pub table_size: u32,

    /// Seconds between counter reports on stdout (0 prints only at exit).
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub stats_interval: u64,

    /// Load this eBPF object instead of the one built into `lb` (for datapath development).
    #[arg(long, value_name = "FILE", hide = true)]
    pub bpf_object: Option<PathBuf>,
}

impl RunArgs {
    pub fn limits(&self) -> crate::datapath::Limits {
        crate::datapath::Limits {
            maglev_size: self.table_size,
            ..crate::datapath::Limits::default()
        }
    }

    pub fn stats_interval(&self) -> Option<Duration> {
        (self.stats_interval > 0).then(|| Duration::from_secs(self.stats_interval))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Native,
    Skb,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, error::ErrorKind};

    use super::*;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_accepts_several_interfaces_both_ways() {
        let cli = Cli::try_parse_from(["lb", "run", "--iface", "a", "b", "--iface", "c"])
            .expect("valid arguments");
        let Command::Run(run) = cli.command;
        assert_eq!(run.ifaces, ["a", "b", "c"]);
        assert_eq!(run.xdp_mode, XdpModeArg::Auto);
        assert_eq!(run.stats_interval(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn run_rejects_bad_arguments() {
        let missing = Cli::try_parse_from(["lb", "run"]).expect_err("--iface is required");
        assert_eq!(missing.kind(), ErrorKind::MissingRequiredArgument);
        let mode = Cli::try_parse_from(["lb", "run", "--iface", "a", "--xdp-mode", "fast"])
            .expect_err("unknown mode");
        assert_eq!(mode.kind(), ErrorKind::InvalidValue);
        let interval = Cli::try_parse_from(["lb", "run", "--iface", "a", "--stats-interval", "-1"])
            .expect_err("negative interval");
        assert!(matches!(
            interval.kind(),
            ErrorKind::InvalidValue | ErrorKind::UnknownArgument
        ));
    }
}
