//! The desired state of VIPs and backends, and applying it to the datapath's maps.
//!
//! Every change is validated in full before any map is touched. A VIP's backends go live by
//! building the weighted Maglev table into the VIP's inactive table and then flipping the
//! VIP entry's `active_table` in one map update.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    consts::{
        BACKEND_ACTIVE, BACKEND_DRAINING, FAMILY_V4, FAMILY_V6, IPPROTO_TCP, IPPROTO_UDP,
        MAX_BACKENDS,
    },
    service::{Addr, Backend, VipInfo, VipKey, addr_from_v4},
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{datapath::Limits, maglev, maps::ServiceMaps};

pub const MIN_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 65_535;
pub const DEFAULT_WEIGHT: u32 = 100;

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }
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

#[derive(Debug, Error)]
pub enum BalancerError {
    #[error("VIP {0} already exists")]
    DuplicateVip(Service),
    #[error("no VIP {0}")]
    UnknownVip(Service),
    #[error("backend {backend} already exists on VIP {service}")]
    DuplicateBackend {
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
    #[error("weight {0} is out of range ({MIN_WEIGHT}..={MAX_WEIGHT})")]
    WeightOutOfRange(u32),
    #[error("port 0 is not a valid {0} port")]
    PortZero(&'static str),
    #[error("{0} is not a usable address")]
    UnusableAddress(IpAddr),
    #[error("all {0} VIP slots are in use")]
    TooManyVips(u32),
    #[error("all {MAX_BACKENDS} backend slots are in use")]
    TooManyBackends,
    #[error("updating the datapath maps failed")]
    Map(#[from] aya::maps::MapError),
}

#[derive(Clone, Debug)]
struct BackendState {
    id: u32,
    weight: u32,
    draining: bool,
}

#[derive(Clone, Debug)]
struct VipState {
    id: u32,
    active_table: u8,
    backends: BTreeMap<SocketAddr, BackendState>,
}

pub struct Balancer {
    maps: ServiceMaps,
    limits: Limits,
    vips: BTreeMap<Service, VipState>,
    free_backend_ids: BTreeSet<u32>,
}

const fn family_name(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn check_address(addr: &SocketAddr, what: &'static str) -> Result<(), BalancerError> {
    if addr.port() == 0 {
        return Err(BalancerError::PortZero(what));
    }
    let ip = addr.ip();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(BalancerError::UnusableAddress(ip));
    }
    if let IpAddr::V4(v4) = ip
        && v4.is_broadcast()
    {
        return Err(BalancerError::UnusableAddress(ip));
    }
    Ok(())
}

pub fn wire_addr(ip: IpAddr) -> (Addr, u8) {
    match ip {
        IpAddr::V4(v4) => (addr_from_v4(v4.octets()), FAMILY_V4),
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

fn vip_key(service: &Service) -> VipKey {
    let (addr, family) = wire_addr(service.addr.ip());
    VipKey {
        addr,
        port: service.addr.port(),
        proto: service.proto.number(),
        family,
    }
}

impl Balancer {
    pub fn new(maps: ServiceMaps, limits: Limits) -> Self {
        Self {
            maps,
            limits,
            vips: BTreeMap::new(),
            free_backend_ids: (0..MAX_BACKENDS).collect(),
        }
    }

    pub fn add_vip(&mut self, service: Service) -> Result<(), BalancerError> {
        check_address(&service.addr, "VIP")?;
        if self.vips.contains_key(&service) {
            return Err(BalancerError::DuplicateVip(service));
        }
        let used: BTreeSet<u32> = self.vips.values().map(|v| v.id).collect();
        let id = (0..self.limits.max_vips)
            .find(|id| !used.contains(id))
            .ok_or(BalancerError::TooManyVips(self.limits.max_vips))?;
        let (addr, family) = wire_addr(service.addr.ip());
        // Empty table first, so the VIP drops (counted) rather than reading stale slots.
        self.maps
            .write_table(id, 0, &maglev::build(&[], self.limits.maglev_size))?;
        self.maps
            .set_vip(&VipKey::address_entry(addr, family), &VipInfo::default())?;
        self.maps.set_vip(
            &vip_key(&service),
            &VipInfo {
                id,
                ..VipInfo::default()
            },
        )?;
        self.vips.insert(
            service,
            VipState {
                id,
                active_table: 0,
                backends: BTreeMap::new(),
            },
        );
        Ok(())
    }

    pub fn add_backend(
        &mut self,
        service: Service,
        backend: SocketAddr,
        weight: u32,
    ) -> Result<(), BalancerError> {
        check_address(&backend, "backend")?;
        if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) {
            return Err(BalancerError::WeightOutOfRange(weight));
        }
        let vip = self
            .vips
            .get(&service)
            .ok_or(BalancerError::UnknownVip(service))?;
        if backend.is_ipv4() != service.addr.is_ipv4() {
            return Err(BalancerError::FamilyMismatch {
                service,
                backend,
                backend_family: family_name(&backend),
                vip_family: family_name(&service.addr),
            });
        }
        if vip.backends.contains_key(&backend) {
            return Err(BalancerError::DuplicateBackend { service, backend });
        }
        let id = self
            .free_backend_ids
            .pop_first()
            .ok_or(BalancerError::TooManyBackends)?;
        let state = BackendState {
            id,
            weight,
            draining: false,
        };
        if let Err(error) = self.write_backend(&backend, &state) {
            self.free_backend_ids.insert(id);
            return Err(error);
        }
        if let Some(vip) = self.vips.get_mut(&service) {
            vip.backends.insert(backend, state);
        }
        self.publish(&service)
    }

    fn write_backend(
        &mut self,
        addr: &SocketAddr,
        state: &BackendState,
    ) -> Result<(), BalancerError> {
        let (wire, family) = wire_addr(addr.ip());
        self.maps.set_backend(
            state.id,
            &Backend {
                addr: wire,
                port: addr.port(),
                family,
                state: if state.draining {
                    BACKEND_DRAINING
                } else {
                    BACKEND_ACTIVE
                },
            },
        )?;
        Ok(())
    }

    /// Fills the VIP's inactive table from its non-draining backends, then flips to it.
    fn publish(&mut self, service: &Service) -> Result<(), BalancerError> {
        let vip = self
            .vips
            .get(service)
            .ok_or(BalancerError::UnknownVip(*service))?;
        let entries: Vec<maglev::Entry> = vip
            .backends
            .iter()
            .filter(|(_, b)| !b.draining)
            .map(|(addr, b)| maglev::Entry {
                id: b.id,
                weight: b.weight,
                identity: addr.to_string().into_bytes(),
            })
            .collect();
        let table = maglev::build(&entries, self.limits.maglev_size);
        let (id, next) = (vip.id, vip.active_table ^ 1);
        self.maps.write_table(id, next, &table)?;
        self.maps.set_vip(
            &vip_key(service),
            &VipInfo {
                id,
                active_table: next,
                ..VipInfo::default()
            },
        )?;
        if let Some(vip) = self.vips.get_mut(service) {
            vip.active_table = next;
        }
        Ok(())
    }

    /// Lets the datapath redirect out of this interface.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), aya::maps::xdp::XdpMapError> {
        self.maps.add_tx_port(ifindex)
    }
}
