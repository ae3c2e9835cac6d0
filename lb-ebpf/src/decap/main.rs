//! `lb_decap`, the backends' XDP program: strips the outer header of IPIP,
//! IPv6-in-IPv6 and IPv4-in-IPv6 packets sent to this host, so the stack receives the
//! client's packet as the lb got it. A kernel without the ipip / ip6_tunnel modules can
//! then be a DSR backend.
//!
//! Its own object with four small maps (`lb-common/src/decap.rs`): a backend never
//! creates the balancer's tables. Every packet bumps exactly one counter. Anything not
//! decapsulated leaves exactly as it came (`XDP_PASS`): the result is what the stack
//! would have seen with no program attached. The one drop: a congestion mark that cannot
//! be carried into the inner packet (`ecn.rs`).
#![no_std]
#![no_main]
// A binary: nothing is reachable from outside, so `pub` here means the crate.
#![allow(unreachable_pub, reason = "a binary crate: pub means pub(crate)")]

mod ecn;
mod gue;
mod second_chance;
mod tunnel;

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_head, macros::map, macros::xdp,
    maps::Array, maps::HashMap, maps::LpmTrie, maps::LruHashMap, maps::PerCpuArray,
    maps::ProgramArray, maps::lpm_trie::Key, programs::XdpContext,
};
use lb_common::{
    decap::{
        DECAP_FILTER_SOURCES, DECAP_MAX_LOCAL, DECAP_MAX_RECENT, DECAP_MAX_SOURCES,
        DECAP_STATS_LEN, DecapConfig, DecapStat, JUMP_DECAP_GUE,
    },
    gue::RecentKey,
    stats::Counter,
};

use crate::{
    second_chance::Choice,
    tunnel::{ETH_HEADER_LEN, ETH_VLAN_HEADER_LEN, Tunnel, data, data_end},
};

/// Outer destinations to decapsulate for (IPv4 mapped, see `lb_common::decap`).
#[map(name = "DECAP_LOCAL")]
static DECAP_LOCAL: HashMap<[u8; 16], u32> = HashMap::with_max_entries(DECAP_MAX_LOCAL, 0);

/// Allowed outer source prefixes, consulted when `DECAP_FILTER_SOURCES` is set.
#[map(name = "DECAP_SOURCES")]
static DECAP_SOURCES: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(DECAP_MAX_SOURCES, 0);

#[map(name = "DECAP_CONFIG")]
static DECAP_CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);

/// UDP flows taken from dsr-gue, by inner 5-tuple → when last taken (`second_chance`).
#[map(name = "DECAP_RECENT")]
static DECAP_RECENT: LruHashMap<RecentKey, u64> = LruHashMap::with_max_entries(DECAP_MAX_RECENT, 0);

/// This CPU's parameter blocks for the second chance's helpers (the FIB's 64 bytes, a
/// socket tuple): kept off the stack, which came within 32 bytes of the verifier's 512
/// with them. The kernel's own structs; internal, never pinned.
#[map(name = "DECAP_SCRATCH")]
static DECAP_SCRATCH: PerCpuArray<second_chance::Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "DECAP_STATS")]
static DECAP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DECAP_STATS_LEN, 0);

/// `lb_decap_gue`, tail-called for dsr-gue (its own program: with the second chance
/// inlined, `lb_decap` took the verifier 18 times the work and 480 bytes of stack).
#[map(name = "DECAP_JUMPS")]
static DECAP_JUMPS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let len = data_end(&ctx) - data(&ctx);
    let (action, stat) = process(&ctx);
    count(stat, len);
    action
}

/// dsr-gue, tail-called from `lb_decap` (which counted nothing for the packet).
#[xdp]
pub fn lb_decap_gue(ctx: XdpContext) -> u32 {
    let len = data_end(&ctx) - data(&ctx);
    let (action, stat) = process_gue(&ctx);
    count(stat, len);
    action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, DecapStat) {
    let config = DECAP_CONFIG.get(0).copied().unwrap_or_default();
    if config.gue_port != 0 && tunnel::is_gue(ctx, config.gue_port) {
        // SAFETY: the context is the program's; a tail call that returns failed.
        unsafe { DECAP_JUMPS.tail_call(ctx, JUMP_DECAP_GUE) };
        // Not loaded (an object without it): the stack gets the packet as it came.
        return (xdp_action::XDP_PASS, DecapStat::PassNotEncapsulated);
    }
    let tunnel = match accepted::<false>(ctx, &config) {
        Ok(tunnel) => tunnel,
        Err(stat) => return (xdp_action::XDP_PASS, stat),
    };
    if !ecn::carry(ctx, &tunnel) {
        return (xdp_action::XDP_DROP, DecapStat::DropCeNotEct);
    }
    strip(ctx, &tunnel, tunnel.decapsulated)
}

