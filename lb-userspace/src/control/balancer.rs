//! Making the datapath's maps match a desired [`State`].
//!
//! A change is validated on a copy of the state first, so a refused change touches no map.
//! Then [`Balancer::sync`] walks the difference in an order that never lets a packet see a
//! half-made change: a VIP's backends go live by building the weighted Maglev table into its
//! inactive table and flipping `active_table` in one VIPS update; a backend leaves the table
//! before its BACKENDS entry is retired, and joins BACKENDS before it enters the table.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::{
    consts::{
        BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UNUSED, FAMILY_V4, FAMILY_V6,
    },
    hash::HashSeed,
    service::{Addr, Backend, Endpoint, EndpointKey, VipInfo, VipKey, addr_from_v4},
};
use thiserror::Error;
use tracing::warn;

use crate::model::state::{
    BackendSpec, Change, ChangeError, MAX_WEIGHT, MIN_WEIGHT, Proto, Service, State, VipSpec,
};
use crate::{
    control::map_writer::MapWriter, datapath::maps::ServiceMaps, model::health::HealthKey,
    model::limits::Limits, model::maglev, model::mode::Mode,
};

#[derive(Debug, Error)]
pub enum BalancerError {
    #[error(transparent)]
    Invalid(#[from] ChangeError),
    #[error("all {0} VIP slots are in use (lb run --max-vips)")]
    TooManyVips(u32),
    #[error("all {0} backend slots are in use (lb run --max-backends)")]
    TooManyBackends(u32),
    #[error("updating the datapath maps failed")]
    Map(#[from] aya::maps::MapError),
}

/// Where a VIP lives in the maps.
#[derive(Clone, Debug)]
struct VipSlot {
    id: u32,
    active_table: u8,
    /// The mode the maps hold for the VIP and its backends.
    mode: Mode,
    backend_ids: BTreeMap<SocketAddr, u32>,
    /// [`maglev::fingerprint`] of the live table.
    fingerprint: u64,
}

/// Generic over the maps so the order of its writes can be tested with a recording fake.
pub struct Balancer<M = ServiceMaps> {
    maps: M,
    limits: Limits,
    /// What the operator asked for (saved to the state file).
    desired: State,
    /// What the maps hold: `desired`, with backends that failed their health check out of
    /// the tables (as if draining).
    applied: State,
    /// Backends whose health check says down.
    down: BTreeSet<HealthKey>,
    slots: BTreeMap<Service, VipSlot>,
    free_backend_ids: BTreeSet<u32>,
    /// Backend ids are handed out round-robin from here, so a freed id is reused as late as
    /// possible: conntrack entries of a deleted backend age out before its id returns.
    next_backend_id: u32,
    /// The generation each used backend id was given (see `Backend::generation`).
    generations: BTreeMap<u32, u32>,
    /// The next generation to give: every allocation of an id gets a new one, so tracked
    /// flows of a deleted backend never follow its id to the next backend.
    next_generation: u32,
    /// Set by [`Balancer::adopt`]: the next sync rewrites every VIP's entries and table,
    /// repairing whatever an interrupted predecessor left half done.
    rewrite_all: bool,
    /// Keys the Maglev permutations (the cluster's `--hash-seed`).
    hash_seed: HashSeed,
    /// ENDPOINTS entries of retired backends and when they may go: a reply already on its
    /// way when its backend is deleted must still leave with the VIP's address.
    lingering: Vec<(EndpointKey, Instant)>,
}

/// How long a deleted backend's ENDPOINTS entries outlive it (at least; they go at the
/// first [`Balancer::expire_endpoints`] after).
pub const ENDPOINT_GRACE: Duration = Duration::from_secs(2);

/// A delete of something already gone is done.
fn ignore_missing(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(error) if crate::datapath::maps::missing(&error) => Ok(()),
        other => other,
    }
}

pub fn wire_addr(ip: IpAddr) -> (Addr, u8) {
    match ip {
        IpAddr::V4(v4) => (addr_from_v4(v4.octets()), FAMILY_V4),
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

fn ip_from_wire(addr: &Addr, family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::from([addr[0], addr[1], addr[2], addr[3]])),
        FAMILY_V6 => Some(IpAddr::from(*addr)),
        _ => None,
    }
}

fn endpoint_key(addr: &SocketAddr, proto: u8) -> EndpointKey {
    let (wire, family) = wire_addr(addr.ip());
    EndpointKey {
        addr: wire,
        port: addr.port(),
        proto,
        family,
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

/// A backend's place in the maps, as listed to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BackendView {
    pub(crate) addr: SocketAddr,
    pub(crate) spec: BackendSpec,
    pub(crate) id: u32,
    /// The id's generation: tracked flows carry it, so they are told from flows of an
    /// earlier backend under the same id.
    pub(crate) generation: u32,
}

/// A VIP as listed to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VipView {
    pub(crate) service: Service,
    pub(crate) id: u32,
    pub(crate) backends: Vec<BackendView>,
    /// [`maglev::fingerprint`] of the live table.
    pub(crate) fingerprint: u64,
    /// Backends the operator has not drained.
    pub(crate) live: usize,
    /// Of those, the ones not failing their health check.
    pub(crate) healthy: usize,
}

impl<M: MapWriter> Balancer<M> {
    /// A balancer over freshly created (empty) maps.
    pub fn new(maps: M, limits: Limits) -> Self {
        Self {
            maps,
            limits,
            desired: State::default(),
            applied: State::default(),
            down: BTreeSet::new(),
            slots: BTreeMap::new(),
            free_backend_ids: (0..limits.max_backends).collect(),
            next_backend_id: 0,
            generations: BTreeMap::new(),
            next_generation: 1,
            rewrite_all: false,
            hash_seed: [0; 2],
            lingering: Vec::new(),
        }
    }

