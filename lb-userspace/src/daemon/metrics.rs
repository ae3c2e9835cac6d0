//! Prometheus metrics: what one scrape reports ([`Snapshot`]) and its OpenMetrics text.
//! Pure, so the text is tested without root; [`super::metrics_http`] serves it.

use crate::{
    api::wire::{BackendEntry, ConntrackReport, CounterEntry, HookRuns, VipEntry},
    model::health::Health,
};
use lb_common::stats::{Stat, StatKind};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// Everything one scrape reports, read by a reader (`daemon::reader`).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Global counters by name, with their kind.
    pub(crate) counters: Vec<(&'static str, StatKind, CounterEntry)>,
    pub(crate) vips: Vec<VipEntry>,
    pub(crate) backends: Vec<BackendEntry>,
    pub(crate) conntrack: ConntrackReport,
    /// How the notify hook's runs went; `None` without a hook.
    pub(crate) hook_runs: Option<HookRuns>,
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

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let vip = |v: &VipEntry| [("vip", v.vip.to_string()), ("proto", v.proto.to_string())];
        let backend = |b: &BackendEntry| {
            [
                ("vip", b.vip.to_string()),
                ("proto", b.proto.to_string()),
                ("backend", b.backend.to_string()),
            ]
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures;

    /// The exposition text dashboards and alerts are written against.
    #[test]
    fn the_exposition_text_keeps_its_names_and_labels() {
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
        };
        let text = render(snapshot).expect("renders");
        // The build's version changes with every release; the rest must not.
        let text = text.replace(env!("CARGO_PKG_VERSION"), "VERSION");
        insta::assert_snapshot!("metrics", text);
    }
}
