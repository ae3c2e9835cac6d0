//! Typed access to the service maps of a loaded datapath. The only writer of VIPS,
//! BACKENDS, MAGLEV, ENDPOINTS, TX_PORTS and the per-service counters.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, xdp::DevMapHash},
    util::nr_cpus,
};
use lb_common::{
    consts::{
        MAP_BACKEND_STATS, MAP_BACKENDS, MAP_CONNTRACK, MAP_ENDPOINTS, MAP_MAGLEV, MAP_TX_PORTS,
        MAP_VIP_STATS, MAP_VIPS, MAX_BACKENDS,
    },
    flow::{Conn, FlowKey},
    service::{Backend, Endpoint, EndpointKey, VipInfo, VipKey},
    stats::{Counter, VipCounter},
};

use crate::datapath::Limits;

pub struct ServiceMaps {
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, Backend>,
    endpoints: HashMap<MapData, EndpointKey, Endpoint>,
    /// Written in batches (see `write_table`), so kept untyped.
    maglev: aya::maps::Map,
    tx_ports: DevMapHash<MapData>,
    vip_stats: PerCpuArray<MapData, VipCounter>,
    backend_stats: PerCpuArray<MapData, Counter>,
    /// Only counted (see `conntrack_entries`), so kept untyped.
    conntrack: aya::maps::Map,
    maglev_size: u32,
}

pub fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, MapError> {
    ebpf.take_map(name).ok_or_else(|| MapError::InvalidName {
        name: name.to_owned(),
    })
}

