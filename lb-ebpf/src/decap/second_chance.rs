//! The second chance, on a backend: a dsr-gue packet is taken here when it opens a
//! connection (a SYN), belongs to one of this host's sockets, is a UDP flow this host took
//! recently, or has no further hop; otherwise it goes on to its next hop, its outer
//! header rewritten (this host as source, the next hop as destination), without the stack.
//!
//! UDP has no socket to ask (a server's socket is not connected), so the recent-flows
//! table stands in: a flow is recorded where it is taken. A UDP flow new after a change
//! therefore goes to the last hop of its list (no hop before knows it) and stays there
//! while that backend is in its list.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, bpf_sock_tuple, xdp_action,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect, bpf_sk_release,
        bpf_skc_lookup_tcp,
    },
    programs::XdpContext,
};
use lb_common::{
    consts::{FAMILY_V4, FAMILY_V6, IPPROTO_TCP, IPPROTO_UDP},
    decap::{DECAP_RECENT_NS, DECAP_STATS_LEN, DecapStat},
    gue::{GUE_HEADER_LEN, RecentKey, UDP_LEN, hop_len},
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    DECAP_RECENT, DECAP_SCRATCH,
    gue::Gue,
    tunnel::{ETH_P_IPV4, Tunnel, header, ptr_at},
};

/// The helpers' parameter blocks, in this CPU's `DECAP_SCRATCH` slot. Written a word at a
/// time (`zero_words`, `set_v4`): a plain zeroing or a partial copy compiles to a byte
/// loop that the verifier walks byte by byte on every path (with them this program took
/// 461,520 verified instructions; 181,426 without).
#[repr(C, align(8))]
pub struct Scratch {
    /// The inner flow (`inner_flow`).
    key: RecentKey,
    fib: bpf_fib_lookup,
    tuple: bpf_sock_tuple,
    /// Why a packet is taken, between `set_aside` and `set_aside_reason`.
    taken: u32,
}

/// Keeps why this packet is taken in this CPU's scratch slot.
#[inline(always)]
pub fn set_aside(stat: DecapStat) {
    if let Some(scratch) = DECAP_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the program runs to completion on its CPU.
        unsafe { (*scratch).taken = stat.index() };
    }
}

/// What [`set_aside`] kept (the last hop's reason if the slot is unreadable).
#[inline(always)]
pub fn set_aside_reason() -> DecapStat {
    let index = DECAP_SCRATCH
        .get_ptr(0)
        // SAFETY: this CPU's slot, written by `set_aside` in this run.
        .map_or(DecapStat::GueTakenLastHop.index(), |s| unsafe {
            (*s).taken
        });
    if index >= DECAP_STATS_LEN {
        return DecapStat::GueTakenLastHop;
    }
    // SAFETY: `DecapStat` is `repr(u32)` with every value below DECAP_STATS_LEN (its
    // indices are dense, a unit test in lb-common checks it); no table in .rodata.
    unsafe { core::mem::transmute::<u32, DecapStat>(index) }
}

