//! IP fragments for the tests: a built frame split into two fragments, and the datapath's
//! output fragments read back with etherparse (IPv4 header checksum recomputed) and put
//! together again, so the UDP checksum of the whole datagram can be recomputed.

use std::net::IpAddr;

use etherparse::{
    IpNumber, Ipv4Header, Ipv6FragmentHeader, Ipv6Header, UdpHeader, ip_number::IPV6_FRAG,
};

/// Splits an untagged Ethernet frame (IPv4 without options, or IPv6 without extension
/// headers) into two IP fragments: the first carries `first` bytes of the IP payload (a
/// multiple of 8, the TCP/UDP header included), the second the rest. `id` is the
/// identification (16 bits used in IPv4).
pub fn split(frame: &[u8], first: usize, id: u32) -> [Vec<u8>; 2] {
    assert_eq!(first % 8, 0, "fragment offsets are in 8-byte units");
    let eth = &frame[..14];
    if frame[14] >> 4 == 4 {
        let (header, payload) = Ipv4Header::from_slice(&frame[14..]).expect("IPv4");
        let parts = [&payload[..first], &payload[first..]];
        core::array::from_fn(|i| {
            let mut h = header.clone();
            h.identification = id as u16;
            h.more_fragments = i == 0;
            h.dont_fragment = false;
            h.fragment_offset =
                etherparse::IpFragOffset::try_new(if i == 0 { 0 } else { (first / 8) as u16 })
                    .expect("offset");
            h.set_payload_len(parts[i].len()).expect("length");
            h.header_checksum = h.calc_header_checksum();
            let mut out = eth.to_vec();
            h.write(&mut out).expect("write");
            out.extend_from_slice(parts[i]);
            out
        })
    } else {
        let (header, payload) = Ipv6Header::from_slice(&frame[14..]).expect("IPv6");
        let parts = [&payload[..first], &payload[first..]];
        core::array::from_fn(|i| {
            let fragment = Ipv6FragmentHeader::new(
                header.next_header,
                etherparse::IpFragOffset::try_new(if i == 0 { 0 } else { (first / 8) as u16 })
                    .expect("offset"),
                i == 0,
                id,
            );
            let mut h = header.clone();
            h.next_header = IPV6_FRAG;
            h.payload_length = (Ipv6FragmentHeader::LEN + parts[i].len()) as u16;
            let mut out = eth.to_vec();
            h.write(&mut out).expect("write");
            fragment.write(&mut out).expect("write");
            out.extend_from_slice(parts[i]);
            out
        })
    }
}

/// One output fragment as etherparse reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct FragmentWire {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub id: u32,
    /// In bytes.
    pub offset: usize,
    pub more: bool,
    /// The protocol of the datagram (behind the IPv6 Fragment header).
    pub proto: IpNumber,
    /// The IPv4 header checksum, recomputed, is right (always true for IPv6).
    pub header_checksum_ok: bool,
    /// The fragment's part of the datagram.
    pub payload: Vec<u8>,
}

/// Reads an Ethernet frame (at most one VLAN tag) holding one IP fragment; `None` if it is
/// no fragment or does not parse.
pub fn inspect(frame: &[u8]) -> Option<FragmentWire> {
    let src_mac: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
    let dst_mac: [u8; 6] = frame.get(..6)?.try_into().ok()?;
    let l3 = match frame.get(12..14)? {
        [0x81, 0x00] | [0x88, 0xa8] => 18,
        _ => 14,
    };
    let ip = frame.get(l3..)?;
    match ip.first()? >> 4 {
        4 => {
            let (h, rest) = Ipv4Header::from_slice(ip).ok()?;
            let offset = usize::from(h.fragment_offset.value()) * 8;
            if !h.more_fragments && offset == 0 {
                return None;
            }
            let len = usize::from(h.total_len).checked_sub(h.header_len())?;
            Some(FragmentWire {
                src_mac,
                dst_mac,
                src: IpAddr::from(h.source),
                dst: IpAddr::from(h.destination),
                ttl: h.time_to_live,
                id: u32::from(h.identification),
                offset,
                more: h.more_fragments,
                proto: h.protocol,
                header_checksum_ok: h.header_checksum == h.calc_header_checksum(),
                payload: rest.get(..len)?.to_vec(),
            })
        }
        6 => {
            let (h, rest) = Ipv6Header::from_slice(ip).ok()?;
            if h.next_header != IPV6_FRAG {
                return None;
            }
            let (f, rest) = Ipv6FragmentHeader::from_slice(rest).ok()?;
            let len = usize::from(h.payload_length).checked_sub(Ipv6FragmentHeader::LEN)?;
            Some(FragmentWire {
                src_mac,
                dst_mac,
                src: IpAddr::from(h.source),
                dst: IpAddr::from(h.destination),
                ttl: h.hop_limit,
                id: f.identification,
                offset: usize::from(f.fragment_offset.value()) * 8,
                more: f.more_fragments,
                proto: f.next_header,
                header_checksum_ok: true,
                payload: rest.get(..len)?.to_vec(),
            })
        }
        _ => None,
    }
}

/// A UDP datagram put together from its fragments.
#[derive(Debug)]
pub struct Datagram {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// The UDP checksum, recomputed over the pseudo-header and the whole datagram, is
    /// the one carried.
    pub checksum_ok: bool,
    pub payload: Vec<u8>,
}

/// Puts fragments of one UDP datagram together (any order); panics, naming what is
/// wrong, when they are not one complete datagram or an IPv4 header checksum is wrong.
pub fn reassemble(fragments: &[FragmentWire]) -> Datagram {
    let first = fragments
        .iter()
        .find(|f| f.offset == 0)
        .expect("a first fragment");
    let mut bytes = Vec::new();
    let mut sorted: Vec<&FragmentWire> = fragments.iter().collect();
    sorted.sort_by_key(|f| f.offset);
    for f in &sorted {
        assert!(f.header_checksum_ok, "wrong IPv4 header checksum: {f:?}");
        assert_eq!((f.src, f.dst, f.id), (first.src, first.dst, first.id));
        assert_eq!(f.offset, bytes.len(), "a hole or an overlap");
        bytes.extend_from_slice(&f.payload);
    }
    assert!(
        !sorted.last().expect("fragments").more,
        "the last is missing"
    );
    assert_eq!(first.proto, etherparse::ip_number::UDP, "not UDP");
    let (udp, payload) = UdpHeader::from_slice(&bytes).expect("a UDP header");
    assert_eq!(usize::from(udp.length), bytes.len(), "UDP length");
    let computed = match (first.src, first.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => udp
            .calc_checksum_ipv4_raw(s.octets(), d.octets(), payload)
            .expect("checksum"),
        (IpAddr::V6(s), IpAddr::V6(d)) => udp
            .calc_checksum_ipv6_raw(s.octets(), d.octets(), payload)
            .expect("checksum"),
        _ => panic!("mixed families"),
    };
    Datagram {
        src: first.src,
        dst: first.dst,
        src_port: udp.source_port,
        dst_port: udp.destination_port,
        checksum_ok: udp.checksum == computed,
        payload: payload.to_vec(),
    }
}
