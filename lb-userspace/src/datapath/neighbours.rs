//! The next hop toward each DSR backend, kept resolved by the kernel.
//!
//! A DSR packet cannot be handed to the kernel to forward when `bpf_fib_lookup` finds no
//! neighbour (the kernel would route it to the VIP, not the backend), so the daemon asks
//! the kernel for a *managed* neighbour entry (`ip neigh add .. managed`, Linux 5.16):
//! the kernel resolves it at once and keeps it resolved, whether or not traffic flows.
//! The route lookup also tells whether a backend is on the lb's link (no gateway), which
//! dsr-l2 needs.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
};

use crate::datapath::netlink::{NetlinkError, request};

const EEXIST: i32 = 17;

/// Where the kernel's main routes send packets to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    /// The egress interface.
    pub ifindex: u32,
    /// The next hop when it is not the backend itself.
    pub gateway: Option<IpAddr>,
    /// `RTN_*` of the route: unicast (1) is the only one a backend can be behind.
    pub kind: u8,
}

impl Path {
    /// The backend shares a link with this host.
    pub fn on_link(&self) -> bool {
        self.gateway.is_none()
    }

    /// The address whose neighbour entry packets to the backend need.
    pub fn next_hop(&self, backend: IpAddr) -> IpAddr {
        self.gateway.unwrap_or(backend)
    }

    pub fn is_unicast(&self) -> bool {
        self.kind == u8::from(RouteType::Unicast)
    }
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

/// `ip route get <backend>`: the route the kernel would use now.
pub fn path_to(backend: IpAddr) -> Result<Path, NetlinkError> {
    let mut message = RouteMessage::default();
    let (family, bits) = match backend {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    message.header.address_family = family;
    message.header.destination_prefix_length = bits;
    message
        .attributes
        .push(RouteAttribute::Destination(backend.into()));
    let what = format!("route to {backend}");
    let answers = request(RouteNetlinkMessage::GetRoute(message), NLM_F_REQUEST, &what)?;
    let route = answers
        .into_iter()
        .find_map(|answer| match answer {
            RouteNetlinkMessage::NewRoute(route) => Some(route),
            _ => None,
        })
        .ok_or_else(|| NetlinkError::Decode {
            what: what.clone(),
            reason: "no route in the answer".to_owned(),
        })?;
    let mut path = Path {
        ifindex: 0,
        gateway: None,
        kind: u8::from(route.header.kind),
    };
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(ifindex) => path.ifindex = *ifindex,
            RouteAttribute::Gateway(gateway) => path.gateway = ip_of(gateway),
            // An IPv4 route through an IPv6 next hop (RFC 5549).
            RouteAttribute::Via(RouteVia::Inet6(v6)) => path.gateway = Some((*v6).into()),
            RouteAttribute::Via(RouteVia::Inet(v4)) => path.gateway = Some((*v4).into()),
            _ => {}
        }
    }
    Ok(path)
}

/// Asks the kernel to resolve `next_hop` on `ifindex` and keep it resolved (a managed
/// entry). An entry that exists already is left as it is: the kernel keeps it while it is
/// used, and once it is gone the next call makes a managed one.
pub fn keep_resolved(next_hop: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    let mut message = NeighbourMessage::default();
    message.header.family = match next_hop {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.ifindex = ifindex;
    message.header.state = NeighbourState::None;
    message
        .attributes
        .push(NeighbourAttribute::Destination(match next_hop {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    message
        .attributes
        .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    match request(
        RouteNetlinkMessage::NewNeighbour(message),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &format!("managed neighbour {next_hop}"),
    ) {
        Err(error) if error.errno() == Some(EEXIST) => Ok(()),
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any namespace routes its loopback address locally (an unprivileged read).
    #[test]
    fn loopback_is_a_local_route_without_gateway() {
        let path = path_to("127.0.0.1".parse().expect("address")).expect("route");
        assert!(path.on_link());
        assert!(!path.is_unicast(), "a local route: {path:?}");
        assert_eq!(
            path.next_hop("127.0.0.1".parse().expect("a")),
            IpAddr::from([127, 0, 0, 1])
        );
    }
}
