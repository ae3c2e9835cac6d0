//! Typed access to the service maps of a loaded datapath. The only writer of VIPS,
//! BACKENDS, MAGLEV, MAGLEV_HOPS, ENDPOINTS, SOURCE_RANGES, QUIC_CONFIGS, QUIC_SERVERS,
//! TX_PORTS and the per-service counters.

use std::os::fd::AsFd as _;

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
        xdp::DevMapHash,
    },
    util::nr_cpus,
};
use lb_common::{
    consts::{
        LocalMac, MAP_ADDRESSES, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_CONNTRACK, MAP_CT_UNPROVEN,
        MAP_ENDPOINTS, MAP_LOCAL_MACS, MAP_MAGLEV, MAP_MAGLEV_HOPS, MAP_PROVEN_FILTER,
        MAP_QUIC_CONFIGS, MAP_QUIC_SERVERS, MAP_SOURCE_RANGES, MAP_TX_PORTS, MAP_VIP_STATS,
        MAP_VIPS,
    },
    flow::{Conn, FlowKey, proven_filter_words},
    gue::{EarlierHops, HopsKey},
    quic::{QuicConfigs, QuicServerKey},
    service::{Backend, Endpoint, EndpointKey, SourceRange, VipInfo, VipKey},
    stats::{Counter, DROP_SLOTS, VipCounter},
};

use crate::{
    datapath::addresses::{AddressClasses, Kind},
    datapath::batch,
    datapath::conntrack::ConntrackTable,
    datapath::proven_filter::{FilterError, ProvenFilter},
    model::limits::Limits,
};

pub struct ServiceMaps {
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, Backend>,
    endpoints: HashMap<MapData, EndpointKey, Endpoint>,
    source_ranges: LpmTrie<MapData, SourceRange, u32>,
    /// Written in batches (see `write_table`), so kept untyped.
    maglev: aya::maps::Map,
    /// MAGLEV_HOPS, written and cleared in batches as MAGLEV.
    maglev_hops: aya::maps::Map,
    /// QUIC VIPs' configs by VIP id, and their server ids → backend ids. Not pinned.
    quic_configs: Array<MapData, QuicConfigs>,
    quic_servers: HashMap<MapData, QuicServerKey, u32>,
    tx_ports: DevMapHash<MapData>,
    vip_stats: PerCpuArray<MapData, VipCounter>,
    /// Dropped packets by VIP and reason (`DROP_SLOTS` per VIP). Not pinned.
    vip_drops: PerCpuArray<MapData, u64>,
    backend_stats: PerCpuArray<MapData, Counter>,
    /// Walked in batches (see `conntrack_entries`, `conntrack_table`), so kept untyped:
    /// the proven flows, then the unproven ones.
    conntrack: aya::maps::Map,
    unproven: aya::maps::Map,
    conntrack_capacity: u32,
    unproven_capacity: u32,
    /// Which flows may be proven (`ProvenFilter`), mapped by the sweep.
    proven_filter: aya::maps::Map,
    /// The MAC of each attached interface, by ifindex.
    local_macs: HashMap<MapData, u32, LocalMac>,
    maglev_size: u32,
    /// Follows the address entries of VIPS and ENDPOINTS.
    addresses: AddressClasses,
}

pub(crate) fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, MapError> {
    ebpf.take_map(name).ok_or_else(|| MapError::InvalidName {
        name: name.to_owned(),
    })
}

/// Whether an error says the key was not in the map.
pub(crate) fn missing(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(error) => error.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Whether a removal left the key absent (removed now, or not there to begin with).
fn absent(removed: &Result<(), MapError>) -> bool {
    removed.as_ref().err().is_none_or(missing)
}

fn cpus() -> Result<usize, MapError> {
    nr_cpus().map_err(|(_, error)| {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "nr_cpus",
            io_error: error,
        })
    })
}