/// Zeroes a `T` that is a whole number of 8-byte words, 8-aligned, one store per word.
///
/// # Safety
/// `dst` must be valid for writes of a `T`, 8-aligned; all-zero must be a valid `T`.
#[inline(always)]
unsafe fn zero_words<T>(dst: *mut T) {
    let words = dst.cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: inside `dst` (the caller's promise), 8-aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
}

/// An IPv6 address (in the packet) into a 16-byte field, as two 8-byte words.
#[inline(always)]
fn set_v6(field: &mut [u8; 16], addr: &[u8; 16]) {
    let from = addr.as_ptr().cast::<u64>();
    let words = field.as_mut_ptr().cast::<u64>();
    // SAFETY: 16 bytes each; the packet's are read unaligned, the field is 8-aligned.
    unsafe {
        core::ptr::write_volatile(words, core::ptr::read_unaligned(from));
        core::ptr::write_volatile(words.add(1), core::ptr::read_unaligned(from.add(1)));
    }
}

/// An IPv4 address in a 16-byte field as the balancer stores it (the rest zero), in two
/// 8-byte stores (the field is 8-aligned in `Scratch`).
#[inline(always)]
fn set_v4(field: &mut [u8; 16], v4: [u8; 4]) {
    let low = u64::from_ne_bytes([v4[0], v4[1], v4[2], v4[3], 0, 0, 0, 0]);
    let words = field.as_mut_ptr().cast::<u64>();
    // SAFETY: 16 bytes, 8-aligned (offsets 0 and 16 of an 8-aligned struct).
    unsafe {
        core::ptr::write_volatile(words, low);
        core::ptr::write_volatile(words.add(1), 0);
    }
}

/// What to do with a dsr-gue packet.
pub enum Choice {
    /// Decapsulate and deliver here, counted as this.
    Take(DecapStat),
    /// Send on to the next hop.
    Forward,
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// `TCP_LISTEN` in `bpf_sock::state`: a listener matches any client, so it proves nothing.
const TCP_LISTEN: u32 = 10;
/// `BPF_F_CURRENT_NETNS`: look in the network namespace of the receiving device.
const CURRENT_NETNS: u64 = u64::MAX;
/// `BPF_FIB_LOOKUP_OUTPUT`: route as this host's own packet, out of any interface (the FIB
/// still answers FWD_DISABLED on a host that does not forward: see `forward`).
const FIB_OUTPUT: u32 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// The IPv4 fragment offset: a later fragment carries no ports.
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// The inner packet's flow, as the lb balanced it: its 5-tuple in this CPU's scratch slot.
struct InnerFlow<'k> {
    key: &'k RecentKey,
    l4_at: usize,
    /// `key`'s protocol and family again, in registers: read back from the map value they
    /// would be unknown to the verifier, which would walk every branch on them.
    proto: u8,
    v4: bool,
}

/// The rule (module doc) for a checked dsr-gue packet.
#[inline(always)]
pub fn choose(ctx: &XdpContext, tunnel: &Tunnel, gue: &Gue) -> Choice {
    let has_next = gue.list.has_next();
    let Some(scratch) = DECAP_SCRATCH.get_ptr_mut(0) else {
        return Choice::Take(DecapStat::GueTakenUnforwardable);
    };
    // SAFETY: this CPU's slot, valid for the run; a program runs to completion on its CPU.
    let scratch = unsafe { &mut *scratch };
    let Some(inner) = inner_flow(ctx, tunnel, &mut scratch.key) else {
        return Choice::Take(if has_next {
            DecapStat::GueTakenUnforwardable
        } else {
            DecapStat::GueTakenLastHop
        });
    };
    if inner.proto == IPPROTO_TCP {
        let flags = header::<[u8; 14]>(ctx, inner.l4_at).map_or(0, |tcp| tcp[13]);
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            return Choice::Take(DecapStat::GueTakenSyn);
        }
        if has_socket(ctx, inner.key, inner.v4, &mut scratch.tuple) {
            return Choice::Take(DecapStat::GueTakenSocket);
        }
        if has_next {
            return Choice::Forward;
        }
        return Choice::Take(DecapStat::GueTakenLastHop);
    }
    // SAFETY: the clock helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: a hash lookup; the value is copied at once.
    let seen = unsafe { DECAP_RECENT.get(inner.key) }.copied();
    if seen.is_some_and(|at| now.saturating_sub(at) <= DECAP_RECENT_NS) {
        let _ = DECAP_RECENT.insert(inner.key, &now, 0);
        return Choice::Take(DecapStat::GueTakenRecentUdp);
    }
    if has_next {
        return Choice::Forward;
    }
    // A full table evicts its least recently used flow: that flow then goes on when a
    // later change gives it a second hop.
    let _ = DECAP_RECENT.insert(inner.key, &now, 0);
    Choice::Take(DecapStat::GueTakenLastHop)
}

/// The inner TCP or UDP flow; `None` for other protocols and later fragments.
#[inline(always)]
fn inner_flow<'k>(
    ctx: &XdpContext,
    tunnel: &Tunnel,
    key: &'k mut RecentKey,
) -> Option<InnerFlow<'k>> {
    let at = tunnel.inner_at;
    key._pad = [0; 2];
    let v4 = tunnel.inner_ether_type == ETH_P_IPV4;
    let (l4_at, proto) = if v4 {
        let ip: &Ipv4Hdr = header(ctx, at)?;
        if u16::from_be_bytes(ip.frags) & IPV4_OFFSET_MASK != 0 {
            return None;
        }
        key.family = FAMILY_V4;
        key.proto = ip.proto;
        set_v4(&mut key.src, ip.src_addr);
        set_v4(&mut key.dst, ip.dst_addr);
        (at + usize::from(ip.ihl()), ip.proto)
    } else {
        let ip: &Ipv6Hdr = header(ctx, at)?;
        key.family = FAMILY_V6;
        key.proto = ip.next_hdr;
        set_v6(&mut key.src, &ip.src_addr);
        set_v6(&mut key.dst, &ip.dst_addr);
        (at + Ipv6Hdr::LEN, ip.next_hdr)
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let ports: &[u8; 4] = header(ctx, l4_at)?;
    key.src_port = u16::from_be_bytes([ports[0], ports[1]]);
    key.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    Some(InnerFlow {
        key,
        l4_at,
        proto,
        v4,
    })
}

