//! `lb run`: load (or adopt) the pinned datapath, make its maps match the desired state,
//! attach, and serve the API. SIGTERM and Ctrl-C stop the daemon only: the pinned links
//! keep forwarding until `lb down`.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
    time::Instant,
};

use anyhow::{Context as _, bail};
use arc_swap::ArcSwap;
use aya::{Ebpf, programs::ProgramError};
use lb_common::{consts::MAP_META, encap::EncapSource};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{debug, info, warn};

use crate::{
    api::client,
    control::announcer::Announcer,
    control::checker::Checker,
    control::local_macs,
    control::map_sync::MapSync,
    daemon::controller::{Conntrack, Controller, Datapath, HealthWatch, Notify},
    daemon::counters,
    daemon::egress::{EgressAdvisor, LossWatch},
    daemon::hook::{self, HookCounters},
    daemon::metrics_http,
    daemon::next_hops::NextHops,
    daemon::notify,
    daemon::owner::{self, Command, Commands},
    daemon::published::{DaemonFacts, SnapshotCell},
    daemon::reader::Reader,
    daemon::server::{self, Handlers},
    daemon::sweep,
    daemon::tasks::Tasks,
    datapath::attach::{self, AttachMode, Interface, PinnedAttachment},
    datapath::capture::CaptureMaps,
    datapath::conntrack::{ConntrackBook, Sweeper},
    datapath::egress::EgressWatch,
    datapath::flow_cache::FlowCache,
    datapath::forwarding::{self, Family},
    datapath::kernel,
    datapath::load,
    datapath::local_addresses,
    datapath::log,
    datapath::maps::{self, ServiceMaps},
    datapath::pins::PinDir,
    datapath::privileges,
    datapath::redirect_watch,
    datapath::stats::{Snapshot, StatsMap},
    model::cluster::ClusterSettings,
    model::decap::Prefix,
    model::error_chain::error_chain,
    model::health::HealthBook,
    model::limits::{Limits, Options, Requested},
    model::mode,
    model::notify::NotifyHook,
    model::reload::Declared,
    model::state::State,
    store::state_file,
};

/// `println!` that never panics: the daemon's stdout (a terminal, a pipe, the journal)
/// may go away, and a report it cannot print must not stop the datapath's daemon.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).unwrap_or_default();
    }};
}

/// What `lb run` was asked to do; the CLI builds it from its flags.
#[derive(Clone, Debug)]
pub(crate) struct RunConfig {
    pub(crate) ifaces: Vec<String>,
    pub(crate) xdp_mode: AttachMode,
    /// Declared state that replaces the saved one.
    pub(crate) config: Option<PathBuf>,
    pub(crate) state: PathBuf,
    pub(crate) pin_dir: PathBuf,
    /// Sizes asked for; `None` takes the pinned datapath's, else the default.
    pub(crate) table_size: Option<u32>,
    pub(crate) conntrack_size: Option<u32>,
    pub(crate) max_vips: Option<u32>,
    pub(crate) max_backends: Option<u32>,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) options: Options,
    pub(crate) sweep_interval: Duration,
    /// Counter reports on stdout; `None` prints only at exit.
    pub(crate) stats_interval: Option<Duration>,
    pub(crate) bpf_object: Option<PathBuf>,
    /// `--hash-seed` and `--announce-table`; the `[cluster]` of `--config` fills the rest.
    pub(crate) cluster: ClusterSettings,
    /// `--drained`: the node starts withdrawn.
    pub(crate) start_drained: bool,
    /// `--forward-any-mac`: no destination-MAC check.
    pub(crate) forward_any_mac: bool,
    /// `--notify`: the command run on backends' health changes (over `[notify]`).
    pub(crate) notify: Option<NotifyHook>,
}

impl RunConfig {
    /// The sizes to create maps with when nothing is pinned yet.
    pub(crate) fn limits(&self) -> Limits {
        self.requested().limits()
    }

