//! Helpers for lb's integration tests: the test-run harness, packet builders, and network
//! namespaces that clean up after themselves.

pub use lb_lab::{cleanup, client, dsr, netns, servers, topology};
pub mod budget;
pub mod fiblab;
pub mod flood;
pub mod fragments;
pub mod fuzz;
pub mod generator;
pub mod katran;
pub mod metrics;
pub mod packets;
pub mod pair;
pub mod process;
pub mod root;
pub mod testrun;
pub mod tunnel;
pub mod verify;
pub mod wait;

pub use wait::eventually;

/// A line on stderr that the test harness does not capture: shown even for a passing test
/// (libtest captures only `print!`/`eprint!`), for skips and weaker checks a reader must see.
pub fn loud(line: &str) {
    use std::io::Write as _;
    // A failed write to stderr has nowhere else to be reported.
    writeln!(std::io::stderr().lock(), "{line}").unwrap_or_default();
}
