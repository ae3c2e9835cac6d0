//! Connection tracking: one entry per flow, keyed by its client → VIP 5-tuple, pins the
//! flow to a backend and follows its lifecycle (opening, established, closing, closed;
//! one state for datagrams). An entry idle past its state's timeout counts as absent here
//! and is deleted by userspace's sweep.
//!
//! Admission: a new flow is tracked in CT_UNPROVEN and moves to CONNTRACK once proven
//! ([`proven`]). Only promotions insert into CONNTRACK, so a flood (random sources, an ACK
//! scan) churns the unproven table and never evicts a proven flow; past the per-CPU
//! new-flow limit a flood is not tracked at all ([`admit`]).

use core::intrinsics::{AtomicOrdering, atomic_or};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_get_smp_processor_id, bpf_map_lookup_percpu_elem},
};
use lb_common::{
    consts::{ABLATE_CLOCK, RateWindow, RingCursor},
    flow::{
        CT_CLOSED, CT_CLOSING, CT_DATAGRAM, CT_ESTABLISHED, CT_FLAG_FIN_BACKEND,
        CT_FLAG_FIN_CLIENT, CT_FLAG_REPLY_SEEN, CT_FLAG_SYN_SEEN, CT_OPENING, Conn, FlowKey,
        PROVEN_AFTER_PACKETS, PROVEN_FILTER_HALF0, proven_filter_bit, proven_filter_slot,
    },
    stats::Stat,
};

use crate::{
    maps::{
        CONNTRACK, CT_UNPROVEN, NEW_FLOW_RATE, PROVEN_FILTER, UNPROVEN_RING, UNPROVEN_RING_HEAD,
        ablated, new_flow_limit, proven_filter_half_words, ring_cpus, timeout_ns,
        unproven_ring_slots, unproven_timeout_ns,
    },
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats,
};

const NS_PER_SECOND: u64 = 1_000_000_000;

const EEXIST: i32 = 17;
const E2BIG: i32 = 7;

/// Ring slots tried, oldest first, for an entry still in the table to evict: older ones
/// are often gone already (promoted or swept).
const EVICTION_TRIES: u64 = 4;

/// `last_seen_ns` is refreshed at most this often, to keep writes off the fast path.
const REFRESH_NS: u64 = 1_000_000_000;

/// Which side of the flow a packet came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    FromClient,
    FromBackend,
}

/// What the tables hold for a flow.
pub enum Lookup {
    /// A live entry (valid for this program run, RCU); `true`: in the proven table.
    Live(*mut Conn, bool),
    /// An entry idle past its timeout: to be overwritten where it is.
    Expired(*mut Conn),
    /// In neither table (or, for a SYN, not searched).
    Missing,
}

/// The flow's entry: proven first (the established fast path is one lookup), then unproven.
#[inline(always)]
pub fn lookup(flow: &FlowKey, now: u64) -> Lookup {
    if let Some(conn) = CONNTRACK.get_ptr_mut(flow) {
        // SAFETY: the entry stays valid for this program run (RCU); a racing writer only
        // changes which of two valid values is read.
        let (last_seen, state) = unsafe { ((*conn).last_seen_ns, (*conn).state) };
        return if now.saturating_sub(last_seen) > timeout_ns(state) {
            Lookup::Expired(conn)
        } else {
            Lookup::Live(conn, true)
        };
    }
    let Some(conn) = CT_UNPROVEN.get_ptr_mut(flow) else {
        // Promoted by another CPU between the two lookups (insert into CONNTRACK, then
        // remove from CT_UNPROVEN): found on a second look, not taken for a new flow.
        return match CONNTRACK.get_ptr_mut(flow) {
            Some(conn) => Lookup::Live(conn, true),
            None => Lookup::Missing,
        };
    };
    // SAFETY: as above.
    let (last_seen, state) = unsafe { ((*conn).last_seen_ns, (*conn).state) };
    if now.saturating_sub(last_seen) > unproven_timeout_ns(state) {
        Lookup::Expired(conn)
    } else {
        Lookup::Live(conn, false)
    }
}

