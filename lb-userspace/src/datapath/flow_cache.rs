//! The datapath's per-CPU flow cache (FLOW_CACHE), seen from userspace only to clear it.
//! A flow the cache holds goes to its backend without touching CONNTRACK until the slot
//! expires (up to a second, `Options::flow_cache_ns`), so a flush that forgot the flow's
//! entry clears the cache too: the flow's next packet takes the slow path and is tracked
//! anew, as the flush promises.

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, PerCpuValues},
};
use lb_common::{
    consts::MAP_FLOW_CACHE,
    flow::{CachedFlow, FLOW_CACHE_SLOTS},
};

use crate::datapath::maps;

pub(crate) struct FlowCache {
    map: PerCpuArray<MapData, CachedFlow>,
}

impl FlowCache {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            map: PerCpuArray::try_from(maps::take(ebpf, MAP_FLOW_CACHE)?)?,
        })
    }

    /// Empties every slot on every CPU (an empty slot matches no flow). Slots of flows
    /// the flush kept are emptied too: each costs its flow one trip through the slow path.
    pub(crate) fn clear(&mut self) -> Result<(), MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| MapError::IoError(error))?;
        for slot in 0..FLOW_CACHE_SLOTS {
            let empty = PerCpuValues::try_from(vec![CachedFlow::default(); cpus])
                .map_err(MapError::IoError)?;
            self.map.set(slot, empty, 0)?;
        }
        Ok(())
    }
}
