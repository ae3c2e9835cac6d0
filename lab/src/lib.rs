//! Network-namespace labs for lb: a client, the lb and backends joined by veths, small
//! servers that say which backend answered, and bounded clients. Used by the integration
//! tests and by `cargo xtask run`'s demo. Only addresses from 198.18.0.0/15 and fd00::/8,
//! only inside namespaces this process creates; everything is removed on drop.

pub mod client;
pub mod dsr;
pub mod netns;
pub mod servers;
pub mod topology;
