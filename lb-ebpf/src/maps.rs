//! Every map of the datapath. Types and names come from `lb-common`.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use lb_common::stats::{Counter, STAT_COUNT};

/// Global counters by protocol, verdict and reason.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STAT_COUNT, 0);
