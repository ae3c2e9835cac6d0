//! Header parsing with bounds checks the verifier can follow.
//!
//! Accepts Ethernet with at most one 802.1Q/802.1ad tag, IPv4 with options, IPv6, and TCP or
//! UDP above them. Anything cut short or inconsistent is reported as [`Malformed`] with the
//! layer that failed, so it is counted under its own reason.

use core::mem;

use aya_ebpf::programs::XdpContext;
use lb_common::stats::Stat;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::stats;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// A packet whose headers were cut short or contradict themselves; the reason names the layer.
pub struct Malformed(Stat);

impl Malformed {
    pub const fn reason(&self) -> Stat {
        self.0
    }
}

#[derive(Clone, Copy)]
pub enum L3 {
    V4,
    V6,
}

#[derive(Clone, Copy)]
#[allow(dead_code, reason = "the VIP lookup and rewrite stages read these")]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP, ICMPv6, IPv6 extension headers and every other protocol: not parsed further.
    Other {
        proto: u8,
    },
}

/// Offsets and fields of an IP packet; headers up to `l4_offset` are known to be in bounds.
#[allow(dead_code, reason = "the VIP lookup and rewrite stages read these")]
pub struct Packet {
    pub l3: L3,
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub l4: L4,
}

pub enum Parsed {
    NotIp,
    Ip(Packet),
}

/// Returns a pointer to a `T` at `offset`, or `None` when the packet is too short for it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn header<T>(ctx: &XdpContext, offset: usize, malformed: Stat) -> Result<&T, Malformed> {
    // SAFETY: ptr_at checked that size_of::<T>() bytes at offset are inside the packet, and
    // every header type here is a plain byte layout with alignment 1.
    ptr_at::<T>(ctx, offset)
        .map(|ptr| unsafe { &*ptr })
        .ok_or(Malformed(malformed))
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Malformed> {
    let eth: &EthHdr = header(ctx, 0, Stat::MalformedEthernet)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3_offset = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: &VlanHdr = header(ctx, l3_offset, Stat::MalformedVlan)?;
        ether_type = u16::from_be(vlan.ether_type);
        l3_offset += VlanHdr::LEN;
    }
    let (l3, l4_offset, proto) = match ether_type {
        ETH_P_IPV4 => {
            stats::count_protocol(Stat::Ipv4);
            let (l4_offset, proto) = parse_ipv4(ctx, l3_offset)?;
            (L3::V4, l4_offset, proto)
        }
        ETH_P_IPV6 => {
            stats::count_protocol(Stat::Ipv6);
            let (l4_offset, proto) = parse_ipv6(ctx, l3_offset)?;
            (L3::V6, l4_offset, proto)
        }
        _ => {
            stats::count_protocol(Stat::OtherL3);
            return Ok(Parsed::NotIp);
        }
    };
    let l4 = parse_l4(ctx, l4_offset, proto)?;
    Ok(Parsed::Ip(Packet {
        l3,
        l3_offset,
        l4_offset,
        l4,
    }))
}

/// Returns the L4 offset (after any options) and the protocol number.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Result<(usize, u8), Malformed> {
    let ip: &Ipv4Hdr = header(ctx, offset, Stat::MalformedIpv4)?;
    let header_len = usize::from(ip.ihl());
    if ip.version() != 4 || header_len < Ipv4Hdr::LEN || usize::from(ip.tot_len()) < header_len {
        return Err(Malformed(Stat::MalformedIpv4));
    }
    // Options must be present in full before anything reads past them.
    if ctx.data() + offset + header_len > ctx.data_end() {
        return Err(Malformed(Stat::MalformedIpv4));
    }
    Ok((offset + header_len, ip.proto))
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Result<(usize, u8), Malformed> {
    let ip: &Ipv6Hdr = header(ctx, offset, Stat::MalformedIpv6)?;
    if ip.version() != 6 {
        return Err(Malformed(Stat::MalformedIpv6));
    }
    Ok((offset + Ipv6Hdr::LEN, ip.next_hdr))
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, offset: usize, proto: u8) -> Result<L4, Malformed> {
    match proto {
        IPPROTO_TCP => {
            stats::count_protocol(Stat::Tcp);
            let tcp: &TcpHdr = header(ctx, offset, Stat::MalformedTcp)?;
            let header_len = usize::from(tcp.doff()) * 4;
            if header_len < TcpHdr::LEN || ctx.data() + offset + header_len > ctx.data_end() {
                return Err(Malformed(Stat::MalformedTcp));
            }
            Ok(L4::Tcp {
                src_port: u16::from_be_bytes(tcp.source),
                dst_port: u16::from_be_bytes(tcp.dest),
            })
        }
        IPPROTO_UDP => {
            stats::count_protocol(Stat::Udp);
            let udp: &UdpHdr = header(ctx, offset, Stat::MalformedUdp)?;
            if usize::from(udp.len()) < UdpHdr::LEN {
                return Err(Malformed(Stat::MalformedUdp));
            }
            Ok(L4::Udp {
                src_port: udp.src_port(),
                dst_port: udp.dst_port(),
            })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            stats::count_protocol(Stat::Icmp);
            Ok(L4::Other { proto })
        }
        _ => {
            stats::count_protocol(Stat::OtherL4);
            Ok(L4::Other { proto })
        }
    }
}
