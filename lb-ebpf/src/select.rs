//! Backend selection: flow hash → slot of the VIP's live Maglev table → backend.

use lb_common::{
    consts::{
        BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_FLAG_KEEP_TCP_ON_DOWN, IPPROTO_TCP,
        NO_BACKEND,
    },
    flow::{CT_FLAG_KEPT_ON_DOWN, Conn, FlowKey},
    hash::flow_hash,
    service::{Backend, VipInfo},
};

use lb_common::stats::Stat;

use crate::{
    maps::{BACKENDS, MAGLEV, hash_seed, maglev_size},
    stats,
};

/// The backend Maglev assigns to `flow`, if it is active.
#[inline(always)]
pub fn maglev(vip: &VipInfo, flow: &FlowKey) -> Option<(u32, &'static Backend)> {
    let size = maglev_size();
    if size == 0 {
        return None;
    }
    let slot = flow_hash(flow, &hash_seed()) % size;
    let table = vip.id * 2 + u32::from(vip.active_table & 1);
    let id = *MAGLEV.get(table * size + slot)?;
    if id == NO_BACKEND {
        return None;
    }
    // Referenced, not copied: a copy would live in stack slots across every helper call.
    let backend = BACKENDS.get(id)?;
    (backend.state == BACKEND_ACTIVE).then_some((id, backend))
}

/// A tracked flow's backend, if it is still the one the flow was pinned to and still
/// serves the flow's VIP (a deleted VIP's backends are retired, so this also says the VIP
/// is still there). Draining backends keep their flows; a backend marked down loses them,
/// but for TCP flows (`proto`) when its VIP says `--on-down keep-tcp` (the flow is marked
/// and counted the first time); an id retired and given to another backend (another
/// generation) never takes them.
#[inline(always)]
pub fn tracked(conn: &mut Conn, proto: u8) -> Option<&'static Backend> {
    let backend = BACKENDS.get(conn.backend_id)?;
    if backend.vip_id != conn.vip_id || backend.generation != conn.generation {
        return None;
    }
    match backend.state {
        BACKEND_ACTIVE | BACKEND_DRAINING => Some(backend),
        BACKEND_DOWN if keeps_on_down(backend, proto) => {
            if conn.flags & CT_FLAG_KEPT_ON_DOWN == 0 {
                conn.flags |= CT_FLAG_KEPT_ON_DOWN;
                stats::count_event(Stat::CtKeptOnDown);
            }
            Some(backend)
        }
        _ => None,
    }
}

/// Whether a down backend keeps a tracked flow of `proto` (its VIP's `--on-down`).
#[inline(always)]
const fn keeps_on_down(backend: &Backend, proto: u8) -> bool {
    proto == IPPROTO_TCP && backend.flags & BACKEND_FLAG_KEEP_TCP_ON_DOWN != 0
}
