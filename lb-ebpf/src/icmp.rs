//! ICMP, in the tail-called program `lb_icmp`: echo requests to a VIP address are answered
//! from the VIP; errors about a flow are translated, toward its backend when they arrive
//! for the VIP (a router on the client's side says a reply was too big), toward the
//! client with the VIP as source when a backend (or a router behind it) sends them. Inner
//! headers and every checksum are patched, then the kernel forwards the error. Everything
//! else goes to the kernel as it is. An error quoting a first fragment is translated as
//! any other (the ports are in the quote); one quoting a later fragment has no ports to
//! find its flow by: passed when sent to a VIP (the kernel has no socket for it), dropped
//! (`drop_backend_fragment`) when it quotes a packet sent to a backend address, which the
//! client must never see.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    consts::{FAMILY_V4, FAMILY_V6, IPPROTO_TCP, IPPROTO_UDP},
    encap::{MODE_NAT, SENT_ICMP},
    flow::FlowKey,
    service::{Addr, Backend, VipInfo},
    stats::Stat,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    Outcome,
    conntrack::{self, Lookup},
    csum::Delta,
    forward, lookup,
    nat::{self, Headers, Side},
    parse::{
        self, ICMP_HEADER, IPV4_OFFSET, IPV6_FRAGMENT_HEADER, IPV6_FRAGMENT_LEN, IPV6_OFFSET,
        Packet, ptr_at,
    },
    select,
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// TTL / hop limit of what the datapath sends itself.
pub const OWN_TTL: u8 = 64;

/// An ICMP packet (the parser found its type in the IP header).
#[inline(always)]
pub fn handle(ctx: &XdpContext, packet: &Packet, now: u64) -> Outcome {
    let Some(header) = ptr_at::<[u8; 2]>(ctx, packet.l4_offset) else {
        return Outcome::pass(Stat::PassNotVip);
    };
    // SAFETY: bounds checked.
    let [kind, code] = unsafe { *header };
    let v4 = packet.is_v4();
    if lookup::is_vip_address(&packet.flow.dst, packet.flow.family) {
        if kind
            == if v4 {
                ICMP_ECHO_REQUEST
            } else {
                ICMPV6_ECHO_REQUEST
            }
        {
            return echo_reply(ctx, packet);
        }
        if is_error(v4, kind, code) {
            return error_to_backend(ctx, packet, now);
        }
        return Outcome::pass(Stat::PassIcmpToVip);
    }
    if is_error(v4, kind, code) {
        return error_from_backend(ctx, packet);
    }
    Outcome::pass(Stat::PassNotVip)
}

/// The errors that are about one flow and that its endpoints act on.
#[inline(always)]
const fn is_error(v4: bool, kind: u8, _code: u8) -> bool {
    if v4 {
        kind == ICMP_DEST_UNREACH || kind == ICMP_TIME_EXCEEDED
    } else {
        kind == ICMPV6_DEST_UNREACH || kind == ICMPV6_PACKET_TOO_BIG || kind == ICMPV6_TIME_EXCEEDED
    }
}

/// The packet an ICMP error quotes: where its headers are and its 5-tuple.
struct Quoted {
    at: Headers,
    flow: FlowKey,
}

/// What an error quotes: a TCP/UDP packet (whole or a first fragment) with its ports, a
/// later fragment of one (addresses only: its destination), or anything else.
enum Quote {
    Flow(Quoted),
    LaterFragment(Addr),
    Other,
}

#[inline(always)]
fn quoted(ctx: &XdpContext, packet: &Packet) -> Quote {
    match quoted_headers(ctx, packet) {
        Some(Ok(quoted)) => Quote::Flow(quoted),
        Some(Err(dst)) => Quote::LaterFragment(dst),
        None => Quote::Other,
    }
}