    /// Builds every table with the cluster's `seed` (before the first sync).
    pub fn with_hash_seed(mut self, seed: HashSeed) -> Self {
        self.hash_seed = seed;
        self
    }

    /// A balancer over maps a previous controller filled: reads VIPS and BACKENDS back into
    /// state and ids, so tracked flows keep the backend ids they are pinned to. Entries that
    /// do not fit together (a backend of a VIP that no longer exists) are retired.
    pub(crate) fn adopt(maps: M, limits: Limits) -> Result<Self, BalancerError> {
        let mut balancer = Self::new(maps, limits);
        let mut by_id: BTreeMap<u32, Service> = BTreeMap::new();
        let mut address_entries = Vec::new();
        for (key, info) in balancer.maps.vips()? {
            let Some(proto) = Proto::from_number(key.proto) else {
                address_entries.push(key);
                continue;
            };
            let Some(ip) = ip_from_wire(&key.addr, key.family) else {
                continue;
            };
            let service = Service {
                addr: SocketAddr::new(ip, key.port),
                proto,
            };
            by_id.insert(info.id, service);
            let mode = Mode::from_number(info.mode).unwrap_or_default();
            balancer.applied.vips.insert(
                service,
                VipSpec {
                    mode,
                    ..VipSpec::default()
                },
            );
            balancer.slots.insert(
                service,
                VipSlot {
                    id: info.id,
                    active_table: info.active_table & 1,
                    mode,
                    backend_ids: BTreeMap::new(),
                    fingerprint: 0,
                },
            );
        }
        for (id, backend) in balancer.maps.backends()? {
            if backend.state == BACKEND_UNUSED {
                continue;
            }
            let service = by_id.get(&backend.vip_id).copied();
            let ip = ip_from_wire(&backend.addr, backend.family);
            let (Some(service), Some(ip)) = (service, ip) else {
                warn!(id, "retiring a pinned backend that belongs to no VIP");
                balancer.maps.set_backend(id, &Backend::default())?;
                continue;
            };
            let addr = SocketAddr::new(ip, backend.port);
            let spec = BackendSpec {
                weight: backend.weight.clamp(MIN_WEIGHT, MAX_WEIGHT),
                draining: backend.state == BACKEND_DRAINING || backend.state == BACKEND_DOWN,
            };
            balancer.generations.insert(id, backend.generation);
            balancer.next_generation = balancer
                .next_generation
                .max(backend.generation.wrapping_add(1));
            if let (Some(vip), Some(slot)) = (
                balancer.applied.vips.get_mut(&service),
                balancer.slots.get_mut(&service),
            ) {
                vip.backends.insert(addr, spec);
                slot.backend_ids.insert(addr, id);
            }
            balancer.free_backend_ids.remove(&id);
            balancer.next_backend_id = id + 1;
        }
        for key in address_entries {
            let used = balancer
                .applied
                .vips
                .keys()
                .any(|s| wire_addr(s.addr.ip()) == (key.addr, key.family));
            if !used {
                ignore_missing(balancer.maps.remove_vip(&key))?;
            }
        }
        balancer.rewrite_all = true;
        balancer.desired = balancer.applied.clone();
        Ok(balancer)
    }

    /// Removes ENDPOINTS entries that no backend in the maps has (left by a predecessor
    /// that stopped midway); run after a sync that rewrote every VIP.
    pub(crate) fn prune_endpoints(&mut self) -> Result<(), BalancerError> {
        let wanted = self.wanted_endpoints();
        for key in self.maps.endpoint_keys()? {
            if !wanted.contains(&key) {
                ignore_missing(self.maps.remove_endpoint(&key))?;
            }
        }
        self.lingering.clear();
        Ok(())
    }

    /// Removes the entries of retired backends whose grace has passed at `now`, unless a
    /// backend serves that endpoint again. The daemon calls it every sweep.
    pub fn expire_endpoints(&mut self, now: Instant) -> Result<(), BalancerError> {
        if !self.lingering.iter().any(|(_, until)| *until <= now) {
            return Ok(());
        }
        let wanted = self.wanted_endpoints();
        let mut kept = Vec::new();
        for (key, until) in std::mem::take(&mut self.lingering) {
            if until > now {
                kept.push((key, until));
            } else if !wanted.contains(&key) {
                ignore_missing(self.maps.remove_endpoint(&key))?;
            }
        }
        self.lingering = kept;
        Ok(())
    }

