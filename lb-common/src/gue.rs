//! dsr-gue: the client's packet inside UDP and a GUE header (draft-ietf-intarea-gue,
//! variant 0) whose private data carries the flow's hop list, the second chance.
//!
//! ```text
//! outer IPv4 / IPv6 | UDP: source port per flow, destination the GUE port, checksum 0
//!                   | GUE: version 0, C 0, Hlen, protocol 4 (IPv4) or 41 (IPv6), flags 0
//!                   | hops: "lb", count, next | count addresses of the outer family
//!                   | the client's packet, untouched
//! ```
//! `hops[0]` is the outer destination; a backend that does not take the packet sends it
//! on to `hops[next]` and increments `next`; `next == count`: the last hop, which takes it.
//! The list is the flow's backend (tracked, or Maglev's choice), then Maglev's current
//! choice if another, then the backends the VIP's earlier tables gave the flow's slot
//! ([`EarlierHops`]), each once.

use crate::{
    consts::{FAMILY_V4, FAMILY_V6},
    flow::FlowKey,
};

/// `VipInfo::mode` / `Backend::mode` of dsr-gue.
pub const MODE_DSR_GUE: u8 = 3;
/// Default of `lb run --gue-port` and `lb decap attach --gue-port`.
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// Global set at load time: the UDP destination port of dsr-gue (host order).
pub const GLOBAL_GUE_PORT: &str = "GUE_PORT";

pub const UDP_LEN: usize = 8;
/// The GUE header without its optional fields.
pub const GUE_HEADER_LEN: usize = 4;
/// The hop list's own header: [`HOPS_MAGIC`], count, next.
pub const HOPS_HEADER_LEN: usize = 4;
pub const HOPS_MAGIC: [u8; 2] = *b"lb";
/// Most hops in one packet: the flow's backend, the current table's choice and the
/// choices of [`EARLIER_TABLES`] earlier tables, capped.
pub const GUE_MAX_HOPS: usize = 4;
/// Earlier Maglev tables of a dsr-gue VIP whose choices follow the current one.
pub const EARLIER_TABLES: usize = 3;
/// IP protocol numbers carried in the GUE header.
pub const GUE_PROTO_IPV4: u8 = 4;
pub const GUE_PROTO_IPV6: u8 = 41;

/// Key of MAGLEV_HOPS: a slot of one of a VIP's two tables, indexed as in MAGLEV
/// (`table = vip_id * 2 + active_table`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HopsKey {
    pub table: u32,
    pub slot: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for HopsKey {}

/// Value of MAGLEV_HOPS: backend ids the VIP's earlier tables gave the slot, newest first,
/// none the slot's current backend, each once, [`crate::consts::NO_BACKEND`] after the last.
/// Only slots with at least one such backend have an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlierHops {
    pub ids: [u32; EARLIER_TABLES],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for EarlierHops {}

/// Bytes of one hop address in the outer family.
#[inline(always)]
pub const fn hop_len(family: u8) -> usize {
    if family == FAMILY_V4 { 4 } else { 16 }
}

/// GUE's Hlen: 32-bit words of private data for `count` hops.
#[inline(always)]
pub const fn hlen_words(count: usize, family: u8) -> usize {
    (HOPS_HEADER_LEN + count * hop_len(family)) / 4
}

/// Bytes after the outer IP header: UDP, GUE, the hop list.
#[inline(always)]
pub const fn after_ip(count: usize, family: u8) -> usize {
    UDP_LEN + GUE_HEADER_LEN + HOPS_HEADER_LEN + count * hop_len(family)
}

/// Bytes the whole outer header adds for `count` hops toward a backend of `family`.
#[inline(always)]
pub const fn overhead(count: usize, family: u8) -> usize {
    let ip = if family == FAMILY_V6 { 40 } else { 20 };
    ip + after_ip(count, family)
}

/// The outer UDP source port of a flow with per-flow bits `bits` (`encap::flow_bits`): in
/// the dynamic range, so receive-side scaling on the backends spreads flows.
#[inline(always)]
pub const fn source_port(bits: u32) -> u16 {
    0xc000 | (bits >> 18) as u16
}

/// The first GUE word: version 0, no control, `hlen` words of optional data, the inner
/// protocol, no flags.
#[inline(always)]
pub const fn header(hlen: usize, inner_v4: bool) -> [u8; 4] {
    let proto = if inner_v4 {
        GUE_PROTO_IPV4
    } else {
        GUE_PROTO_IPV6
    };
    [(hlen as u8) & 0x1f, proto, 0, 0]
}

