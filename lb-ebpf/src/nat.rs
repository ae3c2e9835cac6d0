//! Address and port rewrite: destination NAT toward a backend, source NAT back to the VIP.
//! Checksums are patched incrementally: IPv4 header, and the TCP/UDP checksum over the
//! pseudo-header. An IPv4 UDP checksum of zero means "none" and stays zero.

use lb_common::service::Addr;
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    csum::Delta,
    parse::{L4, Packet, ptr_at},
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Why a rewrite could not happen (the verifier's bounds, in practice never).
pub struct OutOfBounds;

/// Rewrites one side of the packet to `addr`:`port` and returns the packet as it now is on
/// the wire, for the forwarding stage.
#[inline(always)]
pub fn rewrite(
    ctx: &aya_ebpf::programs::XdpContext,
    packet: &Packet,
    side: Side,
    addr: &Addr,
    port: u16,
) -> Result<Packet, OutOfBounds> {
    let mut l4 = Delta::default();
    if packet.is_v4() {
        let ip = ptr_at::<Ipv4Hdr>(ctx, packet.l3_offset).ok_or(OutOfBounds)?;
        // SAFETY: bounds checked by ptr_at; byte-aligned header.
        let ip = unsafe { &mut *ip };
        let new: [u8; 4] = [addr[0], addr[1], addr[2], addr[3]];
        let field = match side {
            Side::Source => &mut ip.src_addr,
            Side::Destination => &mut ip.dst_addr,
        };
        let mut header = Delta::default();
        header.bytes(field, &new);
        l4.bytes(field, &new);
        *field = new;
        ip.check = header.apply(u16::from_be_bytes(ip.check)).to_be_bytes();
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, packet.l3_offset).ok_or(OutOfBounds)?;
        // SAFETY: as above.
        let ip = unsafe { &mut *ip };
        let field = match side {
            Side::Source => &mut ip.src_addr,
            Side::Destination => &mut ip.dst_addr,
        };
        l4.bytes(field, addr);
        *field = *addr;
    }
    match packet.l4 {
        L4::Tcp { .. } => {
            let tcp = ptr_at::<TcpHdr>(ctx, packet.l4_offset).ok_or(OutOfBounds)?;
            // SAFETY: as above.
            let tcp = unsafe { &mut *tcp };
            let field = match side {
                Side::Source => &mut tcp.source,
                Side::Destination => &mut tcp.dest,
            };
            l4.word(u16::from_be_bytes(*field), port);
            *field = port.to_be_bytes();
            tcp.check = l4.apply(u16::from_be_bytes(tcp.check)).to_be_bytes();
        }
        L4::Udp => {
            let udp = ptr_at::<UdpHdr>(ctx, packet.l4_offset).ok_or(OutOfBounds)?;
            // SAFETY: as above.
            let udp = unsafe { &mut *udp };
            let field = match side {
                Side::Source => &mut udp.src,
                Side::Destination => &mut udp.dst,
            };
            l4.word(u16::from_be_bytes(*field), port);
            *field = port.to_be_bytes();
            let check = u16::from_be_bytes(udp.check);
            if !(packet.is_v4() && check == 0) {
                // A computed zero is sent as all ones (RFC 768); IPv6 requires a checksum.
                let updated = match l4.apply(check) {
                    0 => 0xffff,
                    sum => sum,
                };
                udp.check = updated.to_be_bytes();
            }
        }
        _ => {}
    }
    let mut rewritten = *packet;
    let (field, field_port) = match side {
        Side::Source => (&mut rewritten.flow.src, &mut rewritten.flow.src_port),
        Side::Destination => (&mut rewritten.flow.dst, &mut rewritten.flow.dst_port),
    };
    *field = *addr;
    *field_port = port;
    Ok(rewritten)
}