/// Entries of an LRU hash map (see `ServiceMaps::conntrack_entries`).
fn count_entries(map: &aya::maps::Map) -> Result<u64, MapError> {
    if let aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data) = map {
        let mut count = 0u64;
        let walked = batch::walk_hash::<FlowKey, Conn>(data.fd().as_fd(), u64::MAX, |keys, _| {
            count += keys.len() as u64;
            true
        });
        match walked {
            Ok(_) => return Ok(count),
            Err(error) => tracing::debug!(%error, "batch lookup refused, walking the keys"),
        }
    }
    let map = HashMap::<&MapData, FlowKey, Conn>::try_from(map)?;
    Ok(map.keys().flatten().count() as u64)
}

/// A descriptor of its own on a conntrack table (an LRU hash map, or a hash map).
fn dup_conntrack(map: &aya::maps::Map, name: &str) -> Result<std::os::fd::OwnedFd, MapError> {
    let (aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data)) = map else {
        return Err(MapError::InvalidName {
            name: name.to_owned(),
        });
    };
    data.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "dup",
            io_error,
        })
    })
}

/// A second descriptor on a map, typed as the kernel reports it.
fn dup(data: &MapData) -> Result<aya::maps::Map, MapError> {
    let fd = data.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "dup",
            io_error,
        })
    })?;
    aya::maps::Map::from_map_data(MapData::from_fd(fd)?)
}

/// The map behind an untyped handle (MAGLEV, CONNTRACK, CT_UNPROVEN).
fn data_of<'a>(map: &'a aya::maps::Map, name: &str) -> Result<&'a MapData, MapError> {
    match map {
        aya::maps::Map::Array(data)
        | aya::maps::Map::HashMap(data)
        | aya::maps::Map::LruHashMap(data) => Ok(data),
        _ => Err(MapError::InvalidName {
            name: name.to_owned(),
        }),
    }
}

/// Handles of their own on the service maps (dup'd descriptors), for readers that look
/// up entries and counters while the writer works: only `&ServiceMaps` is reachable
/// through it, so it cannot write.
pub struct MapReader(ServiceMaps);

impl std::ops::Deref for MapReader {
    type Target = ServiceMaps;

    fn deref(&self) -> &ServiceMaps {
        &self.0
    }
}

impl ServiceMaps {
    /// Takes the maps; the ADDRESSES buckets are set for the address entries already there
    /// (pinned maps adopted from an earlier controller).
    pub fn take(ebpf: &mut Ebpf, limits: &Limits) -> Result<Self, MapError> {
        let mut maps = Self {
            vips: HashMap::try_from(take(ebpf, MAP_VIPS)?)?,
            backends: Array::try_from(take(ebpf, MAP_BACKENDS)?)?,
            endpoints: HashMap::try_from(take(ebpf, MAP_ENDPOINTS)?)?,
            source_ranges: LpmTrie::try_from(take(ebpf, MAP_SOURCE_RANGES)?)?,
            maglev: take(ebpf, MAP_MAGLEV)?,
            maglev_hops: take(ebpf, MAP_MAGLEV_HOPS)?,
            quic_configs: Array::try_from(take(ebpf, MAP_QUIC_CONFIGS)?)?,
            quic_servers: HashMap::try_from(take(ebpf, MAP_QUIC_SERVERS)?)?,
            tx_ports: DevMapHash::try_from(take(ebpf, MAP_TX_PORTS)?)?,
            vip_stats: PerCpuArray::try_from(take(ebpf, MAP_VIP_STATS)?)?,
            vip_drops: PerCpuArray::try_from(take(ebpf, lb_common::consts::MAP_VIP_DROPS)?)?,
            backend_stats: PerCpuArray::try_from(take(ebpf, MAP_BACKEND_STATS)?)?,
            conntrack: take(ebpf, MAP_CONNTRACK)?,
            unproven: take(ebpf, MAP_CT_UNPROVEN)?,
            conntrack_capacity: limits.conntrack_capacity,
            unproven_capacity: limits.unproven_capacity(),
            proven_filter: take(ebpf, MAP_PROVEN_FILTER)?,
            local_macs: HashMap::try_from(take(ebpf, MAP_LOCAL_MACS)?)?,
            maglev_size: limits.maglev_size,
            addresses: AddressClasses::new(Array::try_from(take(ebpf, MAP_ADDRESSES)?)?),
        };
        // Every address first, then each bucket written once with all its bits: a bucket
        // shared by a VIP and a backend address never loses the backend's bit meanwhile.
        let vips = maps
            .vips()?
            .into_iter()
            .filter(|(key, _)| key.port == 0 && key.proto == 0)
            .map(|(key, _)| (Kind::Vip, key.addr, key.family));
        let endpoints = maps
            .endpoint_keys()?
            .into_iter()
            .filter(|key| key.port == 0 && key.proto == 0)
            .map(|key| (Kind::Backend, key.addr, key.family));
        let entries: Vec<_> = vips.chain(endpoints).collect();
        maps.addresses.adopt(entries)?;
        Ok(maps)
    }

