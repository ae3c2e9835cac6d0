//! Network-namespace labs for lb: a client, the lb and backends joined by veths, small
//! servers that say which backend answered, and bounded clients; and a cluster of lb nodes
//! behind an ECMP router that learns the VIPs over BGP (BIRD 2). Used by the integration
//! tests and by `cargo xtask run`'s demo. Only addresses from 198.18.0.0/15 and fd00::/8,
//! only inside namespaces this process creates; everything is removed on drop.

pub mod cleanup;
pub mod client;
pub mod cluster;
pub mod dsr;
pub mod netns;
pub mod servers;
pub mod topology;
