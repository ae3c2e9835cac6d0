//! Command-line definitions. `run` is the daemon; every other subcommand is a client of its
//! API socket. Scripts depend on these names: change them only with the docs.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use lb_common::{consts::DEFAULT_NEW_FLOW_LIMIT, flow::Timeout};
use quic_lb::{Config as QuicConfig, ServerId};

use crate::{
    daemon::run::RunConfig,
    datapath::{attach::AttachMode, pins::DEFAULT_PIN_DIR},
    model::cluster::{ClusterError, ClusterSettings, Seed, check_announce_table},
    model::decap::Prefix,
    model::limits::{BACKENDS_CEILING, Options, VIPS_CEILING},
    model::mode::{self, Mode},
    model::notify::{self, NotifyHook},
    model::policy::OnDown,
    model::state::{DEFAULT_WEIGHT, MAX_WEIGHT, MIN_WEIGHT, Proto},
};

pub(crate) const DEFAULT_STATE_FILE: &str = "/var/lib/lb/state.toml";

#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version = crate::cli::version::LONG_VERSION,
    about = "An XDP layer-4 load balancer: one cluster IP in front of a server cluster",
    after_help = "The daemon (`lb run`) serves the other subcommands but `lb decap` on a Unix \
                  socket: --api, else $LB_API, else /run/lb/lb.sock."
)]
pub struct Cli {
    /// The daemon's API socket [default: $LB_API, else /run/lb/lb.sock].
    #[arg(long, global = true, value_name = "SOCKET")]
    pub(crate) api: Option<PathBuf>,

    /// Log lines on stderr as text or as JSON objects.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: load the XDP datapath, attach it, serve the API until stopped.
    Run(Box<RunArgs>),
    /// Add, remove and list VIPs (cluster IPs).
    #[command(subcommand)]
    Vip(VipCommand),
    /// Add, change, drain, remove and list a VIP's backends.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// List and flush tracked flows (the conntrack table).
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Datapath counters: totals, per VIP, per backend; `--watch` for live rates.
    Stats(StatsArgs),
    /// What the daemon runs on: interfaces, pins, state file, sizes.
    Status(OutputArgs),
    /// This node in a cluster of lb nodes: withdraw its VIPs from the routers, or announce
    /// them again (`lb status` shows each VIP's announcement and why).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Withdraw the VIPs, then detach the datapath from every interface and remove its pins
    /// (stops forwarding).
    Down(DownArgs),
    /// On a DSR backend (no daemon): take the lb's tunnels apart in XDP, VIPs on lo, sysctls.
    #[command(subcommand)]
    Decap(DecapCommand),
    /// Re-read the daemon's --config and make the live state equal to it (as SIGHUP does):
    /// checked in full first, then applied like `lb backend` changes, tracked flows kept;
    /// prints what changed. A refused file changes nothing.
    Reload(OutputArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(crate::cli::completions::CompletionsArgs),
    /// Write one man page per command into a directory (run by `cargo xtask install`).
    #[command(hide = true)]
    Manpages(crate::cli::manpages::ManpagesArgs),
    /// Check a config file as `lb run --config` would, without a daemon: a summary and exit
    /// 0, or the error with its file and line and exit 1.
    CheckConfig(CheckConfigArgs),
    /// What the datapath does with the next packet of one flow, and why: its VIP, its
    /// tracked entry, the backend Maglev would pick.
    Explain(crate::cli::explain::ExplainArgs),
    /// Packets as lb received them and as it sent them on, with what it did to each
    /// (verdict, reason, backend, mode, conntrack state, table), into a pcapng file or a
    /// live stream for tcpdump or Wireshark (`-w -`); Ctrl-C stops.
    Capture(crate::cli::capture::CaptureArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckConfigArgs {
    /// The TOML file (the format of `--config` and the state file).
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
}

/// How `lb` logs on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Lines for people; coloured only on a terminal and without NO_COLOR.
    #[default]
    Text,
    /// One JSON object a line: timestamp, level, target, fields (the message among them).
    Json,
}

/// A socket address, with a hint for the usual mistakes.
fn parse_endpoint(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not ADDRESS:PORT (e.g. 198.18.0.10:80, or [fd00::10]:80 for IPv6)")
    })
}

