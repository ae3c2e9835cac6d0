//! Packets too big for their next hop, in the tail-called program `lb_too_big`: the packet
//! is turned into frag-needed (IPv4) or packet-too-big (IPv6) from a VIP address, quoting
//! its start, and sent back out of the interface it came in on; rate-limited per CPU.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    consts::{ICMP_RATE_BURST, ICMP_RATE_INTERVAL_NS},
    icmp::TooBigArgs,
    service::Addr,
    stats::Stat,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    Outcome, copy, forward,
    icmp::{OWN_TTL, swap_macs},
    maps::ICMP_RATE,
    parse::{ICMP_HEADER, Packet, ptr_at},
    stats,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// Bytes of the too-big packet quoted back: its IP header with options and at least the
/// 8 bytes of ports and sequence number the sender needs to find its socket (RFC 792,
/// RFC 4443). Multiples of 4, as `bpf_csum_diff` wants.
const QUOTE_V4: usize = 68;
const QUOTE_V6: usize = 128;

/// Answers a packet that does not fit its next hop's `mtu` with frag-needed (IPv4) or
/// packet-too-big (IPv6) from `from`, back out of the interface it came in on. The
/// packet itself is turned into the answer: cut after the quote, headers put in front.
#[inline(always)]
pub fn answer(
    ctx: &XdpContext,
    packet: &Packet,
    args: &TooBigArgs,
    frame: usize,
    now: u64,
) -> Outcome {
    let (mtu, from) = (args.mtu, args.from);
    if args.dsr != 0 {
        stats::count(Stat::DsrTooBig, frame);
    }
    let Some(bucket) = ICMP_RATE.get_ptr_mut(0) else {
        return Outcome::drop(Stat::DropTooBigRateLimited);
    };
    // SAFETY: this CPU's slot; the program is not re-entered on a CPU.
    if !unsafe { &mut *bucket }.take(now, ICMP_RATE_BURST, ICMP_RATE_INTERVAL_NS) {
        return Outcome::drop(Stat::DropTooBigRateLimited);
    }
    let v4 = packet.is_v4();
    let (ip_header, quote) = if v4 {
        (Ipv4Hdr::LEN, QUOTE_V4)
    } else {
        (Ipv6Hdr::LEN, QUOTE_V6)
    };
    // A packet too big for any real MTU is longer than the quote; anything else is left
    // to the kernel.
    if packet.ip_len < quote {
        return Outcome::pass(Stat::PassFragmentationNeeded);
    }
    let to = packet.flow.src;
    let l2 = packet.l3_offset;
    let grow = ip_header + ICMP_HEADER;
    // SAFETY: the helpers check their arguments; every pointer is re-derived after them.
    let resized = unsafe {
        bpf_xdp_adjust_tail(ctx.ctx, (l2 + quote) as i32 - frame as i32) == 0
            && bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) == 0
    };
    if !resized {
        return Outcome::drop(Stat::DropFibFailure);
    }
    if !move_l2_header(ctx, grow, l2 > EthHdr::LEN) || !swap_macs(ctx, 0) {
        return Outcome::drop(Stat::DropFibFailure);
    }
    let written = if v4 {
        write_frag_needed(ctx, l2, mtu, &from, &to)
    } else {
        write_packet_too_big(ctx, l2, mtu, &from, &to)
    };
    if written.is_none() {
        return Outcome::drop(Stat::DropFibFailure);
    }
    forward::bounce(ctx, Stat::IcmpTooBigSent)
}

/// Copies the Ethernet header (and its VLAN tag) from `from` bytes in to the front.
#[inline(always)]
pub fn move_l2_header(ctx: &XdpContext, from: usize, vlan: bool) -> bool {
    let (Some(old), Some(new)) = (ptr_at::<[u8; 14]>(ctx, from), ptr_at::<[u8; 14]>(ctx, 0)) else {
        return false;
    };
    // SAFETY: both bounds checked and 2-aligned (`from` is even); `from` ≥ 20, so the two
    // do not overlap.
    unsafe { copy::write_halves(new.cast(), &copy::read_halves::<7>(old.cast())) };
    if vlan {
        let (Some(old), Some(new)) = (
            ptr_at::<[u8; 4]>(ctx, from + 14),
            ptr_at::<[u8; 4]>(ctx, 14),
        ) else {
            return false;
        };
        // SAFETY: as above.
        unsafe { copy::write_halves(new.cast(), &copy::read_halves::<2>(old.cast())) };
    }
    true
}

