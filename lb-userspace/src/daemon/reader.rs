//! The readers: every query (VIP and backend listings with their counters, stats, status,
//! tracked flows, `lb explain`) and each metrics scrape, answered outside the controller's
//! task. What the controller changes comes from its published snapshot; what the
//! datapath changes by itself (counters, conntrack entries, map entries) is read live
//! through handles of the readers' own, so no query waits for a change or a reload.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use lb_common::{flow::Timeout, stats::Stat};

use super::answer::{datapath_error, json};
use lb_common::stats::DROP_REASONS;

use crate::{
    api::{
        error::{ApiError, ErrorCode},
        wire::{
            BackendEntry, ConntrackReport, CounterEntry, FlowList, MAX_FLOW_LIMIT, NotifyStatus,
            Request, Response, StatsReport, StatusReport, TimeoutEntry, VipEntry,
        },
    },
    control::map_sync::VipView,
    daemon::{
        flows::{self, Filter},
        hook::HookCounters,
        metrics,
        published::{DaemonFacts, Published, SnapshotCell},
    },
    datapath::{
        conntrack::{ConntrackTable, monotonic_coarse_ns},
        maps::MapReader,
        memory,
        stats::{self, StatsMap},
    },
    model::{
        check::CheckConfig,
        error_chain::error_chain,
        health::{Health, unix_seconds},
        memory::MemoryReport,
        state::{ChangeError, Proto, Service},
    },
};

/// Whether the readers answer `request` (it only reads); the controller's task gets the
/// rest.
pub(crate) fn only_reads(request: &Request) -> bool {
    matches!(
        request,
        Request::VipList {}
            | Request::BackendList { .. }
            | Request::ConntrackList { .. }
            | Request::Stats {}
            | Request::Status {}
            | Request::Explain { .. }
    )
}

/// Answers queries: the published snapshot, and handles of its own on the maps.
pub(crate) struct Reader {
    pub(crate) published: SnapshotCell,
    pub(crate) facts: Arc<DaemonFacts>,
    /// VIPS, BACKENDS, MAGLEV and the rest, for counters and `lb explain`.
    pub(crate) maps: MapReader,
    pub(crate) stats: StatsMap,
    /// For listing flows (the sweep and the controller have handles of their own).
    pub(crate) flows: ConntrackTable,
    /// How the notify hook's runs went.
    pub(crate) hook_runs: Arc<HookCounters>,
}

/// What the maps cost, read once at start (their sizes are fixed at load), with the
/// start-up line on it ("maps: 331 MiB of kernel memory (...)").
pub(super) fn read_map_memory(ebpf: &aya::Ebpf) -> Option<MemoryReport> {
    match memory::of_datapath(ebpf) {
        Ok(report) => {
            tracing::info!(
                total_bytes = report.total_bytes,
                "maps: {}; --conntrack-size, --max-vips, --table-size and --max-backends size them",
                report.summary()
            );
            Some(report)
        }
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "cannot read the maps' kernel memory");
            None
        }
    }
}

impl Reader {
    /// Answers a query (see [`only_reads`]); blocking: it reads maps.
    pub(crate) fn answer(&self, request: Request) -> Response {
        let snap = self.published.load();
        if snap.shutting_down {
            return Response::failure(ApiError::new(
                ErrorCode::ShuttingDown,
                "the daemon is shutting down (`lb down`)",
            ));
        }
        let result = match request {
            Request::VipList {} => self.vips(&snap).and_then(json),
            Request::BackendList { vip, proto } => {
                let filter = vip.map(|addr| Service { addr, proto });
                self.backends(&snap, filter).and_then(json)
            }
            Request::ConntrackList {
                vip,
                proto,
                backend,
                limit,
            } => self
                .conntrack_list(&snap, vip, proto, backend, limit)
                .and_then(json),
            Request::Stats {} => self.stats(&snap).and_then(json),
            Request::Status {} => json(self.status(&snap)),
            Request::Explain {
                client,
                vip,
                proto,
                quic_id,
            } => self
                .explain(&snap, client, vip, proto, quic_id.as_deref())
                .and_then(json),
            _ => Err(ApiError::new(
                ErrorCode::Internal,
                "a change reached a reader instead of the controller",
            )),
        };
        match result {
            Ok(value) => Response::success(value),
            Err(reason) => Response::failure(reason),
        }
    }

