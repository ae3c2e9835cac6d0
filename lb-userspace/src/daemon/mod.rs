//! `lb run`: start-up, the controller and the task that owns it, the readers that answer
//! queries from its published snapshot, the socket server, the metrics endpoint and the
//! conntrack sweep.

pub mod answer;
pub mod capture;
pub mod controller;
pub mod counters;
#[cfg(test)]
mod dashboard;
pub mod egress;
pub mod explain;
pub mod flows;
pub mod hook;
pub mod metrics;
pub mod metrics_http;
pub mod next_hops;
pub mod notify;
pub mod owner;
pub mod published;
pub mod reader;
pub mod reload;
pub mod run;
pub mod server;
pub mod sweep;
pub mod tasks;
