//! Backend selection: flow hash → slot of the VIP's live Maglev table → backend.

use lb_common::{
    consts::{BACKEND_ACTIVE, BACKEND_DRAINING, NO_BACKEND},
    flow::{Conn, FlowKey},
    hash::flow_hash,
    service::{Backend, VipInfo},
};

use crate::maps::{BACKENDS, MAGLEV, hash_seed, maglev_size};

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
/// and an id retired and given to another backend (another generation) never takes them.
#[inline(always)]
pub fn tracked(conn: &Conn) -> Option<&'static Backend> {
    let backend = BACKENDS.get(conn.backend_id)?;
    let serving = backend.state == BACKEND_ACTIVE || backend.state == BACKEND_DRAINING;
    (serving && backend.vip_id == conn.vip_id && backend.generation == conn.generation)
        .then_some(backend)
}
