//! VIP lookup: is this packet for a cluster IP, or at least for a VIP's address?

use lb_common::{
    flow::FlowKey,
    service::{VipInfo, VipKey},
};

use crate::maps::VIPS;

/// The VIP serving the packet's destination address, port and protocol.
#[inline(always)]
pub fn service(flow: &FlowKey) -> Option<VipInfo> {
    let key = VipKey {
        addr: flow.dst,
        port: flow.dst_port,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY: the value is copied out before the map can change it.
    unsafe { VIPS.get(&key) }.copied()
}

/// Whether the destination address belongs to any VIP (any port or protocol).
#[inline(always)]
pub fn is_vip_address(flow: &FlowKey) -> bool {
    let key = VipKey::address_entry(flow.dst, flow.family);
    // SAFETY: only presence is read.
    unsafe { VIPS.get(&key) }.is_some()
}