/// `union bpf_attr` for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// One `bpf(2)` batch command. `attr.count` says how many entries it did, even on error.
///
/// # Safety
/// `attr`'s pointers must be valid for the command: `keys` and `values` with room for
/// `count` entries (written by lookups, read by updates), the batch tokens u32s, all living
/// until this returns.
unsafe fn batch(command: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix; its pointers are the caller's promise.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Counts a hash map's entries with `BPF_MAP_LOOKUP_BATCH`, bucket by bucket.
fn count_batch(map_fd: i32, key_size: usize, value_size: usize) -> std::io::Result<u64> {
    const CHUNK: usize = 4096;
    let mut keys = vec![0u8; CHUNK * key_size];
    let mut values = vec![0u8; CHUNK * value_size];
    // The kernel's resume token for hash maps: a bucket index.
    let mut resume_at: Option<u32> = None;
    let mut next = 0u32;
    let mut total = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: resume_at.as_ref().map_or(0, |at| at as *const u32 as u64),
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map_fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` have room for `count` entries, the tokens are u32s;
        // all outlive the call.
        let done = unsafe { batch(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        total += u64::from(attr.count);
        match done {
            Ok(()) => resume_at = Some(next),
            // ENOENT: the last bucket was read.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            Err(error) => return Err(error),
        }
    }
}

/// Updates `keys[i]` to `values[i]` for every i in one syscall.
fn update_batch(map_fd: i32, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: map_fd as u32,
        ..BatchAttr::default()
    };
    let wanted = attr.count;
    // SAFETY: `keys` and `values` hold `count` u32s each and outlive the call; the kernel
    // only reads them.
    unsafe { batch(BPF_MAP_UPDATE_BATCH, &mut attr) }?;
    if attr.count != wanted {
        return Err(std::io::Error::other(format!(
            "batch update wrote {} of {wanted} entries",
            attr.count
        )));
    }
    Ok(())
}

fn cpus() -> Result<usize, MapError> {
    nr_cpus().map_err(|(_, error)| {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "nr_cpus",
            io_error: error,
        })
    })
}

impl ServiceMaps {
    pub fn take(ebpf: &mut Ebpf, limits: &Limits) -> Result<Self, MapError> {
        Ok(Self {
            vips: HashMap::try_from(take(ebpf, MAP_VIPS)?)?,
            backends: Array::try_from(take(ebpf, MAP_BACKENDS)?)?,
            endpoints: HashMap::try_from(take(ebpf, MAP_ENDPOINTS)?)?,
            maglev: take(ebpf, MAP_MAGLEV)?,
            tx_ports: DevMapHash::try_from(take(ebpf, MAP_TX_PORTS)?)?,
            vip_stats: PerCpuArray::try_from(take(ebpf, MAP_VIP_STATS)?)?,
            backend_stats: PerCpuArray::try_from(take(ebpf, MAP_BACKEND_STATS)?)?,
            conntrack: take(ebpf, MAP_CONNTRACK)?,
            maglev_size: limits.maglev_size,
        })
    }

    pub fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), MapError> {
        self.vips.insert(key, info, 0)
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapError> {
        self.vips.remove(key)
    }

    /// Every VIPS entry (service entries and per-address entries).
    pub fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>, MapError> {
        self.vips.iter().collect()
    }

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapError> {
        self.backends.set(id, backend, 0)
    }

    pub fn set_endpoint(&mut self, key: &EndpointKey, value: &Endpoint) -> Result<(), MapError> {
        self.endpoints.insert(key, value, 0)
    }

    pub fn remove_endpoint(&mut self, key: &EndpointKey) -> Result<(), MapError> {
        self.endpoints.remove(key)
    }

    /// Every ENDPOINTS key.
    pub fn endpoint_keys(&self) -> Result<Vec<EndpointKey>, MapError> {
        self.endpoints.keys().collect()
    }

    /// Every BACKENDS slot, used or not, by id.
    pub fn backends(&self) -> Result<Vec<(u32, Backend)>, MapError> {
        (0..MAX_BACKENDS)
            .map(|id| Ok((id, self.backends.get(&id, 0)?)))
            .collect()
    }

    /// Writes one of a VIP's two tables; it is live only after the VIP entry points to it.
    /// One `BPF_MAP_UPDATE_BATCH` call for the whole table (65,537 single updates took
    /// ~70 ms); kernels without batch updates for arrays get one update per slot.
    pub fn write_table(&mut self, vip_id: u32, table: u8, slots: &[u32]) -> Result<(), MapError> {
        let base = (vip_id * 2 + u32::from(table & 1)) * self.maglev_size;
        let keys: Vec<u32> = (base..base + slots.len() as u32).collect();
        if let aya::maps::Map::Array(data) = &self.maglev {
            match update_batch(data.fd().as_fd().as_raw_fd(), &keys, slots) {
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

    /// Lets XDP_REDIRECT send packets out of `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), aya::maps::xdp::XdpMapError> {
        self.tx_ports.insert(ifindex, ifindex, None, 0)
    }

    /// Removes every redirect target not in `keep`.
    pub fn retain_tx_ports(&mut self, keep: &[u32]) -> Result<(), MapError> {
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

    /// Flows in the conntrack map: a batch lookup, 4,096 entries per syscall; kernels
    /// without it get a key walk (one syscall per entry, and entries evicted under the walk
    /// make it start over and count some twice).
    pub fn conntrack_entries(&self) -> Result<u64, MapError> {
        if let aya::maps::Map::LruHashMap(data) = &self.conntrack {
            let fd = data.fd().as_fd().as_raw_fd();
            match count_batch(fd, size_of::<FlowKey>(), size_of::<Conn>()) {
                Ok(count) => return Ok(count),
                Err(error) => tracing::debug!(%error, "batch lookup refused, walking the keys"),
            }
        }
        let map = HashMap::<&MapData, FlowKey, Conn>::try_from(&self.conntrack)?;
        Ok(map.keys().filter(Result::is_ok).count() as u64)
    }

    /// The conntrack entry of a client → VIP flow.
    pub fn conntrack_entry(&self, flow: &FlowKey) -> Result<Option<Conn>, MapError> {
        let map = HashMap::<&MapData, FlowKey, Conn>::try_from(&self.conntrack)?;
        match map.get(flow, 0) {
            Ok(conn) => Ok(Some(conn)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Writes a conntrack entry (tests age entries with it; flushes use `remove`).
    pub fn set_conntrack_entry(&mut self, flow: &FlowKey, conn: &Conn) -> Result<(), MapError> {
        let mut map = HashMap::<&mut MapData, FlowKey, Conn>::try_from(&mut self.conntrack)?;
        map.insert(flow, conn, 0)
    }

    pub fn remove_conntrack_entry(&mut self, flow: &FlowKey) -> Result<(), MapError> {
        let mut map = HashMap::<&mut MapData, FlowKey, Conn>::try_from(&mut self.conntrack)?;
        map.remove(flow)
    }

    /// A VIP's counters summed over CPUs.
    pub fn vip_counter(&self, vip_id: u32) -> Result<VipCounter, MapError> {
        let per_cpu = self.vip_stats.get(&vip_id, 0)?;
        Ok(per_cpu.iter().fold(VipCounter::default(), |mut sum, c| {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
            sum.new_flows += c.new_flows;
            sum
        }))
    }

    /// A backend's counters summed over CPUs.
    pub fn backend_counter(&self, id: u32) -> Result<Counter, MapError> {
        let per_cpu = self.backend_stats.get(&id, 0)?;
        let mut total = Counter::default();
        per_cpu.iter().for_each(|c| total.merge(c));
        Ok(total)
    }

    /// Zeroes a VIP id's counters when the id is given to a new VIP.
    pub fn reset_vip_counters(&mut self, vip_id: u32) -> Result<(), MapError> {
        let zero = PerCpuValues::try_from(vec![VipCounter::default(); cpus()?])?;
        self.vip_stats.set(vip_id, zero, 0)
    }

    /// Zeroes a backend id's counters when the id is given to a new backend.
    pub fn reset_backend_counters(&mut self, id: u32) -> Result<(), MapError> {
        let zero = PerCpuValues::try_from(vec![Counter::default(); cpus()?])?;
        self.backend_stats.set(id, zero, 0)
    }
}
