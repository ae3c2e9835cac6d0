//! What the daemon does for each API request: changes go to the maps, then to the state
//! file; queries read the maps. One request at a time (the server holds the lock).

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::Ebpf;
use serde::Serialize;
use tracing::{error, info, warn};

use crate::{
    api::error::{ApiError, ErrorCode},
    api::wire::{DownReport, FlushReport, Request, Response},
    control::announcer::Announcer,
    control::checker::Checker,
    control::map_sync::{MapSync, MapSyncError},
    daemon::flows::Filter,
    datapath::attach::PinnedAttachment,
    datapath::conntrack::{ConntrackBook, ConntrackTable},
    datapath::forwarding::{self, Family, ForwardingError},
    datapath::neighbours,
    datapath::pins::PinDir,
    datapath::stats::StatsMap,
    model::announce::{NodeState, VipLoad},
    model::check::CheckConfig,
    model::error_chain::error_chain,
    model::health::{Health, HealthBook, HealthKey},
    model::mode::Mode,
    model::state::{Change, Proto, Service, State},
    store::state_file,
};
use lb_common::flow::Timeouts;

/// The daemon's datapath and everything needed to report on it.
pub(crate) struct Controller {
    pub(super) map_sync: MapSync,
    pub(super) stats: StatsMap,
    pub(super) state_file: PathBuf,
    pub(super) api: PathBuf,
    pub(super) attachments: Vec<PinnedAttachment>,
    /// `None` once `lb down` removed the pins.
    pub(super) pins: Option<PinDir>,
    pub(super) adopted: bool,
    pub(super) started: Instant,
    pub(super) health: HealthBook,
    pub(super) checker: Checker,
    /// The last sweep's census and the deletion and eviction totals.
    pub(super) conntrack: ConntrackBook,
    /// For listing and flushing flows (the sweep has a handle of its own).
    pub(super) conntrack_table: ConntrackTable,
    /// The idle timeouts the datapath was loaded with.
    pub(super) timeouts: Timeouts,
    /// The rate guard's new flows per CPU per second (`--new-flow-limit`).
    pub(super) new_flow_limit: u32,
    /// `--forward-any-mac`: no destination-MAC check.
    pub(super) forward_any_mac: bool,
    /// DSR backends whose next hop could not be kept resolved (warned about once).
    pub(super) unresolved: std::collections::BTreeSet<std::net::IpAddr>,
    pub(super) sweep_interval: Duration,
    /// The routes that announce this node's VIPs.
    pub(super) announcer: Announcer,
    /// Whether `--hash-seed` (or the config) set the cluster's seed.
    pub(super) seeded: bool,
    /// `--config`, for `lb reload` and SIGHUP.
    pub(super) declared: crate::model::reload::Declared,
    /// The build id of the loaded eBPF object (`lb status`).
    pub(super) datapath_build: String,
    /// Kept so the loaded program lives as long as the daemon; `lb status` reads its maps'
    /// memory.
    pub(super) ebpf: Ebpf,
}

fn service(vip: SocketAddr, proto: Proto) -> Service {
    Service { addr: vip, proto }
}

fn json(value: impl Serialize) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// A map or syscall failure: the datapath, not the request, is at fault.
pub(super) fn datapath_error(error: impl std::error::Error) -> ApiError {
    ApiError::new(ErrorCode::DatapathError, error_chain(&error))
}

fn invalid_check(reason: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidCheck, format!("check: {reason}"))
}

impl From<MapSyncError> for ApiError {
    fn from(error: MapSyncError) -> Self {
        match error {
            MapSyncError::Invalid(invalid) => invalid.into(),
            MapSyncError::TooManyVips(_) => {
                ApiError::new(ErrorCode::TooManyVips, error.to_string())
            }
            MapSyncError::TooManyBackends(_) => {
                ApiError::new(ErrorCode::TooManyBackends, error.to_string())
            }
            // The maps may hold part of the change; the desired state is unchanged and the
            // next change completes the sync.
            MapSyncError::Map(_) => datapath_error(error),
        }
    }
}

