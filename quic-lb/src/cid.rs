//! QUIC-LB connection IDs (draft-ietf-quic-load-balancers-21 §3 and §5.2): the first octet
//! (config ID in the top 3 bits, then the CID length minus one or random bits), then the
//! server ID and the nonce, encrypted when the configuration has a key.
//!
//! The plaintext layout, which a datapath reads without a key:
//! `cid[0] >> 5` = config ID, `cid[1..1 + server_id_len]` = server ID,
//! `cid[1 + server_id_len..1 + server_id_len + nonce_len]` = nonce.

use std::fmt;

use thiserror::Error;

use crate::{
    Config, ServerId,
    config::{MAX_PLAINTEXT_LEN, UNROUTABLE_CONFIG_ID},
    encrypted, hex,
};

/// The longest QUIC v1 connection ID.
pub const MAX_CID_LEN: usize = 20;

/// The low 5 bits of the first octet: the CID length minus one, or random (§3.3).
const LOW_BITS: u8 = 0b1_1111;

/// The config ID of a CID's first octet: its 3 most significant bits (§3.1).
/// [`UNROUTABLE_CONFIG_ID`] (0b111) marks a CID that no configuration decodes (§3.2).
pub fn config_id_of(first_octet: u8) -> u8 {
    first_octet >> 5
}

/// A connection ID made by [`encode`]: [`Config::cid_len`] octets.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    bytes: [u8; MAX_CID_LEN],
    len: u8,
}

impl ConnectionId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl AsRef<[u8]> for ConnectionId {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", hex::encode(self.as_bytes()))
    }
}

#[derive(Debug, Error)]
pub enum CidError {
    #[error("the server id is {got} octets but the config's server-id-len is {expected}")]
    ServerIdLen { got: usize, expected: usize },
    #[error("the nonce is {got} octets but the config's nonce-len is {expected}")]
    NonceLen { got: usize, expected: usize },
    #[error("the connection id is {got} octets; this config's are {need}")]
    TooShort { got: usize, need: usize },
    #[error("the connection id has config id {found}{}, not this config's {expected}",
        if *found == UNROUTABLE_CONFIG_ID { " (unroutable)" } else { "" })]
    OtherConfig { found: u8, expected: u8 },
    #[error("the OS random number generator failed: {0}")]
    Random(getrandom::Error),
}

/// Builds a connection ID of `config` for `server_id` with `nonce` (§5.4): the first octet,
/// then server ID and nonce, encrypted as [`Config::mode`] says. The first octet's low 5
/// bits are the CID length minus one if `length_self_encoding` (§3.3), else random.
pub fn encode(
    config: &Config,
    server_id: &ServerId,
    nonce: &[u8],
    length_self_encoding: bool,
) -> Result<ConnectionId, CidError> {
    check_server_id(config, server_id)?;
    if nonce.len() != config.nonce_len() {
        return Err(CidError::NonceLen {
            got: nonce.len(),
            expected: config.nonce_len(),
        });
    }
    let len = config.cid_len();
    let low_bits = if length_self_encoding {
        (len - 1) as u8
    } else {
        let mut random = [0];
        getrandom::fill(&mut random).map_err(CidError::Random)?;
        random[0]
    };
    let mut bytes = [0; MAX_CID_LEN];
    bytes[0] = config.config_id() << 5 | low_bits & LOW_BITS;
    let nonce_start = 1 + server_id.len();
    bytes[1..nonce_start].copy_from_slice(server_id.as_bytes());
    bytes[nonce_start..len].copy_from_slice(nonce);
    if let Some(key) = config.key() {
        encrypted::encrypt(key, &mut bytes[1..len]);
    }
    Ok(ConnectionId {
        bytes,
        len: len as u8,
    })
}

/// The server ID in `cid`, a CID of `config` (§5.5). `cid` may be longer than
/// [`Config::cid_len`] (a short header does not say where the DCID ends; a server may append
/// octets of its own): only the first `cid_len` octets are read.
pub fn decode(config: &Config, cid: &[u8]) -> Result<ServerId, CidError> {
    let block = decode_block(config, cid)?;
    Ok(server_id_of(config, &block))
}

/// Errors if `server_id` is not as long as `config`'s server IDs.
pub fn check_server_id(config: &Config, server_id: &ServerId) -> Result<(), CidError> {
    if server_id.len() == config.server_id_len() {
        Ok(())
    } else {
        Err(CidError::ServerIdLen {
            got: server_id.len(),
            expected: config.server_id_len(),
        })
    }
}

