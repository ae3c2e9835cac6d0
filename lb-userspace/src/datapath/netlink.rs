//! Route netlink, blocking: an interface's addresses, adding and removing one, and which
//! XDP program an interface runs (for `lb decap`); the route and managed neighbour of a DSR
//! backend are in [`super::neighbours`].
//!
//! Messages are rust-netlink's (`netlink-packet-route`, what `rtnetlink` builds on) over its
//! plain socket (`netlink-sys`), one request and its answer at a time: no async runtime.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink socket")]
    Socket(#[source] io::Error),
    #[error("netlink {what}")]
    Request {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink {what}: undecodable answer ({reason})")]
    Decode { what: String, reason: String },
}

impl NetlinkError {
    /// The errno the kernel answered with, if it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Socket(source) | Self::Request { source, .. } => source.raw_os_error(),
            Self::Decode { .. } => None,
        }
    }
}

/// An address as the kernel lists it on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// `RT_SCOPE_*`: 0 universe, 200 site, 253 link, 254 host.
    pub scope: u8,
}

/// The XDP program an interface runs, as `ip link` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceXdp {
    pub program_id: u32,
    /// `native`, `skb`, `hw` or `multi`.
    pub mode: &'static str,
}

/// Every address of interface `ifindex`, both families.
pub fn addresses(ifindex: u32) -> Result<Vec<InterfaceAddress>, NetlinkError> {
    let answers = request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
        "address dump",
    )?;
    Ok(answers
        .into_iter()
        .filter_map(|message| match message {
            RouteNetlinkMessage::NewAddress(message) => address_of(&message),
            _ => None,
        })
        .filter(|address| address.ifindex == ifindex)
        .collect())
}

fn address_of(message: &AddressMessage) -> Option<InterfaceAddress> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
    // point-to-point IPv4 link and the only one IPv6 sends.
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(addr) => Some(*addr),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(addr) => Some(*addr),
        _ => None,
    });
    Some(InterfaceAddress {
        ifindex: message.header.index,
        addr: local.or(address)?,
        prefix_len: message.header.prefix_len,
        scope: u8::from(message.header.scope),
    })
}

fn address_message(ifindex: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.index = ifindex;
    message.header.prefix_len = prefix_len;
    message.header.scope = AddressScope::Universe;
    match addr {
        IpAddr::V4(_) => {
            message.header.family = AddressFamily::Inet;
            message.attributes.push(AddressAttribute::Local(addr));
            message.attributes.push(AddressAttribute::Address(addr));
        }
        IpAddr::V6(_) => {
            message.header.family = AddressFamily::Inet6;
            message.attributes.push(AddressAttribute::Address(addr));
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    message
}

/// Adds `addr/prefix_len` to interface `ifindex`; an address already there is refused
/// (`EEXIST`), never replaced.
pub fn add_address(ifindex: u32, addr: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
    request(
        RouteNetlinkMessage::NewAddress(address_message(ifindex, addr, prefix_len)),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &format!("adding {addr}/{prefix_len}"),
    )
    .map(drop)
}

/// Removes `addr/prefix_len` from interface `ifindex` (`EADDRNOTAVAIL` when absent).
pub fn delete_address(ifindex: u32, addr: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
    request(
        RouteNetlinkMessage::DelAddress(address_message(ifindex, addr, prefix_len)),
        NLM_F_REQUEST | NLM_F_ACK,
        &format!("removing {addr}/{prefix_len}"),
    )
    .map(drop)
}

/// The XDP program attached to interface `ifindex`, if any.
pub fn xdp_program(ifindex: u32) -> Result<Option<InterfaceXdp>, NetlinkError> {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    let answers = request(
        RouteNetlinkMessage::GetLink(message),
        NLM_F_REQUEST,
        &format!("link {ifindex}"),
    )?;
    let xdp = answers.into_iter().find_map(|message| match message {
        RouteNetlinkMessage::NewLink(link) => link.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        }),
        _ => None,
    });
    let Some(xdp) = xdp else {
        return Ok(None);
    };
    let mode = xdp.iter().find_map(|x| match x {
        LinkXdp::Attached(XdpAttached::Driver) => Some("native"),
        LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("skb"),
        LinkXdp::Attached(XdpAttached::Hardware) => Some("hw"),
        LinkXdp::Attached(XdpAttached::Multiple) => Some("multi"),
        _ => None,
    });
    let program_id = xdp.iter().find_map(|x| match x {
        LinkXdp::ProgId(id) => Some(*id),
        _ => None,
    });
    Ok(match (mode, program_id) {
        (Some(mode), Some(program_id)) => Some(InterfaceXdp { program_id, mode }),
        _ => None,
    })
}

/// Sends one request and collects the answers: a dump's messages up to `NLMSG_DONE`, or
/// the single answer (or acknowledgement) of anything else. A negative acknowledgement is
/// the request's error.
pub(crate) fn request(
    message: RouteNetlinkMessage,
    flags: u16,
    what: &str,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    exchange(message, flags, what, false)
}

/// A dump the kernel filters by the request's fields (`NETLINK_GET_STRICT_CHK`): a route
/// dump of one protocol and table answers with those routes only, not the whole FIB.
pub(crate) fn filtered_dump(
    message: RouteNetlinkMessage,
    what: &str,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    exchange(message, NLM_F_REQUEST | NLM_F_DUMP, what, true)
}

fn exchange(
    message: RouteNetlinkMessage,
    flags: u16,
    what: &str,
    strict: bool,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let failed = |source| NetlinkError::Request {
        what: what.to_owned(),
        source,
    };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
    if strict {
        socket
            .set_netlink_get_strict_chk(true)
            .map_err(NetlinkError::Socket)?;
    }
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Socket)?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buffer = vec![0; packet.buffer_len()];
    packet.serialize(&mut buffer);
    socket.send(&buffer, 0).map_err(failed)?;

    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut answers = Vec::new();
    // A dump of a few thousand addresses fits in a few datagrams; the bound only keeps a
    // misbehaving kernel from looping us forever.
    for _ in 0..100_000 {
        let (datagram, _) = socket.recv_from_full().map_err(failed)?;
        let mut offset = 0;
        while offset < datagram.len() {
            let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                .map_err(|e| NetlinkError::Decode {
                    what: what.to_owned(),
                    reason: e.to_string(),
                })?;
            let length = parsed.header.length as usize;
            match parsed.payload {
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(error) => {
                    return match error.code {
                        None => Ok(answers),
                        Some(_) => Err(failed(error.to_io())),
                    };
                }
                NetlinkPayload::InnerMessage(inner) => {
                    answers.push(inner);
                    if !dump && flags & NLM_F_ACK == 0 {
                        return Ok(answers);
                    }
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            // Messages are aligned to 4 bytes.
            offset += (length + 3) & !3;
        }
    }
    Err(NetlinkError::Decode {
        what: what.to_owned(),
        reason: "no end of answer".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any namespace lists lo's 127.0.0.1 (an unprivileged read).
    #[test]
    fn loopback_lists_its_address() {
        let lo = crate::datapath::attach::Interface::resolve("lo").expect("lo");
        let addresses = addresses(lo.index).expect("dump addresses");
        assert!(
            addresses
                .iter()
                .any(|a| a.addr == IpAddr::from([127, 0, 0, 1]) && a.prefix_len == 8),
            "{addresses:?}"
        );
        assert_eq!(xdp_program(lo.index).expect("link"), None);
    }
}
