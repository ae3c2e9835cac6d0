//! Recognises a tunnelled packet and checks its outer and inner headers before anything
//! is removed.
//!
//! Accepted: Ethernet with at most one 802.1Q / 802.1ad tag (kept), then IPv4 with
//! protocol 4 (options allowed, IHL > 5) or IPv6 whose next header is directly 41 or 4,
//! or either with UDP to the GUE port carrying lb's hop list (`gue.rs`).
//! IPv6 extension headers before the inner packet, a second VLAN tag and everything else
//! are "not encapsulated": passed untouched. A tunnel packet is malformed when a header is
//! cut short, a version or length contradicts another, the outer IPv4 header checksum is
//! wrong, or the outer IPv4 packet is a fragment (XDP sees one fragment; the stack would
//! reassemble it, but nothing above it decapsulates).

use aya_ebpf::programs::XdpContext;
use lb_common::consts::{FAMILY_V4, FAMILY_V6};
use lb_common::decap::{DecapStat, mapped_v4};

use crate::gue::{self, Gue};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

/// Offset of the ethertype in an untagged Ethernet header.
const ETHER_TYPE_AT: usize = 12;

/// Whether the frame is UDP to `gue_port` (dsr-gue) in IPv4 or IPv6, after at most one
/// VLAN tag: only the headers up to the UDP ports are read, nothing is checked.
#[inline(always)]
pub fn is_gue(ctx: &XdpContext, gue_port: u16) -> bool {
    let Ok(mut ether_type) = ether_type_at(ctx, ETHER_TYPE_AT) else {
        return false;
    };
    let mut l2_len = ETH_HEADER_LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let Ok(inner) = ether_type_at(ctx, ETH_HEADER_LEN + 2) else {
            return false;
        };
        ether_type = inner;
        l2_len = ETH_VLAN_HEADER_LEN;
    }
    let udp_at = match ether_type {
        ETH_P_IPV4 => match header::<Ipv4Hdr>(ctx, l2_len) {
            Some(ip) if ip.proto == IPPROTO_UDP => l2_len + usize::from(ip.ihl()),
            _ => return false,
        },
        ETH_P_IPV6 => match header::<Ipv6Hdr>(ctx, l2_len) {
            Some(ip) if ip.next_hdr == IPPROTO_UDP => l2_len + Ipv6Hdr::LEN,
            _ => return false,
        },
        _ => return false,
    };
    gue::to_port(ctx, udp_at, gue_port)
}
pub const ETH_HEADER_LEN: usize = 14;
/// Ethernet with one VLAN tag.
pub const ETH_VLAN_HEADER_LEN: usize = 18;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv4 in IP (RFC 2003), and IPv4 in IPv6 (RFC 2473).
const IPPROTO_IPIP: u8 = 4;
/// IPv6 in IPv6 (RFC 2473).
const IPPROTO_IPV6: u8 = 41;
/// UDP: dsr-gue when to the GUE port.
const IPPROTO_UDP: u8 = 17;
/// IPv4 "more fragments" flag and fragment offset, in the host-order `frags` word.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;

/// The ECN field: the low two bits of the IPv4 TOS byte or the IPv6 traffic class.
pub const ECN_MASK: u8 = 0b11;

/// The ECN field of an IPv6 header, from its second byte (traffic class low nibble first).
#[inline(always)]
pub const fn ipv6_ecn(second_byte: u8) -> u8 {
    (second_byte >> 4) & ECN_MASK
}

/// A tunnel packet whose headers all check out.
pub struct Tunnel {
    /// Ethernet header length, VLAN tag included: [`ETH_HEADER_LEN`] or
    /// [`ETH_VLAN_HEADER_LEN`]. The outer IP header starts here.
    pub l2_len: usize,
    /// Outer source and destination, IPv4 mapped (`lb_common::decap::mapped_v4`).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Bytes of outer IP header to remove (after the Ethernet header).
    pub outer_len: usize,
    /// Offset of the inner IP header in the frame.
    pub inner_at: usize,
    /// The outer header's ECN field (two bits).
    pub outer_ecn: u8,
    pub inner_ether_type: u16,
    /// The counter a successful strip bumps.
    pub decapsulated: DecapStat,
    /// dsr-gue: where its hop list is and what it says (`outer_len` covers UDP, GUE and
    /// the list).
    pub gue: Option<Gue>,
}

/// Start of the packet, read with a volatile load so LLVM keeps `ctx` a context pointer
/// (as in the balancer's `parse.rs`).
#[inline(always)]
pub fn data(ctx: &XdpContext) -> usize {
    // SAFETY: `ctx.ctx` is the program's context pointer, valid for the whole run.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.ctx).data) as usize }
}

