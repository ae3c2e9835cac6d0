//! Names and limits both sides must agree on.

/// Name of the XDP program inside the eBPF object.
pub const PROGRAM_NAME: &str = "lb";
/// `lb` with `lb capture`'s copy at entry and record at exit (`capture`): swapped into the
/// links while a capture runs, loaded only then.
pub const CAPTURE_PROGRAM_NAME: &str = "lb_capture";
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
/// dsr-gue's encapsulation with the hop list (`lb_encap_gue`), tail-called by `lb` and
/// `lb_encap` for a dsr-gue backend: its own program, as inlined it took `lb` to 480 of
/// the 512 stack bytes. After the fragment slot, for the same reason.
pub const PROGRAM_ENCAP_GUE: &str = "lb_encap_gue";
pub const JUMP_ENCAP_GUE: u32 = 4;
/// The tracing program that counts redirected frames the kernel drops
/// (`Stat::RedirectLost`), attached to [`REDIRECT_ERR_TRACEPOINT`] by the daemon.
pub const PROGRAM_REDIRECT_LOST: &str = "lb_redirect_lost";
/// `(category, name)` of the tracepoint the kernel hits when it cannot send a frame an XDP
/// program redirected (`trace_xdp_redirect_map_err`).
pub const REDIRECT_ERR_TRACEPOINT: (&str, &str) = ("xdp", "xdp_redirect_err");
/// Where `map_id` (u32) sits in that tracepoint's record (its `format` file, stable since
/// Linux 4.x; the daemon checks it before attaching).
pub const REDIRECT_ERR_MAP_ID_OFFSET: usize = 28;
/// One entry, written by the daemon: the id of this datapath's TX_PORTS map, so the
/// tracing program counts only redirects through it (not other XDP programs' on the host).
pub const MAP_REDIRECT_WATCH: &str = "REDIRECT_WATCH";

/// The tail-called programs with their JUMPS index.
pub const TAIL_PROGRAMS: [(&str, u32); 5] = [
    (PROGRAM_ICMP, JUMP_ICMP),
    (PROGRAM_TOO_BIG, JUMP_TOO_BIG),
    (PROGRAM_ENCAP, JUMP_ENCAP),
    (PROGRAM_FRAGMENT, JUMP_FRAGMENT),
    (PROGRAM_ENCAP_GUE, JUMP_ENCAP_GUE),
];