/// The interfaces of `lb run` when `--iface` is not given.
pub(crate) const IFACES_ENV: &str = "LB_IFACES";

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Interfaces to attach to (repeat the flag or list several names). Without the flag,
    /// `$LB_IFACES`, names separated by spaces (the packaged service sets it in
    /// /etc/default/lb).
    #[arg(
        long = "iface",
        value_name = "IF",
        env = IFACES_ENV,
        value_delimiter = ' ',
        num_args = 1..,
        action = clap::ArgAction::Append
    )]
    pub(crate) ifaces: Vec<String>,

    /// XDP attach mode: native (driver), skb (generic), or auto (native, else skb with a warning).
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub(crate) xdp_mode: XdpModeArg,

    /// Declared VIPs and backends to start with (TOML; replaces the saved state).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Where the live state is saved on every change and read at start.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_STATE_FILE)]
    pub(crate) state: PathBuf,

    /// bpffs directory for the pinned maps and links that keep forwarding across restarts.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub(crate) pin_dir: PathBuf,

    /// Maglev table size per VIP, a prime [default: 65537, or what the pinned datapath uses].
    #[arg(long, value_name = "PRIME")]
    pub(crate) table_size: Option<u32>,

    /// Serve Prometheus metrics at http://<ADDR:PORT>/metrics.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_endpoint)]
    pub(crate) metrics: Option<SocketAddr>,

    /// Print the datapath's own log (new flows, drops) through aya-log; off by default.
    #[arg(long)]
    pub(crate) log_datapath: bool,

    /// Proven flows tracked, one entry each (128 bytes of kernel memory per entry); new
    /// flows wait in an unproven table of a quarter this size until a reply and handshake
    /// (or a few packets) prove them, so floods never evict proven flows
    /// [default: 1048576, or what the pinned datapath uses].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1024..=1 << 26))]
    pub(crate) conntrack_size: Option<u32>,

    /// VIP slots; each takes two Maglev tables (8 bytes a slot: 1 MiB per VIP at the default
    /// --table-size) [default: 64, or what the pinned datapath uses].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(VIPS_CEILING)))]
    pub(crate) max_vips: Option<u32>,

    /// Backend slots over all VIPs [default: 4096, or what the pinned datapath uses].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(BACKENDS_CEILING)))]
    pub(crate) max_backends: Option<u32>,

    /// New flows each CPU tracks per second; past it, a flood's new flows are balanced by
    /// Maglev without an entry (0: no limit).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_NEW_FLOW_LIMIT)]
    pub(crate) new_flow_limit: u32,

    /// Idle timeout of a flow state, in seconds: tcp_opening, tcp_established, tcp_closing,
    /// tcp_closed or udp (repeat the flag: --timeout udp=30 --timeout tcp_closing=60).
    #[arg(long = "timeout", value_name = "STATE=SECS", value_parser = parse_timeout, action = clap::ArgAction::Append)]
    pub(crate) timeouts: Vec<(Timeout, u64)>,

    /// Seconds between conntrack sweeps, which delete expired flows and count the others
    /// per backend (0.1 to 3600).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_SWEEP_SECS, value_parser = parse_sweep)]
    pub(crate) conntrack_sweep: f64,

    /// Seconds between counter reports on stdout (0 prints only at exit).
    #[arg(long, value_name = "SECS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub(crate) stats_interval: u64,

    /// Outer source addresses of dsr-ipip toward IPv4 backends: each flow gets one address
    /// of this prefix (so backends' receive-side scaling spreads flows); route the prefix
    /// back to the lb or allow it on the backends (`lb decap attach --allow-source`)
    /// [default: an IPv4 address of the first attached interface that has one].
    #[arg(long, value_name = "PREFIX", value_parser = parse_prefix_v4)]
    pub(crate) encap_source_v4: Option<Prefix>,

    /// The same for IPv6 backends (at most the last 32 bits vary per flow).
    #[arg(long, value_name = "PREFIX", value_parser = parse_prefix_v6)]
    pub(crate) encap_source_v6: Option<Prefix>,

    /// The UDP destination port of dsr-gue, the same on every lb node and on the backends
    /// (`lb decap attach --gue-port`).
    #[arg(long, value_name = "PORT", default_value_t = lb_common::gue::DEFAULT_GUE_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) gue_port: u16,

    /// The cluster's hash seed, 16 hex digits (e.g. `openssl rand -hex 8`): the same on
    /// every lb node, so each picks the same backend for a flow; secret, so nobody can aim
    /// flows at one backend. Prefer --hash-seed-file or the config's `[cluster]`: a flag
    /// shows in the process list [default: the public default seed].
    #[arg(long, value_name = "HEX", value_parser = parse_seed, conflicts_with = "hash_seed_file")]
    pub(crate) hash_seed: Option<Seed>,

    /// Read the hash seed from this file (16 hex digits, surrounding whitespace ignored).
    #[arg(long, value_name = "FILE", value_parser = parse_seed_file)]
    pub(crate) hash_seed_file: Option<Seed>,

    /// Announce each VIP that this node can serve as a `<VIP>/32` (or /128) route through
    /// the first --iface, protocol 248, in this kernel routing table, for a routing daemon
    /// (BIRD, FRR) to export over BGP; withdrawn on `lb node drain`, when no backend takes
    /// new flows, by `lb down`, and by the kernel when the interface goes down [default: off].
    #[arg(long, value_name = "TABLE", value_parser = parse_announce_table)]
    pub(crate) announce_table: Option<u32>,

    /// Forward VIP traffic whatever the frame's destination MAC: for an interface that also
    /// receives for a virtual MAC (VRRP/keepalived's, a macvlan's on top of it). By default
    /// a frame for another MAC is passed to the kernel, which drops it as it would without
    /// lb (a switch flooding unknown unicast, a bridge port, promiscuous mode).
    #[arg(long)]
    pub(crate) forward_any_mac: bool,

    /// Start drained: announce nothing until `lb node resume` (bring a node into a cluster
    /// only once its VIPs and backends, and so its table fingerprints, match the others').
    #[arg(long)]
    pub(crate) drained: bool,

    /// Run this program on every health change of a backend, without a shell, as
    /// `<PROGRAM> <VIP:PORT> <BACKEND:PORT> <OLD> <NEW>` (states: up, down), with the same
    /// in LB_VIP, LB_BACKEND, LB_OLD_STATE, LB_NEW_STATE, and LB_PROTO, LB_REASON, LB_TIME;
    /// one run at a time, in order. Wins over the `[notify]` of --config (which can add
    /// arguments) [default: none].
    #[arg(long, value_name = "PROGRAM", value_parser = parse_notify)]
    pub(crate) notify: Option<NotifyHook>,

    /// Seconds a --notify run may take before it is killed (0.1 to 3600).
    #[arg(long, value_name = "SECS", value_parser = parse_notify_timeout, requires = "notify", default_value = "10")]
    pub(crate) notify_timeout: Duration,

    /// Load this eBPF object instead of the one built into `lb` (for datapath development).
    #[arg(long, value_name = "FILE", hide = true)]
    pub(crate) bpf_object: Option<PathBuf>,
}

