//! dsr-gue on the balancer's side: a flow's hop list (the second chance) and the outer
//! IP + UDP + GUE header that carries it (format: `lb_common::gue`). Runs where dsr-ipip's
//! encapsulation runs (`encap`), for backends of a dsr-gue VIP.

use crate::{
    copy,
    encap::{self, Inner, OuterIp},
    lookup,
    maps::{BACKENDS, MAGLEV, MAGLEV_HOPS, gue_port, hash_seed, maglev_size},
    parse::{Packet, ptr_at},
};
use aya_ebpf::programs::XdpContext;
use lb_common::{
    consts::{BACKEND_ACTIVE, BACKEND_DRAINING, FAMILY_V6, NO_BACKEND},
    encap::{EncapSource, flow_bits, outer_source},
    gue::{
        EARLIER_TABLES, GUE_HEADER_LEN, GUE_MAX_HOPS, HOPS_HEADER_LEN, HOPS_MAGIC, HopsKey,
        UDP_LEN, after_ip, header, hlen_words, hop_len, source_port,
    },
    hash::flow_hash,
    service::Backend,
};

const IPPROTO_UDP: u8 = 17;

/// The backends a packet is offered to, in order (ids into BACKENDS).
pub struct Hops {
    pub ids: [u32; GUE_MAX_HOPS],
    pub count: usize,
}

impl Hops {
    /// Only `id`: a packet with no second chance (an ICMP error, a later fragment).
    pub const fn one(id: u32) -> Self {
        Self {
            ids: [id, NO_BACKEND, NO_BACKEND, NO_BACKEND],
            count: 1,
        }
    }
}

/// The hop list of a client's packet whose flow goes to `first` (its tracked backend, or
/// the current table's choice): then the current table's choice, then the backends the
/// VIP's earlier tables gave the flow's slot, each once, as far as they still serve the
/// VIP in the first one's family. Every lb node with the same seed and the same changes
/// builds the same list for a flow that is not tracked.
#[inline(always)]
pub fn of_flow(packet: &Packet, first: u32, backend: &Backend) -> Hops {
    let mut hops = Hops::one(first);
    let size = maglev_size();
    let Some(vip) = lookup::service(&packet.flow) else {
        return hops;
    };
    if size == 0 {
        return hops;
    }
    let slot = flow_hash(&packet.flow, &hash_seed()) % size;
    let table = vip.id * 2 + u32::from(vip.active_table & 1);
    let current = MAGLEV
        .get(table * size + slot)
        .copied()
        .unwrap_or(NO_BACKEND);
    // SAFETY: a hash lookup; the value is copied out at once.
    let earlier = unsafe { MAGLEV_HOPS.get(&HopsKey { table, slot }) }
        .map_or([NO_BACKEND; EARLIER_TABLES], |e| e.ids);
    let (ids, count) = lb_common::gue::hop_ids(first, current, &earlier, NO_BACKEND);
    for i in 1..GUE_MAX_HOPS {
        if i < count && serves_like(ids[i], backend) {
            if let Some(at) = hops.ids.get_mut(hops.count) {
                *at = ids[i];
                hops.count += 1;
            }
        }
    }
    hops
}

/// Whether backend `id` can take a packet `first` could: it serves the same VIP, takes
/// or keeps flows, and has the same family (the outer header is one family end to end).
#[inline(always)]
fn serves_like(id: u32, first: &Backend) -> bool {
    BACKENDS.get(id).is_some_and(|b| {
        b.vip_id == first.vip_id
            && b.family == first.family
            && (b.state == BACKEND_ACTIVE || b.state == BACKEND_DRAINING)
    })
}

/// Bytes the outer header adds for `hops` toward a backend of `family`.
#[inline(always)]
pub const fn overhead(hops: &Hops, family: u8) -> usize {
    lb_common::gue::overhead(hops.count, family)
}

/// Puts outer IP, UDP, GUE and the hop list in front of the IP packet, toward `hops[0]`
/// (`backend`): the frame grows at its head, the Ethernet header moves to the new front
/// (`encap::push_outer_ip`). The inner packet is untouched. The UDP checksum is 0
/// (RFC 768 for IPv4; RFC 6935 for a tunnel over IPv6: the inner packet has its own, and
/// only `lb_decap` reads this).
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    packet: &Packet,
    backend: &Backend,
    source: &EncapSource,
    hops: &Hops,
    inner: Inner,
) -> Option<()> {
    let l3 = packet.l3_offset;
    let family = backend.family;
    let count = if hops.count > GUE_MAX_HOPS {
        GUE_MAX_HOPS
    } else {
        hops.count
    };
    let bits = flow_bits(&packet.flow);
    let udp_payload = after_ip(count, family) + packet.ip_len;
    let outer = OuterIp {
        src: outer_source(source, family, bits),
        bits,
        protocol: IPPROTO_UDP,
        payload_len: udp_payload,
        extra: after_ip(count, family),
    };
    encap::push_outer_ip(ctx, l3, backend, outer, inner)?;
    let ip_len = if family == FAMILY_V6 { 40 } else { 20 };
    let udp_at = l3 + ip_len;
    let udp = ptr_at::<[u8; UDP_LEN + GUE_HEADER_LEN + HOPS_HEADER_LEN]>(ctx, udp_at)?;
    let [sp_high, sp_low] = source_port(bits).to_be_bytes();
    let [dp_high, dp_low] = gue_port().to_be_bytes();
    let [len_high, len_low] = (udp_payload as u16).to_be_bytes();
    let [g0, g1, g2, g3] = header(hlen_words(count, family), packet.is_v4());
    let fixed = [
        sp_high,
        sp_low,
        dp_high,
        dp_low,
        len_high,
        len_low,
        0,
        0,
        g0,
        g1,
        g2,
        g3,
        HOPS_MAGIC[0],
        HOPS_MAGIC[1],
        count as u8,
        1,
    ];
    // SAFETY: bounds checked; 2-aligned (an even offset in the frame).
    unsafe { copy::write_halves(udp.cast(), &copy::halves_of::<16, 8>(fixed)) };
    let list_at = udp_at + UDP_LEN + GUE_HEADER_LEN + HOPS_HEADER_LEN;
    for i in 0..GUE_MAX_HOPS {
        if i >= count {
            break;
        }
        let hop = BACKENDS.get(hops.ids[i])?;
        write_hop(ctx, list_at + i * hop_len(family), family, &hop.addr)?;
    }
    Some(())
}

/// Writes one hop address of the outer family at `at`.
#[inline(always)]
fn write_hop(ctx: &XdpContext, at: usize, family: u8, addr: &[u8; 16]) -> Option<()> {
    if family == FAMILY_V6 {
        let slot = ptr_at::<[u8; 16]>(ctx, at)?;
        // SAFETY: bounds checked; both 2-aligned (an even frame offset, a map value).
        unsafe { copy::write_halves(slot.cast(), &copy::read_halves::<8>(addr.as_ptr())) };
    } else {
        let slot = ptr_at::<[u8; 4]>(ctx, at)?;
        // SAFETY: bounds checked; both 2-aligned.
        unsafe { copy::write_halves(slot.cast(), &copy::read_halves::<2>(addr.as_ptr())) };
    }
    Some(())
}
