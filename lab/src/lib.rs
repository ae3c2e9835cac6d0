//! Network-namespace labs for lb: a client, the lb and backends joined by veths, small
//! servers that say which backend answered, and bounded clients; and a cluster of lb nodes
//! behind an ECMP router that learns the VIPs over BGP (BIRD 2); `lb` itself run in them;
//! and the multi-node scenario on that cluster. Used by the integration tests, the
//! benchmarks and `cargo xtask run`'s demos. Only addresses from `198.18.0.0/15` and
//! `fd00::/8`, only inside namespaces this process creates; everything is removed on drop.

pub mod cleanup;
pub mod client;
pub mod cluster;
pub mod dsr;
pub mod lb;
pub mod netns;
pub mod scenario;
pub mod servers;
pub mod topology;
