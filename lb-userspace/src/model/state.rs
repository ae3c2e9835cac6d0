//! The desired state: which VIPs exist and which backends serve them, with weights and drain
//! flags. Pure data and validation; [`crate::control::map_sync`] makes the maps match it.
//!
//! Every change is checked here first, on a copy, so a refused change touches nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use lb_common::consts::{IPPROTO_TCP, IPPROTO_UDP};
use quic_lb::{Config as QuicConfig, ServerId};
use serde::{Deserialize, Serialize};

use crate::model::{
    check::CheckSpec,
    mode::Mode,
    policy::{OnDown, SourcesError, check_sources},
    prefix::Prefix,
    quic,
};
use thiserror::Error;

pub(crate) const MIN_WEIGHT: u32 = 1;
pub(crate) const MAX_WEIGHT: u32 = 65_535;
pub(crate) const DEFAULT_WEIGHT: u32 = 100;

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    pub(crate) const fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }

    pub(crate) const fn from_number(number: u8) -> Option<Self> {
        match number {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl Proto {
    pub(crate) const ALL: [Proto; 2] = [Proto::Tcp, Proto::Udp];
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A cluster IP: address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Service {
    pub addr: SocketAddr,
    pub proto: Proto,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.proto)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub(crate) weight: u32,
    /// No new flows; established ones continue.
    pub(crate) draining: bool,
    /// Its QUIC server id (a QUIC VIP's backends have one, others none): the bytes a
    /// connection ID that reaches it carries after its first octet.
    pub(crate) server_id: Option<ServerId>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipSpec {
    pub backends: BTreeMap<SocketAddr, BackendSpec>,
    /// How its backends' health is checked; `None`: not checked (always eligible).
    pub(crate) check: Option<CheckSpec>,
    /// How its packets reach the backends.
    pub mode: Mode,
    /// What the tracked flows of a backend marked down do.
    pub on_down: OnDown,
    /// The clients that may open flows to it; empty: any client.
    pub sources: BTreeSet<Prefix>,
    /// Its QUIC-LB configs (UDP VIPs); empty: not a QUIC VIP. The first is the one its
    /// servers issue connection IDs with; the others are still routed (config rotation).
    pub quic: Vec<QuicConfig>,
}

/// This node's place in its cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeSpec {
    /// Every VIP withdrawn from the routers (`lb node drain`); flows that still arrive
    /// are served.
    pub drained: bool,
}

/// The whole desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub vips: BTreeMap<Service, VipSpec>,
    pub node: NodeSpec,
}

/// One operator change, as the CLI and the API express it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    AddVip(Service),
    DelVip(Service),
    AddBackend {
        service: Service,
        backend: SocketAddr,
        weight: u32,
        /// QUIC VIPs: the operator's server id; `None`: lb derives one.
        server_id: Option<ServerId>,
    },
    /// New weight, the end of a drain and/or (QUIC VIPs) a new server id.
    SetBackend {
        service: Service,
        backend: SocketAddr,
        weight: Option<u32>,
        undrain: bool,
        server_id: Option<ServerId>,
    },
    DrainBackend {
        service: Service,
        backend: SocketAddr,
    },
    DelBackend {
        service: Service,
        backend: SocketAddr,
    },
    /// Sets a VIP's forwarding mode; refused while it has backends.
    SetMode {
        service: Service,
        mode: Mode,
    },
    /// Sets (or with `None` removes) a VIP's health check.
    SetCheck {
        service: Service,
        check: Option<CheckSpec>,
    },
    /// Sets what the tracked flows of a VIP's down backends do.
    SetOnDown {
        service: Service,
        on_down: OnDown,
    },
    /// Replaces a VIP's source prefixes (empty: any client).
    SetSources {
        service: Service,
        sources: Vec<Prefix>,
    },
    /// Replaces a VIP's QUIC-LB configs (empty: not a QUIC VIP). A new server-id length
    /// gives every backend a new, derived server id.
    SetQuic {
        service: Service,
        configs: Vec<QuicConfig>,
    },
    /// Withdraws (`true`) or announces again (`false`) every VIP of this node.
    DrainNode(bool),
}