impl Controller {
    pub(crate) fn handle(&mut self, request: Request) -> Response {
        if self.pins.is_none() {
            return Response::failure(ApiError::new(
                ErrorCode::ShuttingDown,
                "the daemon is shutting down (`lb down`)",
            ));
        }
        let result = match request {
            Request::VipAdd {
                vip,
                proto,
                check,
                mode,
                on_down,
                allow_sources,
            } => {
                let service = service(vip, proto);
                let checked = check
                    .as_ref()
                    .map(CheckConfig::validate)
                    .transpose()
                    .map_err(invalid_check)
                    .and_then(|check| self.forwarding_for(vip).map(|()| check));
                match checked {
                    Err(reason) => Err(reason),
                    Ok(check) => {
                        let mut changes = vec![Change::AddVip(service)];
                        if mode != Mode::Nat {
                            changes.push(Change::SetMode { service, mode });
                        }
                        if check.is_some() {
                            changes.push(Change::SetCheck { service, check });
                        }
                        changes.push(Change::SetOnDown { service, on_down });
                        if !allow_sources.is_empty() {
                            changes.push(Change::SetSources {
                                service,
                                sources: allow_sources,
                            });
                        }
                        self.change(changes)
                    }
                }
            }
            Request::VipSetMode { vip, proto, mode } => self.change(vec![Change::SetMode {
                service: service(vip, proto),
                mode,
            }]),
            Request::VipSetCheck { vip, proto, check } => {
                match check.as_ref().map(CheckConfig::validate).transpose() {
                    Err(reason) => Err(invalid_check(reason)),
                    Ok(check) => self.change(vec![Change::SetCheck {
                        service: service(vip, proto),
                        check,
                    }]),
                }
            }
            Request::VipDel { vip, proto } => {
                self.change(vec![Change::DelVip(service(vip, proto))])
            }
            Request::BackendAdd {
                vip,
                proto,
                backend,
                weight,
            } => self.change(vec![Change::AddBackend {
                service: service(vip, proto),
                backend,
                weight,
            }]),
            Request::BackendSet {
                vip,
                proto,
                backend,
                weight,
                undrain,
            } => self.change(vec![Change::SetBackend {
                service: service(vip, proto),
                backend,
                weight,
                undrain,
            }]),
            Request::BackendDrain {
                vip,
                proto,
                backend,
            } => self.change(vec![Change::DrainBackend {
                service: service(vip, proto),
                backend,
            }]),
            Request::BackendDel {
                vip,
                proto,
                backend,
            } => self.change(vec![Change::DelBackend {
                service: service(vip, proto),
                backend,
            }]),
            Request::VipList {} => self.vips().and_then(json),
            Request::BackendList { vip, proto } => {
                let filter = vip.map(|vip| service(vip, proto));
                self.backends(filter).and_then(json)
            }
            Request::ConntrackList {
                vip,
                proto,
                backend,
                limit,
            } => self
                .conntrack_list(vip, proto, backend, limit)
                .and_then(json),
            Request::ConntrackFlush {
                vip,
                proto,
                backend,
            } => self.conntrack_flush(vip, proto, backend).and_then(json),
            Request::Stats {} => self.stats().and_then(json),
            Request::Status {} => json(self.status()),
            Request::NodeDrain {} => self
                .change(vec![Change::DrainNode(true)])
                .and_then(|_| json(self.node_report())),
            Request::NodeResume {} => self
                .change(vec![Change::DrainNode(false)])
                .and_then(|_| json(self.node_report())),
            Request::Down {} => self.down().and_then(json),
            Request::Reload {} => self.reload().and_then(json),
            Request::Explain { client, vip, proto } => {
                self.explain(client, vip, proto).and_then(json)
            }
        };
        match result {
            Ok(value) => Response::success(value),
            Err(reason) => Response::failure(reason),
        }
    }

