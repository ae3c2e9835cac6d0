//! VIPs and backends: what a cluster IP is and where its traffic may go.

use crate::consts::{FAMILY_V4, FAMILY_V6};

/// An IPv4 or IPv6 address in 16 bytes: IPv4 in the first four, the rest zero.
pub type Addr = [u8; 16];

pub const fn addr_from_v4(octets: [u8; 4]) -> Addr {
    let mut addr = [0u8; 16];
    addr[0] = octets[0];
    addr[1] = octets[1];
    addr[2] = octets[2];
    addr[3] = octets[3];
    addr
}

/// Key of the VIP map: destination address, port (host order) and protocol of a packet.
///
/// `port == 0 && proto == 0` marks an address entry, present once per VIP address, so the
/// datapath can apply the VIP-address policies (fragments, extension headers) without ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for VipKey {}

impl VipKey {
    pub const fn address_entry(addr: Addr, family: u8) -> Self {
        Self {
            addr,
            port: 0,
            proto: 0,
            family,
        }
    }

    pub const fn is_v6(&self) -> bool {
        self.family == FAMILY_V6
    }

    pub const fn is_v4(&self) -> bool {
        self.family == FAMILY_V4
    }
}

/// Value of the VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index into the per-VIP counters and the Maglev tables, below the `--max-vips` the
    /// maps were created with.
    pub id: u32,
    /// Which of the VIP's two Maglev tables is live (0 or 1). Userspace fills the other one,
    /// then flips this in a single map update, so no packet sees a half-written table.
    pub active_table: u8,
    /// `encap::MODE_*`: how the VIP's packets reach its backends (read back on adoption;
    /// the datapath follows each backend's copy).
    pub mode: u8,
    /// `VIP_FLAG_*` bits (one of the two bytes that were padding: the layout is unchanged).
    pub flags: u8,
    pub _pad: [u8; 1],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for VipInfo {}

/// A backend: where a VIP's flows are sent (destination NAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    /// Host order.
    pub port: u16,
    pub family: u8,
    /// `BACKEND_*` state: only active backends take new flows; draining ones keep theirs.
    pub state: u8,
    /// Maglev weight (1..=65535). The datapath ignores it; a restarted controller reads it
    /// back, with `vip_id`, to adopt the pinned maps.
    pub weight: u32,
    /// The VIP this backend belongs to.
    pub vip_id: u32,
    /// Changes every time the id is given to a backend: a tracked flow pinned under an
    /// older generation is balanced again instead of following the id.
    pub generation: u32,
    /// Its VIP's `encap::MODE_*`, here so that a tracked flow's packet needs no VIP lookup.
    pub mode: u8,
    /// `BACKEND_FLAG_*` bits: its VIP's policies a tracked flow needs, copied here as
    /// `mode` is (one of the three bytes that were padding: the layout is unchanged).
    pub flags: u8,
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Backend {}

/// The data of a SOURCE_RANGES key (the LPM trie's key is its prefix length, then this):
/// the VIP's id, matched in full, then the client address as [`Addr`] stores it (IPv4 in
/// the first four bytes). A prefix of `len` bits is stored with prefix length
/// [`source_prefix_len`]`(len)`, so it only ever matches clients of its own VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRange {
    /// Host byte order; every bit is inside the matched prefix, so the order is never
    /// compared against anything but itself.
    pub vip_id: u32,
    pub addr: Addr,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for SourceRange {}

/// Bits of [`SourceRange`] before the address: the VIP id, always matched.
pub const SOURCE_RANGE_VIP_BITS: u32 = 32;

/// The LPM prefix length of a source prefix of `len` address bits.
pub const fn source_prefix_len(len: u8) -> u32 {
    SOURCE_RANGE_VIP_BITS + len as u32
}

/// The LPM prefix length a client address is looked up with (every bit of the key: the
/// longest stored prefix that contains it answers).
pub const SOURCE_LOOKUP_LEN: u32 = SOURCE_RANGE_VIP_BITS + 128;

/// Key of the ENDPOINTS map: a backend's address, port (host order) and protocol, as the
/// source of its replies. `port == 0 && proto == 0` marks an address entry, present once
/// per backend address (fragments and IPv6 extension headers carry no ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointKey {}

/// Value of the ENDPOINTS map: the one VIP a backend endpoint serves, so that its replies
/// get the VIP back as their source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub vip_addr: Addr,
    pub vip_port: u16,
    pub _pad: [u8; 2],
    pub vip_id: u32,
    pub backend_id: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Endpoint {}

/// The single entry of the META map: what layout and sizes the pinned maps were created
/// with. A controller adopts pinned maps only if it would have created the same ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// [`crate::consts::LAYOUT_VERSION`] of the controller that created the maps; 0 means the
    /// maps were created but never finished (the controller died during start-up).
    pub version: u32,
    pub maglev_size: u32,
    pub max_vips: u32,
    pub conntrack_capacity: u32,
    // The backend slots (`--max-backends`) are not recorded here: the pinned BACKENDS map's
    // own size says it, so pins made before the flag existed are adopted as they are.
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Layout {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_flag_bytes_keep_the_pinned_layouts() {
        // Pinned maps of the previous release hold these types: their sizes must not move.
        assert_eq!(size_of::<VipInfo>(), 8);
        assert_eq!(size_of::<Backend>(), 36);
        assert_eq!(size_of::<SourceRange>(), 20);
    }

    #[test]
    fn a_source_prefix_always_matches_its_vip_id_in_full() {
        assert_eq!(source_prefix_len(0), 32);
        assert_eq!(source_prefix_len(24), 56);
        assert_eq!(source_prefix_len(128), SOURCE_LOOKUP_LEN);
    }
}
