//! Direct server return: a VIP's forwarding mode, and the outer header of dsr-ipip.
//!
//! In the DSR modes the client's packet reaches its backend unchanged, inside an outer
//! IPv4 / IPv6 header (dsr-ipip) or with only its MACs changed (dsr-l2); the backend holds
//! the VIP and answers the client directly.

use crate::{
    consts::{FAMILY_V4, FAMILY_V6},
    flow::FlowKey,
    service::Addr,
};

/// `VipInfo::mode` / `Backend::mode`: destination NAT both ways (replies cross the lb).
pub const MODE_NAT: u8 = 0;
/// The packet encapsulated untouched (IPIP, IPv6-in-IPv6, IPv4-in-IPv6) to the backend.
pub const MODE_DSR_IPIP: u8 = 1;
/// The packet sent untouched to the backend's MAC on the lb's own link.
pub const MODE_DSR_L2: u8 = 2;

/// Bytes an outer header adds, by the backend's family.
pub const OUTER_V4: usize = 20;
pub const OUTER_V6: usize = 40;
/// TTL / hop limit of the outer header (as Linux's default for tunnels it originates).
pub const OUTER_TTL: u8 = 64;
/// IP protocol numbers of the inner packet.
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;

/// Globals set at load time: where outer sources come from, per family.
pub const GLOBAL_ENCAP_SOURCE_V4: &str = "ENCAP_SOURCE_V4";
pub const GLOBAL_ENCAP_SOURCE_V6: &str = "ENCAP_SOURCE_V6";

/// The outer source addresses of one family: `addr` with its last `host_bits` bits taken
/// from each flow, so that the backends' receive-side scaling (which hashes the outer
/// addresses of a tunnel packet) spreads flows over their queues, as Katran does.
/// `host_bits == 0`: every flow gets `addr` (the lb's own address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncapSource {
    pub addr: Addr,
    /// At most 32 (the last word of the address); 0 for a single address.
    pub host_bits: u8,
    pub _pad: [u8; 7],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for EncapSource {}

/// What `lb` (a client's packet) or `lb_icmp` (an ICMP error about a DSR flow) hands to
/// `lb_encap` across the tail call: the backend and why the packet is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncapArgs {
    pub backend_id: u32,
    /// `SENT_*`.
    pub sent: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for EncapArgs {}

/// `EncapArgs::sent`: the packet opened a flow (`fwd_new_flow`).
pub const SENT_NEW_FLOW: u32 = 0;
/// The packet belongs to a tracked flow (`fwd_established`).
pub const SENT_ESTABLISHED: u32 = 1;
/// An ICMP error about a flow's reply (`fwd_icmp_to_backend`).
pub const SENT_ICMP: u32 = 2;
/// A later fragment of a datagram whose first fragment went to the backend (`fwd_fragment`).
pub const SENT_FRAGMENT: u32 = 3;

/// Per-flow bits of the outer header: from the client's address and port only, so every
/// packet of a flow (and every lb node) uses the same outer source and flow label.
#[inline(always)]
pub fn flow_bits(flow: &FlowKey) -> u32 {
    let s = flow.src_words();
    let folded =
        s[0] ^ s[1] ^ s[2] ^ s[3] ^ (u32::from(flow.src_port) << 16 | u32::from(flow.src_port));
    folded.wrapping_mul(0x9e37_79b1)
}

/// The outer source of a flow whose per-flow bits are `bits`, for a backend of `family`.
#[inline(always)]
pub const fn outer_source(source: &EncapSource, family: u8, bits: u32) -> Addr {
    let mut addr = source.addr;
    let host_bits = if source.host_bits > 32 {
        32
    } else {
        source.host_bits as u32
    };
    if host_bits == 0 {
        return addr;
    }
    let mask = if host_bits == 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    };
    let at = if family == FAMILY_V6 { 12 } else { 0 };
    let word = u32::from_be_bytes([addr[at], addr[at + 1], addr[at + 2], addr[at + 3]]);
    let word = (word & !mask) | (bits >> (32 - host_bits));
    let bytes = word.to_be_bytes();
    addr[at] = bytes[0];
    addr[at + 1] = bytes[1];
    addr[at + 2] = bytes[2];
    addr[at + 3] = bytes[3];
    addr
}

/// The outer header's length for a backend of `family`.
#[inline(always)]
pub const fn overhead(family: u8) -> usize {
    if family == FAMILY_V4 {
        OUTER_V4
    } else {
        OUTER_V6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::addr_from_v4;

    fn flow(src: [u8; 4], port: u16) -> FlowKey {
        FlowKey {
            src: addr_from_v4(src),
            src_port: port,
            family: FAMILY_V4,
            ..FlowKey::default()
        }
    }

    /// Every lb node, old or new, gives a flow the same outer source: the bits are the
    /// source address's little-endian words and port, folded, as releases before read
    /// them byte by byte.
    #[test]
    fn flow_bits_known_answers() {
        let mut v6 = FlowKey {
            src: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34],
            src_port: 40_000,
            family: FAMILY_V6,
            ..FlowKey::default()
        };
        assert_eq!(flow_bits(&flow([198, 18, 0, 9], 4242)), 0x0919_5014);
        assert_eq!(flow_bits(&v6), 0xbfce_b3ad);
        v6.src_port = 40_001;
        assert_ne!(flow_bits(&v6), 0xbfce_b3ad);
    }

    #[test]
    fn sources_stay_in_their_prefix_and_spread_over_it() {
        let source = EncapSource {
            addr: addr_from_v4([198, 19, 7, 0]),
            host_bits: 8,
            _pad: [0; 7],
        };
        let mut seen = std::collections::BTreeSet::new();
        for port in 1000..1400 {
            let addr = outer_source(&source, FAMILY_V4, flow_bits(&flow([198, 18, 0, 9], port)));
            assert_eq!(addr[..3], [198, 19, 7], "left the /24");
            assert_eq!(addr[4..], [0; 12]);
            seen.insert(addr[3]);
        }
        assert!(
            seen.len() > 200,
            "400 flows used only {} sources",
            seen.len()
        );
    }

    #[test]
    fn a_flow_always_gets_the_same_source() {
        let source = EncapSource {
            addr: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            host_bits: 32,
            _pad: [0; 7],
        };
        let f = flow([198, 18, 0, 9], 4242);
        let a = outer_source(&source, FAMILY_V6, flow_bits(&f));
        assert_eq!(a, outer_source(&source, FAMILY_V6, flow_bits(&f)));
        assert_eq!(a[..12], source.addr[..12]);
        let other = outer_source(&source, FAMILY_V6, flow_bits(&flow([198, 18, 0, 9], 4243)));
        assert_ne!(a, other, "another port, another source");
    }

    #[test]
    fn no_host_bits_is_the_address_itself() {
        let source = EncapSource {
            addr: addr_from_v4([198, 18, 1, 1]),
            host_bits: 0,
            _pad: [0; 7],
        };
        assert_eq!(
            outer_source(&source, FAMILY_V4, 0xdead_beef),
            addr_from_v4([198, 18, 1, 1])
        );
    }
}