/// Whether an unproven flow has shown it is real, after its client's latest packet
/// (`ack`: that packet's TCP acknowledgment number, 0 for anything else):
/// - NAT, a TCP flow opened by a SYN: the client acknowledged the backend's SYN-ACK
///   (its ACK number is the SYN-ACK's sequence + 1, which lb saw pass); a forger that
///   cannot see the SYN-ACK sent to the address it forged guesses 16 bits;
/// - NAT, datagrams: the backend answered and the client sent again;
/// - DSR (lb never sees replies), a TCP flow opened by a SYN: the client's ACK completed
///   the handshake;
/// - any other flow (datagrams in DSR, connections older than this lb): the client sent
///   `PROVEN_AFTER_PACKETS` packets.
///
/// A random-source flood sends one packet per forged 5-tuple, and proves nothing.
#[inline(always)]
pub fn proven(conn: &Conn, nat: bool, ack: u32) -> bool {
    let opened = conn.flags & CT_FLAG_SYN_SEEN != 0;
    let answered = conn.flags & CT_FLAG_REPLY_SEEN != 0;
    match conn.state {
        CT_DATAGRAM if nat => answered,
        CT_ESTABLISHED if opened && nat => answered && ack as u16 == conn.proof,
        CT_ESTABLISHED if opened => true,
        // A handshake not completed yet, or a closing or closed flow, proves nothing.
        CT_OPENING | CT_CLOSING | CT_CLOSED => false,
        _ if opened && nat => false,
        _ => conn.proof >= PROVEN_AFTER_PACKETS,
    }
}

/// Whether `proof` counts the client's packets for this entry (see `Conn::proof`).
#[inline(always)]
const fn counts_packets(conn: &Conn, nat: bool) -> bool {
    !(nat && conn.state != CT_DATAGRAM && conn.flags & CT_FLAG_SYN_SEEN != 0)
}

/// Counts a client packet of an unproven flow and moves the flow to the proven table once
/// it is proven. If the insert fails the flow stays unproven (and keeps working). Another
/// CPU promoting the same flow meanwhile finds it there (`BPF_NOEXIST`), so a promotion
/// is counted once and never takes a second LRU node.
#[inline(always)]
pub fn on_unproven_packet(flow: &FlowKey, slot: *mut Conn, nat: bool, ack: u32) {
    // SAFETY: the entry stays valid for this program run (RCU).
    let conn = unsafe { &mut *slot };
    if counts_packets(conn, nat) && conn.proof < u16::MAX {
        conn.proof += 1;
    }
    if !proven(conn, nat, ack) {
        return;
    }
    let moved = *conn;
    // The flow's filter bit is set before the insert, so no SYN can find the bit clear
    // while the entry is there, and again after it: should a sweep's rebuild clear the
    // word in between and walk past the entry's bucket before the insert, the second
    // mark lands in the rebuilt half.
    mark_proven(flow);
    match CONNTRACK.insert(flow, &moved, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            mark_proven(flow);
            // Gone already (the LRU took it) is as good as removed.
            CT_UNPROVEN.remove(flow).unwrap_or_default();
            stats::count_event(Stat::CtPromoted);
        }
        Err(e) if e == -EEXIST => {
            // As above.
            CT_UNPROVEN.remove(flow).unwrap_or_default();
        }
        Err(_) => {}
    }
}

/// Whether `flow` may have an entry in the proven table: false only when the filter's
/// answering half has its bit clear (see `lb_common::flow::PROVEN_FILTER_UNBUILT`).
#[inline(always)]
pub fn may_be_proven(flow: &FlowKey) -> bool {
    let half = match PROVEN_FILTER.get(0) {
        Some(&state) if state == PROVEN_FILTER_HALF0 => 0,
        Some(&state) if state == PROVEN_FILTER_HALF0 + 1 => 1,
        _ => return true,
    };
    let words = proven_filter_half_words();
    let (word, mask) = proven_filter_bit(flow, words);
    PROVEN_FILTER
        .get(proven_filter_slot(half, words, word))
        .is_none_or(|bits| bits & mask != 0)
}

/// Sets `flow`'s bit in both halves of the filter (a promotion): atomically, as other
/// CPUs and the sweep set bits of the same words.
#[inline(always)]
fn mark_proven(flow: &FlowKey) {
    let words = proven_filter_half_words();
    let (word, mask) = proven_filter_bit(flow, words);
    for half in 0..2 {
        if let Some(bits) = PROVEN_FILTER.get_ptr_mut(proven_filter_slot(half, words, word)) {
            // SAFETY: an array slot stays valid for the program's run; every writer of the
            // word sets bits atomically, and only the sweep clears them (the half that
            // does not answer, before its walk).
            unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(bits, mask) };
        }
    }
}

/// Marks that the backend answered (the reply path's half of [`proven`]); `syn_ack`: the
/// sequence number of the backend's SYN-ACK, whose successor the client's ACK must carry.
#[inline(always)]
pub fn on_reply(conn: &mut Conn, syn_ack: Option<u32>) {
    if conn.flags & CT_FLAG_REPLY_SEEN == 0 {
        conn.flags |= CT_FLAG_REPLY_SEEN;
    }
    if let Some(seq) = syn_ack
        && conn.flags & CT_FLAG_SYN_SEEN != 0
    {
        conn.proof = seq.wrapping_add(1) as u16;
    }
}

