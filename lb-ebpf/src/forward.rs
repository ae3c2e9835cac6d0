//! Forwarding a rewritten packet without the kernel stack: route and neighbour from
//! `bpf_fib_lookup`, then new MACs, TTL / hop limit down by one, and XDP_TX out of the
//! ingress interface or XDP_REDIRECT through the TX_PORTS devmap.

use core::mem;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::{bpf_ktime_get_ns, generated::bpf_fib_lookup},
    programs::XdpContext,
};
use lb_common::{
    consts::NEXTHOP_TTL_NS,
    flow::{NextHop, NextHopKey},
    stats::Stat,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    Outcome,
    csum::Delta,
    maps::{NEXTHOP, TX_PORTS},
    parse::{Packet, ptr_at},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Sends the (already rewritten) packet toward its new destination. `forwarded` is the
/// reason to count when the packet leaves through XDP. The route and neighbour come from
/// the per-CPU next-hop cache while its answer is fresh, else from `bpf_fib_lookup`. The
/// cache is keyed by destination and ingress interface only: source-based policy routes
/// are not honoured for the cache's lifetime.
#[inline(always)]
pub fn forward(ctx: &XdpContext, packet: &Packet, forwarded: Stat) -> Outcome {
    let key = NextHopKey {
        // The rewritten destination: one answer serves every flow to that backend/client.
        dst: packet.flow.dst,
        ingress_ifindex: ctx.ingress_ifindex() as u32,
        family: packet.flow.family,
        _pad: [0; 3],
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let hop = match NEXTHOP.get_ptr(&key) {
        // SAFETY: the entry is valid for this run (RCU); a racing update only costs a lookup.
        Some(hop) if unsafe { (*hop).expires_ns } > now => unsafe { *hop },
        _ => match lookup(ctx, packet) {
            Ok(mut hop) => {
                hop.expires_ns = now + NEXTHOP_TTL_NS;
                let _ = NEXTHOP.insert(&key, &hop, 0);
                hop
            }
            Err(outcome) => return outcome,
        },
    };
    send(ctx, packet, &hop, forwarded)
}

/// Route and neighbour for the packet from the kernel's FIB.
#[inline(always)]
fn lookup(ctx: &XdpContext, packet: &Packet) -> Result<NextHop, Outcome> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input (plain integers and unions).
    let mut fib: FibParams = unsafe { mem::zeroed() };
    fib.l4_protocol = packet.flow.proto;
    fib.sport = packet.flow.src_port.to_be();
    fib.dport = packet.flow.dst_port.to_be();
    fib.ifindex = ctx.ingress_ifindex() as u32;
    if packet.is_v4() {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, packet.l3_offset) else {
            return Err(Outcome::drop(Stat::DropFibFailure));
        };
        // SAFETY: bounds checked; byte-aligned header.
        let ip = unsafe { &*ip };
        fib.family = AF_INET;
        fib.__bindgen_anon_1.tot_len = ip.tot_len();
        fib.__bindgen_anon_2.tos = ip.tos;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, packet.l3_offset) else {
            return Err(Outcome::drop(Stat::DropFibFailure));
        };
        // SAFETY: as above.
        let ip = unsafe { &*ip };
        fib.family = AF_INET6;
        fib.__bindgen_anon_1.tot_len = ip.payload_len() + Ipv6Hdr::LEN as u16;
        // Traffic class and flow label, network order, without the version nibble.
        fib.__bindgen_anon_2.flowinfo =
            u32::from_ne_bytes([ip.vcf[0] & 0x0f, ip.vcf[1], ip.vcf[2], ip.vcf[3]]);
        fib.__bindgen_anon_3.ipv6_src = words(&ip.src_addr);
        fib.__bindgen_anon_4.ipv6_dst = words(&ip.dst_addr);
    }
    // SAFETY: ctx and fib are valid for the helper; the size is that of the struct.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(NextHop {
            ifindex: fib.ifindex,
            smac: fib.smac,
            dmac: fib.dmac,
            _pad: [0; 4],
            expires_ns: 0,
        }),
        // The kernel resolves the neighbour (ARP/ND) and forwards this packet itself.
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Outcome::pass(Stat::PassNoNeighbour)),
        _ => Err(Outcome::drop(Stat::DropFibFailure)),
    }
}

/// New MACs, one hop off the TTL, and out: XDP_TX back through the ingress interface,
/// else XDP_REDIRECT through TX_PORTS.
#[inline(always)]
fn send(ctx: &XdpContext, packet: &Packet, hop: &NextHop, forwarded: Stat) -> Outcome {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Outcome::drop(Stat::DropFibFailure);
    };
    // SAFETY: bounds checked.
    let eth = unsafe { &mut *eth };
    eth.dst_addr = hop.dmac;
    eth.src_addr = hop.smac;
    if decrement_ttl(ctx, packet).is_none() {
        return Outcome::drop(Stat::DropFibFailure);
    }
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return Outcome::new(xdp_action::XDP_TX, forwarded);
    }
    match TX_PORTS.redirect(hop.ifindex, 0) {
        Ok(action) => Outcome::new(action, forwarded),
        // The egress interface is not one lb is attached to: let the kernel send it.
        Err(_) => Outcome::pass(Stat::PassEgressNotAttached),
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
