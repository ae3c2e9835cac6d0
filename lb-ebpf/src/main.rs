//! The lb XDP program: every packet on the attached interfaces enters at [`lb`].
//!
//! parse → VIP or backend-endpoint lookup → conntrack → Maglev select → route → NAT
//! rewrite → forward, with one verdict and one reason counted per packet (see
//! docs/ARCHITECTURE.md).
#![no_std]
#![no_main]

mod baseline;
mod conntrack;
mod csum;
mod forward;
mod icmp;
mod lookup;
mod maps;
mod nat;
mod parse;
mod select;
mod stats;

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns, macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::{info, warn};
use lb_common::{
    consts::IPPROTO_TCP,
    flow::{CT_DATAGRAM, Conn, FlowKey},
    service::{Backend, Endpoint, VipInfo},
    stats::Stat,
};

use crate::{
    conntrack::{Direction, Lookup},
    forward::Route,
    nat::Side,
    parse::{L4, Packet, Parsed, TCP_FIN, TCP_RST, TCP_SYN},
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
    let outcome = process(&ctx);
    stats::count(Stat::for_action(outcome.action), len);
    stats::count(outcome.reason, len);
    outcome.action
}

/// IPv6 next-header values that are extension headers (RFC 8200, RFC 7045).
const fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Outcome {
    let packet = match parse::parse(ctx) {
        Ok(Parsed::NotIp) => return Outcome::pass(Stat::PassNotIp),
        Ok(Parsed::Ip(packet)) => packet,
        // Malformed packets are not ours to judge: the kernel stack drops or answers them.
        Err(malformed) => return Outcome::pass(malformed.reason()),
    };
    // One coarse clock read per packet (CLOCK_MONOTONIC at tick resolution) serves the
    // conntrack timeouts, the next-hop cache and the ICMP rate limit.
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let flow = &packet.flow;
    match packet.l4 {
        L4::Tcp { .. } | L4::Udp => {}
        L4::Icmp => return icmp::handle(ctx, &packet),
        // Policies for what carries no ports: to a VIP address it cannot be balanced; from
        // a backend address it could be a reply that would leak the backend's address.
        L4::Fragment if lookup::is_vip_address(&flow.dst, flow.family) => {
            return Outcome::drop(Stat::DropFragment);
        }
        L4::Fragment if lookup::is_backend_address(&flow.src, flow.family) => {
            return Outcome::drop(Stat::DropBackendFragment);
        }
        L4::Other if !packet.is_v4() && lookup::is_vip_address(&flow.dst, flow.family) => {
            return Outcome::drop(Stat::DropIpv6ExtensionHeader);
        }
        L4::Other
            if !packet.is_v4()
                && is_ipv6_extension(flow.proto)
                && lookup::is_backend_address(&flow.src, flow.family) =>
        {
            return Outcome::drop(Stat::DropBackendIpv6ExtensionHeader);
        }
        _ => return Outcome::pass(Stat::PassNotVip),
    }
    if let Some(vip) = lookup::service(flow) {
        return to_backend(ctx, &packet, &vip, now);
    }
    if let Some(endpoint) = lookup::endpoint(&flow.src, flow.src_port, flow.proto, flow.family) {
        return to_client(ctx, &packet, &endpoint, now);
    }
    if lookup::is_vip_address(&flow.dst, flow.family) {
        return Outcome::pass(Stat::PassVipOtherPort);
    }
    Outcome::pass(Stat::PassNotVip)
}

