//! The lb controller as a library: the embedded datapath and the pieces the `lb` binary and
//! the integration tests share.

pub mod addresses;
pub mod api;
pub mod attach;
pub mod balancer;
pub mod batch;
pub mod checker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod conntrack;
pub mod controller;
pub mod daemon;
pub mod datapath;
pub mod egress;
pub mod flows;
pub mod forwarding;
pub mod health;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod pins;
pub mod privileges;
pub mod probe;
pub mod server;
pub mod state;
pub mod stats;
pub mod watch;
