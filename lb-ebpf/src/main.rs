//! The lb XDP program: every packet on the attached interfaces enters at [`lb`].
//!
//! parse → VIP or backend-endpoint lookup → conntrack → Maglev select → route → NAT
//! rewrite → forward, with one verdict and one reason counted per packet (see
//! docs/ARCHITECTURE.md).
#![no_std]
#![no_main]
// The BPF target has no atomic read-modify-write types (core's `Atomic*::fetch_or` is
// compiled out); its instruction set has them (BPF_ATOMIC), reached by the intrinsic.
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "core::intrinsics::atomic_or: see above")]
// A binary: nothing is reachable from outside, so `pub` here means the crate.
#![allow(unreachable_pub, reason = "a binary crate: pub means pub(crate)")]
// Map keys go by reference: by value, each would be one more copy on the 512-byte stack.
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys by reference, as the helpers take them"
)]

mod attribution;
mod baseline;
mod capture;
mod conntrack;
mod copy;
mod costs;
mod csum;
mod encap;
mod flow_cache;
mod forward;
mod fragment;
mod gue;
mod icmp;
mod lookup;
mod maps;
mod nat;
mod parse;
mod policy;
mod quic;
mod select;
mod stats;
mod too_big;

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::{tracepoint, xdp},
    programs::{TracePointContext, XdpContext},
};
use aya_log_ebpf::{info, warn};
use lb_common::{
    capture::CAPTURE_NONE,
    consts::{
        ABLATE_CLOCK, ABLATE_CONNTRACK, ABLATE_NAT, BACKEND_FLAG_QUIC, IPPROTO_TCP, IPPROTO_UDP,
        JUMP_ENCAP, JUMP_FRAGMENT, JUMP_ICMP, JUMP_TOO_BIG, REDIRECT_ERR_MAP_ID_OFFSET,
        VIP_FLAG_QUIC,
    },
    encap::{MODE_NAT, SENT_ESTABLISHED, SENT_NEW_FLOW},
    flow::{CT_DATAGRAM, CT_ESTABLISHED, CT_FLAG_KEPT_ON_DOWN, Conn, FlowKey},
    service::{Addr, Backend, Endpoint, VipInfo},
    stats::Stat,
};

use crate::{
    conntrack::{Direction, Lookup},
    forward::{HopSlot, Route},
    maps::{BACKENDS, ENCAP_ARGS, JUMPS, PARSED, TOO_BIG_ARGS},
    nat::Side,
    parse::{L4, Packet, Parsed, TCP_ACK_SEQ, TCP_FIN, TCP_RST, TCP_SEQ, TCP_SYN},
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

    /// One word, for a BPF subprogram to return (aggregates are returned through memory),
    /// marked by [`PACKED`]: a subprogram that tail-calls another program returns that
    /// program's bare XDP action instead, its verdict already counted.
    const fn pack(self) -> u64 {
        PACKED | ((self.action as u64) << 32) | self.reason as u64
    }

    /// The inverse of [`Outcome::pack`], for words it made.
    const fn unpack(word: u64) -> Self {
        // SAFETY: the low half is a `Stat` that `pack` stored (`Stat` is `repr(u32)`).
        let reason = unsafe { core::mem::transmute::<u32, Stat>(word as u32) };
        Self::new(((word >> 32) as u32) & 0xff, reason)
    }
}

#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    datapath::<false>(&ctx)
}

/// `lb` with `lb capture`'s copy at entry and record at exit (`capture`): the daemon swaps
/// it into the links while a capture runs, so `lb` itself carries no capture code.
#[xdp]
pub fn lb_capture(ctx: XdpContext) -> u32 {
    datapath::<true>(&ctx)
}

