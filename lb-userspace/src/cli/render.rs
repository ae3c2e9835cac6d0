//! How answers look in a terminal: tables and summaries, from the API's types. Pure, so
//! each is pinned by a snapshot test.

use comfy_table::{Table, presets::NOTHING};

use crate::api::wire::{
    BackendEntry, FlowList, NodeReport, NotifyStatus, ReloadReport, StatsReport, StatusReport,
    VipEntry,
};
use crate::model::memory::MemoryReport;

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    table
}

pub(crate) fn vip_table(vips: &[VipEntry]) -> Table {
    let mut t = table(&[
        "VIP",
        "PROTO",
        "MODE",
        "ON DOWN",
        "SOURCES",
        "QUIC",
        "BACKENDS",
        "ACTIVE",
        "PACKETS",
        "BYTES",
        "NEW FLOWS",
        "TABLE",
    ]);
    for v in vips {
        t.add_row(vec![
            v.vip.to_string(),
            v.proto.to_string(),
            v.mode.to_string(),
            v.on_down.to_string(),
            if v.allow_sources.is_empty() {
                "any".to_owned()
            } else {
                v.allow_sources
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            if v.quic.is_empty() {
                "-".to_owned()
            } else {
                v.quic.join("\n")
            },
            v.backends.to_string(),
            v.active.to_string(),
            v.packets.to_string(),
            v.bytes.to_string(),
            v.new_flows.to_string(),
            v.table_fingerprint.clone(),
        ]);
    }
    t
}

/// The node's announcements: one line per VIP.
/// `lb reload`: the file, then one line per change.
pub(crate) fn reload(r: &ReloadReport) -> String {
    let file = r.config.display();
    if r.changes.is_empty() {
        return format!("reloaded {file}: no changes");
    }
    let mut text = format!("reloaded {file}: {} change(s)", r.changes.len());
    for change in &r.changes {
        text.push_str(&format!("\n  {change}"));
    }
    text
}

pub(crate) fn node(n: &NodeReport) -> String {
    let mut text = match n.announce_table {
        None => "announce:    off (no --announce-table)".to_owned(),
        Some(table) => format!(
            "announce:    table {table}{}, {} address(es) announced",
            if n.drained { ", node drained" } else { "" },
            n.announced.len()
        ),
    };
    text.push_str(&format!("\nhash seed:   {}", n.hash_seed));
    if let Some(error) = &n.route_error {
        text.push_str(&format!("\nroute error: {error}"));
    }
    for v in &n.vips {
        text.push_str(&format!(
            "\n  {}/{}: {}, {}",
            v.vip,
            v.proto,
            if v.announced {
                "announced"
            } else {
                "not announced"
            },
            v.detail
        ));
    }
    text
}

/// `up`, `down`, `draining` or `unchecked`, with how long it has been so.
fn health_cell(b: &BackendEntry, now: u64) -> String {
    let label = if b.state == "draining" {
        "draining".to_owned()
    } else {
        b.health.to_string()
    };
    let Some(since) = b.health_since else {
        return label;
    };
    let age = now.saturating_sub(since);
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

pub(crate) fn backend_table(backends: &[BackendEntry], now: u64) -> Table {
    let mut t = table(&[
        "VIP",
        "PROTO",
        "BACKEND",
        "WEIGHT",
        "SERVER ID",
        "HEALTH",
        "ACTIVE",
        "CLOSING",
        "PACKETS",
        "BYTES",
    ]);
    for b in backends {
        t.add_row(vec![
            b.vip.to_string(),
            b.proto.to_string(),
            b.backend.to_string(),
            b.weight.to_string(),
            b.server_id.clone().unwrap_or_else(|| "-".to_owned()),
            health_cell(b, now),
            b.active_conns.to_string(),
            b.closing_conns.to_string(),
            b.packets.to_string(),
            b.bytes.to_string(),
        ]);
    }
    t
}

/// What each server of a QUIC VIP must be configured with: the VIP's first config (the
/// one to issue connection IDs with) and its server id; `None` without QUIC backends.
pub(crate) fn quic_servers(backends: &[BackendEntry], vips: &[VipEntry]) -> Option<String> {
    let lines: Vec<String> = backends
        .iter()
        .filter_map(|b| {
            let server_id = b.server_id.as_ref()?;
            let config = vips
                .iter()
                .find(|v| v.vip == b.vip && v.proto == b.proto)
                .and_then(|v| v.quic.first())?;
            Some(format!("  {}  {config}  server id {server_id}", b.backend))
        })
        .collect();
    (!lines.is_empty()).then(|| {
        format!(
            "QUIC: each server issues connection IDs with its VIP's first config and its server id:\n{}",
            lines.join("\n")
        )
    })
}

pub(crate) fn flow_table(list: &FlowList) -> Table {
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
            if f.proven {
                f.state.clone()
            } else {
                format!("{} (unproven)", f.state)
            },
            format!("{}s", f.idle_secs),
            format!("{}s", f.expires_in_secs),
        ]);
    }
    t
}

