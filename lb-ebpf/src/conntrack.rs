//! Connection tracking: one entry per flow, keyed by its client → VIP 5-tuple, pins the
//! flow to a backend and follows its lifecycle (opening, established, closing, closed;
//! one state for datagrams). An entry idle past its state's timeout counts as absent here
//! and is deleted by userspace's sweep.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    flow::{
        CT_CLOSED, CT_CLOSING, CT_ESTABLISHED, CT_FLAG_FIN_BACKEND, CT_FLAG_FIN_CLIENT, CT_OPENING,
        Conn, FlowKey,
    },
    stats::Stat,
};

use crate::{
    maps::{CONNTRACK, timeout_ns},
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats,
};

const EEXIST: i32 = 17;

/// `last_seen_ns` is refreshed at most this often, to keep writes off the fast path.
const REFRESH_NS: u64 = 1_000_000_000;

/// Which side of the flow a packet came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    FromClient,
    FromBackend,
}

/// What the table holds for a flow.
pub enum Lookup {
    /// A live entry (valid for this program run, RCU).
    Live(*mut Conn),
    /// An entry idle past its timeout: to be overwritten.
    Expired(*mut Conn),
    Missing,
}

#[inline(always)]
pub fn lookup(flow: &FlowKey, now: u64) -> Lookup {
    let Some(conn) = CONNTRACK.get_ptr_mut(flow) else {
        return Lookup::Missing;
    };
    // SAFETY: the entry stays valid for this program run (RCU); a racing writer only
    // changes which of two valid values is read.
    let (last_seen, state) = unsafe { ((*conn).last_seen_ns, (*conn).state) };
    if now.saturating_sub(last_seen) > timeout_ns(state) {
        Lookup::Expired(conn)
    } else {
        Lookup::Live(conn)
    }
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
/// for a TCP segment of a connection already under way (then moved by its flags), and
/// `datagram` for everything else.
#[inline(always)]
pub fn first_state(flags: u8, tcp: bool, datagram: u8) -> (u8, u8) {
    if !tcp {
        return (datagram, 0);
    }
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return (CT_OPENING, 0);
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

/// Tracks a new flow. A tracked 5-tuple (a SYN reusing a client port) is overwritten in
/// place: an LRU insert takes a free node first and may evict another flow to get it,
/// even when the key exists. If the insert fails the flow is forwarded anyway, since
/// Maglev picks the same backend for its next packet. Creations are counted apart from
/// replacements so that userspace can derive evictions.
#[inline(always)]
pub fn insert(flow: &FlowKey, conn: &Conn) {
    if let Some(tracked) = CONNTRACK.get_ptr_mut(flow) {
        replace(tracked, conn);
        return;
    }
    let event = match CONNTRACK.insert(flow, conn, u64::from(BPF_NOEXIST)) {
        Ok(()) => Stat::CtCreated,
        // Another CPU tracked it meanwhile.
        Err(e) if e == -EEXIST && CONNTRACK.insert(flow, conn, u64::from(BPF_ANY)).is_ok() => {
            Stat::CtReplaced
        }
        Err(_) => Stat::CtInsertFailed,
    };
    stats::count_event(event);
}