#[inline(always)]
fn datapath<const CAPTURE: bool>(ctx: &XdpContext) -> u32 {
    if CAPTURE {
        capture::received(ctx);
    }
    let len = ctx.data_end() - ctx.data();
    let parsed = parse_into_slot(ctx);
    let outcome = if parsed == IN_SLOT {
        // A client → VIP packet that moves nothing in a flow's lifecycle: if its flow is
        // cached, one array slot decides (`flow_cache`); anything else takes the slow
        // path (one call site: the verifier walks it once).
        match flow_cache::forward(ctx) {
            flow_cache::MISS => match process(ctx) {
                DSR_PENDING => dsr(ctx),
                slow => slow,
            },
            fast => fast,
        }
    } else {
        parsed
    };
    // Hidden from LLVM, which would otherwise fold the check away: it sees every word the
    // subprograms build carry the bit, not what a tail call returns through them.
    let outcome = core::hint::black_box(outcome);
    if outcome & PACKED == 0 {
        // A tail-called program's bare action, its verdict counted there and its reason
        // noted (`counted_tail`).
        let action = outcome as u32;
        if CAPTURE {
            capture::record(ctx, action, CAPTURE_NONE, parsed == IN_SLOT);
        }
        if action == xdp_action::XDP_DROP {
            attribution::count_parsed_drop(CAPTURE_NONE);
        }
        return action;
    }
    let outcome = Outcome::unpack(outcome);
    if CAPTURE {
        let reason = outcome.reason.index();
        capture::record(ctx, outcome.action, reason, parsed == IN_SLOT);
    }
    // Only packets in PARSED are dropped (parsing passes anything it cannot read).
    if outcome.action == xdp_action::XDP_DROP {
        attribution::count_parsed_drop(outcome.reason.index());
    }
    counted(outcome, len)
}

/// What [`parse_into_slot`] returns for an IP packet it wrote to PARSED.
const IN_SLOT: u64 = u64::MAX;

/// The slow path's outcome for a client's packet to a DSR backend, with `ENCAP_ARGS` set:
/// [`dsr`] sends it once `process` returns. Not an XDP action (those end at 4), never
/// counted.
const TO_DSR: Outcome = Outcome::new(0xff, Stat::PassNotVip);
/// [`TO_DSR`], as `process` returns it.
const DSR_PENDING: u64 = TO_DSR.pack();

/// Set in every word [`Outcome::pack`] makes. A tail call made inside a BPF subprogram
/// returns to that subprogram's caller with the called program's XDP action: a word
/// without this bit is such an action, and that program counted its verdict.
const PACKED: u64 = 1 << 63;

/// A whole, untagged TCP or UDP packet whose addresses no VIP and no backend can have
/// (its destination's class already read into `dst_class`).
#[inline(always)]
fn not_ours(packet: &Packet) -> bool {
    matches!(packet.l4, L4::Tcp | L4::Udp)
        && packet.fragment == parse::FRAGMENT_NONE
        && packet.l3_offset == parse::UNTAGGED_L3_OFFSET
        && !lookup::may_be_vip(u32::from(packet.dst_class))
        && !lookup::may_be_backend(lookup::src_class(&packet.flow))
}

/// Parses the packet into this CPU's PARSED slot (and returns [`IN_SLOT`]), or returns the
/// outcome
/// of a packet that is not IP or is malformed, packed. `lb`'s three parts (this, the flow
/// cache and the slow path) are BPF subprograms, each in its own stack frame: together
/// they are more than the 512-byte stack holds.
#[inline(never)]
fn parse_into_slot(ctx: &XdpContext) -> u64 {
    let outcome = match parse::parse(ctx, true) {
        Ok(Parsed::NotIp) => Outcome::pass(Stat::PassNotIp),
        Ok(Parsed::Ip(mut packet)) => {
            packet.dst_class = lookup::dst_class(&packet.flow) as u8;
            match PARSED.get_ptr_mut(0) {
                // TCP or UDP for no VIP and from no backend (their address buckets say
                // so): the kernel's, with no further call.
                _ if not_ours(&packet) => Outcome::pass(Stat::PassNotVip),
                Some(slot) => {
                    // SAFETY: this CPU's slot; the program is not re-entered on a CPU.
                    unsafe { *slot = packet };
                    return IN_SLOT;
                }
                None => Outcome::pass(Stat::PassNotVip),
            }
        }
        // Malformed packets are not ours to judge: the kernel stack drops or answers them.
        Err(malformed) => Outcome::pass(malformed.reason()),
    };
    outcome.pack()
}

/// ICMP, tail-called from `lb` (which counted the packet's protocols, not its verdict).
#[xdp]
pub fn lb_icmp(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let outcome = match parse::parse(&ctx, false) {
        Ok(Parsed::Ip(packet)) if matches!(packet.l4, L4::Icmp) => {
            icmp::handle(&ctx, &packet, now())
        }
        _ => Outcome::pass(Stat::PassNotVip),
    };
    counted_tail(outcome, len)
}

/// A fragment without ports to a VIP address or from a backend address, tail-called from
/// `lb` (which counted its protocols): it follows its datagram's first fragment
/// (`fragment`). Its own program: a third forwarding path made `lb` more than the
/// verifier takes.
#[xdp]
pub fn lb_fragment(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let outcome = match parse::parse(&ctx, false) {
        Ok(Parsed::Ip(packet)) if matches!(packet.l4, L4::Fragment) => {
            fragment::later(&ctx, &packet, now())
        }
        _ => Outcome::pass(Stat::PassNotVip),
    };
    counted_tail(outcome, len)
}