/// As [`process`], for a dsr-gue packet: taken here (decapsulated) or sent on to its
/// next hop (`second_chance`).
#[inline(always)]
fn process_gue(ctx: &XdpContext) -> (u32, DecapStat) {
    let config = DECAP_CONFIG.get(0).copied().unwrap_or_default();
    let tunnel = match accepted::<true>(ctx, &config) {
        Ok(tunnel) => tunnel,
        Err(stat) => return (xdp_action::XDP_PASS, stat),
    };
    let Some(gue) = &tunnel.gue else {
        return (xdp_action::XDP_PASS, DecapStat::PassNotEncapsulated);
    };
    let taken = match second_chance::choose(ctx, &tunnel, gue) {
        Choice::Take(stat) => stat,
        Choice::Forward => match second_chance::forward(ctx, &tunnel, gue) {
            Ok(sent) => return sent,
            // Nothing was changed: taken here rather than lost.
            Err(stat) => stat,
        },
    };
    // Set aside until the packet is taken apart: carried in a register, each reason
    // would be a state of its own for the verifier through the ECN and strip steps.
    second_chance::set_aside(taken);
    if !ecn::carry(ctx, &tunnel) {
        return (xdp_action::XDP_DROP, DecapStat::DropCeNotEct);
    }
    match strip(ctx, &tunnel, DecapStat::GueTakenLastHop) {
        (action, DecapStat::Malformed) => (action, DecapStat::Malformed),
        (action, _) => (action, second_chance::set_aside_reason()),
    }
}

/// The frame's tunnel if it is one addressed here from an allowed source; otherwise the
/// counter that says why not (the frame is passed untouched).
#[inline(always)]
fn accepted<const GUE: bool>(ctx: &XdpContext, config: &DecapConfig) -> Result<Tunnel, DecapStat> {
    let tunnel = tunnel::parse::<GUE>(ctx, config.gue_port)?;
    // SAFETY: a hash lookup; the value is not kept.
    if unsafe { DECAP_LOCAL.get(tunnel.dst) }.is_none() {
        return Err(DecapStat::PassNotLocal);
    }
    if !source_allowed(config, &tunnel) {
        return Err(DecapStat::PassNotAllowedSource);
    }
    Ok(tunnel)
}

#[inline(always)]
fn source_allowed(config: &DecapConfig, tunnel: &Tunnel) -> bool {
    config.flags & DECAP_FILTER_SOURCES == 0
        || DECAP_SOURCES.get(Key::new(128, tunnel.src)).is_some()
}

/// Removes the outer IP header: the Ethernet header before it (addresses and any VLAN
/// tag) moves forward over it, and its ethertype becomes the inner packet's.
#[inline(always)]
fn strip(ctx: &XdpContext, tunnel: &Tunnel, taken: DecapStat) -> (u32, DecapStat) {
    let moved = if tunnel.l2_len == ETH_VLAN_HEADER_LEN {
        move_l2::<{ ETH_VLAN_HEADER_LEN - 2 }>(ctx, tunnel)
    } else {
        move_l2::<{ ETH_HEADER_LEN - 2 }>(ctx, tunnel)
    };
    match moved {
        Ok(()) => (xdp_action::XDP_PASS, taken),
        Err(action) => (action, DecapStat::Malformed),
    }
}

/// Moves the first `N` bytes (the Ethernet header up to its last ethertype) forward by
/// the outer header's length and writes the inner ethertype after them.
#[inline(always)]
fn move_l2<const N: usize>(ctx: &XdpContext, tunnel: &Tunnel) -> Result<(), u32> {
    let start = data(ctx);
    if start + N > data_end(ctx) {
        return Err(xdp_action::XDP_PASS);
    }
    // SAFETY: N bytes are in bounds (checked above); byte arrays align to 1.
    let l2 = unsafe { *(start as *const [u8; N]) };
    // SAFETY: the context is the program's own; `outer_len` bytes of outer header follow
    // the Ethernet header (checked by `tunnel::parse`), so the new start stays inside.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, tunnel.outer_len as i32) } != 0 {
        return Err(xdp_action::XDP_PASS);
    }
    // Every packet pointer is stale after the move: read the bounds again.
    let start = data(ctx);
    if start + N + 2 > data_end(ctx) {
        // Cannot happen (the inner header follows); dropped rather than passed headless.
        return Err(xdp_action::XDP_DROP);
    }
    // SAFETY: N + 2 bytes are in bounds (checked above).
    unsafe {
        *(start as *mut [u8; N]) = l2;
        *((start + N) as *mut [u8; 2]) = tunnel.inner_ether_type.to_be_bytes();
    }
    Ok(())
}

#[inline(always)]
fn count(stat: DecapStat, bytes: usize) {
    if let Some(counter) = DECAP_STATS.get_ptr_mut(stat.index()) {
        // SAFETY: the slot belongs to this CPU and the program is not re-entered on it.
        let counter = unsafe { &mut *counter };
        counter.packets += 1;
        counter.bytes += bytes as u64;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
