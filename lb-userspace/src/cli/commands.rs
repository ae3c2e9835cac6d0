//! The client subcommands: one API request each, printed as a table or as JSON.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context as _;
use serde::Serialize;

use crate::api::client;
use crate::{
    api::wire::{
        BackendEntry, DownReport, FlowList, FlushReport, NodeReport, ReloadReport, Request,
        StatsReport, StatusReport, VipEntry,
    },
    cli::{
        args::{
            BackendArgs, BackendCommand, CheckConfigArgs, ConntrackCommand, DownArgs,
            FlowFilterArgs, NodeCommand, OutputArgs, StatsArgs, VipCommand,
        },
        output, render, version,
    },
    datapath::announce,
    datapath::attach::Interface,
    datapath::pins::{DEFAULT_PIN_DIR, PinDir},
    datapath::release,
    model::health::unix_seconds,
    store::state_file,
};

/// Seconds since the Unix epoch, for "how long ago" cells.
fn now() -> u64 {
    unix_seconds(SystemTime::now())
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    output::line(serde_json::to_string_pretty(value)?)
}

fn done(socket: &Path, request: &Request, what: String) -> anyhow::Result<()> {
    let answer = client::call(socket, request)?;
    output::line(what)?;
    if let Some(config) = answer.get("config").and_then(|c| c.as_str()) {
        output::note(&format!(
            "the daemon declares its state in {config}: the next `lb reload` or restart \
             replaces this change; edit the file to keep it"
        ));
    }
    Ok(())
}

pub(crate) fn vip(socket: &Path, command: VipCommand) -> anyhow::Result<()> {
    match command {
        VipCommand::Add {
            service: s,
            check,
            mode,
            on_down,
            allow_sources,
            quic,
        } => done(
            socket,
            &Request::VipAdd {
                vip: s.vip,
                proto: s.proto,
                check: check.config(),
                mode,
                on_down,
                allow_sources,
                quic: quic.iter().map(ToString::to_string).collect(),
            },
            format!(
                "added VIP {}/{} ({mode}){}",
                s.vip,
                s.proto,
                check
                    .check
                    .as_ref()
                    .map(|c| format!(" checked by {c}"))
                    .unwrap_or_default()
            ),
        ),
        VipCommand::SetCheck {
            service: s,
            check,
            no_check: _,
        } => done(
            socket,
            &Request::VipSetCheck {
                vip: s.vip,
                proto: s.proto,
                check: check.config(),
            },
            format!("updated the health check of VIP {}/{}", s.vip, s.proto),
        ),
        VipCommand::SetMode { service: s, mode } => done(
            socket,
            &Request::VipSetMode {
                vip: s.vip,
                proto: s.proto,
                mode,
            },
            format!("VIP {}/{} now forwards in {mode} mode", s.vip, s.proto),
        ),
        VipCommand::SetQuic {
            service: s,
            quic,
            no_quic: _,
        } => done(
            socket,
            &Request::VipSetQuic {
                vip: s.vip,
                proto: s.proto,
                quic: quic.iter().map(ToString::to_string).collect(),
            },
            if quic.is_empty() {
                format!("VIP {}/{} is no longer a QUIC VIP", s.vip, s.proto)
            } else {
                format!(
                    "VIP {}/{} routes QUIC by {} config(s); `lb backend list {} --proto {}` shows the server ids",
                    s.vip,
                    s.proto,
                    quic.len(),
                    s.vip,
                    s.proto
                )
            },
        ),
        VipCommand::Del(s) => done(
            socket,
            &Request::VipDel {
                vip: s.vip,
                proto: s.proto,
            },
            format!("removed VIP {}/{}", s.vip, s.proto),
        ),
        VipCommand::List(OutputArgs { json }) => {
            let vips: Vec<VipEntry> = client::call_as(socket, &Request::VipList {})?;
            if json {
                return print_json(&vips);
            }
            output::line(render::vip_table(&vips))
        }
    }
}

/// `lb conntrack list|flush`.
pub(crate) fn conntrack(socket: &Path, command: ConntrackCommand) -> anyhow::Result<()> {
    match command {
        ConntrackCommand::List {
            filter:
                FlowFilterArgs {
                    vip,
                    proto,
                    backend,
                },
            limit,
            output,
        } => {
            let list: FlowList = client::call_as(
                socket,
                &Request::ConntrackList {
                    vip,
                    proto,
                    backend,
                    limit,
                },
            )?;
            if output.json {
                return print_json(&list);
            }
            let more = list.matched.saturating_sub(list.flows.len() as u64);
            output::with_stdout(|out| {
                writeln!(out, "{}", render::flow_table(&list))?;
                if more > 0 {
                    writeln!(out, "... and {more} more matched (--limit {limit} shown)")?;
                }
                Ok(())
            })
        }
        ConntrackCommand::Flush {
            filter:
                FlowFilterArgs {
                    vip,
                    proto,
                    backend,
                },
        } => {
            let report: FlushReport = client::call_as(
                socket,
                &Request::ConntrackFlush {
                    vip,
                    proto,
                    backend,
                },
            )?;
            output::line(format_args!("flushed {} tracked flows", report.flushed))
        }
    }
}