/// A packet too big for its next hop, tail-called from `lb` with `TOO_BIG_ARGS` set.
#[xdp]
pub fn lb_too_big(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let args = TOO_BIG_ARGS.get(0).copied();
    let outcome = match (parse::parse(&ctx, false), args) {
        (Ok(Parsed::Ip(packet)), Some(args)) => too_big::answer(&ctx, &packet, &args, len, now()),
        _ => Outcome::drop(Stat::DropTooBig),
    };
    counted_tail(outcome, len)
}

/// A packet for a DSR backend, tail-called from `lb` (a client's packet, its flow tracked
/// and counted there) or `lb_icmp` (an error about a DSR flow's reply) with `ENCAP_ARGS`
/// set: sent to the backend untouched (`encap`).
#[xdp]
pub fn lb_encap(ctx: XdpContext) -> u32 {
    encap_program::<false>(&ctx)
}

/// A packet for a dsr-gue backend, tail-called from `lb` or `lb_encap` with `ENCAP_ARGS`
/// set: sent in UDP and GUE with its flow's hop list (`gue`).
#[xdp]
pub fn lb_encap_gue(ctx: XdpContext) -> u32 {
    encap_program::<true>(&ctx)
}

/// `lb_encap` and `lb_encap_gue`: the packet parsed again, to the backend in ENCAP_ARGS.
#[inline(always)]
fn encap_program<const GUE: bool>(ctx: &XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let args = ENCAP_ARGS.get(0).copied();
    let outcome = match (parse::parse(ctx, false), args) {
        (Ok(Parsed::Ip(packet)), Some(args)) => match BACKENDS.get(args.backend_id) {
            Some(backend) => encap::to_backend::<GUE>(
                ctx,
                &packet,
                args.backend_id,
                backend,
                encap::reason(args.sent),
                now(),
            ),
            None => Outcome::drop(Stat::DropFibFailure),
        },
        _ => Outcome::drop(Stat::DropFibFailure),
    };
    counted_tail(outcome, len)
}

/// The kernel could not send a frame some XDP program redirected (xdp:xdp_redirect_err):
/// counted when it went through this datapath's TX_PORTS (the record's `map_id`), since
/// the kernel then drops it. Most often a veth whose peer has no NAPI: Linux 6.3 and later
/// refuse the frame at once (`-EOPNOTSUPP`) when the peer has neither GRO nor an XDP
/// program. The daemon attaches it; the XDP programs do not call it.
#[tracepoint]
pub fn lb_redirect_lost(ctx: TracePointContext) -> u32 {
    // SAFETY: the record of xdp_redirect_err holds a u32 at this offset (the daemon checks
    // the tracepoint's format before attaching); a failed read counts nothing.
    let map_id = unsafe { ctx.read_at::<u32>(REDIRECT_ERR_MAP_ID_OFFSET) }.unwrap_or(0);
    let watched = maps::REDIRECT_WATCH.get(0).copied().unwrap_or(0);
    if map_id != 0 && map_id == watched {
        stats::count_event(Stat::RedirectLost);
    }
    0
}

/// [`counted`] for a tail-called program: its reason is left where `lb` (the per-VIP drop
/// counters) and `lb_capture` read it once the action comes back to them.
#[inline(always)]
fn counted_tail(outcome: Outcome, len: usize) -> u32 {
    capture::note_reason(outcome.reason);
    counted(outcome, len)
}

/// Counts the verdict and the reason of a packet; returns the verdict.
#[inline(always)]
fn counted(outcome: Outcome, len: usize) -> u32 {
    stats::count(Stat::for_action(outcome.action), len);
    stats::count(outcome.reason, len);
    outcome.action
}