    /// A [`MapReader`] on the same maps.
    pub fn reader(&self) -> Result<MapReader, MapError> {
        Ok(MapReader(Self {
            vips: HashMap::try_from(dup(self.vips.map())?)?,
            backends: Array::try_from(dup(self.backends.map())?)?,
            endpoints: HashMap::try_from(dup(self.endpoints.map())?)?,
            source_ranges: LpmTrie::try_from(dup(self.source_ranges.map())?)?,
            maglev: dup(data_of(&self.maglev, MAP_MAGLEV)?)?,
            maglev_hops: dup(data_of(&self.maglev_hops, MAP_MAGLEV_HOPS)?)?,
            quic_configs: Array::try_from(dup(self.quic_configs.map())?)?,
            quic_servers: HashMap::try_from(dup(self.quic_servers.map())?)?,
            tx_ports: DevMapHash::try_from(dup(self.tx_ports.map())?)?,
            vip_stats: PerCpuArray::try_from(dup(self.vip_stats.map())?)?,
            vip_drops: PerCpuArray::try_from(dup(self.vip_drops.map())?)?,
            backend_stats: PerCpuArray::try_from(dup(self.backend_stats.map())?)?,
            conntrack: dup(data_of(&self.conntrack, MAP_CONNTRACK)?)?,
            unproven: dup(data_of(&self.unproven, MAP_CT_UNPROVEN)?)?,
            conntrack_capacity: self.conntrack_capacity,
            unproven_capacity: self.unproven_capacity,
            proven_filter: dup(data_of(&self.proven_filter, MAP_PROVEN_FILTER)?)?,
            local_macs: HashMap::try_from(dup(self.local_macs.map())?)?,
            maglev_size: self.maglev_size,
            // A reader never adds an address, so the bucket counts stay empty.
            addresses: AddressClasses::new(Array::try_from(dup(self.addresses.map_data())?)?),
        }))
    }