/// The one's complement sum of `bytes` at `ptr` plus `seed`, folded (RFC 1071), in the
/// byte order of the machine, as the kernel's checksum helpers compute it.
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "bpf_csum_diff takes a u32 pointer but reads bytes"
)]
fn checksum(ptr: *const u8, bytes: usize, seed: u32) -> u16 {
    // SAFETY: the caller passes a bounds-checked pointer to `bytes` bytes.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            ptr as *mut u32,
            bytes as u32,
            seed,
        )
    };
    let mut sum = sum as u64 as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn write_frag_needed(ctx: &XdpContext, l2: usize, mtu: u16, from: &Addr, to: &Addr) -> Option<()> {
    let ip = ptr_at::<[u8; 20]>(ctx, l2)?;
    let total = (Ipv4Hdr::LEN + ICMP_HEADER + QUOTE_V4) as u16;
    let [len_high, len_low] = total.to_be_bytes();
    // SAFETY: bounds checked.
    let ip = unsafe { &mut *ip };
    *ip = [
        0x45,
        0,
        len_high,
        len_low,
        0,
        0,
        0,
        0,
        OWN_TTL,
        IPPROTO_ICMP,
        0,
        0,
        from[0],
        from[1],
        from[2],
        from[3],
        to[0],
        to[1],
        to[2],
        to[3],
    ];
    let check = checksum(ip.as_ptr(), 20, 0).to_ne_bytes();
    ip[10] = check[0];
    ip[11] = check[1];
    let icmp = ptr_at::<[u8; ICMP_HEADER + QUOTE_V4]>(ctx, l2 + Ipv4Hdr::LEN)?;
    // SAFETY: bounds checked.
    let icmp = unsafe { &mut *icmp };
    let [mtu_high, mtu_low] = mtu.to_be_bytes();
    icmp[..ICMP_HEADER].copy_from_slice(&[
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        0,
        0,
        0,
        0,
        mtu_high,
        mtu_low,
    ]);
    let check = checksum(icmp.as_ptr(), ICMP_HEADER + QUOTE_V4, 0).to_ne_bytes();
    icmp[2] = check[0];
    icmp[3] = check[1];
    Some(())
}

#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "bpf_csum_diff takes a u32 pointer but reads bytes"
)]
fn write_packet_too_big(
    ctx: &XdpContext,
    l2: usize,
    mtu: u16,
    from: &Addr,
    to: &Addr,
) -> Option<()> {
    let payload = (ICMP_HEADER + QUOTE_V6) as u16;
    let ip = ptr_at::<Ipv6Hdr>(ctx, l2)?;
    // SAFETY: bounds checked.
    let ip = unsafe { &mut *ip };
    ip.vcf = [0x60, 0, 0, 0];
    ip.payload_len = payload.to_be_bytes();
    ip.next_hdr = IPPROTO_ICMPV6;
    ip.hop_limit = OWN_TTL;
    ip.src_addr = *from;
    ip.dst_addr = *to;
    // Pseudo-header: source, destination, upper-layer length, next header (RFC 8200).
    let mut pseudo = [0u8; 40];
    pseudo[..16].copy_from_slice(from);
    pseudo[16..32].copy_from_slice(to);
    pseudo[34..36].copy_from_slice(&payload.to_be_bytes());
    pseudo[39] = IPPROTO_ICMPV6;
    // SAFETY: a pointer to the 40 bytes above.
    let seed = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            pseudo.as_mut_ptr().cast::<u32>(),
            40,
            0,
        )
    } as u64 as u32;
    let icmp = ptr_at::<[u8; ICMP_HEADER + QUOTE_V6]>(ctx, l2 + Ipv6Hdr::LEN)?;
    // SAFETY: bounds checked.
    let icmp = unsafe { &mut *icmp };
    let mtu = u32::from(mtu).to_be_bytes();
    icmp[..ICMP_HEADER].copy_from_slice(&[
        ICMPV6_PACKET_TOO_BIG,
        0,
        0,
        0,
        mtu[0],
        mtu[1],
        mtu[2],
        mtu[3],
    ]);
    let check = checksum(icmp.as_ptr(), ICMP_HEADER + QUOTE_V6, seed).to_ne_bytes();
    icmp[2] = check[0];
    icmp[3] = check[1];
    Some(())
}
