//! The client subcommands: one API request each, printed as a table or as JSON.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context as _;
use comfy_table::{Table, presets::NOTHING};
use serde::Serialize;

use crate::api::client;
use crate::{
    api::wire::{
        BackendEntry, DownReport, FlowList, FlushReport, Request, StatsReport, StatusReport,
        VipEntry,
    },
    cli::args::{
        BackendArgs, BackendCommand, ConntrackCommand, DownArgs, FlowFilterArgs, OutputArgs,
        StatsArgs, VipCommand,
    },
    datapath::pins::{DEFAULT_PIN_DIR, PinDir},
    model::health::unix_seconds,
};

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    table
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn done(socket: &Path, request: &Request, what: String) -> anyhow::Result<()> {
    client::call(socket, request)?;
    println!("{what}");
    Ok(())
}

pub fn vip(socket: &Path, command: VipCommand) -> anyhow::Result<()> {
    match command {
        VipCommand::Add { service: s, check } => done(
            socket,
            &Request::VipAdd {
                vip: s.vip,
                proto: s.proto,
                check: check.config(),
            },
            format!(
                "added VIP {}/{}{}",
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
            println!("{}", vip_table(&vips));
            Ok(())
        }
    }
}

fn vip_table(vips: &[VipEntry]) -> Table {
    let mut t = table(&[
        "VIP",
        "PROTO",
        "BACKENDS",
        "ACTIVE",
        "PACKETS",
        "BYTES",
        "NEW FLOWS",
    ]);
    for v in vips {
        t.add_row(vec![
            v.vip.to_string(),
            v.proto.to_string(),
            v.backends.to_string(),
            v.active.to_string(),
            v.packets.to_string(),
            v.bytes.to_string(),
            v.new_flows.to_string(),
        ]);
    }
    t
}

/// `up`, `down`, `draining` or `unchecked`, with how long it has been so.
fn health_cell(b: &BackendEntry) -> String {
    let label = if b.state == "draining" {
        "draining".to_owned()
    } else {
        b.health.to_string()
    };
    let Some(since) = b.health_since else {
        return label;
    };
    let age = unix_seconds(SystemTime::now()).saturating_sub(since);
    format!("{label} {}", short_duration(age))
}

fn short_duration(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn backend_table(backends: &[BackendEntry]) -> Table {
    let mut t = table(&[
        "VIP", "PROTO", "BACKEND", "WEIGHT", "HEALTH", "ACTIVE", "CLOSING", "PACKETS", "BYTES",
    ]);
    for b in backends {
        t.add_row(vec![
            b.vip.to_string(),
            b.proto.to_string(),
            b.backend.to_string(),
            b.weight.to_string(),
            health_cell(b),
            b.active_conns.to_string(),
            b.closing_conns.to_string(),
            b.packets.to_string(),
            b.bytes.to_string(),
        ]);
    }
    t
}

/// `lb conntrack list|flush`.
pub fn conntrack(socket: &Path, command: ConntrackCommand) -> anyhow::Result<()> {
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
            println!("{}", flow_table(&list));
            let more = list.matched.saturating_sub(list.flows.len() as u64);
            if more > 0 {
                println!("... and {more} more matched (--limit {limit} shown)");
            }
            Ok(())
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
            println!("flushed {} tracked flows", report.flushed);
            Ok(())
        }
    }
}

fn flow_table(list: &FlowList) -> Table {
    let mut t = table(&[
        "CLIENT",
        "VIP",
        "PROTO",
        "BACKEND",
        "STATE",
        "IDLE",
        "EXPIRES IN",
    ]);
    for f in &list.flows {
        t.add_row(vec![
            f.client.to_string(),
            f.vip.to_string(),
            f.proto.to_string(),
            f.backend
                .map_or_else(|| "(gone)".to_owned(), |b| b.to_string()),
            f.state.clone(),
            format!("{}s", f.idle_secs),
            format!("{}s", f.expires_in_secs),
        ]);
    }
    t
}

pub fn backend(socket: &Path, command: BackendCommand) -> anyhow::Result<()> {
    let names = |t: &BackendArgs| (t.service.vip, t.service.proto, t.backend);
    match command {
        BackendCommand::Add { target, weight } => {
            let (vip, proto, backend) = names(&target);
            done(
                socket,
                &Request::BackendAdd {
                    vip,
                    proto,
                    backend,
                    weight,
                },
                format!("added backend {backend} to {vip}/{proto} (weight {weight})"),
            )
        }
        BackendCommand::Set {
            target,
            weight,
            undrain,
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
            println!("{}", backend_table(&backends));
            Ok(())
        }
    }
}

pub fn stats(socket: &Path, args: StatsArgs) -> anyhow::Result<()> {
    if args.watch {
        return crate::cli::watch::run(socket, &args);
    }
    let output = args.output;
    let report: StatsReport = client::call_as(socket, &Request::Stats {})?;
    if output.json {
        return print_json(&report);
    }
    let mut t = table(&["COUNTER", "PACKETS", "BYTES"]);
    for (name, c) in report.counters.iter().filter(|(_, c)| c.packets > 0) {
        t.add_row(vec![
            name.clone(),
            c.packets.to_string(),
            c.bytes.to_string(),
        ]);
    }
    let ct = report.conntrack;
    println!(
        "{t}\n\nconntrack: {} of {} entries; {} expired or flushed, {} evicted, {} TCP segments found untracked\n\n{}\n\n{}",
        ct.entries,
        ct.capacity,
        ct.deleted,
        ct.evicted,
        ct.missed_mid_flow,
        vip_table(&report.vips),
        backend_table(&report.backends)
    );
    Ok(())
}

pub fn status(socket: &Path, output: OutputArgs) -> anyhow::Result<()> {
    let s: StatusReport = client::call_as(socket, &Request::Status {})?;
    if output.json {
        return print_json(&s);
    }
    let interfaces: Vec<String> = s
        .interfaces
        .iter()
        .map(|i| format!("{} [{}]", i.name, i.mode))
        .collect();
    println!(
        "lb {} running (pid {}, up {} s{})\n\
         interfaces:  {}\n\
         VIPs:        {} with {} backends\n\
         pins:        {}\n\
         state file:  {}\n\
         API socket:  {}\n\
         sizes:       Maglev table {}, {} VIPs max, {} tracked flows\n\
         conntrack:   {} entries, swept every {} s\n\
         timeouts:    {}",
        s.version,
        s.pid,
        s.uptime_secs,
        if s.adopted {
            ", adopted a pinned datapath"
        } else {
            ""
        },
        interfaces.join(", "),
        s.vips,
        s.backends,
        s.pin_dir.display(),
        s.state_file.display(),
        s.api.display(),
        s.table_size,
        s.max_vips,
        s.conntrack_capacity,
        s.conntrack_entries,
        s.conntrack_sweep_secs,
        s.conntrack_timeouts
            .iter()
            .map(|t| format!("{} {} s", t.state, t.secs))
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(())
}

/// Through the daemon when one answers on the socket and owns the pin directory asked for;
/// otherwise straight on the pin directory (refused if another daemon holds it).
pub fn down(socket: &Path, args: DownArgs) -> anyhow::Result<()> {
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
            let detached = pins.pinned_links()?;
            pins.remove()
                .with_context(|| format!("removing {}", dir.display()))?;
            DownReport {
                detached,
                pin_dir: dir,
            }
        }
    };
    println!(
        "lb down: detached from {}; removed the pins in {}",
        if report.detached.is_empty() {
            "no interface".to_owned()
        } else {
            report.detached.join(", ")
        },
        report.pin_dir.display()
    );
    Ok(())
}