    /// Applies changes to the maps, then saves the state. If saving fails the maps go back
    /// to the saved state, so the file and the datapath never disagree.
    fn change(&mut self, changes: Vec<Change>) -> Result<serde_json::Value, ApiError> {
        let before = self.map_sync.state().clone();
        self.check_dsr_paths(&changes)?;
        self.map_sync.apply_all(&changes)?;
        self.save_or_roll_back(&before)?;
        info!(?changes, "applied");
        self.after_change();
        Ok(serde_json::Value::Null)
    }

    /// Saves the state the maps now hold; if that fails, puts `before` back in the maps.
    pub(super) fn save_or_roll_back(&mut self, before: &State) -> Result<(), ApiError> {
        let Err(save_error) = state_file::save(&self.state_file, self.map_sync.state()) else {
            return Ok(());
        };
        let reason = error_chain(&save_error);
        let message = match self.map_sync.sync(before) {
            Ok(()) => format!("{reason}; the change was rolled back"),
            Err(rollback) => {
                error!(error = %error_chain(&rollback), "rolling back after a failed save");
                format!(
                    "{reason}; rolling back failed too: {}",
                    error_chain(&rollback)
                )
            }
        };
        Err(ApiError::new(ErrorCode::StateNotSaved, message))
    }

    /// What follows every applied change: probes for the new backends, next hops for the
    /// new DSR backends (kept before announcing), then the announcement.
    pub(super) fn after_change(&mut self) {
        self.refresh_health();
        self.keep_dsr_next_hops();
        self.announce();
    }

    /// Makes the announce table match what this node can serve now. Called after every
    /// change (once its next hops are kept resolved), health change and sweep, and by
    /// `lb down` before it detaches.
    pub(crate) fn announce(&mut self) {
        let vips: Vec<VipLoad> = self
            .map_sync
            .view()
            .iter()
            .map(|vip| VipLoad {
                service: vip.service,
                live: vip.live,
                healthy: vip.healthy,
            })
            .collect();
        let node = NodeState {
            announcing: true,
            drained: self.map_sync.state().node.drained,
            shutting_down: self.pins.is_none(),
        };
        self.announcer.reconcile(node, &vips);
    }

    /// Refuses a dsr-l2 backend the kernel does not reach directly through an interface
    /// lb is attached to: only the MACs change in dsr-l2, so the backend must be on the
    /// lb's link (a backend behind a router needs dsr-ipip).
    fn check_dsr_paths(&self, changes: &[Change]) -> Result<(), ApiError> {
        let mut next = self.map_sync.state().clone();
        for change in changes {
            // Invalid changes are refused by `MapSync` with their own reasons.
            if next.apply(change).is_err() {
                return Ok(());
            }
        }
        let added = changes.iter().filter_map(|change| match change {
            Change::AddBackend {
                service, backend, ..
            } => Some((*service, *backend)),
            _ => None,
        });
        self.check_dsr_backends(&next, added)
    }

