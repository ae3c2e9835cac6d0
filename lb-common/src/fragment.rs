//! IP fragments of VIP traffic: what a datagram's first fragment decided, for the
//! fragments after it, which carry no ports (the `FRAGMENTS` map).

use crate::service::Addr;

/// One fragmented datagram as the IP layer names it (RFC 791 / RFC 8200): source,
/// destination, identification (IPv4: 16 bits, IPv6: 32), protocol and family. The
/// addresses are the packet's own as it arrived (client → VIP, or backend → client).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: Addr,
    pub dst: Addr,
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FragmentKey {}

/// What the datagram's first fragment was sent as; the later fragments follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    /// `FRAGMENT_REPLY`: the VIP address the later fragments leave from. Unused otherwise
    /// (the backend's address is read from `BACKENDS`, whose generation is checked).
    pub addr: Addr,
    /// When the first fragment was seen (coarse clock): an entry older than
    /// [`FRAGMENT_TIMEOUT_NS`] is treated as absent.
    pub seen_ns: u64,
    /// `FRAGMENT_TO_BACKEND`: the backend, its generation then, and its VIP.
    pub backend_id: u32,
    pub generation: u32,
    pub vip_id: u32,
    /// The datagram's ports as the first fragment carried them (host order), so a later
    /// fragment has its whole 5-tuple.
    pub src_port: u16,
    pub dst_port: u16,
    /// `FRAGMENT_*`.
    pub kind: u8,
    pub _pad: [u8; 7],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Fragment {}

/// A client's datagram to a VIP: its first fragment was balanced to `backend_id`.
pub const FRAGMENT_TO_BACKEND: u8 = 1;
/// A backend endpoint's reply: its first fragment left from the VIP `addr`.
pub const FRAGMENT_REPLY: u8 = 2;
/// Its first fragment was passed to the kernel untouched (to a VIP address but another
/// port, or from a backend address but not from an endpoint): so are the others.
pub const FRAGMENT_PASS: u8 = 3;

/// How long the later fragments of a datagram are matched to its first one: Linux's
/// reassembly timeout (`ipfrag_time`, 30 s). Identifications wrap, so an entry must not
/// outlive the datagram it names.
pub const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

/// Datagrams tracked at once (LRU): ample for the fragments in flight in one reassembly
/// timeout; an evicted entry costs the rest of that datagram (`drop_fragment_no_first`).
pub const FRAGMENTS_CAPACITY: u32 = 8192;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FragmentKey>(), 16 + 16 + 4 + 1 + 1 + 2);
        assert_eq!(size_of::<Fragment>(), 16 + 8 + 4 + 4 + 4 + 2 + 2 + 1 + 7);
    }
}
