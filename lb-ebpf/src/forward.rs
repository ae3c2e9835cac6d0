//! Forwarding without the kernel stack: where a packet goes is decided before anything in
//! it is rewritten (route, neighbour, egress interface and MTU, from a per-CPU next-hop
//! slot or `bpf_fib_lookup`); then new MACs, TTL / hop limit down by one, and XDP_TX out
//! of the ingress interface or XDP_REDIRECT through the TX_PORTS devmap.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    consts::{ABLATE_HOP_CACHE, FAMILY_V4, HOP_SLOTS, NEXTHOP_TTL_NS},
    flow::{FlowKey, NEXTHOP_FLAG_ATTACHED, NEXTHOP_FLAG_DIRECT, NextHop},
    hash::address_slot,
    service::Addr,
    stats::Stat,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    Outcome, copy,
    csum::Delta,
    maps::{BACKEND_HOPS, FIB_PARAMS, HOPS, TX_PORTS, UNATTACHED_EGRESS, ablated},
    parse::{Packet, ptr_at},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where the kernel's FIB sends a packet, when it is not straight out through XDP.
pub enum Route {
    /// Out through XDP: MACs, egress and MTU known (this CPU's slot, valid for this run).
    Hop(&'static NextHop),
    /// The route's neighbour is not resolved: the kernel must forward this packet (and
    /// resolve it), so the packet is rewritten and passed.
    NoNeighbour,
    /// The route leaves through an interface lb is not attached to (XDP cannot send
    /// there): the packet is rewritten like any other and passed for the kernel to
    /// forward, so a reply still leaves from its VIP, never with the backend's address.
    /// The answer (MTU included) is that slot's, for the too-big check.
    NotAttached(&'static NextHop),
    /// Everything else is decided before any rewrite: the verdict to return as it is.
    Done(Outcome),
}

/// Where a next hop is cached: the backend's own slot, or the slot its destination hashes
/// to in the shared per-CPU cache.
#[derive(Clone, Copy)]
pub enum HopSlot {
    Backend(u32),
    Destination,
}

/// The next hop toward `out.dst` for a packet that will leave as `out` (its 5-tuple after
/// the rewrite). A slot's answer is used while it is fresh and for the same destination
/// and ingress interface; otherwise the FIB is asked and the slot overwritten in place
/// (per-CPU array slots: no hash, no insert, no lock). Source-based policy routes are not
/// honoured for a slot's lifetime.
#[inline(always)]
pub fn route(ctx: &XdpContext, packet: &Packet, out: &FlowKey, slot: HopSlot, now: u64) -> Route {
    let ingress = ctx.ingress_ifindex() as u32;
    let cached = match slot {
        HopSlot::Backend(id) => BACKEND_HOPS.get_ptr_mut(id),
        HopSlot::Destination => HOPS.get_ptr_mut(address_slot(&out.dst, ingress, HOP_SLOTS)),
    };
    let Some(hop) = cached else {
        return Route::Done(Outcome::pass(Stat::PassNoNeighbour));
    };
    // SAFETY: this CPU's slot, valid for the run; the program is not re-entered on a CPU.
    let hop = unsafe { &mut *hop };
    if ablated(ABLATE_HOP_CACHE) || !fresh(hop, now, ingress, out.family, &out.dst) {
        // Written straight into the slot: the stack has no room for a copy.
        match fib_lookup(ctx, out, traffic_class(ctx, packet, out), hop) {
            BPF_FIB_LKUP_RET_SUCCESS => {}
            // The kernel resolves the neighbour (ARP/ND) and forwards this packet itself.
            BPF_FIB_LKUP_RET_NO_NEIGH => return Route::NoNeighbour,
            // Addressed to this host (the lb's own health checks, say), or not routable.
            BPF_FIB_LKUP_RET_NOT_FWDED => {
                return Route::Done(Outcome::pass(Stat::PassToLocal));
            }
            // `lb run` refuses to start like this; counted apart in case it changed since.
            BPF_FIB_LKUP_RET_FWD_DISABLED => {
                return Route::Done(Outcome::drop(Stat::DropForwardingDisabled));
            }
            _ => return Route::Done(Outcome::drop(Stat::DropFibFailure)),
        }
        hop.dst = out.dst;
        hop.family = out.family;
        hop.ingress_ifindex = ingress;
        hop.expires_ns = now + NEXTHOP_TTL_NS;
        // The FIB lookup set the direct flag; the others are decided here.
        hop.flags &= NEXTHOP_FLAG_DIRECT;
        if hop.ifindex == ingress || TX_PORTS.get(hop.ifindex).is_some() {
            hop.flags |= NEXTHOP_FLAG_ATTACHED;
        } else {
            // Seen at most once a second per destination (the answer is cached). A full
            // map loses this report, not the packet.
            UNATTACHED_EGRESS
                .insert(&hop.ifindex, &1, 0)
                .unwrap_or_default();
        }
    }
    if hop.flags & NEXTHOP_FLAG_ATTACHED == 0 {
        return Route::NotAttached(hop);
    }
    Route::Hop(hop)
}

/// Whether a next-hop slot still answers for `dst` (of `family`) from `ingress`.
#[inline(always)]
fn fresh(hop: &NextHop, now: u64, ingress: u32, family: u8, dst: &Addr) -> bool {
    hop.expires_ns > now && same_route(hop, ingress, family, dst)
}

/// Whether a next-hop slot holds the route to `dst` (of `family`) from `ingress`, however
/// old.
#[inline(always)]
pub fn same_route(hop: &NextHop, ingress: u32, family: u8, dst: &Addr) -> bool {
    hop.ingress_ifindex == ingress && hop.family == family && same_addr(&hop.dst, dst)
}

/// Compares two addresses a word at a time.
#[inline(always)]
fn same_addr(a: &Addr, b: &Addr) -> bool {
    words(a) == words(b)
}

/// The traffic class the FIB is asked with for a packet that leaves as `out`: its own
/// TOS (IPv4) or traffic class and flow label (IPv6, network order, without the version
/// nibble) when it leaves in its own family, 0 when a DSR outer header of another family
/// carries it.
#[inline(always)]
pub fn traffic_class(ctx: &XdpContext, packet: &Packet, out: &FlowKey) -> u32 {
    if packet.flow.family != out.family {
        return 0;
    }
    if packet.is_v4() {
        // SAFETY: bounds checked; byte-aligned header.
        ptr_at::<Ipv4Hdr>(ctx, packet.l3_offset).map_or(0, |ip| u32::from(unsafe { (*ip).tos }))
    } else {
        ptr_at::<Ipv6Hdr>(ctx, packet.l3_offset).map_or(0, |ip| {
            // SAFETY: as above.
            let vcf = unsafe { (*ip).vcf };
            u32::from_ne_bytes([vcf[0] & 0x0f, vcf[1], vcf[2], vcf[3]])
        })
    }
}

/// Route, neighbour and MTU from the kernel's FIB, written into `hop` (egress interface,
/// MACs, MTU) on success; returns the FIB's answer code. `class` is `traffic_class`'s
/// answer. Asked only while the next-hop cache misses.
#[inline(always)]
pub fn fib_lookup(ctx: &XdpContext, out: &FlowKey, class: u32, hop: &mut NextHop) -> u32 {
    match FIB_PARAMS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot (8-aligned, as map values are), valid for the whole run;
        // only `ask_fib` uses it, and a program runs to completion on its CPU.
        Some(fib) => ask_fib(ctx, out, class, hop, unsafe { &mut *fib }),
        None => FIB_NOT_ASKED,
    }
}

/// `fib_lookup`'s work, with this CPU's FIB_PARAMS slot as the parameter block. A BPF
/// subprogram that ends `lb`'s deepest call chain (tests/verifier-budgets.txt): the 64
/// bytes of parameters on its stack took the chain to 464 of the verifier's 512 bytes,
/// and with the slot looked up here, the values kept across that helper call spilled
/// and took the chain 16 bytes deeper. It makes one helper call and needs no stack.
#[inline(never)]
fn ask_fib(
    ctx: &XdpContext,
    out: &FlowKey,
    class: u32,
    hop: &mut NextHop,
    fib: &mut FibParams,
) -> u32 {
    // SAFETY: all-zero is a valid input (plain integers and unions), written in place.
    unsafe { copy::zero_words(fib) };
    fib.l4_protocol = out.proto;
    fib.sport = out.src_port.to_be();
    fib.dport = out.dst_port.to_be();
    fib.ifindex = ctx.ingress_ifindex() as u32;
    // tot_len stays 0: the route's MTU comes back in mtu_result, compared by the caller
    // (a too-big packet is answered, not failed).
    if out.family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = class as u8;
        fib.__bindgen_anon_3.ipv4_src =
            u32::from_ne_bytes([out.src[0], out.src[1], out.src[2], out.src[3]]);
        fib.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([out.dst[0], out.dst[1], out.dst[2], out.dst[3]]);
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_2.flowinfo = class;
        fib.__bindgen_anon_3.ipv6_src = words(&out.src);
        fib.__bindgen_anon_4.ipv6_dst = words(&out.dst);
    }
    // SAFETY: ctx and fib are valid for the helper; the size is that of the struct.
    #[expect(
        clippy::ptr_as_ptr,
        reason = "`.cast()` changes how LLVM inlines ask_fib: 16 instructions more"
    )]
    let rc =
        unsafe { bpf_fib_lookup(ctx.ctx as *mut _, fib, size_of::<FibParams>() as i32, 0) } as u32;
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        hop.ifindex = fib.ifindex;
        hop.smac = fib.smac;
        hop.dmac = fib.dmac;
        // SAFETY: on success the kernel writes the route's MTU in this union member.
        hop.mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
        // On success the destination field holds the next hop: the gateway, if any.
        // SAFETY: plain integers, written by the kernel for the family asked.
        let direct = unsafe {
            if out.family == FAMILY_V4 {
                fib.__bindgen_anon_4.ipv4_dst
                    == u32::from_ne_bytes([out.dst[0], out.dst[1], out.dst[2], out.dst[3]])
            } else {
                fib.__bindgen_anon_4.ipv6_dst == words(&out.dst)
            }
        };
        hop.flags = if direct { NEXTHOP_FLAG_DIRECT } else { 0 };
    }
    rc
}