/// Client → VIP: pick (or keep) the backend, track the flow, route, destination NAT,
/// forward. A BPF subprogram (as `to_client`): each path's stack frame is its own.
#[inline(always)]
fn to_backend(ctx: &XdpContext, packet: &Packet, vip: &VipInfo, now: u64) -> Outcome {
    let len = parse::data_end(ctx) - parse::data(ctx);
    // The kernel answers with ICMP time exceeded; nothing is rewritten.
    if forward::ttl(ctx, packet).is_none_or(|ttl| ttl <= 1) {
        return Outcome::pass(Stat::PassTtlExceeded);
    }
    let Some((backend_id, backend, reason)) = pick_backend(ctx, packet, vip, now) else {
        return Outcome::drop(Stat::DropNoBackend);
    };
    let out = FlowKey {
        dst: backend.addr,
        dst_port: backend.port,
        ..packet.flow
    };
    let hop = match forward::route(ctx, packet, &out, now) {
        Route::Hop(hop) => Some(hop),
        Route::NoNeighbour => None,
        Route::Done(outcome) => return outcome,
    };
    if let Some(hop) = hop
        && forward::too_big(packet, hop)
    {
        if forward::dont_fragment(ctx, packet) {
            // Counted, not silent; answering with frag-needed / packet-too-big is to come
            // (see docs/ARCHITECTURE.md, "ICMP").
            return Outcome::drop(Stat::DropTooBig);
        }
        // IPv4 that may be fragmented: the kernel does it, after the rewrite.
        if nat::rewrite(ctx, packet, Side::Destination, &backend.addr, backend.port).is_err() {
            return Outcome::drop(Stat::DropFibFailure);
        }
        return Outcome::pass(Stat::PassFragmentationNeeded);
    }
    if nat::rewrite(ctx, packet, Side::Destination, &backend.addr, backend.port).is_err() {
        return Outcome::drop(Stat::DropFibFailure);
    }
    stats::count_service(vip.id, backend_id, len);
    match hop {
        Some(hop) => forward::send(ctx, packet, hop, reason),
        // The kernel forwards it (and resolves the neighbour meanwhile).
        None => Outcome::pass(Stat::PassNoNeighbour),
    }
}

/// The backend for a client → VIP packet: its tracked one while the entry is live and the
/// backend still serves it, else Maglev's choice, tracked from here on (a RST is never
/// tracked). The reason says which.
#[inline(always)]
fn pick_backend(
    ctx: &XdpContext,
    packet: &Packet,
    vip: &VipInfo,
    now: u64,
) -> Option<(u32, &'static Backend, Stat)> {
    let flags = packet.tcp_flags();
    let tcp = packet.flow.proto == IPPROTO_TCP;
    // A SYN opens a new connection even if its 5-tuple is still tracked (a client reusing
    // a port): it is balanced afresh, so drained and deleted backends get no new
    // connections, and the entry is replaced.
    let found = if packet.is_opening() {
        Lookup::Missing
    } else {
        conntrack::lookup(&packet.flow, now)
    };
    let stale = match found {
        Lookup::Live(slot) => {
            // SAFETY: a live entry is valid for this run (RCU).
            let conn = unsafe { &mut *slot };
            if let Some(backend) = select::tracked(conn, vip) {
                conntrack::on_packet(conn, flags, Direction::FromClient, now);
                return Some((conn.backend_id, backend, Stat::ForwardEstablished));
            }
            // Its backend went down, was deleted, or the id went to another backend.
            stats::count_event(Stat::CtRebalanced);
            Some(slot)
        }
        Lookup::Expired(slot) => {
            stats::count_event(Stat::CtExpired);
            Some(slot)
        }
        Lookup::Missing => {
            // A TCP segment of an open connection that is not tracked: its entry was
            // evicted, or the connection began before this lb saw it (a restart, another
            // lb node).
            if tcp && !packet.is_opening() {
                stats::count_event(Stat::CtMissMidFlow);
            }
            None
        }
    };
    // Maglev is deterministic: a miss on a non-SYN (after a restart, or on another lb
    // node) lands on the same backend the SYN did, while the backends are the same.
    let Some((id, backend)) = select::maglev(vip, &packet.flow) else {
        // Logs are compiled in but off unless `lb run --log-datapath` (the verifier
        // prunes them when the level global is 0).
        warn!(ctx, "vip {}: no usable backend, dropped", vip.id);
        return None;
    };
    let (state, fins) = conntrack::first_state(flags, tcp, CT_DATAGRAM);
    let conn = Conn {
        backend_id: id,
        vip_id: vip.id,
        last_seen_ns: now,
        generation: backend.generation,
        state,
        flags: fins,
        _pad: [0; 2],
    };
    match stale {
        Some(slot) => conntrack::replace(slot, &conn),
        // A RST ends a connection: it never creates an entry (a flood of them would
        // otherwise fill the table).
        None if flags & TCP_RST != 0 => stats::count_event(Stat::CtRstUntracked),
        None => {
            conntrack::insert(&packet.flow, &conn);
            stats::count_new_flow(vip.id);
            info!(
                ctx,
                "vip {}: new flow from port {} to backend {}", vip.id, packet.flow.src_port, id
            );
        }
    }
    Some((id, backend, Stat::ForwardNew))
}

