//! Egress interfaces the datapath could not send to: the FIB chose an interface lb is not
//! attached to, so those packets went to the kernel to forward, rewritten
//! (`pass_egress_not_attached`).
//! The datapath records their ifindex in UNATTACHED_EGRESS; the daemon warns once each.

use std::collections::BTreeSet;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError},
};
use lb_common::consts::MAP_UNATTACHED;

use crate::datapath::maps;

pub(crate) struct EgressWatch {
    map: HashMap<MapData, u32, u32>,
    warned: BTreeSet<u32>,
}

/// An unattached egress interface, by index and (if it still exists) name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unattached {
    pub(crate) ifindex: u32,
    pub(crate) name: String,
}

impl EgressWatch {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            map: HashMap::try_from(maps::take(ebpf, MAP_UNATTACHED)?)?,
            warned: BTreeSet::new(),
        })
    }

    /// Interfaces recorded since the last call that were not reported yet.
    pub(crate) fn poll(&mut self) -> Result<Vec<Unattached>, MapError> {
        let mut fresh = Vec::new();
        // The map holds at most 64 entries: a plain key walk is cheap.
        for ifindex in self.map.keys() {
            let ifindex = ifindex?;
            if self.warned.insert(ifindex) {
                fresh.push(Unattached {
                    ifindex,
                    name: interface_name(ifindex).unwrap_or_else(|| format!("ifindex {ifindex}")),
                });
            }
        }
        Ok(fresh)
    }
}

/// The name of interface `ifindex`, if it exists.
pub(crate) fn interface_name(ifindex: u32) -> Option<String> {
    use rustix::net::{AddressFamily, SocketType, netdevice::index_to_name, socket};
    // SIOCGIFNAME needs a socket, any socket.
    let socket = socket(AddressFamily::INET, SocketType::DGRAM, None).ok()?;
    index_to_name(&socket, ifindex).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_a_name_and_index_zero_has_none() {
        assert_eq!(interface_name(1).as_deref(), Some("lo"));
        assert_eq!(interface_name(0), None);
    }
}