/// Map names (the `#[map(name = ...)]` of each static in `lb-ebpf/src/maps.rs`).
pub const MAP_STATS: &str = "STATS";
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_MAGLEV: &str = "MAGLEV";
/// dsr-gue's earlier hops by table slot (`gue::HopsKey` → `gue::EarlierHops`). Not pinned:
/// a restarted daemon starts with no earlier table.
pub const MAP_MAGLEV_HOPS: &str = "MAGLEV_HOPS";
/// QUIC VIPs' configs, indexed by VIP id (`quic::QuicConfigs`). Not pinned.
pub const MAP_QUIC_CONFIGS: &str = "QUIC_CONFIGS";
/// QUIC server ids → backend ids (`quic::QuicServerKey`). Not pinned.
pub const MAP_QUIC_SERVERS: &str = "QUIC_SERVERS";
/// `lb capture`'s records (`capture::CaptureHeader` and bytes), a ring buffer. Not pinned.
pub const MAP_CAPTURE_RING: &str = "CAPTURE_RING";
/// `lb capture`'s filter, one `capture::CaptureFilter`. Not pinned.
pub const MAP_CAPTURE_FILTER: &str = "CAPTURE_FILTER";
/// `lb capture`'s per-CPU working space and counts (`capture::CaptureScratch`). Not pinned.
pub const MAP_CAPTURE_SCRATCH: &str = "CAPTURE_SCRATCH";
/// Dropped packets by VIP and reason: slot `vip_id * DROP_REASONS + drop_slot` (per CPU,
/// `stats::Stat::drop_slot`). Not pinned: counted from the daemon's start.
pub const MAP_VIP_DROPS: &str = "VIP_DROPS";
/// Proven flows (see [`MAP_CT_UNPROVEN`]): only a promotion inserts here, so a flood of
/// new or mid-flow packets can never evict them.
pub const MAP_CONNTRACK: &str = "CONNTRACK";
/// Which flows may be in CONNTRACK: a bit per hash of the 5-tuple, set by every promotion
/// and rebuilt by the sweep (`flow::PROVEN_FILTER_UNBUILT` says how). A SYN whose bit is clear skips the
/// proven table's lookup.
pub const MAP_PROVEN_FILTER: &str = "PROVEN_FILTER";
/// Flows not proven yet (no reply and handshake, or too few packets): new flows start here
/// and move to CONNTRACK once proven, so a flood churns only this table.
pub const MAP_CT_UNPROVEN: &str = "CT_UNPROVEN";
/// The unproven table's size: this fraction of `--conntrack-size`, at least the floor.
pub const CT_UNPROVEN_DIVISOR: u32 = 4;
pub const CT_UNPROVEN_FLOOR: u32 = 1024;
/// Each CPU's ring of the flows it tracked as unproven, newest last: when the unproven
/// table (a plain hash, no LRU lists) is full, a new flow takes the place of the oldest
/// one its CPU still remembers (`conntrack::track_unproven`). Not pinned.
pub const MAP_UNPROVEN_RING: &str = "UNPROVEN_RING";
/// Each CPU's `RingCursor`. Not pinned.
pub const MAP_UNPROVEN_RING_HEAD: &str = "UNPROVEN_RING_HEAD";
/// Global set at load time: slots in each CPU's ring (the unproven table's size over the
/// CPUs, at least the floor).
pub const GLOBAL_UNPROVEN_RING_SLOTS: &str = "UNPROVEN_RING_SLOTS";
/// Global set at load time: the CPUs whose rings an eviction may search (the possible
/// CPUs).
pub const GLOBAL_RING_CPUS: &str = "RING_CPUS";
/// The fewest ring slots per CPU.
pub const UNPROVEN_RING_FLOOR: u32 = 1024;
/// A ring of `slots` per CPU for an unproven table of `capacity` on `cpus` CPUs.
pub const fn unproven_ring_slots(capacity: u32, cpus: u32) -> u32 {
    let share = capacity / if cpus == 0 { 1 } else { cpus };
    if share < UNPROVEN_RING_FLOOR {
        UNPROVEN_RING_FLOOR
    } else {
        share
    }
}
/// Interface MACs by ifindex, for the interfaces lb is attached to: a frame addressed to
/// another MAC (a switch flooding unknown unicast, a bridge port, promiscuous mode) is
/// the kernel's to drop (PACKET_OTHERHOST), never forwarded.
pub const MAP_LOCAL_MACS: &str = "LOCAL_MACS";
/// Per-CPU window of new flows tracked (the rate guard). Not pinned.
pub const MAP_NEW_FLOW_RATE: &str = "NEW_FLOW_RATE";
/// Global set at load time: new flows each CPU may track per second (0: no limit). Past
/// it, new flows are balanced by Maglev without an entry (`ct_flood_untracked`).
pub const GLOBAL_NEW_FLOW_LIMIT: &str = "NEW_FLOW_LIMIT";
/// Default of `lb run --new-flow-limit`.
pub const DEFAULT_NEW_FLOW_LIMIT: u32 = 100_000;
/// Backend endpoint → the VIP it serves (the reply direction of every flow).
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
/// Program array of the tail-called programs. Pinned: a program array is emptied when
/// no user-space reference holds it, and the datapath outlives the daemon.
pub const MAP_JUMPS: &str = "JUMPS";
/// Per-CPU `TooBigArgs` handed from `lb` to `lb_too_big`. Pinned, as ENCAP_ARGS.
pub const MAP_TOO_BIG_ARGS: &str = "TOO_BIG_ARGS";
/// Per-CPU `EncapArgs` handed from `lb` and `lb_icmp` to `lb_encap`. Pinned: during a
/// restart JUMPS (pinned, shared) holds the new load's `lb_encap` before the links switch
/// to the new `lb`, so the old `lb` tail-calls the new `lb_encap`; both must read and
/// write one slot, not one map per load.
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
/// The per-CPU flow cache: userspace only clears it (`lb conntrack flush`).
pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";

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
/// LPM trie of the client source prefixes each VIP accepts new flows from
/// (`lb vip add --allow-source`), keyed by [`crate::service::SourceRange`]. Consulted only
/// on a conntrack miss, and only for VIPs with [`VIP_FLAG_SOURCE_RANGES`] set.
pub const MAP_SOURCE_RANGES: &str = "SOURCE_RANGES";
/// Most source prefixes one VIP may have; the trie holds this many per VIP slot.
pub const MAX_SOURCE_RANGES_PER_VIP: u32 = 64;
/// Buckets of the ADDRESSES map (a power of two).
pub const ADDRESS_BUCKETS: u32 = 1 << 14;
/// Some VIP address falls in this bucket.
pub const ADDRESS_VIP: u32 = 1;
/// Some backend address falls in this bucket.
pub const ADDRESS_BACKEND: u32 = 2;

