//! Making the datapath's maps match a desired [`State`].
//!
//! A change is validated on a copy of the state first, so a refused change touches no map.
//! Then [`MapSync::sync`] walks the difference in an order that never lets a packet see a
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
        BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_FLAG_QUIC, BACKEND_UNUSED,
        FAMILY_V4, FAMILY_V6, VIP_FLAG_QUIC, VIP_FLAG_SOURCE_RANGES,
    },
    hash::HashSeed,
    quic::{ID_READ_LEN, QuicConfigs, QuicServerKey},
    service::{
        Addr, Backend, Endpoint, EndpointKey, SOURCE_RANGE_VIP_BITS, SourceRange, VipInfo, VipKey,
        addr_from_v4, source_prefix_len,
    },
};
use thiserror::Error;
use tracing::warn;

use crate::model::state::{
    BackendSpec, Change, ChangeError, MAX_WEIGHT, MIN_WEIGHT, Proto, Service, State, VipSpec,
};
use crate::{
    control::map_writer::MapWriter,
    datapath::maps::ServiceMaps,
    model::health::HealthKey,
    model::limits::Limits,
    model::maglev,
    model::mode::Mode,
    model::policy::OnDown,
    model::prefix::Prefix,
    model::second_chance::{Snapshot, TableHistory},
};

#[derive(Debug, Error)]
pub enum MapSyncError {
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
    /// The on-down policy its BACKENDS entries carry.
    on_down: OnDown,
    /// Whether its VIPS entry has `VIP_FLAG_SOURCE_RANGES` set.
    filtered: bool,
    backend_ids: BTreeMap<SocketAddr, u32>,
    /// [`maglev::fingerprint`] of the live table.
    fingerprint: u64,
    /// dsr-gue: the live table and the ones before it (the second chance).
    history: TableHistory,
    /// The slots each of the two tables has MAGLEV_HOPS entries for.
    hop_slots: [Vec<u32>; 2],
    /// What the QUIC maps and flags hold for it.
    quic: QuicSlot,
}

/// A VIP's QUIC routing as the maps hold it. QUIC_CONFIGS and QUIC_SERVERS are not
/// pinned: a daemon that adopts pinned maps starts with both empty, as a new program's are.
#[derive(Clone, Debug, Default)]
struct QuicSlot {
    /// Its VIPS entry has `VIP_FLAG_QUIC`.
    flag: bool,
    /// Its BACKENDS entries have `BACKEND_FLAG_QUIC`.
    backends_flagged: bool,
    /// QUIC_CONFIGS at its id.
    configs: QuicConfigs,
    /// Its QUIC_SERVERS entries: masked connection ID (`QuicServerKey::id`) → backend id.
    servers: BTreeMap<[u8; ID_READ_LEN], u32>,
}

/// QUIC_CONFIGS' value for a VIP's configs.
fn quic_configs(configs: &[quic_lb::Config]) -> QuicConfigs {
    let mut value = QuicConfigs::default();
    for config in configs {
        if let Some(len) = value.server_id_len.get_mut(usize::from(config.config_id())) {
            *len = config.server_id_len() as u8;
        }
    }
    value
}

/// Generic over the maps so the order of its writes can be tested with a recording fake.
pub struct MapSync<M = ServiceMaps> {
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
    /// Set by [`MapSync::adopt`]: the next sync rewrites every VIP's entries and table,
    /// repairing whatever an interrupted predecessor left half done.
    rewrite_all: bool,
    /// Keys the Maglev permutations (the cluster's `--hash-seed`).
    hash_seed: HashSeed,
    /// ENDPOINTS entries of retired backends and when they may go: a reply already on its
    /// way when its backend is deleted must still leave with the VIP's address.
    lingering: Vec<(EndpointKey, Instant)>,
}

/// How long a deleted backend's ENDPOINTS entries outlive it (at least; they go at the
/// first [`MapSync::expire_endpoints`] after).
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

/// The SOURCE_RANGES key of one of a VIP's source prefixes: (LPM prefix length, data).
pub fn source_range(vip_id: u32, prefix: &Prefix) -> (u32, SourceRange) {
    let (addr, _) = wire_addr(prefix.addr);
    (source_prefix_len(prefix.len), SourceRange { vip_id, addr })
}