    pub(crate) fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), MapError> {
        if key.port == 0 && key.proto == 0 {
            self.addresses.add(Kind::Vip, &key.addr, key.family)?;
        }
        self.vips.insert(key, info, 0)
    }

    pub(crate) fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapError> {
        let removed = self.vips.remove(key);
        if key.port == 0 && key.proto == 0 && absent(&removed) {
            self.addresses.remove(Kind::Vip, &key.addr, key.family)?;
        }
        removed
    }

    /// Every VIPS entry (service entries and per-address entries).
    pub(crate) fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>, MapError> {
        self.vips.iter().collect()
    }

    pub(crate) fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapError> {
        self.backends.set(id, backend, 0)
    }

    pub(crate) fn set_endpoint(
        &mut self,
        key: &EndpointKey,
        value: &Endpoint,
    ) -> Result<(), MapError> {
        if key.port == 0 && key.proto == 0 {
            self.addresses.add(Kind::Backend, &key.addr, key.family)?;
        }
        self.endpoints.insert(key, value, 0)
    }

    pub(crate) fn remove_endpoint(&mut self, key: &EndpointKey) -> Result<(), MapError> {
        let removed = self.endpoints.remove(key);
        if key.port == 0 && key.proto == 0 && absent(&removed) {
            self.addresses
                .remove(Kind::Backend, &key.addr, key.family)?;
        }
        removed
    }

    /// Every ENDPOINTS key.
    pub(crate) fn endpoint_keys(&self) -> Result<Vec<EndpointKey>, MapError> {
        self.endpoints.keys().collect()
    }

    /// Every SOURCE_RANGES key, as (prefix length, data).
    pub(crate) fn source_ranges(&self) -> Result<Vec<(u32, SourceRange)>, MapError> {
        self.source_ranges
            .keys()
            .map(|key| key.map(|key| (key.prefix_len(), key.data())))
            .collect()
    }

    pub(crate) fn set_source_range(
        &mut self,
        prefix_len: u32,
        range: &SourceRange,
    ) -> Result<(), MapError> {
        self.source_ranges
            .insert(&Key::new(prefix_len, *range), 1, 0)
    }

    pub(crate) fn remove_source_range(
        &mut self,
        prefix_len: u32,
        range: &SourceRange,
    ) -> Result<(), MapError> {
        self.source_ranges.remove(&Key::new(prefix_len, *range))
    }

    /// Whether a client address (`addr`, as the datapath stores it) is inside one of the
    /// source prefixes of VIP `vip_id` (policy.rs `source_allowed`'s lookup).
    pub(crate) fn source_allowed(
        &self,
        vip_id: u32,
        addr: &lb_common::service::Addr,
    ) -> Result<bool, MapError> {
        let key = Key::new(
            lb_common::service::SOURCE_LOOKUP_LEN,
            SourceRange {
                vip_id,
                addr: *addr,
            },
        );
        present(self.source_ranges.get(&key, 0)).map(|found| found.is_some())
    }

    /// Every BACKENDS slot, used or not, by id.
    pub(crate) fn backends(&self) -> Result<Vec<(u32, Backend)>, MapError> {
        (0..self.backends.len())
            .map(|id| Ok((id, self.backends.get(&id, 0)?)))
            .collect()
    }

    /// Writes one of a VIP's two tables; it is live only after the VIP entry points to it.
    /// One `BPF_MAP_UPDATE_BATCH` call for the whole table (65,537 single updates took
    /// ~70 ms); kernels without batch updates for arrays get one update per slot.
    pub(crate) fn write_table(
        &mut self,
        vip_id: u32,
        table: u8,
        slots: &[u32],
    ) -> Result<(), MapError> {
        let base = (vip_id * 2 + u32::from(table & 1)) * self.maglev_size;
        let keys: Vec<u32> = (base..base + slots.len() as u32).collect();
        if let aya::maps::Map::Array(data) = &self.maglev {
            match batch::update(data.fd().as_fd(), &keys, slots) {
                Ok(()) => return Ok(()),
                Err(error) => tracing::debug!(%error, "batch update refused, writing slot by slot"),
            }
        }
        let mut array = Array::<&mut MapData, u32>::try_from(&mut self.maglev)?;
        for (key, id) in keys.iter().zip(slots) {
            array.set(*key, id, 0)?;
        }
        Ok(())
    }

    /// Sets the earlier hops of slots of one of a VIP's two tables (`table` 0 or 1), in one
    /// batch (a kernel without batch updates for hash maps gets one update per slot).
    pub(crate) fn write_hops(
        &mut self,
        vip_id: u32,
        table: u8,
        hops: &[(u32, EarlierHops)],
    ) -> Result<(), MapError> {
        let index = vip_id * 2 + u32::from(table & 1);
        let keys: Vec<HopsKey> = hops
            .iter()
            .map(|(slot, _)| HopsKey {
                table: index,
                slot: *slot,
            })
            .collect();
        let values: Vec<EarlierHops> = hops.iter().map(|(_, h)| *h).collect();
        if keys.is_empty() {
            return Ok(());
        }
        if let aya::maps::Map::HashMap(data) = &self.maglev_hops {
            match batch::update(data.fd().as_fd(), &keys, &values) {
                Ok(()) => return Ok(()),
                Err(error) => tracing::debug!(%error, "batch update refused, writing slot by slot"),
            }
        }
        let mut map =
            HashMap::<&mut MapData, HopsKey, EarlierHops>::try_from(&mut self.maglev_hops)?;
        for (key, value) in keys.iter().zip(&values) {
            map.insert(key, value, 0)?;
        }
        Ok(())
    }

    /// Removes the earlier hops of `slots` of one of a VIP's two tables.
    pub(crate) fn clear_hops(
        &mut self,
        vip_id: u32,
        table: u8,
        slots: &[u32],
    ) -> Result<(), MapError> {
        let index = vip_id * 2 + u32::from(table & 1);
        let keys: Vec<HopsKey> = slots
            .iter()
            .map(|slot| HopsKey {
                table: index,
                slot: *slot,
            })
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let data = data_of(&self.maglev_hops, MAP_MAGLEV_HOPS)?;
        batch::delete(data.fd().as_fd(), &keys).map_err(|io_error| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_delete_batch",
                io_error,
            })
        })?;
        Ok(())
    }

    pub(crate) fn set_quic_configs(
        &mut self,
        vip_id: u32,
        configs: &QuicConfigs,
    ) -> Result<(), MapError> {
        self.quic_configs.set(vip_id, configs, 0)
    }

    pub(crate) fn set_quic_server(
        &mut self,
        key: &QuicServerKey,
        backend_id: u32,
    ) -> Result<(), MapError> {
        self.quic_servers.insert(key, backend_id, 0)
    }

    pub(crate) fn remove_quic_server(&mut self, key: &QuicServerKey) -> Result<(), MapError> {
        self.quic_servers.remove(key)
    }

    /// The backend id QUIC_SERVERS routes `key` to, if any.
    pub(crate) fn quic_server(&self, key: &QuicServerKey) -> Result<Option<u32>, MapError> {
        present(self.quic_servers.get(key, 0))
    }

    /// Lets XDP_REDIRECT send packets out of `ifindex`.
    pub(crate) fn add_tx_port(&mut self, ifindex: u32) -> Result<(), aya::maps::xdp::XdpMapError> {
        self.tx_ports.insert(ifindex, ifindex, None, 0)
    }

    /// Removes every redirect target not in `keep`.
    pub(crate) fn retain_tx_ports(&mut self, keep: &[u32]) -> Result<(), MapError> {
        let stale: Vec<u32> = self
            .tx_ports
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !keep.contains(ifindex))
            .collect();
        for ifindex in stale {
            self.tx_ports.remove(ifindex)?;
        }
        Ok(())
    }

    /// Flows in the conntrack maps (proven and unproven): a batch lookup, 4,096 entries
    /// per syscall; kernels without it get a key walk (one syscall per entry, and entries
    /// evicted under the walk make it start over and count some twice).
    pub fn conntrack_entries(&self) -> Result<u64, MapError> {
        Ok(count_entries(&self.conntrack)? + count_entries(&self.unproven)?)
    }

    /// Handles of its own on the conntrack maps (dup'd descriptors), so that walks and
    /// deletes can run without borrowing these maps.
    pub fn conntrack_table(&self) -> Result<ConntrackTable, MapError> {
        Ok(ConntrackTable::new(
            dup_conntrack(&self.conntrack, MAP_CONNTRACK)?,
            self.conntrack_capacity,
            dup_conntrack(&self.unproven, MAP_CT_UNPROVEN)?,
            self.unproven_capacity,
        ))
    }

    /// The proven-flow filter, mapped into this process (for the sweep to rebuild).
    pub fn proven_filter(&self) -> Result<ProvenFilter, FilterError> {
        let data = data_of(&self.proven_filter, MAP_PROVEN_FILTER).map_err(FilterError::Handle)?;
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(FilterError::Map)?;
        ProvenFilter::new(fd, proven_filter_words(self.conntrack_capacity))
    }

    /// The conntrack entry of a client → VIP flow, and whether it is proven (proven
    /// first, where the datapath looks first).
    pub fn tracked_entry(&self, flow: &FlowKey) -> Result<Option<(Conn, bool)>, MapError> {
        let (unproven, proven) = self.tracked_entries(flow)?;
        Ok(proven
            .map(|conn| (conn, true))
            .or_else(|| unproven.map(|conn| (conn, false))))
    }

    /// A client → VIP flow's entries in CT_UNPROVEN and CONNTRACK.
    pub fn tracked_entries(
        &self,
        flow: &FlowKey,
    ) -> Result<(Option<Conn>, Option<Conn>), MapError> {
        let entry = |map| -> Result<Option<Conn>, MapError> {
            match HashMap::<&MapData, FlowKey, Conn>::try_from(map)?.get(flow, 0) {
                Ok(conn) => Ok(Some(conn)),
                Err(MapError::KeyNotFound) => Ok(None),
                Err(error) => Err(error),
            }
        };
        Ok((entry(&self.unproven)?, entry(&self.conntrack)?))
    }

    /// The conntrack entry of a client → VIP flow, in either table.
    pub fn conntrack_entry(&self, flow: &FlowKey) -> Result<Option<Conn>, MapError> {
        Ok(self.tracked_entry(flow)?.map(|(conn, _)| conn))
    }

    /// Writes a conntrack entry where the flow is tracked (proven if it is nowhere yet):
    /// tests age entries with it; flushes use `remove`.
    pub fn set_conntrack_entry(&mut self, flow: &FlowKey, conn: &Conn) -> Result<(), MapError> {
        let proven = !matches!(self.tracked_entry(flow)?, Some((_, false)));
        let table = if proven {
            &mut self.conntrack
        } else {
            &mut self.unproven
        };
        let mut map = HashMap::<&mut MapData, FlowKey, Conn>::try_from(table)?;
        map.insert(flow, conn, 0)
    }

    /// Removes a flow from both tables (absent from both: `KeyNotFound`).
    pub fn remove_conntrack_entry(&mut self, flow: &FlowKey) -> Result<(), MapError> {
        let mut removed = Err(MapError::KeyNotFound);
        for table in [&mut self.conntrack, &mut self.unproven] {
            let mut map = HashMap::<&mut MapData, FlowKey, Conn>::try_from(table)?;
            match map.remove(flow) {
                Ok(()) => removed = Ok(()),
                Err(error) if missing(&error) => {}
                Err(error) => return Err(error),
            }
        }
        removed
    }

    /// Records the MAC of an attached interface: frames to other MACs are not forwarded.
    pub(crate) fn set_local_mac(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), MapError> {
        let value = LocalMac { mac, _pad: [0; 2] };
        if self.local_macs.get(&ifindex, 0).ok() == Some(value) {
            return Ok(());
        }
        self.local_macs.insert(ifindex, value, 0)
    }

    /// Forgets the MACs of interfaces no longer attached.
    pub(crate) fn retain_local_macs(&mut self, keep: &[u32]) -> Result<(), MapError> {
        let stale: Vec<u32> = self
            .local_macs
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !keep.contains(ifindex))
            .collect();
        for ifindex in stale {
            self.local_macs.remove(&ifindex)?;
        }
        Ok(())
    }

    /// A VIP's counters summed over CPUs.
    pub(crate) fn vip_counter(&self, vip_id: u32) -> Result<VipCounter, MapError> {
        let per_cpu = self.vip_stats.get(&vip_id, 0)?;
        Ok(per_cpu.iter().fold(VipCounter::default(), |mut sum, c| {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
            sum.new_flows += c.new_flows;
            sum
        }))
    }

    /// A VIP's dropped packets by reason (`DROP_REASONS` order), summed over CPUs.
    pub fn vip_drops(&self, vip_id: u32) -> Result<[u64; DROP_SLOTS as usize], MapError> {
        let mut drops = [0u64; DROP_SLOTS as usize];
        for (slot, total) in drops.iter_mut().enumerate() {
            let per_cpu = self
                .vip_drops
                .get(&(vip_id * DROP_SLOTS + slot as u32), 0)?;
            *total = per_cpu.iter().fold(0u64, |sum, c| sum.saturating_add(*c));
        }
        Ok(drops)
    }

    /// A backend's counters summed over CPUs.
    pub(crate) fn backend_counter(&self, id: u32) -> Result<Counter, MapError> {
        let per_cpu = self.backend_stats.get(&id, 0)?;
        let mut total = Counter::default();
        per_cpu.iter().for_each(|c| total.merge(c));
        Ok(total)
    }

    /// Zeroes a VIP id's counters when the id is given to a new VIP.
    pub(crate) fn reset_vip_counters(&mut self, vip_id: u32) -> Result<(), MapError> {
        let zero = PerCpuValues::try_from(vec![VipCounter::default(); cpus()?])?;
        self.vip_stats.set(vip_id, zero, 0)?;
        for slot in 0..DROP_SLOTS {
            let zero = PerCpuValues::try_from(vec![0u64; cpus()?])?;
            self.vip_drops.set(vip_id * DROP_SLOTS + slot, zero, 0)?;
        }
        Ok(())
    }

    /// Zeroes a backend id's counters when the id is given to a new backend.
    pub(crate) fn reset_backend_counters(&mut self, id: u32) -> Result<(), MapError> {
        let zero = PerCpuValues::try_from(vec![Counter::default(); cpus()?])?;
        self.backend_stats.set(id, zero, 0)
    }
}

