//! Every map of the datapath. Types, names and sizes come from `lb-common`.

use crate::parse::Packet;
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::{
    capture::{CAPTURE_RING_BYTES, CaptureFilter, CaptureScratch},
    consts::{
        ADDRESS_BUCKETS, CONNTRACK_CAPACITY, CT_UNPROVEN_DIVISOR, DEFAULT_MAGLEV_SIZE,
        DEFAULT_NEW_FLOW_LIMIT, ENDPOINTS_CAPACITY, FAMILY_V4, HOP_SLOTS, LocalMac, MAX_BACKENDS,
        MAX_SOURCE_RANGES_PER_VIP, MAX_TX_PORTS, MAX_VIPS, RateWindow, RingCursor, TAIL_PROGRAMS,
        UNPROVEN_RING_FLOOR,
    },
    encap::{EncapArgs, EncapSource},
    flow::{
        CachedFlow, Conn, DEFAULT_TIMEOUTS_NS, FLOW_CACHE_SLOTS, FlowKey, NextHop, Timeouts,
        proven_filter_entries, proven_filter_words,
    },
    fragment::{FRAGMENTS_CAPACITY, Fragment, FragmentKey},
    gue::{DEFAULT_GUE_PORT, EarlierHops, HopsKey},
    hash::HashSeed,
    icmp::{RateBucket, TooBigArgs},
    quic::{CONFIG_IDS, QuicConfigs, QuicServerKey},
    service::{Backend, Endpoint, EndpointKey, Layout, SourceRange, VipInfo, VipKey},
    stats::{Counter, DROP_SLOTS, STAT_COUNT, VipCounter},
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

/// dsr-gue VIPs' second chance: the backends earlier tables gave a slot of a live or
/// standby table (same `table` index as MAGLEV), for the slots that have any. Allocated
/// per entry (no preallocation): only slots a change moved take memory. Not pinned.
#[map(name = "MAGLEV_HOPS")]
pub static MAGLEV_HOPS: HashMap<HopsKey, EarlierHops> =
    HashMap::with_max_entries(MAX_VIPS * 2 * DEFAULT_MAGLEV_SIZE, BPF_F_NO_PREALLOC);
/// `BPF_F_NO_PREALLOC`: a hash map that allocates entries as they are inserted.
const BPF_F_NO_PREALLOC: u32 = 1;
/// QUIC VIPs: the server-id length of each config id a VIP accepts, by VIP id. Not pinned.
#[map(name = "QUIC_CONFIGS")]
pub static QUIC_CONFIGS: Array<QuicConfigs> = Array::with_max_entries(MAX_VIPS, 0);
/// QUIC VIPs: (VIP, config id and server id of a connection ID) → backend id, one entry
/// per config and backend. Allocated per entry. Not pinned.
#[map(name = "QUIC_SERVERS")]
pub static QUIC_SERVERS: HashMap<QuicServerKey, u32> =
    HashMap::with_max_entries(MAX_BACKENDS * CONFIG_IDS as u32, BPF_F_NO_PREALLOC);
/// Proven client → VIP flows: the backend each is pinned to and its lifecycle state. One
/// entry per flow, in this table or in CT_UNPROVEN; replies reach it through ENDPOINTS.
/// Only a promotion inserts here, so a flood never evicts a proven flow.
#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, Conn> =
    LruHashMap::with_max_entries(CONNTRACK_CAPACITY, 0);

/// Which flows may be in CONNTRACK (`lb_common::flow::proven_filter_bit`): set by
/// promotions, rebuilt by the sweep through a shared mapping (mmapable). Userspace sizes
/// it at load time; a new one is zeroed, which reads as not built.
#[map(name = "PROVEN_FILTER")]
pub static PROVEN_FILTER: Array<u64> = Array::with_max_entries(
    proven_filter_entries(proven_filter_words(CONNTRACK_CAPACITY)),
    aya_ebpf::bindings::BPF_F_MMAPABLE,
);

/// Flows not proven yet; a flood churns this table only. A plain hash (an LRU's insert
/// costs its list work on every new flow): when it is full, a new flow evicts its CPU's
/// oldest (`UNPROVEN_RING`). Userspace sizes it at load time.
#[map(name = "CT_UNPROVEN")]
pub static CT_UNPROVEN: HashMap<FlowKey, Conn> =
    HashMap::with_max_entries(CONNTRACK_CAPACITY / CT_UNPROVEN_DIVISOR, 0);

/// Each CPU's flows tracked as unproven, oldest first from the head
/// (`lb_common::consts::MAP_UNPROVEN_RING`). Userspace sizes it at load time.
#[map(name = "UNPROVEN_RING")]
pub static UNPROVEN_RING: PerCpuArray<FlowKey> =
    PerCpuArray::with_max_entries(UNPROVEN_RING_FLOOR, 0);

/// Each CPU's place in its ring.
#[map(name = "UNPROVEN_RING_HEAD")]
pub static UNPROVEN_RING_HEAD: PerCpuArray<RingCursor> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's count of new flows tracked in the current second (the rate guard).
#[map(name = "NEW_FLOW_RATE")]
pub static NEW_FLOW_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

/// MAC of each interface lb is attached to, by ifindex (filled by userspace).
#[map(name = "LOCAL_MACS")]
pub static LOCAL_MACS: HashMap<u32, LocalMac> = HashMap::with_max_entries(MAX_TX_PORTS, 0);

/// Backend endpoint (address, port, protocol) → the VIP it serves; address entries mark
/// backend addresses.
#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint> =
    HashMap::with_max_entries(ENDPOINTS_CAPACITY, 0);

#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<VipCounter> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Dropped packets by VIP and reason (`Stat::drop_slot`), per CPU. Userspace sizes it
/// from `--max-vips` at load time. Not pinned.
#[map(name = "VIP_DROPS")]
pub static VIP_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_VIPS * DROP_SLOTS, 0);

