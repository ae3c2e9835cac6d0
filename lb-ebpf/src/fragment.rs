//! Fragmented datagrams through VIPs: a datagram's first fragment carries its ports and
//! takes the normal path (conntrack, Maglev, NAT or DSR; the reply rule); what that path
//! decided is remembered in `FRAGMENTS` under the datagram's (source, destination, IP
//! identification, protocol, family), and its later fragments, which carry no ports,
//! follow it: to the same backend, with only the address rewritten (the datagram's
//! checksum lives in the first fragment, patched there incrementally), encapsulated to it
//! in DSR, or back to the client from the VIP. A later fragment with no first fragment
//! seen is dropped (`drop_fragment_no_first`). The first fragment's hooks run in `lb`;
//! later fragments are handled in the tail-called `lb_fragment` (verifier budget).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    consts::{BACKEND_UNUSED, IPPROTO_TCP, IPPROTO_UDP},
    encap::{MODE_NAT, SENT_FRAGMENT},
    flow::FlowKey,
    fragment::{
        FRAGMENT_PASS, FRAGMENT_REPLY, FRAGMENT_TIMEOUT_NS, FRAGMENT_TO_BACKEND, Fragment,
        FragmentKey,
    },
    service::{Backend, Endpoint},
    stats::Stat,
};
use network_types::ip::Ipv6Hdr;

use crate::{
    Outcome, deliver,
    forward::HopSlot,
    lookup,
    maps::{BACKENDS, FRAGMENTS},
    nat::Side,
    parse::{self, FRAGMENT_LATER, Packet, ptr_at},
    send_dsr, stats, ttl_expires,
};

/// Offset of the identification in an IPv4 header and in an IPv6 Fragment header.
const IPV4_ID_AT: usize = 4;
const IPV6_ID_AT: usize = Ipv6Hdr::LEN + 4;

/// The datagram a fragment belongs to. The IPv6 Fragment header is the one right after
/// the fixed header (the only place the parser reads it).
#[inline(always)]
fn key(ctx: &XdpContext, packet: &Packet) -> Option<FragmentKey> {
    let id = if packet.is_v4() {
        let bytes = ptr_at::<[u8; 2]>(ctx, packet.l3_offset + IPV4_ID_AT)?;
        // SAFETY: bounds checked by ptr_at.
        u32::from(u16::from_be_bytes(unsafe { *bytes }))
    } else {
        let bytes = ptr_at::<[u8; 4]>(ctx, packet.l3_offset + IPV6_ID_AT)?;
        // SAFETY: bounds checked by ptr_at.
        u32::from_be_bytes(unsafe { *bytes })
    };
    Some(FragmentKey {
        src: packet.flow.src,
        dst: packet.flow.dst,
        id,
        proto: packet.flow.proto,
        family: packet.flow.family,
        _pad: [0; 2],
    })
}

/// Records what a first fragment was sent as. A failed insert (never, for an LRU map in
/// practice) costs the datagram's later fragments, counted as `drop_fragment_no_first`.
#[inline(always)]
fn remember(ctx: &XdpContext, packet: &Packet, kind: u8, fill: Fragment, now: u64) {
    if let Some(key) = key(ctx, packet) {
        let entry = Fragment {
            seen_ns: now,
            src_port: packet.flow.src_port,
            dst_port: packet.flow.dst_port,
            kind,
            ..fill
        };
        // A failure is counted where it shows (see above).
        FRAGMENTS.insert(&key, &entry, 0).unwrap_or_default();
    }
}

/// A client's first fragment balanced to `backend_id`: its later fragments go there too.
#[inline(always)]
pub fn first_to_backend(
    ctx: &XdpContext,
    packet: &Packet,
    backend_id: u32,
    backend: &Backend,
    now: u64,
) {
    if packet.is_first_fragment() {
        let fill = Fragment {
            backend_id,
            generation: backend.generation,
            vip_id: backend.vip_id,
            ..Fragment::default()
        };
        remember(ctx, packet, FRAGMENT_TO_BACKEND, fill, now);
    }
}

/// A backend endpoint's first fragment of a reply: its later fragments leave from the VIP.
#[inline(always)]
pub fn first_reply(ctx: &XdpContext, packet: &Packet, endpoint: &Endpoint, now: u64) {
    if packet.is_first_fragment() {
        let fill = Fragment {
            addr: endpoint.vip_addr,
            backend_id: endpoint.backend_id,
            vip_id: endpoint.vip_id,
            ..Fragment::default()
        };
        remember(ctx, packet, FRAGMENT_REPLY, fill, now);
    }
}

