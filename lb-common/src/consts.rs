//! Names and limits both sides must agree on.

/// Name of the XDP program inside the eBPF object.
pub const PROGRAM_NAME: &str = "lb";

/// Map of global per-CPU counters, indexed by [`crate::stats::Stat`].
pub const MAP_STATS: &str = "STATS";

/// XDP action values (kernel ABI, `enum xdp_action`), for userspace and tests; the datapath
/// uses aya-ebpf's bindings.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
