//! dsr-gue packets (format: `lb_common::gue`): UDP to the GUE port, a GUE header of
//! version 0 with no control bit and no flags, and lb's hop list as its private data.
//! Anything else to the GUE port is malformed: passed untouched, as the stack would get it.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    decap::DecapStat,
    gue::{GUE_HEADER_LEN, GUE_PROTO_IPV4, GUE_PROTO_IPV6, HOPS_HEADER_LEN, HopList, UDP_LEN},
};

use crate::tunnel::{ETH_P_IPV4, ETH_P_IPV6, Outer, header};

/// A checked hop list and where things are.
pub struct Gue {
    /// Offset of the outer UDP header.
    pub udp_at: usize,
    /// Offset of the first hop address.
    pub hops_at: usize,
    pub list: HopList,
    /// The outer family (`FAMILY_V4` / `FAMILY_V6`): hop addresses are of it.
    pub family: u8,
    pub inner_at: usize,
    pub inner_ether_type: u16,
}

/// Whether the UDP header at `at` is addressed to `gue_port` (0: GUE is off).
#[inline(always)]
pub fn to_port(ctx: &XdpContext, at: usize, gue_port: u16) -> bool {
    gue_port != 0
        && header::<[u8; 4]>(ctx, at)
            .is_some_and(|ports| u16::from_be_bytes([ports[2], ports[3]]) == gue_port)
}

/// The GUE header and hop list after `outer`'s IP header; the UDP length must be what the
/// outer header carries.
#[inline(always)]
pub fn parse(ctx: &XdpContext, outer: &Outer) -> Result<Gue, DecapStat> {
    let udp_at = outer.l2_len + outer.ip_len;
    let fixed: &[u8; UDP_LEN + GUE_HEADER_LEN + HOPS_HEADER_LEN] =
        header(ctx, udp_at).ok_or(DecapStat::Malformed)?;
    let udp_len = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
    let first = fixed[UDP_LEN];
    let hlen = first & 0x1f;
    // Version 0 (two bits) and no control bit; no GUE flags (none is defined for lb).
    if udp_at + udp_len != outer.end || first & 0xe0 != 0 || fixed[10] != 0 || fixed[11] != 0 {
        return Err(DecapStat::Malformed);
    }
    let inner_ether_type = match fixed[UDP_LEN + 1] {
        GUE_PROTO_IPV4 => ETH_P_IPV4,
        GUE_PROTO_IPV6 => ETH_P_IPV6,
        _ => return Err(DecapStat::Malformed),
    };
    let at = UDP_LEN + GUE_HEADER_LEN;
    let list = HopList::parse(
        [fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]],
        hlen,
        outer.family,
    )
    .ok_or(DecapStat::Malformed)?;
    Ok(Gue {
        udp_at,
        hops_at: udp_at + UDP_LEN + GUE_HEADER_LEN + HOPS_HEADER_LEN,
        list,
        family: outer.family,
        inner_at: udp_at + UDP_LEN + GUE_HEADER_LEN + usize::from(hlen) * 4,
        inner_ether_type,
    })
}
