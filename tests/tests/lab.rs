//! The lab tests: the real `lb` binary (`LB_BIN`), real servers and routing daemons in
//! network namespaces that each test creates (root). One module per file; `cargo xtask
//! test` runs them with cargo-nextest, in the groups of `.config/nextest.toml`.

mod capture_lab;
mod cluster;
mod cluster_lab;
mod conntrack;
mod control;
mod decap_cli;
mod decap_lab;
mod dsr_lab;
mod e2e;
mod explain;
mod faults;
mod flood;
mod flows;
mod fragments_lab;
mod notify;
mod observe;
mod ops;
mod policy_lab;
mod quic_lab;
mod reload;
mod restart_load;
mod run;
mod soak;
mod veth;
