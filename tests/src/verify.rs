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

/// Panics, naming the field, when any header or checksum is wrong.
pub fn verify(bytes: &[u8]) -> Wire {
    let headers = PacketHeaders::from_ethernet_slice(bytes)
        .unwrap_or_else(|e| panic!("output does not parse: {e}"));
    let Some(LinkHeader::Ethernet2(eth)) = headers.link else {
        panic!("no Ethernet header");
    };
    let payload = headers.payload.slice();
    let transport = headers.transport.expect("a TCP or UDP header");
    let (src, dst, ttl, l4_check) = match headers.net.expect("an IP header") {
        NetHeaders::Ipv4(ip, _) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum"
            );
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
    if let Some((found, computed)) = l4_check {
        assert_eq!(found, computed.expect("checksum computable"), "L4 checksum");
    }
    let (src_port, dst_port) = match transport {
        TransportHeader::Tcp(tcp) => (tcp.source_port, tcp.destination_port),
        TransportHeader::Udp(udp) => (udp.source_port, udp.destination_port),
        other => panic!("unexpected transport {other:?}"),
    };
    Wire {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src,
        dst,
        src_port,
        dst_port,
        ttl,
        payload: payload.to_vec(),
    }
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
    let headers = PacketHeaders::from_ethernet_slice(bytes)
        .unwrap_or_else(|e| panic!("output does not parse: {e}"));
    let Some(LinkHeader::Ethernet2(eth)) = headers.link else {
        panic!("no Ethernet header");
    };
    let quoted = headers.payload.slice().to_vec();
    let (src, dst, header) = match (headers.net, headers.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Icmpv4(icmp))) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum"
            );
            assert_eq!(
                icmp.checksum,
                icmp.icmp_type.calc_checksum(&quoted),
                "ICMP checksum"
            );
            let bytes = icmp.to_bytes().to_vec();
            (IpAddr::from(ip.source), IpAddr::from(ip.destination), bytes)
        }
        (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Icmpv6(icmp))) => {
            let computed = icmp
                .icmp_type
                .calc_checksum(ip.source, ip.destination, &quoted)
                .expect("ICMPv6 checksum computable");
            assert_eq!(icmp.checksum, computed, "ICMPv6 checksum");
            let bytes = icmp.to_bytes().to_vec();
            (IpAddr::from(ip.source), IpAddr::from(ip.destination), bytes)
        }
        other => panic!("not ICMP: {other:?}"),
    };
    let mut fixed = [0u8; 8];
    fixed.copy_from_slice(&header[..8]);
    IcmpWire {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src,
        dst,
        header: fixed,
        quoted,
    }
}
