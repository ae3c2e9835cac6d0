//! `lb run`: load the datapath, attach it, report counters, detach on Ctrl-C or SIGTERM.

use std::time::Instant;

use anyhow::Context as _;
use aya::programs::ProgramError;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    attach::{self, Attachment, Interface},
    balancer::Balancer,
    cli::RunArgs,
    config::Config,
    datapath,
    maps::ServiceMaps,
    privileges,
    stats::{self, Snapshot, StatsMap},
};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    privileges::check()?;
    // Resolve every name first so a typo fails before anything is loaded.
    let ifaces = args
        .ifaces
        .iter()
        .map(|name| Interface::resolve(name))
        .collect::<Result<Vec<_>, _>>()?;
    let limits = args.limits();
    limits.validate()?;
    // Parse the configuration before loading anything, so a bad file changes nothing.
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    raise_memlock_limit();

    let custom_object = match &args.bpf_object {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading eBPF object {}", path.display()))?,
        ),
        None => None,
    };
    let object = custom_object.as_deref().unwrap_or(datapath::OBJECT);
    let mut ebpf = datapath::open(object, &limits).context("opening the eBPF object")?;
    let program = datapath::program(&mut ebpf).context("the eBPF object has no XDP program")?;
    program.load().map_err(describe_load_error)?;

    let maps = ServiceMaps::take(&mut ebpf, &limits).context("opening the service maps")?;
    let mut balancer = Balancer::new(maps, limits);
    config
        .apply(&mut balancer)
        .context("applying the configuration")?;
    for iface in &ifaces {
        balancer
            .add_tx_port(iface.index)
            .with_context(|| format!("adding {} to the redirect map", iface.name))?;
    }
    let program = datapath::program(&mut ebpf).context("the eBPF object has no XDP program")?;
    let mut attachments = Vec::with_capacity(ifaces.len());
    for iface in &ifaces {
        let attachment = attach::attach(program, iface, args.xdp_mode)?;
        info!(iface = %iface.name, ifindex = iface.index, mode = attachment.mode, "attached");
        attachments.push(attachment);
    }
    let stats = StatsMap::take(&mut ebpf).context("opening the stats map")?;
    println!(
        "lb: forwarding on {} ({}); Ctrl-C or SIGTERM stops",
        attachments
            .iter()
            .map(|a| format!("{} [{}]", a.iface.name, a.mode))
            .collect::<Vec<_>>()
            .join(", "),
        env!("CARGO_PKG_VERSION"),
    );

    report_until_stopped(&stats, &args).await?;

    let program = datapath::program(&mut ebpf).context("the XDP program went missing")?;
    detach_all(program, attachments);
    let now = stats.read().context("reading counters")?;
    println!("counters at exit:\n{}", stats::render(&now, None));
    Ok(())
}

/// Prints counters every interval until Ctrl-C or SIGTERM.
async fn report_until_stopped(stats: &StatsMap, args: &RunArgs) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let Some(interval) = args.stats_interval() else {
        tokio::select! {
            _ = sigterm.recv() => info!("SIGTERM received, detaching"),
            _ = sigint.recv() => info!("interrupt received, detaching"),
        }
        return Ok(());
    };
    let mut last: Option<(Snapshot, Instant)> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM received, detaching"); break; }
            _ = sigint.recv() => { info!("interrupt received, detaching"); break; }
            _ = ticker.tick() => {
                let now = stats.read().context("reading counters")?;
                let taken = Instant::now();
                let previous = last.as_ref().map(|(s, at)| (s, taken.duration_since(*at)));
                println!("{}", stats::render(&now, previous));
                last = Some((now, taken));
            }
        }
    }
    Ok(())
}

fn detach_all(program: &mut aya::programs::Xdp, attachments: Vec<Attachment>) {
    for Attachment { iface, link, .. } in attachments {
        match program.detach(link) {
            Ok(()) => info!(iface = %iface.name, "detached"),
            Err(error) => warn!(iface = %iface.name, %error, "detach failed"),
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

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        warn!("could not raise RLIMIT_MEMLOCK; old kernels may refuse to create maps");
    }
}
