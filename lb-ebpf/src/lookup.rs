//! Map lookups that classify a packet: is it for a cluster IP (VIPS), or from a backend
//! endpoint (ENDPOINTS)?

use lb_common::{
    flow::FlowKey,
    service::{Addr, Endpoint, EndpointKey, VipInfo, VipKey},
};

use crate::maps::{ENDPOINTS, VIPS};

/// The VIP serving the packet's destination address, port and protocol.
#[inline(always)]
pub fn service(flow: &FlowKey) -> Option<VipInfo> {
    vip(&flow.dst, flow.dst_port, flow.proto, flow.family)
}

/// The VIP at `addr`:`port` for `proto`.
#[inline(always)]
pub fn vip(addr: &Addr, port: u16, proto: u8, family: u8) -> Option<VipInfo> {
    let key = VipKey {
        addr: *addr,
        port,
        proto,
        family,
    };
    // SAFETY: the value is copied out before the map can change it.
    unsafe { VIPS.get(&key) }.copied()
}

/// Whether `addr` belongs to any VIP (any port or protocol).
#[inline(always)]
pub fn is_vip_address(addr: &Addr, family: u8) -> bool {
    let key = VipKey::address_entry(*addr, family);
    // SAFETY: only presence is read.
    unsafe { VIPS.get(&key) }.is_some()
}

/// The VIP a backend endpoint (`addr`:`port`, `proto`) serves.
#[inline(always)]
pub fn endpoint(addr: &Addr, port: u16, proto: u8, family: u8) -> Option<&'static Endpoint> {
    let key = EndpointKey {
        addr: *addr,
        port,
        proto,
        family,
    };
    // SAFETY: the entry stays valid for this program run (RCU); userspace replaces an
    // endpoint's value only with the same VIP's.
    unsafe { ENDPOINTS.get(&key) }
}

/// Whether `addr` is the address of any backend.
#[inline(always)]
pub fn is_backend_address(addr: &Addr, family: u8) -> bool {
    endpoint(addr, 0, 0, family).is_some()
}
