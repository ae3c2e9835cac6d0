//! The control API (docs/API.md): JSON lines over a Unix socket. Wire types, error codes and
//! the client; no clap, no aya, so it could become a crate of its own.

pub mod client;
pub mod error;
pub mod explain;
#[cfg(test)]
pub mod fixtures;
pub mod wire;
