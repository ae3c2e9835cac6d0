//! The eBPF tests: the real objects under `BPF_PROG_TEST_RUN`, golden packets in and out
//! (root). One module per file; `cargo xtask test` runs them with cargo-nextest.

mod admission;
mod budgets;
mod capture;
mod cluster_hash;
mod decap;
mod decap_gue;
mod dsr;
mod dsr_gue;
mod flow_cache;
mod fragments;
mod fuzz;
mod golden;
mod icmp;
mod katran;
mod lifecycle;
mod nat;
mod policy;
mod quic;
