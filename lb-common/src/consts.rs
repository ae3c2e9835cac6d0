//! Names and limits both sides must agree on.

/// Name of the XDP program inside the eBPF object.
pub const PROGRAM_NAME: &str = "lb";

/// Map names (the `#[map(name = ...)]` of each static in `lb-ebpf/src/maps.rs`).
pub const MAP_STATS: &str = "STATS";
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_MAGLEV: &str = "MAGLEV";
pub const MAP_CONNTRACK: &str = "CONNTRACK";
pub const MAP_REVERSE: &str = "REVERSE_NAT";
pub const MAP_VIP_STATS: &str = "VIP_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_TX_PORTS: &str = "TX_PORTS";
pub const MAP_META: &str = "META";
/// Per-CPU cache of FIB answers; not pinned (a new program starts with an empty cache).
pub const MAP_NEXTHOP: &str = "NEXTHOP";
/// Entries in each CPU's next-hop cache.
pub const NEXTHOP_CAPACITY: u32 = 16_384;
/// How long a cached FIB answer is used before the route and neighbour are looked up
/// again: route or neighbour changes reach established flows within this time.
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;

/// Every map that outlives a controller: pinned under the pin directory by these names.
pub const PINNED_MAPS: [&str; 10] = [
    MAP_STATS,
    MAP_VIPS,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_CONNTRACK,
    MAP_REVERSE,
    MAP_VIP_STATS,
    MAP_BACKEND_STATS,
    MAP_TX_PORTS,
    MAP_META,
];

/// Version of the map layout (key/value types and indexing). Bump it with any change to a
/// `#[repr(C)]` type in a pinned map or to the counter indices: a controller refuses to adopt maps of another version.
pub const LAYOUT_VERSION: u32 = 2;

/// Global set at load time: the Maglev table size M (a prime).
pub const GLOBAL_MAGLEV_SIZE: &str = "MAGLEV_SIZE";

pub const MAX_VIPS: u32 = 64;
pub const MAX_BACKENDS: u32 = 4096;
/// Interfaces the datapath can redirect to.
pub const MAX_TX_PORTS: u32 = 64;
/// Default and largest Maglev table size; the MAGLEV map holds 2 tables per VIP of this size.
pub const DEFAULT_MAGLEV_SIZE: u32 = 65_537;
/// Flows tracked (each has a forward and a reverse entry).
pub const CONNTRACK_CAPACITY: u32 = 1 << 20;

/// A Maglev slot with no backend (the VIP has none usable).
pub const NO_BACKEND: u32 = u32::MAX;

/// `VipKey::family` / `Backend::family` values.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `Backend::state` values.
pub const BACKEND_UNUSED: u8 = 0;
/// Takes new flows and keeps its established ones.
pub const BACKEND_ACTIVE: u8 = 1;
/// Keeps its established flows, takes no new ones.
pub const BACKEND_DRAINING: u8 = 2;

/// XDP action values (kernel ABI, `enum xdp_action`), for userspace and tests; the datapath
/// uses aya-ebpf's bindings.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
