//! Connection tracking: forward entries (client → VIP) pin a flow to its backend; reverse
//! entries (backend → client) let replies get the VIP back as their source.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
};
use lb_common::{
    flow::{Conn, FlowKey, ReverseNat},
    stats::Stat,
};

use crate::{
    maps::{CONNTRACK, REVERSE_NAT},
    stats,
};

const EEXIST: i32 = 17;

/// `last_seen_ns` is refreshed at most this often, to keep writes off the fast path.
const REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn touch(last_seen_ns: &mut u64) {
    let now = now();
    if now.wrapping_sub(*last_seen_ns) > REFRESH_NS {
        *last_seen_ns = now;
    }
}

/// The backend a tracked flow is pinned to.
#[inline(always)]
pub fn lookup(flow: &FlowKey) -> Option<u32> {
    let conn = CONNTRACK.get_ptr_mut(flow)?;
    // SAFETY: the entry stays valid for this program run (RCU); races only lose a refresh.
    let conn = unsafe { &mut *conn };
    touch(&mut conn.last_seen_ns);
    Some(conn.backend_id)
}

/// The reverse NAT of a tracked reply.
#[inline(always)]
pub fn lookup_reply(reply: &FlowKey) -> Option<ReverseNat> {
    let entry = REVERSE_NAT.get_ptr_mut(reply)?;
    // SAFETY: as in `lookup`.
    let entry = unsafe { &mut *entry };
    touch(&mut entry.last_seen_ns);
    Some(*entry)
}

/// Tracks a new flow in both directions. An LRU map evicts the stalest flows when full; if
/// an insert still fails the flow is forwarded anyway, since Maglev picks the same backend.
/// A tracked 5-tuple (a SYN reusing a client port, or a flow whose backend was retired) is
/// overwritten in place: an LRU insert takes a free node first and may evict another flow
/// to get it, even when the key exists. Creations are counted apart from replacements so
/// that userspace can derive evictions as created minus present.
#[inline(always)]
pub fn insert(flow: &FlowKey, reply: &FlowKey, vip_id: u32, backend_id: u32) {
    let now = now();
    let conn = Conn {
        backend_id,
        vip_id,
        last_seen_ns: now,
    };
    let event = if let Some(tracked) = CONNTRACK.get_ptr_mut(flow) {
        // SAFETY: the entry stays valid for this program run (RCU); a racing reader sees
        // the old or the new backend, both usable.
        unsafe { *tracked = conn };
        Stat::CtReplaced
    } else {
        match CONNTRACK.insert(flow, &conn, u64::from(BPF_NOEXIST)) {
            Ok(()) => Stat::CtCreated,
            // Another CPU tracked it meanwhile.
            Err(e) if e == -EEXIST && CONNTRACK.insert(flow, &conn, u64::from(BPF_ANY)).is_ok() => {
                Stat::CtReplaced
            }
            Err(_) => Stat::CtInsertFailed,
        }
    };
    stats::count_event(event);
    let reverse = ReverseNat {
        vip_addr: flow.dst,
        vip_port: flow.dst_port,
        _pad: [0; 2],
        vip_id,
        backend_id,
        _pad2: [0; 4],
        last_seen_ns: now,
    };
    let _ = REVERSE_NAT.insert(reply, &reverse, u64::from(BPF_ANY));
}