/// Single reads with the datapath's own keys, for `lb explain`.
impl ServiceMaps {
    /// VIPS[key] (a service entry, or an address entry).
    pub(crate) fn vip(&self, key: &VipKey) -> Result<Option<VipInfo>, MapError> {
        present(self.vips.get(key, 0))
    }

    /// BACKENDS[id] (zeroed when unused). An id past the array reads as unused, as the
    /// datapath's `BACKENDS.get` finds nothing there.
    pub(crate) fn backend(&self, id: u32) -> Result<Backend, MapError> {
        match self.backends.get(&id, 0) {
            Err(MapError::OutOfBounds { .. }) => Ok(Backend::default()),
            other => other,
        }
    }

    /// ENDPOINTS[key].
    pub(crate) fn endpoint(&self, key: &EndpointKey) -> Result<Option<Endpoint>, MapError> {
        present(self.endpoints.get(key, 0))
    }

    /// MAGLEV_HOPS of one slot of one table (`table` = `vip_id * 2 + active_table`).
    pub(crate) fn earlier_hops(
        &self,
        table: u32,
        slot: u32,
    ) -> Result<Option<EarlierHops>, MapError> {
        let map = HashMap::<&MapData, HopsKey, EarlierHops>::try_from(&self.maglev_hops)?;
        present(map.get(&HopsKey { table, slot }, 0))
    }

    /// MAGLEV[index]: the backend id in one slot of one table.
    pub(crate) fn maglev_slot(&self, index: u32) -> Result<u32, MapError> {
        Array::<&MapData, u32>::try_from(&self.maglev)?.get(&index, 0)
    }
}

/// A lookup's value, `None` if the key is not there.
fn present<V>(found: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match found {
        Ok(value) => Ok(Some(value)),
        Err(error) if missing(&error) => Ok(None),
        Err(error) => Err(error),
    }
}
