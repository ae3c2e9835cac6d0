//! `lb capture`: the datapath's side of a packet capture. While a capture runs, the daemon
//! swaps `lb_capture` (the same datapath with a copy at entry and a record at exit) into
//! every pinned XDP link; `lb` itself has no capture code, so a datapath that captures
//! nothing costs nothing. Each packet that passes [`CaptureFilter`] leaves one record in
//! the `CAPTURE_RING` ring buffer: a [`CaptureHeader`], the bytes as received, the bytes as
//! sent.

use crate::service::Addr;

/// Most bytes of a packet a record carries, each way: a 1500-byte frame and its
/// encapsulation, whole. A power of two, so the datapath can bound copies by a mask.
pub const CAPTURE_SNAPLEN_MAX: u32 = 2048;

/// Size of the ring buffer the records go through (a power of two of pages): about a
/// thousand full-size records, or many more of headers only.
pub const CAPTURE_RING_BYTES: u32 = 4 << 20;

/// A header field that does not apply (no VIP, no backend, no conntrack entry, a reason
/// that a tail-called program did not leave).
pub const CAPTURE_NONE: u32 = u32::MAX;

/// `CaptureHeader::ct_table`: where the flow's entry was after the packet.
pub const CAPTURE_CT_NONE: u8 = 0;
pub const CAPTURE_CT_PROVEN: u8 = 1;
pub const CAPTURE_CT_UNPROVEN: u8 = 2;

/// `CaptureFilter::*_family` value that matches any packet.
pub const CAPTURE_ANY_FAMILY: u8 = 0;

/// What a capture keeps, set by the daemon before it swaps `lb_capture` in. A packet is
/// kept when every set field matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureFilter {
    /// The client's address prefix (address and mask, both in network order bytes).
    pub client: Addr,
    pub client_mask: Addr,
    /// A VIP address and port: client → VIP packets and the VIP's replies.
    pub vip: Addr,
    /// The backend's address and port (host order).
    pub backend: Addr,
    pub vip_port: u16,
    pub backend_port: u16,
    /// `FAMILY_*`, or [`CAPTURE_ANY_FAMILY`]: that part of the filter is off.
    pub client_family: u8,
    pub vip_family: u8,
    pub backend_family: u8,
    /// 1: only dropped (and aborted) packets.
    pub drops_only: u8,
    /// Every `sample`-th matching packet on each CPU is kept (1: each).
    pub sample: u32,
    /// Bytes kept of each packet, each way (at most [`CAPTURE_SNAPLEN_MAX`]).
    pub snaplen: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for CaptureFilter {}

/// One record's fixed part; the received bytes (`received_cap`) and the sent bytes
/// (`sent_cap`) follow it in the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureHeader {
    /// CLOCK_MONOTONIC when the datapath decided the packet (under a microsecond after it
    /// arrived).
    pub time_ns: u64,
    pub ifindex: u32,
    /// The XDP action.
    pub action: u32,
    /// The `Stat` index of the reason counted, or [`CAPTURE_NONE`].
    pub reason: u32,
    pub vip_id: u32,
    pub backend_id: u32,
    /// The packet's length as received and as sent (0: not sent).
    pub received_len: u32,
    pub sent_len: u32,
    pub received_cap: u16,
    pub sent_cap: u16,
    /// The flow's `CT_*` state and `CT_FLAG_*` bits after the packet, and in which table
    /// (`CAPTURE_CT_*`).
    pub ct_state: u8,
    pub ct_flags: u8,
    pub ct_table: u8,
    pub _pad: u8,
    /// The CPU that ran the packet.
    pub cpu: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for CaptureHeader {}

/// Bytes of a [`CaptureHeader`] in a record.
pub const CAPTURE_HEADER_BYTES: usize = size_of::<CaptureHeader>();

/// Counts of one CPU's capture, read by the daemon when a capture ends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCounts {
    /// Packets that matched the filter (before sampling).
    pub matched: u64,
    /// Records written to the ring.
    pub written: u64,
    /// Records the ring had no room for: the reader did not keep up.
    pub lost: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for CaptureCounts {}

impl CaptureCounts {
    pub fn merge(&mut self, other: &CaptureCounts) {
        self.matched = self.matched.saturating_add(other.matched);
        self.written = self.written.saturating_add(other.written);
        self.lost = self.lost.saturating_add(other.lost);
    }
}

/// One CPU's working space: the record being built (header and both copies of the packet,
/// contiguous so it goes to the ring in one call), and the capture's counts.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureScratch {
    pub header: CaptureHeader,
    pub bytes: [u8; 2 * CAPTURE_SNAPLEN_MAX as usize],
    /// A flow key built for a lookup (a reply's flow, reversed), here rather than on the
    /// stack.
    pub key: crate::flow::FlowKey,
    pub counts: CaptureCounts,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for CaptureScratch {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_has_no_hidden_padding() {
        assert_eq!(CAPTURE_HEADER_BYTES, 48);
        assert!(CAPTURE_SNAPLEN_MAX.is_power_of_two());
        assert_eq!(CAPTURE_RING_BYTES % 4096, 0);
        assert!(CAPTURE_RING_BYTES.is_power_of_two());
    }
}
