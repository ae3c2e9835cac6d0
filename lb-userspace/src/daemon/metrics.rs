//! Prometheus metrics: what one scrape reports ([`Snapshot`]) and its OpenMetrics text.
//! Pure, so the text is tested without root; [`super::metrics_http`] serves it.

use std::time::Duration;

use crate::{
    api::wire::{BackendEntry, ConntrackReport, CounterEntry, HookRuns, StatusReport, VipEntry},
    model::health::Health,
};
use lb_common::stats::{Stat, StatKind};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// Everything one scrape reports, read by a reader (`daemon::reader`): every figure of
/// `lb stats`, `lb vip list`, `lb backend list` and `lb status`.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Global counters by name, with their kind.
    pub(crate) counters: Vec<(&'static str, StatKind, CounterEntry)>,
    pub(crate) vips: Vec<VipEntry>,
    pub(crate) backends: Vec<BackendEntry>,
    pub(crate) conntrack: ConntrackReport,
    /// How the notify hook's runs went; `None` without a hook.
    pub(crate) hook_runs: Option<HookRuns>,
    /// What `lb status` shows.
    pub(crate) status: StatusReport,
    pub(crate) sweeps: Sweeps,
}

/// The conntrack sweeps this daemon ran.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sweeps {
    pub(crate) count: u64,
    /// How long the last one took.
    pub(crate) last_took: Duration,
}

impl Snapshot {
    pub(crate) fn counters_from(
        read: impl Fn(Stat) -> CounterEntry,
    ) -> Vec<(&'static str, StatKind, CounterEntry)> {
        Stat::ALL
            .iter()
            .map(|&stat| (stat.name(), stat.kind(), read(stat)))
            .collect()
    }
}

/// Which number of a counter a metric family exposes.
type CounterField = fn(&CounterEntry) -> u64;

type Labels<const N: usize> = [(&'static str, String); N];

fn family<const N: usize>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl Iterator<Item = (Labels<N>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let encoder = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(encoder)?,
            _ => ConstGauge::new(value as i64).encode(encoder)?,
        }
    }
    Ok(())
}

/// A family of one unlabelled sample.
fn single(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(metric),
        _ => ConstGauge::new(value as i64).encode(metric),
    }
}

