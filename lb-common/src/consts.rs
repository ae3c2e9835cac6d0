//! Names and limits both sides must agree on.

/// Name of the XDP program inside the eBPF object.
pub const PROGRAM_NAME: &str = "lb";
/// Programs `lb` tail-calls through the JUMPS map, by index: each has a 512-byte stack
/// of its own, which the paths they hold would not find left in `lb`'s.
pub const PROGRAM_ICMP: &str = "lb_icmp";
pub const PROGRAM_TOO_BIG: &str = "lb_too_big";
pub const PROGRAM_ENCAP: &str = "lb_encap";
pub const PROGRAM_FRAGMENT: &str = "lb_fragment";
pub const JUMP_ICMP: u32 = 0;
pub const JUMP_TOO_BIG: u32 = 1;
pub const JUMP_ENCAP: u32 = 2;
/// Later fragments (no ports) of VIP traffic. Last, so a pinned JUMPS map of an earlier
/// release (three slots) keeps every other program: it lacks only this one.
pub const JUMP_FRAGMENT: u32 = 3;
/// The tail-called programs with their JUMPS index.
pub const TAIL_PROGRAMS: [(&str, u32); 4] = [
    (PROGRAM_ICMP, JUMP_ICMP),
    (PROGRAM_TOO_BIG, JUMP_TOO_BIG),
    (PROGRAM_ENCAP, JUMP_ENCAP),
    (PROGRAM_FRAGMENT, JUMP_FRAGMENT),
];

/// Map names (the `#[map(name = ...)]` of each static in `lb-ebpf/src/maps.rs`).
pub const MAP_STATS: &str = "STATS";
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_MAGLEV: &str = "MAGLEV";
pub const MAP_CONNTRACK: &str = "CONNTRACK";
/// Backend endpoint → the VIP it serves (the reply direction of every flow).
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
/// Program array of the tail-called programs. Pinned: a program array is emptied when
/// no user-space reference holds it, and the datapath outlives the daemon.
pub const MAP_JUMPS: &str = "JUMPS";
/// Per-CPU `TooBigArgs` handed from `lb` to `lb_too_big`. Not pinned.
pub const MAP_TOO_BIG_ARGS: &str = "TOO_BIG_ARGS";
/// Per-CPU `EncapArgs` handed from `lb` and `lb_icmp` to `lb_encap`. Not pinned.
pub const MAP_ENCAP_ARGS: &str = "ENCAP_ARGS";
/// Per-CPU token bucket for ICMP errors the datapath sends. Not pinned.
pub const MAP_ICMP_RATE: &str = "ICMP_RATE";
/// Datagrams whose first fragment was balanced or translated, by (src, dst, IP id,
/// protocol, family): the later fragments, which carry no ports, follow it. Not pinned: a
/// restart loses only the datagrams in flight at that moment.
pub const MAP_FRAGMENTS: &str = "FRAGMENTS";
/// Egress interfaces the datapath found it cannot send to (not attached), by ifindex;
/// the daemon warns once per interface. Not pinned.
pub const MAP_UNATTACHED: &str = "UNATTACHED_EGRESS";

pub const MAP_VIP_STATS: &str = "VIP_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_TX_PORTS: &str = "TX_PORTS";
pub const MAP_META: &str = "META";
/// Per-CPU next hop of each backend (by backend id), the FIB answer toward it; not pinned
/// (a new program starts with empty slots).
pub const MAP_BACKEND_HOPS: &str = "BACKEND_HOPS";
/// Per-CPU direct-mapped cache of FIB answers toward every other destination (clients);
/// not pinned.
pub const MAP_HOPS: &str = "HOPS";
/// Slots of each CPU's `HOPS` cache (a power of two).
pub const HOP_SLOTS: u32 = 1 << 14;
/// How long a FIB answer is used before the route and neighbour are looked up again:
/// route or neighbour changes reach established flows within this time.
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;
/// Address classes (`ADDRESS_*` bits) by `hash::address_bucket`: which buckets hold a VIP
/// or a backend address, so that a packet for neither costs no hash lookup.
pub const MAP_ADDRESSES: &str = "ADDRESSES";
/// Buckets of the ADDRESSES map (a power of two).
pub const ADDRESS_BUCKETS: u32 = 1 << 14;
/// Some VIP address falls in this bucket.
pub const ADDRESS_VIP: u32 = 1;
/// Some backend address falls in this bucket.
pub const ADDRESS_BACKEND: u32 = 2;