    /// The ENDPOINTS keys the NAT backends of the current state need.
    fn wanted_endpoints(&self) -> std::collections::HashSet<EndpointKey> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.mode == Mode::Nat)
            .flat_map(|(service, slot)| {
                slot.backend_ids.keys().flat_map(|addr| {
                    let (wire, family) = wire_addr(addr.ip());
                    [
                        endpoint_key(addr, service.proto.number()),
                        EndpointKey {
                            addr: wire,
                            port: 0,
                            proto: 0,
                            family,
                        },
                    ]
                })
            })
            .collect()
    }

    /// The desired state (what the maps hold, but for health).
    pub fn state(&self) -> &State {
        &self.desired
    }

    /// Applies one operator change: validated in full, then synced to the maps.
    pub fn apply(&mut self, change: &Change) -> Result<(), BalancerError> {
        self.apply_all(std::slice::from_ref(change))
    }

    /// Applies several changes as one: all are validated before any map is touched.
    pub(crate) fn apply_all(&mut self, changes: &[Change]) -> Result<(), BalancerError> {
        let mut next = self.desired.clone();
        for change in changes {
            next.apply(change)?;
        }
        self.sync(&next)
    }

    /// Takes backends whose health check failed out of their tables, and brings back
    /// those that recovered.
    pub fn set_down(&mut self, down: BTreeSet<HealthKey>) -> Result<(), BalancerError> {
        if down == self.down {
            return Ok(());
        }
        let changed: Vec<HealthKey> = self.down.symmetric_difference(&down).copied().collect();
        self.down = down;
        let target = self.desired.clone();
        self.sync(&target)?;
        // A backend that was already out of its table (an operator's drain) and now
        // changes health only changes state in BACKENDS: draining keeps its flows, down
        // does not.
        for (service, addr) in changed {
            let spec = self
                .applied
                .vips
                .get(&service)
                .and_then(|vip| vip.backends.get(&addr))
                .copied();
            let ids = self.slots.get(&service).map(|slot| slot.id);
            if let (Some(spec), Some(vip_id), Some(id)) = (spec, ids, self.slot_id(&service, &addr))
                && spec.draining
            {
                self.write_backend(&service, vip_id, id, &addr, &spec)?;
            }
        }
        Ok(())
    }

    /// `target` with the down backends draining, except where that would leave a VIP with
    /// no backend at all: then every backend stays (fail open), since a wrong check must
    /// not take a whole service down.
    fn effective(&self, target: &State) -> State {
        let mut effective = target.clone();
        for (service, vip) in &mut effective.vips {
            let eligible = || vip.backends.iter().filter(|(_, b)| !b.draining);
            let all_down = eligible().count() > 0
                && eligible().all(|(addr, _)| self.down.contains(&(*service, *addr)));
            if all_down {
                warn!(vip = %service, "every backend is failing its health check: keeping them all (fail open)");
                continue;
            }
            for (addr, backend) in &mut vip.backends {
                if self.down.contains(&(*service, *addr)) {
                    backend.draining = true;
                }
            }
        }
        effective
    }

    pub fn add_vip(&mut self, service: Service) -> Result<(), BalancerError> {
        self.apply(&Change::AddVip(service))
    }

    pub fn add_backend(
        &mut self,
        service: Service,
        backend: SocketAddr,
        weight: u32,
    ) -> Result<(), BalancerError> {
        self.apply(&Change::AddBackend {
            service,
            backend,
            weight,
        })
    }

    /// Makes `target` the desired state and the maps hold it (with health applied). On a
    /// map error the maps hold a mix of the two states, each step consistent on its own,
    /// and the desired state stays as it was; the next sync completes the rest.
    pub(crate) fn sync(&mut self, target: &State) -> Result<(), BalancerError> {
        self.check_capacity(target)?;
        let effective = self.effective(target);
        self.sync_applied(&effective)?;
        self.desired = target.clone();
        Ok(())
    }

    fn sync_applied(&mut self, target: &State) -> Result<(), BalancerError> {
        let gone: Vec<Service> = self
            .applied
            .vips
            .keys()
            .filter(|s| !target.vips.contains_key(s))
            .copied()
            .collect();
        for service in gone {
            self.remove_vip(&service, target)?;
        }
        for (service, spec) in &target.vips {
            if !self.slots.contains_key(service) {
                self.create_vip(service, spec.mode)?;
            }
            let applied = self.applied.vips.get(service);
            let backends = applied.map(|v| &v.backends);
            let mode_changed = applied.is_some_and(|v| v.mode != spec.mode);
            if self.rewrite_all || mode_changed || backends != Some(&spec.backends) {
                self.sync_backends(service, spec)?;
            } else if let Some(vip) = self.applied.vips.get_mut(service) {
                vip.check = spec.check.clone();
            }
        }
        if self.rewrite_all {
            self.prune_endpoints()?;
        }
        self.rewrite_all = false;
        Ok(())
    }

    /// Refuses a target that would not fit, before anything is written. Joiners get ids
    /// before leavers give theirs back, so only free ids count.
    fn check_capacity(&self, target: &State) -> Result<(), BalancerError> {
        if target.vips.len() > self.limits.max_vips as usize {
            return Err(BalancerError::TooManyVips(self.limits.max_vips));
        }
        let added: usize = target
            .vips
            .iter()
            .map(|(service, spec)| {
                let current = self.applied.vips.get(service);
                spec.backends
                    .keys()
                    .filter(|b| !current.is_some_and(|c| c.backends.contains_key(b)))
                    .count()
            })
            .sum();
        if added > self.free_backend_ids.len() {
            return Err(BalancerError::TooManyBackends(self.limits.max_backends));
        }
        Ok(())
    }

    fn create_vip(&mut self, service: &Service, mode: Mode) -> Result<(), BalancerError> {
        let used: BTreeSet<u32> = self.slots.values().map(|v| v.id).collect();
        let id = (0..self.limits.max_vips)
            .find(|id| !used.contains(id))
            .ok_or(BalancerError::TooManyVips(self.limits.max_vips))?;
        // The table the VIP entry will point at is empty: a VIP without backends drops
        // (counted) rather than reading a previous VIP's slots.
        self.maps
            .write_table(id, 0, &maglev::build(&[], self.limits.maglev_size, [0; 2]))?;
        self.maps.reset_vip_counters(id)?;
        let (addr, family) = wire_addr(service.addr.ip());
        self.maps
            .set_vip(&VipKey::address_entry(addr, family), &VipInfo::default())?;
        self.maps.set_vip(
            &vip_key(service),
            &VipInfo {
                id,
                mode: mode.number(),
                ..VipInfo::default()
            },
        )?;
        self.slots.insert(
            *service,
            VipSlot {
                id,
                active_table: 0,
                mode,
                backend_ids: BTreeMap::new(),
                fingerprint: maglev::fingerprint(&[], &[]),
            },
        );
        self.applied.vips.insert(
            *service,
            VipSpec {
                mode,
                ..VipSpec::default()
            },
        );
        Ok(())
    }

    fn remove_vip(&mut self, service: &Service, target: &State) -> Result<(), BalancerError> {
        let Some(slot) = self.slots.get(service).cloned() else {
            return Ok(());
        };
        // New packets to the VIP now go to the kernel; then its backends are retired. Each
        // step is recorded as it succeeds, so a retry after a failure resumes cleanly.
        ignore_missing(self.maps.remove_vip(&vip_key(service)))?;
        // The address entry stays while another VIP (kept or still to be created) uses it.
        let ip = service.addr.ip();
        if !target.vips.keys().any(|other| other.addr.ip() == ip) {
            let (addr, family) = wire_addr(ip);
            ignore_missing(self.maps.remove_vip(&VipKey::address_entry(addr, family)))?;
        }
        for (addr, id) in &slot.backend_ids.clone() {
            self.retire_backend(service, addr, *id)?;
        }
        self.slots.remove(service);
        self.applied.vips.remove(service);
        Ok(())
    }

    /// Brings one VIP's backends to `spec`, keeping the ids of backends that stay. Every
    /// map write is recorded in `slots` as soon as it succeeds; `state` changes at the end.
    fn sync_backends(&mut self, service: &Service, spec: &VipSpec) -> Result<(), BalancerError> {
        let Some(vip_id) = self.slots.get(service).map(|s| s.id) else {
            return Ok(());
        };
        // A mode changes only without backends (the model refuses it otherwise), so every
        // backend written below is written in the VIP's mode.
        if let Some(slot) = self.slots.get_mut(service) {
            slot.mode = spec.mode;
        }
        let current = self.applied.vips.get(service).cloned().unwrap_or_default();
        // 1. Joiners and changed backends enter BACKENDS. One that becomes active is marked
        //    so before any slot points at it; one that starts draining stays active until
        //    the table without it is live.
        for (addr, backend) in &spec.backends {
            let known = self.slot_id(service, addr);
            let id = match known {
                Some(id) => id,
                None => {
                    let id = self.allocate_backend_id()?;
                    if let Some(slot) = self.slots.get_mut(service) {
                        slot.backend_ids.insert(*addr, id);
                    }
                    self.maps.reset_backend_counters(id)?;
                    id
                }
            };
            let before = current.backends.get(addr).filter(|_| known.is_some());
            let in_map = BackendSpec {
                draining: backend.draining && before.is_none_or(|b| b.draining),
                ..*backend
            };
            if self.rewrite_all || before != Some(&in_map) {
                self.write_backend(service, vip_id, id, addr, &in_map)?;
            }
            // DSR backends reply for themselves: nothing to translate.
            if (known.is_none() || self.rewrite_all) && spec.mode == Mode::Nat {
                self.write_endpoint(service, vip_id, id, addr)?;
            }
        }
        // 2. The new table goes live.
        let entries: Vec<maglev::Entry> = spec
            .backends
            .iter()
            .filter(|(_, b)| !b.draining)
            .filter_map(|(addr, b)| {
                Some(maglev::Entry {
                    id: self.slot_id(service, addr)?,
                    weight: b.weight,
                    identity: addr.to_string().into_bytes(),
                })
            })
            .collect();
        let table = maglev::build(&entries, self.limits.maglev_size, self.hash_seed);
        let fingerprint = maglev::fingerprint(&table, &entries);
        let next = self.slots.get(service).map_or(0, |s| s.active_table ^ 1);
        self.maps.write_table(vip_id, next, &table)?;
        self.maps.set_vip(
            &vip_key(service),
            &VipInfo {
                id: vip_id,
                active_table: next,
                mode: spec.mode.number(),
                ..VipInfo::default()
            },
        )?;
        if let Some(slot) = self.slots.get_mut(service) {
            slot.active_table = next;
            slot.fingerprint = fingerprint;
        }
        // 3. Drains take effect in BACKENDS; leavers are retired.
        for (addr, backend) in &spec.backends {
            let was_active = current.backends.get(addr).is_some_and(|b| !b.draining);
            if backend.draining
                && was_active
                && let Some(id) = self.slot_id(service, addr)
            {
                self.write_backend(service, vip_id, id, addr, backend)?;
            }
        }
        let leavers: Vec<(SocketAddr, u32)> = self
            .slots
            .get(service)
            .map(|slot| {
                slot.backend_ids
                    .iter()
                    .filter(|(addr, _)| !spec.backends.contains_key(addr))
                    .map(|(addr, id)| (*addr, *id))
                    .collect()
            })
            .unwrap_or_default();
        for (addr, id) in leavers {
            self.retire_backend(service, &addr, id)?;
        }
        self.applied.vips.insert(*service, spec.clone());
        Ok(())
    }

    fn slot_id(&self, service: &Service, addr: &SocketAddr) -> Option<u32> {
        self.slots.get(service)?.backend_ids.get(addr).copied()
    }

    fn allocate_backend_id(&mut self) -> Result<u32, BalancerError> {
        let id = self
            .free_backend_ids
            .range(self.next_backend_id..)
            .next()
            .or_else(|| self.free_backend_ids.first())
            .copied()
            .ok_or(BalancerError::TooManyBackends(self.limits.max_backends))?;
        self.free_backend_ids.remove(&id);
        self.next_backend_id = id + 1;
        self.generations.insert(id, self.next_generation);
        // 0 is never given, so a zeroed (unused) slot matches no tracked flow.
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        Ok(id)
    }

    /// Marks a backend unused and forgets it; tracked flows that point at it find it
    /// unused and are balanced again. Its endpoint entry goes last (its replies in flight
    /// still get the VIP's address), and its address entry with the last backend there.
    fn retire_backend(
        &mut self,
        service: &Service,
        addr: &SocketAddr,
        id: u32,
    ) -> Result<(), BalancerError> {
        self.maps.set_backend(id, &Backend::default())?;
        if let Some(slot) = self.slots.get_mut(service) {
            slot.backend_ids.remove(addr);
        }
        // Its endpoint (and its address entry) linger: replies already sent still get the
        // VIP's address. `expire_endpoints` removes what no backend uses by then.
        let until = Instant::now() + ENDPOINT_GRACE;
        let (wire, family) = wire_addr(addr.ip());
        let address = EndpointKey {
            addr: wire,
            port: 0,
            proto: 0,
            family,
        };
        for key in [endpoint_key(addr, service.proto.number()), address] {
            self.lingering.push((key, until));
        }
        self.generations.remove(&id);
        if let Some(vip) = self.applied.vips.get_mut(service) {
            vip.backends.remove(addr);
        }
        self.free_backend_ids.insert(id);
        Ok(())
    }

    /// Writes a backend's BACKENDS slot. Draining in the applied state is an operator's
    /// drain (flows kept) unless the health check has it down (flows move).
    fn write_backend(
        &mut self,
        service: &Service,
        vip_id: u32,
        id: u32,
        addr: &SocketAddr,
        spec: &BackendSpec,
    ) -> Result<(), BalancerError> {
        let (wire, family) = wire_addr(addr.ip());
        let mode = self.slots.get(service).map_or(Mode::Nat, |slot| slot.mode);
        let state = match (spec.draining, self.down.contains(&(*service, *addr))) {
            (false, _) => BACKEND_ACTIVE,
            (true, false) => BACKEND_DRAINING,
            (true, true) => BACKEND_DOWN,
        };
        self.maps.set_backend(
            id,
            &Backend {
                addr: wire,
                port: addr.port(),
                family,
                state,
                weight: spec.weight,
                vip_id,
                generation: self.generations.get(&id).copied().unwrap_or(0),
                mode: mode.number(),
                _pad: [0; 3],
            },
        )?;
        Ok(())
    }

    /// Makes the backend's endpoint (and address) known to the datapath as the VIP's.
    fn write_endpoint(
        &mut self,
        service: &Service,
        vip_id: u32,
        id: u32,
        addr: &SocketAddr,
    ) -> Result<(), BalancerError> {
        let (vip_addr, _) = wire_addr(service.addr.ip());
        let (wire, family) = wire_addr(addr.ip());
        self.maps.set_endpoint(
            &EndpointKey {
                addr: wire,
                port: 0,
                proto: 0,
                family,
            },
            &Endpoint::default(),
        )?;
        self.maps.set_endpoint(
            &endpoint_key(addr, service.proto.number()),
            &Endpoint {
                vip_addr,
                vip_port: service.addr.port(),
                _pad: [0; 2],
                vip_id,
                backend_id: id,
            },
        )?;
        Ok(())
    }

    /// Every VIP with its map ids, for listing.
    pub(crate) fn view(&self) -> Vec<VipView> {
        self.desired
            .vips
            .iter()
            .filter_map(|(service, spec)| {
                let slot = self.slots.get(service)?;
                let live = || spec.backends.iter().filter(|(_, b)| !b.draining);
                let healthy = live()
                    .filter(|(addr, _)| !self.down.contains(&(*service, **addr)))
                    .count();
                Some(VipView {
                    service: *service,
                    id: slot.id,
                    fingerprint: slot.fingerprint,
                    live: live().count(),
                    healthy,
                    backends: spec
                        .backends
                        .iter()
                        .filter_map(|(addr, spec)| {
                            let id = *slot.backend_ids.get(addr)?;
                            Some(BackendView {
                                addr: *addr,
                                spec: *spec,
                                id,
                                generation: self.generations.get(&id).copied().unwrap_or(0),
                            })
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// The fingerprint of `service`'s live table ([`maglev::fingerprint`]).
    pub fn fingerprint(&self, service: &Service) -> Option<u64> {
        self.slots.get(service).map(|slot| slot.fingerprint)
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The seed the flow hash and the tables are keyed with.
    pub(crate) fn hash_seed(&self) -> HashSeed {
        self.hash_seed
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// For conntrack edits (tests, flushes); the service maps are written by `sync` only.
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }
}

impl Balancer<ServiceMaps> {
    /// Lets the datapath redirect out of this interface.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), aya::maps::xdp::XdpMapError> {
        self.maps.add_tx_port(ifindex)
    }

    /// Stops redirects to interfaces not in `keep` (left over from an earlier run).
    pub(crate) fn retain_tx_ports(&mut self, keep: &[u32]) -> Result<(), aya::maps::MapError> {
        self.maps.retain_tx_ports(keep)
    }

    /// Records the MACs of the attached interfaces (ifindex, MAC) and forgets the others':
    /// the datapath forwards only frames addressed to them.
    pub fn set_local_macs(&mut self, macs: &[(u32, [u8; 6])]) -> Result<(), aya::maps::MapError> {
        for &(ifindex, mac) in macs {
            self.maps.set_local_mac(ifindex, mac)?;
        }
        let keep: Vec<u32> = macs.iter().map(|&(ifindex, _)| ifindex).collect();
        self.maps.retain_local_macs(&keep)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aya::maps::MapError;
    use lb_common::consts::NO_BACKEND;

    use super::*;

    /// One map write, as the fake saw it.
    #[derive(Clone, Debug, PartialEq)]
    enum Write {
        Vip {
            port: u16,
            active_table: u8,
        },
        VipGone {
            port: u16,
        },
        Backend {
            id: u32,
            state: u8,
        },
        Endpoint {
            port: u16,
        },
        EndpointGone {
            port: u16,
        },
        Table {
            vip_id: u32,
            table: u8,
            ids: BTreeSet<u32>,
        },
        Counters,
    }

    /// Service maps in memory that log every write in order.
    #[derive(Default)]
    struct Recording {
        vips: HashMap<VipKey, VipInfo>,
        backends: BTreeMap<u32, Backend>,
        endpoints: HashMap<EndpointKey, Endpoint>,
        log: Vec<Write>,
    }

    impl MapWriter for Recording {
        fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>, MapError> {
            Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn backends(&self) -> Result<Vec<(u32, Backend)>, MapError> {
            Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn endpoint_keys(&self) -> Result<Vec<EndpointKey>, MapError> {
            Ok(self.endpoints.keys().copied().collect())
        }
        fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), MapError> {
            self.vips.insert(*key, *info);
            self.log.push(Write::Vip {
                port: key.port,
                active_table: info.active_table,
            });
            Ok(())
        }
        fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapError> {
            self.vips.remove(key);
            self.log.push(Write::VipGone { port: key.port });
            Ok(())
        }
        fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapError> {
            self.backends.insert(id, *backend);
            self.log.push(Write::Backend {
                id,
                state: backend.state,
            });
            Ok(())
        }
        fn set_endpoint(&mut self, key: &EndpointKey, value: &Endpoint) -> Result<(), MapError> {
            self.endpoints.insert(*key, *value);
            self.log.push(Write::Endpoint { port: key.port });
            Ok(())
        }
        fn remove_endpoint(&mut self, key: &EndpointKey) -> Result<(), MapError> {
            self.endpoints.remove(key);
            self.log.push(Write::EndpointGone { port: key.port });
            Ok(())
        }
        fn write_table(&mut self, vip_id: u32, table: u8, slots: &[u32]) -> Result<(), MapError> {
            self.log.push(Write::Table {
                vip_id,
                table,
                ids: slots
                    .iter()
                    .copied()
                    .filter(|&id| id != NO_BACKEND)
                    .collect(),
            });
            Ok(())
        }
        fn reset_vip_counters(&mut self, _: u32) -> Result<(), MapError> {
            self.log.push(Write::Counters);
            Ok(())
        }
        fn reset_backend_counters(&mut self, _: u32) -> Result<(), MapError> {
            self.log.push(Write::Counters);
            Ok(())
        }
    }

    const VIP: &str = "198.18.1.1:80";

    fn service() -> Service {
        Service {
            addr: VIP.parse().expect("addr"),
            proto: Proto::Tcp,
        }
    }

    fn backend(last: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::from([198, 18, 11, last]), 8000 + u16::from(last))
    }

    /// A balancer with one VIP and backends 1 and 2, its log cleared.
    fn two_backends() -> Balancer<Recording> {
        let limits = Limits {
            maglev_size: 13,
            ..Limits::default()
        };
        let mut balancer = Balancer::new(Recording::default(), limits);
        let mut changes = vec![Change::AddVip(service())];
        for last in [1, 2] {
            changes.push(Change::AddBackend {
                service: service(),
                backend: backend(last),
                weight: 1,
            });
        }
        balancer.apply_all(&changes).expect("valid");
        balancer.maps_mut().log.clear();
        balancer
    }

    fn id_of(balancer: &Balancer<Recording>, last: u8) -> u32 {
        balancer.slot_id(&service(), &backend(last)).expect("known")
    }

    /// Where the first write matching `what` sits in the log.
    fn position(log: &[Write], what: impl Fn(&Write) -> bool) -> usize {
        log.iter()
            .position(what)
            .unwrap_or_else(|| panic!("not written; log: {log:?}"))
    }

    #[test]
    fn a_new_vip_points_at_an_empty_table_written_first() {
        let mut balancer = Balancer::new(Recording::default(), Limits::default());
        balancer.apply(&Change::AddVip(service())).expect("valid");
        let log = &balancer.maps().log;
        let table = position(
            log,
            |w| matches!(w, Write::Table { ids, .. } if ids.is_empty()),
        );
        let vip = position(log, |w| matches!(w, Write::Vip { port: 80, .. }));
        assert!(table < vip, "{log:?}");
    }

    #[test]
    fn a_joining_backend_is_in_backends_before_a_table_names_it() {
        let mut balancer = two_backends();
        balancer
            .apply(&Change::AddBackend {
                service: service(),
                backend: backend(3),
                weight: 1,
            })
            .expect("valid");
        let id = id_of(&balancer, 3);
        let log = &balancer.maps().log;
        let entry = position(log, |w| {
            *w == Write::Backend {
                id,
                state: BACKEND_ACTIVE,
            }
        });
        let endpoint = position(log, |w| *w == Write::Endpoint { port: 8003 });
        let table = position(
            log,
            |w| matches!(w, Write::Table { ids, .. } if ids.contains(&id)),
        );
        let Write::Table { table: half, .. } = log[table].clone() else {
            unreachable!()
        };
        let flip = position(log, |w| {
            *w == Write::Vip {
                port: 80,
                active_table: half,
            }
        });
        assert!(entry < table && endpoint < table && table < flip, "{log:?}");
    }

    #[test]
    fn a_draining_backend_leaves_the_table_before_it_is_marked_draining() {
        let mut balancer = two_backends();
        let id = id_of(&balancer, 2);
        balancer
            .apply(&Change::DrainBackend {
                service: service(),
                backend: backend(2),
            })
            .expect("valid");
        let log = &balancer.maps().log;
        let table = position(
            log,
            |w| matches!(w, Write::Table { ids, .. } if !ids.contains(&id)),
        );
        let flip = position(log, |w| matches!(w, Write::Vip { port: 80, .. }));
        let drain = position(log, |w| {
            *w == Write::Backend {
                id,
                state: BACKEND_DRAINING,
            }
        });
        assert!(table < flip && flip < drain, "{log:?}");
    }

    #[test]
    fn a_deleted_backend_leaves_the_table_then_backends_then_its_endpoint_after_a_grace() {
        let mut balancer = two_backends();
        let id = id_of(&balancer, 2);
        balancer
            .apply(&Change::DelBackend {
                service: service(),
                backend: backend(2),
            })
            .expect("valid");
        let log = &balancer.maps().log;
        let flip = position(log, |w| matches!(w, Write::Vip { port: 80, .. }));
        let table = position(log, |w| matches!(w, Write::Table { .. }));
        let retired = position(log, |w| {
            *w == Write::Backend {
                id,
                state: BACKEND_UNUSED,
            }
        });
        assert!(table < flip && flip < retired, "{log:?}");
        assert!(
            !log.contains(&Write::EndpointGone { port: 8002 }),
            "replies on their way would leave untranslated: {log:?}"
        );
        balancer
            .expire_endpoints(Instant::now())
            .expect("nothing due yet");
        assert!(
            !balancer
                .maps()
                .log
                .contains(&Write::EndpointGone { port: 8002 })
        );
        balancer
            .expire_endpoints(Instant::now() + ENDPOINT_GRACE)
            .expect("expire");
        let log = &balancer.maps().log;
        assert!(
            log.contains(&Write::EndpointGone { port: 8002 }),
            "the grace is over: {log:?}"
        );
        let Write::Table { ids, .. } = &log[table] else {
            unreachable!()
        };
        assert!(
            !ids.contains(&id) && ids.contains(&id_of(&balancer, 1)),
            "{log:?}"
        );
    }

    /// A backend deleted and added again within the grace keeps its entry: the expiry
    /// removes only what no backend uses.
    #[test]
    fn an_endpoint_back_within_the_grace_is_not_removed() {
        let mut balancer = two_backends();
        let (service, backend) = (service(), backend(2));
        balancer
            .apply(&Change::DelBackend { service, backend })
            .expect("delete");
        balancer
            .apply(&Change::AddBackend {
                service,
                backend,
                weight: 100,
            })
            .expect("add again");
        balancer
            .expire_endpoints(Instant::now() + ENDPOINT_GRACE)
            .expect("expire");
        let log = &balancer.maps().log;
        assert!(
            !log.contains(&Write::EndpointGone { port: 8002 }),
            "a live endpoint was removed: {log:?}"
        );
    }

    #[test]
    fn a_deleted_vip_stops_matching_before_its_backends_are_retired() {
        let mut balancer = two_backends();
        let ids = [id_of(&balancer, 1), id_of(&balancer, 2)];
        balancer.apply(&Change::DelVip(service())).expect("valid");
        let log = &balancer.maps().log;
        let gone = position(log, |w| *w == Write::VipGone { port: 80 });
        for id in ids {
            let retired = position(log, |w| {
                *w == Write::Backend {
                    id,
                    state: BACKEND_UNUSED,
                }
            });
            assert!(gone < retired, "{log:?}");
        }
        assert!(
            balancer.maps().vips.is_empty(),
            "address entry left: {log:?}"
        );
        // The backends' endpoints outlive them by the grace, no longer.
        assert!(!balancer.maps().endpoints.is_empty(), "{log:?}");
        balancer
            .expire_endpoints(Instant::now() + ENDPOINT_GRACE)
            .expect("expire");
        assert!(
            balancer.maps().endpoints.is_empty(),
            "{:?}",
            balancer.maps().log
        );
    }

    #[test]
    fn a_refused_change_writes_nothing() {
        let mut balancer = two_backends();
        let error = balancer
            .apply(&Change::AddBackend {
                service: service(),
                backend: backend(1),
                weight: 1,
            })
            .expect_err("duplicate");
        assert!(matches!(
            error,
            BalancerError::Invalid(ChangeError::DuplicateBackend { .. })
        ));
        assert_eq!(balancer.maps().log, Vec::new());
    }

    #[test]
    fn when_every_backend_fails_its_check_all_stay_in_the_table() {
        let mut balancer = two_backends();
        let (one, two) = (id_of(&balancer, 1), id_of(&balancer, 2));
        balancer
            .set_down([(service(), backend(1))].into())
            .expect("one down");
        let tables: Vec<&BTreeSet<u32>> = balancer
            .maps()
            .log
            .iter()
            .filter_map(|w| match w {
                Write::Table { ids, .. } => Some(ids),
                _ => None,
            })
            .collect();
        assert_eq!(tables.last().map(|ids| ids.contains(&one)), Some(false));
        balancer.maps_mut().log.clear();
        balancer
            .set_down([(service(), backend(1)), (service(), backend(2))].into())
            .expect("all down");
        let last_table = balancer.maps().log.iter().rev().find_map(|w| match w {
            Write::Table { ids, .. } => Some(ids.clone()),
            _ => None,
        });
        // Fail open: a check that fails everywhere is more likely wrong than every backend.
        assert_eq!(
            last_table,
            Some([one, two].into()),
            "{:?}",
            balancer.maps().log
        );
    }

    #[test]
    fn adopting_maps_reads_back_the_same_state() {
        let balancer = two_backends();
        let state = balancer.state().clone();
        let maps = Recording {
            log: Vec::new(),
            ..balancer.maps
        };
        let adopted = Balancer::adopt(maps, balancer.limits).expect("adopt");
        assert_eq!(adopted.state(), &state);
    }
}
