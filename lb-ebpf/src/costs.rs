//! What the parts of the datapath cost, for `cargo xtask bench`'s table (loaded only by
//! it). Each program parses the packet, does one part of `lb`'s work with the real maps
//! and helpers, and leaves the packet as it was, so the benchmark times it with `repeat`;
//! a part's cost is its program's time minus `cost_parse`'s.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    flow::{Conn, NextHop},
    stats::Stat,
};

use crate::{
    conntrack::{self, Lookup},
    forward, lookup,
    maps::TX_PORTS,
    parse::{self, Packet, Parsed},
    stats,
};

/// Runs `part` on the parsed packet; the verdict depends on its answer, so that the
/// compiler keeps the work.
#[inline(always)]
fn with_packet(ctx: &XdpContext, part: impl FnOnce(&XdpContext, &Packet) -> bool) -> u32 {
    match parse::parse(ctx, false) {
        Ok(Parsed::Ip(packet)) if part(ctx, &packet) => xdp_action::XDP_PASS,
        _ => xdp_action::XDP_DROP,
    }
}

#[xdp]
pub fn cost_parse(ctx: XdpContext) -> u32 {
    with_packet(&ctx, |_, packet| packet.flow.src_port != 0)
}

#[xdp]
pub fn cost_clock(ctx: XdpContext) -> u32 {
    // SAFETY: no preconditions.
    with_packet(&ctx, |_, _| unsafe { bpf_ktime_get_coarse_ns() } != 0)
}

#[xdp]
pub fn cost_counters(ctx: XdpContext) -> u32 {
    with_packet(&ctx, |_, packet| {
        for stat in [
            Stat::Ipv4,
            Stat::Tcp,
            Stat::Redirect,
            Stat::ForwardEstablished,
        ] {
            stats::count(stat, packet.ip_len);
        }
        stats::count_service(0, 0, packet.ip_len);
        true
    })
}

#[xdp]
pub fn cost_address_buckets(ctx: XdpContext) -> u32 {
    with_packet(&ctx, |_, packet| {
        lookup::dst_class(&packet.flow) | lookup::src_class(&packet.flow) != 0
    })
}

#[xdp]
pub fn cost_vip_lookup(ctx: XdpContext) -> u32 {
    with_packet(&ctx, |_, packet| lookup::service(&packet.flow).is_some())
}

#[xdp]
pub fn cost_endpoint_lookup(ctx: XdpContext) -> u32 {
    with_packet(&ctx, |_, packet| {
        let flow = &packet.flow;
        lookup::endpoint(&flow.src, flow.src_port, flow.proto, flow.family).is_some()
    })
}

#[xdp]
pub fn cost_conntrack_lookup(ctx: XdpContext) -> u32 {
    with_packet(&ctx, |_, packet| {
        matches!(conntrack::lookup(&packet.flow, 0), Lookup::Live(..))
    })
}

/// A new entry per run: the packet's 5-tuple with a random source port and address
/// word (the table fills as the runs go).
#[xdp]
pub fn cost_conntrack_insert(ctx: XdpContext) -> u32 {
    with_packet(&ctx, |_, packet| {
        // SAFETY: no preconditions.
        let random = unsafe { bpf_get_prandom_u32() };
        let mut flow = packet.flow;
        flow.src_port = random as u16;
        flow.src[3] ^= (random >> 16) as u8;
        flow.src[2] ^= (random >> 24) as u8;
        conntrack::track_unproven(&flow, &Conn::default());
        true
    })
}

#[xdp]
pub fn cost_fib_lookup(ctx: XdpContext) -> u32 {
    with_packet(&ctx, |ctx, packet| {
        let mut hop = NextHop::default();
        let class = forward::traffic_class(ctx, packet, &packet.flow);
        forward::fib_lookup(ctx, &packet.flow, class, &mut hop) == 0
    })
}

#[xdp]
pub fn cost_redirect(ctx: XdpContext) -> u32 {
    // Returns XDP_PASS after the helper: the redirect it prepared is not taken.
    with_packet(&ctx, |ctx, _| {
        TX_PORTS.redirect(ctx.ingress_ifindex() as u32, 0).is_ok()
    })
}