/// The rate guard: whether this CPU may track one more new flow this second. A flood past
/// the limit costs no insert and churns no table; its packets still go where Maglev says.
#[inline(always)]
fn admit(now: u64) -> bool {
    let limit = u64::from(new_flow_limit());
    // Without a clock (a benchmark's ablation) no window would ever close.
    if limit == 0 || ablated(ABLATE_CLOCK) {
        return true;
    }
    let Some(window) = NEW_FLOW_RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot; nothing else writes it during this run.
    let window: &mut RateWindow = unsafe { &mut *window };
    if now.wrapping_sub(window.start_ns) >= NS_PER_SECOND {
        window.start_ns = now;
        window.count = 0;
    }
    if window.count >= limit {
        return false;
    }
    window.count += 1;
    true
}

/// Moves a live entry along its lifecycle for a packet with TCP `flags` (0 for
/// datagrams) and refreshes its idle time. Writes only what changes.
#[inline(always)]
pub fn on_packet(conn: &mut Conn, flags: u8, direction: Direction, now: u64) {
    let state = next_state(conn.state, conn.flags, flags, direction);
    if state.0 != conn.state || state.1 != conn.flags {
        conn.state = state.0;
        conn.flags = state.1;
        conn.last_seen_ns = now;
    } else if now.wrapping_sub(conn.last_seen_ns) > REFRESH_NS {
        conn.last_seen_ns = now;
    }
}

/// The TCP state machine: (state, fin flags) after a packet with `flags`.
#[inline(always)]
const fn next_state(state: u8, fins: u8, flags: u8, direction: Direction) -> (u8, u8) {
    if flags & TCP_RST != 0 {
        return (CT_CLOSED, fins);
    }
    if flags & TCP_FIN != 0 {
        let fins = fins
            | match direction {
                Direction::FromClient => CT_FLAG_FIN_CLIENT,
                Direction::FromBackend => CT_FLAG_FIN_BACKEND,
            };
        let both = CT_FLAG_FIN_CLIENT | CT_FLAG_FIN_BACKEND;
        return (
            if fins & both == both {
                CT_CLOSED
            } else {
                CT_CLOSING
            },
            fins,
        );
    }
    // The client's ACK that completes the handshake.
    if state == CT_OPENING
        && matches!(direction, Direction::FromClient)
        && flags & (TCP_ACK | TCP_SYN) == TCP_ACK
    {
        return (CT_ESTABLISHED, fins);
    }
    (state, fins)
}

/// The state a new entry starts in for its first packet: opening for a SYN, established
/// for a TCP segment of a connection already under way (then moved by its flags; as an
/// unproven entry it lives no longer than an opening one), and `datagram` for everything
/// else.
#[inline(always)]
pub fn first_state(flags: u8, tcp: bool, datagram: u8) -> (u8, u8) {
    if !tcp {
        return (datagram, 0);
    }
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return (CT_OPENING, CT_FLAG_SYN_SEEN);
    }
    next_state(CT_ESTABLISHED, 0, flags, Direction::FromClient)
}

/// Overwrites an entry found expired or pinned to a backend that no longer serves it.
#[inline(always)]
pub fn replace(slot: *mut Conn, conn: &Conn) {
    // SAFETY: the entry stays valid for this program run (RCU); a racing reader sees the
    // old or the new backend, both usable.
    unsafe { *slot = *conn };
    stats::count_event(Stat::CtReplaced);
}

/// Tracks a new flow, unproven. A tracked 5-tuple (a SYN reusing a client port) is
/// overwritten in place: in the proven table here, in the unproven one when the insert
/// finds it there. `not_proven`: the proven table holds no entry for it (a packet that is
/// not a SYN missed both tables just now, or the filter says so), so it is not searched.
/// If the insert fails, or the rate guard says no, the flow is forwarded anyway, since
/// Maglev picks the same backend for its next packet. Creations are counted apart from
/// replacements so that userspace can derive evictions.
#[inline(always)]
pub fn insert(flow: &FlowKey, conn: &Conn, now: u64, not_proven: bool) {
    if !not_proven {
        if let Some(tracked) = CONNTRACK.get_ptr_mut(flow) {
            replace(tracked, conn);
            return;
        }
        stats::count_event(Stat::CtFilterFalsePositive);
    }
    if !admit(now) {
        stats::count_event(Stat::CtFloodUntracked);
        return;
    }
    track_unproven(flow, conn);
}