/// Default seconds between conntrack sweeps: an expired flow is gone from the table and
/// from the per-backend counts within this much of its timeout.
pub(crate) const DEFAULT_SWEEP_SECS: f64 = 5.0;
const SWEEP_RANGE: std::ops::RangeInclusive<f64> = 0.1..=3600.0;

/// `--conntrack-sweep`: seconds, fractions allowed.
fn parse_sweep(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds (e.g. 5 or 0.5)"))?;
    if !SWEEP_RANGE.contains(&secs) {
        return Err(format!(
            "the conntrack sweep interval must be between {} and {} seconds, not {text}",
            SWEEP_RANGE.start(),
            SWEEP_RANGE.end()
        ));
    }
    Ok(secs)
}

/// Longest idle timeout accepted: a week.
const MAX_TIMEOUT_SECS: u64 = 7 * 86_400;

fn parse_notify(program: &str) -> Result<NotifyHook, String> {
    NotifyHook::new(vec![program.to_owned()], notify::DEFAULT_TIMEOUT)
}

fn parse_notify_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds (e.g. 10 or 0.5)"))?;
    let timeout = Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{text}` is not a number of seconds (e.g. 10 or 0.5)"))?;
    notify::check_timeout(timeout)
}

fn parse_seed(text: &str) -> Result<Seed, String> {
    text.parse().map_err(|e: ClusterError| e.to_string())
}

fn parse_seed_file(path: &str) -> Result<Seed, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|e: ClusterError| format!("{path}: {e}"))
}

fn parse_announce_table(text: &str) -> Result<u32, String> {
    let table: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a table number (1 to 4294967295)"))?;
    check_announce_table(table).map_err(|e| e.to_string())
}

/// `STATE=SECS` for `--timeout`.
fn parse_timeout(text: &str) -> Result<(Timeout, u64), String> {
    let names = || {
        Timeout::ALL
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (name, secs) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not STATE=SECS (states: {})", names()))?;
    let timeout = Timeout::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| format!("unknown state `{name}` (states: {})", names()))?;
    let secs: u64 = secs
        .parse()
        .map_err(|_| format!("`{secs}` is not a whole number of seconds"))?;
    if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(format!(
            "{name} timeout must be between 1 and {MAX_TIMEOUT_SECS} seconds"
        ));
    }
    Ok((timeout, secs))
}

impl From<RunArgs> for RunConfig {
    fn from(args: RunArgs) -> Self {
        let mut options = Options {
            log: args.log_datapath,
            encap_v4: args.encap_source_v4.map(mode::encap_source),
            encap_v6: args.encap_source_v6.map(mode::encap_source),
            new_flow_limit: args.new_flow_limit,
            gue_port: args.gue_port,
            ..Options::default()
        };
        for (timeout, secs) in &args.timeouts {
            options.timeouts_ns[*timeout as usize] = secs * 1_000_000_000;
        }
        RunConfig {
            // `--iface ""` and the spaces of `LB_IFACES="eth0  eth1"` name nothing.
            ifaces: args.ifaces.into_iter().filter(|i| !i.is_empty()).collect(),
            xdp_mode: args.xdp_mode.into(),
            config: args.config,
            state: args.state,
            pin_dir: args.pin_dir,
            table_size: args.table_size,
            conntrack_size: args.conntrack_size,
            max_vips: args.max_vips,
            max_backends: args.max_backends,
            metrics: args.metrics,
            options,
            sweep_interval: Duration::from_secs_f64(args.conntrack_sweep),
            stats_interval: (args.stats_interval > 0)
                .then(|| Duration::from_secs(args.stats_interval)),
            bpf_object: args.bpf_object,
            cluster: ClusterSettings {
                hash_seed: args.hash_seed.or(args.hash_seed_file),
                announce_table: args.announce_table,
            },
            start_drained: args.drained,
            forward_any_mac: args.forward_any_mac,
            notify: args
                .notify
                .map(|hook| hook.with_timeout(args.notify_timeout)),
        }
    }
}

impl From<XdpModeArg> for AttachMode {
    fn from(mode: XdpModeArg) -> Self {
        match mode {
            XdpModeArg::Auto => AttachMode::Auto,
            XdpModeArg::Native => AttachMode::Native,
            XdpModeArg::Skb => AttachMode::Skb,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum XdpModeArg {
    Auto,
    Native,
    Skb,
}

#[derive(Debug, Args)]
pub(crate) struct OutputArgs {
    /// Print JSON (stable, documented in docs/API.md) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// The VIP, as ADDRESS:PORT ([IPv6]:PORT).
    #[arg(value_name = "VIP:PORT", value_parser = parse_endpoint)]
    pub(crate) vip: SocketAddr,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub(crate) proto: Proto,
}

/// A health check, as flags.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Health check for the VIP's backends: tcp, http:/<path> or udp:<payload>.
    #[arg(long, value_name = "PROBE")]
    pub(crate) check: Option<String>,
    /// Seconds between checks [default: 2].
    #[arg(long, value_name = "SECS", requires = "check")]
    pub(crate) interval: Option<f64>,
    /// Seconds a check may take [default: 1].
    #[arg(long, value_name = "SECS", requires = "check")]
    pub(crate) timeout: Option<f64>,
    /// Successes in a row that bring a backend back [default: 2].
    #[arg(long, value_name = "N", requires = "check")]
    pub(crate) rise: Option<u32>,
    /// Failures in a row that take a backend out [default: 3].
    #[arg(long, value_name = "N", requires = "check")]
    pub(crate) fall: Option<u32>,
    /// HTTP: status or range that passes [default: 200-399]; UDP: text the reply must contain.
    #[arg(long, value_name = "TEXT", requires = "check")]
    pub(crate) expect: Option<String>,
}

impl CheckArgs {
    pub(crate) fn config(&self) -> Option<crate::model::check::CheckConfig> {
        self.check
            .as_ref()
            .map(|probe| crate::model::check::CheckConfig {
                probe: probe.clone(),
                interval: self.interval,
                timeout: self.timeout,
                rise: self.rise,
                fall: self.fall,
                expect: self.expect.clone(),
            })
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum VipCommand {
    /// Add a VIP (it drops traffic until it has a backend), optionally health-checked.
    Add {
        #[command(flatten)]
        service: ServiceArgs,
        #[command(flatten)]
        check: CheckArgs,
        /// How packets reach the backends: nat (replies cross the lb), dsr-ipip (encapsulated;
        /// backends run `lb decap attach`) or dsr-l2 (backends on the lb's link). See the
        /// README's "Forwarding modes".
        #[arg(long, default_value = "nat", value_parser = parse_mode)]
        mode: Mode,
        /// What the tracked flows of a backend its health check marks down do: keep-tcp
        /// (TCP flows stay on it, UDP flows and new flows move) or move (every flow moves;
        /// a moved TCP connection is reset by its new backend).
        #[arg(long, value_name = "POLICY", default_value = "keep-tcp")]
        on_down: OnDown,
        /// Only clients inside this prefix may open flows to the VIP (repeat the flag, at
        /// most 64; the VIP's family; host bits must be zero). Default: any client.
        /// Checked for new flows only. XDP bypasses the host firewall: nftables/iptables
        /// on the lb never see VIP traffic.
        #[arg(long = "allow-source", value_name = "PREFIX", value_parser = parse_prefix, action = clap::ArgAction::Append)]
        allow_sources: Vec<Prefix>,
        /// A QUIC-LB config (UDP VIPs; repeat the flag, at most 7, one server-id-len):
        /// config=N,server-id-len=L,nonce-len=M (plaintext; no key=). Handshake and
        /// short-header packets go to the backend whose server id their connection ID
        /// carries; the first config is the one servers issue IDs with.
        #[arg(long = "quic", value_name = "CONFIG", value_parser = parse_quic_config, action = clap::ArgAction::Append)]
        quic: Vec<QuicConfig>,
    },
    /// Set or replace a VIP's QUIC-LB configs (`--no-quic`: route by Maglev only). A new
    /// server-id-len gives every backend a new server id (`lb backend list` shows them).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["quic", "no_quic"])))]
    SetQuic {
        #[command(flatten)]
        service: ServiceArgs,
        /// A QUIC-LB config, config=N,server-id-len=L,nonce-len=M (repeat the flag; the
        /// first is the one servers issue IDs with, the others are still routed).
        #[arg(long = "quic", value_name = "CONFIG", value_parser = parse_quic_config, action = clap::ArgAction::Append)]
        quic: Vec<QuicConfig>,
        /// Remove the VIP's configs and its backends' server ids.
        #[arg(long)]
        no_quic: bool,
    },
    /// Change a VIP's forwarding mode (only while it has no backends).
    SetMode {
        #[command(flatten)]
        service: ServiceArgs,
        #[arg(long, value_parser = parse_mode)]
        mode: Mode,
    },
    /// Set or replace a VIP's health check (`--no-check` removes it).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["check", "no_check"])))]
    SetCheck {
        #[command(flatten)]
        service: ServiceArgs,
        #[command(flatten)]
        check: CheckArgs,
        /// Remove the check: every backend counts as healthy.
        #[arg(long)]
        no_check: bool,
    },
    /// Remove a VIP and its backends; its traffic goes to the kernel again.
    #[command(visible_alias = "remove", alias = "rm")]
    Del(ServiceArgs),
    /// List VIPs with their backend counts and counters.
    List(OutputArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BackendArgs {
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
    /// The backend, as ADDRESS:PORT (same address family as the VIP).
    #[arg(value_name = "ADDR:PORT", value_parser = parse_endpoint)]
    pub(crate) backend: SocketAddr,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BackendCommand {
    /// Add a backend; new flows start reaching it at once.
    Add {
        #[command(flatten)]
        target: BackendArgs,
        /// Share of new flows relative to the VIP's other backends.
        #[arg(long, default_value_t = DEFAULT_WEIGHT, value_parser = clap::value_parser!(u32).range(MIN_WEIGHT as i64..=MAX_WEIGHT as i64))]
        weight: u32,
        /// QUIC VIPs: the server id (hex, server-id-len bytes) the backend puts in its
        /// connection IDs. Default: derived from ADDR:PORT (`lb backend list` shows it).
        #[arg(long, value_name = "HEX", value_parser = parse_server_id)]
        server_id: Option<ServerId>,
    },
    /// Change a backend's weight or server id, or end its drain.
    Set {
        #[command(flatten)]
        target: BackendArgs,
        #[arg(long, required_unless_present_any = ["undrain", "server_id"], value_parser = clap::value_parser!(u32).range(MIN_WEIGHT as i64..=MAX_WEIGHT as i64))]
        weight: Option<u32>,
        /// Let a draining backend take new flows again.
        #[arg(long)]
        undrain: bool,
        /// QUIC VIPs: a new server id (hex); its connections by the old one go by Maglev.
        #[arg(long, value_name = "HEX", value_parser = parse_server_id)]
        server_id: Option<ServerId>,
    },
    /// Stop sending new flows to a backend; its established flows continue.
    Drain(BackendArgs),
    /// Remove a backend; flows of the other backends stay where they are.
    #[command(visible_alias = "remove", alias = "rm")]
    Del(BackendArgs),
    /// List backends with weight, state and counters.
    List {
        /// Only this VIP's backends.
        #[arg(value_name = "VIP:PORT", value_parser = parse_endpoint)]
        vip: Option<SocketAddr>,
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// Which tracked flows a conntrack subcommand is about.
#[derive(Debug, Args)]
pub(crate) struct FlowFilterArgs {
    /// Only flows to this VIP, as ADDRESS:PORT ([IPv6]:PORT).
    #[arg(value_name = "VIP:PORT", value_parser = parse_endpoint)]
    pub(crate) vip: Option<SocketAddr>,
    /// Only flows of this protocol.
    #[arg(long, value_enum)]
    pub(crate) proto: Option<Proto>,
    /// Only flows pinned to this backend, as ADDRESS:PORT.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_endpoint)]
    pub(crate) backend: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConntrackCommand {
    /// List tracked flows: client, VIP, backend, state, idle time and time left.
    List {
        #[command(flatten)]
        filter: FlowFilterArgs,
        /// Show at most this many flows (a line says how many more matched).
        #[arg(long, value_name = "N", default_value_t = crate::api::wire::DEFAULT_FLOW_LIMIT,
              value_parser = clap::value_parser!(u64).range(1..=crate::api::wire::MAX_FLOW_LIMIT))]
        limit: u64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Forget tracked flows (all, or those matching): their next packets are balanced
    /// afresh by Maglev.
    Flush {
        #[command(flatten)]
        filter: FlowFilterArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Refresh a live table of rates until interrupted.
    #[arg(long)]
    pub(crate) watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, requires = "watch")]
    pub(crate) interval: f64,
    /// Stop after this many refreshes (for scripts).
    #[arg(long, value_name = "N", requires = "watch")]
    pub(crate) count: Option<u64>,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Withdraw every VIP from the routers (the announce table); flows that still arrive
    /// are served, so connections end on their own. Kept across restarts.
    Drain(OutputArgs),
    /// Announce the VIPs again (those with a backend that takes new flows).
    Resume(OutputArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DownArgs {
    /// The pin directory to take down [default: the daemon's, else /sys/fs/bpf/lb].
    #[arg(long, value_name = "DIR")]
    pub(crate) pin_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DecapCommand {
    /// Attach lb_decap to an interface (pinned: it stays after the command exits), put the
    /// VIPs on lo and set the sysctls a DSR backend needs, printing each change. Again on
    /// an attached interface: updates its VIPs and source prefixes in place.
    Attach(AttachArgs),
    /// Show each attached interface: its program, what it accepts, its counters and what
    /// attach changed.
    Status(StatusArgs),
    /// Undo exactly what attach did: detach the program, remove its pins, restore each
    /// sysctl it changed and remove each address it added.
    Detach(DetachArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DecapPathArgs {
    /// bpffs directory for lb decap's pins: one directory per interface with its maps and
    /// link [default: /sys/fs/bpf/lb-decap/netns-<inode>, the inode of this network
    /// namespace (/proc/self/ns/net), so namespaces of one host never share it].
    #[arg(long, value_name = "DIR")]
    pub(crate) pin_dir: Option<PathBuf>,
    /// Where attach records what it changed (JSON; bpffs holds only BPF objects)
    /// [default: /run/lb-decap/netns-<inode>.json, as --pin-dir].
    #[arg(long, value_name = "FILE")]
    pub(crate) record: Option<PathBuf>,
}

fn parse_vip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not an IP address (a VIP here is an address alone, e.g. 198.18.1.1 or fd00::1, no port)")
    })
}

/// `config=N,server-id-len=L,nonce-len=M`, by the quic-lb crate's own parser.
pub(crate) fn parse_quic_config(text: &str) -> Result<QuicConfig, String> {
    text.parse()
        .map_err(|e: quic_lb::ConfigError| e.to_string())
}

pub(crate) fn parse_server_id(text: &str) -> Result<ServerId, String> {
    text.parse()
        .map_err(|e: quic_lb::ServerIdError| e.to_string())
}

fn parse_prefix(text: &str) -> Result<Prefix, String> {
    text.parse()
        .map_err(|e: crate::model::prefix::PrefixError| e.to_string())
}

#[derive(Debug, Args)]
pub(crate) struct AttachArgs {
    /// The interface tunnels from the lb arrive on; tunnels to its addresses are taken apart.
    #[arg(long, value_name = "IF")]
    pub(crate) iface: String,
    /// A VIP this backend serves: added to lo as /32 or /128 (repeat the flag).
    #[arg(long = "vip", value_name = "ADDR", value_parser = parse_vip, action = clap::ArgAction::Append)]
    pub(crate) vips: Vec<IpAddr>,
    /// Only decapsulate tunnels from this prefix, the lb's source prefix (repeat the flag;
    /// default: any source).
    #[arg(long = "allow-source", value_name = "PREFIX", value_parser = parse_prefix, action = clap::ArgAction::Append)]
    pub(crate) allow_sources: Vec<Prefix>,
    /// The UDP port of dsr-gue, as the lbs' `lb run --gue-port` (0: take no GUE apart).
    #[arg(long, value_name = "PORT", default_value_t = lb_common::gue::DEFAULT_GUE_PORT)]
    pub(crate) gue_port: u16,
    /// XDP attach mode: native (driver), skb (generic), or auto (native, else skb with a warning).
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub(crate) xdp_mode: XdpModeArg,
    #[command(flatten)]
    pub(crate) paths: DecapPathArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Only this interface.
    #[arg(long, value_name = "IF")]
    pub(crate) iface: Option<String>,
    /// Print JSON (stable, documented in docs/API.md).
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) paths: DecapPathArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["iface", "all"])))]
pub(crate) struct DetachArgs {
    /// The interface to detach from.
    #[arg(long, value_name = "IF")]
    pub(crate) iface: Option<String>,
    /// Every interface attach was run on.
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) paths: DecapPathArgs,
}

/// `--proto tcp|udp`: the model stays free of clap, the flag parser lives here.
fn parse_prefix_v4(text: &str) -> Result<Prefix, String> {
    let prefix = parse_prefix(text)?;
    if !prefix.addr.is_ipv4() {
        return Err(format!("{prefix} is not an IPv4 prefix"));
    }
    Ok(prefix)
}

fn parse_prefix_v6(text: &str) -> Result<Prefix, String> {
    let prefix = parse_prefix(text)?;
    if !prefix.addr.is_ipv6() {
        return Err(format!("{prefix} is not an IPv6 prefix"));
    }
    Ok(prefix)
}

impl ValueEnum for OnDown {
    fn value_variants<'a>() -> &'a [Self] {
        &OnDown::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// `--mode`, with both DSR modes named for a bare `dsr` (clap's own suggestion picks one).
fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
}

impl ValueEnum for Mode {
    fn value_variants<'a>() -> &'a [Self] {
        &Mode::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl ValueEnum for Proto {
    fn value_variants<'a>() -> &'a [Self] {
        &Proto::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }))
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, error::ErrorKind};

    use super::*;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn vip_add_takes_policies_and_refuses_bad_ones_by_name() {
        let cli = Cli::try_parse_from([
            "lb",
            "vip",
            "add",
            "198.18.1.1:80",
            "--allow-source",
            "198.18.0.0/24",
            "--allow-source",
            "198.19.0.7",
            "--on-down",
            "move",
        ])
        .expect("valid arguments");
        let Command::Vip(VipCommand::Add {
            on_down,
            allow_sources,
            ..
        }) = cli.command
        else {
            panic!("not vip add");
        };
        assert_eq!(on_down, OnDown::Move);
        let shown: Vec<String> = allow_sources.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["198.18.0.0/24", "198.19.0.7/32"]);
        let Command::Vip(VipCommand::Add { on_down, .. }) =
            Cli::try_parse_from(["lb", "vip", "add", "198.18.1.1:80"])
                .expect("valid")
                .command
        else {
            panic!("not vip add");
        };
        assert_eq!(on_down, OnDown::KeepTcp, "the default");
        for (flag, value, reason) in [
            (
                "--allow-source",
                "198.18.0.1/24",
                "host bits are set (the prefix is 198.18.0.0/24)",
            ),
            ("--allow-source", "fd00::/129", "0 to 128"),
            ("--allow-source", "10/8", "not an IP address"),
            ("--on-down", "keep", "keep-tcp"),
        ] {
            let error = Cli::try_parse_from(["lb", "vip", "add", "198.18.1.1:80", flag, value])
                .expect_err(value);
            assert!(
                matches!(
                    error.kind(),
                    ErrorKind::InvalidValue | ErrorKind::ValueValidation
                ),
                "{value}: {:?}",
                error.kind()
            );
            assert!(error.to_string().contains(reason), "{value}: {error}");
        }
    }

    #[test]
    fn quic_flags_parse_with_the_quic_lb_parser_and_refuse_bad_values() {
        let cli = Cli::try_parse_from([
            "lb",
            "vip",
            "add",
            "198.18.1.1:443",
            "--proto",
            "udp",
            "--quic",
            "config=0,server-id-len=2,nonce-len=6",
            "--quic",
            "config=1,server-id-len=2,nonce-len=8",
        ])
        .expect("valid");
        let Command::Vip(VipCommand::Add { quic, .. }) = cli.command else {
            panic!("not vip add");
        };
        assert_eq!(quic.len(), 2);
        assert_eq!(quic[1].to_string(), "config=1,server-id-len=2,nonce-len=8");
        let cli = Cli::try_parse_from([
            "lb",
            "backend",
            "add",
            "198.18.1.1:443",
            "198.18.2.1:443",
            "--proto",
            "udp",
            "--server-id",
            "0A1B",
        ])
        .expect("valid");
        let Command::Backend(BackendCommand::Add { server_id, .. }) = cli.command else {
            panic!("not backend add");
        };
        assert_eq!(server_id.map(|id| id.to_string()).as_deref(), Some("0a1b"));
        let set = Cli::try_parse_from([
            "lb",
            "backend",
            "set",
            "198.18.1.1:443",
            "198.18.2.1:443",
            "--server-id",
            "0a1c",
        ]);
        assert!(set.is_ok(), "--server-id alone is a change: {set:?}");
        for (args, reason) in [
            (
                vec![
                    "vip",
                    "add",
                    "198.18.1.1:443",
                    "--quic",
                    "config=7,server-id-len=2,nonce-len=6",
                ],
                "config id 7 is out of range",
            ),
            (
                vec![
                    "vip",
                    "add",
                    "198.18.1.1:443",
                    "--quic",
                    "server-id-len=2,nonce-len=6",
                ],
                "config is missing",
            ),
            (
                vec![
                    "backend",
                    "add",
                    "198.18.1.1:443",
                    "198.18.2.1:443",
                    "--server-id",
                    "0a1",
                ],
                "odd number of hex digits",
            ),
            (
                vec![
                    "backend",
                    "add",
                    "198.18.1.1:443",
                    "198.18.2.1:443",
                    "--server-id",
                    "",
                ],
                "1 to 15 octets",
            ),
            (vec!["vip", "set-quic", "198.18.1.1:443"], "required"),
            (
                vec![
                    "vip",
                    "set-quic",
                    "198.18.1.1:443",
                    "--no-quic",
                    "--quic",
                    "config=0,server-id-len=2,nonce-len=6",
                ],
                "cannot be used with",
            ),
            (
                vec![
                    "explain",
                    "198.18.0.1:1",
                    "198.18.1.1:443",
                    "--quic-id",
                    "0g",
                ],
                "not hex",
            ),
        ] {
            let mut argv = vec!["lb"];
            argv.extend_from_slice(&args);
            let error = Cli::try_parse_from(argv).expect_err("refused").to_string();
            assert!(error.contains(reason), "{args:?}: {error}");
        }
        let no_quic = Cli::try_parse_from([
            "lb",
            "vip",
            "set-quic",
            "198.18.1.1:443",
            "--proto",
            "udp",
            "--no-quic",
        ])
        .expect("valid");
        assert!(matches!(
            no_quic.command,
            Command::Vip(VipCommand::SetQuic { ref quic, no_quic: true, .. }) if quic.is_empty()
        ));
    }

    #[test]
    fn run_accepts_several_interfaces_both_ways() {
        let cli = Cli::try_parse_from(["lb", "run", "--iface", "a", "b", "--iface", "c"])
            .expect("valid arguments");
        let Command::Run(run) = cli.command else {
            panic!("not run");
        };
        assert_eq!(run.ifaces, ["a", "b", "c"]);
        assert_eq!(run.xdp_mode, XdpModeArg::Auto);
        assert_eq!(run.table_size, None);
        assert_eq!(run.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
    }

    #[test]
    fn backend_commands_parse_ipv6_and_defaults() {
        let cli = Cli::try_parse_from([
            "lb",
            "--api",
            "/tmp/s",
            "backend",
            "add",
            "[fd00::1]:80",
            "[fd00::2]:8080",
            "--proto",
            "udp",
        ])
        .expect("valid");
        assert_eq!(cli.api, Some(PathBuf::from("/tmp/s")));
        let Command::Backend(BackendCommand::Add {
            target,
            weight,
            server_id,
        }) = cli.command
        else {
            panic!("not backend add");
        };
        assert_eq!(weight, DEFAULT_WEIGHT);
        assert_eq!(server_id, None, "derived by the daemon unless given");
        assert_eq!(target.service.proto, Proto::Udp);
        assert!(target.backend.is_ipv6());
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        // No --iface parses (LB_IFACES may give them); `lb run` refuses an empty list
        // itself, naming /etc/default/lb (the lab test `run::no_interface_names_...`).
        let empty =
            Cli::try_parse_from(["lb", "run", "--iface", "", "--iface", "a  b"]).expect("parses");
        let Command::Run(run) = empty.command else {
            panic!("not run");
        };
        assert_eq!(
            RunConfig::from(*run).ifaces,
            ["a", "b"],
            "empty names dropped"
        );
        let dsr = Cli::try_parse_from(["lb", "vip", "add", "198.18.0.10:80", "--mode", "dsr"])
            .expect_err("dsr is two modes")
            .to_string();
        assert!(
            dsr.contains("dsr-ipip") && dsr.contains("dsr-l2") && !dsr.contains("similar value"),
            "{dsr}"
        );
        for remove in ["del", "remove", "rm"] {
            let parsed =
                Cli::try_parse_from(["lb", "backend", remove, "198.18.0.10:80", "198.18.1.1:80"]);
            assert!(parsed.is_ok(), "lb backend {remove}: {parsed:?}");
        }
        let mode = Cli::try_parse_from(["lb", "run", "--iface", "a", "--xdp-mode", "fast"])
            .expect_err("unknown mode");
        assert_eq!(mode.kind(), ErrorKind::InvalidValue);
        let address = Cli::try_parse_from(["lb", "vip", "add", "198.18.0.10"])
            .expect_err("no port")
            .to_string();
        assert!(address.contains("is not ADDRESS:PORT"), "{address}");
        for weight in ["0", "65536", "-1", "x"] {
            let error = Cli::try_parse_from([
                "lb",
                "backend",
                "add",
                "198.18.0.10:80",
                "198.18.1.1:80",
                "--weight",
                weight,
            ])
            .expect_err("weight out of range");
            assert!(
                matches!(
                    error.kind(),
                    ErrorKind::ValueValidation
                        | ErrorKind::InvalidValue
                        | ErrorKind::UnknownArgument
                ),
                "{weight}: {error}"
            );
        }
        let set = Cli::try_parse_from(["lb", "backend", "set", "198.18.0.10:80", "198.18.1.1:80"])
            .expect_err("set needs --weight or --undrain");
        assert_eq!(set.kind(), ErrorKind::MissingRequiredArgument);
    }

    /// `lb run --iface a <extra>`, parsed.
    fn run(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec!["lb", "run", "--iface", "a"];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
    }

    #[test]
    fn run_timing_flags_are_validated() {
        let Ok(Cli {
            command: Command::Run(parsed),
            ..
        }) = run(&["--conntrack-sweep", "0.5", "--timeout", "udp=30"])
        else {
            panic!("valid run flags refused");
        };
        let config = RunConfig::from(*parsed);
        assert_eq!(config.sweep_interval, Duration::from_millis(500));
        assert_eq!(
            config.options.timeouts_ns[Timeout::Udp as usize],
            30_000_000_000
        );
        for (flag, value, reason) in [
            ("--conntrack-sweep", "0", "between 0.1 and 3600"),
            ("--conntrack-sweep", "3601", "between 0.1 and 3600"),
            ("--conntrack-sweep", "soon", "not a number of seconds"),
            ("--timeout", "tcp_fin=5", "unknown state `tcp_fin`"),
            ("--timeout", "udp=0", "between 1 and"),
            ("--timeout", "udp=abc", "not a whole number"),
            ("--timeout", "udp", "not STATE=SECS"),
        ] {
            let error = run(&[flag, value]).expect_err(value).to_string();
            assert!(error.contains(reason), "{flag} {value}: {error}");
        }
    }

    #[test]
    fn cluster_flags_are_validated() {
        let Ok(Cli {
            command: Command::Run(parsed),
            ..
        }) = run(&[
            "--hash-seed",
            "00000000000000ff",
            "--announce-table",
            "4242",
        ])
        else {
            panic!("valid cluster flags refused");
        };
        let config = RunConfig::from(*parsed);
        assert_eq!(config.cluster.announce_table, Some(4242));
        assert_eq!(config.cluster.hash_seed.map(Seed::words), Some([0xff, 0]));
        let seed_file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(seed_file.path(), "  0000000100000000\n").expect("write");
        let path = seed_file.path().to_str().expect("utf-8 path");
        let Ok(Cli {
            command: Command::Run(parsed),
            ..
        }) = run(&["--hash-seed-file", path])
        else {
            panic!("a seed file refused");
        };
        assert_eq!(
            RunConfig::from(*parsed).cluster.hash_seed.map(Seed::words),
            Some([0, 1])
        );
        for (args, reason) in [
            (vec!["--hash-seed", "1234"], "16 hex digits"),
            (vec!["--hash-seed", "0000000000000000"], "public default"),
            (vec!["--hash-seed-file", "/nonexistent/seed"], "cannot read"),
            (
                vec!["--hash-seed", "00000000000000ff", "--hash-seed-file", path],
                "cannot be used with",
            ),
            (vec!["--announce-table", "254"], "main table"),
            (vec!["--announce-table", "0"], "unspec table"),
            (vec!["--announce-table", "main"], "not a table number"),
        ] {
            let error = run(&args).expect_err("refused").to_string();
            assert!(error.contains(reason), "{args:?}: {error}");
        }
    }

    #[test]
    fn conntrack_commands_parse_filters() {
        let cli = Cli::try_parse_from([
            "lb",
            "conntrack",
            "list",
            "198.18.1.1:80",
            "--proto",
            "udp",
            "--backend",
            "198.18.11.2:80",
            "--limit",
            "5",
        ])
        .expect("valid");
        let Command::Conntrack(ConntrackCommand::List { filter, limit, .. }) = cli.command else {
            panic!("not conntrack list");
        };
        assert_eq!(limit, 5);
        assert_eq!(filter.proto, Some(Proto::Udp));
        assert!(filter.backend.is_some() && filter.vip.is_some());
        let zero =
            Cli::try_parse_from(["lb", "conntrack", "list", "--limit", "0"]).expect_err("limit 0");
        assert_eq!(zero.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn size_flags_reach_the_config_and_bad_ones_are_refused() {
        let Ok(Cli {
            command: Command::Run(parsed),
            ..
        }) = run(&["--max-vips", "4", "--max-backends", "64"])
        else {
            panic!("valid size flags refused");
        };
        let limits = RunConfig::from(*parsed).limits();
        assert_eq!((limits.max_vips, limits.max_backends), (4, 64));
        for (flag, value) in [
            ("--max-vips", "0"),
            ("--max-vips", "1025"),
            ("--max-vips", "some"),
            ("--max-backends", "0"),
            ("--max-backends", "65537"),
            ("--max-backends", "4k"),
        ] {
            let error = run(&[flag, value]).expect_err(value).to_string();
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
    }

    #[test]
    fn the_log_format_is_a_global_flag() {
        let cli = Cli::try_parse_from(["lb", "status", "--log-format", "json"]).expect("valid");
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = Cli::try_parse_from(["lb", "status"]).expect("valid");
        assert_eq!(cli.log_format, LogFormat::Text);
        let bad = Cli::try_parse_from(["lb", "--log-format", "xml", "status"]).expect_err("xml");
        assert_eq!(bad.kind(), ErrorKind::InvalidValue);
    }
}
