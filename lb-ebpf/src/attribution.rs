//! Which VIP a packet belongs to, after the fact: for the per-VIP drop counters and for
//! `lb capture`'s records, never on the forwarding path.

use lb_common::{
    capture::CAPTURE_NONE,
    flow::FlowKey,
    service::{Endpoint, VipInfo},
};

use crate::{
    lookup,
    maps::{CAPTURE_SCRATCH, PARSED},
    stats,
};

/// A packet's side of a service.
pub enum Side {
    /// Client → VIP.
    ToVip(VipInfo),
    /// A backend's reply (or any packet from a backend endpoint).
    FromBackend(&'static Endpoint),
    Neither,
}

/// The side `flow` is on. Costs a hash lookup or two: only for packets already decided.
#[inline(always)]
pub fn side(flow: &FlowKey) -> Side {
    if let Some(vip) = lookup::service(flow) {
        return Side::ToVip(vip);
    }
    match lookup::endpoint(&flow.src, flow.src_port, flow.proto, flow.family) {
        Some(endpoint) => Side::FromBackend(endpoint),
        None => Side::Neither,
    }
}

/// Counts the dropped packet `lb` parsed into this CPU's PARSED slot on its VIP's counter
/// of `reason` (a `Stat` index, or `CAPTURE_NONE`: the one a tail-called program noted),
/// if it has a VIP. A BPF subprogram: its lookup keys stay out of `lb`'s frame.
#[inline(never)]
pub fn count_parsed_drop(reason: u32) -> u32 {
    let (Some(packet), Some(scratch)) = (PARSED.get_ptr(0), CAPTURE_SCRATCH.get_ptr(0)) else {
        return 0;
    };
    // SAFETY: this CPU's slots: PARSED written by `lb` for this packet (read in place),
    // the scratch's reason by the tail-called program that just ran, if one did.
    let (flow, reason) = unsafe {
        let noted = (*scratch).header.reason;
        (
            &(*packet).flow,
            if reason == CAPTURE_NONE {
                noted
            } else {
                reason
            },
        )
    };
    let vip_id = match side(flow) {
        Side::ToVip(vip) => vip.id,
        Side::FromBackend(endpoint) => endpoint.vip_id,
        Side::Neither => return 0,
    };
    stats::count_vip_drop(vip_id, reason);
    0
}
