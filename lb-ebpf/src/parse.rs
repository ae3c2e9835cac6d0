//! Header parsing with bounds checks the verifier can follow.
//!
//! Accepts Ethernet with at most one 802.1Q/802.1ad tag, IPv4 with options, IPv6 (with a
//! Fragment header directly after the fixed header, or none), and TCP or UDP above them:
//! in the first fragment of a datagram too, which carries the ports. Anything cut short or inconsistent is reported as [`Malformed`] with the
//! layer that failed, so it is counted under its own reason.

use core::mem;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    consts::{
        ABLATE_IPV4_CHECKSUM, ADDRESS_BACKEND, ADDRESS_VIP, FAMILY_V4, FAMILY_V6, IPPROTO_TCP,
        IPPROTO_UDP,
    },
    flow::FlowKey,
    service::Addr,
    stats::Stat,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::{maps::ablated, stats};

/// Where the IP header of a frame without a VLAN tag starts.
pub const UNTAGGED_L3_OFFSET: usize = EthHdr::LEN;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// The fixed part of an ICMP or ICMPv6 message: type, code, checksum and 4 more bytes.
pub const ICMP_HEADER: usize = 8;
/// IPv4 "more fragments" flag and fragment offset, in the host-order `frags` word.
const IPV4_MF: u16 = 0x2000;
pub const IPV4_OFFSET: u16 = 0x1fff;
/// IPv6 Fragment header (RFC 8200 4.5): its next-header value and length.
pub const IPV6_FRAGMENT_HEADER: u8 = 44;
pub const IPV6_FRAGMENT_LEN: usize = 8;
/// In the Fragment header's host-order offset word: the offset (in 8-byte units, << 3)
/// and the M ("more fragments") flag.
pub const IPV6_OFFSET: u16 = 0xfff8;
const IPV6_MF: u16 = 1;

/// `Packet::fragment`: a whole datagram (an IPv6 atomic fragment is one too).
pub const FRAGMENT_NONE: u8 = 0;
/// The first fragment (offset 0, more fragments): its L4 header is there.
pub const FRAGMENT_FIRST: u8 = 1;
/// A later fragment (offset > 0): payload only, no ports.
pub const FRAGMENT_LATER: u8 = 2;

/// A packet whose headers were cut short or contradict themselves; the reason names the layer.
pub struct Malformed(Stat);

impl Malformed {
    pub const fn reason(&self) -> Stat {
        self.0
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    Icmp,
    /// A later fragment (no ports), or a first fragment of anything but TCP/UDP.
    Fragment,
    /// IPv6 extension headers and every other protocol: not parsed further.
    Other,
}

/// An IP packet: offsets of its headers (in bounds up to `l4_offset`) and its 5-tuple.
#[derive(Clone, Copy)]
pub struct Packet {
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub l4: L4,
    /// The TCP flags byte (`TCP_*` bits), 0 for anything else. Beside `l4`, not inside it:
    /// a variant without the field would leave an undefined byte in every copy, which LLVM
    /// may fill from any register, a pointer included, and the verifier refuses a pointer
    /// spilled one byte wide.
    pub tcp_flags: u8,
    /// Length of the IP packet (header included), as its header says.
    pub ip_len: usize,
    /// `FRAGMENT_*`: whole, first or later fragment. A first TCP/UDP fragment has its
    /// `l4` and ports like a whole packet.
    pub fragment: u8,
    /// The `ADDRESS_*` bits of the destination's bucket, read once by `lb` for the flow
    /// cache and the slow path; both bits ("may be either") until then.
    pub dst_class: u8,
    /// Addresses, protocol and, for TCP and UDP, ports (host order).
    pub flow: FlowKey,
}

impl Packet {
    pub const fn is_v4(&self) -> bool {
        self.flow.family == FAMILY_V4
    }

    /// The TCP flags, or 0 for anything else.
    pub const fn tcp_flags(&self) -> u8 {
        self.tcp_flags
    }

    /// The first fragment of a fragmented datagram (its later fragments follow it).
    pub const fn is_first_fragment(&self) -> bool {
        self.fragment == FRAGMENT_FIRST
    }

    /// The packet as read back from memory the verifier knows nothing about (the PARSED
    /// map): its offsets masked to their ranges (a VLAN tag, IPv4 options at most; an IP
    /// length fits 16 bits), so that packet pointers built from them pass its checks.
    #[inline(always)]
    pub const fn bounded(mut self) -> Self {
        self.bound();
        self
    }

    /// [`Packet::bounded`], in place.
    #[inline(always)]
    pub const fn bound(&mut self) {
        self.l3_offset &= 0x3f;
        self.l4_offset &= 0xff;
        self.ip_len &= 0xffff;
    }