/// Whether this host has a socket for the connection other than a listener: established,
/// in its handshake (a request socket) or in TIME-WAIT.
#[inline(always)]
fn has_socket(ctx: &XdpContext, flow: &RecentKey, v4: bool, tuple: &mut bpf_sock_tuple) -> bool {
    let size = if v4 {
        // SAFETY: writing plain integers into the union's IPv4 member.
        unsafe {
            let v4 = &mut tuple.__bindgen_anon_1.ipv4;
            v4.saddr = u32::from_ne_bytes([flow.src[0], flow.src[1], flow.src[2], flow.src[3]]);
            v4.daddr = u32::from_ne_bytes([flow.dst[0], flow.dst[1], flow.dst[2], flow.dst[3]]);
            v4.sport = flow.src_port.to_be();
            v4.dport = flow.dst_port.to_be();
            size_of_val(v4)
        }
    } else {
        // SAFETY: writing plain integers into the union's IPv6 member.
        unsafe {
            let v6 = &mut tuple.__bindgen_anon_1.ipv6;
            v6.saddr = words(&flow.src);
            v6.daddr = words(&flow.dst);
            v6.sport = flow.src_port.to_be();
            v6.dport = flow.dst_port.to_be();
            size_of_val(v6)
        }
    };
    // SAFETY: the context is the program's; the tuple is valid for `size` bytes; a socket
    // returned is released below before anything else.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.ctx.cast(), tuple, size as u32, CURRENT_NETNS, 0) };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the helper returned, read once and released.
    unsafe {
        let state = (*sk).state;
        bpf_sk_release(sk.cast());
        state != TCP_LISTEN
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

/// Sends the packet on to its next hop: the route asked first (as this host's own
/// packet), then the outer header rewritten (this host's address as source, the next hop
/// as destination, one hop off the TTL, the list's `next` moved on) and new MACs. A host
/// that does not forward gets no answer from the FIB: the packet goes back to the
/// neighbour it came from (an lb node or a router, which routes). A next hop the FIB
/// cannot route, or a TTL that ends here, leaves the packet to be taken here.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    tunnel: &Tunnel,
    gue: &Gue,
) -> Result<(u32, DecapStat), DecapStat> {
    let next = usize::from(gue.list.next) & 3;
    let hop_at = gue.hops_at + next * hop_len(gue.family);
    let ingress = ctx.ingress_ifindex() as u32;
    let scratch = DECAP_SCRATCH
        .get_ptr_mut(0)
        .ok_or(DecapStat::GueTakenUnforwardable)?;
    // SAFETY: this CPU's slot, valid for the run, 8-aligned (64 bytes at offset 40 of an
    // 8-aligned struct); all-zero is a valid parameter block (plain integers and unions).
    let fib = unsafe {
        let fib = &raw mut (*scratch).fib;
        zero_words(fib);
        &mut *fib
    };
    fib.ifindex = ingress;
    fib.l4_protocol = IPPROTO_UDP;
    let ip_at = tunnel.l2_len;
    if gue.family == FAMILY_V4 {
        let ip: &[u8; 20] = header(ctx, ip_at).ok_or(DecapStat::GueTakenUnforwardable)?;
        let hop: &[u8; 4] = header(ctx, hop_at).ok_or(DecapStat::GueTakenUnforwardable)?;
        // Options would move the UDP header; lb's outer header has none.
        if ip[0] != 0x45 || ip[8] <= 1 {
            return Err(DecapStat::GueTakenUnforwardable);
        }
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(*hop);
    } else {
        let ip: &Ipv6Hdr = header(ctx, ip_at).ok_or(DecapStat::GueTakenUnforwardable)?;
        let hop: &[u8; 16] = header(ctx, hop_at).ok_or(DecapStat::GueTakenUnforwardable)?;
        if ip.hop_limit <= 1 {
            return Err(DecapStat::GueTakenUnforwardable);
        }
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = words(&ip.dst_addr);
        fib.__bindgen_anon_4.ipv6_dst = words(hop);
    }
    // SAFETY: the context is the program's; the block is valid for its size.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            fib,
            size_of::<bpf_fib_lookup>() as i32,
            FIB_OUTPUT,
        )
    } as u32;
    let back = rc == BPF_FIB_LKUP_RET_FWD_DISABLED;
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH && !back {
        return Err(DecapStat::GueTakenUnforwardable);
    }
    rewrite_outer(ctx, tunnel, gue, hop_at).ok_or(DecapStat::GueTakenUnforwardable)?;
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        return Ok((xdp_action::XDP_PASS, DecapStat::GueForwardedToStack));
    }
    let macs = ptr_at::<[u8; 12]>(ctx, 0).ok_or(DecapStat::GueTakenUnforwardable)?;
    if back {
        // SAFETY: bounds checked; byte arrays align to 1.
        unsafe {
            let m = *macs;
            *macs = [
                m[6], m[7], m[8], m[9], m[10], m[11], m[0], m[1], m[2], m[3], m[4], m[5],
            ];
        }
        // SAFETY: no preconditions; an interface that cannot take it fails the redirect.
        let action = unsafe { bpf_redirect(ingress, 0) } as u32;
        return Ok((action, DecapStat::GueSentBackToRoute));
    }
    let (d, s) = (fib.dmac, fib.smac);
    // SAFETY: bounds checked; byte arrays align to 1.
    unsafe {
        *macs = [
            d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5],
        ];
    }
    // A redirect even back out of the ingress interface: XDP_TX on a veth reaches its peer
    // only when the peer runs XDP itself; second chances are rare enough not to need it.
    // SAFETY: no preconditions; an interface that cannot take it fails the redirect.
    let action = unsafe { bpf_redirect(fib.ifindex, 0) } as u32;
    Ok((action, DecapStat::GueForwarded))
}

