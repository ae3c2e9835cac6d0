//! The kernel routing table lb announces through: one `<VIP>/32` (or `/128`) route per
//! announced VIP address, through the interface lb serves it on (`dev <IF> scope link`),
//! protocol [`ANNOUNCE_PROTOCOL`], in a table of lb's own.
//!
//! A routing daemon (BIRD's `kernel` protocol with `learn`, FRR's `redistribute table`,
//! GoBGP's zebra) picks the routes up and exports them over BGP. The table is not in any
//! `ip rule`, so the route never forwards anything: packets to the VIP reach the XDP
//! program before the kernel routes them. Kernel routes outlive the daemon, which is the
//! point: a pinned datapath keeps forwarding, and keeps being announced, while the daemon
//! restarts. And the kernel deletes a route whose interface goes down: a node whose link
//! went away stops being announced at once, and only a daemon (which also resolves the
//! backends' next hops again) announces it once more.

use std::{collections::BTreeSet, net::IpAddr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};

use crate::{
    datapath::netlink::{NetlinkError, filtered_dump, request},
    model::cluster::ANNOUNCE_PROTOCOL,
};

const ESRCH: i32 = 3;

fn message(table: u32, vip: IpAddr, ifindex: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    let (family, bits) = match vip {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    message.header.address_family = family;
    message.header.destination_prefix_length = bits;
    // Tables past 255 exist only as the attribute; the header says "see the attribute".
    message.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    message.header.protocol = RouteProtocol::Other(ANNOUNCE_PROTOCOL);
    message.header.scope = RouteScope::Link;
    message.header.kind = RouteType::Unicast;
    message
        .attributes
        .push(RouteAttribute::Destination(match vip {
            IpAddr::V4(v4) => RouteAddress::Inet(v4),
            IpAddr::V6(v6) => RouteAddress::Inet6(v6),
        }));
    message.attributes.push(RouteAttribute::Table(table));
    if ifindex != 0 {
        message.attributes.push(RouteAttribute::Oif(ifindex));
    }
    message
}

/// Announces `vip` through interface `ifindex` (idempotent).
pub fn announce(table: u32, vip: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    request(
        RouteNetlinkMessage::NewRoute(message(table, vip, ifindex)),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        &format!("announce {vip} in table {table}"),
    )
    .map(drop)
}

/// Withdraws `vip`; one already gone is withdrawn.
pub fn withdraw(table: u32, vip: IpAddr) -> Result<(), NetlinkError> {
    match request(
        RouteNetlinkMessage::DelRoute(message(table, vip, 0)),
        NLM_F_REQUEST | NLM_F_ACK,
        &format!("withdraw {vip} from table {table}"),
    ) {
        Err(error) if error.errno() == Some(ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// The VIP addresses lb's routes announce in `table` now (routes of other protocols in the
/// table are someone else's and left alone).
pub fn announced(table: u32) -> Result<BTreeSet<IpAddr>, NetlinkError> {
    Ok(lb_routes(Some(table))?
        .into_iter()
        .filter(|(t, _, _)| *t == table)
        .map(|(_, vip, _)| vip)
        .collect())
}

/// Withdraws lb's routes through any of `ifindexes` (the interfaces a datapath is attached
/// to), from every table: `lb down` without a daemon, which knows no table. Another lb's
/// routes (through other interfaces) stay. Returns what it withdrew.
pub fn withdraw_through(ifindexes: &[u32]) -> Result<Vec<(u32, IpAddr)>, NetlinkError> {
    let mut withdrawn = Vec::new();
    for (table, vip, oif) in lb_routes(None)? {
        if ifindexes.contains(&oif) {
            withdraw(table, vip)?;
            withdrawn.push((table, vip));
        }
    }
    Ok(withdrawn)
}

/// Every route of lb's protocol, in `table` or in any: (table, VIP, interface). The kernel
/// filters the dump, so a node with a full routing table is not read whole every sweep.
fn lb_routes(table: Option<u32>) -> Result<BTreeSet<(u32, IpAddr, u32)>, NetlinkError> {
    let mut found = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        query.header.protocol = RouteProtocol::Other(ANNOUNCE_PROTOCOL);
        if let Some(table) = table {
            query.attributes.push(RouteAttribute::Table(table));
        }
        let answers = filtered_dump(RouteNetlinkMessage::GetRoute(query), "route dump")?;
        for answer in answers {
            let RouteNetlinkMessage::NewRoute(route) = answer else {
                continue;
            };
            if route.header.protocol != RouteProtocol::Other(ANNOUNCE_PROTOCOL) {
                continue;
            }
            let mut in_table = u32::from(route.header.table);
            let mut destination = None;
            let mut oif = 0;
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Table(id) => in_table = *id,
                    RouteAttribute::Oif(index) => oif = *index,
                    RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                        destination = Some(IpAddr::V4(*v4));
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                        destination = Some(IpAddr::V6(*v6));
                    }
                    _ => {}
                }
            }
            let host = route.header.destination_prefix_length
                == if family == AddressFamily::Inet {
                    32
                } else {
                    128
                };
            if let (true, Some(vip)) = (host, destination) {
                found.insert((in_table, vip, oif));
            }
        }
    }
    Ok(found)
}
