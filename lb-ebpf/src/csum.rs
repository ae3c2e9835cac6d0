//! Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')).
//!
//! A [`Delta`] accumulates `~old + new` over 16-bit big-endian words; applying it to a
//! checksum field patches the field without touching the payload.

use lb_common::flow::FlowKey;

#[derive(Clone, Copy, Default)]
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u32::from(!old) + u32::from(new);
    }

    /// Writes `new` over `field` one 16-bit word at a time, adding each change. Word by
    /// word, so only one old and one new word are live at once: reading every byte first
    /// would keep 32 values in 8-byte stack slots.
    #[inline(always)]
    pub fn replace<const N: usize>(&mut self, field: &mut [u8; N], new: &[u8; N]) {
        let mut i = 0;
        while i + 1 < N {
            let old = u16::from_be_bytes([field[i], field[i + 1]]);
            let word = [new[i], new[i + 1]];
            self.word(old, u16::from_be_bytes(word));
            field[i] = word[0];
            field[i + 1] = word[1];
            i += 2;
        }
    }

    /// Adds another delta's changes to this one.
    #[inline(always)]
    pub fn add(&mut self, other: Delta) {
        self.0 += u32::from(fold(other.0));
    }

    /// The updated value of a checksum field (as read big-endian).
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold(u32::from(!check) + u32::from(fold(self.0)))
    }
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// What a sender that leaves its TCP or UDP checksum to the NIC (the kernel's
/// CHECKSUM_PARTIAL) writes in the checksum field: the folded sum of the pseudo-header,
/// not complemented, in the byte order of a native load of the field. Either family: an
/// IPv4 address fills the first 4 of its 16 bytes, the others are zero.
#[inline(always)]
pub fn pseudo_header(flow: &FlowKey, l4_len: u16) -> u16 {
    // One's complement sums commute with byte swaps: native 32-bit words, folded, give
    // the sum of the big-endian 16-bit words byte-swapped, as a native load of the field
    // reads it.
    // Written out: an iterator over both arrays became a loop the verifier refused.
    let [s0, s1, s2, s3] = flow.src_words();
    let [d0, d1, d2, d3] = flow.dst_words();
    let word = |w: u32| u64::from(w.to_le());
    let sum = u64::from(u16::from(flow.proto).to_be())
        + u64::from(l4_len.to_be())
        + word(s0)
        + word(s1)
        + word(s2)
        + word(s3)
        + word(d0)
        + word(d1)
        + word(d2)
        + word(d3);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    fold(sum as u32 + (sum >> 32) as u32)
}

/// The checksum of an IPv4 header without options whose checksum field is 0.
#[inline(always)]
pub fn ipv4_header(header: &[u8; 20]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([header[i], header[i + 1]]));
        i += 2;
    }
    !fold(sum)
}
