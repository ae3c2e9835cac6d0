//! quinn's `ConnectionIdGenerator` for [`CidGenerator`], so that a quinn server issues
//! QUIC-LB CIDs: `EndpointConfig::cid_generator(move || Box::new(generator.clone()))`.

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};

use crate::CidGenerator;

impl ConnectionIdGenerator for CidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        // The trait cannot fail; the only failure is an OS without randomness, where no
        // QUIC server could make keys either.
        let cid = self
            .generate()
            .expect("the OS random number generator failed");
        ConnectionId::new(cid.as_bytes())
    }

    /// quinn drops a short-header packet for an unknown connection whose CID fails this,
    /// instead of answering with a stateless reset: a packet of another server's connection
    /// (misrouted during a change of backends) then does not reset that connection.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if self.is_ours(cid) {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        self.config().cid_len()
    }

    /// CIDs are not retired on a timer: the configuration's lifetime is the load balancer's
    /// business (§3.1), and a new configuration means a new generator.
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, ServerId};

    #[test]
    fn quinn_sees_this_servers_cids_and_no_others() {
        let config: Config = "config=1,server-id-len=2,nonce-len=5".parse().unwrap();
        let ours: ServerId = "0a01".parse().unwrap();
        let mut generator = CidGenerator::new(config.clone(), ours, true).unwrap();
        assert_eq!(ConnectionIdGenerator::cid_len(&generator), 8);
        let cid = generator.generate_cid();
        assert_eq!(cid.len(), 8);
        assert_eq!(crate::decode(&config, &cid).unwrap(), ours);
        generator.validate(&cid).unwrap();

        let mut theirs = CidGenerator::new(config, "0a02".parse().unwrap(), true).unwrap();
        assert!(generator.validate(&theirs.generate_cid()).is_err());
        let mut other_config = cid.to_vec();
        other_config[0] ^= 0b011 << 5;
        assert!(
            generator
                .validate(&ConnectionId::new(&other_config))
                .is_err()
        );
        assert!(generator.validate(&ConnectionId::new(&cid[..7])).is_err());
    }
}
