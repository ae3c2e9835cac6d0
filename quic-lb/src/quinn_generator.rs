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
