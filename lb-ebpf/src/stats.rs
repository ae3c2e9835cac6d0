//! Counter updates. Per-CPU slots need no atomics.

use lb_common::stats::Stat;

use lb_common::consts::ABLATE_COUNTERS;

use lb_common::stats::{DROP_SLOTS, drop_slot_of_index};

use crate::maps::{BACKEND_STATS, STATS, VIP_DROPS, VIP_STATS, ablated};

#[inline(always)]
pub fn count(stat: Stat, bytes: usize) {
    if ablated(ABLATE_COUNTERS) {
        return;
    }
    if let Some(counter) = STATS.get_ptr_mut(stat.index()) {
        // SAFETY: the slot belongs to this CPU and the program is not re-entered on it.
        let counter = unsafe { &mut *counter };
        counter.packets += 1;
        counter.bytes += bytes as u64;
    }
}

/// Conntrack events count occurrences only.
#[inline(always)]
pub fn count_event(stat: Stat) {
    count(stat, 0);
}

/// Protocol counters track packets only; bytes are in the verdict and reason counters.
#[inline(always)]
pub fn count_protocol(stat: Stat) {
    count(stat, 0);
}

/// Client → VIP traffic, on the VIP and on the backend that got it.
#[inline(always)]
pub fn count_service(vip_id: u32, backend_id: u32, bytes: usize) {
    if ablated(ABLATE_COUNTERS) {
        return;
    }
    if let Some(counter) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot, as in `count`.
        let counter = unsafe { &mut *counter };
        counter.packets += 1;
        counter.bytes += bytes as u64;
    }
    if let Some(counter) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot, as in `count`.
        let counter = unsafe { &mut *counter };
        counter.packets += 1;
        counter.bytes += bytes as u64;
    }
}

#[inline(always)]
pub fn count_new_flow(vip_id: u32) {
    if ablated(ABLATE_COUNTERS) {
        return;
    }
    if let Some(counter) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot, as in `count`.
        unsafe { (*counter).new_flows += 1 };
    }
}

/// A dropped packet, on its VIP's counter of `reason` (a `Stat` index: one that is not a
/// drop reason's, such as `CAPTURE_NONE`, counts in the last slot, `xdp_drop`).
#[inline(always)]
pub fn count_vip_drop(vip_id: u32, reason: u32) {
    if ablated(ABLATE_COUNTERS) {
        return;
    }
    let slot = vip_id
        .wrapping_mul(DROP_SLOTS)
        .wrapping_add(drop_slot_of_index(reason));
    if let Some(counter) = VIP_DROPS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, as in `count`.
        unsafe { *counter += 1 };
    }
}
