//! RFC 6040 decapsulation: a congestion mark (CE) that a router set on the outer header
//! is carried into the inner header, so the endpoints' congestion control still sees it.
//! Only CE is carried, as Linux's own tunnels do; an outer CE over an inner packet that is
//! not ECN-capable cannot be carried, and is dropped (RFC 6040 section 4.2).

use aya_ebpf::programs::XdpContext;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::tunnel::{ECN_MASK, ETH_P_IPV4, Tunnel, ipv6_ecn, ptr_at};

const ECN_NOT_ECT: u8 = 0b00;
const ECN_CE: u8 = 0b11;

/// Marks the inner header CE when the outer one is; false when the packet must be dropped.
/// The inner header is untouched otherwise.
#[inline(always)]
pub fn carry(ctx: &XdpContext, tunnel: &Tunnel) -> bool {
    if tunnel.outer_ecn != ECN_CE {
        return true;
    }
    if tunnel.inner_ether_type == ETH_P_IPV4 {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, tunnel.inner_at) else {
            return false;
        };
        // SAFETY: in bounds (checked by `ptr_at`), alignment 1; no other reference to it.
        let ip = unsafe { &mut *ip };
        match ip.tos & ECN_MASK {
            ECN_NOT_ECT => false,
            ECN_CE => true,
            _ => {
                // The first header word (version, IHL, TOS) changes: RFC 1624 update.
                let old = u16::from_be_bytes([ip.vihl, ip.tos]);
                ip.tos |= ECN_CE;
                let new = u16::from_be_bytes([ip.vihl, ip.tos]);
                let check = u16::from_be_bytes(ip.check);
                let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
                let sum = (sum & 0xffff) + (sum >> 16);
                let sum = (sum & 0xffff) + (sum >> 16);
                ip.check = (!(sum as u16)).to_be_bytes();
                true
            }
        }
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, tunnel.inner_at) else {
            return false;
        };
        // SAFETY: as above.
        let ip = unsafe { &mut *ip };
        if ipv6_ecn(ip.vcf[1]) == ECN_NOT_ECT {
            false
        } else {
            ip.vcf[1] |= ECN_CE << 4;
            true
        }
    }
}
