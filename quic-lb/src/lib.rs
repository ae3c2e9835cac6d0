//! The server side of QUIC-LB, draft-ietf-quic-load-balancers-21 ("QUIC-LB: Generating
//! Routable QUIC Connection IDs"): connection IDs that carry a server ID, in plaintext or
//! encrypted with AES-128, so that a load balancer routes a client's packets to the same
//! server after the client's address changes.
//!
//! - [`config`]: a configuration (config ID, server ID and nonce lengths, key) and its CLI
//!   form `config=0,server-id-len=2,nonce-len=6[,key=<32 hex digits>]`.
//! - [`cid`]: the first octet, [`encode`] and [`decode`].
//! - `encrypted`: the single-pass and four-pass algorithms.
//! - [`generator`]: random nonces, and with the `quinn` feature quinn's
//!   `ConnectionIdGenerator`.

pub mod cid;
pub mod config;
mod encrypted;
pub mod generator;
mod hex;
#[cfg(feature = "quinn")]
mod quinn_generator;
pub mod server_id;

pub use cid::{CidError, ConnectionId, MAX_CID_LEN, config_id_of, decode, encode};
pub use config::{Config, ConfigError, KEY_LEN, Mode, UNROUTABLE_CONFIG_ID};
pub use generator::CidGenerator;
pub use hex::HexError;
pub use server_id::{ServerId, ServerIdError};
