//! The controller: what the daemon changes, split by job (the datapath, health, routes,
//! next hops, conntrack), and how each change request goes to the maps, then to the state
//! file. Only its task touches it (`daemon::owner`); queries read what it publishes.

use std::{net::SocketAddr, sync::Arc};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use lb_common::capture::{CaptureCounts, CaptureFilter};
use quic_lb::{Config as QuicConfig, ServerId};
use tracing::{error, info, warn};

use crate::{
    api::error::{ApiError, ErrorCode},
    api::wire::{
        AnnounceEntry, DownReport, FlushReport, InterfaceEntry, NodeReport, Request, Response,
    },
    control::announcer::Announcer,
    control::checker::Checker,
    control::map_sync::{MapSync, MapSyncError},
    daemon::answer::{datapath_error, json},
    daemon::egress::EgressAdvisor,
    daemon::flows::Filter,
    daemon::hook::HookQueue,
    daemon::next_hops::NextHops,
    daemon::published::{DaemonFacts, Published},
    datapath::attach::{Interface, PinnedAttachment},
    datapath::capture::{CaptureError, CaptureMaps, LinkPin},
    datapath::conntrack::{Census, ConntrackBook, ConntrackTable},
    datapath::flow_cache::FlowCache,
    datapath::forwarding::{self, Family, ForwardingError},
    datapath::neighbours,
    datapath::pins::PinDir,
    datapath::release,
    model::announce::{NodeState, VipLoad},
    model::check::{CheckConfig, CheckSpec, ProbePath},
    model::error_chain::error_chain,
    model::health::{Health, HealthBook, HealthKey},
    model::mode::Mode,
    model::notify::{HealthEvent, NotifyHook},
    model::reload::Declared,
    model::state::{Change, Changes, Proto, Service, State, server_id_changes},
    store::state_file,
};

/// Everything the daemon changes, owned by one task ([`crate::daemon::owner`]): commands
/// are applied one at a time, and readers see what [`Controller::publish`] hands them.
pub(crate) struct Controller {
    pub(super) datapath: Datapath,
    pub(super) health: HealthWatch,
    /// The command run on each health change.
    pub(super) notify: Notify,
    /// The routes that announce this node's VIPs.
    pub(super) announcer: Announcer,
    pub(super) next_hops: NextHops,
    pub(super) conntrack: Conntrack,
    /// What the attached interfaces need to take redirected frames.
    pub(super) egress: EgressAdvisor,
    /// `--config`, for `lb reload` and SIGHUP.
    pub(super) declared: Declared,
    /// What the daemon was started with; shared with the readers.
    pub(super) facts: Arc<DaemonFacts>,
}

/// The loaded datapath: its maps, where it is attached, and the pins that keep it.
pub(crate) struct Datapath {
    /// Writes the service maps so they match the desired state.
    pub(crate) map_sync: MapSync,
    pub(crate) attachments: Vec<PinnedAttachment>,
    /// `None` once `lb down` removed the pins.
    pub(crate) pins: Option<PinDir>,
    /// `--forward-any-mac`: no destination-MAC check.
    pub(crate) forward_any_mac: bool,
    /// The loaded object: dropping it would unload the programs; `lb capture` loads and
    /// swaps `lb_capture` from it.
    pub(crate) ebpf: Ebpf,
    /// `lb capture`'s maps, and whether `lb_capture` is in the links now.
    pub(crate) capture: CaptureMaps,
}

impl Datapath {
    /// The pinned links of the attached interfaces (none once `lb down` removed them).
    fn link_pins(&self) -> Vec<LinkPin> {
        let Some(pins) = &self.pins else {
            return Vec::new();
        };
        self.attachments
            .iter()
            .map(|a| (a.iface.name.clone(), pins.link_path(&a.iface.name)))
            .collect()
    }
}