    /// [`Self::check_dsr_paths`] for the `added` backends of `next`.
    pub(super) fn check_dsr_backends(
        &self,
        next: &State,
        added: impl Iterator<Item = (Service, SocketAddr)>,
    ) -> Result<(), ApiError> {
        for (service, backend) in added {
            if next.vips.get(&service).map(|v| v.mode) != Some(Mode::DsrL2) {
                continue;
            }
            let path = neighbours::path_to(backend.ip()).map_err(|error| {
                ApiError::new(
                    ErrorCode::NotOnLink,
                    format!(
                        "backend {backend}: no route ({}); dsr-l2 needs it on the lb's link",
                        error_chain(&error)
                    ),
                )
            })?;
            let attached = self
                .attachments
                .iter()
                .any(|a| a.iface.index == path.ifindex);
            let reason = match (path.gateway, attached, path.is_unicast()) {
                (_, _, false) => {
                    Some("its route is not a unicast route to another host".to_owned())
                }
                (Some(gateway), _, _) => {
                    Some(format!("it is reached through the gateway {gateway}"))
                }
                (None, false, _) => Some(format!(
                    "its link (ifindex {}) is not one lb is attached to",
                    path.ifindex
                )),
                (None, true, true) => None,
            };
            if let Some(reason) = reason {
                return Err(ApiError::new(
                    ErrorCode::NotOnLink,
                    format!(
                        "backend {backend} of dsr-l2 VIP {service}: {reason}; dsr-l2 changes only the MAC, so the backend must share a link with the lb (use dsr-ipip for routed backends)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Re-reads the attached interfaces' MACs into the datapath.
    pub(crate) fn follow_local_macs(&mut self) {
        let ifaces: Vec<_> = self.attachments.iter().map(|a| a.iface.clone()).collect();
        let recorded = crate::control::local_macs::record(
            &mut self.map_sync,
            &ifaces,
            self.forward_any_mac,
            false,
        );
        if let Err(error) = recorded {
            tracing::warn!(error = %error_chain(&error), "cannot record the interfaces' MACs");
        }
    }

    /// Asks the kernel to keep the next hop toward every DSR backend resolved (the
    /// datapath drops DSR packets whose neighbour is unresolved: the kernel cannot
    /// forward them in its place). Called after every change and every sweep.
    pub(crate) fn keep_dsr_next_hops(&mut self) {
        let backends: Vec<std::net::IpAddr> = self
            .map_sync
            .state()
            .vips
            .values()
            .filter(|vip| vip.mode.is_dsr())
            .flat_map(|vip| vip.backends.keys().map(SocketAddr::ip))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for backend in backends {
            let kept = neighbours::path_to(backend).and_then(|path| {
                if path.is_unicast() {
                    neighbours::keep_resolved(path.next_hop(backend), path.ifindex)
                } else {
                    Ok(())
                }
            });
            match kept {
                Ok(()) => {
                    self.unresolved.remove(&backend);
                }
                Err(error) => {
                    if self.unresolved.insert(backend) {
                        warn!(%backend, error = %error_chain(&error), "cannot keep the next hop toward a DSR backend resolved; its packets drop while unresolved (drop_dsr_no_neighbour)");
                    }
                }
            }
        }
    }

    /// Makes the health book and the probes match the VIPs' checks.
    pub(crate) fn refresh_health(&mut self) {
        let mut checked = Vec::new();
        let mut unchecked = Vec::new();
        let mut probes = Vec::new();
        for (service, vip) in &self.map_sync.state().vips {
            for addr in vip.backends.keys() {
                let key = (*service, *addr);
                match &vip.check {
                    Some(spec) => {
                        checked.push(key);
                        probes.push((key, spec.clone()));
                    }
                    None => unchecked.push(key),
                }
            }
        }
        self.health.reconcile(&checked, &unchecked);
        self.checker.reconcile(&probes);
        self.apply_health();
    }

    fn apply_health(&mut self) {
        let down = self.health.down().copied().collect();
        if let Err(error) = self.map_sync.set_down(down) {
            error!(error = %error_chain(&error), "updating the tables for health changes failed");
        }
    }

    /// Counts one probe result; a backend that rises or falls enters or leaves its table.
    pub(crate) fn on_probe(&mut self, key: HealthKey, result: Result<(), String>) {
        let Some(check) = self
            .map_sync
            .state()
            .vips
            .get(&key.0)
            .and_then(|v| v.check.as_ref())
        else {
            return;
        };
        let (rise, fall) = (check.rise, check.fall);
        match self.health.record(&key, &result, rise, fall) {
            Some(Health::Down) => {
                warn!(vip = %key.0, backend = %key.1, error = ?result.err(), "backend down: no new flows");
            }
            Some(health) => info!(vip = %key.0, backend = %key.1, %health, "backend back up"),
            None => return,
        }
        self.apply_health();
        // A VIP whose last healthy backend fell (or rose) changes its announcement.
        self.announce();
    }

    /// Refuses an IPv6 VIP while an attached interface has IPv6 forwarding off: the
    /// datapath would drop its packets. (IPv4 forwarding was checked at start.)
    pub(super) fn forwarding_for(&self, vip: SocketAddr) -> Result<(), ApiError> {
        if vip.is_ipv4() {
            return Ok(());
        }
        let names = self.attachments.iter().map(|a| a.iface.name.as_str());
        forwarding::check(names, Family::V6).map_err(|error| match error {
            ForwardingError::Off { .. } => {
                ApiError::new(ErrorCode::ForwardingDisabled, error.to_string())
            }
            ForwardingError::Unreadable { .. } => datapath_error(error),
        })
    }

    /// The filter of a list or flush, checked against the VIPs and backends there are.
    pub(super) fn flow_filter(
        &self,
        vip: Option<SocketAddr>,
        proto: Option<Proto>,
        backend: Option<SocketAddr>,
    ) -> Result<Filter, ApiError> {
        Filter::resolve(&self.map_sync.view(), vip, proto, backend)
    }

    /// Deletes the flows the filter picks; their next packets are balanced afresh.
    fn conntrack_flush(
        &mut self,
        vip: Option<SocketAddr>,
        proto: Option<Proto>,
        backend: Option<SocketAddr>,
    ) -> Result<FlushReport, ApiError> {
        let filter = self.flow_filter(vip, proto, backend)?;
        let (proven, unproven) = self
            .conntrack_table
            .walk_both(|_, key, conn| filter.matches(key, conn))
            .map_err(datapath_error)?;
        let deleted = proven.deleted + unproven.deleted;
        self.conntrack.record_flush(deleted, proven.deleted);
        info!(
            ?vip,
            ?proto,
            ?backend,
            flushed = deleted,
            "flushed tracked flows"
        );
        Ok(FlushReport { flushed: deleted })
    }

    /// Detaches from every interface and removes the pins; the daemon exits next. If the
    /// pins cannot all be removed the daemon keeps running (the datapath still forwards
    /// through what is left) and says why.
    pub(crate) fn down(&mut self) -> Result<DownReport, ApiError> {
        let Some(pin_dir) = self.pins.as_ref().map(|p| p.path().to_owned()) else {
            return Err(ApiError::new(ErrorCode::ShuttingDown, "already down"));
        };
        // Routers stop sending before the datapath goes: withdrawn first.
        let node = NodeState {
            announcing: true,
            drained: self.map_sync.state().node.drained,
            shutting_down: true,
        };
        let before = self.announcer.announced().clone();
        self.announcer.reconcile(node, &[]);
        let withdrawn = before
            .difference(self.announcer.announced())
            .copied()
            .collect();
        if let Some(error) = self.announcer.error() {
            return Err(ApiError::new(
                ErrorCode::DatapathError,
                format!("withdrawing the VIPs failed, so the datapath stays: {error}"),
            ));
        }
        let Some(pins) = self.pins.as_mut() else {
            return Err(ApiError::new(ErrorCode::ShuttingDown, "already down"));
        };
        // Unpinned first while our handles still hold everything, so a failure midway leaves
        // a datapath the pin check can put back; then our handles go, which detaches.
        pins.clear().map_err(datapath_error)?;
        pins.release();
        let detached = self
            .attachments
            .drain(..)
            .map(|a| a.iface.name.clone())
            .collect();
        if let Some(pins) = self.pins.take() {
            pins.remove().map_err(datapath_error)?;
        }
        info!(dir = %pin_dir.display(), "detached and removed the pins");
        Ok(DownReport {
            detached,
            pin_dir,
            withdrawn,
        })
    }
}