/// A gauge of one unlabelled fractional value (seconds).
fn single_seconds(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let (vip, backend) = (vip_labels, backend_labels);
        family(
            &mut encoder,
            "lb_build_info",
            "lb version",
            Gauge,
            std::iter::once(([("version", env!("CARGO_PKG_VERSION").to_owned())], 1)),
        )?;
        let e = &mut encoder;
        family(
            e,
            "lb_vip_packets",
            "Client packets to the VIP",
            Counter,
            self.vips.iter().map(|v| (vip(v), v.packets)),
        )?;
        family(
            e,
            "lb_vip_bytes",
            "Client bytes to the VIP",
            Counter,
            self.vips.iter().map(|v| (vip(v), v.bytes)),
        )?;
        family(
            e,
            "lb_vip_new_flows",
            "Flows balanced to a backend",
            Counter,
            self.vips.iter().map(|v| (vip(v), v.new_flows)),
        )?;
        family(
            e,
            "lb_vip_drops",
            "Packets to or from the VIP that lb dropped, by reason counter (drop_source_not_allowed...; xdp_drop: a reason not listed apart), counted since the daemon started",
            Counter,
            self.vips.iter().flat_map(|v| {
                v.drops.iter().map(move |(reason, packets)| {
                    let [vip, proto] = vip(v);
                    ([vip, proto, ("reason", reason.clone())], *packets)
                })
            }),
        )?;
        family(
            e,
            "lb_backend_packets",
            "Client packets sent to the backend",
            Counter,
            self.backends.iter().map(|b| (backend(b), b.packets)),
        )?;
        family(
            e,
            "lb_backend_bytes",
            "Client bytes sent to the backend",
            Counter,
            self.backends.iter().map(|b| (backend(b), b.bytes)),
        )?;
        family(
            e,
            "lb_backend_up",
            "1 if the backend passes its health check (or has none), else 0",
            Gauge,
            self.backends
                .iter()
                .map(|b| (backend(b), u64::from(b.health != Health::Down))),
        )?;
        family(
            e,
            "lb_backend_health_changes",
            "Times the backend's health check took it down, or back up",
            Counter,
            self.backends.iter().flat_map(|b| {
                let [vip, proto, backend] = backend(b);
                [("down", b.health_changes.down), ("up", b.health_changes.up)].map(|(to, n)| {
                    (
                        [
                            vip.clone(),
                            proto.clone(),
                            backend.clone(),
                            ("to", to.to_owned()),
                        ],
                        n,
                    )
                })
            }),
        )?;
        family(
            e,
            "lb_backend_weight",
            "Maglev weight",
            Gauge,
            self.backends
                .iter()
                .map(|b| (backend(b), u64::from(b.weight))),
        )?;
        fn packets(c: &CounterEntry) -> u64 {
            c.packets
        }
        fn bytes(c: &CounterEntry) -> u64 {
            c.bytes
        }
        let by_kind: [(&str, &str, StatKind, CounterField); 11] = [
            (
                "lb_verdict_packets",
                "Packets by XDP verdict",
                StatKind::Verdict,
                packets,
            ),
            (
                "lb_reason_packets",
                "Packets by the reason for their verdict",
                StatKind::Reason,
                packets,
            ),
            (
                "lb_protocol_packets",
                "Packets by protocol seen",
                StatKind::Protocol,
                packets,
            ),
            (
                "lb_verdict_bytes",
                "Bytes by XDP verdict",
                StatKind::Verdict,
                bytes,
            ),
            (
                "lb_reason_bytes",
                "Bytes by the reason for their verdict",
                StatKind::Reason,
                bytes,
            ),
            (
                "lb_conntrack_events",
                "Conntrack entries created, replaced and failed; TCP segments found untracked",
                StatKind::Conntrack,
                packets,
            ),
            (
                "lb_dsr_packets",
                "Packets sent by direct server return, by mode; and too big for it",
                StatKind::Dsr,
                packets,
            ),
            (
                "lb_dsr_bytes",
                "Bytes sent by direct server return (outer headers included), by mode",
                StatKind::Dsr,
                bytes,
            ),
            (
                "lb_lost_packets",
                "Frames the kernel dropped after the datapath sent them on: xdp_redirect_lost (a veth whose peer has no NAPI, a frame over the MTU)",
                StatKind::Lost,
                packets,
            ),
            (
                "lb_offload_packets",
                "Packets whose sender left work to an offload XDP cannot finish: syn_checksum_partial (a client SYN with a partial checksum, dropped by its receiver when forwarded in native mode)",
                StatKind::Offload,
                packets,
            ),
            (
                "lb_quic_packets",
                "Packets to QUIC VIPs by how they found their backend: quic_by_server_id (the server id in their connection ID), or by Maglev: quic_long_header (Initial, 0-RTT, unknown version), quic_unknown_config, quic_unknown_server_id, quic_truncated; quic_repinned: tracked flows moved to the backend their ID names",
                StatKind::Quic,
                packets,
            ),
        ];
        for (name, help, kind, value) in by_kind {
            let rows = self
                .counters
                .iter()
                .filter(|(_, k, _)| *k == kind)
                .map(|(n, _, c)| ([("name", (*n).to_owned())], value(c)));
            family(e, name, help, Counter, rows)?;
        }
        let ct = &self.conntrack;
        let by_map = |proven: u64, unproven: u64| {
            [
                ([("map", "CONNTRACK".to_owned())], proven),
                ([("map", "CT_UNPROVEN".to_owned())], unproven),
            ]
            .into_iter()
        };
        family(
            e,
            "lb_conntrack_entries",
            "Tracked flows (client to VIP direction): proven (CONNTRACK) and unproven (CT_UNPROVEN)",
            Gauge,
            by_map(
                ct.proven_entries,
                ct.entries.saturating_sub(ct.proven_entries),
            ),
        )?;
        family(
            e,
            "lb_conntrack_capacity",
            "Flows each conntrack map holds before evicting",
            Gauge,
            by_map(ct.capacity, ct.unproven_capacity),
        )?;
        family(
            e,
            "lb_conntrack_evictions",
            "Flows evicted to make room for others (created minus present, as of the last count); a flood can evict only unproven ones",
            Counter,
            by_map(ct.evicted_proven, ct.evicted_unproven),
        )?;
        if let Some(runs) = self.hook_runs {
            family(
                e,
                "lb_notify_runs",
                "Runs of the notify hook by outcome: ok, failed (or could not start), timed_out (killed), dropped (not run: too many waiting)",
                Counter,
                [
                    ("ok", runs.ok),
                    ("failed", runs.failed),
                    ("timed_out", runs.timed_out),
                    ("dropped", runs.dropped),
                ]
                .into_iter()
                .map(|(result, n)| ([("result", result.to_owned())], n)),
            )?;
        }
        family(
            e,
            "lb_new_flow_limit",
            "New flows each CPU tracks per second before the rate guard stops tracking (0: no limit)",
            Gauge,
            std::iter::once((
                [("map", "CT_UNPROVEN".to_owned())],
                u64::from(ct.new_flow_limit),
            )),
        )?;
        self.encode_vip_figures(e)?;
        self.encode_backend_figures(e)?;
        self.encode_conntrack_figures(e)?;
        self.encode_status(e)?;
        Ok(())
    }
}