/// A change as a log line says it: the words of the `lb` command that makes it.
impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AddVip(service) => write!(f, "vip add {service}"),
            Change::DelVip(service) => write!(f, "vip del {service}"),
            Change::AddBackend {
                service,
                backend,
                weight,
                server_id,
            } => {
                write!(f, "backend add {service} {backend} weight {weight}")?;
                if let Some(server_id) = server_id {
                    write!(f, " server-id {server_id}")?;
                }
                Ok(())
            }
            Change::SetBackend {
                service,
                backend,
                weight,
                undrain,
                server_id,
            } => {
                write!(f, "backend set {service} {backend}")?;
                if let Some(weight) = weight {
                    write!(f, " weight {weight}")?;
                }
                if *undrain {
                    f.write_str(" undrain")?;
                }
                if let Some(server_id) = server_id {
                    write!(f, " server-id {server_id}")?;
                }
                Ok(())
            }
            Change::DrainBackend { service, backend } => {
                write!(f, "backend drain {service} {backend}")
            }
            Change::DelBackend { service, backend } => {
                write!(f, "backend del {service} {backend}")
            }
            Change::SetMode { service, mode } => write!(f, "vip set {service} mode {mode}"),
            Change::SetCheck {
                service,
                check: Some(check),
            } => write!(
                f,
                "vip set {service} check {} every {:?} timeout {:?} rise {} fall {}",
                check.probe, check.interval, check.timeout, check.rise, check.fall
            ),
            Change::SetCheck {
                service,
                check: None,
            } => write!(f, "vip set {service} no check"),
            Change::SetOnDown { service, on_down } => {
                write!(f, "vip set {service} on-down {on_down}")
            }
            Change::SetSources { service, sources } if sources.is_empty() => {
                write!(f, "vip set {service} any source")
            }
            Change::SetSources { service, sources } => {
                write!(f, "vip set {service} sources ")?;
                for (i, prefix) in sources.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{prefix}")?;
                }
                Ok(())
            }
            Change::SetQuic { service, configs } if configs.is_empty() => {
                write!(f, "vip set {service} no quic")
            }
            Change::SetQuic { service, configs } => {
                write!(f, "vip set {service} quic {}", quic::describe(configs))
            }
            Change::DrainNode(true) => f.write_str("node drain"),
            Change::DrainNode(false) => f.write_str("node undrain"),
        }
    }
}

/// Changes as one log field: `; `-separated.
pub struct Changes<'a>(pub &'a [Change]);

