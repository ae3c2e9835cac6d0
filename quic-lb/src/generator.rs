//! A server's source of QUIC-LB connection IDs: its configuration and server ID, and a
//! fresh nonce for every CID (draft-ietf-quic-load-balancers-21 §5.4, §9.6).

use crate::{
    Config, ConnectionId, ServerId,
    cid::{self, CidError},
};

/// Makes CIDs that encode one server ID under one configuration.
///
/// Nonces are random, from the OS, not a counter. §9.6 allows either, but a plaintext
/// configuration forbids nonces with an observable relationship to earlier ones (a counter
/// would link a client's CIDs to each other), one rule for both modes is simpler, and
/// random nonces need no state shared between the generators of several endpoints or
/// processes that hold the same server ID. The price is the birthday bound: a duplicate
/// about every 2^(4 × nonce-len) CIDs, 65,536 with the minimum 4 octets, so a long-lived
/// configuration wants 8 or more. (quinn also never hands out a CID that is still in use
/// on its endpoint: it draws again.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidGenerator {
    config: Config,
    server_id: ServerId,
    length_self_encoding: bool,
}

impl CidGenerator {
    /// `length_self_encoding`: the first octet's low 5 bits carry the CID length minus one
    /// (§3.3), else they are random. All CIDs of a configuration have the same length, so
    /// writing it gives an observer nothing that the CID's length does not.
    pub fn new(
        config: Config,
        server_id: ServerId,
        length_self_encoding: bool,
    ) -> Result<Self, CidError> {
        cid::check_server_id(&config, &server_id)?;
        Ok(Self {
            config,
            server_id,
            length_self_encoding,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn server_id(&self) -> &ServerId {
        &self.server_id
    }

    /// A new CID with a random nonce. Fails only if the OS has no randomness to give.
    pub fn generate(&self) -> Result<ConnectionId, CidError> {
        let mut nonce = [0; 18];
        let nonce = &mut nonce[..self.config.nonce_len()];
        getrandom::fill(nonce).map_err(CidError::Random)?;
        cid::encode(
            &self.config,
            &self.server_id,
            nonce,
            self.length_self_encoding,
        )
    }

    /// Whether `cid` is one of this server's: this configuration's ID and this server ID.
    pub fn is_ours(&self, cid: &[u8]) -> bool {
        cid::decode(&self.config, cid).is_ok_and(|id| id == self.server_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::config_id_of;

    #[test]
    fn cids_encode_the_server_id_with_fresh_nonces() {
        let config: Config =
            "config=3,server-id-len=2,nonce-len=6,key=000102030405060708090a0b0c0d0e0f"
                .parse()
                .unwrap();
        let ours: ServerId = "0a01".parse().unwrap();
        let generator = CidGenerator::new(config.clone(), ours, false).unwrap();
        let cids: Vec<_> = (0..64).map(|_| generator.generate().unwrap()).collect();
        for cid in &cids {
            assert_eq!(cid.as_bytes().len(), 9);
            assert_eq!(config_id_of(cid.as_bytes()[0]), 3);
            assert_eq!(cid::decode(&config, cid.as_bytes()).unwrap(), ours);
            assert!(generator.is_ours(cid.as_bytes()));
        }
        let mut distinct = cids.clone();
        distinct.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        distinct.dedup();
        assert_eq!(distinct.len(), cids.len(), "a nonce repeated in 64 draws");
        // Random low bits: 64 CIDs whose first octets all agree would be 1 in 2^315.
        assert!(
            cids.iter()
                .any(|c| c.as_bytes()[0] != cids[0].as_bytes()[0])
        );

        let theirs = CidGenerator::new(config, "0a02".parse().unwrap(), true).unwrap();
        assert!(!theirs.is_ours(cids[0].as_bytes()));
        let other_config = Config::new(4, 2, 6, generator.config().key().copied()).unwrap();
        let other = CidGenerator::new(other_config, ours, true).unwrap();
        assert!(!other.is_ours(cids[0].as_bytes()));
        assert!(!generator.is_ours(other.generate().unwrap().as_bytes()));
        assert!(!generator.is_ours(&[]));
    }

    #[test]
    fn a_server_id_of_the_wrong_length_is_refused() {
        let config = Config::new(0, 3, 5, None).unwrap();
        assert!(matches!(
            CidGenerator::new(config, "0a01".parse().unwrap(), true),
            Err(CidError::ServerIdLen {
                got: 2,
                expected: 3
            })
        ));
    }
}
