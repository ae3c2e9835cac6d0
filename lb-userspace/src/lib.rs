//! The lb controller as a library: the embedded datapath and the pieces the `lb` binary and
//! the integration tests share.

pub mod api;
pub mod attach;
pub mod balancer;
pub mod cli;
pub mod commands;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod datapath;
pub mod maglev;
pub mod maps;
pub mod pins;
pub mod privileges;
pub mod server;
pub mod state;
pub mod stats;