/// Every map that outlives a controller: pinned under the pin directory by these names.
pub const PINNED_MAPS: [&str; 12] = [
    MAP_STATS,
    MAP_VIPS,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_CONNTRACK,
    MAP_ENDPOINTS,
    MAP_VIP_STATS,
    MAP_BACKEND_STATS,
    MAP_TX_PORTS,
    MAP_META,
    MAP_JUMPS,
    MAP_ADDRESSES,
];

/// Version of the map layout (key/value types and indexing). Bump it with any change to a
/// `#[repr(C)]` type in a pinned map or to the counter indices: a controller refuses to adopt maps of another version.
pub const LAYOUT_VERSION: u32 = 5;

/// Global set at load time: the Maglev table size M (a prime).
pub const GLOBAL_MAGLEV_SIZE: &str = "MAGLEV_SIZE";
/// Global set at load time: conntrack idle timeouts in ns, by state (`flow::Timeouts`).
pub const GLOBAL_CT_TIMEOUTS: &str = "CT_TIMEOUTS_NS";

/// Global set at load time: the cluster's [`crate::hash::HashSeed`] (`lb run --hash-seed`).
pub const GLOBAL_HASH_SEED: &str = "HASH_SEED";
/// Global set at load time: `ABLATE_*` stages the datapath skips. Always 0 outside
/// `cargo xtask bench`, which times the program with each stage left out to show what it
/// costs; the verifier removes the checks of a constant 0.
pub const GLOBAL_ABLATE: &str = "ABLATE";
/// No counters at all.
pub const ABLATE_COUNTERS: u32 = 1 << 0;
/// No clock read: a constant stands in for the time (nothing expires).
pub const ABLATE_CLOCK: u32 = 1 << 1;
/// No IPv4 header checksum check.
pub const ABLATE_IPV4_CHECKSUM: u32 = 1 << 2;
/// No ADDRESSES buckets: every packet takes the VIPS / ENDPOINTS lookups.
pub const ABLATE_ADDRESS_FILTER: u32 = 1 << 3;
/// No conntrack: every client packet is balanced by Maglev, nothing is tracked.
pub const ABLATE_CONNTRACK: u32 = 1 << 4;
/// No next-hop slots: `bpf_fib_lookup` for every packet.
pub const ABLATE_HOP_CACHE: u32 = 1 << 5;
/// No address and port rewrite (the packet leaves with its own addresses).
pub const ABLATE_NAT: u32 = 1 << 6;
/// Every stage above, by name, for the benchmark's table.
pub const ABLATE_STAGES: [(&str, u32); 7] = [
    ("counters", ABLATE_COUNTERS),
    ("clock read", ABLATE_CLOCK),
    ("IPv4 header checksum check", ABLATE_IPV4_CHECKSUM),
    ("address buckets", ABLATE_ADDRESS_FILTER),
    ("conntrack", ABLATE_CONNTRACK),
    ("next-hop slots", ABLATE_HOP_CACHE),
    ("NAT rewrite", ABLATE_NAT),
];

/// ICMP errors (too big) the datapath may send per CPU: a bucket of this many, refilled
/// at one per `ICMP_RATE_INTERVAL_NS` (as Linux's icmp_msgs_burst / icmp_msgs_per_sec).
pub const ICMP_RATE_BURST: u64 = 50;
pub const ICMP_RATE_INTERVAL_NS: u64 = 1_000_000;

/// Default VIP slots (`lb run --max-vips`); the maps' declared sizes, which userspace
/// replaces at load time.
pub const MAX_VIPS: u32 = 64;
/// Default backend slots (`lb run --max-backends`), as [`MAX_VIPS`].
pub const MAX_BACKENDS: u32 = 4096;
/// Interfaces the datapath can redirect to.
pub const MAX_TX_PORTS: u32 = 64;
/// Default and largest Maglev table size; the MAGLEV map holds 2 tables per VIP of this size.
pub const DEFAULT_MAGLEV_SIZE: u32 = 65_537;
/// Flows tracked (one entry per flow serves both directions).
pub const CONNTRACK_CAPACITY: u32 = 1 << 20;
/// Backend endpoints (one per backend) plus one address entry per backend address: ENDPOINTS
/// holds this many entries per backend slot.
pub const ENDPOINTS_PER_BACKEND: u32 = 2;
pub const ENDPOINTS_CAPACITY: u32 = MAX_BACKENDS * ENDPOINTS_PER_BACKEND;

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
/// Keeps its established flows, takes no new ones (an operator's drain).
pub const BACKEND_DRAINING: u8 = 2;
/// Failed its health check: takes no new flows and loses its tracked ones, which are
/// balanced again to a live backend.
pub const BACKEND_DOWN: u8 = 3;

/// XDP action values (kernel ABI, `enum xdp_action`), for userspace and tests; the datapath
/// uses aya-ebpf's bindings.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
