//! A server ID (draft-ietf-quic-load-balancers-21 §5.1): 1 to 15 octets that the load
//! balancer maps to one server, written in hex on the command line.

use std::{fmt, str::FromStr};

use thiserror::Error;

use crate::hex::{self, HexError};

const MAX_LEN: usize = 15;

/// One server's ID: 1 to 15 octets (§5.1, and the YANG model's server-id-length).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerId {
    bytes: [u8; MAX_LEN],
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ServerIdError {
    #[error("a server id is 1 to 15 octets, not {0}")]
    Len(usize),
    #[error("server id: {0}")]
    Hex(#[from] HexError),
}

impl ServerId {
    pub fn new(bytes: &[u8]) -> Result<Self, ServerIdError> {
        if !(1..=MAX_LEN).contains(&bytes.len()) {
            return Err(ServerIdError::Len(bytes.len()));
        }
        let mut id = Self {
            bytes: [0; MAX_LEN],
            len: bytes.len() as u8,
        };
        id.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(id)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
}

/// Hex, as the draft's test vectors write server IDs: `--server-id 0a01`.
impl FromStr for ServerId {
    type Err = ServerIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(&hex::decode(text)?)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.as_bytes()))
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_fifteen_octets_of_hex() {
        let id: ServerId = "0A01".parse().unwrap();
        assert_eq!(id.as_bytes(), [0x0a, 0x01]);
        assert_eq!(id.to_string(), "0a01");
        assert_eq!(id.len(), 2);
        assert_eq!(ServerId::new(&[]), Err(ServerIdError::Len(0)));
        assert_eq!(ServerId::new(&[7; 16]), Err(ServerIdError::Len(16)));
        assert_eq!(ServerId::new(&[7; 15]).map(|id| id.len()), Ok(15));
        assert_eq!(
            "".parse::<ServerId>().unwrap_err().to_string(),
            "a server id is 1 to 15 octets, not 0"
        );
        assert!(matches!(
            "0x01".parse::<ServerId>(),
            Err(ServerIdError::Hex(HexError::NotHex { bad: 'x', .. }))
        ));
    }
}
