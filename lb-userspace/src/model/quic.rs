//! QUIC VIPs (draft-ietf-quic-load-balancers, plaintext mode): the configs a VIP accepts
//! and the server id of each of its backends, checked and assigned here. The datapath
//! sends a Handshake or short-header packet to the backend whose server id its connection
//! ID carries; `crate::control::map_sync` writes what it reads.

use std::{collections::BTreeMap, net::SocketAddr};

use quic_lb::{Config, ServerId};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::model::state::{BackendSpec, ChangeError, Proto, Service, State};

/// Config ids 0 to 6: a VIP has at most one config of each.
pub(crate) const MAX_CONFIGS: usize = 7;

/// Checks a VIP's configs: a UDP VIP, at most [`MAX_CONFIGS`], distinct config ids, one
/// server-id length for all (a backend has one server id, valid under each), no key.
pub(crate) fn check_configs(service: Service, configs: &[Config]) -> Result<(), ChangeError> {
    if configs.is_empty() {
        return Ok(());
    }
    if service.proto != Proto::Udp {
        return Err(ChangeError::QuicOnTcp(service));
    }
    if configs.len() > MAX_CONFIGS {
        return Err(ChangeError::TooManyQuicConfigs {
            service,
            count: configs.len(),
        });
    }
    if configs.iter().any(|config| config.key().is_some()) {
        return Err(ChangeError::EncryptedQuicConfig(service));
    }
    for (i, config) in configs.iter().enumerate() {
        if configs[..i]
            .iter()
            .any(|earlier| earlier.config_id() == config.config_id())
        {
            return Err(ChangeError::DuplicateQuicConfigId {
                service,
                config_id: config.config_id(),
            });
        }
        let first = &configs[0];
        if config.server_id_len() != first.server_id_len() {
            return Err(ChangeError::QuicServerIdLenDiffers {
                service,
                first: first.config_id(),
                first_len: first.server_id_len(),
                other: config.config_id(),
                other_len: config.server_id_len(),
            });
        }
    }
    Ok(())
}

/// The server-id length of a VIP's configs; `None`: not a QUIC VIP.
pub(crate) fn server_id_len(configs: &[Config]) -> Option<usize> {
    configs.first().map(Config::server_id_len)
}

/// Checks a server id the operator gave for `backend` of a VIP whose configs have
/// `server_id_len`: its length, not all zeros, and no other backend of the VIP has it.
pub(crate) fn check_server_id(
    service: Service,
    backends: &BTreeMap<SocketAddr, BackendSpec>,
    backend: SocketAddr,
    server_id: ServerId,
    server_id_len: usize,
) -> Result<(), ChangeError> {
    if server_id.len() != server_id_len {
        return Err(ChangeError::ServerIdLen {
            service,
            server_id,
            server_id_len,
        });
    }
    if server_id.as_bytes().iter().all(|&b| b == 0) {
        return Err(ChangeError::ServerIdZero(server_id));
    }
    if let Some(holder) = holder_of(backends, server_id, backend) {
        return Err(ChangeError::ServerIdInUse {
            service,
            server_id,
            holder,
        });
    }
    Ok(())
}

/// The backend other than `except` that has `server_id`, if any.
fn holder_of(
    backends: &BTreeMap<SocketAddr, BackendSpec>,
    server_id: ServerId,
    except: SocketAddr,
) -> Option<SocketAddr> {
    backends
        .iter()
        .find(|(addr, spec)| **addr != except && spec.server_id == Some(server_id))
        .map(|(addr, _)| *addr)
}

