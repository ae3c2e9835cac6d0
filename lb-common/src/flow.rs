//! Connection tracking: the 5-tuple of a flow and what it is pinned to.

use crate::service::Addr;

/// A flow's 5-tuple as seen on the wire (ports in host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}

/// Forward conntrack value: client → VIP flows pinned to a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    pub backend_id: u32,
    pub vip_id: u32,
    /// `bpf_ktime_get_ns` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Conn {}

/// Reverse NAT value: backend → client replies get the VIP back as their source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseNat {
    pub vip_addr: Addr,
    pub vip_port: u16,
    pub _pad: [u8; 2],
    pub vip_id: u32,
    pub backend_id: u32,
    pub _pad2: [u8; 4],
    pub last_seen_ns: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for ReverseNat {}

/// Key of the next-hop cache: where a rewritten packet is going, and where it came in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NextHopKey {
    pub dst: Addr,
    pub ingress_ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for NextHopKey {}

/// A cached `bpf_fib_lookup` answer: egress interface and MACs, valid until `expires_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 4],
    pub expires_ns: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for NextHop {}
