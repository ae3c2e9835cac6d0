//! The established fast path: a per-CPU, direct-mapped cache of proven flows' forwarding
//! decisions (`FLOW_CACHE`). A client → VIP packet without SYN, FIN or RST whose 5-tuple
//! and ingress interface match its slot goes out with one array read in place of the
//! conntrack hash lookup and the MAC table: NAT through the next hop the slow path used,
//! DSR through its backend's next-hop slot, inline (no tail call to `lb_encap`, no second
//! parse); dsr-gue by a tail call to `lb_encap_gue`, which builds the hop list. Everything else takes the slow path, which fills the slot when it forwards a
//! proven flow. The slot answers until `valid_until_jiffies` (at most `FLOW_CACHE_NS`,
//! shorter than any timeout of a state it serves), so the slow path still refreshes the
//! flow's conntrack entry and next hop that often; the backend is read again for every
//! packet, so a backend marked down, deleted or given to another backend (its
//! generation) stops the cache at once.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    consts::{ABLATE_FLOW_CACHE, BACKEND_ACTIVE, BACKEND_DRAINING, FAMILY_V4, JUMP_ENCAP_GUE},
    encap::{MODE_DSR_L2, MODE_NAT, SENT_ESTABLISHED, overhead},
    flow::{
        CachedFlow, FLOW_CACHE_ANY_MAC, FlowKey, JIFFY_NS_MAX, NEXTHOP_FLAG_ATTACHED, NextHop,
        flow_cache_slot,
    },
    gue::MODE_DSR_GUE,
    service::Backend,
    stats::Stat,
};
use network_types::eth::EthHdr;

use crate::{
    Outcome, copy, encap, forward, lookup,
    maps::{BACKEND_HOPS, BACKENDS, ENCAP_ARGS, FLOW_CACHE, JUMPS, PARSED, ablated, flow_cache_ns},
    nat::{self, Side},
    parse::{self, L4, Packet, ptr_at},
    stats,
};

/// What [`forward`] returns when the slow path decides.
pub const MISS: u64 = u64::MAX - 1;

/// Forwards the packet `lb` parsed into PARSED (a [`cacheable`] one, to a VIP address) if
/// its flow is cached: its outcome, packed ([`Outcome::pack`]), or [`MISS`]. A BPF subprogram: its
/// frame is its own, not the slow path's (which has little of its 512 bytes left).
#[inline(never)]
pub fn forward(ctx: &XdpContext) -> u64 {
    let Some(packet) = PARSED.get_ptr(0) else {
        return MISS;
    };
    // SAFETY: this CPU's slot, written by `lb` before this call.
    let parsed = unsafe { &*packet };
    if !cacheable(parsed) || !lookup::may_be_vip(u32::from(parsed.dst_class)) {
        return MISS;
    }
    // Untagged (`cacheable`): a constant offset for the verifier.
    let packet = &Packet {
        l3_offset: parse::UNTAGGED_L3_OFFSET,
        ..parsed.bounded()
    };
    hit(ctx, packet).map_or(MISS, Outcome::pack)
}

#[inline(always)]
fn hit(ctx: &XdpContext, packet: &Packet) -> Option<Outcome> {
    if ablated(ABLATE_FLOW_CACHE) {
        return None;
    }
    let entry = FLOW_CACHE.get_ptr(flow_cache_slot(&packet.flow))?;
    // SAFETY: this CPU's slot, valid for the run; the program is not re-entered on a CPU.
    let entry = unsafe { &*entry };
    if crate::jiffies() >= entry.valid_until_jiffies
        || entry.ingress_ifindex != parse::ingress_ifindex(ctx)
        || !same_flow(&entry.key, &packet.flow)
    {
        return None;
    }
    if entry.flags & FLOW_CACHE_ANY_MAC == 0 && !addressed_to(ctx, &entry.local_mac) {
        return None;
    }
    let backend = BACKENDS.get(entry.backend_id)?;
    if backend.generation != entry.generation
        || backend.vip_id != entry.vip_id
        || !(backend.state == BACKEND_ACTIVE || backend.state == BACKEND_DRAINING)
    {
        return None;
    }
    // Expiring TTLs are the slow path's to answer.
    if forward::ttl(ctx, packet).is_none_or(|ttl| ttl <= 1) {
        return None;
    }
    if backend.mode == MODE_NAT {
        nat_hit(ctx, packet, entry, backend)
    } else if backend.mode == MODE_DSR_GUE {
        Some(gue_hit(ctx, entry))
    } else {
        dsr_hit(ctx, packet, entry, backend)
    }
}