/// A first fragment passed to the kernel as it is, to a VIP address (another port) or
/// from a backend address (not an endpoint): its later fragments are passed too, as they
/// would be for any other host, instead of being dropped for want of ports.
#[inline(always)]
pub fn first_passed(ctx: &XdpContext, packet: &Packet, now: u64) {
    let flow = &packet.flow;
    if packet.is_first_fragment()
        && (lookup::is_vip_address(&flow.dst, flow.family)
            || lookup::is_backend_address(&flow.src, flow.family))
    {
        remember(ctx, packet, FRAGMENT_PASS, Fragment::default(), now);
    }
}

/// A fragment the parser left without ports (`L4::Fragment`), in `lb_fragment` (which
/// `lb` tail-calls for these): a later fragment, or the first of a protocol other than
/// TCP/UDP. Traffic of no VIP and no backend passes as before (`lb` checks it already); to a VIP address or from a backend address it follows its first fragment, or
/// is dropped (ports decide where such a packet goes, and a reply must never leave with a
/// backend's address).
#[inline(always)]
pub fn later(ctx: &XdpContext, packet: &Packet, now: u64) -> Outcome {
    let flow = &packet.flow;
    let to_vip = lookup::is_vip_address(&flow.dst, flow.family);
    if !to_vip && !lookup::is_backend_address(&flow.src, flow.family) {
        return Outcome::pass(Stat::PassNotVip);
    }
    if packet.fragment != FRAGMENT_LATER || (flow.proto != IPPROTO_TCP && flow.proto != IPPROTO_UDP)
    {
        return Outcome::drop(if to_vip {
            Stat::DropFragment
        } else {
            Stat::DropBackendFragment
        });
    }
    let first = key(ctx, packet)
        // SAFETY: the value is copied out at once (RCU keeps it valid for this run).
        .and_then(|key| unsafe { FRAGMENTS.get(&key) }.copied())
        .filter(|first| now.saturating_sub(first.seen_ns) <= FRAGMENT_TIMEOUT_NS);
    let Some(first) = first else {
        return Outcome::drop(Stat::DropFragmentNoFirst);
    };
    // The datagram's 5-tuple as it will leave: the ports from its first fragment, then
    // the backend's or the VIP's address. One call of the forwarding path for both
    // directions, with nothing but `out` built for it: each inlined copy of it costs
    // verifier budget, and each value kept across it stack.
    let mut out = FlowKey {
        src_port: first.src_port,
        dst_port: first.dst_port,
        ..packet.flow
    };
    let (side, slot) = match first.kind {
        FRAGMENT_PASS if to_vip => return Outcome::pass(Stat::PassVipOtherPort),
        FRAGMENT_PASS => return Outcome::pass(Stat::PassNotVip),
        FRAGMENT_TO_BACKEND if to_vip => {
            let Some(backend) = BACKENDS
                .get(first.backend_id)
                .filter(|b| b.generation == first.generation && b.state != BACKEND_UNUSED)
            else {
                return Outcome::drop(Stat::DropFragmentNoFirst);
            };
            if ttl_expires(ctx, packet) {
                return Outcome::pass(Stat::PassTtlExceeded);
            }
            let len = parse::data_end(ctx) - parse::data(ctx);
            stats::count_service(first.vip_id, first.backend_id, len);
            if backend.mode != MODE_NAT {
                return send_dsr(ctx, first.backend_id, SENT_FRAGMENT);
            }
            out.dst = backend.addr;
            out.dst_port = backend.port;
            (Side::Destination, HopSlot::Backend(first.backend_id))
        }
        FRAGMENT_REPLY if !to_vip => {
            if ttl_expires(ctx, packet) {
                return Outcome::pass(Stat::PassTtlExceeded);
            }
            out.src = first.addr;
            (Side::Source, HopSlot::Destination)
        }
        _ => return Outcome::drop(Stat::DropFragmentNoFirst),
    };
    // Too big for the next hop: answered from the VIP (to the client, or to the backend).
    let too_big_from = if side == Side::Source {
        &first.addr
    } else {
        &packet.flow.dst
    };
    deliver::<false>(
        ctx,
        packet,
        &out,
        side,
        slot,
        too_big_from,
        Stat::ForwardFragment,
        None,
        now,
    )
}