    fn vip_entry(&self, snap: &Published, vip: &VipView) -> Result<VipEntry, ApiError> {
        let counter = self.maps.vip_counter(vip.id).map_err(datapath_error)?;
        let drops = self.maps.vip_drops(vip.id).map_err(datapath_error)?;
        let spec = snap.state.vips.get(&vip.service);
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
            quic: spec
                .map(|v| v.quic.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            backends: vip.backends.len(),
            active: vip.backends.iter().filter(|b| !b.spec.draining).count(),
            packets: counter.packets,
            bytes: counter.bytes,
            new_flows: counter.new_flows,
            drops: DROP_REASONS
                .iter()
                .zip(drops)
                .filter(|(_, packets)| *packets > 0)
                .map(|(reason, packets)| (reason.name().to_owned(), packets))
                .collect(),
            table_fingerprint: format!("{:016x}", vip.fingerprint),
        })
    }

    fn vips(&self, snap: &Published) -> Result<Vec<VipEntry>, ApiError> {
        snap.view
            .iter()
            .map(|vip| self.vip_entry(snap, vip))
            .collect()
    }

    fn backends(
        &self,
        snap: &Published,
        filter: Option<Service>,
    ) -> Result<Vec<BackendEntry>, ApiError> {
        let view = &snap.view;
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
                let health = snap.health.get(&(vip.service, backend.addr));
                let conns = snap.conntrack.conns(backend.id, backend.generation);
                let counter = self
                    .maps
                    .backend_counter(backend.id)
                    .map_err(datapath_error)?;
                entries.push(BackendEntry {
                    vip: vip.service.addr,
                    proto: vip.service.proto,
                    backend: backend.addr,
                    weight: backend.spec.weight,
                    server_id: backend.spec.server_id.map(|id| id.to_string()),
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
                    health_changes: health.map(|h| h.changes).unwrap_or_default(),
                    packets: counter.packets,
                    bytes: counter.bytes,
                    active_conns: conns.active,
                    closing_conns: conns.closing,
                });
            }
        }
        Ok(entries)
    }

    fn stats(&self, snap: &Published) -> Result<StatsReport, ApiError> {
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
            vips: self.vips(snap)?,
            backends: self.backends(snap, None)?,
            conntrack: self.conntrack(snap, &snapshot),
        })
    }

    /// Conntrack fill and evictions as of the last sweep.
    fn conntrack(&self, snap: &Published, snapshot: &stats::Snapshot) -> ConntrackReport {
        ConntrackReport {
            entries: snap.conntrack.census().entries,
            capacity: u64::from(snap.limits.conntrack_capacity),
            evicted: snap.conntrack.evicted(),
            deleted: snap.conntrack.deleted(),
            missed_mid_flow: snapshot.get(Stat::CtMissMidFlow).packets,
            proven_entries: snap.conntrack.census().proven_entries,
            unproven_capacity: u64::from(snap.limits.unproven_capacity()),
            evicted_proven: snap.conntrack.evicted_proven(),
            evicted_unproven: snap.conntrack.evicted_unproven(),
            promoted: snapshot.get(Stat::CtPromoted).packets,
            flood_untracked: snapshot.get(Stat::CtFloodUntracked).packets,
            new_flow_limit: self.facts.new_flow_limit,
        }
    }

    /// Live (not expired) flows the filter picks: the first `limit`, and how many matched.
    fn conntrack_list(
        &self,
        snap: &Published,
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
        let filter = Filter::resolve(&snap.view, vip, proto, backend)?;
        let backends: HashMap<(u32, u32), SocketAddr> = snap
            .view
            .iter()
            .flat_map(|v| &v.backends)
            .map(|b| ((b.id, b.generation), b.addr))
            .collect();
        let now = monotonic_coarse_ns();
        let mut list = FlowList::default();
        self.flows
            .walk_both(|proven, key, conn| {
                let expired = if proven {
                    conn.expired(now, &self.facts.timeouts)
                } else {
                    conn.expired_unproven(now, &self.facts.timeouts)
                };
                if !expired && filter.matches(key, conn) {
                    list.matched += 1;
                    if (list.flows.len() as u64) < limit
                        && let Some(entry) =
                            flows::entry(key, conn, proven, now, &self.facts.timeouts, &backends)
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
        let snap = self.published.load();
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
            vips: self.vips(&snap)?,
            backends: self.backends(&snap, None)?,
            conntrack: self.conntrack(&snap, &snapshot),
            hook_runs: snap.notify.as_ref().map(|_| self.hook_runs.read()),
            status: self.status(&snap),
            sweeps: metrics::Sweeps {
                count: snap.conntrack.sweeps(),
                last_took: snap.conntrack.census().took,
            },
        })
    }

    fn status(&self, snap: &Published) -> StatusReport {
        let limits = &snap.limits;
        // For the counters of frames lost on the way out; the rest is published.
        let counters = self.stats.read().ok();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            datapath_build: self.facts.datapath_build.clone(),
            pid: std::process::id(),
            uptime_secs: self.facts.started.elapsed().as_secs(),
            interfaces: snap.interfaces.clone(),
            pin_dir: snap.pin_dir.clone(),
            state_file: self.facts.state_file.clone(),
            api: self.facts.api.clone(),
            adopted: self.facts.adopted,
            table_size: limits.maglev_size,
            max_vips: limits.max_vips,
            max_backends: limits.max_backends,
            conntrack_capacity: limits.conntrack_capacity,
            conntrack_entries: snap.conntrack.census().entries,
            conntrack_proven_entries: snap.conntrack.census().proven_entries,
            conntrack_unproven_capacity: limits.unproven_capacity(),
            new_flow_limit: self.facts.new_flow_limit,
            conntrack_timeouts: Timeout::ALL
                .iter()
                .map(|&t| TimeoutEntry {
                    state: t.name().to_owned(),
                    secs: self.facts.timeouts[t as usize] / 1_000_000_000,
                })
                .collect(),
            conntrack_sweep_secs: self.facts.sweep_interval.as_secs_f64(),
            vips: snap.state.vips.len(),
            backends: snap.state.backend_count(),
            node: snap.node.clone(),
            map_memory: self.facts.map_memory.clone(),
            xdp_redirect_lost: counters
                .as_ref()
                .filter(|_| self.facts.lost_counted)
                .map(|counters| counters.get(Stat::RedirectLost).packets),
            syn_checksum_partial: counters
                .as_ref()
                .map_or(0, |counters| counters.get(Stat::SynChecksumPartial).packets),
            notify: snap.notify.as_ref().map(|hook| NotifyStatus {
                command: hook.to_string(),
                timeout_secs: hook.timeout().as_secs_f64(),
                runs: self.hook_runs.read(),
            }),
        }
    }
}