    /// The sizes given on the command line.
    pub(crate) fn requested(&self) -> Requested {
        Requested {
            table_size: self.table_size,
            conntrack_size: self.conntrack_size,
            max_vips: self.max_vips,
            max_backends: self.max_backends,
        }
    }
}

pub(crate) async fn run(mut args: RunConfig, api_flag: Option<&Path>) -> anyhow::Result<()> {
    privileges::check()?;
    if let Some(version) = kernel::check()? {
        debug!(%version, "the kernel has every feature lb uses");
    }
    // Handlers first: a signal that arrives while starting must not kill the daemon midway.
    let signals = Signals::install()?;
    // Everything that can be checked without touching the kernel is checked first.
    if args.ifaces.is_empty() {
        bail!(
            "no interface to attach to: give --iface <IF>, or set LB_IFACES (the packaged \
             service reads it from /etc/default/lb: LB_IFACES=\"eth0\", then \
             `systemctl restart lb`)"
        );
    }
    let ifaces = args
        .ifaces
        .iter()
        .map(|name| Interface::resolve(name))
        .collect::<Result<Vec<_>, _>>()?;
    args.limits().validate()?;
    let (declared, file_cluster, file_notify) = match args.config.as_deref() {
        Some(path) => {
            let file = state_file::load_declared(path)?;
            (Some(file.state), file.cluster, file.notify)
        }
        None => (None, ClusterSettings::default(), None),
    };
    let notify_hook = args.notify.clone().or(file_notify);
    if let Some(given) = &notify_hook {
        hook::check_program(given).map_err(anyhow::Error::msg)?;
    }
    let cluster_flags = args.cluster;
    args.cluster = args.cluster.or(file_cluster);
    args.options.hash_seed = args.cluster.hash_seed.unwrap_or_default().words();
    if args.cluster.announce_table.is_some() && args.cluster.hash_seed.is_none() {
        warn!(
            "announcing with the public default hash seed: give every node the same --hash-seed, or anyone can compute which backend a flow lands on"
        );
    }
    let saved = state_file::load_if_present(&args.state)
        .context("the saved state is unreadable; it is left as it is (fix or move it)")?;
    check_forwarding(&ifaces, declared.as_ref().or(saved.as_ref()))?;
    let custom_object = args
        .bpf_object
        .as_ref()
        .map(|path| {
            std::fs::read(path).with_context(|| format!("reading eBPF object {}", path.display()))
        })
        .transpose()?;
    let metrics_listener = match args.metrics {
        Some(addr) => Some(metrics_http::bind(addr).await?),
        None => None,
    };
    let api_path = client::socket_path(api_flag);
    let socket = server::bind(&api_path)?;
    let mut pins = PinDir::open(&args.pin_dir)?;
    // A daemon killed mid-save leaves its temporary file; the pin lock makes us the writer.
    for stale in state_file::remove_stale_temps(&args.state)? {
        info!(file = %stale.display(), "removed a temporary state file left by an earlier run");
    }
    let adopted_limits = pins.adoptable(&args.requested())?;
    if load::raise_memlock_limit().is_err() {
        warn!("could not raise RLIMIT_MEMLOCK; old kernels may refuse to create maps");
    }

    let object = custom_object.as_deref().unwrap_or(load::OBJECT);
    let started = start(
        &args,
        &pins,
        adopted_limits,
        object,
        &ifaces,
        declared,
        saved,
    )
    .and_then(|started| {
        let attached: Vec<String> = started
            .attachments
            .iter()
            .map(|a| a.iface.name.clone())
            .collect();
        pins.keep(&attached)
            .context("holding handles to the pinned maps and links")?;
        // The first sweep runs before serving, so there is always a census to report.
        let sweeper = sweeper(&started, &args)?;
        let first = sweeper
            .sweep()
            .context("the first conntrack sweep failed")?;
        info!(
            entries = first.entries,
            expired = first.pass.deleted,
            took_ms = first.took.as_millis() as u64,
            "conntrack swept"
        );
        Ok((started, sweeper, first))
    });
    let (
        Started {
            ebpf,
            map_sync,
            stats,
            attachments,
            mut egress,
            flow_cache,
            lost_counted,
            capture,
        },
        sweeper,
        first_census,
    ) = match started {
        Ok(parts) => parts,
        Err(error) => {
            if adopted_limits.is_none() {
                // Nothing was forwarding before: leave nothing behind.
                if let Err(clear) = pins.clear() {
                    warn!(error = %error_chain(&clear), "removing the pins of the failed start");
                }
            }
            return Err(error);
        }
    };
    say!(
        "lb: forwarding on {} ({}{}); API on {}; Ctrl-C or SIGTERM stops the daemon, `lb down` the datapath",
        attachments
            .iter()
            .map(|a| format!("{} [{}]", a.iface.name, a.mode))
            .collect::<Vec<_>>()
            .join(", "),
        env!("CARGO_PKG_VERSION"),
        if adopted_limits.is_some() {
            ", adopted the pinned datapath"
        } else {
            ""
        },
        socket.path().display(),
    );
    let map_memory = crate::daemon::reader::read_map_memory(&ebpf);
    let pin_dir = pins.path().to_owned();
    let open = |what: &str| format!("opening {what}");
    let reader_maps = map_sync
        .maps()
        .reader()
        .with_context(|| open("the maps for queries"))?;
    let reader_flows = map_sync
        .maps()
        .conntrack_table()
        .with_context(|| open("the conntrack map for queries"))?;
    let flush_table = map_sync
        .maps()
        .conntrack_table()
        .with_context(|| open("the conntrack map for flushes"))?;
    let first_ifindex = attachments.first().map_or(0, |a| a.iface.index);
    let facts = Arc::new(DaemonFacts {
        state_file: args.state.clone(),
        api: api_path,
        adopted: adopted_limits.is_some(),
        started: Instant::now(),
        timeouts: args.options.timeouts_ns,
        new_flow_limit: args.options.new_flow_limit,
        sweep_interval: args.sweep_interval,
        seeded: args.cluster.hash_seed.is_some(),
        datapath_build: load::build_id(custom_object.as_deref()),
        map_memory,
        lost_counted,
        gue_port: args.options.gue_port,
    });
    let (commands, command_queue) = Commands::channel();
    let hook_runs = Arc::new(HookCounters::default());
    let (hook_queue, hook_jobs) = hook::channel(Arc::clone(&hook_runs));
    if let Some(given) = &notify_hook {
        info!(command = %given, "notify hook: runs on every backend health change");
    }
    let probe_results = {
        let commands = commands.clone();
        Arc::new(move |result| commands.probe(result))
    };
    let mut controller = Controller {
        datapath: Datapath {
            map_sync,
            attachments,
            pins: Some(pins),
            forward_any_mac: args.forward_any_mac,
            ebpf,
            capture,
        },
        health: HealthWatch {
            book: HealthBook::default(),
            checker: Checker::new(tokio::runtime::Handle::current(), probe_results),
        },
        notify: Notify {
            flag: args.notify.clone(),
            hook: notify_hook.map(Arc::new),
            queue: hook_queue,
        },
        announcer: Announcer::new(args.cluster.announce_table, first_ifindex),
        egress: EgressAdvisor::default(),
        next_hops: NextHops::default(),
        conntrack: Conntrack {
            book: ConntrackBook::new(first_census),
            table: flush_table,
            flow_cache,
        },
        declared: Declared {
            config: args.config.clone(),
            flags: cluster_flags,
            running: args.cluster,
        },
        facts: Arc::clone(&facts),
    };
    controller.refresh_health();
    controller.check_egress();
    controller.keep_dsr_next_hops();
    controller.announce();
    let published: SnapshotCell = Arc::new(ArcSwap::from_pointee(controller.publish()));
    let reader = Arc::new(Reader {
        published: Arc::clone(&published),
        facts,
        maps: reader_maps,
        stats,
        flows: reader_flows,
        hook_runs: Arc::clone(&hook_runs),
    });

    let mut tasks = Tasks::new();
    tasks.spawn_blocking("controller", move || {
        owner::run(controller, command_queue, published)
    });
    tasks.spawn("notify hook", hook::run(hook_jobs, hook_runs));
    tasks.spawn(
        "conntrack sweep",
        sweep_forever(sweeper, commands.clone(), args.sweep_interval),
    );
    if let Some(listener) = metrics_listener {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        info!(%addr, "serving Prometheus metrics at /metrics");
        tasks.spawn(
            "metrics server",
            metrics_http::serve(listener, Arc::clone(&reader), tasks.fatal()),
        );
    }
    let (down_tx, mut down_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let handlers = Handlers {
        commands: commands.clone(),
        reader: Arc::clone(&reader),
        fatal: tasks.fatal(),
    };
    tasks.spawn(
        "API server",
        server::serve(socket, handlers, down_tx, stop_rx),
    );
    // Attached, API bound: systemd may start what depends on lb (`Type=notify`).
    notify::ready(&format!("forwarding on {}", args.ifaces.join(", ")));
    let mut watch = Watch {
        tasks: &mut tasks,
        commands: &commands,
        reader: &reader,
        args: &args,
        down: &mut down_rx,
        egress: &mut egress,
        losses: LossWatch::default(),
    };
    let reason = wait_for_stop(signals, &mut watch).await;
    notify::stopping();
    if stop_tx.send(true).is_err() {
        debug!("the API server had already stopped");
    }
    // Commands queued before this one are still applied; then the controller is dropped
    // on its own thread.
    if let Err(error) = commands.stop() {
        debug!(%error, "stopping the controller");
    }
    tasks.shut_down().await;
    let reason = reason?;

    if let Ok(now) = reader.stats.read() {
        say!("counters at exit:\n{}", counters::render(&now, None));
    }
    match reason {
        Stop::Down => say!("lb: down; detached and removed {}", pin_dir.display()),
        Stop::Signal => say!(
            "lb: daemon stopped; the datapath keeps forwarding (pinned in {}); `lb down` detaches it",
            pin_dir.display()
        ),
    }
    Ok(())
}

/// What a successful start leaves running.
struct Started {
    ebpf: Ebpf,
    map_sync: MapSync,
    stats: StatsMap,
    attachments: Vec<PinnedAttachment>,
    egress: EgressWatch,
    flow_cache: FlowCache,
    /// Whether `lb_redirect_lost` is attached.
    lost_counted: bool,
    capture: CaptureMaps,
}

/// Refuses interfaces whose forwarding is off for a family lb will balance: IPv4 always,
/// IPv6 when the state to apply has an IPv6 VIP.
fn check_forwarding(ifaces: &[Interface], desired: Option<&State>) -> anyhow::Result<()> {
    let names = || ifaces.iter().map(|i| i.name.as_str());
    forwarding::check(names(), Family::V4)?;
    let has_v6 = desired.is_some_and(|s| s.vips.keys().any(|service| service.addr.is_ipv6()));
    if has_v6 {
        forwarding::check(names(), Family::V6).context("the configured state has IPv6 VIPs")?;
    }
    Ok(())
}

/// The conntrack sweep, with its own handles on CONNTRACK and STATS.
fn sweeper(started: &Started, args: &RunConfig) -> anyhow::Result<Sweeper> {
    let table = started
        .map_sync
        .maps()
        .conntrack_table()
        .context("opening the conntrack map for the sweep")?;
    let stats = started
        .stats
        .try_clone()
        .context("opening the stats map for the sweep")?;
    let filter = started
        .map_sync
        .maps()
        .proven_filter()
        .context("mapping the proven-flow filter for the sweep")?;
    Ok(Sweeper::new(table, stats, filter, args.options.timeouts_ns))
}

/// The conntrack sweep on the blocking pool, outside the controller's task, which gets
/// only the census (and runs the per-sweep upkeep). A failed sweep is logged once and
/// retried at each tick; a panicking one ends this task, and so the daemon.
struct SweepJob {
    sweeper: Arc<Sweeper>,
    commands: Commands,
    /// The last sweep failed (warned about once).
    failing: bool,
}

impl sweep::Pass for SweepJob {
    async fn pass(&mut self) -> anyhow::Result<()> {
        let sweeper = Arc::clone(&self.sweeper);
        let census = match tokio::task::spawn_blocking(move || sweeper.sweep()).await {
            Ok(Ok(census)) => census,
            Ok(Err(error)) => {
                if !self.failing {
                    warn!(error = %error_chain(&error), "conntrack sweep failed; retrying every interval");
                }
                self.failing = true;
                return Ok(());
            }
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        };
        self.failing = false;
        debug!(
            entries = census.entries,
            seen = census.pass.seen,
            expired = census.pass.deleted,
            gone = census.pass.missing,
            syscalls = census.pass.syscalls,
            took_us = census.took.as_micros() as u64,
            "conntrack swept"
        );
        self.commands.run(|done| Command::Swept(census, done)).await
    }
}

async fn sweep_forever(
    sweeper: Sweeper,
    commands: Commands,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut job = SweepJob {
        sweeper: Arc::new(sweeper),
        commands,
        failing: false,
    };
    sweep::every(interval, &mut job).await
}

/// Warns once per interface the datapath wanted to send to but could not.
fn report_unattached(egress: &mut EgressWatch) {
    match egress.poll() {
        Ok(fresh) => {
            for iface in fresh {
                warn!(
                    ifindex = iface.ifindex,
                    "route to a backend or client leaves through {0}, which lb is not attached \
                     to: packets are passed to the kernel unchanged; attach lb to {0} too",
                    iface.name
                );
            }
        }
        Err(error) => debug!(%error, "reading UNATTACHED_EGRESS failed"),
    }
}

/// The options with an outer source for dsr-ipip in each family that has none given: an
/// address of the first attached interface that has one (link-local addresses cannot be
/// routed to a backend elsewhere).
fn with_encap_sources(options: &Options, ifaces: &[Interface]) -> Options {
    let addresses: Vec<IpAddr> = ifaces
        .iter()
        .flat_map(|iface| local_addresses::of_interface(&iface.name))
        .filter(|addr| match addr {
            IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_loopback(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local() && !v6.is_loopback(),
        })
        .collect();
    let own = |v4: bool, given: Option<EncapSource>| {
        given.or_else(|| {
            let addr = addresses.iter().find(|a| a.is_ipv4() == v4)?;
            let source = mode::encap_source(Prefix {
                addr: *addr,
                len: if v4 { 32 } else { 128 },
            });
            info!(source = %addr, "dsr-ipip outer source (no --encap-source for this family)");
            Some(source)
        })
    };
    let mut options = *options;
    options.encap_v4 = own(true, options.encap_v4);
    options.encap_v6 = own(false, options.encap_v6);
    options
}

/// Warns when a dsr-ipip VIP has backends of a family that no outer source was found for:
/// their packets are dropped (`drop_dsr_unsupported`). Said at debug level when no such
/// backend exists, so a NAT-only node does not warn at every start.
fn warn_unreachable_dsr(options: &Options, state: &State) {
    for (given, v4, family, flag) in [
        (options.encap_v4, true, "IPv4", "--encap-source-v4"),
        (options.encap_v6, false, "IPv6", "--encap-source-v6"),
    ] {
        if given.is_some() {
            continue;
        }
        let vips: Vec<String> = state
            .vips
            .iter()
            .filter(|(_, vip)| vip.mode.encapsulates())
            .filter(|(_, vip)| vip.backends.keys().any(|b| b.is_ipv4() == v4))
            .map(|(service, _)| service.to_string())
            .collect();
        if vips.is_empty() {
            debug!(
                "no {family} address on the attached interfaces and no {flag}: dsr-ipip cannot reach {family} backends"
            );
        } else {
            warn!(
                vips = vips.join(", "),
                "no {family} address on the attached interfaces and no {flag}: these dsr-ipip VIPs cannot reach their {family} backends, whose packets are dropped (drop_dsr_unsupported); give {flag} <ADDR>"
            );
        }
    }
}

/// Loads the program over the pinned (or new) maps, syncs the state, attaches.
fn start(
    args: &RunConfig,
    pins: &PinDir,
    adopted: Option<Limits>,
    object: &[u8],
    ifaces: &[Interface],
    declared: Option<State>,
    saved: Option<State>,
) -> anyhow::Result<Started> {
    let limits = adopted.unwrap_or_else(|| args.limits());
    let options = with_encap_sources(&args.options, ifaces);
    let mut ebpf =
        load::open(object, &limits, Some(pins), &options).context("opening the eBPF object")?;
    let program = load::program(&mut ebpf).context("the eBPF object has no XDP program")?;
    program.load().map_err(describe_load_error)?;
    let without_slot =
        load::install_tail_calls(&mut ebpf).context("loading the tail-called programs")?;
    if !without_slot.is_empty() {
        warn!(
            programs = without_slot.join(", "),
            "the pinned JUMPS map (an earlier release's) has no slot for these programs: later IP fragments to VIPs are dropped (drop_fragment, drop_backend_fragment) until `lb down` and a new start"
        );
    }
    let meta = maps::take(&mut ebpf, MAP_META)?;
    if adopted.is_none() {
        PinDir::write_layout(meta, &limits)?;
    }
    // Before TX_PORTS is taken: the tracing program is told its id.
    let lost_counted = match redirect_watch::attach(&mut ebpf) {
        Ok(()) => true,
        Err(error) => {
            warn!(
                error = %error_chain(&error),
                "frames the kernel drops after lb redirected them cannot be counted (xdp_redirect_lost stays 0)"
            );
            false
        }
    };
    let maps = ServiceMaps::take(&mut ebpf, &limits).context("opening the service maps")?;
    let stats = StatsMap::take(&mut ebpf).context("opening the stats map")?;
    let egress = EgressWatch::take(&mut ebpf).context("opening the unattached-egress map")?;
    let flow_cache = FlowCache::take(&mut ebpf).context("opening the flow cache map")?;
    let capture = CaptureMaps::take(&mut ebpf).context("opening the capture maps")?;
    if args.options.log {
        forward_datapath_log(&mut ebpf)?;
    }
    let mut map_sync = match adopted {
        Some(_) => MapSync::adopt(maps, limits).context("reading the pinned maps back")?,
        None => MapSync::new(maps, limits),
    }
    .with_hash_seed(options.hash_seed);
    let mut desired = match (declared, saved) {
        (Some(mut declared), saved) => {
            if let Some(saved) = saved {
                let config = args.config.as_deref().unwrap_or_else(|| Path::new("-"));
                info!(config = %config.display(), "--config replaces the saved state");
                // A drained node stays drained across restarts, whatever the file says.
                declared.node.drained |= saved.node.drained;
            }
            declared
        }
        (None, Some(saved)) => saved,
        (None, None) => map_sync.state().clone(),
    };
    desired.node.drained |= args.start_drained;
    warn_unreachable_dsr(&options, &desired);
    map_sync
        .sync(&desired)
        .context("applying the VIPs and backends")?;
    state_file::save(&args.state, map_sync.state())?;

    let ifindexes: Vec<u32> = ifaces.iter().map(|i| i.index).collect();
    for iface in ifaces {
        map_sync
            .add_tx_port(iface.index)
            .with_context(|| format!("adding {} to the redirect map", iface.name))?;
    }
    map_sync
        .retain_tx_ports(&ifindexes)
        .context("pruning the redirect map")?;
    local_macs::record(&mut map_sync, ifaces, args.forward_any_mac, true)
        .context("recording the interfaces' MACs")?;
    let program = load::program(&mut ebpf).context("the eBPF object has no XDP program")?;
    let mut attachments = Vec::with_capacity(ifaces.len());
    for iface in ifaces {
        let attachment = attach::attach_pinned(program, iface, args.xdp_mode, pins)?;
        info!(iface = %iface.name, ifindex = iface.index, mode = attachment.mode, "attached");
        attachments.push(attachment);
    }
    for stale in pins.pinned_links()? {
        if !ifaces.iter().any(|i| i.name == stale) {
            std::fs::remove_file(pins.link_path(&stale))
                .with_context(|| format!("detaching from {stale}"))?;
            info!(iface = %stale, "detached: not in --iface any more");
        }
    }
    Ok(Started {
        ebpf,
        map_sync,
        stats,
        attachments,
        egress,
        flow_cache,
        lost_counted,
        capture,
    })
}

/// Copies the datapath's aya-log records into this process's log (target `lb_ebpf`).
fn forward_datapath_log(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut ready = log::watch(ebpf)?;
    tokio::spawn(async move {
        while let Ok(mut guard) = ready.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    info!("datapath log on (--log-datapath)");
    Ok(())
}

enum Stop {
    Signal,
    Down,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    /// Reloads `--config` (systemd's ExecReload sends it through `lb reload` instead).
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// How often the daemon looks at its pins and at the unattached egress interfaces.
const PIN_CHECK: Duration = Duration::from_secs(2);

/// What the main task watches while the daemon runs.
struct Watch<'a> {
    tasks: &'a mut Tasks,
    commands: &'a Commands,
    reader: &'a Reader,
    args: &'a RunConfig,
    down: &'a mut watch::Receiver<bool>,
    egress: &'a mut EgressWatch,
    losses: LossWatch,
}

/// Prints counters every interval until a signal or `lb down`.
async fn wait_for_stop(signals: Signals, watch: &mut Watch<'_>) -> anyhow::Result<Stop> {
    let Signals {
        term: mut sigterm,
        int: mut sigint,
        hup: mut sighup,
    } = signals;
    let interval = watch
        .args
        .stats_interval
        .unwrap_or(Duration::from_secs(86_400));
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut last: Option<(Snapshot, Instant)> = None;
    let mut pin_check = tokio::time::interval(PIN_CHECK);
    loop {
        let done = tokio::select! {
            failure = watch.tasks.failure() => return Err(failure),
            _ = sigterm.recv() => { info!("SIGTERM received, stopping the daemon"); return Ok(Stop::Signal); }
            _ = sigint.recv() => { info!("interrupt received, stopping the daemon"); return Ok(Stop::Signal); }
            _ = watch.down.changed() => return Ok(Stop::Down),
            _ = sighup.recv() => watch.commands.run(Command::Hangup).await,
            _ = pin_check.tick() => {
                report_unattached(watch.egress);
                watch.losses.check(watch.reader);
                watch.commands.run(Command::CheckPins).await
            }
            _ = ticker.tick(), if watch.args.stats_interval.is_some() => {
                match watch.reader.stats.read() {
                    Ok(now) => {
                        let taken = Instant::now();
                        let previous = last.as_ref().map(|(s, at)| (s, taken.duration_since(*at)));
                        say!("{}", counters::render(&now, previous));
                        last = Some((now, taken));
                    }
                    Err(error) => warn!(%error, "reading counters failed"),
                }
                Ok(())
            }
        };
        if done.is_err() {
            // The controller's task ended: its task's end says why.
            return Err(watch.tasks.failure().await);
        }
    }
}

/// Turns a verifier rejection into an error that carries the verifier's own explanation.
fn describe_load_error(error: ProgramError) -> anyhow::Error {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow::anyhow!(
            "the kernel verifier rejected the XDP program ({io_error}); verifier log:\n{verifier_log}"
        ),
        other => anyhow::Error::new(other).context("loading the XDP program into the kernel"),
    }
}