/// End of the packet, read as [`data`].
#[inline(always)]
pub fn data_end(ctx: &XdpContext) -> usize {
    // SAFETY: as in `data`.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize }
}

/// A pointer to a `T` at `offset`, or `None` when the frame is too short for it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = data(ctx);
    if start + offset + size_of::<T>() > data_end(ctx) {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// A `T` at `offset`, or `None` when the frame is too short for it.
#[inline(always)]
pub fn header<'a, T>(ctx: &XdpContext, offset: usize) -> Option<&'a T> {
    // SAFETY: in bounds (checked by ptr_at); the header types are byte layouts, alignment 1.
    ptr_at::<T>(ctx, offset).map(|ptr| unsafe { &*ptr })
}

/// The tunnel in this frame, or the counter that says why it is not one.
#[inline(always)]
/// `GUE`: only dsr-gue packets to `gue_port` are tunnels (`lb_decap_gue`); without it,
/// only IPIP, IPv6-in-IPv6 and IPv4-in-IPv6 (`lb_decap`, which hands GUE to
/// `lb_decap_gue` before parsing).
pub fn parse<const GUE: bool>(ctx: &XdpContext, gue_port: u16) -> Result<Tunnel, DecapStat> {
    let mut ether_type = ether_type_at(ctx, ETHER_TYPE_AT)?;
    let mut l2_len = ETH_HEADER_LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = ether_type_at(ctx, ETH_HEADER_LEN + 2)?;
        l2_len = ETH_VLAN_HEADER_LEN;
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4::<GUE>(ctx, l2_len, gue_port),
        ETH_P_IPV6 => parse_ipv6::<GUE>(ctx, l2_len, gue_port),
        _ => Err(DecapStat::PassNotEncapsulated),
    }
}

#[inline(always)]
fn ether_type_at(ctx: &XdpContext, offset: usize) -> Result<u16, DecapStat> {
    let bytes: &[u8; 2] = header(ctx, offset).ok_or(DecapStat::PassNotEncapsulated)?;
    Ok(u16::from_be_bytes(*bytes))
}

#[inline(always)]
fn parse_ipv4<const GUE: bool>(
    ctx: &XdpContext,
    l2_len: usize,
    gue_port: u16,
) -> Result<Tunnel, DecapStat> {
    let ip: &Ipv4Hdr = header(ctx, l2_len).ok_or(DecapStat::Malformed)?;
    let is_gue = GUE
        && ip.proto == IPPROTO_UDP
        && gue::to_port(ctx, l2_len + usize::from(ip.ihl()), gue_port);
    // `lb_decap_gue` takes GUE alone, `lb_decap` IPIP alone: each verifier walk holds one.
    if is_gue != GUE || (!GUE && ip.proto != IPPROTO_IPIP) {
        return Err(DecapStat::PassNotEncapsulated);
    }
    let header_len = usize::from(ip.ihl());
    let total_len = usize::from(ip.tot_len());
    if ip.version() != 4
        || header_len < Ipv4Hdr::LEN
        || total_len < header_len
        || data(ctx) + l2_len + header_len > data_end(ctx)
        || u16::from_be_bytes(ip.frags) & IPV4_MF_AND_OFFSET != 0
        || !header_checksum_ok(ctx, l2_len, header_len)
    {
        return Err(DecapStat::Malformed);
    }
    let outer_end = l2_len + total_len;
    let outer = Outer {
        l2_len,
        ip_len: header_len,
        end: outer_end,
        family: FAMILY_V4,
    };
    let ecn = ip.tos & ECN_MASK;
    let (src, dst) = (mapped_v4(ip.src_addr), mapped_v4(ip.dst_addr));
    if is_gue {
        return gue_tunnel(ctx, &outer, src, dst, ecn);
    }
    check_inner_ipv4(ctx, l2_len + header_len, outer_end)?;
    Ok(Tunnel {
        l2_len,
        src: mapped_v4(ip.src_addr),
        dst: mapped_v4(ip.dst_addr),
        outer_len: header_len,
        inner_at: l2_len + header_len,
        outer_ecn: ecn,
        inner_ether_type: ETH_P_IPV4,
        decapsulated: DecapStat::DecapV4InV4,
        gue: None,
    })
}