/// `lb stats`: the non-zero counters, the conntrack summary, the VIPs and the backends.
pub(crate) fn stats(report: &StatsReport, now: u64) -> String {
    let mut t = table(&["COUNTER", "PACKETS", "BYTES"]);
    for (name, c) in report.counters.iter().filter(|(_, c)| c.packets > 0) {
        t.add_row(vec![
            name.clone(),
            c.packets.to_string(),
            c.bytes.to_string(),
        ]);
    }
    let ct = report.conntrack;
    format!(
        "{t}\n\nconntrack: {} of {} entries; {} expired or flushed, {} evicted, {} TCP segments found untracked\n\
         admission: {} proven ({} evicted), {} promoted, {} new flows not tracked past {}\n\n{}\n\n{}",
        ct.entries,
        ct.capacity,
        ct.deleted,
        ct.evicted,
        ct.missed_mid_flow,
        ct.proven_entries,
        ct.evicted_proven,
        ct.promoted,
        ct.flood_untracked,
        new_flow_limit(ct.new_flow_limit),
        vip_table(&report.vips),
        backend_table(&report.backends, now)
    )
}

/// The rate guard's setting in words.
fn new_flow_limit(limit: u32) -> String {
    if limit == 0 {
        "no new-flow limit".to_owned()
    } else {
        format!("{limit} new flows per CPU per second")
    }
}

/// "1 VIP with 1 backend", "2 VIPs with 5 backends", "no VIPs".
fn vips_and_backends(vips: usize, backends: usize) -> String {
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    if vips == 0 {
        return "no VIPs".to_owned();
    }
    format!(
        "{vips} VIP{} with {backends} backend{}",
        plural(vips),
        plural(backends)
    )
}

pub(crate) fn status(s: &StatusReport) -> String {
    let interfaces: Vec<String> = s
        .interfaces
        .iter()
        .map(|i| match &i.kind {
            Some(kind) => format!("{} [{}, {kind}]", i.name, i.mode),
            None => format!("{} [{}]", i.name, i.mode),
        })
        .collect();
    format!(
        "lb {} (datapath {}) running (pid {}, up {} s{})\n\
         interfaces:  {}\n\
         {}\
         VIPs:        {}\n\
         pins:        {}\n\
         state file:  {}\n\
         API socket:  {}\n\
         sizes:       Maglev table {}, {} VIPs max, {} backends max, {} tracked flows\n\
         maps:        {}\n\
         conntrack:   {} entries ({} proven), swept every {} s\n\
         admission:   new flows wait in an unproven table of {} until proven; {}\n\
         timeouts:    {}\n\
         {}\n\
         {}",
        s.version,
        if s.datapath_build.is_empty() {
            "unknown"
        } else {
            &s.datapath_build
        },
        s.pid,
        s.uptime_secs,
        if s.adopted {
            ", adopted a pinned datapath"
        } else {
            ""
        },
        interfaces.join(", "),
        egress(s),
        vips_and_backends(s.vips, s.backends),
        s.pin_dir.display(),
        s.state_file.display(),
        s.api.display(),
        s.table_size,
        s.max_vips,
        s.max_backends,
        s.conntrack_capacity,
        s.map_memory
            .as_ref()
            .map_or_else(|| "kernel memory unknown".to_owned(), MemoryReport::summary),
        s.conntrack_entries,
        s.conntrack_proven_entries,
        s.conntrack_sweep_secs,
        s.conntrack_unproven_capacity,
        new_flow_limit(s.new_flow_limit),
        s.conntrack_timeouts
            .iter()
            .map(|t| format!("{} {} s", t.state, t.secs))
            .collect::<Vec<_>>()
            .join(", "),
        notify(s.notify.as_ref()),
        node(&s.node),
    )
}

/// What the attached interfaces need to take redirected frames, and the frames the kernel
/// dropped after a redirect; nothing when all is well.
fn egress(s: &StatusReport) -> String {
    let mut text = String::new();
    for advice in s.interfaces.iter().filter_map(|i| i.advice.as_ref()) {
        text.push_str(&format!("  {}: {}\n", advice.level, advice.text));
    }
    match s.xdp_redirect_lost {
        Some(0) => {}
        Some(lost) => text.push_str(&format!(
            "  lost:     {lost} frames redirected out of an attached interface were dropped by the kernel (xdp_redirect_lost)\n"
        )),
        None if s.interfaces.iter().any(|i| i.kind.is_some()) => text.push_str(
            "  lost:     not counted (the tracepoint xdp:xdp_redirect_err is not available)\n",
        ),
        None => {}
    }
    if s.syn_checksum_partial > 0 {
        text.push_str(&format!(
            "  offload:  {} client SYNs arrived with a checksum left to their sender's tx offload (syn_checksum_partial)\n",
            s.syn_checksum_partial
        ));
    }
    text
}

