//! Everything that talks to the kernel: loading the XDP object, its maps and their batch
//! calls, pins on bpffs, attachments, counters, and the sysctls the datapath depends on.
//! The only layer with `unsafe`.

pub mod addresses;
pub mod announce;
pub mod attach;
pub mod backend_setup;
pub mod batch;
pub mod capture;
pub mod conntrack;
pub mod decap;
pub mod egress;
pub mod flow_cache;
pub mod forwarding;
pub mod kernel;
pub mod link_facts;
pub mod load;
pub mod local_addresses;
pub mod log;
pub mod maps;
pub mod memory;
pub mod neighbours;
pub mod netlink;
pub mod netns;
pub mod pins;
pub mod privileges;
pub mod proven_filter;
pub mod redirect_watch;
pub mod release;
pub mod stats;
pub mod sysctl;
pub mod tunnel_probe;
