//! Map lookups that classify a packet: is it for a cluster IP (VIPS), or from a backend
//! endpoint (ENDPOINTS)? The ADDRESSES buckets answer "certainly neither" first, for the
//! price of an array read instead of a hash lookup.

use lb_common::{
    consts::{ABLATE_ADDRESS_FILTER, ADDRESS_BACKEND, ADDRESS_VIP},
    flow::FlowKey,
    hash::{address_bucket, address_bucket_words},
    service::{Addr, Endpoint, EndpointKey, VipInfo, VipKey},
};

use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;

use crate::{
    maps::{ADDRESSES, ENDPOINTS, LOCAL_MACS, VIPS, ablated},
    parse::ptr_at,
};

/// The `ADDRESS_*` bits of `addr`'s bucket: a bit clear means no VIP (or backend) has
/// this address; a bit set means one may.
#[inline(always)]
pub fn address_class(addr: &Addr, family: u8) -> u32 {
    class_of_bucket(address_bucket(addr, family))
}

/// [`address_class`] of a flow's destination, its words read in place.
#[inline(always)]
pub fn dst_class(flow: &FlowKey) -> u32 {
    class_of_bucket(address_bucket_words(&flow.dst_words(), flow.family))
}

/// [`address_class`] of a flow's source, its words read in place.
#[inline(always)]
pub fn src_class(flow: &FlowKey) -> u32 {
    class_of_bucket(address_bucket_words(&flow.src_words(), flow.family))
}

#[inline(always)]
fn class_of_bucket(bucket: u32) -> u32 {
    if ablated(ABLATE_ADDRESS_FILTER) {
        return ADDRESS_VIP | ADDRESS_BACKEND;
    }
    ADDRESSES.get(bucket).copied().unwrap_or(0)
}

#[inline(always)]
pub const fn may_be_vip(class: u32) -> bool {
    class & ADDRESS_VIP != 0
}

#[inline(always)]
pub const fn may_be_backend(class: u32) -> bool {
    class & ADDRESS_BACKEND != 0
}

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
    if !may_be_vip(address_class(addr, family)) {
        return false;
    }
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
    may_be_backend(address_class(addr, family)) && endpoint(addr, 0, 0, family).is_some()
}

/// Whether the frame is addressed to the MAC of the interface it came in on (or that MAC
/// is not known: an interface userspace has not registered). A frame for another MAC, or
/// a multicast or broadcast one, is not for this host to forward: the kernel does not
/// forward such frames either.
#[inline(always)]
pub fn addressed_here(ctx: &XdpContext) -> bool {
    let Some(local) = local_mac(ctx) else {
        return true;
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let dst = unsafe { (*eth).dst_addr };
    dst == local
}

/// The MAC of the interface the packet came in on, if userspace recorded it.
#[inline(always)]
pub fn local_mac(ctx: &XdpContext) -> Option<[u8; 6]> {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the value is copied out before the map can change it.
    (unsafe { LOCAL_MACS.get(&ifindex) }).map(|local| local.mac)
}
