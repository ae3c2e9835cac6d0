//! `lb capture` (`lb_common::capture`): `lb_capture` copies each packet as it arrives
//! ([`received`]) and, once the datapath has decided, keeps it with what was decided when
//! the filter matches ([`record`]). `lb` calls neither: it has no capture code at all.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use lb_common::{
    capture::{
        CAPTURE_ANY_FAMILY, CAPTURE_CT_NONE, CAPTURE_CT_PROVEN, CAPTURE_CT_UNPROVEN,
        CAPTURE_HEADER_BYTES, CAPTURE_NONE, CAPTURE_SNAPLEN_MAX, CaptureFilter, CaptureScratch,
    },
    flow::{Conn, FlowKey},
    service::Addr,
    stats::Stat,
};

use crate::{
    attribution::{self, Side},
    lookup,
    maps::{
        BACKENDS, CAPTURE_FILTER, CAPTURE_RING, CAPTURE_SCRATCH, CONNTRACK, CT_UNPROVEN, PARSED,
    },
    parse,
};

const MAX: u32 = CAPTURE_SNAPLEN_MAX;

/// Copies the first `len` bytes of the packet to `to` (room for [`MAX`]); the bytes
/// copied (0 if the kernel refused).
#[inline(always)]
fn copy_packet(ctx: &XdpContext, to: *mut u8, len: u32) -> u16 {
    if len == 0 {
        return 0;
    }
    // 1..=MAX as the verifier sees it; unchanged for any `len` the callers pass.
    let len = ((len - 1) & (MAX - 1)) + 1;
    // SAFETY: `to` has room for MAX bytes; the helper checks the packet's bounds.
    let copied = unsafe { bpf_xdp_load_bytes(ctx.ctx.cast(), 0, to.cast(), len) };
    if copied < 0 { 0 } else { len as u16 }
}

/// The packet as it arrived, into this CPU's record, before anything rewrites it (its time
/// is read in [`record`], for kept packets only).
#[inline(never)]
pub fn received(ctx: &XdpContext) -> u32 {
    let (Some(scratch), Some(filter)) = (CAPTURE_SCRATCH.get_ptr_mut(0), CAPTURE_FILTER.get(0))
    else {
        return 0;
    };
    // SAFETY: this CPU's slot; the program is not re-entered on a CPU.
    let scratch = unsafe { &mut *scratch };
    let len = (parse::data_end(ctx) - parse::data(ctx)) as u32;
    let header = &mut scratch.header;
    header.ifindex = ctx.ingress_ifindex() as u32;
    header.reason = CAPTURE_NONE;
    header.received_len = len;
    header.received_cap = copy_packet(ctx, scratch.bytes.as_mut_ptr(), len.min(filter.snaplen));
    0
}

/// Leaves a tail-called program's reason for [`record`] (the action comes back to
/// `lb_capture`, the reason does not). One store; `lb`'s tail calls make it too.
#[inline(always)]
pub fn note_reason(reason: Stat) {
    if let Some(scratch) = CAPTURE_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { (*scratch).header.reason = reason.index() };
    }
}

/// The packet as decided: `action`, and `reason` (or [`CAPTURE_NONE`]: the one a
/// tail-called program noted). `in_slot`: PARSED holds this packet. Written to the ring
/// with the packet as sent if the filter keeps it; counted as lost if the ring is full.
#[inline(never)]
pub fn record(ctx: &XdpContext, action: u32, reason: u32, in_slot: bool) -> u32 {
    let (Some(scratch), Some(filter)) = (CAPTURE_SCRATCH.get_ptr_mut(0), CAPTURE_FILTER.get(0))
    else {
        return 0;
    };
    // SAFETY: this CPU's slot; the program is not re-entered on a CPU.
    let scratch = unsafe { &mut *scratch };
    scratch.header.action = action;
    if reason != CAPTURE_NONE {
        scratch.header.reason = reason;
    }
    // The cheapest part of the filter first: most packets of a busy host fail it.
    if filter.drops_only != 0 && action != xdp_action::XDP_DROP && action != xdp_action::XDP_ABORTED
    {
        return 0;
    }
    if !describe_and_match(scratch, filter, in_slot) {
        return 0;
    }
    scratch.counts.matched += 1;
    if filter.sample > 1 && scratch.counts.matched % u64::from(filter.sample) != 0 {
        return 0;
    }
    let received = u32::from(scratch.header.received_cap).min(MAX);
    // Passed packets too: some are rewritten before the kernel forwards them (no
    // neighbour yet, an egress lb is not attached to); the daemon leaves out an unchanged
    // copy.
    let (sent_len, sent_cap) = if action == xdp_action::XDP_TX
        || action == xdp_action::XDP_REDIRECT
        || action == xdp_action::XDP_PASS
    {
        let len = (parse::data_end(ctx) - parse::data(ctx)) as u32;
        // SAFETY: `received` ≤ MAX, and `bytes` has room for 2 × MAX.
        let to = unsafe { scratch.bytes.as_mut_ptr().add(received as usize) };
        (len, copy_packet(ctx, to, len.min(filter.snaplen)))
    } else {
        (0, 0)
    };
    // Read here, for kept packets only: the clock costs more than the rest of a packet
    // the filter leaves out, and the packet arrived less than a microsecond ago.
    // SAFETY: no preconditions.
    scratch.header.time_ns = unsafe { bpf_ktime_get_ns() };
    scratch.header.sent_len = sent_len;
    scratch.header.sent_cap = sent_cap;
    // SAFETY: no preconditions.
    scratch.header.cpu = unsafe { bpf_get_smp_processor_id() };
    let size = CAPTURE_HEADER_BYTES + received as usize + usize::from(sent_cap).min(MAX as usize);
    // SAFETY: the header and `bytes` are contiguous (`repr(C)`, no padding between), and
    // `size` ends inside them.
    let record =
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(scratch).cast::<u8>(), size) };
    if CAPTURE_RING.output::<[u8]>(record, 0).is_ok() {
        scratch.counts.written += 1;
    } else {
        scratch.counts.lost += 1;
    }
    0
}