/// The quoted headers; `Err(destination)` for a later fragment.
#[inline(always)]
fn quoted_headers(ctx: &XdpContext, packet: &Packet) -> Option<Result<Quoted, Addr>> {
    let l3_offset = packet.l4_offset + ICMP_HEADER;
    let mut flow = FlowKey::default();
    let mut later = false;
    let l4_offset = if packet.is_v4() {
        let ip = ptr_at::<Ipv4Hdr>(ctx, l3_offset)?;
        // SAFETY: bounds checked.
        let ip = unsafe { &*ip };
        let header_len = usize::from(ip.ihl());
        if ip.version() != 4 || header_len < Ipv4Hdr::LEN {
            return None;
        }
        flow.family = FAMILY_V4;
        flow.proto = ip.proto;
        flow.src = parse::addr_v4(&ip.src_addr);
        flow.dst = parse::addr_v4(&ip.dst_addr);
        later = u16::from_be_bytes(ip.frags) & IPV4_OFFSET != 0;
        l3_offset + header_len
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, l3_offset)?;
        // SAFETY: bounds checked.
        let ip = unsafe { &*ip };
        flow.family = FAMILY_V6;
        flow.proto = ip.next_hdr;
        flow.src = parse::addr_v6(&ip.src_addr);
        flow.dst = parse::addr_v6(&ip.dst_addr);
        let mut l4_offset = l3_offset + Ipv6Hdr::LEN;
        // A Fragment header right after the fixed header, as the parser reads it.
        if flow.proto == IPV6_FRAGMENT_HEADER {
            let fragment = ptr_at::<[u8; IPV6_FRAGMENT_LEN]>(ctx, l4_offset)?;
            // SAFETY: bounds checked.
            let fragment = unsafe { &*fragment };
            flow.proto = fragment[0];
            later = u16::from_be_bytes([fragment[2], fragment[3]]) & IPV6_OFFSET != 0;
            l4_offset += IPV6_FRAGMENT_LEN;
        }
        l4_offset
    };
    if flow.proto != IPPROTO_TCP && flow.proto != IPPROTO_UDP {
        return None;
    }
    if later {
        return Some(Err(flow.dst));
    }
    let ports = ptr_at::<[u8; 4]>(ctx, l4_offset)?;
    // SAFETY: bounds checked.
    let ports = unsafe { *ports };
    flow.src_port = u16::from_be_bytes([ports[0], ports[1]]);
    flow.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    Some(Ok(Quoted {
        at: Headers {
            l3_offset,
            l4_offset,
            v4: packet.is_v4(),
            proto: flow.proto,
            quoted: true,
        },
        flow,
    }))
}

/// An error sent to the VIP about a reply it sent (a router on the client's side says the
/// reply was too big, say): it goes to the flow's backend, quoting what the backend sent.
#[inline(always)]
fn error_to_backend(ctx: &XdpContext, packet: &Packet, now: u64) -> Outcome {
    let Quote::Flow(inner) = quoted(ctx, packet) else {
        return Outcome::pass(Stat::PassIcmpToVip);
    };
    // The quoted packet left the lb as VIP → client.
    let q = &inner.flow;
    let Some(vip) = lookup::vip(&q.src, q.src_port, q.proto, q.family) else {
        return Outcome::pass(Stat::PassIcmpToVip);
    };
    let flow = FlowKey {
        src: q.dst,
        dst: q.src,
        src_port: q.dst_port,
        dst_port: q.src_port,
        proto: q.proto,
        family: q.family,
        _pad: [0; 2],
    };
    let Some((id, backend)) = flow_backend(&flow, &vip, now) else {
        return Outcome::pass(Stat::PassIcmpToVip);
    };
    // A DSR backend sent the quoted packet from the VIP itself: the error reaches it as
    // the flow's packets do, untouched (its kernel matches it to the socket).
    if backend.mode != MODE_NAT {
        return crate::send_dsr(ctx, id, SENT_ICMP);
    }
    let to_backend = End {
        side: Side::Source,
        addr: backend.addr,
        port: backend.port,
    };
    let Ok(inner_changes) = rewrite(ctx, &inner.at, &to_backend) else {
        return Outcome::drop(Stat::DropFibFailure);
    };
    let to_backend = End {
        side: Side::Destination,
        port: 0,
        ..to_backend
    };
    let Ok(outer_changes) = rewrite(ctx, &Headers::ip_only(packet), &to_backend) else {
        return Outcome::drop(Stat::DropFibFailure);
    };
    finish(
        ctx,
        packet,
        inner_changes.all,
        outer_changes.address,
        Stat::ForwardIcmpToBackend,
    )
}

/// The backend (and its id) of a client → VIP flow: its tracked one, else Maglev's choice.
#[inline(always)]
fn flow_backend(flow: &FlowKey, vip: &VipInfo, now: u64) -> Option<(u32, &'static Backend)> {
    let tracked = match conntrack::lookup(flow, now) {
        Lookup::Live(conn, _) => {
            // SAFETY: a live entry is valid for this run (RCU).
            let conn = unsafe { &mut *conn };
            select::tracked(conn, flow.proto).map(|backend| (conn.backend_id, backend))
        }
        _ => None,
    };
    tracked.or_else(|| select::maglev(vip, flow))
}

