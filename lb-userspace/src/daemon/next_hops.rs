//! Keeps the next hop toward every DSR backend resolved: the datapath drops DSR packets
//! whose neighbour is unresolved (the kernel cannot forward them in its place).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use tracing::warn;

use crate::{datapath::neighbours, model::error_chain::error_chain, model::state::State};

/// The DSR backends whose next hop could not be kept resolved, warned about once each.
#[derive(Debug, Default)]
pub(crate) struct NextHops {
    unresolved: BTreeSet<IpAddr>,
}

impl NextHops {
    /// Asks the kernel to keep the next hop of every DSR backend of `state` resolved.
    /// Called after every change and every sweep.
    pub(crate) fn keep_resolved(&mut self, state: &State) {
        let backends: BTreeSet<IpAddr> = state
            .vips
            .values()
            .filter(|vip| vip.mode.is_dsr())
            .flat_map(|vip| vip.backends.keys().map(SocketAddr::ip))
            .collect();
        for backend in backends {
            let kept = neighbours::path_to(backend).and_then(|path| {
                if path.is_unicast() {
                    neighbours::keep_resolved(path.next_hop(backend), path.ifindex)
                } else {
                    Ok(())
                }
            });
            match kept {
                Ok(()) => {
                    self.unresolved.remove(&backend);
                }
                Err(error) => {
                    if self.unresolved.insert(backend) {
                        warn!(%backend, error = %error_chain(&error), "cannot keep the next hop toward a DSR backend resolved; its packets drop while unresolved (drop_dsr_no_neighbour)");
                    }
                }
            }
        }
    }
}
