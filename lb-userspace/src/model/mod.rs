//! What the operator wants: VIPs, backends, weights, checks, and the Maglev tables they
//! imply. Pure: no aya, tokio, clap or libc, so all of it is tested without root.

pub mod announce;
pub mod check;
pub mod cluster;
pub mod config;
pub mod decap;
pub mod egress;
pub mod error_chain;
pub mod explain;
pub mod health;
pub mod kernel;
pub mod limits;
pub mod maglev;
pub mod memory;
pub mod mode;
pub mod notify;
pub mod policy;
pub mod prefix;
pub mod quic;
pub mod reload;
pub mod second_chance;
pub mod state;
pub mod tunnel_probe;