/// `lb capture`'s records, read by the daemon (`lb_capture` only). Not pinned.
#[map(name = "CAPTURE_RING")]
pub static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

/// `lb capture`'s filter, written by the daemon before it swaps `lb_capture` in. Not
/// pinned.
#[map(name = "CAPTURE_FILTER")]
pub static CAPTURE_FILTER: Array<CaptureFilter> = Array::with_max_entries(1, 0);

/// `lb capture`'s record under construction and counts, per CPU. The tail-called programs
/// leave their reason in it. Not pinned.
#[map(name = "CAPTURE_SCRATCH")]
pub static CAPTURE_SCRATCH: PerCpuArray<CaptureScratch> = PerCpuArray::with_max_entries(1, 0);

/// Interfaces lb is attached to, by ifindex: where XDP_REDIRECT may send a packet.
#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

/// Each backend's next hop (by backend id), per CPU: a route and neighbour lookup costs
/// more than the rest of the datapath together, and every packet to a backend goes the
/// same way. An array slot costs no hash and no call, where a hash map costs both.
#[map(name = "BACKEND_HOPS")]
pub static BACKEND_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Proven flows' forwarding decisions, per CPU, direct-mapped by 5-tuple: the established
/// fast path (`flow_cache`). Not pinned.
#[map(name = "FLOW_CACHE")]
pub static FLOW_CACHE: PerCpuArray<CachedFlow> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// The packet `lb` parsed, in this CPU's slot, for its two halves (the flow cache and the
/// slow path, each a BPF subprogram with its own stack frame). Datapath-internal:
/// userspace never reads it.
#[map(name = "PARSED")]
pub static PARSED: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// `bpf_fib_lookup`'s 64-byte parameter block, in this CPU's slot: kept off the stack of
/// the call chains that ask the FIB, which came within 20 % of the verifier's 512 bytes
/// with it (tests/verifier-budgets.txt). The kernel's own struct; datapath-internal, never
/// pinned.
#[map(name = "FIB_PARAMS")]
pub static FIB_PARAMS: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);

/// Next hops toward every other destination (clients), per CPU, direct-mapped by
/// destination: a collision costs one FIB lookup, never an insert or an eviction.
#[map(name = "HOPS")]
pub static HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(HOP_SLOTS, 0);

/// One entry, written by the daemon: TX_PORTS's map id, for `lb_redirect_lost` to count
/// only this datapath's failed redirects (0 until written: nothing counts). Not pinned.
#[map(name = "REDIRECT_WATCH")]
pub static REDIRECT_WATCH: Array<u32> = Array::with_max_entries(1, 0);