impl fmt::Display for Changes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, change) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{change}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("VIP {0} already exists")]
    DuplicateVip(Service),
    #[error("no VIP {0}")]
    UnknownVip(Service),
    #[error("backend {backend} already exists on VIP {service}")]
    DuplicateBackend {
        service: Service,
        backend: SocketAddr,
    },
    #[error("VIP {service} has no backend {backend}")]
    UnknownBackend {
        service: Service,
        backend: SocketAddr,
    },
    #[error(
        "backend {backend} is {backend_family} but VIP {service} is {vip_family}: NAT keeps the address family"
    )]
    FamilyMismatch {
        service: Service,
        backend: SocketAddr,
        backend_family: &'static str,
        vip_family: &'static str,
    },
    #[error(
        "VIP {service} has {backends} backend(s): its mode changes only without backends, since their tracked flows would break"
    )]
    ModeChangeWithBackends { service: Service, backends: usize },
    #[error(
        "backend {backend} listens on another port than VIP {service} ({mode}): in DSR the packet reaches the backend unchanged, so it must listen on port {}",
        service.addr.port()
    )]
    DsrPortMismatch {
        service: Service,
        backend: SocketAddr,
        mode: Mode,
    },
    #[error(
        "backend {backend} is IPv4 but VIP {service} is IPv6: {mode} carries an IPv4 VIP to IPv6 backends, not the reverse{}",
        if matches!(mode, Mode::DsrL2) { " (and dsr-l2 keeps the family)" } else { "" }
    )]
    DsrFamily {
        service: Service,
        backend: SocketAddr,
        mode: Mode,
    },
    #[error("VIP {service}: {error}")]
    Sources {
        service: Service,
        error: Box<SourcesError>,
    },
    #[error("weight {0} is out of range ({MIN_WEIGHT}..={MAX_WEIGHT})")]
    WeightOutOfRange(u32),
    #[error("port 0 is not a valid {0} port")]
    PortZero(&'static str),
    #[error("{0} is not a usable address")]
    UnusableAddress(IpAddr),
    #[error("nothing to change")]
    EmptySet,
    #[error("VIP {0} is TCP: QUIC configs are for UDP VIPs (--proto udp)")]
    QuicOnTcp(Service),
    #[error(
        "VIP {service}: {count} QUIC configs, at most {} (config ids 0 to 6)",
        quic::MAX_CONFIGS
    )]
    TooManyQuicConfigs { service: Service, count: usize },
    #[error(
        "VIP {0}: encrypted QUIC-LB configs are not supported by the datapath yet; use a plaintext config (no key)"
    )]
    EncryptedQuicConfig(Service),
    #[error("VIP {service}: QUIC config id {config_id} is given twice")]
    DuplicateQuicConfigId { service: Service, config_id: u8 },
    #[error(
        "VIP {service}: config {first} has server-id-len {first_len} but config {other} has {other_len}; a VIP's configs share one server-id length, so a backend's one server id is valid under each"
    )]
    QuicServerIdLenDiffers {
        service: Service,
        first: u8,
        first_len: usize,
        other: u8,
        other_len: usize,
    },
    #[error(
        "VIP {0} has no QUIC config: a server id is for the backends of QUIC VIPs (lb vip set-quic)"
    )]
    NotQuic(Service),
    #[error(
        "server id {server_id} has {} byte(s) but VIP {service}'s QUIC configs have server-id-len {server_id_len}",
        server_id.len()
    )]
    ServerIdLen {
        service: Service,
        server_id: ServerId,
        server_id_len: usize,
    },
    #[error(
        "server id {0} is all zeros: lb never routes it, since a server that ignores QUIC-LB may issue such IDs"
    )]
    ServerIdZero(ServerId),
    #[error("server id {server_id} is already backend {holder}'s on VIP {service}")]
    ServerIdInUse {
        service: Service,
        server_id: ServerId,
        holder: SocketAddr,
    },
    #[error(
        "VIP {service}: every {server_id_len}-byte server id is taken; give its configs a longer server-id-len"
    )]
    ServerIdsExhausted {
        service: Service,
        server_id_len: usize,
    },
    #[error(
        "backend {backend}/{proto} already serves VIP {owner}: an endpoint serves one VIP, since its replies must get that VIP's address back"
    )]
    EndpointInUse {
        backend: SocketAddr,
        proto: Proto,
        owner: Service,
    },
}

impl ChangeError {
    /// Whether the error is about a server id the operator gave.
    pub(crate) const fn is_about_server_id(&self) -> bool {
        matches!(
            self,
            ChangeError::NotQuic(_)
                | ChangeError::ServerIdLen { .. }
                | ChangeError::ServerIdZero(_)
                | ChangeError::ServerIdInUse { .. }
        )
    }
}

/// The QUIC rule a change broke, as the change's error (naming its VIP).
fn refused(service: Service, refusal: quic::Refusal) -> ChangeError {
    use quic::Refusal as R;
    match refusal {
        R::TooManyConfigs(count) => ChangeError::TooManyQuicConfigs { service, count },
        R::Encrypted => ChangeError::EncryptedQuicConfig(service),
        R::DuplicateConfigId(config_id) => {
            ChangeError::DuplicateQuicConfigId { service, config_id }
        }
        R::ServerIdLenDiffers {
            first,
            first_len,
            other,
            other_len,
        } => ChangeError::QuicServerIdLenDiffers {
            service,
            first,
            first_len,
            other,
            other_len,
        },
        R::ServerIdLen {
            server_id,
            server_id_len,
        } => ChangeError::ServerIdLen {
            service,
            server_id,
            server_id_len,
        },
        R::ServerIdZero(server_id) => ChangeError::ServerIdZero(server_id),
        R::ServerIdInUse { server_id, holder } => ChangeError::ServerIdInUse {
            service,
            server_id,
            holder,
        },
        R::Exhausted { server_id_len } => ChangeError::ServerIdsExhausted {
            service,
            server_id_len,
        },
    }
}

