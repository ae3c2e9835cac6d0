//! Makes the datapath match the model: `MapSync` writes the maps in an order no packet
//! can see half-done, and the checker runs the health probes.

pub mod announcer;
pub mod checker;
pub mod local_macs;
pub mod map_sync;
pub mod map_writer;
pub mod probe;