/// Every map that outlives a controller: pinned under the pin directory by these names.
pub const PINNED_MAPS: [&str; 18] = [
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
    // Added after layout 5 was released: a pin directory of that release lacks them, and
    // the loader creates and pins them at adoption (the layout version stays 5;
    // SOURCE_RANGES starts empty, as a VIP without ranges needs it). The tail calls'
    // argument maps are shared by the old and the new load across a restart.
    MAP_CT_UNPROVEN,
    MAP_LOCAL_MACS,
    MAP_SOURCE_RANGES,
    MAP_ENCAP_ARGS,
    MAP_TOO_BIG_ARGS,
    // Added with the proven-flow filter: created zeroed (not built, so every SYN looks in
    // CONNTRACK) when a pin directory of an earlier release is adopted.
    MAP_PROVEN_FILTER,
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
/// Global set at load time: how long a flow-cache slot answers after it was filled (ns;
/// 0: the cache is off). Shorter than every timeout of a state the cache serves, so a
/// cached flow's conntrack entry is refreshed before it could expire.
pub const GLOBAL_FLOW_CACHE_NS: &str = "FLOW_CACHE_NS";
/// Global set at load time: the words in each half of PROVEN_FILTER (a power of two,
/// `flow::proven_filter_words`).
pub const GLOBAL_PROVEN_FILTER_WORDS: &str = "PROVEN_FILTER_WORDS";
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
/// No flow cache: established packets take the conntrack lookup (the slow path).
pub const ABLATE_FLOW_CACHE: u32 = 1 << 7;
/// Every stage above, by name, for the benchmark's table.
pub const ABLATE_STAGES: [(&str, u32); 8] = [
    ("flow cache", ABLATE_FLOW_CACHE),
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

/// One interface's MAC, the value of LOCAL_MACS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalMac {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for LocalMac {}

/// The rate guard's per-CPU window: new flows tracked since `start_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub start_ns: u64,
    pub count: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for RateWindow {}

/// A CPU's place in its UNPROVEN_RING: flows written to it, and ring slots an eviction
/// has consumed. The flows not yet consumed, oldest first, are those from
/// `max(consumed, written - slots)` to `written`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCursor {
    pub written: u64,
    pub consumed: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for RingCursor {}
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
/// Failed its health check: takes no new flows; its tracked flows are balanced again to a
/// live backend, except TCP flows when [`BACKEND_FLAG_KEEP_TCP_ON_DOWN`] is set.
pub const BACKEND_DOWN: u8 = 3;

/// `Backend::flags`: its VIP's `--on-down keep-tcp`. A tracked TCP flow stays on this
/// backend while it is down; UDP flows and new flows still move.
pub const BACKEND_FLAG_KEEP_TCP_ON_DOWN: u8 = 1;

/// `VipInfo::flags`: the VIP has source ranges in `SOURCE_RANGES`; a new flow from a
/// client outside all of them is dropped. Clear: any client (no trie lookup).
pub const VIP_FLAG_SOURCE_RANGES: u8 = 1;
/// `VipInfo::flags`: a UDP VIP in QUIC mode (`--quic`): its packets go to the backend
/// whose server id their connection ID carries (`QUIC_CONFIGS`, `QUIC_SERVERS`).
pub const VIP_FLAG_QUIC: u8 = 2;
/// `Backend::flags`: its VIP is in QUIC mode, so a tracked flow's packet still reads its
/// connection ID (the 5-tuple may now carry another connection).
pub const BACKEND_FLAG_QUIC: u8 = 2;

/// XDP action values (kernel ABI, `enum xdp_action`), for userspace and tests; the datapath
/// uses aya-ebpf's bindings.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