/// Backend endpoint → anyone: a reply of the VIP the endpoint serves. It gets the VIP back
/// as its source whether or not its flow is still tracked (the reply rule in
/// docs/ARCHITECTURE.md): an endpoint serves one VIP, so nothing else can be meant, and a
/// reply must never leave with the backend's address. Packets for the lb itself (its
/// health checks) are passed untouched.
#[inline(always)]
fn to_client(ctx: &XdpContext, packet: &Packet, endpoint: &Endpoint, now: u64) -> Outcome {
    if forward::ttl(ctx, packet).is_none_or(|ttl| ttl <= 1) {
        return Outcome::pass(Stat::PassTtlExceeded);
    }
    let out = FlowKey {
        src: endpoint.vip_addr,
        src_port: endpoint.vip_port,
        ..packet.flow
    };
    let hop = match forward::route(ctx, packet, &out, now) {
        Route::Hop(hop) => Some(hop),
        Route::NoNeighbour => None,
        Route::Done(outcome) => return outcome,
    };
    if let Some(hop) = hop
        && forward::too_big(packet, hop)
    {
        if forward::dont_fragment(ctx, packet) {
            return Outcome::drop(Stat::DropTooBig);
        }
        if nat::rewrite(
            ctx,
            packet,
            Side::Source,
            &endpoint.vip_addr,
            endpoint.vip_port,
        )
        .is_err()
        {
            return Outcome::drop(Stat::DropFibFailure);
        }
        return Outcome::pass(Stat::PassFragmentationNeeded);
    }
    // The backend's FIN or RST moves the flow's lifecycle; other replies leave the entry
    // alone (the client's packets keep it fresh), so the reply path stays one lookup.
    let flags = packet.tcp_flags();
    if flags & (TCP_FIN | TCP_RST | TCP_SYN) != 0 {
        track_reply(packet, endpoint, flags, now);
    }
    if nat::rewrite(
        ctx,
        packet,
        Side::Source,
        &endpoint.vip_addr,
        endpoint.vip_port,
    )
    .is_err()
    {
        return Outcome::drop(Stat::DropFibFailure);
    }
    match hop {
        Some(hop) => forward::send(ctx, packet, hop, Stat::ForwardReply),
        None => Outcome::pass(Stat::PassNoNeighbour),
    }
}

/// Applies a backend's TCP flags to its flow's entry, if the flow is tracked to it.
#[inline(always)]
fn track_reply(packet: &Packet, endpoint: &Endpoint, flags: u8, now: u64) {
    let flow = FlowKey {
        src: packet.flow.dst,
        dst: endpoint.vip_addr,
        src_port: packet.flow.dst_port,
        dst_port: endpoint.vip_port,
        proto: packet.flow.proto,
        family: packet.flow.family,
        _pad: [0; 2],
    };
    if let Lookup::Live(slot) = conntrack::lookup(&flow, now) {
        // SAFETY: a live entry is valid for this run (RCU).
        let conn = unsafe { &mut *slot };
        if conn.backend_id == endpoint.backend_id {
            conntrack::on_packet(conn, flags, Direction::FromBackend, now);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
