//! Helpers for lb's integration tests: the test-run harness, packet builders, and network
//! namespaces that clean up after themselves.

pub use lb_lab::{client, netns, servers, topology};
pub mod fiblab;
pub mod fuzz;
pub mod generator;
pub mod packets;
pub mod process;
pub mod testrun;
pub mod verify;