/// The outer header toward the hop at `hop_at`: source and destination, TTL, the IPv4
/// header checksum, a zero UDP checksum (the inner packet has its own) and `next`.
#[inline(always)]
fn rewrite_outer(ctx: &XdpContext, tunnel: &Tunnel, gue: &Gue, hop_at: usize) -> Option<()> {
    let ip_at = tunnel.l2_len;
    if gue.family == FAMILY_V4 {
        let hop: [u8; 4] = *header(ctx, hop_at)?;
        let ip = ptr_at::<[u8; 20]>(ctx, ip_at)?;
        // SAFETY: bounds checked; byte arrays align to 1.
        let ip = unsafe { &mut *ip };
        let here = [ip[16], ip[17], ip[18], ip[19]];
        ip[12..16].copy_from_slice(&here);
        ip[16..20].copy_from_slice(&hop);
        ip[8] -= 1;
        ip[10] = 0;
        ip[11] = 0;
        let sum = ipv4_checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    } else {
        let hop: [u8; 16] = *header(ctx, hop_at)?;
        let ip = ptr_at::<Ipv6Hdr>(ctx, ip_at)?;
        // SAFETY: bounds checked; the header type aligns to 1.
        let ip = unsafe { &mut *ip };
        ip.src_addr = ip.dst_addr;
        ip.dst_addr = hop;
        ip.hop_limit -= 1;
    }
    let udp = ptr_at::<[u8; UDP_LEN + GUE_HEADER_LEN + 4]>(ctx, gue.udp_at)?;
    // SAFETY: bounds checked.
    unsafe {
        (*udp)[6] = 0;
        (*udp)[7] = 0;
        (*udp)[UDP_LEN + GUE_HEADER_LEN + 3] = gue.list.next + 1;
    }
    Some(())
}

/// The IPv4 header checksum of a 20-byte header whose checksum field is zero.
#[inline(always)]
fn ipv4_checksum(header: &[u8; 20]) -> u16 {
    let mut sum = 0u32;
    for i in 0..10 {
        sum += u32::from(u16::from_be_bytes([header[2 * i], header[2 * i + 1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