/// Each backend's health, and the probes that feed it.
pub(crate) struct HealthWatch {
    pub(crate) book: HealthBook,
    pub(crate) checker: Checker,
}

/// The notify hook, and the queue its runs wait in (`daemon::hook` runs them).
pub(crate) struct Notify {
    /// `--notify`: wins over the `[notify]` of `--config`, at start and at reloads.
    pub(crate) flag: Option<NotifyHook>,
    /// The hook in use; `None`: nothing runs.
    pub(crate) hook: Option<Arc<NotifyHook>>,
    pub(crate) queue: HookQueue,
}

/// What the sweeps found, and a handle of its own on the conntrack maps for flushes.
pub(crate) struct Conntrack {
    /// The last sweep's census and the deletion and eviction totals.
    pub(crate) book: ConntrackBook,
    pub(crate) table: ConntrackTable,
    /// Cleared with every flush, so flushed flows are tracked anew at once.
    pub(crate) flow_cache: FlowCache,
}

fn service(vip: SocketAddr, proto: Proto) -> Service {
    Service { addr: vip, proto }
}

fn invalid_check(reason: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidCheck, format!("check: {reason}"))
}

/// Logs the QUIC server ids a change gave or changed: what each server must be told.
pub(super) fn log_server_ids(before: &State, after: &State) {
    for change in server_id_changes(before, after) {
        let vip = change.service;
        let backend = change.backend;
        match (change.from, change.to) {
            (None, Some(to)) => info!(%vip, %backend, server_id = %to, "QUIC server id given"),
            (Some(from), Some(to)) => warn!(
                %vip,
                %backend,
                from = %from,
                server_id = %to,
                "QUIC server id changed: configure the server with the new one (`lb backend list --json` shows it); until then its connections go by Maglev"
            ),
            (Some(from), None) => info!(%vip, %backend, from = %from, "QUIC server id removed"),
            (None, None) => {}
        }
    }
}

/// A request's QUIC-LB configs, parsed (the model checks them together).
fn parse_quic(texts: &[String]) -> Result<Vec<QuicConfig>, ApiError> {
    texts
        .iter()
        .map(|text| {
            text.parse::<QuicConfig>().map_err(|e| {
                ApiError::new(ErrorCode::InvalidQuic, format!("quic config {text:?}: {e}"))
            })
        })
        .collect()
}