/// dsr-gue: the cache spares the conntrack lookup; the hop list, which the slot does not
/// hold, is built for every packet by `lb_encap_gue` (route and size checked there too),
/// tail-called with the cached backend first. Dropped and counted if that program is not
/// there (a JUMPS map pinned by a release without dsr-gue).
#[inline(always)]
fn gue_hit(ctx: &XdpContext, entry: &CachedFlow) -> Outcome {
    if let Some(args) = ENCAP_ARGS.get_ptr_mut(0) {
        counted_hit(ctx, entry);
        // SAFETY: this CPU's slot, read by the tail-called program right after; the
        // context is the program's, and a tail call that returns failed.
        unsafe {
            (*args).backend_id = entry.backend_id;
            (*args).sent = SENT_ESTABLISHED;
            JUMPS.tail_call(ctx, JUMP_ENCAP_GUE);
        }
    }
    Outcome::drop(Stat::DropDsrUnsupported)
}

/// Destination NAT through the next hop the slow path used.
#[inline(always)]
fn nat_hit(
    ctx: &XdpContext,
    packet: &Packet,
    entry: &CachedFlow,
    backend: &Backend,
) -> Option<Outcome> {
    // Packets grown too big for the route are the slow path's to answer.
    if entry.hop.mtu != 0 && packet.ip_len > entry.hop.mtu as usize {
        return None;
    }
    counted_hit(ctx, entry);
    if nat::rewrite(ctx, packet, Side::Destination, &backend.addr, backend.port).is_err() {
        return Some(Outcome::drop(Stat::DropFibFailure));
    }
    Some(forward::send(
        ctx,
        packet,
        &entry.hop,
        Stat::ForwardEstablished,
    ))
}

/// Direct server return through the backend's next-hop slot, as the slow path's `dsr`
/// (or `lb_encap`) left it: a slot for another route, a route lb cannot send on, or a
/// packet that no longer fits leaves the decision to the slow path (which answers
/// too-big packets and drops what it must). The slot's age is not checked (that needs the
/// nanosecond clock): as with a NAT slot's copy of its hop, the route is at most
/// `NEXTHOP_TTL_NS` older than the fill.
#[inline(always)]
fn dsr_hit(
    ctx: &XdpContext,
    packet: &Packet,
    entry: &CachedFlow,
    backend: &Backend,
) -> Option<Outcome> {
    if backend.family == FAMILY_V4 && !packet.is_v4() {
        return None;
    }
    let hop = BACKEND_HOPS.get_ptr(entry.backend_id)?;
    // SAFETY: this CPU's slot, valid for the run.
    let hop = unsafe { &*hop };
    if !forward::same_route(hop, entry.ingress_ifindex, backend.family, &backend.addr)
        || hop.flags & NEXTHOP_FLAG_ATTACHED == 0
    {
        return None;
    }
    let added = if backend.mode == MODE_DSR_L2 {
        0
    } else {
        overhead(backend.family)
    };
    if hop.mtu != 0 && packet.ip_len + added > hop.mtu as usize {
        return None;
    }
    counted_hit(ctx, entry);
    Some(encap::send(
        ctx,
        packet,
        backend,
        hop,
        Stat::ForwardEstablished,
    ))
}