/// Fills the record's VIP, backend and conntrack fields from the packet in PARSED, and
/// says whether the filter's VIP, backend and client parts match it.
#[inline(always)]
fn describe_and_match(scratch: &mut CaptureScratch, filter: &CaptureFilter, in_slot: bool) -> bool {
    let header = &mut scratch.header;
    header.vip_id = CAPTURE_NONE;
    header.backend_id = CAPTURE_NONE;
    header.ct_table = CAPTURE_CT_NONE;
    header.ct_state = 0;
    header.ct_flags = 0;
    let packet = match PARSED.get_ptr(0) {
        Some(packet) if in_slot => packet,
        // Not IP, malformed, or no VIP's: nothing to match but "no filter".
        _ => {
            return filter.vip_family == CAPTURE_ANY_FAMILY
                && filter.backend_family == CAPTURE_ANY_FAMILY
                && filter.client_family == CAPTURE_ANY_FAMILY;
        }
    };
    // SAFETY: this CPU's slot, written by `lb_capture` for this packet; read in place.
    let flow = unsafe { &(*packet).flow };
    // A packet to another address than the filter's VIP can only be a reply of one of
    // the VIP's backends: one ENDPOINTS lookup instead of the VIPS one.
    let to_other = filter.vip_family != CAPTURE_ANY_FAMILY
        && (flow.dst_port != filter.vip_port || !masked_equal(&flow.dst, &ALL_ONES, &filter.vip));
    let side = if to_other {
        match lookup::endpoint(&flow.src, flow.src_port, flow.proto, flow.family) {
            Some(endpoint) => Side::FromBackend(endpoint),
            None => return false,
        }
    } else {
        attribution::side(flow)
    };
    // The client, the VIP as the client sees it, and whether the flow's conntrack key is
    // the reversed one (a reply).
    let (client, vip, vip_port, reply) = match side {
        Side::ToVip(info) => {
            header.vip_id = info.id;
            (&flow.src, &flow.dst, flow.dst_port, false)
        }
        Side::FromBackend(endpoint) => {
            header.vip_id = endpoint.vip_id;
            header.backend_id = endpoint.backend_id;
            scratch.key = FlowKey {
                src: flow.dst,
                dst: endpoint.vip_addr,
                src_port: flow.dst_port,
                dst_port: endpoint.vip_port,
                proto: flow.proto,
                family: flow.family,
                _pad: [0; 2],
            };
            (&flow.dst, &endpoint.vip_addr, endpoint.vip_port, true)
        }
        Side::Neither => {
            if filter.vip_family != CAPTURE_ANY_FAMILY
                || filter.backend_family != CAPTURE_ANY_FAMILY
            {
                return false;
            }
            (&flow.src, &flow.dst, 0, false)
        }
    };
    if filter.vip_family != CAPTURE_ANY_FAMILY
        && (filter.vip_family != flow.family
            || filter.vip_port != vip_port
            || !masked_equal(vip, &ALL_ONES, &filter.vip))
    {
        return false;
    }
    if filter.client_family != CAPTURE_ANY_FAMILY
        && (filter.client_family != flow.family
            || !masked_equal(client, &filter.client_mask, &filter.client))
    {
        return false;
    }
    // Only packets kept so far pay the conntrack lookups.
    let conn = if reply {
        entry(&scratch.key)
    } else {
        entry(flow)
    };
    let header = &mut scratch.header;
    if let Some((conn, table)) = conn {
        header.ct_table = table;
        header.ct_state = conn.state;
        header.ct_flags = conn.flags;
        if header.backend_id == CAPTURE_NONE {
            header.backend_id = conn.backend_id;
        }
    }
    if filter.backend_family != CAPTURE_ANY_FAMILY {
        let Some(backend) = BACKENDS.get(header.backend_id) else {
            return false;
        };
        if backend.family != filter.backend_family
            || backend.port != filter.backend_port
            || !masked_equal(&backend.addr, &ALL_ONES, &filter.backend)
        {
            return false;
        }
    }
    true
}

const ALL_ONES: Addr = [0xff; 16];

/// The flow's entry and its table, as it is after this packet (no timeout applied: an
/// expired entry still shows).
#[inline(always)]
fn entry(flow: &FlowKey) -> Option<(&'static Conn, u8)> {
    // SAFETY: entries stay valid for this program run (RCU); fields are copied out.
    unsafe {
        CONNTRACK
            .get(flow)
            .map(|conn| (conn, CAPTURE_CT_PROVEN))
            .or_else(|| {
                CT_UNPROVEN
                    .get(flow)
                    .map(|conn| (conn, CAPTURE_CT_UNPROVEN))
            })
    }
}

/// Whether `addr` masked by `mask` is `prefix`, a byte at a time (capture only).
#[inline(always)]
fn masked_equal(addr: &Addr, mask: &Addr, prefix: &Addr) -> bool {
    let mut differ = 0u8;
    for i in 0..16 {
        differ |= (addr[i] & mask[i]) ^ prefix[i];
    }
    differ == 0
}