pub(crate) fn backend(socket: &Path, command: BackendCommand) -> anyhow::Result<()> {
    let names = |t: &BackendArgs| (t.service.vip, t.service.proto, t.backend);
    match command {
        BackendCommand::Add {
            target,
            weight,
            server_id,
        } => {
            let (vip, proto, backend) = names(&target);
            done(
                socket,
                &Request::BackendAdd {
                    vip,
                    proto,
                    backend,
                    weight,
                    server_id: server_id.map(|id| id.to_string()),
                },
                format!("added backend {backend} to {vip}/{proto} (weight {weight})"),
            )
        }
        BackendCommand::Set {
            target,
            weight,
            undrain,
            server_id,
        } => {
            let (vip, proto, backend) = names(&target);
            done(
                socket,
                &Request::BackendSet {
                    vip,
                    proto,
                    backend,
                    weight,
                    undrain,
                    server_id: server_id.map(|id| id.to_string()),
                },
                format!("updated backend {backend} of {vip}/{proto}"),
            )
        }
        BackendCommand::Drain(target) => {
            let (vip, proto, backend) = names(&target);
            done(
                socket,
                &Request::BackendDrain {
                    vip,
                    proto,
                    backend,
                },
                format!("draining backend {backend} of {vip}/{proto}: no new flows"),
            )
        }
        BackendCommand::Del(target) => {
            let (vip, proto, backend) = names(&target);
            done(
                socket,
                &Request::BackendDel {
                    vip,
                    proto,
                    backend,
                },
                format!("removed backend {backend} from {vip}/{proto}"),
            )
        }
        BackendCommand::List { vip, proto, output } => {
            let backends: Vec<BackendEntry> =
                client::call_as(socket, &Request::BackendList { vip, proto })?;
            if output.json {
                return print_json(&backends);
            }
            output::line(render::backend_table(&backends, now()))?;
            if backends.iter().any(|b| b.server_id.is_some()) {
                let vips: Vec<VipEntry> = client::call_as(socket, &Request::VipList {})?;
                if let Some(servers) = render::quic_servers(&backends, &vips) {
                    output::line(servers)?;
                }
            }
            Ok(())
        }
    }
}

pub(crate) fn stats(socket: &Path, args: StatsArgs) -> anyhow::Result<()> {
    if args.watch {
        return crate::cli::watch::run(socket, &args);
    }
    let output = args.output;
    let report: StatsReport = client::call_as(socket, &Request::Stats {})?;
    if output.json {
        return print_json(&report);
    }
    output::line(render::stats(&report, now()))
}

/// `lb node drain` / `lb node resume`: prints what the node announces afterwards.
pub(crate) fn node(socket: &Path, command: NodeCommand) -> anyhow::Result<()> {
    let (request, output) = match command {
        NodeCommand::Drain(output) => (Request::NodeDrain {}, output),
        NodeCommand::Resume(output) => (Request::NodeResume {}, output),
    };
    let report: NodeReport = client::call_as(socket, &request)?;
    if output.json {
        return print_json(&report);
    }
    let verb = if report.drained {
        "drained: every VIP withdrawn; flows that still arrive are served"
    } else {
        "resumed: VIPs with a backend that takes new flows are announced"
    };
    output::line(format_args!("lb node {verb}\n{}", render::node(&report)))
}

pub(crate) fn reload(socket: &Path, output: OutputArgs) -> anyhow::Result<()> {
    let report: ReloadReport = client::call_as(socket, &Request::Reload {})?;
    if output.json {
        return print_json(&report);
    }
    output::line(render::reload(&report))
}

pub(crate) fn status(socket: &Path, args: OutputArgs) -> anyhow::Result<()> {
    let s: StatusReport = client::call_as(socket, &Request::Status {})?;
    if let Some(warning) = version::mismatch(&version::Build::daemon(&s)) {
        tracing::warn!("{warning}");
    }
    if args.json {
        return print_json(&s);
    }
    output::line(render::status(&s))
}

/// `lb check-config`: the daemon's own reading of `--config` (the same function, so the
/// same checks and the same error with file and line), without a daemon.
pub(crate) fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let file = state_file::load_declared(&args.file)?;
    output::line(render::config_summary(&args.file, &file))
}

/// Through the daemon when one answers on the socket and owns the pin directory asked for;
/// otherwise straight on the pin directory (refused if another daemon holds it).
pub(crate) fn down(socket: &Path, args: DownArgs) -> anyhow::Result<()> {
    let daemon_pins = if client::is_listening(socket) {
        let status: StatusReport = client::call_as(socket, &Request::Status {})?;
        Some(status.pin_dir)
    } else {
        None
    };
    let report = match (daemon_pins, args.pin_dir) {
        (Some(theirs), wanted) if wanted.as_ref().is_none_or(|w| *w == theirs) => {
            client::call_as::<DownReport>(socket, &Request::Down {})?
        }
        (_, wanted) => {
            let dir = wanted.unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
            let pins = PinDir::open(&dir)?;
            // No daemon to ask which table it announced through: every route of lb's
            // protocol through the interfaces this datapath is attached to goes, before
            // the datapath does (run it in the datapath's network namespace).
            let detached = pins.pinned_links()?;
            let ifaces: Vec<Interface> = detached
                .iter()
                .filter_map(|name| Interface::resolve(name).ok())
                .collect();
            let ifindexes: Vec<u32> = ifaces.iter().map(|iface| iface.index).collect();
            let withdrawn =
                announce::withdraw_through(&ifindexes).context("withdrawing the VIPs")?;
            let running = release::running_on(&ifaces);
            pins.remove()
                .with_context(|| format!("removing {}", dir.display()))?;
            release::wait_released(&running)?;
            DownReport {
                detached,
                pin_dir: dir,
                withdrawn: withdrawn.into_iter().map(|(_, vip)| vip).collect(),
            }
        }
    };
    output::with_stdout(|out| {
        for vip in &report.withdrawn {
            writeln!(out, "lb down: withdrew {vip}")?;
        }
        writeln!(
            out,
            "lb down: detached from {}; removed the pins in {}",
            if report.detached.is_empty() {
                "no interface".to_owned()
            } else {
                report.detached.join(", ")
            },
            report.pin_dir.display()
        )
    })
}
