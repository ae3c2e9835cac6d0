//! Direct server return: the client's packet goes to its backend untouched, inside an
//! outer IPv4 / IPv6 header (dsr-ipip: IPIP, IPv6-in-IPv6, IPv4-in-IPv6) or with only its
//! MACs changed (dsr-l2). The backend holds the VIP and replies to the client directly, so
//! the lb sees one direction of the flow. Runs in the tail-called `lb_encap`: inlined in
//! `lb` it made the program more than the verifier takes with the datapath log on.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_head, programs::XdpContext,
};
use lb_common::{
    consts::{FAMILY_V4, FAMILY_V6, JUMP_ENCAP_GUE},
    encap::{
        EncapSource, IPPROTO_IPIP, IPPROTO_IPV6, MODE_DSR_L2, OUTER_TTL, SENT_ESTABLISHED,
        SENT_FRAGMENT, SENT_NEW_FLOW, flow_bits, outer_source, overhead,
    },
    flow::{FlowKey, NEXTHOP_FLAG_DIRECT, NextHop},
    gue::MODE_DSR_GUE,
    service::{Addr, Backend},
    stats::Stat,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    Outcome, answer_too_big, copy, csum,
    forward::{self, HopSlot, Route},
    gue::{self, Hops},
    maps::{JUMPS, encap_source},
    parse::{self, L4, Packet, ptr_at},
    stats, too_big,
};

const ETH_P_IPV4: [u8; 2] = 0x0800u16.to_be_bytes();
const ETH_P_IPV6: [u8; 2] = 0x86ddu16.to_be_bytes();
/// IPv4 "don't fragment", in the first byte of the flags / offset word.
const IPV4_DF: u8 = 0x40;

/// Sends a client's packet to `backend` of a DSR VIP: route toward the backend's address,
/// answer it if it no longer fits, then encapsulate (dsr-ipip) or not (dsr-l2), new MACs,
/// out. The inner packet is not rewritten, not even its TTL.
/// `GUE`: this is `lb_encap_gue`; elsewhere a dsr-gue backend's packet is handed to it
/// (its own program, with its own stack), with `ENCAP_ARGS` as the caller set them.
#[inline(always)]
pub fn to_backend<const GUE: bool>(
    ctx: &XdpContext,
    packet: &Packet,
    backend_id: u32,
    backend: &Backend,
    forwarded: Stat,
    now: u64,
) -> Outcome {
    let gue = backend.mode == MODE_DSR_GUE;
    if gue != GUE {
        if gue {
            // SAFETY: the context is the program's; a tail call that returns failed (a
            // JUMPS map pinned by a release without dsr-gue has no slot for it).
            unsafe { JUMPS.tail_call(ctx, JUMP_ENCAP_GUE) };
        }
        return Outcome::drop(Stat::DropDsrUnsupported);
    }
    let l2 = backend.mode == MODE_DSR_L2;
    if backend.family == FAMILY_V4 && !packet.is_v4() {
        return Outcome::drop(Stat::DropDsrUnsupported);
    }
    let toward = FlowKey {
        dst: backend.addr,
        family: backend.family,
        ..packet.flow
    };
    let hop = match forward::route(ctx, packet, &toward, HopSlot::Backend(backend_id), now) {
        Route::Hop(hop) => hop,
        // The kernel cannot forward it in our place (it would route it to the VIP); the
        // daemon keeps the next hop of every DSR backend resolved (a managed neighbour).
        Route::NoNeighbour => return Outcome::drop(Stat::DropDsrNoNeighbour),
        // Out through an interface lb is not attached to: XDP cannot send it there, and
        // the kernel would route the untouched packet to the VIP again.
        Route::NotAttached(_) => return Outcome::drop(Stat::DropDsrUnroutable),
        // Handed to the kernel, the untouched packet would be routed to the VIP again.
        Route::Done(outcome) if outcome.action == xdp_action::XDP_PASS => {
            return Outcome::drop(Stat::DropDsrUnroutable);
        }
        Route::Done(outcome) => return outcome,
    };
    // A client's packet gets its flow's hop list; an ICMP error or a later fragment goes
    // to its flow's backend alone.
    let hops = if gue && matches!(forwarded, Stat::ForwardNew | Stat::ForwardEstablished) {
        gue::of_flow(packet, backend_id, backend)
    } else {
        Hops::one(backend_id)
    };
    let added = if l2 {
        0
    } else if gue {
        gue::overhead(&hops, backend.family)
    } else {
        overhead(backend.family)
    };
    if hop.mtu != 0 && packet.ip_len + added > hop.mtu as usize {
        // An ICMP error is never answered with one (RFC 1122, RFC 4443).
        if matches!(packet.l4, L4::Icmp) {
            return Outcome::drop(Stat::DropTooBig);
        }
        // Answered whatever the DF bit: the lb cannot fragment, and a backend would have
        // to reassemble the outer fragments before it could decapsulate.
        return answer_too_big(ctx, hop.mtu - added as u16, &packet.flow.dst, true);
    }
    if gue {
        return send_gue(ctx, packet, backend, hop, forwarded, &hops);
    }
    send(ctx, packet, backend, hop, forwarded)
}