/// Not a FIB answer: the packet's header was out of reach (never, past the parser).
const FIB_NOT_ASKED: u32 = u32::MAX;

/// Whether the IP packet is larger than the route's MTU (0: not known, not checked).
#[inline(always)]
pub const fn too_big(packet: &Packet, hop: &NextHop) -> bool {
    hop.mtu != 0 && packet.ip_len > hop.mtu as usize
}

/// Whether the packet may not be fragmented on the way: IPv6 never is by routers, IPv4
/// when its DF bit is set.
#[inline(always)]
pub fn dont_fragment(ctx: &XdpContext, packet: &Packet) -> bool {
    if !packet.is_v4() {
        return true;
    }
    ptr_at::<Ipv4Hdr>(ctx, packet.l3_offset)
        // SAFETY: bounds checked.
        .is_some_and(|ip| unsafe { (*ip).frags[0] } & 0x40 != 0)
}

/// New MACs, one hop off the TTL, and out: XDP_TX back through the ingress interface,
/// else XDP_REDIRECT through TX_PORTS.
#[inline(always)]
pub fn send(ctx: &XdpContext, packet: &Packet, hop: &NextHop, forwarded: Stat) -> Outcome {
    if decrement_ttl(ctx, packet).is_none() {
        return Outcome::drop(Stat::DropFibFailure);
    }
    transmit(ctx, hop, forwarded)
}