/// The coarse clock (CLOCK_MONOTONIC at tick resolution), read once per packet that needs
/// it (not for traffic of no VIP): it serves the conntrack timeouts, the next-hop slots and
/// the ICMP rate limit.
#[inline(always)]
fn now() -> u64 {
    if maps::ablated(ABLATE_CLOCK) {
        return 1 << 62;
    }
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The jiffies counter (`bpf_jiffies64`, one load once the verifier inlines it): the flow
/// cache's clock, so that its hits make no helper call.
#[inline(always)]
fn jiffies() -> u64 {
    if maps::ablated(ABLATE_CLOCK) {
        return 0;
    }
    // SAFETY: no preconditions.
    unsafe { bpf_jiffies64() }
}

/// IPv6 next-header values that are extension headers (RFC 8200, RFC 7045).
const fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

/// Everything but the flow cache's hits: the slow path, on the packet `lb` parsed into
/// PARSED; its outcome, packed. A BPF subprogram, as `flow_cache::forward` is: neither
/// frame adds to the other's (the slow path leaves little of the 512 bytes).
#[inline(never)]
fn process(ctx: &XdpContext) -> u64 {
    let mut copied = MaybeUninit::uninit();
    match parsed(&mut copied) {
        Some(packet) => slow_path(ctx, packet).pack(),
        None => Outcome::pass(Stat::PassNotVip).pack(),
    }
}

/// The packet `lb` parsed into this CPU's PARSED slot, copied into `copied` (LLVM keeps a
/// local's fields in registers) a word at a time (a plain copy is a call to a byte-wise
/// memmove), its offsets bounded.
#[inline(always)]
fn parsed(copied: &mut MaybeUninit<Packet>) -> Option<&mut Packet> {
    let slot = PARSED.get_ptr(0)?;
    // SAFETY: this CPU's slot, written by `lb` before the subprograms run; the copy is
    // whole.
    let packet = unsafe {
        copy::words(copied.as_mut_ptr(), slot);
        copied.assume_init_mut()
    };
    packet.bound();
    Some(packet)
}

#[inline(always)]
fn slow_path(ctx: &XdpContext, packet: &Packet) -> Outcome {
    // A tagged frame belongs to a VLAN interface on top of this one: the FIB would be
    // asked about the wrong interface and the frame would leave with the ingress tag, so
    // the kernel gets it untouched (docs/ARCHITECTURE.md, "VLAN tags").
    if packet.l3_offset != parse::UNTAGGED_L3_OFFSET {
        return Outcome::pass(Stat::PassVlanTagged);
    }
    let flow = &packet.flow;
    match packet.l4 {
        L4::Tcp | L4::Udp => {}
        // An ICMP error for a flow is forwarded like the flow: not from a frame for
        // another host (see below).
        L4::Icmp if !lookup::addressed_here(ctx) => return Outcome::pass(Stat::PassOtherHost),
        L4::Icmp => {
            // SAFETY: the context is this program's; a tail call that returns failed.
            unsafe { JUMPS.tail_call(ctx, JUMP_ICMP) };
            return Outcome::pass(Stat::PassNotVip);
        }
        // No ports: to a VIP address or from a backend address, a later fragment follows
        // its first one (`lb_fragment`). Should the tail call fail (a JUMPS map pinned by
        // an earlier release has no slot for it), the policy from before: dropped.
        L4::Fragment => {
            let to_vip = lookup::is_vip_address(&flow.dst, flow.family);
            if !to_vip && !lookup::is_backend_address(&flow.src, flow.family) {
                return Outcome::pass(Stat::PassNotVip);
            }
            if !lookup::addressed_here(ctx) {
                return Outcome::pass(Stat::PassOtherHost);
            }
            // SAFETY: the context is this program's; a tail call that returns failed.
            unsafe { JUMPS.tail_call(ctx, JUMP_FRAGMENT) };
            return Outcome::drop(if to_vip {
                Stat::DropFragment
            } else {
                Stat::DropBackendFragment
            });
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
        L4::Other => return Outcome::pass(Stat::PassNotVip),
    }
    // Which addresses may be a VIP's or a backend's: one array read each, so traffic for
    // neither (and a reply's VIP lookup) costs no hash lookup.
    let dst_class = u32::from(packet.dst_class);
    let src_class = lookup::src_class(flow);
    // Only frames the kernel would take as its own are forwarded: one that reached this
    // interface for another MAC (flooded unknown unicast, a bridge port, promiscuous
    // mode) reaches every lb node alike, and each would forward a copy.
    if (lookup::may_be_vip(dst_class) || lookup::may_be_backend(src_class))
        && !lookup::addressed_here(ctx)
    {
        return Outcome::pass(Stat::PassOtherHost);
    }
    if lookup::may_be_vip(dst_class)
        && let Some(outcome) = to_backend(ctx, packet, now())
    {
        return outcome;
    }
    if lookup::may_be_backend(src_class)
        && let Some(endpoint) = lookup::endpoint(&flow.src, flow.src_port, flow.proto, flow.family)
    {
        return to_client(ctx, packet, endpoint, now());
    }
    if packet.is_first_fragment() {
        fragment::first_passed(ctx, packet, now());
    }
    if lookup::is_vip_address(&flow.dst, flow.family) {
        return Outcome::pass(Stat::PassVipOtherPort);
    }
    Outcome::pass(Stat::PassNotVip)
}

/// Client → VIP: keep the tracked backend (established traffic: one conntrack lookup, no
/// VIP lookup), or pick one and track the flow; then route, destination NAT (or DSR),
/// forward. `None`: the packet is for no VIP.
#[inline(always)]
fn to_backend(ctx: &XdpContext, packet: &Packet, now: u64) -> Option<Outcome> {
    let len = parse::data_end(ctx) - parse::data(ctx);
    let flags = packet.tcp_flags();
    // A SYN opens a new connection even if its 5-tuple is still tracked (a client reusing
    // a port): it is balanced afresh, so drained and deleted backends get no new
    // connections, the entry is replaced, and the old connection's flow-cache slot is
    // forgotten (`pick_backend`).
    let found = if packet.is_opening() {
        Lookup::Missing
    } else if maps::ablated(ABLATE_CONNTRACK) {
        Lookup::Missing
    } else {
        conntrack::lookup(&packet.flow, now)
    };
    // Both ways of finding the backend end in one call of the forwarding path: it is
    // inlined, and the verifier walks every copy (two copies with the DSR paths, and the
    // datapath log on, were more than it takes).
    let chosen = match chosen_backend(ctx, packet, found, flags, len, now)? {
        Ok(chosen) => chosen,
        Err(outcome) => return Some(outcome),
    };
    Some(to_backend_address(ctx, packet, &chosen, now))
}

/// The backend a client → VIP packet goes to, and why.
struct Chosen {
    backend_id: u32,
    backend: &'static Backend,
    /// `fwd_established` or `fwd_new_flow`.
    reason: Stat,
    /// A proven flow in a state the flow cache serves, on a backend that keeps it.
    cacheable: bool,
}

/// The backend of a client → VIP packet, or the outcome that ends it here; `None`: the
/// packet is for no VIP.
#[inline(always)]
fn chosen_backend(
    ctx: &XdpContext,
    packet: &Packet,
    found: Lookup,
    flags: u8,
    len: usize,
    now: u64,
) -> Option<Result<Chosen, Outcome>> {
    if let Lookup::Live(slot, proven) = found {
        // SAFETY: a live entry is valid for this run (RCU).
        let conn = unsafe { &mut *slot };
        // The entry's key is the VIP's address, port and protocol, and its backend still
        // serving the entry's VIP says the VIP is still there.
        if let Some(mut backend) = select::tracked(conn, packet.flow.proto) {
            if ttl_expires(ctx, packet) {
                return Some(Err(Outcome::pass(Stat::PassTtlExceeded)));
            }
            // A QUIC VIP's 5-tuple may carry another connection now (a client's NAT gave
            // the port to another): the connection ID decides, every packet.
            let quic = backend.flags & BACKEND_FLAG_QUIC != 0;
            if quic
                && let Some((id, named)) = quic::server(ctx, packet, conn.vip_id)
                && id != conn.backend_id
            {
                conn.backend_id = id;
                conn.generation = named.generation;
                backend = named;
                stats::count_event(Stat::QuicRepinned);
            }
            conntrack::on_packet(conn, flags, Direction::FromClient, now);
            let (vip_id, backend_id) = (conn.vip_id, conn.backend_id);
            let cacheable = proven
                && !quic
                && matches!(conn.state, CT_ESTABLISHED | CT_DATAGRAM)
                && conn.flags & CT_FLAG_KEPT_ON_DOWN == 0
                && flow_cache::cacheable(packet);
            if !proven {
                let nat = backend.mode == MODE_NAT;
                let ack = if nat {
                    parse::tcp_word(ctx, packet, TCP_ACK_SEQ)
                } else {
                    0
                };
                conntrack::on_unproven_packet(&packet.flow, slot, nat, ack);
            }
            stats::count_service(vip_id, backend_id, len);
            return Some(Ok(Chosen {
                backend_id,
                backend,
                reason: Stat::ForwardEstablished,
                cacheable,
            }));
        }
    }
    let vip = lookup::service(&packet.flow)?;
    if !policy::source_allowed(&vip, &packet.flow) {
        return Some(Err(Outcome::drop(Stat::DropSourceNotAllowed)));
    }
    // The kernel answers with ICMP time exceeded; nothing is rewritten.
    if ttl_expires(ctx, packet) {
        return Some(Err(Outcome::pass(Stat::PassTtlExceeded)));
    }
    let Some((backend_id, backend)) = pick_backend(ctx, packet, &vip, found, now) else {
        return Some(Err(Outcome::drop(Stat::DropNoBackend)));
    };
    if packet.is_opening() && checksum_left_partial(ctx, packet) {
        stats::count_event(Stat::SynChecksumPartial);
    }
    stats::count_service(vip.id, backend_id, len);
    Some(Ok(Chosen {
        backend_id,
        backend,
        reason: Stat::ForwardNew,
        cacheable: false,
    }))
}

/// Whether a client's SYN carries a partial checksum: its sender left the sum to an
/// offload (a socket behind a veth with tx checksumming on), and XDP cannot finish it.
/// Sent on as an XDP frame, it reaches the receiver wrong and is dropped there; counted
/// so the daemon can name the cause. A full checksum equals the pseudo-header sum by
/// chance once in 65,536 SYNs.
#[inline(always)]
fn checksum_left_partial(ctx: &XdpContext, packet: &Packet) -> bool {
    let l4_len = packet
        .ip_len
        .saturating_sub(packet.l4_offset.saturating_sub(packet.l3_offset));
    parse::tcp_checksum(ctx, packet) == Some(csum::pseudo_header(&packet.flow, l4_len as u16))
}

/// Whether the packet's TTL / hop limit ends here (checked before any rewrite).
#[inline(always)]
fn ttl_expires(ctx: &XdpContext, packet: &Packet) -> bool {
    forward::ttl(ctx, packet).is_none_or(|ttl| ttl <= 1)
}

/// Destination NAT to the backend, through the backend's own next-hop slot (or, for a DSR
/// VIP, the packet untouched: `encap`).
#[inline(always)]
fn to_backend_address(ctx: &XdpContext, packet: &Packet, chosen: &Chosen, now: u64) -> Outcome {
    let (backend_id, backend, reason) = (chosen.backend_id, chosen.backend, chosen.reason);
    fragment::first_to_backend(ctx, packet, backend_id, backend, now);
    if backend.mode != MODE_NAT {
        let sent = if reason == Stat::ForwardEstablished {
            SENT_ESTABLISHED
        } else {
            SENT_NEW_FLOW
        };
        // Filled before `dsr` has routed it: a hit checks the backend's next-hop slot
        // that `dsr` keeps, and leaves to the slow path what it would refuse.
        if chosen.cacheable {
            flow_cache::fill(ctx, packet, backend_id, backend, None);
        }
        return to_dsr_backend(backend_id, sent);
    }
    let out = FlowKey {
        dst: backend.addr,
        dst_port: backend.port,
        ..packet.flow
    };
    // A too-big packet is answered from the VIP it was sent to.
    deliver::<true>(
        ctx,
        packet,
        &out,
        Side::Destination,
        HopSlot::Backend(backend_id),
        &packet.flow.dst,
        reason,
        chosen.cacheable.then_some(backend),
        now,
    )
}

/// The backend for a client → VIP packet that has no live entry pinned to a serving
/// backend (`found`: what conntrack held): Maglev's choice, tracked from here on (a RST
/// is never tracked).
#[inline(always)]
fn pick_backend(
    ctx: &XdpContext,
    packet: &Packet,
    vip: &VipInfo,
    found: Lookup,
    now: u64,
) -> Option<(u32, &'static Backend)> {
    let flags = packet.tcp_flags();
    let tcp = packet.flow.proto == IPPROTO_TCP;
    let stale = match found {
        // Its backend went down, was deleted, or the id went to another backend.
        Lookup::Live(slot, _) => {
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
    // A QUIC VIP's packet goes to the backend its connection ID names, whatever its
    // 5-tuple (a client that moved). Otherwise Maglev, which is deterministic: a miss on a
    // non-SYN (after a restart, or on another lb node) lands on the same backend the SYN
    // did, while the backends are the same.
    let named = if vip.flags & VIP_FLAG_QUIC != 0 && packet.flow.proto == IPPROTO_UDP {
        quic::server(ctx, packet, vip.id)
    } else {
        None
    };
    let Some((id, backend)) = named.or_else(|| select::maglev(vip, &packet.flow)) else {
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
        // This packet is the flow's first (see `Conn::proof`).
        proof: 1,
    };
    match stale {
        _ if maps::ablated(ABLATE_CONNTRACK) => {}
        Some(slot) => conntrack::replace(slot, &conn),
        // A RST ends a connection: it never creates an entry (a flood of them would
        // otherwise fill the table).
        None if flags & TCP_RST != 0 => stats::count_event(Stat::CtRstUntracked),
        None => {
            // Both tables were searched for anything but a SYN. A SYN's 5-tuple may be a
            // proven flow's (a reused port) only if the proven-flow filter says so: only
            // then is that entry looked for, and the flow-cache slot (only proven flows
            // have one) forgotten.
            let not_proven = !packet.is_opening() || !conntrack::may_be_proven(&packet.flow);
            if !not_proven {
                flow_cache::forget(&packet.flow);
            }
            conntrack::insert(&packet.flow, &conn, now, not_proven);
            stats::count_new_flow(vip.id);
            info!(
                ctx,
                "vip {}: new flow from port {} to backend {}", vip.id, packet.flow.src_port, id
            );
        }
    }
    Some((id, backend))
}

/// Backend endpoint → anyone: a reply of the VIP the endpoint serves. It gets the VIP back
/// as its source whether or not its flow is still tracked (the reply rule in
/// docs/ARCHITECTURE.md): an endpoint serves one VIP, so nothing else can be meant, and a
/// reply must never leave with the backend's address. Packets for the lb itself (its
/// health checks) are passed untouched.
#[inline(always)]
fn to_client(ctx: &XdpContext, packet: &Packet, endpoint: &Endpoint, now: u64) -> Outcome {
    if ttl_expires(ctx, packet) {
        return Outcome::pass(Stat::PassTtlExceeded);
    }
    // The backend's SYN-ACK, FIN or RST moves the flow's lifecycle, and every datagram
    // reply keeps its flow fresh (a flow in which only the backend talks must not expire)
    // and proves it; other TCP replies leave the entry alone (the client's ACKs keep it
    // fresh), so the TCP reply path stays one lookup.
    let flags = packet.tcp_flags();
    if flags & (TCP_FIN | TCP_RST | TCP_SYN) != 0 || packet.flow.proto != IPPROTO_TCP {
        let syn_ack = (flags & TCP_SYN != 0).then(|| parse::tcp_word(ctx, packet, TCP_SEQ));
        track_reply(packet, endpoint, flags, syn_ack, now);
    }
    fragment::first_reply(ctx, packet, endpoint, now);
    let out = FlowKey {
        src: endpoint.vip_addr,
        src_port: endpoint.vip_port,
        ..packet.flow
    };
    // A reply too big for the client's side is answered to the backend, from the VIP.
    deliver::<true>(
        ctx,
        packet,
        &out,
        Side::Source,
        HopSlot::Destination,
        &endpoint.vip_addr,
        Stat::ForwardReply,
        None,
        now,
    )
}

/// The common end of both directions: route the packet as it will leave (`out`), answer
/// it if it is too big for the next hop, rewrite its `side` to `out`'s, and send it.
/// `cache`: the backend of a proven flow that the flow cache may serve from here on.
/// `PORTS`: the packet carries its TCP/UDP header; false for a later fragment, whose
/// address alone is rewritten.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined: a struct would carry the same values through one more stack copy"
)]
fn deliver<const PORTS: bool>(
    ctx: &XdpContext,
    packet: &Packet,
    out: &FlowKey,
    side: Side,
    slot: HopSlot,
    too_big_from: &Addr,
    forwarded: Stat,
    cache: Option<&Backend>,
    now: u64,
) -> Outcome {
    // `attached`: XDP sends it; otherwise the kernel forwards it after the rewrite (its
    // neighbour unresolved, or an egress lb is not attached to).
    let (hop, attached) = match forward::route(ctx, packet, out, slot, now) {
        Route::Hop(hop) => (Some(hop), true),
        Route::NotAttached(hop) => (Some(hop), false),
        Route::NoNeighbour => (None, false),
        Route::Done(outcome) => return outcome,
    };
    let (addr, port) = match side {
        Side::Source => (&out.src, out.src_port),
        Side::Destination => (&out.dst, out.dst_port),
    };
    let too_big = hop.filter(|hop| forward::too_big(packet, hop));
    if let Some(hop) = too_big
        && forward::dont_fragment(ctx, packet)
    {
        return answer_too_big(ctx, hop.mtu, too_big_from, false);
    }
    // Filled before the rewrite: the slot is keyed by the client's 5-tuple, as it came in.
    if let (Some(backend), Some(hop), HopSlot::Backend(id), true, None) =
        (cache, hop, slot, attached, too_big)
    {
        flow_cache::fill(ctx, packet, id, backend, Some(hop));
    }
    if !maps::ablated(ABLATE_NAT) {
        let rewritten = if PORTS {
            nat::rewrite(ctx, packet, side, addr, port)
        } else {
            nat::rewrite_address(ctx, packet, side, addr)
        };
        if rewritten.is_err() {
            return Outcome::drop(Stat::DropFibFailure);
        }
    }
    match hop {
        // IPv4 that may be fragmented: the kernel does it, after the rewrite.
        _ if too_big.is_some() => Outcome::pass(Stat::PassFragmentationNeeded),
        Some(hop) if attached => forward::send(ctx, packet, hop, forwarded),
        // The kernel forwards it out of the interface lb is not attached to, rewritten.
        Some(_) => Outcome::pass(Stat::PassEgressNotAttached),
        // The kernel forwards it (and resolves the neighbour meanwhile).
        None => Outcome::pass(Stat::PassNoNeighbour),
    }
}

/// Hands a too-big packet to `lb_too_big` (its own program: building the answer needs
/// more stack than `lb` has left). Dropped and counted if that program is not there.
/// `dsr`: too big only with a DSR outer header.
#[inline(always)]
pub fn answer_too_big(ctx: &XdpContext, mtu: u16, from: &Addr, dsr: bool) -> Outcome {
    if let Some(args) = TOO_BIG_ARGS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, read by the tail-called program right after.
        unsafe {
            (*args).from = *from;
            (*args).mtu = mtu;
            (*args).dsr = u8::from(dsr);
            JUMPS.tail_call(ctx, JUMP_TOO_BIG);
        }
    }
    Outcome::drop(Stat::DropTooBig)
}

/// A client's packet for a DSR backend, sent on from `lb` itself (no tail call, no second
/// parse): the packet in PARSED, the backend and why in `ENCAP_ARGS`, set by
/// [`to_dsr_backend`]. A BPF subprogram, as `process` is: the verifier walks it once.
#[inline(never)]
fn dsr(ctx: &XdpContext) -> u64 {
    let mut copied = MaybeUninit::uninit();
    let (Some(packet), Some(args)) = (parsed(&mut copied), ENCAP_ARGS.get(0).copied()) else {
        return Outcome::drop(Stat::DropFibFailure).pack();
    };
    // Untagged: the slow path passed tagged frames to the kernel before choosing.
    packet.l3_offset = parse::UNTAGGED_L3_OFFSET;
    let outcome = match BACKENDS.get(args.backend_id) {
        Some(backend) => encap::to_backend::<false>(
            ctx,
            packet,
            args.backend_id,
            backend,
            encap::reason(args.sent),
            now(),
        ),
        None => Outcome::drop(Stat::DropFibFailure),
    };
    outcome.pack()
}

/// Leaves a client's packet for a DSR backend to [`dsr`], once `process` returns.
#[inline(always)]
fn to_dsr_backend(backend_id: u32, sent: u32) -> Outcome {
    if let Some(args) = ENCAP_ARGS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, read by `dsr` right after.
        unsafe {
            (*args).backend_id = backend_id;
            (*args).sent = sent;
        }
    }
    TO_DSR
}

