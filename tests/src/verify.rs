//! Parses a packet the datapath produced and recomputes every checksum from scratch with
//! etherparse, so a bad incremental update cannot hide.

use std::net::IpAddr;

use etherparse::{LinkHeader, NetHeaders, PacketHeaders, TransportHeader};

/// What a forwarded packet looks like on the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct Wire {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

/// A checksum that does not match the one recomputed from scratch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadChecksum {
    Ipv4Header,
    /// TCP or UDP.
    L4,
    Icmp,
}

/// Panics, naming the field, when any header or checksum is wrong.
pub fn verify(bytes: &[u8]) -> Wire {
    let (wire, bad) = inspect(bytes);
    assert!(bad.is_empty(), "{}", describe(&bad));
    wire
}

/// What is wrong, in words (`IPv4 header checksum`, `L4 checksum`, `ICMP checksum`).
pub fn describe(bad: &[BadChecksum]) -> String {
    let names: Vec<&str> = bad
        .iter()
        .map(|b| match b {
            BadChecksum::Ipv4Header => "IPv4 header checksum",
            BadChecksum::L4 => "L4 checksum",
            BadChecksum::Icmp => "ICMP checksum",
        })
        .collect();
    format!("wrong {}", names.join(", "))
}

/// Parses a TCP or UDP packet (panicking, naming the field, when its headers are wrong) and
/// recomputes its checksums, returning the ones that do not match instead of panicking.
pub fn inspect(bytes: &[u8]) -> (Wire, Vec<BadChecksum>) {
    let mut bad = Vec::new();
    let headers = PacketHeaders::from_ethernet_slice(bytes)
        .unwrap_or_else(|e| panic!("output does not parse: {e}"));
    let Some(LinkHeader::Ethernet2(eth)) = headers.link else {
        panic!("no Ethernet header");
    };
    let payload = headers.payload.slice();
    let transport = headers.transport.expect("a TCP or UDP header");
    let (src, dst, ttl, l4_check) = match headers.net.expect("an IP header") {
        NetHeaders::Ipv4(ip, _) => {
            if ip.header_checksum != ip.calc_header_checksum() {
                bad.push(BadChecksum::Ipv4Header);
            }
            let l4 = match &transport {
                TransportHeader::Tcp(tcp) => {
                    Some((tcp.checksum, tcp.calc_checksum_ipv4(&ip, payload)))
                }
                // Zero means "no checksum" in IPv4 UDP, and must stay zero.
                TransportHeader::Udp(udp) if udp.checksum == 0 => None,
                TransportHeader::Udp(udp) => {
                    Some((udp.checksum, udp.calc_checksum_ipv4(&ip, payload)))
                }
                other => panic!("unexpected transport {other:?}"),
            };
            (
                IpAddr::from(ip.source),
                IpAddr::from(ip.destination),
                ip.time_to_live,
                l4,
            )
        }
        NetHeaders::Ipv6(ip, _) => {
            let l4 = match &transport {
                TransportHeader::Tcp(tcp) => {
                    Some((tcp.checksum, tcp.calc_checksum_ipv6(&ip, payload)))
                }
                TransportHeader::Udp(udp) => {
                    Some((udp.checksum, udp.calc_checksum_ipv6(&ip, payload)))
                }
                other => panic!("unexpected transport {other:?}"),
            };
            (
                IpAddr::from(ip.source),
                IpAddr::from(ip.destination),
                ip.hop_limit,
                l4,
            )
        }
        NetHeaders::Arp(_) => panic!("ARP"),
    };
    if let Some((found, computed)) = l4_check
        && found != computed.expect("checksum computable")
    {
        bad.push(BadChecksum::L4);
    }
    let (src_port, dst_port) = match transport {
        TransportHeader::Tcp(tcp) => (tcp.source_port, tcp.destination_port),
        TransportHeader::Udp(udp) => (udp.source_port, udp.destination_port),
        other => panic!("unexpected transport {other:?}"),
    };
    let wire = Wire {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src,
        dst,
        src_port,
        dst_port,
        ttl,
        payload: payload.to_vec(),
    };
    (wire, bad)
}

/// An ICMP message the datapath produced or translated.
#[derive(Debug, PartialEq, Eq)]
pub struct IcmpWire {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Type, code and the four bytes after the checksum (MTU for too-big messages).
    pub header: [u8; 8],
    /// What the message quotes (the packet it is about), as carried.
    pub quoted: Vec<u8>,
}

/// Parses an ICMP or ICMPv6 packet and recomputes the IPv4 header checksum and the ICMP
/// checksum (over the pseudo-header for ICMPv6) from scratch; panics when one is wrong.
pub fn verify_icmp(bytes: &[u8]) -> IcmpWire {
    let (wire, bad) = inspect_icmp(bytes);
    assert!(bad.is_empty(), "{}", describe(&bad));
    wire
}

/// [`verify_icmp`], returning the checksums that do not match instead of panicking (it
/// still panics when the headers are wrong).
pub fn inspect_icmp(bytes: &[u8]) -> (IcmpWire, Vec<BadChecksum>) {
    let mut bad = Vec::new();
    let headers = PacketHeaders::from_ethernet_slice(bytes)
        .unwrap_or_else(|e| panic!("output does not parse: {e}"));
    let Some(LinkHeader::Ethernet2(eth)) = headers.link else {
        panic!("no Ethernet header");
    };
    let quoted = headers.payload.slice().to_vec();
    let (src, dst, header) = match (headers.net, headers.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Icmpv4(icmp))) => {
            if ip.header_checksum != ip.calc_header_checksum() {
                bad.push(BadChecksum::Ipv4Header);
            }
            if icmp.checksum != icmp.icmp_type.calc_checksum(&quoted) {
                bad.push(BadChecksum::Icmp);
            }
            let bytes = icmp.to_bytes().to_vec();
            (IpAddr::from(ip.source), IpAddr::from(ip.destination), bytes)
        }
        (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Icmpv6(icmp))) => {
            let computed = icmp
                .icmp_type
                .calc_checksum(ip.source, ip.destination, &quoted)
                .expect("ICMPv6 checksum computable");
            if icmp.checksum != computed {
                bad.push(BadChecksum::Icmp);
            }
            let bytes = icmp.to_bytes().to_vec();
            (IpAddr::from(ip.source), IpAddr::from(ip.destination), bytes)
        }
        other => panic!("not ICMP: {other:?}"),
    };
    let mut fixed = [0u8; 8];
    fixed.copy_from_slice(&header[..8]);
    let wire = IcmpWire {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src,
        dst,
        header: fixed,
        quoted,
    };
    (wire, bad)
}