/// New MACs and out, the IP packet as it is (DSR: the lb is no router hop for it): through
/// the TX_PORTS devmap, the ingress interface included, which wakes the receiving side on
/// every driver (veth's XDP_TX reaches its peer only when the peer runs XDP too, and a
/// one-armed lb sends most packets back where they came from); XDP_TX if the devmap
/// lacks the ingress interface.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, hop: &NextHop, forwarded: Stat) -> Outcome {
    let Some(macs) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return Outcome::drop(Stat::DropFibFailure);
    };
    // SAFETY: bounds checked; the frame and both MACs of a NextHop (offsets 24 and 30 of
    // an 8-aligned struct) are 2-aligned.
    unsafe {
        let [d0, d1, d2] = copy::read_halves::<3>(hop.dmac.as_ptr());
        let [s0, s1, s2] = copy::read_halves::<3>(hop.smac.as_ptr());
        copy::write_halves(macs.cast(), &[d0, d1, d2, s0, s1, s2]);
    }
    match TX_PORTS.redirect(hop.ifindex, 0) {
        Ok(action) => Outcome::new(action, forwarded),
        Err(_) if hop.ifindex == crate::parse::ingress_ifindex(ctx) => {
            Outcome::new(xdp_action::XDP_TX, forwarded)
        }
        // Detached since the next hop was cached (at most a second ago).
        Err(_) => Outcome::drop(Stat::DropFibFailure),
    }
}

/// Sends what the datapath wrote itself (an ICMP answer) back out of the interface the
/// packet came in on: through the devmap, which wakes the receiving side on every driver
/// (veth's XDP_TX wakes its peer only when the peer runs XDP too), else XDP_TX.
#[inline(always)]
pub fn bounce(ctx: &XdpContext, reason: Stat) -> Outcome {
    match TX_PORTS.redirect(crate::parse::ingress_ifindex(ctx), 0) {
        Ok(action) => Outcome::new(action, reason),
        Err(_) => Outcome::new(xdp_action::XDP_TX, reason),
    }
}

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// One router hop. The caller has already passed packets with TTL ≤ 1 to the kernel.
#[inline(always)]
fn decrement_ttl(ctx: &XdpContext, packet: &Packet) -> Option<()> {
    if packet.is_v4() {
        let ip = ptr_at::<Ipv4Hdr>(ctx, packet.l3_offset)?;
        // SAFETY: bounds checked.
        let ip = unsafe { &mut *ip };
        let mut delta = Delta::default();
        let old = u16::from_be_bytes([ip.ttl, ip.proto]);
        ip.ttl -= 1;
        delta.word(old, u16::from_be_bytes([ip.ttl, ip.proto]));
        ip.check = delta.apply(u16::from_be_bytes(ip.check)).to_be_bytes();
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, packet.l3_offset)?;
        // SAFETY: bounds checked.
        let ip = unsafe { &mut *ip };
        ip.hop_limit -= 1;
    }
    Some(())
}

/// TTL / hop limit of the packet, for the "expires here" check before any rewrite.
#[inline(always)]
pub fn ttl(ctx: &XdpContext, packet: &Packet) -> Option<u8> {
    if packet.is_v4() {
        let ip = ptr_at::<Ipv4Hdr>(ctx, packet.l3_offset)?;
        // SAFETY: bounds checked.
        Some(unsafe { (*ip).ttl })
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, packet.l3_offset)?;
        // SAFETY: bounds checked.
        Some(unsafe { (*ip).hop_limit })
    }
}