    /// A SYN without ACK: the first packet of a new connection.
    pub const fn is_opening(&self) -> bool {
        self.tcp_flags() & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// Offsets of the TCP header's sequence and acknowledgment numbers.
pub const TCP_SEQ: usize = 4;
pub const TCP_ACK_SEQ: usize = 8;
/// Offset of the TCP header's checksum.
const TCP_CHECKSUM: usize = 16;

/// A TCP packet's checksum field as a native load reads it; `None` for anything else.
#[inline(always)]
pub fn tcp_checksum(ctx: &XdpContext, packet: &Packet) -> Option<u16> {
    if packet.l4 != L4::Tcp {
        return None;
    }
    // SAFETY: bounds checked by ptr_at; a byte array has alignment 1.
    ptr_at::<[u8; 2]>(ctx, packet.l4_offset + TCP_CHECKSUM)
        .map(|field| u16::from_ne_bytes(unsafe { *field }))
}

/// The 32-bit word at `offset` of a TCP packet's header (`TCP_SEQ`, `TCP_ACK_SEQ`), host
/// order; 0 for a packet that is not TCP.
#[inline(always)]
pub fn tcp_word(ctx: &XdpContext, packet: &Packet, offset: usize) -> u32 {
    if packet.l4 != L4::Tcp {
        return 0;
    }
    // SAFETY: bounds checked by ptr_at; a byte array has alignment 1.
    ptr_at::<[u8; 4]>(ctx, packet.l4_offset + offset)
        .map_or(0, |word| u32::from_be_bytes(unsafe { *word }))
}

pub enum Parsed {
    NotIp,
    Ip(Packet),
}

/// An IPv4 address from a header, as an [`Addr`]. Addresses are moved as whole words:
/// built byte by byte, LLVM keeps each of the 16 bytes in its own 8-byte stack slot, and
/// the program outgrows the 512-byte BPF stack. Read as 16-bit words: every address in an
/// IP header lies at an even offset (after 14 or 18 bytes of Ethernet and VLAN), and
/// LLVM turns unaligned reads into one load per byte.
#[inline(always)]
#[expect(clippy::cast_ptr_alignment, reason = "2-aligned: see above")]
pub fn addr_v4(octets: &[u8; 4]) -> Addr {
    // SAFETY: 4 bytes from a valid reference, 2-aligned (see above).
    let halves = unsafe { *core::ptr::from_ref(octets).cast::<[u16; 2]>() };
    // SAFETY: same size, and every bit pattern is valid.
    let word = unsafe { mem::transmute::<[u16; 2], u32>(halves) };
    // SAFETY: [u32; 4] and [u8; 16] have the same size and every bit pattern is valid.
    unsafe { mem::transmute::<[u32; 4], Addr>([word, 0, 0, 0]) }
}

/// An IPv6 address from a header, as an [`Addr`], moved as words (see [`addr_v4`]).
#[inline(always)]
#[expect(clippy::cast_ptr_alignment, reason = "2-aligned: see `addr_v4`")]
pub fn addr_v6(bytes: &[u8; 16]) -> Addr {
    // SAFETY: 16 bytes from a valid reference, 2-aligned (see `addr_v4`).
    let halves = unsafe { *core::ptr::from_ref(bytes).cast::<[u16; 8]>() };
    // SAFETY: as in `addr_v4`.
    unsafe { mem::transmute::<[u16; 8], Addr>(halves) }
}

/// Start of the packet. The context is read with a volatile load so that LLVM never turns
/// `ctx` arguments of BPF subprograms into packet-pointer arguments (argument promotion),
/// which the verifier refuses to do arithmetic on.
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

/// The interface the packet arrived on, read as [`data`] from a freshly loaded context
/// pointer: LLVM otherwise may keep `ctx + offset` in a register and load through it,
/// which the verifier refuses ("dereference of modified ctx ptr").
#[inline(always)]
pub fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: as in `data`.
    unsafe {
        let md = core::ptr::read_volatile(&raw const ctx.ctx);
        core::ptr::read_volatile(&raw const (*md).ingress_ifindex)
    }
}

/// Returns a pointer to a `T` at `offset`, or `None` when the packet is too short for it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = data(ctx);
    let end = data_end(ctx);
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
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
/// Parses the packet. `counted`: bump the protocol counters (the first program to see a
/// packet does; a tail-called one parsing it again does not).
pub fn parse(ctx: &XdpContext, counted: bool) -> Result<Parsed, Malformed> {
    let eth: &EthHdr = header(ctx, 0, Stat::MalformedEthernet)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3_offset = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: &VlanHdr = header(ctx, l3_offset, Stat::MalformedVlan)?;
        ether_type = u16::from_be(vlan.ether_type);
        l3_offset += VlanHdr::LEN;
    }
    let mut flow = FlowKey::default();
    let (l4_offset, fragment, ip_len) = match ether_type {
        ETH_P_IPV4 => {
            count_protocol(counted, Stat::Ipv4);
            parse_ipv4(ctx, l3_offset, &mut flow)?
        }
        ETH_P_IPV6 => {
            count_protocol(counted, Stat::Ipv6);
            parse_ipv6(ctx, l3_offset, &mut flow)?
        }
        _ => {
            count_protocol(counted, Stat::OtherL3);
            return Ok(Parsed::NotIp);
        }
    };
    let (l4, tcp_flags) = if fragment == FRAGMENT_LATER {
        count_protocol(counted, Stat::OtherL4);
        (L4::Fragment, 0)
    } else {
        parse_l4(ctx, l4_offset, &mut flow, counted)?
    };
    // Only TCP and UDP are balanced by their first fragment; part of an ICMP message is
    // nothing `lb_icmp` could answer or translate.
    let l4 = if fragment == FRAGMENT_FIRST && !matches!(l4, L4::Tcp | L4::Udp) {
        L4::Fragment
    } else {
        l4
    };
    // A frame shorter than its IP length lost bytes on the way, and an IP length that ends
    // inside the TCP/UDP/ICMP header describes no valid packet: the kernel would drop either,
    // and forwarding would send a broken packet on.
    let l4_header = match l4 {
        L4::Tcp => ptr_at::<TcpHdr>(ctx, l4_offset)
            // SAFETY: bounds checked by ptr_at.
            .map_or(TcpHdr::LEN, |tcp| usize::from(unsafe { (*tcp).doff() }) * 4),
        L4::Udp => UdpHdr::LEN,
        // Type, code, checksum and the 4-byte rest every ICMP and ICMPv6 message has; the
        // kernel drops a shorter one too.
        L4::Icmp => ICMP_HEADER,
        _ => 0,
    };
    if data(ctx) + l3_offset + ip_len > data_end(ctx) || l4_offset + l4_header > l3_offset + ip_len
    {
        return Err(Malformed(if flow.family == FAMILY_V4 {
            Stat::MalformedIpv4
        } else {
            Stat::MalformedIpv6
        }));
    }
    Ok(Parsed::Ip(Packet {
        l3_offset,
        l4_offset,
        l4,
        tcp_flags,
        ip_len,
        fragment,
        dst_class: (ADDRESS_VIP | ADDRESS_BACKEND) as u8,
        flow,
    }))
}

#[inline(always)]
fn count_protocol(counted: bool, stat: Stat) {
    if counted {
        stats::count_protocol(stat);
    }
}

/// Fills addresses and protocol; returns the L4 offset (after options), which fragment the
/// packet is (`FRAGMENT_*`), and its total length. A wrong header checksum makes it malformed, as it
/// would for any router (RFC 1812): forwarding rewrites the checksum incrementally, which
/// would carry the error on.
#[inline(always)]
fn parse_ipv4(
    ctx: &XdpContext,
    offset: usize,
    flow: &mut FlowKey,
) -> Result<(usize, u8, usize), Malformed> {
    let ip: &Ipv4Hdr = header(ctx, offset, Stat::MalformedIpv4)?;
    let header_len = usize::from(ip.ihl());
    if ip.version() != 4 || header_len < Ipv4Hdr::LEN || usize::from(ip.tot_len()) < header_len {
        return Err(Malformed(Stat::MalformedIpv4));
    }
    // Options must be present in full before anything reads past them.
    if data(ctx) + offset + header_len > data_end(ctx) {
        return Err(Malformed(Stat::MalformedIpv4));
    }
    if !ablated(ABLATE_IPV4_CHECKSUM) && !header_checksum_ok(ctx, offset, header_len) {
        return Err(Malformed(Stat::MalformedIpv4));
    }
    flow.family = FAMILY_V4;
    flow.proto = ip.proto;
    flow.src = addr_v4(&ip.src_addr);
    flow.dst = addr_v4(&ip.dst_addr);
    let frags = u16::from_be_bytes(ip.frags);
    let fragment = if frags & IPV4_OFFSET != 0 {
        FRAGMENT_LATER
    } else if frags & IPV4_MF != 0 {
        FRAGMENT_FIRST
    } else {
        FRAGMENT_NONE
    };
    Ok((offset + header_len, fragment, usize::from(ip.tot_len())))
}

/// The one's complement sum of the IPv4 header (at most 60 bytes) is all ones.
#[inline(always)]
fn header_checksum_ok(ctx: &XdpContext, offset: usize, header_len: usize) -> bool {
    // Without options (nearly every packet): ten 16-bit loads, one bounds check. A one's
    // complement sum is the same in either byte order, so the words are summed as they
    // lie in memory.
    if header_len == Ipv4Hdr::LEN {
        let Some(header) = ptr_at::<[u16; 10]>(ctx, offset) else {
            return false;
        };
        // SAFETY: bounds checked by ptr_at; the header starts at an even offset (after
        // 14 or 18 bytes of Ethernet and VLAN) of a frame the driver aligns.
        let w = unsafe { *header };
        let mut sum = 0u32;
        let mut i = 0;
        while i < 10 {
            sum += u32::from(w[i]);
            i += 1;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        return sum == 0xffff;
    }
    let mut sum = 0u32;
    for word in 0..30 {
        if word * 2 >= header_len {
            break;
        }
        let Some(bytes) = ptr_at::<[u8; 2]>(ctx, offset + word * 2) else {
            return false;
        };
        // SAFETY: bounds checked by ptr_at.
        sum += u32::from(u16::from_be_bytes(unsafe { *bytes }));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// As [`parse_ipv4`]. A Fragment header right after the fixed header is read (its next
/// header becomes the protocol); any other extension header ends parsing, with its type
/// as the protocol.
#[inline(always)]
fn parse_ipv6(
    ctx: &XdpContext,
    offset: usize,
    flow: &mut FlowKey,
) -> Result<(usize, u8, usize), Malformed> {
    let ip: &Ipv6Hdr = header(ctx, offset, Stat::MalformedIpv6)?;
    if ip.version() != 6 {
        return Err(Malformed(Stat::MalformedIpv6));
    }
    flow.family = FAMILY_V6;
    flow.proto = ip.next_hdr;
    flow.src = addr_v6(&ip.src_addr);
    flow.dst = addr_v6(&ip.dst_addr);
    let ip_len = Ipv6Hdr::LEN + usize::from(ip.payload_len());
    let l4_offset = offset + Ipv6Hdr::LEN;
    if flow.proto != IPV6_FRAGMENT_HEADER {
        return Ok((l4_offset, FRAGMENT_NONE, ip_len));
    }
    // Next header, reserved, offset and M flag, identification.
    let header: &[u8; IPV6_FRAGMENT_LEN] = header(ctx, l4_offset, Stat::MalformedIpv6)?;
    flow.proto = header[0];
    let word = u16::from_be_bytes([header[2], header[3]]);
    let fragment = if word & IPV6_OFFSET != 0 {
        FRAGMENT_LATER
    } else if word & IPV6_MF != 0 {
        FRAGMENT_FIRST
    } else {
        FRAGMENT_NONE
    };
    Ok((l4_offset + IPV6_FRAGMENT_LEN, fragment, ip_len))
}

#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    offset: usize,
    flow: &mut FlowKey,
    counted: bool,
) -> Result<(L4, u8), Malformed> {
    match flow.proto {
        IPPROTO_TCP => {
            count_protocol(counted, Stat::Tcp);
            let tcp: &TcpHdr = header(ctx, offset, Stat::MalformedTcp)?;
            let header_len = usize::from(tcp.doff()) * 4;
            if header_len < TcpHdr::LEN || data(ctx) + offset + header_len > data_end(ctx) {
                return Err(Malformed(Stat::MalformedTcp));
            }
            flow.src_port = u16::from_be_bytes(tcp.source);
            flow.dst_port = u16::from_be_bytes(tcp.dest);
            // Byte 13 of the header: CWR ECE URG ACK PSH RST SYN FIN.
            // SAFETY: inside the 20-byte header that `header` bounds-checked.
            let flags = unsafe { *core::ptr::from_ref(tcp).cast::<u8>().add(13) };
            Ok((L4::Tcp, flags))
        }
        IPPROTO_UDP => {
            count_protocol(counted, Stat::Udp);
            let udp: &UdpHdr = header(ctx, offset, Stat::MalformedUdp)?;
            if usize::from(udp.len()) < UdpHdr::LEN {
                return Err(Malformed(Stat::MalformedUdp));
            }
            flow.src_port = udp.src_port();
            flow.dst_port = udp.dst_port();
            Ok((L4::Udp, 0))
        }
        // ICMP in IPv4, ICMPv6 in IPv6; the other pairing is no ICMP the stack would read
        // (found by the fuzzer: an IPv6 packet with next header 1 was answered as echo).
        IPPROTO_ICMP if flow.family == FAMILY_V4 => {
            count_protocol(counted, Stat::Icmp);
            Ok((L4::Icmp, 0))
        }
        IPPROTO_ICMPV6 if flow.family != FAMILY_V4 => {
            count_protocol(counted, Stat::Icmp);
            Ok((L4::Icmp, 0))
        }
        _ => {
            count_protocol(counted, Stat::OtherL4);
            Ok((L4::Other, 0))
        }
    }
}
