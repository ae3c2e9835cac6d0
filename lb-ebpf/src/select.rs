//! Backend selection: flow hash → slot of the VIP's live Maglev table → backend.

use lb_common::{
    consts::{BACKEND_ACTIVE, BACKEND_DRAINING, NO_BACKEND},
    flow::FlowKey,
    hash::flow_hash,
    service::{Backend, VipInfo},
};

use crate::maps::{BACKENDS, MAGLEV, maglev_size};

/// The backend Maglev assigns to `flow`, if it is active.
#[inline(always)]
pub fn maglev(vip: &VipInfo, flow: &FlowKey) -> Option<(u32, Backend)> {
    let size = maglev_size();
    if size == 0 {
        return None;
    }
    let slot = flow_hash(flow) % size;
    let table = vip.id * 2 + u32::from(vip.active_table & 1);
    let id = *MAGLEV.get(table * size + slot)?;
    if id == NO_BACKEND {
        return None;
    }
    let backend = *BACKENDS.get(id)?;
    (backend.state == BACKEND_ACTIVE).then_some((id, backend))
}

/// A tracked flow's backend, if it still exists and still serves this VIP (draining
/// backends keep their flows; an id freed and given to another VIP does not).
#[inline(always)]
pub fn tracked(id: u32, vip: &VipInfo) -> Option<Backend> {
    let backend = *BACKENDS.get(id)?;
    let serving = backend.state == BACKEND_ACTIVE || backend.state == BACKEND_DRAINING;
    (serving && backend.vip_id == vip.id).then_some(backend)
}
