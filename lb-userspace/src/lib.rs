//! The lb controller as a library, in layers that each import only from the layers below
//! (docs/ARCHITECTURE.md draws them; `cargo xtask test` checks the rule):
//!
//! - [`model`]: the desired state, its validation, Maglev, check specs. Pure.
//! - [`store`]: the files lb keeps: the state file, `lb decap`'s record. Atomic writes.
//! - [`datapath`]: everything that calls bpf(2), bpffs, netlink or sysctl. All `unsafe`.
//! - [`control`]: makes the maps match the state, in a packet-safe order; health probes.
//! - [`api`]: the wire types and the client of the control socket.
//! - [`daemon`]: `lb run`: start-up, the controller, the socket server, metrics.
//! - [`cli`]: clap definitions, the commands, rendering.
//!
//! A result is handled or said to be ignorable, never dropped with `let _ =` or `.ok();`
//! (the workspace's lints in Cargo.toml).

#[deny(unsafe_code)]
pub mod api;
#[deny(unsafe_code)]
pub mod cli;
#[deny(unsafe_code)]
pub mod control;
#[deny(unsafe_code)]
pub mod daemon;
pub mod datapath;
#[deny(unsafe_code)]
pub mod model;
#[deny(unsafe_code)]
pub mod store;
