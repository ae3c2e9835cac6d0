//! QUIC VIPs (draft-ietf-quic-load-balancers, plaintext mode): the configs a VIP accepts
//! and the server id of each of its backends, checked and assigned here. The datapath
//! sends a Handshake or short-header packet to the backend whose server id its connection
//! ID carries; `crate::control::map_sync` writes what it reads.

use std::net::SocketAddr;

use quic_lb::{Config, ServerId};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Config ids 0 to 6: a VIP has at most one config of each.
pub(crate) const MAX_CONFIGS: usize = 7;

/// Why a VIP's QUIC configs or a backend's server id are refused; the model names the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    TooManyConfigs(usize),
    Encrypted,
    DuplicateConfigId(u8),
    ServerIdLenDiffers {
        first: u8,
        first_len: usize,
        other: u8,
        other_len: usize,
    },
    ServerIdLen {
        server_id: ServerId,
        server_id_len: usize,
    },
    ServerIdZero(ServerId),
    ServerIdInUse {
        server_id: ServerId,
        holder: SocketAddr,
    },
    Exhausted {
        server_id_len: usize,
    },
}

/// The server ids a VIP's backends have now, by backend.
pub(crate) type Taken = [(SocketAddr, ServerId)];

/// Checks a UDP VIP's configs: at most [`MAX_CONFIGS`], distinct config ids, one
/// server-id length for all (a backend has one server id, valid under each), no key.
pub(crate) fn check_configs(configs: &[Config]) -> Result<(), Refusal> {
    if configs.len() > MAX_CONFIGS {
        return Err(Refusal::TooManyConfigs(configs.len()));
    }
    if configs.iter().any(|config| config.key().is_some()) {
        return Err(Refusal::Encrypted);
    }
    for (i, config) in configs.iter().enumerate() {
        if configs[..i]
            .iter()
            .any(|earlier| earlier.config_id() == config.config_id())
        {
            return Err(Refusal::DuplicateConfigId(config.config_id()));
        }
        let first = &configs[0];
        if config.server_id_len() != first.server_id_len() {
            return Err(Refusal::ServerIdLenDiffers {
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
    taken: &Taken,
    backend: SocketAddr,
    server_id: ServerId,
    server_id_len: usize,
) -> Result<(), Refusal> {
    if server_id.len() != server_id_len {
        return Err(Refusal::ServerIdLen {
            server_id,
            server_id_len,
        });
    }
    if server_id.as_bytes().iter().all(|&b| b == 0) {
        return Err(Refusal::ServerIdZero(server_id));
    }
    if let Some(holder) = holder_of(taken, server_id, backend) {
        return Err(Refusal::ServerIdInUse { server_id, holder });
    }
    Ok(())
}

/// The backend other than `except` that has `server_id`, if any.
fn holder_of(taken: &Taken, server_id: ServerId, except: SocketAddr) -> Option<SocketAddr> {
    taken
        .iter()
        .find(|(addr, id)| *addr != except && *id == server_id)
        .map(|(addr, _)| *addr)
}

/// The server id lb gives `backend` when the operator gives none: the first
/// `server_id_len` bytes of SHA-256 of its `address:port` text, so every lb node derives
/// the same; if another backend of the VIP has it (or it is all zeros), the next value
/// up (wrapping, zero skipped) that none has. Nodes given the same backends in the same
/// order agree; an explicit `--server-id` is what makes a collision's winner certain.
pub(crate) fn derive_server_id(
    taken: &Taken,
    backend: SocketAddr,
    server_id_len: usize,
) -> Result<ServerId, Refusal> {
    let digest = Sha256::digest(backend.to_string().as_bytes());
    let mut value = digest[..server_id_len].to_vec();
    // Each step passes at most one taken value (or zero), so this many steps find a free
    // one if there is any.
    for _ in 0..=taken.len() + 1 {
        if value.iter().any(|&b| b != 0)
            && let Ok(id) = ServerId::new(&value)
            && holder_of(taken, id, backend).is_none()
        {
            return Ok(id);
        }
        increment(&mut value);
    }
    Err(Refusal::Exhausted { server_id_len })
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

/// Configs as a log line or a table cell writes them: `;`-separated.
pub(crate) fn describe(configs: &[Config]) -> String {
    configs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::{Change, Proto, Service, State, server_id_changes};

    fn udp(addr: &str) -> Service {
        Service {
            addr: addr.parse().expect("address"),
            proto: Proto::Udp,
        }
    }

    fn configs(texts: &[&str]) -> Vec<Config> {
        texts
            .iter()
            .map(|t| t.parse().expect("a valid config"))
            .collect()
    }

    fn id(hex: &str) -> ServerId {
        hex.parse().expect("a valid server id")
    }

    fn add(service: Service, backend: &str, server_id: Option<ServerId>) -> Change {
        Change::AddBackend {
            service,
            backend: backend.parse().expect("address"),
            weight: 100,
            server_id,
        }
    }

    /// A UDP VIP with configs `quic` and no backends.
    fn quic_vip(service: Service, quic: &[&str]) -> State {
        let mut state = State::default();
        state.apply(&Change::AddVip(service)).expect("VIP");
        state
            .apply(&Change::SetQuic {
                service,
                configs: configs(quic),
            })
            .expect("configs");
        state
    }

    fn server_id_of(state: &State, service: Service, backend: &str) -> Option<ServerId> {
        let addr: SocketAddr = backend.parse().expect("address");
        state.vips[&service].backends[&addr].server_id
    }

    const TWO: &str = "config=0,server-id-len=2,nonce-len=6";

    #[test]
    fn a_derived_server_id_is_the_hash_of_the_address_on_every_node() {
        let vip = udp("198.18.1.1:443");
        let mut one = quic_vip(vip, &[TWO]);
        let mut other = quic_vip(vip, &[TWO]);
        for state in [&mut one, &mut other] {
            state
                .apply(&add(vip, "198.18.2.1:443", None))
                .expect("backend");
        }
        let digest = Sha256::digest(b"198.18.2.1:443");
        let expected = ServerId::new(&digest[..2]).expect("2 bytes");
        assert_eq!(server_id_of(&one, vip, "198.18.2.1:443"), Some(expected));
        assert_eq!(one, other, "two nodes derive the same");
    }

    #[test]
    fn a_collision_takes_the_next_free_value() {
        let vip = udp("198.18.1.1:443");
        let mut state = quic_vip(vip, &[TWO]);
        let digest = Sha256::digest(b"198.18.2.2:443");
        let mut taken = [digest[0], digest[1]];
        // The operator gave another backend the value 198.18.2.2:443 hashes to, and the
        // one after it.
        let first = ServerId::new(&taken).expect("2 bytes");
        state
            .apply(&add(vip, "198.18.2.1:443", Some(first)))
            .expect("explicit");
        increment(&mut taken);
        let second = ServerId::new(&taken).expect("2 bytes");
        state
            .apply(&add(vip, "198.18.2.3:443", Some(second)))
            .expect("explicit");
        state
            .apply(&add(vip, "198.18.2.2:443", None))
            .expect("derived");
        increment(&mut taken);
        assert_eq!(
            server_id_of(&state, vip, "198.18.2.2:443"),
            Some(ServerId::new(&taken).expect("2 bytes"))
        );
    }

    #[test]
    fn increments_wrap_and_zero_is_never_given() {
        let mut value = [0x00, 0xff];
        increment(&mut value);
        assert_eq!(value, [0x01, 0x00]);
        let mut value = [0xff, 0xff];
        increment(&mut value);
        assert_eq!(value, [0, 0]);
        // A one-byte server id: 255 values, then none left.
        let vip = udp("198.18.1.1:443");
        let mut state = quic_vip(vip, &["config=1,server-id-len=1,nonce-len=4"]);
        for i in 0..255u32 {
            let backend = format!("198.18.{}.{}:443", 2 + i / 200, 1 + i % 200);
            state
                .apply(&add(vip, &backend, None))
                .expect("a free server id");
        }
        let ids: std::collections::HashSet<Vec<u8>> = state.vips[&vip]
            .backends
            .values()
            .map(|b| b.server_id.expect("given").as_bytes().to_vec())
            .collect();
        assert_eq!(ids.len(), 255, "all distinct");
        assert!(!ids.contains(&vec![0]), "zero is never given");
        let before = state.clone();
        let error = state
            .apply(&add(vip, "198.18.9.9:443", None))
            .expect_err("none left");
        assert!(
            error
                .to_string()
                .contains("every 1-byte server id is taken"),
            "{error}"
        );
        assert_eq!(state, before);
    }

    #[test]
    fn explicit_server_ids_are_checked_and_refusals_change_nothing() {
        let vip = udp("198.18.1.1:443");
        let tcp = Service {
            proto: Proto::Tcp,
            ..vip
        };
        let plain = udp("198.18.1.2:443");
        let mut state = quic_vip(vip, &[TWO]);
        state.apply(&Change::AddVip(tcp)).expect("TCP VIP");
        state.apply(&Change::AddVip(plain)).expect("plain VIP");
        state
            .apply(&add(vip, "198.18.2.1:443", Some(id("0a1b"))))
            .expect("explicit");
        state
            .apply(&add(vip, "198.18.2.2:443", None))
            .expect("derived");
        assert_eq!(
            server_id_of(&state, vip, "198.18.2.1:443"),
            Some(id("0a1b"))
        );
        let before = state.clone();
        let set = |backend: &str, server_id| Change::SetBackend {
            service: vip,
            backend: backend.parse().expect("address"),
            weight: None,
            undrain: false,
            server_id: Some(server_id),
        };
        let cases = [
            (
                add(vip, "198.18.2.3:443", Some(id("0a1b"))),
                "server id 0a1b is already backend 198.18.2.1:443's on VIP 198.18.1.1:443/udp",
            ),
            (
                add(vip, "198.18.2.3:443", Some(id("0a1b2c"))),
                "server id 0a1b2c has 3 byte(s) but VIP 198.18.1.1:443/udp's QUIC configs have server-id-len 2",
            ),
            (add(vip, "198.18.2.3:443", Some(id("0000"))), "all zeros"),
            (
                add(plain, "198.18.2.3:443", Some(id("0a1b"))),
                "VIP 198.18.1.2:443/udp has no QUIC config",
            ),
            (
                set("198.18.2.2:443", id("0a1b")),
                "already backend 198.18.2.1:443's",
            ),
            (set("198.18.2.9:443", id("0c0d")), "has no backend"),
            (
                Change::SetQuic {
                    service: tcp,
                    configs: configs(&[TWO]),
                },
                "VIP 198.18.1.1:443/tcp is TCP: QUIC configs are for UDP VIPs",
            ),
            (
                Change::SetQuic {
                    service: vip,
                    configs: configs(&[
                        "config=0,server-id-len=2,nonce-len=6,key=8f95f09245765f80256934e50c66207f",
                    ]),
                },
                "encrypted QUIC-LB configs are not supported by the datapath yet; use a plaintext config (no key)",
            ),
            (
                Change::SetQuic {
                    service: vip,
                    configs: configs(&[TWO, "config=0,server-id-len=2,nonce-len=8"]),
                },
                "config id 0 is given twice",
            ),
            (
                Change::SetQuic {
                    service: vip,
                    configs: configs(&[TWO, "config=1,server-id-len=3,nonce-len=6"]),
                },
                "config 0 has server-id-len 2 but config 1 has 3",
            ),
            (
                Change::SetQuic {
                    service: udp("198.18.1.9:443"),
                    configs: configs(&[TWO]),
                },
                "no VIP",
            ),
        ];
        for (change, message) in cases {
            let error = state.apply(&change).expect_err("must be refused");
            assert!(error.to_string().contains(message), "{change:?}: {error}");
            assert_eq!(state, before, "{change:?} changed the state");
        }
        let eight: Vec<String> = (0..8)
            .map(|i| format!("config={},server-id-len=2,nonce-len=6", i % 7))
            .collect();
        let eight: Vec<&str> = eight.iter().map(String::as_str).collect();
        let error = state
            .apply(&Change::SetQuic {
                service: vip,
                configs: configs(&eight),
            })
            .expect_err("8 configs");
        assert!(error.to_string().contains("at most 7"), "{error}");
        state
            .apply(&set("198.18.2.2:443", id("0c0d")))
            .expect("a free server id");
        assert_eq!(
            server_id_of(&state, vip, "198.18.2.2:443"),
            Some(id("0c0d"))
        );
    }

    #[test]
    fn a_new_server_id_length_reassigns_and_no_quic_removes_them() {
        let vip = udp("198.18.1.1:443");
        let mut state = quic_vip(vip, &[TWO]);
        state
            .apply(&add(vip, "198.18.2.1:443", Some(id("0a1b"))))
            .expect("explicit");
        state
            .apply(&add(vip, "198.18.2.2:443", None))
            .expect("derived");
        let before = state.clone();
        // A second config of the same length: every server id stays.
        state
            .apply(&Change::SetQuic {
                service: vip,
                configs: configs(&["config=1,server-id-len=2,nonce-len=8", TWO]),
            })
            .expect("rotation");
        assert_eq!(state.vips[&vip].backends, before.vips[&vip].backends);
        // Another length: every backend gets a derived id of it, explicit ones too.
        state
            .apply(&Change::SetQuic {
                service: vip,
                configs: configs(&["config=2,server-id-len=3,nonce-len=6"]),
            })
            .expect("new length");
        for backend in ["198.18.2.1:443", "198.18.2.2:443"] {
            let addr: SocketAddr = backend.parse().expect("address");
            let digest = Sha256::digest(backend.as_bytes());
            assert_eq!(
                server_id_of(&state, vip, backend),
                Some(ServerId::new(&digest[..3]).expect("3 bytes")),
                "{addr}"
            );
        }
        let changes = server_id_changes(&before, &state);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(changes[0].from, Some(id("0a1b")));
        state
            .apply(&Change::SetQuic {
                service: vip,
                configs: Vec::new(),
            })
            .expect("no quic");
        assert!(
            state.vips[&vip]
                .backends
                .values()
                .all(|b| b.server_id.is_none())
        );
        assert_eq!(
            Change::SetQuic {
                service: vip,
                configs: configs(&[TWO])
            }
            .to_string(),
            "vip set 198.18.1.1:443/udp quic config=0,server-id-len=2,nonce-len=6"
        );
    }

    #[test]
    fn connection_ids_are_hex_of_1_to_20_bytes() {
        assert_eq!(parse_connection_id("0A1b"), Ok(vec![0x0a, 0x1b]));
        for (text, reason) in [
            ("", "0 bytes"),
            ("abc", "not hex"),
            ("0x0a", "not hex"),
            ("é0", "not hex"),
            (&"00".repeat(21), "21 bytes"),
        ] {
            let error = parse_connection_id(text).expect_err(text);
            assert!(error.to_string().contains(reason), "{text}: {error}");
        }
    }
}