/// What a hop list says, read from its header (`[magic, magic, count, next]`) and the
/// outer family; `None` when it is not one lb wrote or it contradicts itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopList {
    pub count: u8,
    pub next: u8,
}

impl HopList {
    /// Checks the hop list header against the GUE header's Hlen.
    pub const fn parse(bytes: [u8; 4], hlen: u8, family: u8) -> Option<Self> {
        let (count, next) = (bytes[2], bytes[3]);
        if bytes[0] != HOPS_MAGIC[0]
            || bytes[1] != HOPS_MAGIC[1]
            || count == 0
            || count as usize > GUE_MAX_HOPS
            || next == 0
            || next > count
            || (family != FAMILY_V4 && family != FAMILY_V6)
            || hlen as usize != hlen_words(count as usize, family)
        {
            return None;
        }
        Some(Self { count, next })
    }

    /// Whether another hop follows the one this packet is addressed to.
    pub const fn has_next(&self) -> bool {
        self.next < self.count
    }
}

/// Hop ids in order, each once: `first`, then `current` and `earlier` as far as they
/// differ from what is already there, at most [`GUE_MAX_HOPS`]; ids equal to `none` are
/// skipped. Pure, so the datapath and the daemon's `explain` agree.
#[inline(always)]
pub const fn hop_ids(
    first: u32,
    current: u32,
    earlier: &[u32; EARLIER_TABLES],
    none: u32,
) -> ([u32; GUE_MAX_HOPS], usize) {
    let mut ids = [none; GUE_MAX_HOPS];
    ids[0] = first;
    let mut count = 1;
    let candidates = [current, earlier[0], earlier[1], earlier[2]];
    let mut i = 0;
    while i < candidates.len() {
        let id = candidates[i];
        let mut seen = id == none;
        let mut j = 0;
        while j < count {
            if ids[j] == id {
                seen = true;
            }
            j += 1;
        }
        if !seen && count < GUE_MAX_HOPS {
            ids[count] = id;
            count += 1;
        }
        i += 1;
    }
    (ids, count)
}

/// The inner flow a decapsulating backend keys its recent UDP flows by: the client's
/// 5-tuple as the lb saw it.
pub type RecentKey = FlowKey;

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: u32 = u32::MAX;

    #[test]
    fn hop_ids_keep_order_and_drop_repeats() {
        assert_eq!(hop_ids(7, 7, &[NONE; 3], NONE), ([7, NONE, NONE, NONE], 1));
        assert_eq!(hop_ids(7, 9, &[NONE; 3], NONE), ([7, 9, NONE, NONE], 2));
        assert_eq!(hop_ids(7, 9, &[7, 3, NONE], NONE), ([7, 9, 3, NONE], 3));
        assert_eq!(hop_ids(1, 2, &[3, 4, 5], NONE), ([1, 2, 3, 4], 4));
    }

    #[test]
    fn hop_list_header_must_match_hlen() {
        let ok = HopList::parse([b'l', b'b', 2, 1], 3, FAMILY_V4);
        assert_eq!(ok, Some(HopList { count: 2, next: 1 }));
        assert!(ok.is_some_and(|h| h.has_next()));
        assert_eq!(HopList::parse([b'l', b'b', 2, 1], 2, FAMILY_V4), None);
        assert_eq!(HopList::parse([b'l', b'b', 2, 3], 3, FAMILY_V4), None);
        assert_eq!(HopList::parse([b'l', b'b', 0, 0], 1, FAMILY_V4), None);
        assert_eq!(HopList::parse([b'x', b'b', 1, 1], 2, FAMILY_V4), None);
        assert_eq!(HopList::parse([b'l', b'b', 5, 1], 21, FAMILY_V6), None);
        let last = HopList::parse([b'l', b'b', 2, 2], 9, FAMILY_V6);
        assert!(last.is_some_and(|h| !h.has_next()));
    }

    #[test]
    fn sizes() {
        assert_eq!(overhead(1, FAMILY_V4), 40);
        assert_eq!(overhead(2, FAMILY_V6), 40 + 8 + 4 + 4 + 32);
        assert_eq!(hlen_words(GUE_MAX_HOPS, FAMILY_V6), 17);
        assert!(source_port(0) >= 0xc000 && source_port(u32::MAX) == 0xffff);
    }
}