fn vip_labels(v: &VipEntry) -> Labels<2> {
    [("vip", v.vip.to_string()), ("proto", v.proto.to_string())]
}

fn backend_labels(b: &BackendEntry) -> Labels<3> {
    [
        ("vip", b.vip.to_string()),
        ("proto", b.proto.to_string()),
        ("backend", b.backend.to_string()),
    ]
}

impl Snapshot {
    /// `lb vip list`'s columns beyond its counters.
    fn encode_vip_figures(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::Gauge;
        family(
            e,
            "lb_vip_backends",
            "Backends of the VIP, draining ones included",
            Gauge,
            self.vips.iter().map(|v| (vip_labels(v), v.backends as u64)),
        )?;
        family(
            e,
            "lb_vip_active_backends",
            "Backends of the VIP that take new flows (not draining)",
            Gauge,
            self.vips.iter().map(|v| (vip_labels(v), v.active as u64)),
        )?;
        family(
            e,
            "lb_vip_allow_sources",
            "Client prefixes allowed to open flows to the VIP (0: any client)",
            Gauge,
            self.vips
                .iter()
                .map(|v| (vip_labels(v), v.allow_sources.len() as u64)),
        )?;
        family(
            e,
            "lb_vip_info",
            "The VIP's forwarding mode, what a down backend's flows do, its health check (none: unchecked), its first QUIC-LB config (none: not a QUIC VIP) and the fingerprint of its Maglev table (equal on two nodes exactly when they send every flow alike)",
            Gauge,
            self.vips.iter().map(|v| {
                let [vip, proto] = vip_labels(v);
                let labels = [
                    vip,
                    proto,
                    ("mode", v.mode.to_string()),
                    ("on_down", v.on_down.to_string()),
                    (
                        "check",
                        v.check
                            .as_ref()
                            .map_or_else(|| "none".to_owned(), |c| c.probe.clone()),
                    ),
                    (
                        "quic",
                        v.quic.first().cloned().unwrap_or_else(|| "none".to_owned()),
                    ),
                    ("table_fingerprint", v.table_fingerprint.clone()),
                ];
                (labels, 1)
            }),
        )?;
        let announced = |v: &crate::api::wire::AnnounceEntry| {
            let reason = serde_json::to_value(v.reason)
                .ok()
                .and_then(|r| r.as_str().map(str::to_owned))
                .unwrap_or_default();
            (
                [
                    ("vip", v.vip.to_string()),
                    ("proto", v.proto.to_string()),
                    ("reason", reason),
                ],
                u64::from(v.announced),
            )
        };
        family(
            e,
            "lb_vip_announced",
            "1 if the VIP's address is in the announce table, else 0; reason says why",
            Gauge,
            self.status.node.vips.iter().map(announced),
        )
    }