/// The server ids a VIP's backends have, by backend.
fn taken_ids(vip: &VipSpec) -> Vec<(SocketAddr, ServerId)> {
    vip.backends
        .iter()
        .filter_map(|(addr, spec)| spec.server_id.map(|id| (*addr, id)))
        .collect()
}

/// Gives every backend of a VIP a server id for `server_id_len` (its configs' new
/// length), derived in address order; `None` takes them away (no QUIC configs).
fn reassign_server_ids(
    service: Service,
    backends: &mut BTreeMap<SocketAddr, BackendSpec>,
    server_id_len: Option<usize>,
) -> Result<(), ChangeError> {
    for spec in backends.values_mut() {
        spec.server_id = None;
    }
    let Some(len) = server_id_len else {
        return Ok(());
    };
    let mut taken = Vec::new();
    for (addr, spec) in backends.iter_mut() {
        let id = quic::derive_server_id(&taken, *addr, len).map_err(|r| refused(service, r))?;
        spec.server_id = Some(id);
        taken.push((*addr, id));
    }
    Ok(())
}

/// A backend whose server id a change gave, changed or took away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ServerIdChange {
    pub(crate) service: Service,
    pub(crate) backend: SocketAddr,
    pub(crate) from: Option<ServerId>,
    pub(crate) to: Option<ServerId>,
}

/// Every backend whose server id differs from `before` to `after` (a new backend of a
/// QUIC VIP included), in VIP and address order.
pub(crate) fn server_id_changes(before: &State, after: &State) -> Vec<ServerIdChange> {
    after
        .vips
        .iter()
        .flat_map(|(service, vip)| {
            let old = before.vips.get(service);
            vip.backends.iter().filter_map(move |(backend, spec)| {
                let from = old
                    .and_then(|v| v.backends.get(backend))
                    .and_then(|b| b.server_id);
                (from != spec.server_id).then_some(ServerIdChange {
                    service: *service,
                    backend: *backend,
                    from,
                    to: spec.server_id,
                })
            })
        })
        .collect()
}