/// The server id lb gives `backend` when the operator gives none: the first
/// `server_id_len` bytes of SHA-256 of its `address:port` text, so every lb node derives
/// the same; if another backend of the VIP has it (or it is all zeros), the next value
/// up (wrapping, zero skipped) that none has. Nodes given the same backends in the same
/// order agree; an explicit `--server-id` is what makes a collision's winner certain.
pub(crate) fn derive_server_id(
    service: Service,
    backends: &BTreeMap<SocketAddr, BackendSpec>,
    backend: SocketAddr,
    server_id_len: usize,
) -> Result<ServerId, ChangeError> {
    let digest = Sha256::digest(backend.to_string().as_bytes());
    let mut value = digest[..server_id_len].to_vec();
    // Each step passes at most one taken value (or zero), so this many steps find a free
    // one if there is any.
    let taken = backends.values().filter(|b| b.server_id.is_some()).count();
    for _ in 0..=taken + 1 {
        if value.iter().any(|&b| b != 0)
            && let Ok(id) = ServerId::new(&value)
            && holder_of(backends, id, backend).is_none()
        {
            return Ok(id);
        }
        increment(&mut value);
    }
    Err(ChangeError::ServerIdsExhausted {
        service,
        server_id_len,
    })
}

/// Adds one to a big-endian number, wrapping.
fn increment(value: &mut [u8]) {
    for byte in value.iter_mut().rev() {
        let (next, carry) = byte.overflowing_add(1);
        *byte = next;
        if !carry {
            return;
        }
    }
}

/// Gives every backend of a VIP a server id for `server_id_len` (its configs' new
/// length), derived in address order; `None` takes them away (no QUIC configs).
pub(crate) fn reassign_all(
    service: Service,
    backends: &mut BTreeMap<SocketAddr, BackendSpec>,
    server_id_len: Option<usize>,
) -> Result<(), ChangeError> {
    for spec in backends.values_mut() {
        spec.server_id = None;
    }
    let Some(len) = server_id_len else {
        return Ok(());
    };
    let addrs: Vec<SocketAddr> = backends.keys().copied().collect();
    for addr in addrs {
        let id = derive_server_id(service, backends, addr, len)?;
        if let Some(spec) = backends.get_mut(&addr) {
            spec.server_id = Some(id);
        }
    }
    Ok(())
}

/// Configs as a log line or a table cell writes them: `;`-separated.
pub(crate) fn describe(configs: &[Config]) -> String {
    configs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A backend whose server id a change gave, changed or took away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ServerIdChange {
    pub(crate) service: Service,
    pub(crate) backend: SocketAddr,
    pub(crate) from: Option<ServerId>,
    pub(crate) to: Option<ServerId>,
}

/// Every backend whose server id differs from `before` to `after` (a new backend of a
/// QUIC VIP included), in VIP and address order.
pub(crate) fn server_id_changes(before: &State, after: &State) -> Vec<ServerIdChange> {
    after
        .vips
        .iter()
        .flat_map(|(service, vip)| {
            let old = before.vips.get(service);
            vip.backends.iter().filter_map(move |(backend, spec)| {
                let from = old
                    .and_then(|v| v.backends.get(backend))
                    .and_then(|b| b.server_id);
                (from != spec.server_id).then_some(ServerIdChange {
                    service: *service,
                    backend: *backend,
                    from,
                    to: spec.server_id,
                })
            })
        })
        .collect()
}

/// Why a connection ID given in hex is refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConnectionIdError {
    #[error("connection ID {0:?} is not hex (two digits a byte, no 0x)")]
    NotHex(String),
    #[error("connection ID {0:?} has {1} bytes: a routable one has 1 to 20")]
    Length(String, usize),
}

/// A connection ID written in hex (as `lb explain --quic-id` takes it): 1 to 20 bytes.
pub fn parse_connection_id(text: &str) -> Result<Vec<u8>, ConnectionIdError> {
    let not_hex = || ConnectionIdError::NotHex(text.to_owned());
    if !text.is_ascii() || !text.len().is_multiple_of(2) {
        return Err(not_hex());
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| not_hex()))
        .collect::<Result<Vec<u8>, _>>()?;
    if !(1..=quic_lb::MAX_CID_LEN).contains(&bytes.len()) {
        return Err(ConnectionIdError::Length(text.to_owned(), bytes.len()));
    }
    Ok(bytes)
}