/// The notify hook's line of `lb status`.
fn notify(hook: Option<&NotifyStatus>) -> String {
    let Some(hook) = hook else {
        return "notify:      off (no --notify or [notify])".to_owned();
    };
    let runs = hook.runs;
    format!(
        "notify:      {} <VIP> <BACKEND> <OLD> <NEW> (timeout {} s); runs: {} ok, {} failed, {} timed out, {} dropped",
        hook.command, hook.timeout_secs, runs.ok, runs.failed, runs.timed_out, runs.dropped
    )
}

/// `lb check-config`: what a valid file declares, one VIP a line.
pub(crate) fn config_summary(
    path: &std::path::Path,
    file: &crate::model::config::DeclaredFile,
) -> String {
    let (state, cluster) = (&file.state, &file.cluster);
    let backends = state.backend_count();
    let mut lines = vec![format!(
        "{} is valid: {} VIP{}, {backends} backend{}",
        path.display(),
        state.vips.len(),
        if state.vips.len() == 1 { "" } else { "s" },
        if backends == 1 { "" } else { "s" },
    )];
    let mut vips = table(&["VIP", "MODE", "BACKENDS", "CHECK"]);
    for (service, spec) in &state.vips {
        let draining = spec.backends.values().filter(|b| b.draining).count();
        vips.add_row(vec![
            service.to_string(),
            spec.mode.to_string(),
            if draining > 0 {
                format!("{} ({draining} draining)", spec.backends.len())
            } else {
                spec.backends.len().to_string()
            },
            spec.check.as_ref().map_or_else(
                || "-".to_owned(),
                |check| crate::model::check::CheckConfig::from(check).probe,
            ),
        ]);
    }
    if !state.vips.is_empty() {
        lines.push(vips.to_string());
    }
    lines.push(format!(
        "cluster: hash seed {}, announce table {}{}",
        if cluster.hash_seed.is_some() {
            "set"
        } else {
            "default"
        },
        cluster
            .announce_table
            .map_or_else(|| "off".to_owned(), |table| table.to_string()),
        if state.node.drained {
            "; node drained"
        } else {
            ""
        },
    ));
    if let Some(hook) = &file.notify {
        lines.push(format!(
            "notify: {hook} <VIP> <BACKEND> <OLD> <NEW> (timeout {} s)",
            hook.timeout().as_secs_f64()
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures;

    #[test]
    fn a_config_summary_counts_vips_backends_and_modes() {
        let text = "[cluster]\nannounce_table = 4242\n\n[notify]\ncommand = [\"/usr/local/bin/page\", \"ops\"]\n\n[[vip]]\naddress = \"198.18.1.1:80\"\n\
                    check = { probe = \"http:/healthz\" }\nbackends = [{ address = \"198.18.2.2:80\" }, \
                    { address = \"198.18.2.3:80\", drain = true }]\n\n[[vip]]\n\
                    address = \"[fd00::1]:53\"\nproto = \"udp\"\nmode = \"dsr-ipip\"\n";
        let path = std::path::Path::new("lb.toml");
        let file = crate::model::config::parse_declared(text, path).expect("a valid file");
        insta::assert_snapshot!("config_summary", config_summary(path, &file));
    }

    #[test]
    fn tables_keep_their_columns() {
        insta::assert_snapshot!("vips", vip_table(&fixtures::vips()).to_string());
        insta::assert_snapshot!(
            "backends",
            backend_table(&fixtures::backends(), fixtures::NOW).to_string()
        );
        insta::assert_snapshot!("flows", flow_table(&fixtures::flows()).to_string());
    }

    #[test]
    fn quic_servers_are_told_their_config_and_server_id() {
        assert_eq!(
            quic_servers(&fixtures::backends(), &fixtures::vips()).as_deref(),
            Some(
                "QUIC: each server issues connection IDs with its VIP's first config and its server id:\n  [fd00::11:2]:5353  config=1,server-id-len=2,nonce-len=8  server id 0a1b"
            )
        );
        assert_eq!(
            quic_servers(&fixtures::backends()[..2], &fixtures::vips()),
            None
        );
    }

    #[test]
    fn stats_and_status_read_as_documented() {
        insta::assert_snapshot!("stats", stats(&fixtures::stats(), fixtures::NOW));
        insta::assert_snapshot!("status", status(&fixtures::status()));
    }

    #[test]
    fn health_ages_are_short() {
        let mut backend = fixtures::backends().remove(0);
        for (age, shown) in [
            (5, "up 5s"),
            (90, "up 1m"),
            (7_200, "up 2h"),
            (200_000, "up 2d"),
        ] {
            backend.health_since = Some(fixtures::NOW - age);
            assert_eq!(health_cell(&backend, fixtures::NOW), shown);
        }
    }
}
