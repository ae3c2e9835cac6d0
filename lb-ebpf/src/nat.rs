//! Address and port rewrite: destination NAT toward a backend, source NAT back to the VIP,
//! on a packet's own headers or on the headers an ICMP error quotes. Checksums are patched
//! incrementally: the IPv4 header's, and the TCP/UDP checksum over the pseudo-header. An
//! IPv4 UDP checksum of zero means "none" and stays zero.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    consts::{IPPROTO_TCP, IPPROTO_UDP},
    service::Addr,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

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

/// Where the headers to rewrite are.
#[derive(Clone, Copy)]
pub struct Headers {
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub v4: bool,
    /// TCP and UDP get their port and checksum rewritten; other protocols only the address.
    pub proto: u8,
    /// Quoted headers (inside an ICMP error) may stop after the ports: a checksum that is
    /// not in the packet is left alone instead of failing the rewrite.
    pub quoted: bool,
}

impl Headers {
    /// A packet's own headers. A later fragment has no TCP/UDP header: only its address is
    /// rewritten (the datagram's checksum, in the first fragment, was patched there).
    pub const fn of(packet: &Packet) -> Self {
        Self {
            l3_offset: packet.l3_offset,
            l4_offset: packet.l4_offset,
            v4: packet.is_v4(),
            proto: if matches!(packet.l4, L4::Fragment) {
                0
            } else {
                packet.flow.proto
            },
            quoted: false,
        }
    }

    /// A packet's own IP header alone, for a packet with no TCP/UDP header to rewrite (a
    /// later fragment, the outer header of an ICMP error). The protocol is a constant the
    /// verifier sees, so it walks no port or checksum rewrite for these: reading it from
    /// the packet cost `lb_fragment` 86 % of its instructions.
    pub const fn ip_only(packet: &Packet) -> Self {
        Self {
            proto: 0,
            ..Self::of(packet)
        }
    }
}

/// What a rewrite changed, as checksum deltas for an enclosing checksum.
#[derive(Clone, Copy, Default)]
pub struct Changes {
    /// The address words: what a pseudo-header checksum (ICMPv6's) sees change.
    pub address: Delta,
    /// Every 16-bit word changed from the IP header on: what a checksum over these
    /// headers as data (an ICMP error quoting them) sees change.
    pub all: Delta,
}

/// Rewrites one side of the packet to `addr`:`port`.
#[inline(always)]
pub fn rewrite(
    ctx: &XdpContext,
    packet: &Packet,
    side: Side,
    addr: &Addr,
    port: u16,
) -> Result<(), OutOfBounds> {
    rewrite_headers(ctx, Headers::of(packet), side, addr, port).map(drop)
}

/// Rewrites one side of a later fragment's IP header to `addr` ([`Headers::ip_only`]).
#[inline(always)]
pub fn rewrite_address(
    ctx: &XdpContext,
    packet: &Packet,
    side: Side,
    addr: &Addr,
) -> Result<(), OutOfBounds> {
    rewrite_headers(ctx, Headers::ip_only(packet), side, addr, 0).map(drop)
}

/// Rewrites one side of the IP header at `at.l3_offset` (and, for TCP/UDP, of the header
/// at `at.l4_offset`) to `addr`:`port`, fixing the checksums inside these headers.
#[inline(always)]
pub fn rewrite_headers(
    ctx: &XdpContext,
    at: Headers,
    side: Side,
    addr: &Addr,
    port: u16,
) -> Result<Changes, OutOfBounds> {
    let mut changes = Changes::default();
    if at.v4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, at.l3_offset).ok_or(OutOfBounds)?;
        // SAFETY: bounds checked by ptr_at; byte-aligned header.
        let ip = unsafe { &mut *ip };
        let new: [u8; 4] = [addr[0], addr[1], addr[2], addr[3]];
        let field = match side {
            Side::Source => &mut ip.src_addr,
            Side::Destination => &mut ip.dst_addr,
        };
        changes.address.replace(field, &new);
        let header = changes.address;
        let old_check = u16::from_be_bytes(ip.check);
        let new_check = header.apply(old_check);
        ip.check = new_check.to_be_bytes();
        changes.all.word(old_check, new_check);
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, at.l3_offset).ok_or(OutOfBounds)?;
        // SAFETY: as above.
        let ip = unsafe { &mut *ip };
        let field = match side {
            Side::Source => &mut ip.src_addr,
            Side::Destination => &mut ip.dst_addr,
        };
        changes.address.replace(field, addr);
    }
    changes.all.add(changes.address);
    let check_at = match at.proto {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => return Ok(changes),
    };
    let ports = ptr_at::<[u8; 4]>(ctx, at.l4_offset).ok_or(OutOfBounds)?;
    // SAFETY: bounds checked.
    let ports = unsafe { &mut *ports };
    let at_port = match side {
        Side::Source => 0,
        Side::Destination => 2,
    };
    let old_port = u16::from_be_bytes([ports[at_port], ports[at_port + 1]]);
    let [high, low] = port.to_be_bytes();
    ports[at_port] = high;
    ports[at_port + 1] = low;
    let mut l4 = changes.address;
    l4.word(old_port, port);
    changes.all.word(old_port, port);
    let Some(check) = ptr_at::<[u8; 2]>(ctx, at.l4_offset + check_at) else {
        return if at.quoted {
            Ok(changes)
        } else {
            Err(OutOfBounds)
        };
    };
    // SAFETY: bounds checked.
    let check = unsafe { &mut *check };
    let old = u16::from_be_bytes(*check);
    let new = if at.proto == IPPROTO_UDP {
        if at.v4 && old == 0 {
            return Ok(changes);
        }
        // A computed zero is sent as all ones (RFC 768); IPv6 requires a checksum.
        match l4.apply(old) {
            0 => 0xffff,
            sum => sum,
        }
    } else {
        l4.apply(old)
    };
    *check = new.to_be_bytes();
    changes.all.word(old, new);
    Ok(changes)
}