const fn family_name(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn check_address(addr: &SocketAddr, what: &'static str) -> Result<(), ChangeError> {
    if addr.port() == 0 {
        return Err(ChangeError::PortZero(what));
    }
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || broadcast {
        return Err(ChangeError::UnusableAddress(ip));
    }
    Ok(())
}

fn check_weight(weight: u32) -> Result<(), ChangeError> {
    if (MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) {
        Ok(())
    } else {
        Err(ChangeError::WeightOutOfRange(weight))
    }
}

impl State {
    /// Applies `change` if it is valid; on error `self` is unchanged.
    pub(crate) fn apply(&mut self, change: &Change) -> Result<(), ChangeError> {
        match *change {
            Change::AddVip(service) => {
                check_address(&service.addr, "VIP")?;
                if self.vips.contains_key(&service) {
                    return Err(ChangeError::DuplicateVip(service));
                }
                self.vips.insert(service, VipSpec::default());
            }
            Change::DelVip(service) => {
                self.vips
                    .remove(&service)
                    .ok_or(ChangeError::UnknownVip(service))?;
            }
            Change::AddBackend {
                service,
                backend,
                weight,
                server_id,
            } => {
                check_address(&backend, "backend")?;
                check_weight(weight)?;
                let vip = self
                    .vips
                    .get(&service)
                    .ok_or(ChangeError::UnknownVip(service))?;
                let mode = vip.mode;
                if mode.is_dsr() && backend.port() != service.addr.port() {
                    return Err(ChangeError::DsrPortMismatch {
                        service,
                        backend,
                        mode,
                    });
                }
                // dsr-ipip and dsr-gue may carry an IPv4 VIP over IPv6; nothing else
                // crosses families.
                let v4_over_v6 = mode.encapsulates() && service.addr.is_ipv4();
                if mode.is_dsr() && backend.is_ipv4() != service.addr.is_ipv4() && !v4_over_v6 {
                    return Err(ChangeError::DsrFamily {
                        service,
                        backend,
                        mode,
                    });
                }
                if !mode.is_dsr() && backend.is_ipv4() != service.addr.is_ipv4() {
                    return Err(ChangeError::FamilyMismatch {
                        service,
                        backend,
                        backend_family: family_name(&backend),
                        vip_family: family_name(&service.addr),
                    });
                }
                if vip.backends.contains_key(&backend) {
                    return Err(ChangeError::DuplicateBackend { service, backend });
                }
                if mode == Mode::Nat
                    && let Some(owner) = self.endpoint_owner(backend, service.proto)
                {
                    return Err(ChangeError::EndpointInUse {
                        backend,
                        proto: service.proto,
                        owner,
                    });
                }
                let taken = taken_ids(vip);
                let server_id = match (quic::server_id_len(&vip.quic), server_id) {
                    (None, None) => None,
                    (None, Some(_)) => return Err(ChangeError::NotQuic(service)),
                    (Some(len), Some(id)) => {
                        quic::check_server_id(&taken, backend, id, len)
                            .map_err(|r| refused(service, r))?;
                        Some(id)
                    }
                    (Some(len), None) => Some(
                        quic::derive_server_id(&taken, backend, len)
                            .map_err(|r| refused(service, r))?,
                    ),
                };
                let vip = self
                    .vips
                    .get_mut(&service)
                    .ok_or(ChangeError::UnknownVip(service))?;
                vip.backends.insert(
                    backend,
                    BackendSpec {
                        weight,
                        draining: false,
                        server_id,
                    },
                );
            }
            Change::SetBackend {
                service,
                backend,
                weight,
                undrain,
                server_id,
            } => {
                if weight.is_none() && !undrain && server_id.is_none() {
                    return Err(ChangeError::EmptySet);
                }
                if let Some(weight) = weight {
                    check_weight(weight)?;
                }
                if let Some(id) = server_id {
                    self.check_new_server_id(service, backend, id)?;
                }
                let spec = self.backend_mut(service, backend)?;
                if let Some(weight) = weight {
                    spec.weight = weight;
                }
                if undrain {
                    spec.draining = false;
                }
                if server_id.is_some() {
                    spec.server_id = server_id;
                }
            }
            Change::SetQuic {
                service,
                ref configs,
            } => {
                let vip = self
                    .vips
                    .get(&service)
                    .ok_or(ChangeError::UnknownVip(service))?;
                if !configs.is_empty() && service.proto != Proto::Udp {
                    return Err(ChangeError::QuicOnTcp(service));
                }
                quic::check_configs(configs).map_err(|r| refused(service, r))?;
                let new_len = quic::server_id_len(configs);
                let mut backends = vip.backends.clone();
                if quic::server_id_len(&vip.quic) != new_len {
                    reassign_server_ids(service, &mut backends, new_len)?;
                }
                let vip = self.vip_mut(service)?;
                vip.backends = backends;
                vip.quic.clone_from(configs);
            }
            Change::DrainBackend { service, backend } => {
                self.backend_mut(service, backend)?.draining = true;
            }
            Change::DrainNode(drained) => self.node.drained = drained,
            Change::SetMode { service, mode } => {
                let vip = self.vip_mut(service)?;
                if vip.mode != mode && !vip.backends.is_empty() {
                    return Err(ChangeError::ModeChangeWithBackends {
                        service,
                        backends: vip.backends.len(),
                    });
                }
                vip.mode = mode;
            }
            Change::SetCheck {
                ref service,
                ref check,
            } => {
                self.vip_mut(*service)?.check.clone_from(check);
            }
            Change::SetOnDown { service, on_down } => {
                self.vip_mut(service)?.on_down = on_down;
            }
            Change::SetSources {
                service,
                ref sources,
            } => {
                let checked =
                    check_sources(service.addr, sources).map_err(|error| ChangeError::Sources {
                        service,
                        error: Box::new(error),
                    })?;
                self.vip_mut(service)?.sources = checked;
            }
            Change::DelBackend { service, backend } => {
                self.vip_mut(service)?
                    .backends
                    .remove(&backend)
                    .ok_or(ChangeError::UnknownBackend { service, backend })?;
            }
        }
        Ok(())
    }

    /// Checks `server_id` as the new server id of an existing backend of a QUIC VIP.
    fn check_new_server_id(
        &self,
        service: Service,
        backend: SocketAddr,
        server_id: ServerId,
    ) -> Result<(), ChangeError> {
        let vip = self
            .vips
            .get(&service)
            .ok_or(ChangeError::UnknownVip(service))?;
        if !vip.backends.contains_key(&backend) {
            return Err(ChangeError::UnknownBackend { service, backend });
        }
        let len = quic::server_id_len(&vip.quic).ok_or(ChangeError::NotQuic(service))?;
        quic::check_server_id(&taken_ids(vip), backend, server_id, len)
            .map_err(|r| refused(service, r))
    }

    fn vip_mut(&mut self, service: Service) -> Result<&mut VipSpec, ChangeError> {
        self.vips
            .get_mut(&service)
            .ok_or(ChangeError::UnknownVip(service))
    }

    fn backend_mut(
        &mut self,
        service: Service,
        backend: SocketAddr,
    ) -> Result<&mut BackendSpec, ChangeError> {
        self.vip_mut(service)?
            .backends
            .get_mut(&backend)
            .ok_or(ChangeError::UnknownBackend { service, backend })
    }

    /// The NAT VIP whose backend `endpoint` (with `proto`) is, if any: its replies get
    /// that VIP's address. (DSR backends reply for themselves and may serve several.)
    pub(crate) fn endpoint_owner(&self, endpoint: SocketAddr, proto: Proto) -> Option<Service> {
        self.vips
            .iter()
            .find(|(service, vip)| {
                vip.mode == Mode::Nat
                    && service.proto == proto
                    && vip.backends.contains_key(&endpoint)
            })
            .map(|(service, _)| *service)
    }

    pub(crate) fn backend_count(&self) -> usize {
        self.vips.values().map(|v| v.backends.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(addr: &str) -> Service {
        Service {
            addr: addr.parse().expect("address"),
            proto: Proto::Tcp,
        }
    }

    fn add_backend(service: Service, backend: &str, weight: u32) -> Change {
        Change::AddBackend {
            server_id: None,
            service,
            backend: backend.parse().expect("address"),
            weight,
        }
    }

    #[test]
    fn valid_changes_build_the_state() {
        let vip = service("198.18.1.1:80");
        let mut state = State::default();
        state.apply(&Change::AddVip(vip)).expect("add VIP");
        state
            .apply(&add_backend(vip, "198.18.2.1:80", 100))
            .expect("add backend");
        let backend = "198.18.2.1:80".parse().expect("address");
        state
            .apply(&Change::DrainBackend {
                service: vip,
                backend,
            })
            .expect("drain");
        assert!(state.vips[&vip].backends[&backend].draining);
        state
            .apply(&Change::SetBackend {
                server_id: None,
                service: vip,
                backend,
                weight: Some(7),
                undrain: true,
            })
            .expect("set");
        assert_eq!(
            state.vips[&vip].backends[&backend],
            BackendSpec {
                server_id: None,
                weight: 7,
                draining: false
            }
        );
        state
            .apply(&Change::DelBackend {
                service: vip,
                backend,
            })
            .expect("del backend");
        state.apply(&Change::DelVip(vip)).expect("del VIP");
        assert_eq!(state, State::default());
    }

    #[test]
    fn invalid_changes_leave_the_state_alone() {
        let v4 = service("198.18.1.1:80");
        let v6 = service("[fd00::1]:80");
        let mut state = State::default();
        state.apply(&Change::AddVip(v4)).expect("VIP");
        state.apply(&Change::AddVip(v6)).expect("VIP");
        let other = service("198.18.1.2:80");
        state.apply(&Change::AddVip(other)).expect("VIP");
        state
            .apply(&add_backend(v4, "198.18.2.1:80", 1))
            .expect("backend");
        let before = state.clone();
        let backend: SocketAddr = "198.18.2.9:80".parse().expect("address");
        let cases = [
            (Change::AddVip(v4), "already exists"),
            (Change::AddVip(service("0.0.0.0:80")), "usable"),
            (Change::AddVip(service("198.18.1.1:0")), "port 0"),
            (Change::DelVip(service("198.18.1.3:80")), "no VIP"),
            (add_backend(v4, "198.18.2.1:80", 1), "already exists"),
            (add_backend(v6, "198.18.2.2:80", 1), "IPv4 but VIP"),
            (add_backend(v4, "198.18.2.2:80", 0), "out of range"),
            (add_backend(v4, "198.18.2.2:80", 65_536), "out of range"),
            (add_backend(v4, "127.0.0.1:80", 1), "usable"),
            (add_backend(other, "198.18.2.1:80", 1), "already serves VIP"),
            (
                Change::DrainBackend {
                    service: v4,
                    backend,
                },
                "has no backend",
            ),
            (
                Change::SetBackend {
                    server_id: None,
                    service: v4,
                    backend: "198.18.2.1:80".parse().expect("address"),
                    weight: None,
                    undrain: false,
                },
                "nothing to change",
            ),
            (
                Change::SetSources {
                    service: v4,
                    sources: vec!["fd00::/64".parse().expect("prefix")],
                },
                "source prefix fd00::/64 is IPv6 but VIP 198.18.1.1:80 is IPv4",
            ),
            (
                Change::SetSources {
                    service: v6,
                    sources: vec!["fd00::/64".parse().expect("prefix"); 2],
                },
                "given twice",
            ),
            (
                Change::SetOnDown {
                    service: service("198.18.1.9:80"),
                    on_down: OnDown::Move,
                },
                "no VIP",
            ),
        ];
        for (change, message) in cases {
            let error = state.apply(&change).expect_err("must be refused");
            assert!(error.to_string().contains(message), "{change:?}: {error}");
            assert_eq!(state, before, "{change:?} changed the state");
        }
    }

    #[test]
    fn dsr_backends_keep_the_port_and_cross_families_one_way_only() {
        let ipip = service("198.18.1.1:80");
        let l2 = service("198.18.1.2:80");
        let ipip6 = service("[fd00::1]:80");
        let mut state = State::default();
        for (vip, mode) in [
            (ipip, Mode::DsrIpip),
            (l2, Mode::DsrL2),
            (ipip6, Mode::DsrIpip),
        ] {
            state.apply(&Change::AddVip(vip)).expect("VIP");
            state
                .apply(&Change::SetMode { service: vip, mode })
                .expect("an empty VIP changes mode");
        }
        state
            .apply(&add_backend(ipip, "198.18.2.1:80", 1))
            .expect("same port, same family");
        state
            .apply(&add_backend(ipip, "[fd00::2:1]:80", 1))
            .expect("IPv4 in IPv6");
        // DSR backends may serve several VIPs: they answer for each VIP on their own.
        state
            .apply(&add_backend(l2, "198.18.2.1:80", 1))
            .expect("shared endpoint");
        let before = state.clone();
        let cases = [
            (add_backend(ipip, "198.18.2.2:8080", 1), "port 80"),
            (add_backend(ipip6, "198.18.2.2:80", 1), "not the reverse"),
            (
                add_backend(l2, "[fd00::2:2]:80", 1),
                "dsr-l2 keeps the family",
            ),
            (
                Change::SetMode {
                    service: ipip,
                    mode: Mode::Nat,
                },
                "2 backend(s)",
            ),
        ];
        for (change, message) in cases {
            let error = state.apply(&change).expect_err("must be refused");
            assert!(error.to_string().contains(message), "{change:?}: {error}");
            assert_eq!(state, before, "{change:?} changed the state");
        }
        state
            .apply(&Change::SetMode {
                service: ipip,
                mode: Mode::DsrIpip,
            })
            .expect("the same mode again changes nothing");
        assert_eq!(state, before);
    }
}
