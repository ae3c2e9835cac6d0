//! What the kernel says about an attached interface as a target of XDP redirects: its
//! link kind and, for a veth, where its peer is (route netlink), and whether it takes
//! frames other interfaces' XDP programs send it (`NETDEV_XDP_ACT_NDO_XMIT` from the
//! `netdev` generic netlink family, Linux 6.3 and later). A veth has that feature only
//! while its peer has NAPI (GRO or an XDP program): without it the kernel drops every
//! frame redirected to the veth.

use std::io;

use netlink_packet_core::{DefaultNla, NLM_F_REQUEST};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkInfo, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::netlink::{NetlinkError, request};

/// A veth's other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub ifindex: u32,
    /// Its name, if it could be read (from another namespace: needs CAP_NET_ADMIN there).
    pub name: Option<String>,
    /// Whether it is in another network namespace than lb's.
    pub elsewhere: bool,
}

/// An interface as a target of redirects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFacts {
    /// `IFLA_INFO_KIND` (`veth`, `bridge`...); `None` for a plain device (a NIC).
    pub kind: Option<String>,
    /// For a veth, its peer.
    pub peer: Option<Peer>,
    /// Whether it takes frames redirected from XDP (`NDO_XMIT`); `None` on a kernel
    /// without the netdev family (before 6.3).
    pub takes_redirects: Option<bool>,
}

/// `IFLA_TARGET_NETNSID` (Linux 4.20): ask about a link in the namespace of that id.
const IFLA_TARGET_NETNSID: u16 = 46;

/// Reads everything [`LinkFacts`] holds about interface `ifindex` of lb's namespace.
pub fn of_interface(ifindex: u32) -> Result<LinkFacts, NetlinkError> {
    let link = get_link(ifindex, None)?;
    let kind = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind.to_string()),
            _ => None,
        }),
        _ => None,
    });
    let peer = if kind.as_deref() == Some("veth") {
        peer_of(&link)
    } else {
        None
    };
    let takes_redirects = xdp_features(ifindex)
        .map_err(|source| NetlinkError::Request {
            what: format!("netdev family: features of link {ifindex}"),
            source,
        })?
        .map(|features| features & NETDEV_XDP_ACT_NDO_XMIT != 0);
    Ok(LinkFacts {
        kind,
        peer,
        takes_redirects,
    })
}

/// A veth's peer from its link message: `IFLA_LINK`, in `IFLA_LINK_NETNSID` if given.
fn peer_of(link: &LinkMessage) -> Option<Peer> {
    let ifindex = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })?;
    let netnsid = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) => Some(*id),
        _ => None,
    });
    // Best effort: a peer in a namespace lb may not look into keeps its index only.
    let name = get_link(ifindex, netnsid).ok().and_then(|peer| {
        peer.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name),
            _ => None,
        })
    });
    Some(Peer {
        ifindex,
        name,
        elsewhere: netnsid.is_some(),
    })
}