/// A request's server id, parsed (the model checks its length and uniqueness).
fn parse_server_id(text: Option<&str>) -> Result<Option<ServerId>, ApiError> {
    text.map(|text| {
        text.parse::<ServerId>()
            .map_err(|e| ApiError::new(ErrorCode::InvalidServerId, e.to_string()))
    })
    .transpose()
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
        if self.datapath.pins.is_none() {
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
                quic,
            } => {
                let service = service(vip, proto);
                let checked = check
                    .as_ref()
                    .map(CheckConfig::validate)
                    .transpose()
                    .map_err(invalid_check)
                    .and_then(|check| Ok((check, parse_quic(&quic)?)))
                    .and_then(|checked| self.forwarding_for(vip).map(|()| checked));
                match checked {
                    Err(reason) => Err(reason),
                    Ok((check, configs)) => {
                        let mut changes = vec![Change::AddVip(service)];
                        if mode != Mode::Nat {
                            changes.push(Change::SetMode { service, mode });
                        }
                        if !configs.is_empty() {
                            changes.push(Change::SetQuic { service, configs });
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
            Request::VipSetQuic { vip, proto, quic } => parse_quic(&quic).and_then(|configs| {
                self.change(vec![Change::SetQuic {
                    service: service(vip, proto),
                    configs,
                }])
            }),
            Request::VipDel { vip, proto } => {
                self.change(vec![Change::DelVip(service(vip, proto))])
            }
            Request::BackendAdd {
                vip,
                proto,
                backend,
                weight,
                server_id,
            } => parse_server_id(server_id.as_deref()).and_then(|server_id| {
                self.change(vec![Change::AddBackend {
                    service: service(vip, proto),
                    backend,
                    weight,
                    server_id,
                }])
            }),
            Request::BackendSet {
                vip,
                proto,
                backend,
                weight,
                undrain,
                server_id,
            } => parse_server_id(server_id.as_deref()).and_then(|server_id| {
                self.change(vec![Change::SetBackend {
                    service: service(vip, proto),
                    backend,
                    weight,
                    undrain,
                    server_id,
                }])
            }),
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
            Request::ConntrackFlush {
                vip,
                proto,
                backend,
            } => self.conntrack_flush(vip, proto, backend).and_then(json),
            Request::NodeDrain {} => self
                .change(vec![Change::DrainNode(true)])
                .and_then(|_| json(self.node_report())),
            Request::NodeResume {} => self
                .change(vec![Change::DrainNode(false)])
                .and_then(|_| json(self.node_report())),
            Request::Down {} => self.down().and_then(json),
            Request::Reload {} => self.reload_logged("lb reload").and_then(json),
            // The server sends these to the readers (`daemon::reader`).
            Request::VipList {}
            | Request::BackendList { .. }
            | Request::ConntrackList { .. }
            | Request::Stats {}
            | Request::Status {}
            | Request::Explain { .. } => Err(ApiError::new(
                ErrorCode::Internal,
                "a query reached the controller instead of a reader",
            )),
            // The connection serves a capture (`daemon::capture`).
            Request::Capture { .. } => Err(ApiError::new(
                ErrorCode::Internal,
                "a capture reached the controller as a change",
            )),
        };
        match result {
            Ok(value) => Response::success(value),
            Err(reason) => Response::failure(reason),
        }
    }

    /// Applies changes to the maps, then saves the state. If saving fails the maps go back
    /// to the saved state, so the file and the datapath never disagree.
    fn change(&mut self, changes: Vec<Change>) -> Result<serde_json::Value, ApiError> {
        let before = self.datapath.map_sync.state().clone();
        self.check_dsr_paths(&changes)?;
        self.datapath.map_sync.apply_all(&changes)?;
        self.save_or_roll_back(&before)?;
        info!(changes = %Changes(&changes), "applied");
        log_server_ids(&before, self.datapath.map_sync.state());
        if let Some(config) = &self.declared.config {
            warn!(
                config = %config.display(),
                "changed through the API while --config declares the state: the next reload or restart puts the file's VIPs and backends back; edit the file to keep the change"
            );
        }
        self.after_change();
        // The CLI says the same to whoever made the change.
        Ok(serde_json::json!({ "config": self.declared.config }))
    }

    /// Saves the state the maps now hold; if that fails, puts `before` back in the maps.
    pub(super) fn save_or_roll_back(&mut self, before: &State) -> Result<(), ApiError> {
        let Err(save_error) =
            state_file::save(&self.facts.state_file, self.datapath.map_sync.state())
        else {
            return Ok(());
        };
        let reason = error_chain(&save_error);
        let message = match self.datapath.map_sync.sync(before) {
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
            .datapath
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
            drained: self.datapath.map_sync.state().node.drained,
            shutting_down: self.datapath.pins.is_none(),
        };
        self.announcer.reconcile(node, &vips);
    }

    /// Refuses a dsr-l2 backend the kernel does not reach directly through an interface
    /// lb is attached to: only the MACs change in dsr-l2, so the backend must be on the
    /// lb's link (a backend behind a router needs dsr-ipip).
    fn check_dsr_paths(&self, changes: &[Change]) -> Result<(), ApiError> {
        let mut next = self.datapath.map_sync.state().clone();
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
                .datapath
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
                        "backend {backend} of dsr-l2 VIP {service}: {reason}; dsr-l2 changes only the MAC, so the backend must share a link with the lb"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Re-reads the attached interfaces' MACs into the datapath.
    pub(crate) fn follow_local_macs(&mut self) {
        let ifaces: Vec<_> = self
            .datapath
            .attachments
            .iter()
            .map(|a| a.iface.clone())
            .collect();
        let recorded = crate::control::local_macs::record(
            &mut self.datapath.map_sync,
            &ifaces,
            self.datapath.forward_any_mac,
            false,
        );
        if let Err(error) = recorded {
            tracing::warn!(error = %error_chain(&error), "cannot record the interfaces' MACs");
        }
    }

    /// Reads again what the attached interfaces need to take redirected frames, and logs
    /// what changed.
    pub(crate) fn check_egress(&mut self) {
        self.egress.refresh(&self.datapath.attachments);
    }

    /// Keeps the next hop toward every DSR backend resolved.
    pub(crate) fn keep_dsr_next_hops(&mut self) {
        self.next_hops.keep_resolved(self.datapath.map_sync.state());
    }

    /// Makes the health book and the probes match the VIPs' checks.
    pub(crate) fn refresh_health(&mut self) {
        let mut checked = Vec::new();
        let mut unchecked = Vec::new();
        let mut probes = Vec::new();
        for (service, vip) in &self.datapath.map_sync.state().vips {
            for addr in vip.backends.keys() {
                let key = (*service, *addr);
                match &vip.check {
                    Some(spec) => {
                        checked.push(key);
                        let path = probe_path(vip.mode, service, addr, self.facts.gue_port);
                        probes.push((
                            key,
                            CheckSpec {
                                path,
                                ..spec.clone()
                            },
                        ));
                    }
                    None => unchecked.push(key),
                }
            }
        }
        self.health.book.reconcile(&checked, &unchecked);
        self.health.checker.reconcile(&probes);
        self.apply_health();
    }

    fn apply_health(&mut self) {
        let down = self.health.book.down().copied().collect();
        if let Err(error) = self.datapath.map_sync.set_down(down) {
            error!(error = %error_chain(&error), "updating the tables for health changes failed");
        }
    }

    /// Counts one probe result; a backend that rises or falls enters or leaves its table,
    /// and the change goes to the log and to the notify hook.
    pub(crate) fn on_probe(&mut self, key: HealthKey, result: Result<(), String>) {
        let Some(check) = self
            .datapath
            .map_sync
            .state()
            .vips
            .get(&key.0)
            .and_then(|v| v.check.as_ref())
        else {
            return;
        };
        let (rise, fall) = (check.rise, check.fall);
        let Some(change) = self.health.book.record(&key, &result, rise, fall) else {
            return;
        };
        let event = HealthEvent {
            service: key.0,
            backend: key.1,
            from: change.from,
            to: change.transition.to,
            reason: change.transition.reason,
            at: change.transition.at,
        };
        let (vip, backend, from, to) = (&event.service, &event.backend, event.from, event.to);
        if to == Health::Down {
            warn!(%vip, %backend, %from, %to, reason = %event.reason, "backend down: no new flows");
        } else {
            info!(%vip, %backend, %from, %to, reason = %event.reason, "backend up: takes new flows again");
        }
        self.apply_health();
        // A VIP whose last healthy backend fell (or rose) changes its announcement.
        self.announce();
        if let Some(hook) = &self.notify.hook {
            self.notify.queue.push(Arc::clone(hook), event);
        }
    }

    /// Announcements, drain and seed (`status`, `node-drain`, `node-resume`).
    pub(super) fn node_report(&self) -> NodeReport {
        NodeReport {
            drained: self.datapath.map_sync.state().node.drained,
            announce_table: self.announcer.table(),
            hash_seed: if self.facts.seeded { "set" } else { "default" }.to_owned(),
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

    /// Records a sweep's census, then the upkeep that runs once per sweep interval.
    pub(crate) fn after_sweep(&mut self, census: Census) {
        self.conntrack.book.record_sweep(census);
        // Managed neighbour entries lost since (a flushed table, a changed route) come
        // back within a sweep interval.
        self.keep_dsr_next_hops();
        // An interface whose MAC changed keeps forwarding frames to it.
        self.follow_local_macs();
        // A veth's peer may have gained or lost NAPI.
        self.check_egress();
        // A route deleted by hand comes back, a failed write is retried.
        self.announce();
        // Deleted backends' endpoints go once their replies are done.
        if let Err(error) = self
            .datapath
            .map_sync
            .expire_endpoints(std::time::Instant::now())
        {
            warn!(error = %error_chain(&error), "removing deleted backends' endpoints failed; retrying at the next sweep");
        }
    }

    /// Starts `lb capture`: its filter set and `lb_capture` swapped into every link.
    pub(crate) fn capture_start(
        &mut self,
        filter: &CaptureFilter,
    ) -> Result<RingBuf<MapData>, ApiError> {
        let links = self.datapath.link_pins();
        if links.is_empty() {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the datapath is detached (`lb down`): nothing to capture",
            ));
        }
        let datapath = &mut self.datapath;
        datapath
            .capture
            .start(&mut datapath.ebpf, filter, &links)
            .map_err(|error| match error {
                CaptureError::Busy => {
                    ApiError::new(ErrorCode::CaptureBusy, "another `lb capture` is running")
                }
                other => ApiError::new(
                    ErrorCode::DatapathError,
                    format!("could not start the capture: {}", error_chain(&other)),
                ),
            })
    }

    /// Ends `lb capture` (if one runs): `lb` swapped back; its counts.
    pub(crate) fn capture_stop(&mut self, ring: Option<RingBuf<MapData>>) -> CaptureCounts {
        let links = self.datapath.link_pins();
        let datapath = &mut self.datapath;
        datapath.capture.stop(&mut datapath.ebpf, ring, &links)
    }

    /// Puts back pins someone removed under the running daemon (the datapath kept
    /// forwarding through the daemon's own handles meanwhile). If that fails, says
    /// clearly, once per failure (`reported`), what is missing and what it means.
    pub(crate) fn check_pins(&mut self, reported: &mut bool) {
        let Some(pins) = self.datapath.pins.as_mut() else {
            return;
        };
        match pins.restore() {
            Ok(restored) if restored.is_empty() => *reported = false,
            Ok(restored) => {
                *reported = false;
                warn!(
                    dir = %pins.path().display(),
                    restored = %restored.join(", "),
                    "pins were removed while lb runs; re-pinned them from the daemon's own handles"
                );
            }
            Err(error) if !*reported => {
                *reported = true;
                error!(
                    dir = %pins.path().display(),
                    missing = %pins.missing().join(", "),
                    error = %error_chain(&error),
                    "pins were removed while lb runs and cannot be put back: the datapath still \
                     forwards through this daemon, but stopping it now would detach the interfaces \
                     and forget every tracked flow; `lb down` then `lb run` re-creates them"
                );
            }
            Err(_) => {}
        }
    }

    /// Refuses an IPv6 VIP while an attached interface has IPv6 forwarding off: the
    /// datapath would drop its packets. (IPv4 forwarding was checked at start.)
    pub(super) fn forwarding_for(&self, vip: SocketAddr) -> Result<(), ApiError> {
        if vip.is_ipv4() {
            return Ok(());
        }
        let names = self
            .datapath
            .attachments
            .iter()
            .map(|a| a.iface.name.as_str());
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
        Filter::resolve(&self.datapath.map_sync.view(), vip, proto, backend)
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
            .conntrack
            .table
            .walk_both(|_, key, conn| filter.matches(key, conn))
            .map_err(datapath_error)?;
        let deleted = proven.deleted + unproven.deleted;
        self.conntrack.book.record_flush(deleted, proven.deleted);
        // A cached flow would go on without its entry for up to a second.
        self.conntrack.flow_cache.clear().map_err(datapath_error)?;
        let any = || "any".to_owned();
        info!(
            vip = vip.map_or_else(any, |v| v.to_string()),
            proto = proto.map_or_else(any, |p| p.to_string()),
            backend = backend.map_or_else(any, |b| b.to_string()),
            flushed = deleted,
            "flushed tracked flows"
        );
        Ok(FlushReport { flushed: deleted })
    }

    /// Detaches from every interface and removes the pins; the daemon exits next. If the
    /// pins cannot all be removed the daemon keeps running (the datapath still forwards
    /// through what is left) and says why.
    pub(crate) fn down(&mut self) -> Result<DownReport, ApiError> {
        let Some(pin_dir) = self.datapath.pins.as_ref().map(|p| p.path().to_owned()) else {
            return Err(ApiError::new(ErrorCode::ShuttingDown, "already down"));
        };
        // Routers stop sending before the datapath goes: withdrawn first.
        let node = NodeState {
            announcing: true,
            drained: self.datapath.map_sync.state().node.drained,
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
        let Some(pins) = self.datapath.pins.as_mut() else {
            return Err(ApiError::new(ErrorCode::ShuttingDown, "already down"));
        };
        // Unpinned first while our handles still hold everything, so a failure midway leaves
        // a datapath the pin check can put back; then our handles go, which detaches.
        let ifaces: Vec<Interface> = self
            .datapath
            .attachments
            .iter()
            .map(|a| a.iface.clone())
            .collect();
        let running = release::running_on(&ifaces);
        pins.clear().map_err(datapath_error)?;
        pins.release();
        self.datapath.attachments.clear();
        let detached = ifaces.into_iter().map(|iface| iface.name).collect();
        if let Some(pins) = self.datapath.pins.take() {
            pins.remove().map_err(datapath_error)?;
        }
        release::wait_released(&running).map_err(datapath_error)?;
        info!(dir = %pin_dir.display(), "detached and removed the pins");
        Ok(DownReport {
            detached,
            pin_dir,
            withdrawn,
        })
    }
}

impl Controller {
    /// A snapshot of what the controller holds now. Costs a copy of the state, the view
    /// and the health book: small next to the map writes of the command before it.
    pub(crate) fn publish(&self) -> Published {
        let map_sync = &self.datapath.map_sync;
        Published {
            shutting_down: self.datapath.pins.is_none(),
            state: map_sync.state().clone(),
            view: map_sync.view(),
            limits: *map_sync.limits(),
            hash_seed: map_sync.hash_seed(),
            health: self.health.book.clone(),
            conntrack: self.conntrack.book.clone(),
            node: self.node_report(),
            notify: self.notify.hook.clone(),
            interfaces: self
                .datapath
                .attachments
                .iter()
                .map(|a| {
                    let egress = self.egress.of(a.iface.index);
                    InterfaceEntry {
                        name: a.iface.name.clone(),
                        ifindex: a.iface.index,
                        mode: a.mode.to_owned(),
                        kind: egress.kind,
                        advice: egress.advice,
                    }
                })
                .collect(),
            pin_dir: self
                .datapath
                .pins
                .as_ref()
                .map(|p| p.path().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// How `service`'s probes reach `backend`: a TCP check of a VIP that tunnels goes through
/// its tunnel when the lb can receive the answer (the VIP's family is the backend's);
/// everything else goes directly.
fn probe_path(mode: Mode, service: &Service, backend: &SocketAddr, gue_port: u16) -> ProbePath {
    let tunnels = mode.encapsulates() && service.addr.is_ipv4() == backend.is_ipv4();
    if !tunnels {
        return ProbePath::Direct;
    }
    ProbePath::Tunnel {
        vip: service.addr,
        gue_port: (mode == Mode::DsrGue).then_some(gue_port),
    }
}