    /// `lb backend list`'s columns beyond its counters.
    fn encode_backend_figures(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::Gauge;
        family(
            e,
            "lb_backend_active_conns",
            "Tracked flows to the backend opening, established or UDP (ipvsadm's ActiveConn), as of the last conntrack sweep",
            Gauge,
            self.backends
                .iter()
                .map(|b| (backend_labels(b), b.active_conns)),
        )?;
        family(
            e,
            "lb_backend_closing_conns",
            "Tracked TCP flows to the backend closing or closed (ipvsadm's InActConn), as of the last conntrack sweep",
            Gauge,
            self.backends
                .iter()
                .map(|b| (backend_labels(b), b.closing_conns)),
        )?;
        family(
            e,
            "lb_backend_draining",
            "1 if the backend is draining (takes no new flows), else 0",
            Gauge,
            self.backends
                .iter()
                .map(|b| (backend_labels(b), u64::from(b.state == "draining"))),
        )?;
        family(
            e,
            "lb_backend_health_since_seconds",
            "When the backend's health last changed (Unix time); checked backends only",
            Gauge,
            self.backends
                .iter()
                .filter_map(|b| Some((backend_labels(b), b.health_since?))),
        )?;
        family(
            e,
            "lb_backend_info",
            "The backend's health (up, down or unchecked) and, for QUIC VIPs, the server id its connection IDs carry",
            Gauge,
            self.backends.iter().map(|b| {
                let [vip, proto, backend] = backend_labels(b);
                let labels = [
                    vip,
                    proto,
                    backend,
                    ("health", b.health.to_string()),
                    (
                        "server_id",
                        b.server_id.clone().unwrap_or_else(|| "none".to_owned()),
                    ),
                ];
                (labels, 1)
            }),
        )
    }

    /// `lb stats`' conntrack line beyond the datapath's counters, and the sweeps.
    fn encode_conntrack_figures(
        &self,
        e: &mut DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        single(
            e,
            "lb_conntrack_deleted",
            "Conntrack entries this daemon deleted: expired ones by its sweeps, and flushes",
            MetricType::Counter,
            self.conntrack.deleted,
        )?;
        single(
            e,
            "lb_conntrack_sweeps",
            "Conntrack sweeps (a walk of both tables that deletes expired flows and counts the rest) run by this daemon",
            MetricType::Counter,
            self.sweeps.count,
        )?;
        single_seconds(
            e,
            "lb_conntrack_sweep_duration_seconds",
            "How long the last conntrack sweep took",
            self.sweeps.last_took.as_secs_f64(),
        )?;
        single_seconds(
            e,
            "lb_conntrack_sweep_interval_seconds",
            "Time between conntrack sweeps (--conntrack-sweep)",
            self.status.conntrack_sweep_secs,
        )?;
        family(
            e,
            "lb_conntrack_timeout_seconds",
            "Idle time after which a tracked flow in this state expires",
            MetricType::Gauge,
            self.status
                .conntrack_timeouts
                .iter()
                .map(|t| ([("state", t.state.clone())], t.secs)),
        )
    }

