//! Every map of the datapath. Types, names and sizes come from `lb-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
};
use lb_common::{
    consts::{
        CONNTRACK_CAPACITY, DEFAULT_MAGLEV_SIZE, MAX_BACKENDS, MAX_TX_PORTS, MAX_VIPS,
        NEXTHOP_CAPACITY,
    },
    flow::{Conn, FlowKey, NextHop, NextHopKey, ReverseNat},
    service::{Backend, Layout, VipInfo, VipKey},
    stats::{Counter, STAT_COUNT, VipCounter},
};

/// Global counters by protocol, verdict and reason.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// (address, port, protocol) → VIP; plus one address entry per VIP address.
#[map(name = "VIPS")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(MAX_VIPS * 2, 0);

/// Backend id → address, port, state.
#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Two Maglev tables per VIP, each `MAGLEV_SIZE` backend ids: index
/// `(vip_id * 2 + table) * MAGLEV_SIZE + slot`. Userspace sizes the map at load time.
#[map(name = "MAGLEV")]
pub static MAGLEV: Array<u32> = Array::with_max_entries(MAX_VIPS * 2 * DEFAULT_MAGLEV_SIZE, 0);

/// Client → VIP flows and the backend they are pinned to.
#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, Conn> =
    LruHashMap::with_max_entries(CONNTRACK_CAPACITY, 0);

/// Backend → client replies and the VIP to put back as their source.
#[map(name = "REVERSE_NAT")]
pub static REVERSE_NAT: LruHashMap<FlowKey, ReverseNat> =
    LruHashMap::with_max_entries(CONNTRACK_CAPACITY, 0);

#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<VipCounter> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Interfaces lb is attached to, by ifindex: where XDP_REDIRECT may send a packet.
#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

/// Recent `bpf_fib_lookup` answers, per CPU: a route and neighbour lookup costs more than
/// the rest of the datapath together, and every packet of a flow goes the same way.
#[map(name = "NEXTHOP")]
pub static NEXTHOP: LruPerCpuHashMap<NextHopKey, NextHop> =
    LruPerCpuHashMap::with_max_entries(NEXTHOP_CAPACITY, 0);

/// One entry, written by userspace: the layout the pinned maps were created with. The
/// datapath never reads it.
#[map(name = "META")]
pub static META: Array<Layout> = Array::with_max_entries(1, 0);

/// Maglev table size M, set by userspace at load time (read-only data).
#[unsafe(no_mangle)]
static MAGLEV_SIZE: u32 = DEFAULT_MAGLEV_SIZE;

#[inline(always)]
pub fn maglev_size() -> u32 {
    // SAFETY: a plain read of a load-time constant; volatile so the compiler keeps the load
    // the loader patches instead of folding the default in.
    unsafe { core::ptr::read_volatile(&MAGLEV_SIZE) }
}