/// Counts a hit as the slow path counts an established packet, and as a hit.
#[inline(always)]
fn counted_hit(ctx: &XdpContext, entry: &CachedFlow) {
    let len = parse::data_end(ctx) - parse::data(ctx);
    stats::count_service(entry.vip_id, entry.backend_id, len);
    stats::count_event(Stat::FlowCacheHit);
}

/// Whether a packet may take the fast path: TCP without SYN, FIN or RST (they move the
/// flow's lifecycle), or UDP; never a fragment or a VLAN-tagged frame.
#[inline(always)]
pub fn cacheable(packet: &Packet) -> bool {
    packet.fragment == parse::FRAGMENT_NONE
        && packet.l3_offset == parse::UNTAGGED_L3_OFFSET
        && match packet.l4 {
            L4::Tcp => packet.tcp_flags & (parse::TCP_SYN | parse::TCP_FIN | parse::TCP_RST) == 0,
            L4::Udp => true,
            _ => false,
        }
}

/// Fills the packet's slot as the slow path sends it to `backend` (`backend_id`): a
/// proven flow, in a state the cache serves. `hop`: the route a NAT packet took (a DSR hit
/// reads the backend's next-hop slot, which `lb_encap` keeps).
#[inline(always)]
pub fn fill(
    ctx: &XdpContext,
    packet: &Packet,
    backend_id: u32,
    backend: &Backend,
    hop: Option<&NextHop>,
) {
    let valid_for = flow_cache_ns() / JIFFY_NS_MAX;
    if ablated(ABLATE_FLOW_CACHE) || valid_for == 0 || !cacheable(packet) {
        return;
    }
    let Some(entry) = FLOW_CACHE.get_ptr_mut(flow_cache_slot(&packet.flow)) else {
        return;
    };
    let local_mac = lookup::local_mac(ctx);
    // SAFETY: this CPU's slot, as in `forward`.
    unsafe {
        let entry: &mut CachedFlow = &mut *entry;
        copy::words(&raw mut entry.key, &raw const packet.flow);
        entry.backend_id = backend_id;
        entry.generation = backend.generation;
        entry.vip_id = backend.vip_id;
        entry.ingress_ifindex = parse::ingress_ifindex(ctx);
        if let Some(hop) = hop {
            copy::words(&raw mut entry.hop, hop);
        }
        match local_mac {
            Some(mac) => {
                entry.local_mac = mac;
                entry.flags = 0;
            }
            None => entry.flags = FLOW_CACHE_ANY_MAC,
        }
        entry.valid_until_jiffies = crate::jiffies() + valid_for;
    }
}

/// Forgets this CPU's slot for `flow` if it holds it: a SYN reusing the 5-tuple of a
/// cached flow opens a new connection, balanced afresh, whose next packets must not go
/// to the old one's backend. (A 5-tuple's packets arrive on one CPU, by receive-side
/// scaling.)
#[inline(always)]
pub fn forget(flow: &FlowKey) {
    if let Some(entry) = FLOW_CACHE.get_ptr_mut(flow_cache_slot(flow)) {
        // SAFETY: this CPU's slot, as in `forward`.
        unsafe {
            if same_flow(&(*entry).key, flow) {
                (*entry).valid_until_jiffies = 0;
            }
        }
    }
}

/// Compares two 5-tuples as five words.
#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    // SAFETY: FlowKey is 40 bytes of plain integers, aligned to 8.
    let (a, b) = unsafe {
        (
            &*core::ptr::from_ref(a).cast::<[u64; 5]>(),
            &*core::ptr::from_ref(b).cast::<[u64; 5]>(),
        )
    };
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
}

/// Whether the frame's destination MAC is `mac`.
#[inline(always)]
fn addressed_to(ctx: &XdpContext, mac: &[u8; 6]) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe { (*eth).dst_addr == *mac }
}
