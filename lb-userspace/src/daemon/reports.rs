//! What the controller reports: VIP and backend listings with their counters, the stats and
//! status answers, tracked flows, and each metrics scrape. Reads only.

use std::{collections::HashMap, net::SocketAddr};

use lb_common::{flow::Timeout, stats::Stat};

use super::controller::{Controller, datapath_error};
use crate::{
    api::{
        error::{ApiError, ErrorCode},
        wire::{
            AnnounceEntry, BackendEntry, ConntrackReport, CounterEntry, FlowList, InterfaceEntry,
            MAX_FLOW_LIMIT, NodeReport, StatsReport, StatusReport, TimeoutEntry, VipEntry,
        },
    },
    control::map_sync::VipView,
    daemon::{flows, metrics},
    datapath::{conntrack::monotonic_coarse_ns, memory, stats},
    model::{
        check::CheckConfig,
        error_chain::error_chain,
        health::{Health, unix_seconds},
        state::{ChangeError, Proto, Service},
    },
};

/// The start-up line on what the maps cost ("maps: 331 MiB of kernel memory (...)").
pub(super) fn log_map_memory(ebpf: &aya::Ebpf) {
    match memory::of_datapath(ebpf) {
        Ok(report) => tracing::info!(
            total_bytes = report.total_bytes,
            "maps: {}; --conntrack-size, --max-vips, --table-size and --max-backends size them",
            report.summary()
        ),
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "cannot read the maps' kernel memory")
        }
    }
}

impl Controller {
    pub(super) fn vip_entry(&self, vip: &VipView) -> Result<VipEntry, ApiError> {
        let counter = self
            .map_sync
            .maps()
            .vip_counter(vip.id)
            .map_err(datapath_error)?;
        let spec = self.map_sync.state().vips.get(&vip.service);
        let check = spec.and_then(|v| v.check.as_ref()).map(CheckConfig::from);
        Ok(VipEntry {
            vip: vip.service.addr,
            proto: vip.service.proto,
            mode: spec.map(|v| v.mode).unwrap_or_default(),
            on_down: spec.map(|v| v.on_down).unwrap_or_default(),
            allow_sources: spec
                .map(|v| v.sources.iter().copied().collect())
                .unwrap_or_default(),
            check,
            backends: vip.backends.len(),
            active: vip.backends.iter().filter(|b| !b.spec.draining).count(),
            packets: counter.packets,
            bytes: counter.bytes,
            new_flows: counter.new_flows,
            table_fingerprint: format!("{:016x}", vip.fingerprint),
        })
    }

    /// Announcements, drain and seed (`status`, `node-drain`, `node-resume`).
    pub(super) fn node_report(&self) -> NodeReport {
        NodeReport {
            drained: self.map_sync.state().node.drained,
            announce_table: self.announcer.table(),
            hash_seed: if self.seeded { "set" } else { "default" }.to_owned(),
            announced: self.announcer.announced().iter().copied().collect(),
            route_error: self.announcer.error().map(str::to_owned),
            vips: self
                .announcer
                .verdicts()
                .iter()
                .map(|v| AnnounceEntry {
                    vip: v.service.addr,
                    proto: v.service.proto,
                    announced: v.announced,
                    reason: v.reason,
                    detail: v.reason.to_string(),
                })
                .collect(),
        }
    }

    pub(super) fn vips(&self) -> Result<Vec<VipEntry>, ApiError> {
        self.map_sync
            .view()
            .iter()
            .map(|vip| self.vip_entry(vip))
            .collect()
    }

    pub(super) fn backends(&self, filter: Option<Service>) -> Result<Vec<BackendEntry>, ApiError> {
        let view = self.map_sync.view();
        if let Some(wanted) = filter
            && !view.iter().any(|v| v.service == wanted)
        {
            return Err(ChangeError::UnknownVip(wanted).into());
        }
        let mut entries = Vec::new();
        for vip in view
            .iter()
            .filter(|v| filter.is_none_or(|f| f == v.service))
        {
            for backend in &vip.backends {
                let health = self.health.get(&(vip.service, backend.addr));
                let conns = self.conntrack.conns(backend.id, backend.generation);
                let counter = self
                    .map_sync
                    .maps()
                    .backend_counter(backend.id)
                    .map_err(datapath_error)?;
                entries.push(BackendEntry {
                    vip: vip.service.addr,
                    proto: vip.service.proto,
                    backend: backend.addr,
                    weight: backend.spec.weight,
                    state: if backend.spec.draining {
                        "draining"
                    } else {
                        "active"
                    }
                    .to_owned(),
                    health: health.map_or(Health::Unchecked, |h| h.health),
                    health_since: health
                        .filter(|h| h.health != Health::Unchecked)
                        .map(|h| unix_seconds(h.since)),
                    last_check_error: health.and_then(|h| h.last_error.clone()),
                    health_history: health
                        .map(|h| h.history.iter().cloned().collect())
                        .unwrap_or_default(),
                    packets: counter.packets,
                    bytes: counter.bytes,
                    active_conns: conns.active,
                    closing_conns: conns.closing,
                });
            }
        }
        Ok(entries)
    }