/// Hands a packet for a DSR backend to `lb_encap` (its own program: see `encap`), from
/// `lb_icmp` and `lb_fragment`, which parsed it themselves. Dropped and counted if that
/// program is not there.
#[inline(always)]
pub fn send_dsr(ctx: &XdpContext, backend_id: u32, sent: u32) -> Outcome {
    if let Some(args) = ENCAP_ARGS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, read by the tail-called program right after.
        unsafe {
            (*args).backend_id = backend_id;
            (*args).sent = sent;
            JUMPS.tail_call(ctx, JUMP_ENCAP);
        }
    }
    Outcome::drop(Stat::DropFibFailure)
}

/// Applies a backend's TCP flags to its flow's entry, if the flow is tracked to it.
#[inline(always)]
fn track_reply(packet: &Packet, endpoint: &Endpoint, flags: u8, syn_ack: Option<u32>, now: u64) {
    let flow = FlowKey {
        src: packet.flow.dst,
        dst: endpoint.vip_addr,
        src_port: packet.flow.dst_port,
        dst_port: endpoint.vip_port,
        proto: packet.flow.proto,
        family: packet.flow.family,
        _pad: [0; 2],
    };
    if let Lookup::Live(slot, _) = conntrack::lookup(&flow, now) {
        // SAFETY: a live entry is valid for this run (RCU).
        let conn = unsafe { &mut *slot };
        if conn.backend_id == endpoint.backend_id {
            conntrack::on_packet(conn, flags, Direction::FromBackend, now);
            conntrack::on_reply(conn, syn_ack);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