#[inline(always)]
fn parse_ipv6<const GUE: bool>(
    ctx: &XdpContext,
    l2_len: usize,
    gue_port: u16,
) -> Result<Tunnel, DecapStat> {
    let ip: &Ipv6Hdr = header(ctx, l2_len).ok_or(DecapStat::Malformed)?;
    let inner_at = l2_len + Ipv6Hdr::LEN;
    let outer_end = inner_at + usize::from(ip.payload_len());
    if GUE && ip.next_hdr == IPPROTO_UDP && gue::to_port(ctx, inner_at, gue_port) {
        if ip.version() != 6 {
            return Err(DecapStat::Malformed);
        }
        let outer = Outer {
            l2_len,
            ip_len: Ipv6Hdr::LEN,
            end: outer_end,
            family: FAMILY_V6,
        };
        return gue_tunnel(ctx, &outer, ip.src_addr, ip.dst_addr, ipv6_ecn(ip.vcf[1]));
    }
    if GUE {
        return Err(DecapStat::PassNotEncapsulated);
    }
    let (inner_ether_type, decapsulated) = match ip.next_hdr {
        IPPROTO_IPV6 => (ETH_P_IPV6, DecapStat::DecapV6InV6),
        IPPROTO_IPIP => (ETH_P_IPV4, DecapStat::DecapV4InV6),
        _ => return Err(DecapStat::PassNotEncapsulated),
    };
    if ip.version() != 6 {
        return Err(DecapStat::Malformed);
    }
    if inner_ether_type == ETH_P_IPV6 {
        check_inner_ipv6(ctx, inner_at, outer_end)?;
    } else {
        check_inner_ipv4(ctx, inner_at, outer_end)?;
    }
    Ok(Tunnel {
        l2_len,
        src: ip.src_addr,
        dst: ip.dst_addr,
        outer_len: Ipv6Hdr::LEN,
        inner_at,
        outer_ecn: ipv6_ecn(ip.vcf[1]),
        inner_ether_type,
        decapsulated,
        gue: None,
    })
}

/// Where an outer IP header sits and what it spans.
pub struct Outer {
    pub l2_len: usize,
    pub ip_len: usize,
    /// Offset of the outer packet's end (from its length field).
    pub end: usize,
    pub family: u8,
}

/// A UDP packet to the GUE port: its hop list and inner packet checked (`gue::parse`).
#[inline(always)]
fn gue_tunnel(
    ctx: &XdpContext,
    outer: &Outer,
    src: [u8; 16],
    dst: [u8; 16],
    outer_ecn: u8,
) -> Result<Tunnel, DecapStat> {
    let gue = gue::parse(ctx, outer)?;
    let (inner_ether_type, outer_len) = (gue.inner_ether_type, gue.inner_at - outer.l2_len);
    if inner_ether_type == ETH_P_IPV6 {
        check_inner_ipv6(ctx, gue.inner_at, outer.end)?;
    } else {
        check_inner_ipv4(ctx, gue.inner_at, outer.end)?;
    }
    Ok(Tunnel {
        l2_len: outer.l2_len,
        src,
        dst,
        outer_len,
        inner_at: gue.inner_at,
        outer_ecn,
        inner_ether_type,
        decapsulated: DecapStat::GueTakenLastHop,
        gue: Some(gue),
    })
}

/// The inner IPv4 header is whole, and its length is exactly what the outer header
/// carries, which the frame holds.
#[inline(always)]
fn check_inner_ipv4(ctx: &XdpContext, at: usize, outer_end: usize) -> Result<(), DecapStat> {
    let inner: &Ipv4Hdr = header(ctx, at).ok_or(DecapStat::Malformed)?;
    let header_len = usize::from(inner.ihl());
    if inner.version() != 4
        || header_len < Ipv4Hdr::LEN
        || usize::from(inner.tot_len()) < header_len
        || at + usize::from(inner.tot_len()) != outer_end
        || data(ctx) + outer_end > data_end(ctx)
    {
        return Err(DecapStat::Malformed);
    }
    Ok(())
}

/// As [`check_inner_ipv4`], for an inner IPv6 header.
#[inline(always)]
fn check_inner_ipv6(ctx: &XdpContext, at: usize, outer_end: usize) -> Result<(), DecapStat> {
    let inner: &Ipv6Hdr = header(ctx, at).ok_or(DecapStat::Malformed)?;
    if inner.version() != 6
        || at + Ipv6Hdr::LEN + usize::from(inner.payload_len()) != outer_end
        || data(ctx) + outer_end > data_end(ctx)
    {
        return Err(DecapStat::Malformed);
    }
    Ok(())
}

/// The one's complement sum of the IPv4 header (at most 60 bytes) is all ones.
#[inline(always)]
fn header_checksum_ok(ctx: &XdpContext, offset: usize, header_len: usize) -> bool {
    let mut sum = 0u32;
    for word in 0..30 {
        if word * 2 >= header_len {
            break;
        }
        let Some(bytes) = header::<[u8; 2]>(ctx, offset + word * 2) else {
            return false;
        };
        sum += u32::from(u16::from_be_bytes(*bytes));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}