    /// `lb status`.
    fn encode_status(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::Gauge;
        let s = &self.status;
        family(
            e,
            "lb_datapath_info",
            "The build of the eBPF object the daemon loaded (as in lb --version)",
            Gauge,
            std::iter::once(([("build", s.datapath_build.clone())], 1)),
        )?;
        single(
            e,
            "lb_uptime_seconds",
            "Seconds since the daemon started",
            Gauge,
            s.uptime_secs,
        )?;
        single(
            e,
            "lb_datapath_adopted",
            "1 if this daemon adopted a datapath pinned by an earlier one, else 0",
            Gauge,
            u64::from(s.adopted),
        )?;
        family(
            e,
            "lb_interface_info",
            "Interfaces the datapath is attached to: XDP mode (native, skb; pinned: adopted), link kind (none: a plain device) and advice about frames redirected out of it (none: all is well)",
            Gauge,
            s.interfaces.iter().map(|i| {
                (
                    [
                        ("interface", i.name.clone()),
                        ("mode", i.mode.clone()),
                        ("kind", i.kind.clone().unwrap_or_else(|| "none".to_owned())),
                        (
                            "advice",
                            i.advice
                                .as_ref()
                                .map_or_else(|| "none".to_owned(), |a| a.level.to_string()),
                        ),
                    ],
                    1,
                )
            }),
        )?;
        for (name, help, value) in [
            ("lb_vips", "VIPs configured", s.vips as u64),
            (
                "lb_backends",
                "Backends configured, over all VIPs",
                s.backends as u64,
            ),
            (
                "lb_maglev_table_size",
                "Slots of each VIP's Maglev table (--table-size)",
                u64::from(s.table_size),
            ),
            (
                "lb_max_vips",
                "VIPs the maps hold (--max-vips)",
                u64::from(s.max_vips),
            ),
            (
                "lb_max_backends",
                "Backend slots the maps hold (--max-backends)",
                u64::from(s.max_backends),
            ),
            (
                "lb_node_drained",
                "1 while lb node drain is in force (every VIP withdrawn), else 0",
                u64::from(s.node.drained),
            ),
            (
                "lb_node_announced_addresses",
                "VIP addresses whose route is in the announce table",
                s.node.announced.len() as u64,
            ),
            (
                "lb_node_route_error",
                "1 if the last attempt to write an announce route failed, else 0",
                u64::from(s.node.route_error.is_some()),
            ),
        ] {
            single(e, name, help, Gauge, value)?;
        }
        family(
            e,
            "lb_node_info",
            "This node in its cluster: the announce table (off: lb announces nothing) and whether the hash seed was set (the seed itself is secret)",
            Gauge,
            std::iter::once((
                [
                    (
                        "announce_table",
                        s.node
                            .announce_table
                            .map_or_else(|| "off".to_owned(), |t| t.to_string()),
                    ),
                    ("hash_seed", s.node.hash_seed.clone()),
                ],
                1,
            )),
        )?;
        family(
            e,
            "lb_map_memory_bytes",
            "Kernel memory of each datapath map, as the kernel accounts it (read at start: sizes are fixed at load)",
            Gauge,
            s.map_memory
                .iter()
                .flat_map(|m| &m.maps)
                .map(|m| ([("map", m.name.clone())], m.bytes)),
        )?;
        if let Some(notify) = &s.notify {
            single_seconds(
                e,
                "lb_notify_timeout_seconds",
                "Time the notify hook may run before it is killed",
                notify.timeout_secs,
            )?;
        }
        Ok(())
    }
}

/// The exposition text for one snapshot.
pub(crate) fn render(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// A scrape with every family filled, for the tests of the text and of the dashboard.
#[cfg(test)]
pub(crate) fn fixture_text() -> String {
    use crate::api::fixtures;
    let counters = fixtures::counters();
    let snapshot = Snapshot {
        counters: Snapshot::counters_from(|stat| {
            counters.get(stat.name()).copied().unwrap_or_default()
        }),
        vips: fixtures::vips(),
        backends: fixtures::backends(),
        conntrack: fixtures::conntrack(),
        hook_runs: Some(HookRuns {
            ok: 3,
            failed: 1,
            timed_out: 0,
            dropped: 0,
        }),
        status: fixtures::status(),
        sweeps: Sweeps {
            count: 720,
            last_took: Duration::from_micros(1_500),
        },
    };
    render(snapshot).expect("renders")
}

#[cfg(test)]
mod tests {
    /// The exposition text dashboards and alerts are written against.
    #[test]
    fn the_exposition_text_keeps_its_names_and_labels() {
        // The build's version changes with every release; the rest must not.
        let text = super::fixture_text().replace(env!("CARGO_PKG_VERSION"), "VERSION");
        insta::assert_snapshot!("metrics", text);
    }
}
