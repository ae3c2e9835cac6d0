//! ICMP: echo requests to a VIP address are answered here, from the VIP; other ICMP goes
//! to the kernel. Translating errors about a flow and answering too-big packets need more
//! stack than this program has left: they are planned as tail-called programs (see
//! docs/ARCHITECTURE.md, "ICMP").

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::stats::Stat;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    Outcome,
    csum::Delta,
    lookup,
    parse::{Packet, ptr_at},
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// TTL / hop limit of what the datapath sends itself.
const OWN_TTL: u8 = 64;

/// An ICMP packet (the parser found its type in the IP header). A function of its own
/// (a BPF subprogram), so its stack is not added to the TCP/UDP path's.
#[inline(never)]
pub fn handle(ctx: &XdpContext, packet: &Packet) -> Outcome {
    let Some(header) = ptr_at::<[u8; 2]>(ctx, packet.l4_offset) else {
        return Outcome::pass(Stat::PassNotVip);
    };
    // SAFETY: bounds checked.
    let [kind, _code] = unsafe { *header };
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
        return Outcome::pass(Stat::PassIcmpToVip);
    }
    Outcome::pass(Stat::PassNotVip)
}

/// Answers an echo request to a VIP address from that address, out the way it came.
#[inline(never)]
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
    Outcome::new(xdp_action::XDP_TX, Stat::IcmpEchoReply)
}

/// Swaps the destination and source MACs of the Ethernet header at `offset`.
#[inline(always)]
fn swap_macs(ctx: &XdpContext, offset: usize) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, offset) else {
        return false;
    };
    // SAFETY: bounds checked.
    let eth = unsafe { &mut *eth };
    core::mem::swap(&mut eth.dst_addr, &mut eth.src_addr);
    true
}