/// Fragmented datagrams whose first fragment was balanced, translated or passed: where
/// their later fragments (no ports) go. Not pinned.
#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragmentKey, Fragment> =
    LruHashMap::with_max_entries(FRAGMENTS_CAPACITY, 0);

/// Address classes by `address_bucket` (userspace sets a bucket's bits before it adds a
/// VIP or backend address there, clears them after the last one goes).
#[map(name = "ADDRESSES")]
pub static ADDRESSES: Array<u32> = Array::with_max_entries(ADDRESS_BUCKETS, 0);

/// (VIP id, client prefix) → 1: the clients a VIP with `VIP_FLAG_SOURCE_RANGES` accepts new
/// flows from. Userspace sizes it from `--max-vips` at load time.
#[map(name = "SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u32> =
    LpmTrie::with_max_entries(MAX_VIPS * MAX_SOURCE_RANGES_PER_VIP, 0);

/// Egress interfaces a route pointed at that lb is not attached to (ifindex → 1), for
/// the daemon to name in a warning.
#[map(name = "UNATTACHED_EGRESS")]
pub static UNATTACHED_EGRESS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TX_PORTS, 0);

/// The tail-called programs (`JUMP_*` indices), filled by userspace after loading them.
#[map(name = "JUMPS")]
pub static JUMPS: ProgramArray = ProgramArray::with_max_entries(TAIL_PROGRAMS.len() as u32, 0);

/// What `lb` hands to `lb_too_big`, in this CPU's slot. Pinned, so that an old `lb`
/// tail-calling a new `lb_too_big` during a restart hands it over in the same map.
#[map(name = "TOO_BIG_ARGS")]
pub static TOO_BIG_ARGS: PerCpuArray<TooBigArgs> = PerCpuArray::with_max_entries(1, 0);

/// What `lb` and `lb_icmp` hand to `lb_encap`, in this CPU's slot. Pinned, as TOO_BIG_ARGS.
#[map(name = "ENCAP_ARGS")]
pub static ENCAP_ARGS: PerCpuArray<EncapArgs> = PerCpuArray::with_max_entries(1, 0);

/// Token bucket for the ICMP errors this CPU sends.
#[map(name = "ICMP_RATE")]
pub static ICMP_RATE: PerCpuArray<RateBucket> = PerCpuArray::with_max_entries(1, 0);

/// One entry, written by userspace: the layout the pinned maps were created with. The
/// datapath never reads it.
#[map(name = "META")]
pub static META: Array<Layout> = Array::with_max_entries(1, 0);

/// Maglev table size M, set by userspace at load time (read-only data).
#[unsafe(no_mangle)]
static MAGLEV_SIZE: u32 = DEFAULT_MAGLEV_SIZE;

/// Conntrack idle timeouts in ns by `CT_*` state, set by userspace at load time.
#[unsafe(no_mangle)]
static CT_TIMEOUTS_NS: Timeouts = DEFAULT_TIMEOUTS_NS;

/// Outer sources of dsr-ipip by backend family, set by userspace at load time.
#[unsafe(no_mangle)]
static ENCAP_SOURCE_V4: EncapSource = EncapSource {
    addr: [0; 16],
    host_bits: 0,
    _pad: [0; 7],
};
#[unsafe(no_mangle)]
static ENCAP_SOURCE_V6: EncapSource = EncapSource {
    addr: [0; 16],
    host_bits: 0,
    _pad: [0; 7],
};

/// The outer source prefix for a backend of `family`.
#[inline(always)]
pub fn encap_source(family: u8) -> EncapSource {
    // SAFETY: as in `maglev_size`.
    unsafe {
        if family == FAMILY_V4 {
            core::ptr::read_volatile(&raw const ENCAP_SOURCE_V4)
        } else {
            core::ptr::read_volatile(&raw const ENCAP_SOURCE_V6)
        }
    }
}

/// Words in each half of PROVEN_FILTER (a power of two), set by userspace at load time.
#[unsafe(no_mangle)]
static PROVEN_FILTER_WORDS: u32 = proven_filter_words(CONNTRACK_CAPACITY);

#[inline(always)]
pub fn proven_filter_half_words() -> u32 {
    // SAFETY: as in `maglev_size`.
    unsafe { core::ptr::read_volatile(&raw const PROVEN_FILTER_WORDS) }
}