    pub(super) fn stats(&self) -> Result<StatsReport, ApiError> {
        let snapshot = self.stats.read().map_err(datapath_error)?;
        let counters = Stat::ALL
            .iter()
            .map(|&stat| {
                let c = snapshot.get(stat);
                (
                    stat.name().to_owned(),
                    CounterEntry {
                        packets: c.packets,
                        bytes: c.bytes,
                    },
                )
            })
            .collect();
        Ok(StatsReport {
            counters,
            vips: self.vips()?,
            backends: self.backends(None)?,
            conntrack: self.conntrack(&snapshot),
        })
    }

    /// Conntrack fill and evictions as of the last sweep.
    pub(super) fn conntrack(&self, snapshot: &stats::Snapshot) -> ConntrackReport {
        ConntrackReport {
            entries: self.conntrack.census().entries,
            capacity: u64::from(self.map_sync.limits().conntrack_capacity),
            evicted: self.conntrack.evicted(),
            deleted: self.conntrack.deleted(),
            missed_mid_flow: snapshot.get(Stat::CtMissMidFlow).packets,
            proven_entries: self.conntrack.census().proven_entries,
            unproven_capacity: u64::from(self.map_sync.limits().unproven_capacity()),
            evicted_proven: self.conntrack.evicted_proven(),
            evicted_unproven: self.conntrack.evicted_unproven(),
            promoted: snapshot.get(Stat::CtPromoted).packets,
            flood_untracked: snapshot.get(Stat::CtFloodUntracked).packets,
            new_flow_limit: self.new_flow_limit,
        }
    }

    /// Live (not expired) flows the filter picks: the first `limit`, and how many matched.
    pub(super) fn conntrack_list(
        &self,
        vip: Option<SocketAddr>,
        proto: Option<Proto>,
        backend: Option<SocketAddr>,
        limit: u64,
    ) -> Result<FlowList, ApiError> {
        if !(1..=MAX_FLOW_LIMIT).contains(&limit) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("limit must be between 1 and {MAX_FLOW_LIMIT}"),
            ));
        }
        let filter = self.flow_filter(vip, proto, backend)?;
        let backends: HashMap<(u32, u32), SocketAddr> = self
            .map_sync
            .view()
            .iter()
            .flat_map(|v| &v.backends)
            .map(|b| ((b.id, b.generation), b.addr))
            .collect();
        let now = monotonic_coarse_ns();
        let mut list = FlowList::default();
        self.conntrack_table
            .walk_both(|proven, key, conn| {
                let expired = if proven {
                    conn.expired(now, &self.timeouts)
                } else {
                    conn.expired_unproven(now, &self.timeouts)
                };
                if !expired && filter.matches(key, conn) {
                    list.matched += 1;
                    if (list.flows.len() as u64) < limit
                        && let Some(entry) =
                            flows::entry(key, conn, proven, now, &self.timeouts, &backends)
                    {
                        list.flows.push(entry);
                    }
                }
                false
            })
            .map_err(datapath_error)?;
        list.flows.sort_by_key(|flow| (flow.vip, flow.client));
        Ok(list)
    }

    /// What a metrics scrape reports.
    pub(crate) fn metrics(&self) -> Result<metrics::Snapshot, ApiError> {
        let snapshot = self.stats.read().map_err(datapath_error)?;
        let counters = metrics::Snapshot::counters_from(|stat| {
            let c = snapshot.get(stat);
            CounterEntry {
                packets: c.packets,
                bytes: c.bytes,
            }
        });
        Ok(metrics::Snapshot {
            counters,
            vips: self.vips()?,
            backends: self.backends(None)?,
            conntrack: self.conntrack(&snapshot),
        })
    }

    pub(super) fn status(&self) -> StatusReport {
        let limits = self.map_sync.limits();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            datapath_build: self.datapath_build.clone(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            interfaces: self
                .attachments
                .iter()
                .map(|a| InterfaceEntry {
                    name: a.iface.name.clone(),
                    ifindex: a.iface.index,
                    mode: a.mode.to_owned(),
                })
                .collect(),
            pin_dir: self
                .pins
                .as_ref()
                .map(|p| p.path().to_owned())
                .unwrap_or_default(),
            state_file: self.state_file.clone(),
            api: self.api.clone(),
            adopted: self.adopted,
            table_size: limits.maglev_size,
            max_vips: limits.max_vips,
            max_backends: limits.max_backends,
            conntrack_capacity: limits.conntrack_capacity,
            conntrack_entries: self.conntrack.census().entries,
            conntrack_proven_entries: self.conntrack.census().proven_entries,
            conntrack_unproven_capacity: limits.unproven_capacity(),
            new_flow_limit: self.new_flow_limit,
            conntrack_timeouts: Timeout::ALL
                .iter()
                .map(|&t| TimeoutEntry {
                    state: t.name().to_owned(),
                    secs: self.timeouts[t as usize] / 1_000_000_000,
                })
                .collect(),
            conntrack_sweep_secs: self.sweep_interval.as_secs_f64(),
            vips: self.map_sync.state().vips.len(),
            backends: self.map_sync.state().backend_count(),
            node: self.node_report(),
            map_memory: memory::of_datapath(&self.ebpf)
                .inspect_err(|error| {
                    tracing::warn!(error = %error_chain(error), "cannot read the maps' kernel memory");
                })
                .ok(),
        }
    }
}
