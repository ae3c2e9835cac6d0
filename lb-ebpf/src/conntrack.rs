//! Connection tracking: one entry per flow, keyed by its client → VIP 5-tuple, pins the
//! flow to a backend and follows its lifecycle (opening, established, closing, closed;
//! one state for datagrams). An entry idle past its state's timeout counts as absent here
//! and is deleted by userspace's sweep.
//!
//! Admission: a new flow is tracked in CT_UNPROVEN and moves to CONNTRACK once proven
//! ([`proven`]). Only promotions insert into CONNTRACK, so a flood (random sources, an ACK
//! scan) churns the unproven table and never evicts a proven flow; past the per-CPU
//! new-flow limit a flood is not tracked at all ([`admit`]).

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    consts::RateWindow,
    flow::{
        CT_CLOSED, CT_CLOSING, CT_DATAGRAM, CT_ESTABLISHED, CT_FLAG_FIN_BACKEND,
        CT_FLAG_FIN_CLIENT, CT_FLAG_REPLY_SEEN, CT_FLAG_SYN_SEEN, CT_OPENING, Conn, FlowKey,
        PROVEN_AFTER_PACKETS,
    },
    stats::Stat,
};

use crate::{
    maps::{
        CONNTRACK, CT_UNPROVEN, NEW_FLOW_RATE, new_flow_limit, timeout_ns, unproven_timeout_ns,
    },
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats,
};

const NS_PER_SECOND: u64 = 1_000_000_000;

const EEXIST: i32 = 17;

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
        return Lookup::Missing;
    };
    // SAFETY: as above.
    let (last_seen, state) = unsafe { ((*conn).last_seen_ns, (*conn).state) };
    if now.saturating_sub(last_seen) > unproven_timeout_ns(state) {
        Lookup::Expired(conn)
    } else {
        Lookup::Live(conn, false)
    }
}

/// Whether an unproven flow has shown it is real, after its client's latest packet: its
/// backend answered and the client spoke again (a handshake the backend took part in, or
/// a datagram exchange: NAT, where replies pass through lb), the client completed the
/// handshake it began with a SYN (DSR, where lb never sees replies), or the client kept
/// sending. A random-source flood sends one packet per source and never sees a reply.
#[inline(always)]
pub fn proven(conn: &Conn, nat: bool) -> bool {
    let answered = conn.state == CT_ESTABLISHED || conn.state == CT_DATAGRAM;
    if answered && conn.flags & CT_FLAG_REPLY_SEEN != 0 {
        return true;
    }
    if !nat && conn.state == CT_ESTABLISHED && conn.flags & CT_FLAG_SYN_SEEN != 0 {
        return true;
    }
    conn.packets >= PROVEN_AFTER_PACKETS
}

/// Counts a client packet of an unproven flow and moves the flow to the proven table once
/// it is proven. If the insert fails the flow stays unproven (and keeps working).
#[inline(always)]
pub fn on_unproven_packet(flow: &FlowKey, slot: *mut Conn, nat: bool) {
    // SAFETY: the entry stays valid for this program run (RCU).
    let conn = unsafe { &mut *slot };
    if conn.packets < u8::MAX {
        conn.packets += 1;
    }
    if !proven(conn, nat) {
        return;
    }
    let moved = *conn;
    if CONNTRACK.insert(flow, &moved, u64::from(BPF_ANY)).is_ok() {
        let _ = CT_UNPROVEN.remove(flow);
        stats::count_event(Stat::CtPromoted);
    }
}

/// Marks that the backend answered (the reply path's half of [`proven`]).
#[inline(always)]
pub fn on_reply(conn: &mut Conn) {
    if conn.flags & CT_FLAG_REPLY_SEEN == 0 {
        conn.flags |= CT_FLAG_REPLY_SEEN;
    }
}

/// The rate guard: whether this CPU may track one more new flow this second. A flood past
/// the limit costs no insert and churns no table; its packets still go where Maglev says.
#[inline(always)]
fn admit(now: u64) -> bool {
    let limit = u64::from(new_flow_limit());
    if limit == 0 {
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
/// overwritten in place, in whichever table holds it: an LRU insert takes a free node
/// first and may evict another flow to get it, even when the key exists. If the insert
/// fails, or the rate guard says no, the flow is forwarded anyway, since Maglev picks the
/// same backend for its next packet. Creations are counted apart from replacements so
/// that userspace can derive evictions.
#[inline(always)]
pub fn insert(flow: &FlowKey, conn: &Conn, now: u64) {
    if let Some(tracked) = CONNTRACK.get_ptr_mut(flow) {
        replace(tracked, conn);
        return;
    }
    if let Some(tracked) = CT_UNPROVEN.get_ptr_mut(flow) {
        replace(tracked, conn);
        return;
    }
    if !admit(now) {
        stats::count_event(Stat::CtFloodUntracked);
        return;
    }
    track_unproven(flow, conn);
}

/// Inserts a flow that no table holds into the unproven table (the rate guard passed).
#[inline(always)]
pub fn track_unproven(flow: &FlowKey, conn: &Conn) {
    let event = match CT_UNPROVEN.insert(flow, conn, u64::from(BPF_NOEXIST)) {
        Ok(()) => Stat::CtCreated,
        // Another CPU tracked it meanwhile.
        Err(e) if e == -EEXIST && CT_UNPROVEN.insert(flow, conn, u64::from(BPF_ANY)).is_ok() => {
            Stat::CtReplaced
        }
        Err(_) => Stat::CtInsertFailed,
    };
    stats::count_event(event);
}
