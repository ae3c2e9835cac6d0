//! Per-VIP admission of new flows: the client source ranges of `lb vip add --allow-source`.
//! Asked only when a packet opens a flow (a conntrack miss), so established traffic never
//! pays for it, and a VIP without ranges pays one flag test.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    consts::VIP_FLAG_SOURCE_RANGES,
    flow::FlowKey,
    service::{SOURCE_LOOKUP_LEN, SourceRange, VipInfo},
};

use crate::maps::SOURCE_RANGES;

/// Whether `vip` accepts a new flow from the client of `flow`: always without ranges,
/// else only from inside one of them (the VIP's own prefixes: its id is part of the key).
#[inline(always)]
pub fn source_allowed(vip: &VipInfo, flow: &FlowKey) -> bool {
    if vip.flags & VIP_FLAG_SOURCE_RANGES == 0 {
        return true;
    }
    let key = Key::new(
        SOURCE_LOOKUP_LEN,
        SourceRange {
            vip_id: vip.id,
            addr: flow.src,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}
