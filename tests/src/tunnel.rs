//! Tunnelled frames: an inner IP packet behind an outer IPv4 or IPv6 header (IPIP,
//! IPv6-in-IPv6, IPv4-in-IPv6), built and checksummed with etherparse. The decap
//! program's golden input, and the shape the balancer's DSR output will have to match.

use std::net::IpAddr;

use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header, Ipv4Options, Ipv6Header};

use crate::packets::{LB_MAC, LB_V4, LB_V6, Spec};

/// The backend that receives the tunnel.
pub const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const BACKEND_V4: [u8; 4] = [198, 18, 1, 10];
pub const BACKEND_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x10];

/// The outer IP header.
#[derive(Clone, Copy, Debug)]
pub enum Outer {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        /// 8 bytes of options (NOPs, then end of list): IHL 7.
        options: bool,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
    },
}

impl Outer {
    /// lb → backend over IPv4.
    pub const V4: Outer = Outer::V4 {
        src: LB_V4,
        dst: BACKEND_V4,
        options: false,
    };
    /// lb → backend over IPv4, with options.
    pub const V4_OPTIONS: Outer = Outer::V4 {
        src: LB_V4,
        dst: BACKEND_V4,
        options: true,
    };
    /// lb → backend over IPv6.
    pub const V6: Outer = Outer::V6 {
        src: LB_V6,
        dst: BACKEND_V6,
    };

    /// Bytes of outer IP header.
    pub const fn len(&self) -> usize {
        match self {
            Outer::V4 { options: false, .. } => 20,
            Outer::V4 { options: true, .. } => 28,
            Outer::V6 { .. } => 40,
        }
    }

    pub const fn is_empty(&self) -> bool {
        false
    }
}

/// The IP packet `spec` describes, without its Ethernet header (`spec` must be untagged).
pub fn inner(spec: &Spec, payload: &[u8]) -> Vec<u8> {
    assert!(!spec.vlan, "an inner packet has no VLAN tag");
    spec.build(payload)[14..].to_vec()
}

/// `inner` (an IP packet) behind `outer`, in an Ethernet frame lb → backend. The outer
/// protocol / next header is 4 for an IPv4 inner packet, 41 for IPv6.
pub fn encapsulate(outer: Outer, inner: &[u8]) -> Vec<u8> {
    let inner_v4 = inner[0] >> 4 == 4;
    let protocol = if inner_v4 {
        IpNumber::IPV4
    } else {
        IpNumber::IPV6
    };
    encapsulate_as(outer, protocol, inner)
}

/// `inner` (an IP packet) as dsr-gue sends it: behind `outer`, UDP from port 0xc123 to
/// `port` (checksum 0), a GUE header and lb's hop list (`hops` of the outer family,
/// `next`), in an Ethernet frame lb → backend.
pub fn encapsulate_gue(
    outer: Outer,
    inner: &[u8],
    port: u16,
    hops: &[IpAddr],
    next: u8,
) -> Vec<u8> {
    let mut list = Vec::new();
    for hop in hops {
        match hop {
            IpAddr::V4(v4) => list.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => list.extend_from_slice(&v6.octets()),
        }
    }
    let hlen = (4 + list.len()) / 4;
    let proto = if inner[0] >> 4 == 4 { 4 } else { 41 };
    let udp_len = 8 + 4 + 4 + list.len() + inner.len();
    let mut payload = Vec::with_capacity(udp_len);
    payload.extend_from_slice(&0xc123u16.to_be_bytes());
    payload.extend_from_slice(&port.to_be_bytes());
    payload.extend_from_slice(&u16::try_from(udp_len).expect("fits").to_be_bytes());
    payload.extend_from_slice(&[0, 0]);
    payload.extend_from_slice(&[u8::try_from(hlen).expect("fits"), proto, 0, 0]);
    let count = u8::try_from(hops.len()).expect("fits");
    payload.extend_from_slice(&[b'l', b'b', count, next]);
    payload.extend_from_slice(&list);
    payload.extend_from_slice(inner);
    encapsulate_as(outer, IpNumber::UDP, &payload)
}

/// `payload` behind `outer` with `protocol`, in an Ethernet frame lb → backend.
fn encapsulate_as(outer: Outer, protocol: IpNumber, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let ether_type = match outer {
        Outer::V4 { .. } => EtherType::IPV4,
        Outer::V6 { .. } => EtherType::IPV6,
    };
    Ethernet2Header {
        source: LB_MAC,
        destination: BACKEND_MAC,
        ether_type,
    }
    .write(&mut out)
    .expect("write Ethernet");
    match outer {
        Outer::V4 { src, dst, options } => {
            let mut ip = Ipv4Header::new(0, 64, protocol, src, dst).expect("IPv4 header");
            if options {
                ip.options =
                    Ipv4Options::try_from(&[1u8, 1, 1, 1, 1, 1, 1, 0][..]).expect("8 option bytes");
            }
            ip.total_len = u16::try_from(ip.header_len() + inner.len()).expect("fits");
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut out).expect("write IPv4");
        }
        Outer::V6 { src, dst } => Ipv6Header {
            payload_length: u16::try_from(inner.len()).expect("fits"),
            next_header: protocol,
            hop_limit: 64,
            source: src,
            destination: dst,
            ..Default::default()
        }
        .write(&mut out)
        .expect("write IPv6"),
    }
    out.extend_from_slice(inner);
    out
}

/// Sets the ECN field of the IP packet that starts `ip` (IPv4: recomputing its header
/// checksum; IPv6: in the traffic class).
pub fn set_ecn(ip: &mut [u8], ecn: u8) {
    assert!(ecn <= 3, "ECN is two bits");
    if ip[0] >> 4 == 4 {
        ip[1] = (ip[1] & !0b11) | ecn;
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        ip[10..12].copy_from_slice(&[0, 0]);
        let sum: u32 = ip[..header_len]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    } else {
        ip[1] = (ip[1] & !0x30) | (ecn << 4);
    }
}

/// Sends `payload` (an inner IP packet) to `dst` through a raw socket of `protocol`
/// (`IPPROTO_IPIP` or `IPPROTO_IPV6`): the kernel adds the outer header, so the calling
/// thread's namespace sends a real tunnel.
pub fn send_raw(dst: IpAddr, protocol: libc::c_int, payload: &[u8]) {
    lb_userspace::datapath::tunnel_probe::send_raw(dst, protocol, payload).unwrap_or_else(|e| {
        panic!(
            "send {} bytes to {dst} through a raw socket: {e}",
            payload.len()
        )
    });
}
