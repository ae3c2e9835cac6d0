//! `lb run`: start-up, the controller that serves each API request, the socket server,
//! the metrics endpoint and the conntrack sweep.

pub mod controller;
pub mod counters;
pub mod explain;
pub mod flows;
pub mod metrics;
pub mod metrics_http;
pub mod notify;
pub mod reload;
pub mod reports;
pub mod run;
pub mod server;