/// Inserts a flow into the unproven table (the rate guard passed); one already there (a
/// retransmitted SYN, or another CPU's insert meanwhile) is overwritten in place. With the
/// table full, the oldest flow this CPU tracked that is still there makes room (first in,
/// first out, as an LRU would for flows that send once): a flood evicts its own entries,
/// never a proven flow.
#[inline(always)]
pub fn track_unproven(flow: &FlowKey, conn: &Conn) {
    let mut inserted = CT_UNPROVEN.insert(flow, conn, u64::from(BPF_NOEXIST));
    if matches!(inserted, Err(e) if e == -E2BIG) && evict_oldest() {
        inserted = CT_UNPROVEN.insert(flow, conn, u64::from(BPF_NOEXIST));
    }
    let event = match inserted {
        Ok(()) => {
            remember(flow);
            Stat::CtCreated
        }
        Err(e) if e == -EEXIST => match CT_UNPROVEN.get_ptr_mut(flow) {
            Some(tracked) => {
                replace(tracked, conn);
                return;
            }
            None => Stat::CtInsertFailed,
        },
        Err(_) => Stat::CtInsertFailed,
    };
    stats::count_event(event);
}

/// Writes `flow` at this CPU's ring head, over the oldest flow it remembered.
#[inline(always)]
fn remember(flow: &FlowKey) {
    let Some(cursor) = UNPROVEN_RING_HEAD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; the program is not re-entered on a CPU.
    let cursor = unsafe { &mut *cursor };
    if let Some(slot) = UNPROVEN_RING.get_ptr_mut(ring_slot(cursor.written)) {
        // SAFETY: as above.
        unsafe { *slot = *flow };
    }
    cursor.written = cursor.written.wrapping_add(1);
}

/// Deletes the oldest flow still in the unproven table of this CPU's ring, or else of
/// another CPU's (a flood that fills the table through one CPU must not leave the others
/// unable to track); whether one was. Each ring slot looked at is consumed, found or not
/// (a flow promoted or swept meanwhile is skipped for good).
#[inline(always)]
fn evict_oldest() -> bool {
    // SAFETY: no preconditions.
    let this = unsafe { bpf_get_smp_processor_id() };
    let cpus = ring_cpus().max(1);
    let slots = u64::from(unproven_ring_slots().max(1));
    for turn in 0..MAX_RING_CPUS {
        if turn >= cpus {
            break;
        }
        // This CPU, then the next ones (wrapping), MAX_RING_CPUS at most.
        let cpu = this.wrapping_add(turn) % cpus;
        let Some(cursor) = on_cpu::<RingCursor>(ring_head_map(), 0, cpu) else {
            continue;
        };
        // Another CPU's cursor is written here unsynchronised: a lost update re-reads a
        // consumed slot (its removal fails) or skips one (left to the sweep).
        let written = cursor.written;
        let mut next = cursor.consumed.max(written.saturating_sub(slots));
        for _ in 0..EVICTION_TRIES {
            if next >= written {
                break;
            }
            let oldest = on_cpu::<FlowKey>(ring_map(), ring_slot(next), cpu);
            next += 1;
            if oldest.is_some_and(|key| CT_UNPROVEN.remove(key).is_ok()) {
                cursor.consumed = next;
                stats::count_event(Stat::CtUnprovenEvicted);
                return true;
            }
        }
        cursor.consumed = next;
    }
    false
}

/// CPUs whose rings an eviction may look in, this one first.
const MAX_RING_CPUS: u32 = 8;

/// Slot `index` of a per-CPU array as CPU `cpu` has it (`bpf_map_lookup_percpu_elem`). A
/// ring slot another CPU writes meanwhile may read torn: its removal then finds no entry.
#[inline(always)]
fn on_cpu<T>(map: *mut core::ffi::c_void, index: u32, cpu: u32) -> Option<&'static mut T> {
    // SAFETY: `map` is a per-CPU array whose values are `T`; the value stays valid for the
    // program's run.
    unsafe {
        let value = bpf_map_lookup_percpu_elem(map, core::ptr::from_ref(&index).cast(), cpu);
        value.cast::<T>().as_mut()
    }
}

#[inline(always)]
fn ring_map() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&UNPROVEN_RING).cast_mut().cast()
}

#[inline(always)]
fn ring_head_map() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&UNPROVEN_RING_HEAD).cast_mut().cast()
}

/// The ring slot of the `count`th flow written.
#[inline(always)]
fn ring_slot(count: u64) -> u32 {
    (count % u64::from(unproven_ring_slots().max(1))) as u32
}