/// An error a backend (or a router between it and the lb) sent about a reply of a VIP
/// flow: the client must see it about the VIP, and from the VIP when the backend sent it.
#[inline(always)]
fn error_from_backend(ctx: &XdpContext, packet: &Packet) -> Outcome {
    let inner = match quoted(ctx, packet) {
        Quote::Flow(inner) => inner,
        // A later fragment the lb sent to a backend: no ports to find the VIP by, and
        // passed on it would show the client a backend's address.
        Quote::LaterFragment(dst) if lookup::is_backend_address(&dst, packet.flow.family) => {
            return Outcome::drop(Stat::DropBackendFragment);
        }
        _ => return Outcome::pass(Stat::PassNotVip),
    };
    // The quoted packet reached the backend as client → backend endpoint.
    let q = &inner.flow;
    let Some(endpoint) = lookup::endpoint(&q.dst, q.dst_port, q.proto, q.family) else {
        return Outcome::pass(Stat::PassNotVip);
    };
    // Any backend's address is the lb's secret, not only the one the packet went to (a
    // backend may route for another): the client sees such an error come from the VIP.
    let from_backend =
        packet.flow.src == q.dst || lookup::is_backend_address(&packet.flow.src, q.family);
    let to_vip = End {
        side: Side::Destination,
        addr: endpoint.vip_addr,
        port: endpoint.vip_port,
    };
    let Ok(inner_changes) = rewrite(ctx, &inner.at, &to_vip) else {
        return Outcome::drop(Stat::DropFibFailure);
    };
    let mut outer = Delta::default();
    if from_backend {
        let from_vip = End {
            side: Side::Source,
            port: 0,
            ..to_vip
        };
        let Ok(changes) = rewrite(ctx, &Headers::ip_only(packet), &from_vip) else {
            return Outcome::drop(Stat::DropFibFailure);
        };
        outer = changes.address;
    }
    finish(
        ctx,
        packet,
        inner_changes.all,
        outer,
        Stat::ForwardIcmpToClient,
    )
}

/// `nat::rewrite_headers` with the new side, address and port as one value.
#[inline(always)]
fn rewrite(ctx: &XdpContext, at: &Headers, to: &End) -> Result<nat::Changes, nat::OutOfBounds> {
    nat::rewrite_headers(ctx, *at, to.side, &to.addr, to.port)
}

/// One side of a packet as it should become.
struct End {
    side: Side,
    addr: Addr,
    port: u16,
}

/// Patches the ICMP checksum for what changed inside the message (and, for ICMPv6, in the
/// pseudo-header), and hands the packet to the kernel to forward: ICMP errors are rare,
/// and routing them here would cost the stack this program does not have.
#[inline(always)]
fn finish(
    ctx: &XdpContext,
    packet: &Packet,
    inner: Delta,
    outer_address: Delta,
    translated: Stat,
) -> Outcome {
    let Some(check) = ptr_at::<[u8; 2]>(ctx, packet.l4_offset + 2) else {
        return Outcome::drop(Stat::DropFibFailure);
    };
    let mut delta = inner;
    if !packet.is_v4() {
        delta.add(outer_address);
    }
    // SAFETY: bounds checked.
    let check = unsafe { &mut *check };
    *check = delta.apply(u16::from_be_bytes(*check)).to_be_bytes();
    Outcome::pass(translated)
}

/// Answers an echo request to a VIP address from that address, out the way it came.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, packet: &Packet) -> Outcome {
    let Some(icmp) = ptr_at::<[u8; 4]>(ctx, packet.l4_offset) else {
        return Outcome::pass(Stat::PassIcmpToVip);
    };
    // SAFETY: bounds checked.
    let icmp = unsafe { &mut *icmp };
    let old = u16::from_be_bytes([icmp[0], icmp[1]]);
    icmp[0] = if packet.is_v4() {
        ICMP_ECHO_REPLY
    } else {
        ICMPV6_ECHO_REPLY
    };
    let mut delta = Delta::default();
    delta.word(old, u16::from_be_bytes([icmp[0], icmp[1]]));
    let check = delta
        .apply(u16::from_be_bytes([icmp[2], icmp[3]]))
        .to_be_bytes();
    icmp[2] = check[0];
    icmp[3] = check[1];
    // Swapping the addresses changes neither the IPv4 header checksum nor ICMPv6's
    // pseudo-header sum; the new TTL is patched in.
    if packet.is_v4() {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, packet.l3_offset) else {
            return Outcome::drop(Stat::DropFibFailure);
        };
        // SAFETY: bounds checked.
        let ip = unsafe { &mut *ip };
        core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
        let mut delta = Delta::default();
        let old = u16::from_be_bytes([ip.ttl, ip.proto]);
        ip.ttl = OWN_TTL;
        delta.word(old, u16::from_be_bytes([ip.ttl, ip.proto]));
        ip.check = delta.apply(u16::from_be_bytes(ip.check)).to_be_bytes();
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, packet.l3_offset) else {
            return Outcome::drop(Stat::DropFibFailure);
        };
        // SAFETY: bounds checked.
        let ip = unsafe { &mut *ip };
        core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
        ip.hop_limit = OWN_TTL;
    }
    if !swap_macs(ctx, 0) {
        return Outcome::drop(Stat::DropFibFailure);
    }
    forward::bounce(ctx, Stat::IcmpEchoReply)
}

/// Swaps the destination and source MACs of the Ethernet header at `offset`.
#[inline(always)]
pub fn swap_macs(ctx: &XdpContext, offset: usize) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, offset) else {
        return false;
    };
    // SAFETY: bounds checked.
    let eth = unsafe { &mut *eth };
    core::mem::swap(&mut eth.dst_addr, &mut eth.src_addr);
    true
}
