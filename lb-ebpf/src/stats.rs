//! Counter updates. Per-CPU slots need no atomics.

use lb_common::stats::Stat;

use crate::maps::STATS;

#[inline(always)]
pub fn count(stat: Stat, bytes: usize) {
    if let Some(counter) = STATS.get_ptr_mut(stat.index()) {
        // SAFETY: the slot belongs to this CPU and the program is not re-entered on it.
        let counter = unsafe { &mut *counter };
        counter.packets += 1;
        counter.bytes += bytes as u64;
    }
}

/// Protocol counters track packets only; bytes are in the verdict and reason counters.
#[inline(always)]
pub fn count_protocol(stat: Stat) {
    count(stat, 0);
}