/// Slots of each CPU's UNPROVEN_RING, set by userspace at load time.
#[unsafe(no_mangle)]
static UNPROVEN_RING_SLOTS: u32 = UNPROVEN_RING_FLOOR;

#[inline(always)]
pub fn unproven_ring_slots() -> u32 {
    // SAFETY: as in `maglev_size`.
    unsafe { core::ptr::read_volatile(&raw const UNPROVEN_RING_SLOTS) }
}

/// The CPUs with a ring (the possible CPUs), set by userspace at load time.
#[unsafe(no_mangle)]
static RING_CPUS: u32 = 1;

#[inline(always)]
pub fn ring_cpus() -> u32 {
    // SAFETY: as in `maglev_size`.
    unsafe { core::ptr::read_volatile(&raw const RING_CPUS) }
}

/// The UDP destination port of dsr-gue (host order), set by userspace at load time.
#[unsafe(no_mangle)]
static GUE_PORT: u16 = DEFAULT_GUE_PORT;
#[inline(always)]
pub fn gue_port() -> u16 {
    // SAFETY: as in `maglev_size`.
    unsafe { core::ptr::read_volatile(&raw const GUE_PORT) }
}
/// How long a flow-cache slot answers after it was filled (ns; 0: the cache is off), set
/// by userspace at load time.
#[unsafe(no_mangle)]
static FLOW_CACHE_NS: u64 = 0;

#[inline(always)]
pub fn flow_cache_ns() -> u64 {
    // SAFETY: as in `maglev_size`.
    unsafe { core::ptr::read_volatile(&raw const FLOW_CACHE_NS) }
}

/// The cluster's hash seed, set by userspace at load time (the same on every lb node).
#[unsafe(no_mangle)]
static HASH_SEED: HashSeed = [0; 2];

/// The seed that keys the flow hash.
#[inline(always)]
pub fn hash_seed() -> HashSeed {
    // SAFETY: as in `maglev_size`.
    unsafe { core::ptr::read_volatile(&raw const HASH_SEED) }
}

/// New flows each CPU may track per second (0: no limit), set by userspace at load time.
#[unsafe(no_mangle)]
static NEW_FLOW_LIMIT: u32 = DEFAULT_NEW_FLOW_LIMIT;

#[inline(always)]
pub fn new_flow_limit() -> u32 {
    // SAFETY: as in `maglev_size`.
    unsafe { core::ptr::read_volatile(&raw const NEW_FLOW_LIMIT) }
}

/// `ABLATE_*` stages to skip, set by userspace at load time (0 but in benchmarks).
#[unsafe(no_mangle)]
static ABLATE: u32 = 0;

/// Whether the benchmark left `stage` (an `ABLATE_*` bit) out of this load.
#[inline(always)]
pub fn ablated(stage: u32) -> bool {
    // SAFETY: as in `maglev_size`.
    unsafe { core::ptr::read_volatile(&raw const ABLATE) & stage != 0 }
}

#[inline(always)]
pub fn maglev_size() -> u32 {
    // SAFETY: a plain read of a load-time constant; volatile so the compiler keeps the load
    // the loader patches instead of folding the default in.
    unsafe { core::ptr::read_volatile(&raw const MAGLEV_SIZE) }
}

/// The idle timeout of an unproven flow in `state`: at most the opening timeout for TCP
/// (as `Conn::expired_unproven`).
#[inline(always)]
pub fn unproven_timeout_ns(state: u8) -> u64 {
    let own = timeout_ns(state);
    if state == lb_common::flow::CT_DATAGRAM {
        return own;
    }
    own.min(timeout_ns(lb_common::flow::CT_OPENING))
}

/// The idle timeout of a flow in `state` (a `CT_*` value).
#[inline(always)]
pub fn timeout_ns(state: u8) -> u64 {
    let table = &raw const CT_TIMEOUTS_NS;
    // SAFETY: as in `maglev_size`; every index is in bounds of the five-entry table.
    unsafe {
        match state {
            0 => core::ptr::read_volatile(&raw const (*table)[0]),
            1 => core::ptr::read_volatile(&raw const (*table)[1]),
            2 => core::ptr::read_volatile(&raw const (*table)[2]),
            3 => core::ptr::read_volatile(&raw const (*table)[3]),
            _ => core::ptr::read_volatile(&raw const (*table)[4]),
        }
    }
}
