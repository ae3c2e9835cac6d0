//! Reading the per-CPU counters, summed over CPUs.

use std::os::fd::AsFd as _;

use aya::{
    Ebpf,
    maps::{IterableMap as _, MapData, MapError, PerCpuArray},
};
use lb_common::{
    consts::MAP_STATS,
    stats::{Counter, Stat},
};

/// Counter totals over all CPUs, indexed like [`Stat::ALL`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: Vec<Counter>,
}

impl Snapshot {
    pub fn get(&self, stat: Stat) -> Counter {
        self.counters
            .get(stat.index() as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// Typed access to the global stats map.
pub struct StatsMap {
    map: PerCpuArray<MapData, Counter>,
}

impl StatsMap {
    /// Takes the stats map out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        let map = ebpf
            .take_map(MAP_STATS)
            .ok_or_else(|| MapError::InvalidName {
                name: MAP_STATS.to_owned(),
            })?;
        Ok(Self {
            map: PerCpuArray::try_from(map)?,
        })
    }

    /// Another handle on the same map (a dup'd descriptor), for a reader that must not
    /// wait for whoever holds this one.
    pub fn try_clone(&self) -> Result<Self, MapError> {
        let fd = self
            .map
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|io_error| {
                MapError::SyscallError(aya::sys::SyscallError {
                    call: "dup",
                    io_error,
                })
            })?;
        let data = MapData::from_fd(fd)?;
        Ok(Self {
            map: PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))?,
        })
    }

    /// One counter summed over CPUs. A counter past the map's end reads as zero: a
    /// pinned STATS map of an earlier release is adopted as it is, with room only for the
    /// counters that release had (the datapath's newer ones find no slot and count
    /// nothing until `lb down` re-creates the map).
    pub(crate) fn get(&self, stat: Stat) -> Result<Counter, MapError> {
        let per_cpu = match self.map.get(&stat.index(), 0) {
            // aya checks the index against the object's size, the kernel against the
            // pinned map's: past the latter the lookup finds no key.
            Err(MapError::OutOfBounds { .. } | MapError::KeyNotFound) => {
                return Ok(Counter::default());
            }
            other => other?,
        };
        let mut total = Counter::default();
        per_cpu.iter().for_each(|slot| total.merge(slot));
        Ok(total)
    }

    pub fn read(&self) -> Result<Snapshot, MapError> {
        let counters = Stat::ALL
            .iter()
            .map(|&stat| self.get(stat))
            .collect::<Result<_, MapError>>()?;
        Ok(Snapshot { counters })
    }
}