fn get_link(ifindex: u32, netnsid: Option<i32>) -> Result<LinkMessage, NetlinkError> {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    if let Some(id) = netnsid {
        message
            .attributes
            .push(LinkAttribute::Other(DefaultNla::new(
                IFLA_TARGET_NETNSID,
                id.to_ne_bytes().to_vec(),
            )));
    }
    let what = format!("link {ifindex}");
    request(RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST, &what)?
        .into_iter()
        .find_map(|answer| match answer {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .ok_or_else(|| NetlinkError::Decode {
            what,
            reason: "no link in the answer".to_owned(),
        })
}

// Generic netlink, written by hand: two requests of one attribute each.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `NETDEV_XDP_ACT_NDO_XMIT`: the device takes frames redirected to it by XDP.
pub const NETDEV_XDP_ACT_NDO_XMIT: u64 = 1 << 2;
const NLMSG_ERROR: u16 = 2;
const NLM_F_ACK: u16 = 4;
const HEADER: usize = 16;
const GENL_HEADER: usize = 4;

/// The `xdp-features` of interface `ifindex`; `None` when the kernel has no netdev family.
fn xdp_features(ifindex: u32) -> io::Result<Option<u64>> {
    let mut socket = Socket::new(NETLINK_GENERIC)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let family = match genl_request(
        &mut socket,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        &attribute(CTRL_ATTR_FAMILY_NAME, b"netdev\0"),
    ) {
        Ok(answer) => find_attribute(&answer, CTRL_ATTR_FAMILY_ID)
            .and_then(|id| Some(u16::from_ne_bytes(id.get(..2)?.try_into().ok()?))),
        // The controller answers ENOENT for a family the kernel does not have.
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => None,
        Err(error) => return Err(error),
    };
    let Some(family) = family else {
        return Ok(None);
    };
    let answer = genl_request(
        &mut socket,
        family,
        NETDEV_CMD_DEV_GET,
        &attribute(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
    )?;
    Ok(find_attribute(&answer, NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|value| Some(u64::from_ne_bytes(value.get(..8)?.try_into().ok()?))))
}

/// One netlink attribute: length, type, value, padded to 4 bytes.
fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let length = 4 + value.len();
    let mut bytes = Vec::with_capacity((length + 3) & !3);
    bytes.extend_from_slice(&(length as u16).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(value);
    bytes.resize((length + 3) & !3, 0);
    bytes
}

/// The value of attribute `kind` among a generic netlink answer's attributes.
fn find_attribute(attributes: &[u8], kind: u16) -> Option<&[u8]> {
    let mut offset = 0;
    while offset + 4 <= attributes.len() {
        let length = usize::from(u16::from_ne_bytes([
            attributes[offset],
            attributes[offset + 1],
        ]));
        let found = u16::from_ne_bytes([attributes[offset + 2], attributes[offset + 3]]) & 0x3fff;
        if length < 4 || offset + length > attributes.len() {
            return None;
        }
        if found == kind {
            return Some(&attributes[offset + 4..offset + length]);
        }
        offset += (length + 3) & !3;
    }
    None
}

/// Sends one generic netlink request and returns its answer's attributes; a negative
/// acknowledgement is the request's error.
fn genl_request(
    socket: &mut Socket,
    family: u16,
    command: u8,
    attributes: &[u8],
) -> io::Result<Vec<u8>> {
    let length = HEADER + GENL_HEADER + attributes.len();
    let mut message = Vec::with_capacity(length);
    message.extend_from_slice(&(length as u32).to_ne_bytes());
    message.extend_from_slice(&family.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
    message.extend_from_slice(&[command, 1, 0, 0]); // command, version, reserved
    message.extend_from_slice(attributes);
    socket.send(&message, 0)?;
    let mut answer = None;
    // An answer, then its acknowledgement; the bound keeps a confused kernel from
    // looping us.
    for _ in 0..16 {
        let (datagram, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset + HEADER <= datagram.len() {
            let length =
                u32::from_ne_bytes(datagram[offset..offset + 4].try_into().map_err(bad)?) as usize;
            let kind = u16::from_ne_bytes([datagram[offset + 4], datagram[offset + 5]]);
            if length < HEADER || offset + length > datagram.len() {
                return Err(bad(()));
            }
            if kind == NLMSG_ERROR {
                let code = i32::from_ne_bytes(
                    datagram[offset + HEADER..offset + HEADER + 4]
                        .try_into()
                        .map_err(bad)?,
                );
                return match (code, answer) {
                    (0, Some(answer)) => Ok(answer),
                    (0, None) => Err(bad(())),
                    (code, _) => Err(io::Error::from_raw_os_error(-code)),
                };
            }
            if length >= HEADER + GENL_HEADER {
                answer = Some(datagram[offset + HEADER + GENL_HEADER..offset + length].to_vec());
            }
            offset += (length + 3) & !3;
        }
    }
    Err(bad(()))
}

fn bad<E>(_: E) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "undecodable generic netlink answer",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_found_again() {
        let mut bytes = attribute(CTRL_ATTR_FAMILY_NAME, b"netdev\0");
        assert_eq!(bytes.len(), 12, "4 + 7, padded to 12");
        bytes.extend(attribute(CTRL_ATTR_FAMILY_ID, &0x1au16.to_ne_bytes()));
        assert_eq!(
            find_attribute(&bytes, CTRL_ATTR_FAMILY_NAME),
            Some(&b"netdev\0"[..])
        );
        assert_eq!(
            find_attribute(&bytes, CTRL_ATTR_FAMILY_ID),
            Some(&0x1au16.to_ne_bytes()[..])
        );
        assert_eq!(find_attribute(&bytes, 9), None);
        assert_eq!(
            find_attribute(&bytes[..6], CTRL_ATTR_FAMILY_ID),
            None,
            "cut short"
        );
    }

    /// lo is no veth; on a kernel with the netdev family it takes no redirects.
    #[test]
    fn loopback_is_read() {
        let lo = crate::datapath::attach::Interface::resolve("lo").expect("lo");
        let facts = of_interface(lo.index).expect("facts of lo");
        assert_eq!(facts.kind, None);
        assert_eq!(facts.peer, None);
        assert_ne!(facts.takes_redirects, Some(true));
    }
}