/// The prefix a SOURCE_RANGES key holds, read as one of a VIP of `family`.
fn prefix_of(prefix_len: u32, range: &SourceRange, family: u8) -> Option<Prefix> {
    let len = u8::try_from(prefix_len.checked_sub(SOURCE_RANGE_VIP_BITS)?).ok()?;
    let addr = ip_from_wire(&range.addr, family)?;
    (len <= Prefix::max_len(addr)).then_some(Prefix { addr, len })
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

impl<M: MapWriter> MapSync<M> {
    /// A `MapSync` over freshly created (empty) maps.
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
    #[must_use]
    pub fn with_hash_seed(mut self, seed: HashSeed) -> Self {
        self.hash_seed = seed;
        self
    }

    /// A `MapSync` over maps a previous controller filled: reads VIPS and BACKENDS back into
    /// state and ids, so tracked flows keep the backend ids they are pinned to. Entries that
    /// do not fit together (a backend of a VIP that no longer exists) are retired.
    pub(crate) fn adopt(maps: M, limits: Limits) -> Result<Self, MapSyncError> {
        let mut map_sync = Self::new(maps, limits);
        let mut by_id: BTreeMap<u32, Service> = BTreeMap::new();
        let mut address_entries = Vec::new();
        for (key, info) in map_sync.maps.vips()? {
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
            let filtered = info.flags & VIP_FLAG_SOURCE_RANGES != 0;
            // The flag is pinned, the QUIC maps are not: the sync writes them again.
            let quic = QuicSlot {
                flag: info.flags & VIP_FLAG_QUIC != 0,
                ..QuicSlot::default()
            };
            map_sync.applied.vips.insert(
                service,
                VipSpec {
                    mode,
                    ..VipSpec::default()
                },
            );
            map_sync.slots.insert(
                service,
                VipSlot {
                    id: info.id,
                    active_table: info.active_table & 1,
                    mode,
                    on_down: OnDown::default(),
                    filtered,
                    backend_ids: BTreeMap::new(),
                    fingerprint: 0,
                    history: TableHistory::default(),
                    hop_slots: [Vec::new(), Vec::new()],
                    quic,
                },
            );
        }
        for (id, backend) in map_sync.maps.backends()? {
            if backend.state == BACKEND_UNUSED {
                continue;
            }
            let service = by_id.get(&backend.vip_id).copied();
            let ip = ip_from_wire(&backend.addr, backend.family);
            let (Some(service), Some(ip)) = (service, ip) else {
                warn!(id, "retiring a pinned backend that belongs to no VIP");
                map_sync.maps.set_backend(id, &Backend::default())?;
                continue;
            };
            let addr = SocketAddr::new(ip, backend.port);
            let spec = BackendSpec {
                weight: backend.weight.clamp(MIN_WEIGHT, MAX_WEIGHT),
                draining: backend.state == BACKEND_DRAINING || backend.state == BACKEND_DOWN,
                // Only the state file knows server ids.
                server_id: None,
            };
            map_sync.generations.insert(id, backend.generation);
            map_sync.next_generation = map_sync
                .next_generation
                .max(backend.generation.wrapping_add(1));
            if let (Some(vip), Some(slot)) = (
                map_sync.applied.vips.get_mut(&service),
                map_sync.slots.get_mut(&service),
            ) {
                // Every backend of a VIP carries its policy; the last one read says it.
                let on_down = OnDown::from_backend_flags(backend.flags);
                vip.on_down = on_down;
                slot.on_down = on_down;
                slot.quic.backends_flagged = backend.flags & BACKEND_FLAG_QUIC != 0;
                vip.backends.insert(addr, spec);
                slot.backend_ids.insert(addr, id);
            }
            map_sync.free_backend_ids.remove(&id);
            map_sync.next_backend_id = id + 1;
        }
        // Source prefixes back into their VIPs; those of no VIP (left by a predecessor that
        // stopped midway) go.
        for (prefix_len, range) in map_sync.maps.source_ranges()? {
            let found = by_id.get(&range.vip_id).and_then(|service| {
                let (_, family) = wire_addr(service.addr.ip());
                Some((*service, prefix_of(prefix_len, &range, family)?))
            });
            if let Some((vip, prefix)) = found.and_then(|(service, prefix)| {
                Some((map_sync.applied.vips.get_mut(&service)?, prefix))
            }) {
                vip.sources.insert(prefix);
            } else {
                warn!(
                    vip_id = range.vip_id,
                    "removing a pinned source prefix of no VIP"
                );
                ignore_missing(map_sync.maps.remove_source_range(prefix_len, &range))?;
            }
        }
        for key in address_entries {
            let used = map_sync
                .applied
                .vips
                .keys()
                .any(|s| wire_addr(s.addr.ip()) == (key.addr, key.family));
            if !used {
                ignore_missing(map_sync.maps.remove_vip(&key))?;
            }
        }
        map_sync.rewrite_all = true;
        map_sync.desired = map_sync.applied.clone();
        Ok(map_sync)
    }

    /// Removes ENDPOINTS entries that no backend in the maps has (left by a predecessor
    /// that stopped midway); run after a sync that rewrote every VIP.
    pub(crate) fn prune_endpoints(&mut self) -> Result<(), MapSyncError> {
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
    pub fn expire_endpoints(&mut self, now: Instant) -> Result<(), MapSyncError> {
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
    pub fn apply(&mut self, change: &Change) -> Result<(), MapSyncError> {
        self.apply_all(std::slice::from_ref(change))
    }

    /// Applies several changes as one: all are validated before any map is touched.
    pub fn apply_all(&mut self, changes: &[Change]) -> Result<(), MapSyncError> {
        let mut next = self.desired.clone();
        for change in changes {
            next.apply(change)?;
        }
        self.sync(&next)
    }

    /// Takes backends whose health check failed out of their tables, and brings back
    /// those that recovered.
    pub fn set_down(&mut self, down: BTreeSet<HealthKey>) -> Result<(), MapSyncError> {
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

    pub fn add_vip(&mut self, service: Service) -> Result<(), MapSyncError> {
        self.apply(&Change::AddVip(service))
    }

    pub fn add_backend(
        &mut self,
        service: Service,
        backend: SocketAddr,
        weight: u32,
    ) -> Result<(), MapSyncError> {
        self.apply(&Change::AddBackend {
            service,
            backend,
            weight,
            server_id: None,
        })
    }

    /// Makes `target` the desired state and the maps hold it (with health applied). On a
    /// map error the maps hold a mix of the two states, each step consistent on its own,
    /// and the desired state stays as it was; the next sync completes the rest.
    pub(crate) fn sync(&mut self, target: &State) -> Result<(), MapSyncError> {
        self.check_capacity(target)?;
        let effective = self.effective(target);
        self.sync_applied(&effective)?;
        self.desired = target.clone();
        Ok(())
    }

    fn sync_applied(&mut self, target: &State) -> Result<(), MapSyncError> {
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
            let applied_sources = self
                .applied
                .vips
                .get(service)
                .map(|v| v.sources.clone())
                .unwrap_or_default();
            if self.rewrite_all || applied_sources != spec.sources {
                self.sync_sources(service, &applied_sources, &spec.sources)?;
            }
            // A new policy reaches tracked flows through every BACKENDS entry of the VIP.
            let on_down_changed = self
                .slots
                .get(service)
                .is_some_and(|slot| slot.on_down != spec.on_down);
            // So does a VIP becoming (or ceasing to be) a QUIC VIP.
            let quic = !spec.quic.is_empty();
            let quic_changed = self
                .slots
                .get(service)
                .is_some_and(|slot| slot.quic.backends_flagged != quic);
            if let Some(slot) = self.slots.get_mut(service) {
                slot.on_down = spec.on_down;
                slot.quic.backends_flagged = quic;
            }
            // Entries of leavers, of old server ids and of removed configs go before their
            // backends are retired (a freed id may serve another backend soon).
            self.unroute_quic(service, spec)?;
            let applied = self.applied.vips.get(service);
            let backends = applied.map(|v| &v.backends);
            let mode_changed = applied.is_some_and(|v| v.mode != spec.mode);
            if self.rewrite_all
                || mode_changed
                || on_down_changed
                || quic_changed
                || backends != Some(&spec.backends)
            {
                self.sync_backends(service, spec, on_down_changed || quic_changed)?;
            } else if let Some(vip) = self.applied.vips.get_mut(service) {
                vip.check.clone_from(&spec.check);
                vip.on_down = spec.on_down;
                vip.quic.clone_from(&spec.quic);
            }
            // Joiners' entries, once they are in BACKENDS; then the configs and the flag.
            self.route_quic(service, spec)?;
        }
        if self.rewrite_all {
            self.prune_endpoints()?;
        }
        self.rewrite_all = false;
        Ok(())
    }

    /// Refuses a target that would not fit, before anything is written. Joiners get ids
    /// before leavers give theirs back, so only free ids count.
    fn check_capacity(&self, target: &State) -> Result<(), MapSyncError> {
        if target.vips.len() > self.limits.max_vips as usize {
            return Err(MapSyncError::TooManyVips(self.limits.max_vips));
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
            return Err(MapSyncError::TooManyBackends(self.limits.max_backends));
        }
        Ok(())
    }

    /// Brings a VIP's SOURCE_RANGES entries from `from` to `to` without refusing a client
    /// both allow: new prefixes first, then the VIP flag (set when the first prefix comes,
    /// cleared before the last one goes), then the old prefixes go. Tracked flows are
    /// never looked at again, so they continue whatever the change.
    fn sync_sources(
        &mut self,
        service: &Service,
        from: &BTreeSet<Prefix>,
        to: &BTreeSet<Prefix>,
    ) -> Result<(), MapSyncError> {
        let Some(vip_id) = self.slots.get(service).map(|s| s.id) else {
            return Ok(());
        };
        for prefix in to {
            if self.rewrite_all || !from.contains(prefix) {
                let (len, range) = source_range(vip_id, prefix);
                self.maps.set_source_range(len, &range)?;
            }
        }
        let filtered = !to.is_empty();
        let flag_differs = self
            .slots
            .get(service)
            .is_some_and(|s| s.filtered != filtered);
        if flag_differs || self.rewrite_all {
            if let Some(slot) = self.slots.get_mut(service) {
                slot.filtered = filtered;
            }
            if let Some(info) = self.vip_info(service) {
                self.maps.set_vip(&vip_key(service), &info)?;
            }
        }
        for prefix in from.difference(to) {
            let (len, range) = source_range(vip_id, prefix);
            ignore_missing(self.maps.remove_source_range(len, &range))?;
        }
        if let Some(vip) = self.applied.vips.get_mut(service) {
            vip.sources.clone_from(to);
        }
        Ok(())
    }

    /// The VIPS value of `service` as its slot stands.
    fn vip_info(&self, service: &Service) -> Option<VipInfo> {
        let slot = self.slots.get(service)?;
        Some(VipInfo {
            id: slot.id,
            active_table: slot.active_table,
            mode: slot.mode.number(),
            flags: if slot.filtered {
                VIP_FLAG_SOURCE_RANGES
            } else {
                0
            } | if slot.quic.flag { VIP_FLAG_QUIC } else { 0 },
            _pad: [0; 1],
        })
    }

    fn create_vip(&mut self, service: &Service, mode: Mode) -> Result<(), MapSyncError> {
        let used: BTreeSet<u32> = self.slots.values().map(|v| v.id).collect();
        let id = (0..self.limits.max_vips)
            .find(|id| !used.contains(id))
            .ok_or(MapSyncError::TooManyVips(self.limits.max_vips))?;
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
                on_down: OnDown::default(),
                filtered: false,
                backend_ids: BTreeMap::new(),
                fingerprint: maglev::fingerprint(&[], &[]),
                history: TableHistory::default(),
                hop_slots: [Vec::new(), Vec::new()],
                quic: QuicSlot::default(),
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

    fn remove_vip(&mut self, service: &Service, target: &State) -> Result<(), MapSyncError> {
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
        // No packet reaches the VIP now: its QUIC entries go, and the id's next VIP
        // starts without configs.
        self.clear_quic(service, slot.id)?;
        for (addr, id) in &slot.backend_ids {
            self.retire_backend(service, addr, *id)?;
        }
        // No packet reaches the VIP's prefixes now: they go, so that the id's next VIP
        // starts without any.
        let sources = self
            .applied
            .vips
            .get(service)
            .map(|v| v.sources.clone())
            .unwrap_or_default();
        for prefix in &sources {
            let (len, range) = source_range(slot.id, prefix);
            ignore_missing(self.maps.remove_source_range(len, &range))?;
        }
        // The id's next VIP starts with no earlier hops.
        for table in 0..2 {
            self.maps
                .clear_hops(slot.id, table, &slot.hop_slots[usize::from(table)])?;
        }
        self.slots.remove(service);
        self.applied.vips.remove(service);
        Ok(())
    }

    /// Brings one VIP's backends to `spec`, keeping the ids of backends that stay. Every
    /// map write is recorded in `slots` as soon as it succeeds; `state` changes at the end.
    /// `rewrite`: every backend entry is written again (a new on-down policy).
    fn sync_backends(
        &mut self,
        service: &Service,
        spec: &VipSpec,
        rewrite: bool,
    ) -> Result<(), MapSyncError> {
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
            let id = if let Some(id) = known {
                id
            } else {
                let id = self.allocate_backend_id()?;
                if let Some(slot) = self.slots.get_mut(service) {
                    slot.backend_ids.insert(*addr, id);
                }
                self.maps.reset_backend_counters(id)?;
                id
            };
            let before = current.backends.get(addr).filter(|_| known.is_some());
            let in_map = BackendSpec {
                draining: backend.draining && before.is_none_or(|b| b.draining),
                ..*backend
            };
            if self.rewrite_all || rewrite || before != Some(&in_map) {
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
        self.write_earlier_hops(service, spec, vip_id, next, &table)?;
        if let Some(info) = self.vip_info(service) {
            self.maps.set_vip(
                &vip_key(service),
                &VipInfo {
                    active_table: next,
                    ..info
                },
            )?;
        }
        if let Some(slot) = self.slots.get_mut(service) {
            slot.active_table = next;
            slot.fingerprint = fingerprint;
            if spec.mode == Mode::DsrGue {
                let addrs = slot.backend_ids.iter().map(|(a, id)| (*id, *a)).collect();
                slot.history.went_live(Snapshot {
                    slots: table,
                    addrs,
                });
            } else {
                slot.history.clear();
            }
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

    /// dsr-gue: the standby table `next` gets the earlier hops of its slots (the live table
    /// and those before it, `TableHistory`), replacing what it held; other modes get none.
    fn write_earlier_hops(
        &mut self,
        service: &Service,
        spec: &VipSpec,
        vip_id: u32,
        next: u8,
        table: &[u32],
    ) -> Result<(), MapSyncError> {
        let Some(slot) = self.slots.get_mut(service) else {
            return Ok(());
        };
        let hops = if spec.mode == Mode::DsrGue {
            let ids = &slot.backend_ids;
            slot.history.earlier_hops(table, |addr| {
                spec.backends
                    .contains_key(addr)
                    .then(|| ids.get(addr).copied())
                    .flatten()
            })
        } else {
            Vec::new()
        };
        let stale = std::mem::take(&mut slot.hop_slots[usize::from(next & 1)]);
        let fresh: BTreeSet<u32> = hops.iter().map(|(s, _)| *s).collect();
        let gone: Vec<u32> = stale.into_iter().filter(|s| !fresh.contains(s)).collect();
        self.maps.clear_hops(vip_id, next, &gone)?;
        self.maps.write_hops(vip_id, next, &hops)?;
        if let Some(slot) = self.slots.get_mut(service) {
            slot.hop_slots[usize::from(next & 1)] = fresh.into_iter().collect();
        }
        Ok(())
    }

    /// The QUIC_SERVERS entries `spec` needs: one per config and backend with a server id
    /// and a backend id (a joiner has none before `sync_backends`).
    fn quic_entries(&self, service: &Service, spec: &VipSpec) -> BTreeMap<[u8; ID_READ_LEN], u32> {
        let Some(slot) = self.slots.get(service) else {
            return BTreeMap::new();
        };
        spec.quic
            .iter()
            .flat_map(|config| {
                spec.backends.iter().filter_map(move |(addr, backend)| {
                    let server_id = backend.server_id?;
                    let id = *slot.backend_ids.get(addr)?;
                    let key = QuicServerKey::new(slot.id, config.config_id(), server_id.as_bytes());
                    Some((key.id, id))
                })
            })
            .collect()
    }

    /// What goes before a VIP's backends change: its QUIC flag if it stops being a QUIC VIP,
    /// then the configs that go or change length, then the entries `spec` does not have
    /// (leavers, old server ids, removed configs). A packet meanwhile goes by Maglev.
    fn unroute_quic(&mut self, service: &Service, spec: &VipSpec) -> Result<(), MapSyncError> {
        let wanted = self.quic_entries(service, spec);
        let Some(slot) = self.slots.get_mut(service) else {
            return Ok(());
        };
        let vip_id = slot.id;
        if slot.quic.flag && spec.quic.is_empty() {
            slot.quic.flag = false;
            if let Some(info) = self.vip_info(service) {
                self.maps.set_vip(&vip_key(service), &info)?;
            }
        }
        let Some(slot) = self.slots.get_mut(service) else {
            return Ok(());
        };
        let target = quic_configs(&spec.quic);
        let mut kept = slot.quic.configs;
        for (len, wanted_len) in kept.server_id_len.iter_mut().zip(target.server_id_len) {
            if *len != wanted_len {
                *len = 0;
            }
        }
        if kept != slot.quic.configs {
            self.maps.set_quic_configs(vip_id, &kept)?;
            if let Some(slot) = self.slots.get_mut(service) {
                slot.quic.configs = kept;
            }
        }
        let stale: Vec<[u8; ID_READ_LEN]> = self
            .slots
            .get(service)
            .map(|slot| {
                slot.quic
                    .servers
                    .iter()
                    .filter(|(key, id)| wanted.get(*key) != Some(*id))
                    .map(|(key, _)| *key)
                    .collect()
            })
            .unwrap_or_default();
        for id in stale {
            ignore_missing(self.maps.remove_quic_server(&QuicServerKey { vip_id, id }))?;
            if let Some(slot) = self.slots.get_mut(service) {
                slot.quic.servers.remove(&id);
            }
        }
        Ok(())
    }

    /// What comes once a VIP's backends are in BACKENDS: the QUIC_SERVERS entries it
    /// lacks, then its configs, then (the first time) its QUIC flag.
    fn route_quic(&mut self, service: &Service, spec: &VipSpec) -> Result<(), MapSyncError> {
        let wanted = self.quic_entries(service, spec);
        let Some(vip_id) = self.slots.get(service).map(|s| s.id) else {
            return Ok(());
        };
        for (id, backend_id) in wanted {
            let written = self
                .slots
                .get(service)
                .and_then(|slot| slot.quic.servers.get(&id))
                == Some(&backend_id);
            if written && !self.rewrite_all {
                continue;
            }
            self.maps
                .set_quic_server(&QuicServerKey { vip_id, id }, backend_id)?;
            if let Some(slot) = self.slots.get_mut(service) {
                slot.quic.servers.insert(id, backend_id);
            }
        }
        let configs = quic_configs(&spec.quic);
        let differs = self
            .slots
            .get(service)
            .is_some_and(|slot| slot.quic.configs != configs);
        if differs || self.rewrite_all {
            self.maps.set_quic_configs(vip_id, &configs)?;
            if let Some(slot) = self.slots.get_mut(service) {
                slot.quic.configs = configs;
            }
        }
        let flag_missing = self.slots.get(service).is_some_and(|slot| !slot.quic.flag);
        if !spec.quic.is_empty() && flag_missing {
            if let Some(slot) = self.slots.get_mut(service) {
                slot.quic.flag = true;
            }
            if let Some(info) = self.vip_info(service) {
                self.maps.set_vip(&vip_key(service), &info)?;
            }
        }
        Ok(())
    }

    /// Removes every QUIC entry of a VIP that no packet reaches any more, and zeroes its
    /// QUIC_CONFIGS slot.
    fn clear_quic(&mut self, service: &Service, vip_id: u32) -> Result<(), MapSyncError> {
        let Some(slot) = self.slots.get_mut(service) else {
            return Ok(());
        };
        let servers: Vec<[u8; ID_READ_LEN]> = slot.quic.servers.keys().copied().collect();
        let had_configs = slot.quic.configs != QuicConfigs::default();
        slot.quic.flag = false;
        for id in servers {
            ignore_missing(self.maps.remove_quic_server(&QuicServerKey { vip_id, id }))?;
            if let Some(slot) = self.slots.get_mut(service) {
                slot.quic.servers.remove(&id);
            }
        }
        if had_configs || self.rewrite_all {
            self.maps
                .set_quic_configs(vip_id, &QuicConfigs::default())?;
            if let Some(slot) = self.slots.get_mut(service) {
                slot.quic.configs = QuicConfigs::default();
            }
        }
        Ok(())
    }

    fn slot_id(&self, service: &Service, addr: &SocketAddr) -> Option<u32> {
        self.slots.get(service)?.backend_ids.get(addr).copied()
    }

    fn allocate_backend_id(&mut self) -> Result<u32, MapSyncError> {
        let id = self
            .free_backend_ids
            .range(self.next_backend_id..)
            .next()
            .or_else(|| self.free_backend_ids.first())
            .copied()
            .ok_or(MapSyncError::TooManyBackends(self.limits.max_backends))?;
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
    ) -> Result<(), MapSyncError> {
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
    ) -> Result<(), MapSyncError> {
        let (wire, family) = wire_addr(addr.ip());
        let (mode, on_down, quic) = self.slots.get(service).map_or_else(
            || (Mode::Nat, OnDown::default(), false),
            |slot| (slot.mode, slot.on_down, slot.quic.backends_flagged),
        );
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
                flags: on_down.backend_flags() | if quic { BACKEND_FLAG_QUIC } else { 0 },
                _pad: [0; 2],
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
    ) -> Result<(), MapSyncError> {
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

impl MapSync<ServiceMaps> {
    /// Lets the datapath redirect out of this interface.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), aya::maps::xdp::XdpMapError> {
        self.maps.add_tx_port(ifindex)
    }

    /// Stops redirects to interfaces not in `keep` (left over from an earlier run).
    pub(crate) fn retain_tx_ports(&mut self, keep: &[u32]) -> Result<(), aya::maps::MapError> {
        self.maps.retain_tx_ports(keep)
    }

    /// Records the MACs of attached interfaces (ifindex, MAC) and forgets those of
    /// interfaces not in `keep`: the datapath forwards only frames addressed to them.
    pub fn set_local_macs(
        &mut self,
        macs: &[(u32, [u8; 6])],
        keep: &[u32],
    ) -> Result<(), aya::maps::MapError> {
        for &(ifindex, mac) in macs {
            self.maps.set_local_mac(ifindex, mac)?;
        }
        self.maps.retain_local_macs(keep)
    }
}

#[cfg(test)]
mod tests {
    use lb_common::gue::EarlierHops;
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
            flags: u8,
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
        /// Earlier hops set for `slots` of a table.
        Hops {
            table: u8,
            slots: Vec<u32>,
        },
        HopsGone {
            table: u8,
            slots: Vec<u32>,
        },
        Source {
            vip_id: u32,
            prefix_len: u32,
        },
        SourceGone {
            vip_id: u32,
            prefix_len: u32,
        },
        /// QUIC_CONFIGS at a VIP id: the server-id length of each config id.
        QuicConfigs {
            vip_id: u32,
            lens: [u8; 8],
        },
        /// A QUIC_SERVERS entry: (config id, server id) → backend id.
        QuicServer {
            config: u8,
            server_id: Vec<u8>,
            backend: u32,
        },
        QuicServerGone {
            config: u8,
            server_id: Vec<u8>,
        },
    }

    /// The config id and server id (without trailing zeros) of a QUIC_SERVERS key.
    fn quic_parts(key: &QuicServerKey) -> (u8, Vec<u8>) {
        let mut server_id = key.id[1..].to_vec();
        while server_id.last() == Some(&0) {
            server_id.pop();
        }
        (key.id[0] >> 5, server_id)
    }

    /// Service maps in memory that log every write in order.
    #[derive(Default)]
    struct Recording {
        vips: HashMap<VipKey, VipInfo>,
        backends: BTreeMap<u32, Backend>,
        endpoints: HashMap<EndpointKey, Endpoint>,
        sources: Vec<(u32, SourceRange)>,
        /// MAGLEV_HOPS by (table index, slot).
        hops: BTreeMap<(u32, u32), EarlierHops>,
        /// MAGLEV as written, by (table index, slot).
        tables: BTreeMap<(u32, u32), u32>,
        quic_configs: BTreeMap<u32, QuicConfigs>,
        quic_servers: HashMap<QuicServerKey, u32>,
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
                flags: info.flags,
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
            for (slot, id) in slots.iter().enumerate() {
                self.tables
                    .insert((vip_id * 2 + u32::from(table), slot as u32), *id);
            }
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
        fn write_hops(
            &mut self,
            vip_id: u32,
            table: u8,
            hops: &[(u32, EarlierHops)],
        ) -> Result<(), MapError> {
            for (slot, h) in hops {
                self.hops.insert((vip_id * 2 + u32::from(table), *slot), *h);
            }
            self.log.push(Write::Hops {
                table,
                slots: hops.iter().map(|(s, _)| *s).collect(),
            });
            Ok(())
        }
        fn clear_hops(&mut self, vip_id: u32, table: u8, slots: &[u32]) -> Result<(), MapError> {
            for slot in slots {
                self.hops.remove(&(vip_id * 2 + u32::from(table), *slot));
            }
            if !slots.is_empty() {
                self.log.push(Write::HopsGone {
                    table,
                    slots: slots.to_vec(),
                });
            }
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
        fn source_ranges(&self) -> Result<Vec<(u32, SourceRange)>, MapError> {
            Ok(self.sources.clone())
        }
        fn set_source_range(
            &mut self,
            prefix_len: u32,
            range: &SourceRange,
        ) -> Result<(), MapError> {
            let key = (prefix_len, *range);
            if !self.sources.contains(&key) {
                self.sources.push(key);
            }
            self.log.push(Write::Source {
                vip_id: range.vip_id,
                prefix_len,
            });
            Ok(())
        }
        fn remove_source_range(
            &mut self,
            prefix_len: u32,
            range: &SourceRange,
        ) -> Result<(), MapError> {
            self.sources.retain(|key| *key != (prefix_len, *range));
            self.log.push(Write::SourceGone {
                vip_id: range.vip_id,
                prefix_len,
            });
            Ok(())
        }
        fn set_quic_configs(&mut self, vip_id: u32, configs: &QuicConfigs) -> Result<(), MapError> {
            self.quic_configs.insert(vip_id, *configs);
            self.log.push(Write::QuicConfigs {
                vip_id,
                lens: configs.server_id_len,
            });
            Ok(())
        }
        fn set_quic_server(
            &mut self,
            key: &QuicServerKey,
            backend_id: u32,
        ) -> Result<(), MapError> {
            self.quic_servers.insert(*key, backend_id);
            let (config, server_id) = quic_parts(key);
            self.log.push(Write::QuicServer {
                config,
                server_id,
                backend: backend_id,
            });
            Ok(())
        }
        fn remove_quic_server(&mut self, key: &QuicServerKey) -> Result<(), MapError> {
            self.quic_servers.remove(key);
            let (config, server_id) = quic_parts(key);
            self.log.push(Write::QuicServerGone { config, server_id });
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

    /// A `MapSync` with one VIP and backends 1 and 2, its log cleared.
    fn two_backends() -> MapSync<Recording> {
        let limits = Limits {
            maglev_size: 13,
            ..Limits::default()
        };
        let mut map_sync = MapSync::new(Recording::default(), limits);
        let mut changes = vec![Change::AddVip(service())];
        for last in [1, 2] {
            changes.push(Change::AddBackend {
                server_id: None,
                service: service(),
                backend: backend(last),
                weight: 1,
            });
        }
        map_sync.apply_all(&changes).expect("valid");
        map_sync.maps_mut().log.clear();
        map_sync
    }

    fn id_of(map_sync: &MapSync<Recording>, last: u8) -> u32 {
        map_sync.slot_id(&service(), &backend(last)).expect("known")
    }

    /// Where the first write matching `what` sits in the log.
    fn position(log: &[Write], what: impl Fn(&Write) -> bool) -> usize {
        log.iter()
            .position(what)
            .unwrap_or_else(|| panic!("not written; log: {log:?}"))
    }

    /// dsr-gue: a slot that moves to a joining backend gets the backend it had as its
    /// earlier hop, in the standby table before the VIP flips to it; a slot that did not
    /// move gets none; the next change replaces the standby table's hops.
    #[test]
    fn a_gue_table_carries_the_earlier_backend_of_each_moved_slot() {
        let limits = Limits {
            maglev_size: 13,
            ..Limits::default()
        };
        let mut map_sync = MapSync::new(Recording::default(), limits);
        let mut changes = vec![
            Change::AddVip(service()),
            Change::SetMode {
                service: service(),
                mode: Mode::DsrGue,
            },
        ];
        for last in [1, 2] {
            changes.push(Change::AddBackend {
                server_id: None,
                service: service(),
                backend: SocketAddr::new(IpAddr::from([198, 18, 11, last]), 80),
                weight: 1,
            });
        }
        map_sync.apply_all(&changes).expect("valid");
        let live = |m: &MapSync<Recording>| {
            let slot = &m.slots[&service()];
            (
                slot.id * 2 + u32::from(slot.active_table),
                slot.active_table,
            )
        };
        let (before, _) = live(&map_sync);
        map_sync.maps_mut().log.clear();
        map_sync
            .apply(&Change::AddBackend {
                server_id: None,
                service: service(),
                backend: SocketAddr::new(IpAddr::from([198, 18, 11, 3]), 80),
                weight: 1,
            })
            .expect("valid");
        let (after, half) = live(&map_sync);
        let maps = map_sync.maps();
        let mut moved = 0;
        for slot in 0..13 {
            let (old, new) = (maps.tables[&(before, slot)], maps.tables[&(after, slot)]);
            match maps.hops.get(&(after, slot)) {
                Some(hops) => {
                    assert_ne!(old, new, "slot {slot} did not move but has hops");
                    assert_eq!(hops.ids, [old, NO_BACKEND, NO_BACKEND], "slot {slot}");
                    moved += 1;
                }
                None => assert_eq!(old, new, "slot {slot} moved without a hop"),
            }
        }
        assert!(moved > 0, "no slot moved to the third backend");
        let log = &maps.log;
        let hops = position(
            log,
            |w| matches!(w, Write::Hops { table, .. } if *table == half),
        );
        let flip = position(
            log,
            |w| matches!(w, Write::Vip { port: 80, active_table, .. } if *active_table == half),
        );
        assert!(hops < flip, "{log:?}");
        // Back to NAT (it needs no backends): the VIP's hops go with its history.
        let mut to_nat: Vec<Change> = (1..=3)
            .map(|last| Change::DelBackend {
                service: service(),
                backend: SocketAddr::new(IpAddr::from([198, 18, 11, last]), 80),
            })
            .collect();
        to_nat.push(Change::DelVip(service()));
        map_sync.apply_all(&to_nat).expect("valid");
        assert!(
            map_sync.maps().hops.is_empty(),
            "{:?}",
            map_sync.maps().hops
        );
    }

    #[test]
    fn a_new_vip_points_at_an_empty_table_written_first() {
        let mut map_sync = MapSync::new(Recording::default(), Limits::default());
        map_sync.apply(&Change::AddVip(service())).expect("valid");
        let log = &map_sync.maps().log;
        let table = position(
            log,
            |w| matches!(w, Write::Table { ids, .. } if ids.is_empty()),
        );
        let vip = position(log, |w| matches!(w, Write::Vip { port: 80, .. }));
        assert!(table < vip, "{log:?}");
    }

    #[test]
    fn a_joining_backend_is_in_backends_before_a_table_names_it() {
        let mut map_sync = two_backends();
        map_sync
            .apply(&Change::AddBackend {
                server_id: None,
                service: service(),
                backend: backend(3),
                weight: 1,
            })
            .expect("valid");
        let id = id_of(&map_sync, 3);
        let log = &map_sync.maps().log;
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
                flags: 0,
            }
        });
        assert!(entry < table && endpoint < table && table < flip, "{log:?}");
    }

    #[test]
    fn a_draining_backend_leaves_the_table_before_it_is_marked_draining() {
        let mut map_sync = two_backends();
        let id = id_of(&map_sync, 2);
        map_sync
            .apply(&Change::DrainBackend {
                service: service(),
                backend: backend(2),
            })
            .expect("valid");
        let log = &map_sync.maps().log;
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
        let mut map_sync = two_backends();
        let id = id_of(&map_sync, 2);
        map_sync
            .apply(&Change::DelBackend {
                service: service(),
                backend: backend(2),
            })
            .expect("valid");
        let log = &map_sync.maps().log;
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
        map_sync
            .expire_endpoints(Instant::now())
            .expect("nothing due yet");
        assert!(
            !map_sync
                .maps()
                .log
                .contains(&Write::EndpointGone { port: 8002 })
        );
        map_sync
            .expire_endpoints(Instant::now() + ENDPOINT_GRACE)
            .expect("expire");
        let log = &map_sync.maps().log;
        assert!(
            log.contains(&Write::EndpointGone { port: 8002 }),
            "the grace is over: {log:?}"
        );
        let Write::Table { ids, .. } = &log[table] else {
            unreachable!()
        };
        assert!(
            !ids.contains(&id) && ids.contains(&id_of(&map_sync, 1)),
            "{log:?}"
        );
    }

    /// A backend deleted and added again within the grace keeps its entry: the expiry
    /// removes only what no backend uses.
    #[test]
    fn an_endpoint_back_within_the_grace_is_not_removed() {
        let mut map_sync = two_backends();
        let (service, backend) = (service(), backend(2));
        map_sync
            .apply(&Change::DelBackend { service, backend })
            .expect("delete");
        map_sync
            .apply(&Change::AddBackend {
                server_id: None,
                service,
                backend,
                weight: 100,
            })
            .expect("add again");
        map_sync
            .expire_endpoints(Instant::now() + ENDPOINT_GRACE)
            .expect("expire");
        let log = &map_sync.maps().log;
        assert!(
            !log.contains(&Write::EndpointGone { port: 8002 }),
            "a live endpoint was removed: {log:?}"
        );
    }

    #[test]
    fn a_deleted_vip_stops_matching_before_its_backends_are_retired() {
        let mut map_sync = two_backends();
        let ids = [id_of(&map_sync, 1), id_of(&map_sync, 2)];
        map_sync.apply(&Change::DelVip(service())).expect("valid");
        let log = &map_sync.maps().log;
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
            map_sync.maps().vips.is_empty(),
            "address entry left: {log:?}"
        );
        // The backends' endpoints outlive them by the grace, no longer.
        assert!(!map_sync.maps().endpoints.is_empty(), "{log:?}");
        map_sync
            .expire_endpoints(Instant::now() + ENDPOINT_GRACE)
            .expect("expire");
        assert!(
            map_sync.maps().endpoints.is_empty(),
            "{:?}",
            map_sync.maps().log
        );
    }

    #[test]
    fn a_refused_change_writes_nothing() {
        let mut map_sync = two_backends();
        let error = map_sync
            .apply(&Change::AddBackend {
                server_id: None,
                service: service(),
                backend: backend(1),
                weight: 1,
            })
            .expect_err("duplicate");
        assert!(matches!(
            error,
            MapSyncError::Invalid(ChangeError::DuplicateBackend { .. })
        ));
        assert_eq!(map_sync.maps().log, Vec::new());
    }

    #[test]
    fn when_every_backend_fails_its_check_all_stay_in_the_table() {
        let mut map_sync = two_backends();
        let (one, two) = (id_of(&map_sync, 1), id_of(&map_sync, 2));
        map_sync
            .set_down([(service(), backend(1))].into())
            .expect("one down");
        let tables: Vec<&BTreeSet<u32>> = map_sync
            .maps()
            .log
            .iter()
            .filter_map(|w| match w {
                Write::Table { ids, .. } => Some(ids),
                _ => None,
            })
            .collect();
        assert_eq!(tables.last().map(|ids| ids.contains(&one)), Some(false));
        map_sync.maps_mut().log.clear();
        map_sync
            .set_down([(service(), backend(1)), (service(), backend(2))].into())
            .expect("all down");
        let last_table = map_sync.maps().log.iter().rev().find_map(|w| match w {
            Write::Table { ids, .. } => Some(ids.clone()),
            _ => None,
        });
        // Fail open: a check that fails everywhere is more likely wrong than every backend.
        assert_eq!(
            last_table,
            Some([one, two].into()),
            "{:?}",
            map_sync.maps().log
        );
    }

    fn prefixes(texts: &[&str]) -> Vec<Prefix> {
        texts.iter().map(|t| t.parse().expect("prefix")).collect()
    }

    fn set_sources(map_sync: &mut MapSync<Recording>, texts: &[&str]) {
        map_sync.maps_mut().log.clear();
        map_sync
            .apply(&Change::SetSources {
                service: service(),
                sources: prefixes(texts),
            })
            .expect("valid");
    }

    #[test]
    fn source_prefixes_never_refuse_a_client_both_sides_of_a_change_allow() {
        let mut map_sync = two_backends();
        let vip_id = map_sync.slots[&service()].id;
        let (old, new) = (source_prefix_len(24), source_prefix_len(16));
        // The first prefix is in the trie before the VIP entry asks for it.
        set_sources(&mut map_sync, &["198.18.0.0/24"]);
        let log = &map_sync.maps().log;
        let written = position(log, |w| {
            *w == Write::Source {
                vip_id,
                prefix_len: old,
            }
        });
        let flagged = position(
            log,
            |w| matches!(w, Write::Vip { port: 80, flags, .. } if *flags == VIP_FLAG_SOURCE_RANGES),
        );
        assert!(written < flagged, "{log:?}");
        // Another prefix: the new one comes before the old one goes; the flag stays.
        set_sources(&mut map_sync, &["198.19.0.0/16"]);
        let log = &map_sync.maps().log;
        let added = position(log, |w| {
            *w == Write::Source {
                vip_id,
                prefix_len: new,
            }
        });
        let gone = position(log, |w| {
            *w == Write::SourceGone {
                vip_id,
                prefix_len: old,
            }
        });
        assert!(added < gone, "{log:?}");
        assert!(
            !log.iter().any(|w| matches!(w, Write::Vip { .. })),
            "{log:?}"
        );
        assert!(
            !log.iter().any(|w| matches!(w, Write::Table { .. })),
            "{log:?}"
        );
        // None left: the VIP stops asking before the last prefix goes.
        set_sources(&mut map_sync, &[]);
        let log = &map_sync.maps().log;
        let cleared = position(log, |w| {
            matches!(
                w,
                Write::Vip {
                    port: 80,
                    flags: 0,
                    ..
                }
            )
        });
        let gone = position(log, |w| {
            *w == Write::SourceGone {
                vip_id,
                prefix_len: new,
            }
        });
        assert!(cleared < gone, "{log:?}");
        assert!(map_sync.maps().sources.is_empty());
    }

    #[test]
    fn a_deleted_vip_takes_its_source_prefixes_along() {
        let mut map_sync = two_backends();
        set_sources(&mut map_sync, &["198.18.0.0/24", "198.19.0.0/16"]);
        assert_eq!(map_sync.maps().sources.len(), 2);
        map_sync.apply(&Change::DelVip(service())).expect("valid");
        assert!(
            map_sync.maps().sources.is_empty(),
            "{:?}",
            map_sync.maps().log
        );
    }

    #[test]
    fn a_new_on_down_policy_is_written_into_every_backend_entry() {
        use lb_common::consts::BACKEND_FLAG_KEEP_TCP_ON_DOWN;
        let mut map_sync = two_backends();
        let flags = |b: &MapSync<Recording>| -> Vec<u8> {
            b.maps().backends.values().map(|b| b.flags).collect()
        };
        assert_eq!(
            flags(&map_sync),
            [BACKEND_FLAG_KEEP_TCP_ON_DOWN; 2],
            "the default"
        );
        map_sync
            .apply(&Change::SetOnDown {
                service: service(),
                on_down: OnDown::Move,
            })
            .expect("valid");
        assert_eq!(flags(&map_sync), [0; 2]);
        // A backend marked down later carries the VIP's policy too.
        map_sync
            .set_down([(service(), backend(1))].into())
            .expect("down");
        let down = map_sync.maps().backends[&id_of(&map_sync, 1)];
        assert_eq!((down.state, down.flags), (BACKEND_DOWN, 0));
    }

    #[test]
    fn adopting_maps_reads_back_policies_and_drops_prefixes_of_no_vip() {
        let mut map_sync = two_backends();
        map_sync
            .apply_all(&[
                Change::SetOnDown {
                    service: service(),
                    on_down: OnDown::Move,
                },
                Change::SetSources {
                    service: service(),
                    sources: prefixes(&["198.18.0.0/24"]),
                },
            ])
            .expect("valid");
        let state = map_sync.state().clone();
        let mut maps = Recording {
            log: Vec::new(),
            ..map_sync.maps
        };
        let stray = source_range(7, &"198.20.0.0/16".parse().expect("prefix"));
        maps.sources.push(stray);
        let adopted = MapSync::adopt(maps, map_sync.limits).expect("adopt");
        assert_eq!(adopted.state(), &state);
        assert!(adopted.slots[&service()].filtered);
        assert_eq!(adopted.maps().sources.len(), 1, "{:?}", adopted.maps().log);
    }

    fn quic_service() -> Service {
        Service {
            addr: "198.18.1.1:443".parse().expect("addr"),
            proto: Proto::Udp,
        }
    }

    fn quic_configs_of(texts: &[&str]) -> Vec<quic_lb::Config> {
        texts.iter().map(|t| t.parse().expect("config")).collect()
    }

    fn server_id(hex: &str) -> quic_lb::ServerId {
        hex.parse().expect("server id")
    }

    /// A QUIC VIP (config 0, 2-byte server ids) with backends 1 (0a01) and 2 (0a02).
    fn quic_vip() -> MapSync<Recording> {
        let mut map_sync = MapSync::new(
            Recording::default(),
            Limits {
                maglev_size: 13,
                ..Limits::default()
            },
        );
        let service = quic_service();
        let mut changes = vec![
            Change::AddVip(service),
            Change::SetQuic {
                service,
                configs: quic_configs_of(&["config=0,server-id-len=2,nonce-len=6"]),
            },
        ];
        for (last, id) in [(1, "0a01"), (2, "0a02")] {
            changes.push(Change::AddBackend {
                service,
                backend: backend(last),
                weight: 1,
                server_id: Some(server_id(id)),
            });
        }
        map_sync.apply_all(&changes).expect("valid");
        map_sync
    }

    fn quic_id_of(map_sync: &MapSync<Recording>, last: u8) -> u32 {
        map_sync
            .slot_id(&quic_service(), &backend(last))
            .expect("known")
    }

    /// QUIC_SERVERS as (config id, server id) → backend id.
    fn quic_routes(map_sync: &MapSync<Recording>) -> BTreeMap<(u8, Vec<u8>), u32> {
        map_sync
            .maps()
            .quic_servers
            .iter()
            .map(|(key, id)| (quic_parts(key), *id))
            .collect()
    }

    fn is_quic_flag(write: &Write, set: bool) -> bool {
        matches!(write, Write::Vip { port: 443, flags, .. } if (flags & VIP_FLAG_QUIC != 0) == set)
    }

    #[test]
    fn a_quic_vip_routes_its_server_ids_before_its_flag_is_set() {
        let map_sync = quic_vip();
        let log = &map_sync.maps().log;
        let (one, two) = (quic_id_of(&map_sync, 1), quic_id_of(&map_sync, 2));
        assert_eq!(
            quic_routes(&map_sync),
            BTreeMap::from([((0, vec![0x0a, 0x01]), one), ((0, vec![0x0a, 0x02]), two)])
        );
        let vip_id = map_sync.slots[&quic_service()].id;
        assert_eq!(
            map_sync.maps().quic_configs[&vip_id].server_id_len,
            [2, 0, 0, 0, 0, 0, 0, 0]
        );
        let flag = position(log, |w| is_quic_flag(w, true));
        for id in [one, two] {
            let entry = position(
                log,
                |w| matches!(w, Write::QuicServer { backend, .. } if *backend == id),
            );
            let in_backends = position(
                log,
                |w| matches!(w, Write::Backend { id: b, .. } if *b == id),
            );
            assert!(in_backends < entry && entry < flag, "{log:?}");
            let written = map_sync.maps().backends[&id];
            assert_ne!(written.flags & BACKEND_FLAG_QUIC, 0, "backend {id}");
        }
        let configs = position(log, |w| matches!(w, Write::QuicConfigs { .. }));
        assert!(configs < flag, "{log:?}");
        let info = map_sync.maps().vips[&vip_key(&quic_service())];
        assert_ne!(info.flags & VIP_FLAG_QUIC, 0);
    }

    #[test]
    fn quic_entries_follow_configs_backends_and_server_ids() {
        let mut map_sync = quic_vip();
        let service = quic_service();
        let (one, two) = (quic_id_of(&map_sync, 1), quic_id_of(&map_sync, 2));
        // Rotation: a second config of the same length routes the same server ids.
        map_sync
            .apply(&Change::SetQuic {
                service,
                configs: quic_configs_of(&[
                    "config=1,server-id-len=2,nonce-len=8",
                    "config=0,server-id-len=2,nonce-len=6",
                ]),
            })
            .expect("rotation");
        assert_eq!(quic_routes(&map_sync).len(), 4);
        assert_eq!(
            quic_routes(&map_sync).get(&(1, vec![0x0a, 0x02])),
            Some(&two)
        );
        // A deleted backend's entries go before its BACKENDS slot is retired.
        map_sync.maps_mut().log.clear();
        map_sync
            .apply(&Change::DelBackend {
                service,
                backend: backend(1),
            })
            .expect("delete");
        let log = &map_sync.maps().log;
        let retired = position(log, |w| {
            *w == Write::Backend {
                id: one,
                state: BACKEND_UNUSED,
            }
        });
        for config in [0, 1] {
            let gone = position(log, |w| {
                *w == Write::QuicServerGone {
                    config,
                    server_id: vec![0x0a, 0x01],
                }
            });
            assert!(gone < retired, "{log:?}");
        }
        // A new server id: the old entries go, new ones come.
        map_sync
            .apply(&Change::SetBackend {
                service,
                backend: backend(2),
                weight: None,
                undrain: false,
                server_id: Some(server_id("0b02")),
            })
            .expect("new server id");
        assert_eq!(
            quic_routes(&map_sync),
            BTreeMap::from([((0, vec![0x0b, 0x02]), two), ((1, vec![0x0b, 0x02]), two)])
        );
        // One config goes: its entries and its QUIC_CONFIGS length go.
        map_sync
            .apply(&Change::SetQuic {
                service,
                configs: quic_configs_of(&["config=1,server-id-len=2,nonce-len=8"]),
            })
            .expect("config 0 retired");
        assert_eq!(
            quic_routes(&map_sync),
            BTreeMap::from([((1, vec![0x0b, 0x02]), two)])
        );
        let vip_id = map_sync.slots[&service].id;
        assert_eq!(
            map_sync.maps().quic_configs[&vip_id].server_id_len,
            [0, 2, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn no_quic_clears_the_flag_before_the_entries_go() {
        let mut map_sync = quic_vip();
        let service = quic_service();
        map_sync.maps_mut().log.clear();
        map_sync
            .apply(&Change::SetQuic {
                service,
                configs: Vec::new(),
            })
            .expect("no quic");
        let log = &map_sync.maps().log;
        let cleared = position(log, |w| is_quic_flag(w, false));
        let gone = position(log, |w| matches!(w, Write::QuicServerGone { .. }));
        let configs = position(
            log,
            |w| matches!(w, Write::QuicConfigs { lens, .. } if *lens == [0; 8]),
        );
        assert!(cleared < gone && cleared < configs, "{log:?}");
        assert!(quic_routes(&map_sync).is_empty());
        assert!(!log.iter().any(|w| is_quic_flag(w, true)), "{log:?}");
        for last in [1, 2] {
            let id = quic_id_of(&map_sync, last);
            assert_eq!(map_sync.maps().backends[&id].flags & BACKEND_FLAG_QUIC, 0);
        }
    }

    #[test]
    fn a_deleted_quic_vip_stops_matching_before_its_entries_go() {
        let mut map_sync = quic_vip();
        let vip_id = map_sync.slots[&quic_service()].id;
        map_sync.maps_mut().log.clear();
        map_sync
            .apply(&Change::DelVip(quic_service()))
            .expect("delete");
        let log = &map_sync.maps().log;
        let unmatched = position(log, |w| *w == Write::VipGone { port: 443 });
        let gone = position(log, |w| matches!(w, Write::QuicServerGone { .. }));
        assert!(unmatched < gone, "{log:?}");
        assert!(quic_routes(&map_sync).is_empty());
        assert_eq!(
            map_sync.maps().quic_configs[&vip_id],
            QuicConfigs::default()
        );
    }

    #[test]
    fn an_adopting_daemon_writes_the_unpinned_quic_maps_again() {
        let map_sync = quic_vip();
        let state = map_sync.state().clone();
        // QUIC_CONFIGS and QUIC_SERVERS are not pinned: the new program's are empty.
        let maps = Recording {
            log: Vec::new(),
            quic_servers: HashMap::new(),
            quic_configs: BTreeMap::new(),
            ..map_sync.maps
        };
        let mut adopted = MapSync::adopt(maps, map_sync.limits).expect("adopt");
        adopted.sync(&state).expect("sync");
        assert_eq!(adopted.state(), &state);
        assert_eq!(quic_routes(&adopted).len(), 2);
        let vip_id = adopted.slots[&quic_service()].id;
        assert_eq!(adopted.maps().quic_configs[&vip_id].server_id_len[0], 2);
        let info = adopted.maps().vips[&vip_key(&quic_service())];
        assert_ne!(info.flags & VIP_FLAG_QUIC, 0);
    }

    #[test]
    fn adopting_maps_reads_back_the_same_state() {
        let map_sync = two_backends();
        let state = map_sync.state().clone();
        let maps = Recording {
            log: Vec::new(),
            ..map_sync.maps
        };
        let adopted = MapSync::adopt(maps, map_sync.limits).expect("adopt");
        assert_eq!(adopted.state(), &state);
    }
}