/// As [`send`], in UDP and GUE with the hop list `hops` (`hops[0]` is `backend`).
#[inline(always)]
fn send_gue(
    ctx: &XdpContext,
    packet: &Packet,
    backend: &Backend,
    hop: &NextHop,
    forwarded: Stat,
    hops: &Hops,
) -> Outcome {
    let len = parse::data_end(ctx) - parse::data(ctx);
    let source = encap_source(backend.family);
    if source.addr == [0; 16] {
        return Outcome::drop(Stat::DropDsrUnsupported);
    }
    let Some(inner) = inner(ctx, packet) else {
        return Outcome::drop(Stat::DropFibFailure);
    };
    let encapsulated = gue::encapsulate(ctx, packet, backend, &source, hops, inner);
    if encapsulated.is_none() {
        return Outcome::drop(Stat::DropFibFailure);
    }
    let sent = len + gue::overhead(hops, backend.family);
    stats::count(Stat::DsrGueEncapsulated, sent);
    if hops.count > 1 {
        stats::count(Stat::GueSecondHop, sent);
    }
    forward::transmit(ctx, hop, forwarded)
}

/// Sends a packet that fits `hop` (route and MTU checked by the caller: `to_backend`, or
/// the flow cache for an established flow) to its DSR `backend`: encapsulated (dsr-ipip)
/// or with new MACs only (dsr-l2).
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    packet: &Packet,
    backend: &Backend,
    hop: &NextHop,
    forwarded: Stat,
) -> Outcome {
    let len = parse::data_end(ctx) - parse::data(ctx);
    if backend.mode == MODE_DSR_L2 {
        if hop.flags & NEXTHOP_FLAG_DIRECT == 0 {
            return Outcome::drop(Stat::DropDsrNotOnLink);
        }
        stats::count(Stat::DsrL2Forwarded, len);
        return forward::transmit(ctx, hop, forwarded);
    }
    let source = encap_source(backend.family);
    // No address of the backend's family on the lb and no --encap-source for it.
    if source.addr == [0; 16] {
        return Outcome::drop(Stat::DropDsrUnsupported);
    }
    if encapsulate(ctx, packet, backend, &source).is_none() {
        return Outcome::drop(Stat::DropFibFailure);
    }
    stats::count(Stat::DsrIpipEncapsulated, len + overhead(backend.family));
    forward::transmit(ctx, hop, forwarded)
}

/// The reason counted for a packet sent to its DSR backend (`EncapArgs::sent`).
#[inline(always)]
pub const fn reason(sent: u32) -> Stat {
    match sent {
        SENT_NEW_FLOW => Stat::ForwardNew,
        SENT_ESTABLISHED => Stat::ForwardEstablished,
        SENT_FRAGMENT => Stat::ForwardFragment,
        _ => Stat::ForwardIcmpToBackend,
    }
}

/// What the outer header copies from the inner one.
#[derive(Clone, Copy)]
pub struct Inner {
    /// TOS / traffic class, ECN included (RFC 6040's normal mode).
    pub tos: u8,
    /// IPv4 with DF set (RFC 2003: the outer IPv4 header gets it too).
    pub dont_fragment: bool,
}

#[inline(always)]
pub fn inner(ctx: &XdpContext, packet: &Packet) -> Option<Inner> {
    if packet.is_v4() {
        let ip = ptr_at::<Ipv4Hdr>(ctx, packet.l3_offset)?;
        // SAFETY: bounds checked.
        let ip = unsafe { &*ip };
        Some(Inner {
            tos: ip.tos,
            dont_fragment: ip.frags[0] & IPV4_DF != 0,
        })
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, packet.l3_offset)?;
        // SAFETY: bounds checked.
        let vcf = unsafe { (*ip).vcf };
        Some(Inner {
            tos: (vcf[0] << 4) | (vcf[1] >> 4),
            dont_fragment: true,
        })
    }
}

