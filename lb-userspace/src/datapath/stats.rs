//! Reading the per-CPU counters and showing them to operators.

use std::{fmt::Write as _, os::fd::AsFd as _, time::Duration};

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

    /// One counter summed over CPUs.
    pub fn get(&self, stat: Stat) -> Result<Counter, MapError> {
        let per_cpu = self.map.get(&stat.index(), 0)?;
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

/// A table of the non-zero counters, with rates over `elapsed` when a previous snapshot is
/// given. Columns: name, packets, bytes, packets per second.
pub fn render(now: &Snapshot, previous: Option<(&Snapshot, Duration)>) -> String {
    let mut out = format!(
        "{:<20} {:>14} {:>16} {:>12}\n",
        "counter", "packets", "bytes", "pkt/s"
    );
    for &stat in Stat::ALL {
        let counter = now.get(stat);
        if counter.packets == 0 {
            continue;
        }
        let rate = match previous {
            Some((before, elapsed)) if !elapsed.is_zero() => {
                let delta = counter.packets.saturating_sub(before.get(stat).packets);
                format!("{:.1}", delta as f64 / elapsed.as_secs_f64())
            }
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:>14} {:>16} {:>12}",
            stat.name(),
            counter.packets,
            counter.bytes,
            rate
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(values: &[(Stat, u64)]) -> Snapshot {
        let mut counters = vec![Counter::default(); Stat::ALL.len()];
        for &(stat, packets) in values {
            counters[stat.index() as usize] = Counter {
                packets,
                bytes: packets * 100,
            };
        }
        Snapshot { counters }
    }

    #[test]
    fn render_lists_nonzero_counters_with_rates() {
        let before = snapshot(&[(Stat::Tcp, 10)]);
        let now = snapshot(&[(Stat::Tcp, 30), (Stat::Pass, 30)]);
        let table = render(&now, Some((&before, Duration::from_secs(2))));
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["tcp", "30", "3000", "10.0"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["xdp_pass", "30", "3000", "15.0"]
        );
        assert!(!table.contains("udp"));
    }

    #[test]
    fn render_without_history_has_no_rate() {
        let table = render(&snapshot(&[(Stat::Udp, 1)]), None);
        assert!(
            table.lines().nth(1).is_some_and(|l| l.ends_with('-')),
            "{table}"
        );
    }
}
