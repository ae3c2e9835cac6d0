//! The lb XDP program: every packet on the attached interfaces enters at [`lb`].
//!
//! parse → VIP lookup → conntrack → Maglev select → NAT rewrite → FIB forward, with one
//! verdict and one reason counted per packet (see docs/ARCHITECTURE.md).
#![no_std]
#![no_main]

mod baseline;
mod conntrack;
mod csum;
mod forward;
mod lookup;
mod maps;
mod nat;
mod parse;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::{info, warn};
use lb_common::{flow::FlowKey, stats::Stat};

use crate::{
    nat::Side,
    parse::{L4, Packet, Parsed},
};

/// What the datapath decided for one packet, and why.
pub struct Outcome {
    action: u32,
    reason: Stat,
}

impl Outcome {
    const fn new(action: u32, reason: Stat) -> Self {
        Self { action, reason }
    }

    const fn pass(reason: Stat) -> Self {
        Self::new(xdp_action::XDP_PASS, reason)
    }

    const fn drop(reason: Stat) -> Self {
        Self::new(xdp_action::XDP_DROP, reason)
    }
}

#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let outcome = process(&ctx, len);
    stats::count(Stat::for_action(outcome.action), len);
    stats::count(outcome.reason, len);
    outcome.action
}

#[inline(always)]
fn process(ctx: &XdpContext, len: usize) -> Outcome {
    let packet = match parse::parse(ctx) {
        Ok(Parsed::NotIp) => return Outcome::pass(Stat::PassNotIp),
        Ok(Parsed::Ip(packet)) => packet,
        // Malformed packets are not ours to judge: the kernel stack drops or answers them.
        Err(malformed) => return Outcome::pass(malformed.reason()),
    };
    match packet.l4 {
        L4::Tcp { .. } | L4::Udp => {}
        // Policies for what cannot be balanced by ports, when it is for a VIP address.
        L4::Fragment if lookup::is_vip_address(&packet.flow) => {
            return Outcome::drop(Stat::DropFragment);
        }
        L4::Other if !packet.is_v4() && lookup::is_vip_address(&packet.flow) => {
            return Outcome::drop(Stat::DropIpv6ExtensionHeader);
        }
        L4::Icmp if lookup::is_vip_address(&packet.flow) => {
            return Outcome::pass(Stat::PassIcmpToVip);
        }
        _ => return Outcome::pass(Stat::PassNotVip),
    }
    if let Some(vip) = lookup::service(&packet.flow) {
        return to_backend(ctx, &packet, &vip, len);
    }
    if let Some(reverse) = conntrack::lookup_reply(&packet.flow) {
        return to_client(ctx, &packet, &reverse);
    }
    if lookup::is_vip_address(&packet.flow) {
        return Outcome::pass(Stat::PassVipOtherPort);
    }
    Outcome::pass(Stat::PassNotVip)
}

/// Client → VIP: pick (or keep) the backend, destination NAT, forward.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    packet: &Packet,
    vip: &lb_common::service::VipInfo,
    len: usize,
) -> Outcome {
    // The kernel answers with ICMP time exceeded; nothing is rewritten.
    if forward::ttl(ctx, packet).is_none_or(|ttl| ttl <= 1) {
        return Outcome::pass(Stat::PassTtlExceeded);
    }
    // A SYN opens a new connection even if its 5-tuple is still tracked (a client reusing
    // a port): it is balanced afresh, so drained and deleted backends get no new
    // connections, and its conntrack entry is replaced.
    let opening = matches!(packet.l4, L4::Tcp { opening: true });
    let tracked = if opening {
        None
    } else {
        let pinned = conntrack::lookup(&packet.flow);
        // A TCP segment of an open connection that is not tracked: its entry was evicted, or
        // the connection began before this lb saw it (a restart, another lb node).
        if pinned.is_none() && matches!(packet.l4, L4::Tcp { .. }) {
            stats::count_event(Stat::CtMissMidFlow);
        }
        pinned.and_then(|id| select::tracked(id, vip).map(|backend| (id, backend)))
    };
    let (backend_id, backend, reason) = match tracked {
        Some((id, backend)) => (id, backend, Stat::ForwardEstablished),
        None => {
            // A miss on a non-SYN (after a restart, or on another lb node) lands on the same
            // backend as the SYN did, because Maglev is deterministic.
            let Some((id, backend)) = select::maglev(vip, &packet.flow) else {
                // Logs are compiled in but off unless `lb run --log-datapath` (the verifier
                // prunes them when the level global is 0).
                warn!(ctx, "vip {}: no usable backend, dropped", vip.id);
                return Outcome::drop(Stat::DropNoBackend);
            };
            let reply = FlowKey {
                src: backend.addr,
                dst: packet.flow.src,
                src_port: backend.port,
                dst_port: packet.flow.src_port,
                proto: packet.flow.proto,
                family: packet.flow.family,
                _pad: [0; 2],
            };
            conntrack::insert(&packet.flow, &reply, vip.id, id);
            stats::count_new_flow(vip.id);
            info!(
                ctx,
                "vip {}: new flow from port {} to backend {}", vip.id, packet.flow.src_port, id
            );
            (id, backend, Stat::ForwardNew)
        }
    };
    let Ok(rewritten) = nat::rewrite(ctx, packet, Side::Destination, &backend.addr, backend.port)
    else {
        return Outcome::drop(Stat::DropFibFailure);
    };
    stats::count_service(vip.id, backend_id, len);
    forward::forward(ctx, &rewritten, reason)
}

/// Backend → client reply of a tracked flow: source NAT back to the VIP, forward.
#[inline(always)]
fn to_client(ctx: &XdpContext, packet: &Packet, reverse: &lb_common::flow::ReverseNat) -> Outcome {
    if forward::ttl(ctx, packet).is_none_or(|ttl| ttl <= 1) {
        return Outcome::pass(Stat::PassTtlExceeded);
    }
    let Ok(rewritten) = nat::rewrite(
        ctx,
        packet,
        Side::Source,
        &reverse.vip_addr,
        reverse.vip_port,
    ) else {
        return Outcome::drop(Stat::DropFibFailure);
    };
    forward::forward(ctx, &rewritten, Stat::ForwardReply)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