/// Puts an outer header for `backend` in front of the IP packet: the frame grows at its
/// head, the Ethernet header (and VLAN tag) moves to the new front, the EtherType becomes
/// the outer family's.
#[inline(always)]
fn encapsulate(
    ctx: &XdpContext,
    packet: &Packet,
    backend: &Backend,
    source: &EncapSource,
) -> Option<()> {
    let inner = inner(ctx, packet)?;
    let bits = flow_bits(&packet.flow);
    let src = outer_source(source, backend.family, bits);
    let protocol = if packet.is_v4() {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let outer = OuterIp {
        src,
        bits,
        protocol,
        payload_len: packet.ip_len,
        extra: 0,
    };
    push_outer_ip(ctx, packet.l3_offset, backend, outer, inner)
}

/// An outer IP header to write: from `src` (flow label from `bits`), carrying
/// `payload_len` bytes of `protocol`, of which the caller writes the first `extra` (UDP
/// and GUE) between it and the packet.
pub struct OuterIp {
    pub src: Addr,
    pub bits: u32,
    pub protocol: u8,
    pub payload_len: usize,
    pub extra: usize,
}

/// Grows the frame at its head by the outer IP header and `outer.extra`, moves the
/// Ethernet header (and VLAN tag) to the new front, sets the outer family's EtherType and
/// writes the IP header toward `backend` at `l3`.
#[inline(always)]
pub fn push_outer_ip(
    ctx: &XdpContext,
    l3: usize,
    backend: &Backend,
    outer: OuterIp,
    inner: Inner,
) -> Option<()> {
    let ip_len = overhead(backend.family);
    let added = ip_len + outer.extra;
    // SAFETY: the helper checks its argument; every pointer is derived again after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(added as i32)) } != 0 {
        return None;
    }
    if !too_big::move_l2_header(ctx, added, l3 > EthHdr::LEN) {
        return None;
    }
    let ethertype = ptr_at::<[u8; 2]>(ctx, l3 - 2)?;
    let (dst, src) = (&backend.addr, outer.src);
    if backend.family == FAMILY_V6 {
        // SAFETY: bounds checked.
        unsafe { *ethertype = ETH_P_IPV6 };
        let ip = ptr_at::<Ipv6Hdr>(ctx, l3)?;
        // SAFETY: bounds checked.
        let ip = unsafe { &mut *ip };
        // The flow label from the same per-flow bits: routers and NICs that hash it
        // spread flows too.
        let label = outer.bits & 0x000f_ffff;
        ip.vcf = [
            0x60 | (inner.tos >> 4),
            (inner.tos << 4) | (label >> 16) as u8,
            (label >> 8) as u8,
            label as u8,
        ];
        ip.payload_len = (outer.payload_len as u16).to_be_bytes();
        ip.next_hdr = outer.protocol;
        ip.hop_limit = OUTER_TTL;
        // SAFETY: the header is bounds checked and 2-aligned, as is a Backend's address
        // (offset 0 of its map value).
        unsafe {
            copy::write_halves(ip.src_addr.as_mut_ptr(), &copy::halves_of::<16, 8>(src));
            copy::write_halves(
                ip.dst_addr.as_mut_ptr(),
                &copy::read_halves::<8>(dst.as_ptr()),
            );
        }
    } else {
        // SAFETY: bounds checked.
        unsafe { *ethertype = ETH_P_IPV4 };
        let ip = ptr_at::<[u8; 20]>(ctx, l3)?;
        let [len_high, len_low] = ((outer.payload_len + ip_len) as u16).to_be_bytes();
        // Built in registers, its checksum computed there, then stored as words.
        let mut header = [
            0x45,
            inner.tos,
            len_high,
            len_low,
            0,
            0,
            if inner.dont_fragment { IPV4_DF } else { 0 },
            0,
            OUTER_TTL,
            outer.protocol,
            0,
            0,
            src[0],
            src[1],
            src[2],
            src[3],
            dst[0],
            dst[1],
            dst[2],
            dst[3],
        ];
        let [high, low] = csum::ipv4_header(&header).to_be_bytes();
        header[10] = high;
        header[11] = low;
        // SAFETY: bounds checked; 2-aligned (see `copy`).
        unsafe { copy::write_halves(ip.cast(), &copy::halves_of::<20, 10>(header)) };
    }
    Some(())
}
