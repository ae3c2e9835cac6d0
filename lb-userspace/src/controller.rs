//! What the daemon does for each API request: changes go to the maps, then to the state
//! file; queries read the maps. One request at a time (the server holds the lock).

use std::{net::SocketAddr, path::PathBuf, time::Instant};

use aya::Ebpf;
use serde::Serialize;
use tracing::{error, info};

use crate::{
    api::{
        BackendEntry, CounterEntry, DownReport, InterfaceEntry, Request, Response, StatsReport,
        StatusReport, VipEntry,
    },
    attach::{PinnedAttachment, error_chain},
    balancer::{Balancer, BalancerError, VipView},
    config,
    pins::PinDir,
    state::{Change, Proto, Service},
    stats::StatsMap,
};

/// The daemon's datapath and everything needed to report on it.
pub struct Controller {
    pub balancer: Balancer,
    pub stats: StatsMap,
    pub state_file: PathBuf,
    pub api: PathBuf,
    pub attachments: Vec<PinnedAttachment>,
    /// `None` once `lb down` removed the pins.
    pub pins: Option<PinDir>,
    pub adopted: bool,
    pub started: Instant,
    /// Kept so the loaded program lives as long as the daemon.
    pub ebpf: Ebpf,
}

fn service(vip: SocketAddr, proto: Proto) -> Service {
    Service { addr: vip, proto }
}

fn json(value: impl Serialize) -> Result<serde_json::Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

impl Controller {
    pub fn handle(&mut self, request: Request) -> Response {
        if self.pins.is_none() {
            return Response::failure("the daemon is shutting down (`lb down`)");
        }
        let result = match request {
            Request::VipAdd { vip, proto } => self.change(Change::AddVip(service(vip, proto))),
            Request::VipDel { vip, proto } => self.change(Change::DelVip(service(vip, proto))),
            Request::BackendAdd {
                vip,
                proto,
                backend,
                weight,
            } => self.change(Change::AddBackend {
                service: service(vip, proto),
                backend,
                weight,
            }),
            Request::BackendSet {
                vip,
                proto,
                backend,
                weight,
                undrain,
            } => self.change(Change::SetBackend {
                service: service(vip, proto),
                backend,
                weight,
                undrain,
            }),
            Request::BackendDrain {
                vip,
                proto,
                backend,
            } => self.change(Change::DrainBackend {
                service: service(vip, proto),
                backend,
            }),
            Request::BackendDel {
                vip,
                proto,
                backend,
            } => self.change(Change::DelBackend {
                service: service(vip, proto),
                backend,
            }),
            Request::VipList {} => self.vips().and_then(json),
            Request::BackendList { vip, proto } => {
                let filter = vip.map(|vip| service(vip, proto));
                self.backends(filter).and_then(json)
            }
            Request::Stats {} => self.stats().and_then(json),
            Request::Status {} => json(self.status()),
            Request::Down {} => self.down().and_then(json),
        };
        match result {
            Ok(value) => Response::success(value),
            Err(reason) => Response::failure(reason),
        }
    }

    /// Applies a change to the maps, then saves the state. If saving fails the maps go back
    /// to the saved state, so the file and the datapath never disagree.
    fn change(&mut self, change: Change) -> Result<serde_json::Value, String> {
        let before = self.balancer.state().clone();
        match self.balancer.apply(&change) {
            Ok(()) => {}
            Err(invalid @ (BalancerError::Invalid(_) | BalancerError::TooManyVips(_))) => {
                return Err(invalid.to_string());
            }
            Err(other) => {
                // The maps may hold part of the change: record what they hold.
                let _ = config::save(&self.state_file, self.balancer.state());
                return Err(error_chain(&other));
            }
        }
        if let Err(save_error) = config::save(&self.state_file, self.balancer.state()) {
            let reason = error_chain(&save_error);
            return Err(match self.balancer.sync(&before) {
                Ok(()) => format!("{reason}; the change was rolled back"),
                Err(rollback) => {
                    error!(error = %error_chain(&rollback), "rolling back after a failed save");
                    format!(
                        "{reason}; rolling back failed too: {}",
                        error_chain(&rollback)
                    )
                }
            });
        }
        info!(?change, "applied");
        Ok(serde_json::Value::Null)
    }

    fn vip_entry(&self, vip: &VipView) -> Result<VipEntry, String> {
        let counter = self
            .balancer
            .maps()
            .vip_counter(vip.id)
            .map_err(|e| error_chain(&e))?;
        Ok(VipEntry {
            vip: vip.service.addr,
            proto: vip.service.proto,
            backends: vip.backends.len(),
            active: vip.backends.iter().filter(|b| !b.spec.draining).count(),
            packets: counter.packets,
            bytes: counter.bytes,
            new_flows: counter.new_flows,
        })
    }

    fn vips(&self) -> Result<Vec<VipEntry>, String> {
        self.balancer
            .view()
            .iter()
            .map(|vip| self.vip_entry(vip))
            .collect()
    }

    fn backends(&self, filter: Option<Service>) -> Result<Vec<BackendEntry>, String> {
        let view = self.balancer.view();
        if let Some(wanted) = filter
            && !view.iter().any(|v| v.service == wanted)
        {
            return Err(format!("no VIP {wanted} (list them with `lb vip list`)"));
        }
        let mut entries = Vec::new();
        for vip in view
            .iter()
            .filter(|v| filter.is_none_or(|f| f == v.service))
        {
            for backend in &vip.backends {
                let counter = self
                    .balancer
                    .maps()
                    .backend_counter(backend.id)
                    .map_err(|e| error_chain(&e))?;
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
                    packets: counter.packets,
                    bytes: counter.bytes,
                });
            }
        }
        Ok(entries)
    }

    fn stats(&self) -> Result<StatsReport, String> {
        let snapshot = self.stats.read().map_err(|e| error_chain(&e))?;
        let counters = lb_common::stats::Stat::ALL
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
        })
    }

    fn status(&self) -> StatusReport {
        let limits = self.balancer.limits();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
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
            conntrack_capacity: limits.conntrack_capacity,
            vips: self.balancer.state().vips.len(),
            backends: self.balancer.state().backend_count(),
        }
    }

    /// Detaches from every interface and removes the pins; the daemon exits next. If the
    /// pins cannot all be removed the daemon keeps running (the datapath still forwards
    /// through what is left) and says why.
    pub fn down(&mut self) -> Result<DownReport, String> {
        let Some(pins) = self.pins.as_ref() else {
            return Err("already down".to_owned());
        };
        let pin_dir = pins.path().to_owned();
        // Our own link handles go first, so unpinning really detaches.
        let detached = self
            .attachments
            .drain(..)
            .map(|a| a.iface.name.clone())
            .collect();
        pins.clear().map_err(|e| error_chain(&e))?;
        if let Some(pins) = self.pins.take() {
            pins.remove().map_err(|e| error_chain(&e))?;
        }
        info!(dir = %pin_dir.display(), "detached and removed the pins");
        Ok(DownReport { detached, pin_dir })
    }
}