/// Server ID and nonce, decrypted: the first [`Config::plaintext_len`] octets.
pub(crate) fn decode_block(
    config: &Config,
    cid: &[u8],
) -> Result<[u8; MAX_PLAINTEXT_LEN], CidError> {
    let need = config.cid_len();
    let Some(&first_octet) = cid.first().filter(|_| cid.len() >= need) else {
        return Err(CidError::TooShort {
            got: cid.len(),
            need,
        });
    };
    let found = config_id_of(first_octet);
    if found != config.config_id() {
        return Err(CidError::OtherConfig {
            found,
            expected: config.config_id(),
        });
    }
    let mut block = [0; MAX_PLAINTEXT_LEN];
    let plaintext = &mut block[..config.plaintext_len()];
    plaintext.copy_from_slice(&cid[1..need]);
    if let Some(key) = config.key() {
        encrypted::decrypt(key, plaintext);
    }
    Ok(block)
}

fn server_id_of(config: &Config, block: &[u8; MAX_PLAINTEXT_LEN]) -> ServerId {
    match ServerId::new(&block[..config.server_id_len()]) {
        Ok(id) => id,
        Err(_) => unreachable!("Config::new keeps server-id-len within 1 to 15"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;

    fn key() -> [u8; 16] {
        hex::decode("8f95f09245765f80256934e50c66207f")
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// Every (server-id-len, nonce-len) the draft allows, in every mode: the CID has the
    /// config's length and config ID, and decodes to the server ID and nonce it was made
    /// of. Encryption must change them (a no-op cipher would round-trip too).
    #[test]
    fn every_allowed_length_round_trips_in_every_mode() {
        let mut seen = [0; 3];
        for server_id_len in 1..=15u8 {
            for nonce_len in 4..=(19 - server_id_len) {
                for key in [None, Some(key())] {
                    let config_id = (server_id_len + nonce_len) % 7;
                    let config = Config::new(config_id, server_id_len, nonce_len, key).unwrap();
                    seen[config.mode() as usize] += 1;
                    let mut plaintext = [0; 19];
                    getrandom::fill(&mut plaintext).unwrap();
                    let plaintext = &plaintext[..config.plaintext_len()];
                    let (id, nonce) = plaintext.split_at(usize::from(server_id_len));
                    let server_id = ServerId::new(id).unwrap();

                    for self_encoding in [true, false] {
                        let cid = encode(&config, &server_id, nonce, self_encoding).unwrap();
                        let bytes = cid.as_bytes();
                        assert_eq!(bytes.len(), config.cid_len());
                        assert_eq!(config_id_of(bytes[0]), config_id);
                        if self_encoding {
                            assert_eq!(usize::from(bytes[0] & LOW_BITS), bytes.len() - 1);
                        }
                        assert_eq!(
                            &bytes[1..] == plaintext,
                            config.mode() == Mode::Plaintext,
                            "{config}: plaintext only without a key"
                        );
                        assert_eq!(decode(&config, bytes).unwrap(), server_id, "{config}");
                        let block = decode_block(&config, bytes).unwrap();
                        assert_eq!(&block[..plaintext.len()], plaintext, "{config}");
                    }
                }
            }
        }
        // 120 length pairs, each plaintext and keyed: 12 of them sum to 16 (single pass).
        assert_eq!(seen, [120, 12, 108]);
    }

    #[test]
    fn plaintext_layout_is_config_id_server_id_nonce() {
        let config = Config::new(5, 2, 4, None).unwrap();
        let id = ServerId::new(&[0xab, 0xcd]).unwrap();
        let cid = encode(&config, &id, &[1, 2, 3, 4], true).unwrap();
        assert_eq!(cid.as_bytes(), [0b101_00110, 0xab, 0xcd, 1, 2, 3, 4]);
    }

    #[test]
    fn bad_input_is_refused() {
        let config = Config::new(1, 2, 6, Some(key())).unwrap();
        let id = ServerId::new(&[1, 2]).unwrap();
        let long_id = ServerId::new(&[1, 2, 3]).unwrap();
        assert!(matches!(
            encode(&config, &long_id, &[0; 6], true),
            Err(CidError::ServerIdLen {
                got: 3,
                expected: 2
            })
        ));
        assert!(matches!(
            encode(&config, &id, &[0; 5], true),
            Err(CidError::NonceLen {
                got: 5,
                expected: 6
            })
        ));
        let cid = encode(&config, &id, &[0; 6], true).unwrap();
        let bytes = cid.as_bytes();
        assert!(matches!(
            decode(&config, &bytes[..8]),
            Err(CidError::TooShort { got: 8, need: 9 })
        ));
        assert!(matches!(
            decode(&config, &[]),
            Err(CidError::TooShort { got: 0, need: 9 })
        ));
        // Longer is fine: a short header's DCID runs to the end of what was read.
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(&[0xff; 4]);
        assert_eq!(decode(&config, &longer).unwrap(), id);

        let mut other = bytes.to_vec();
        other[0] = 0b111_01000;
        let err = decode(&config, &other).unwrap_err();
        assert!(matches!(
            err,
            CidError::OtherConfig {
                found: 7,
                expected: 1
            }
        ));
        assert_eq!(
            err.to_string(),
            "the connection id has config id 7 (unroutable), not this config's 1"
        );
        assert_eq!(config_id_of(0xff), UNROUTABLE_CONFIG_ID);
    }
}
