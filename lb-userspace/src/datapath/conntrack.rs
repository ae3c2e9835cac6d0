//! Userspace's side of the CONNTRACK map: walking and deleting it in batches, the periodic
//! sweep that deletes expired entries (the datapath only ignores them), and the census a
//! sweep leaves behind (entries, flows per backend, deletions, evictions).

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd as _, OwnedFd},
    time::{Duration, Instant},
};

use lb_common::{
    flow::{Conn, FlowKey, Timeouts},
    stats::Stat,
};
use thiserror::Error;

use crate::{
    datapath::batch::{self, Deleted},
    datapath::proven_filter::ProvenFilter,
    datapath::stats::StatsMap,
};

#[derive(Debug, Error)]
pub enum ConntrackError {
    #[error(
        "walking the conntrack map failed (BPF_MAP_LOOKUP_BATCH on LRU hash maps needs Linux 5.6 or later)"
    )]
    Walk(#[source] io::Error),
    #[error("deleting conntrack entries failed")]
    Delete(#[source] io::Error),
    #[error("reading the ct_created counter failed")]
    Counter(#[source] aya::maps::MapError),
}

/// The datapath's clock: `bpf_ktime_get_coarse_ns` is CLOCK_MONOTONIC_COARSE.
pub(crate) fn monotonic_coarse_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// What one walk of the table did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Entries the walk saw.
    pub seen: u64,
    pub deleted: u64,
    /// Entries chosen for deletion that were gone already (evicted meanwhile).
    pub(crate) missing: u64,
    pub syscalls: u64,
}

/// One LRU table of flows: a descriptor of its own and its size.
struct Table {
    fd: OwnedFd,
    capacity: u32,
}

impl Table {
    /// A hash map has `capacity` rounded up to a power of two buckets and a lookup call
    /// advances at least one bucket, so this many calls always finish a walk.
    fn max_lookups(&self) -> u64 {
        u64::from(self.capacity).next_power_of_two() + 1
    }
}

/// Descriptors of its own on CONNTRACK (proven flows) and CT_UNPROVEN: walks and deletes
/// need no other lock.
pub struct ConntrackTable {
    proven: Table,
    unproven: Table,
}

impl ConntrackTable {
    pub(crate) fn new(
        proven: OwnedFd,
        proven_capacity: u32,
        unproven: OwnedFd,
        unproven_capacity: u32,
    ) -> Self {
        Self {
            proven: Table {
                fd: proven,
                capacity: proven_capacity,
            },
            unproven: Table {
                fd: unproven,
                capacity: unproven_capacity,
            },
        }
    }

    /// Walks the unproven table, then the proven one (`doomed` is told which); what each
    /// walk did (proven, unproven).
    pub(crate) fn walk_both(
        &self,
        mut doomed: impl FnMut(bool, &FlowKey, &Conn) -> bool,
    ) -> Result<(Pass, Pass), ConntrackError> {
        // Unproven first: flows move only from there to the proven table, so a flow
        // promoted during the walk is seen once or twice, never missed.
        let unproven = walk_table(&self.unproven, |key, conn| doomed(false, key, conn))?;
        let proven = walk_table(&self.proven, |key, conn| doomed(true, key, conn))?;
        Ok((proven, unproven))
    }
}

impl Pass {
    fn plus(&self, other: &Pass) -> Pass {
        Pass {
            seen: self.seen + other.seen,
            deleted: self.deleted + other.deleted,
            missing: self.missing + other.missing,
            syscalls: self.syscalls + other.syscalls,
        }
    }
}

/// Walks every entry of one table; those `doomed` picks are deleted chunk by chunk as the
/// walk goes (4,096 entries per lookup, one delete call per chunk), so memory stays
/// bounded whatever the table's size.
fn walk_table(
    table: &Table,
    mut doomed: impl FnMut(&FlowKey, &Conn) -> bool,
) -> Result<Pass, ConntrackError> {
    let mut pass = Pass::default();
    let mut failed = None;
    let mut victims = Vec::new();
    let fd = table.fd.as_fd();
    let lookups = batch::walk_hash::<FlowKey, Conn>(fd, table.max_lookups(), |keys, conns| {
        pass.seen += keys.len() as u64;
        victims.clear();
        victims.extend(
            keys.iter()
                .zip(conns)
                .filter(|(key, conn)| doomed(key, conn))
                .map(|(key, _)| *key),
        );
        if victims.is_empty() {
            return true;
        }
        match batch::delete(fd, &victims) {
            Ok(Deleted {
                deleted,
                missing,
                syscalls,
            }) => {
                pass.deleted += deleted;
                pass.missing += missing;
                pass.syscalls += syscalls;
                true
            }
            Err(error) => {
                failed = Some(error);
                false
            }
        }
    })
    .map_err(ConntrackError::Walk)?;
    pass.syscalls += lookups;
    match failed {
        Some(error) => Err(ConntrackError::Delete(error)),
        None => Ok(pass),
    }
}

/// Tracked flows of one backend, as ipvsadm counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Conns {
    /// Opening, established and UDP flows (ipvsadm's ActiveConn).
    pub(crate) active: u64,
    /// Closing and closed TCP flows (InActConn).
    pub(crate) closing: u64,
}

/// What one sweep found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Entries left in both tables after the sweep.
    pub(crate) entries: u64,
    /// Of which proven (in CONNTRACK).
    pub(crate) proven_entries: u64,
    /// What the walk of the proven table alone did.
    pub proven_pass: Pass,
    /// The `ct_promoted` counter read just before the walk.
    pub(crate) promoted_before: u64,
    /// Flows by the (backend id, generation) they are pinned to.
    pub(crate) by_backend: HashMap<(u32, u32), Conns>,
    /// Entries walked, deleted and found gone by this sweep.
    pub pass: Pass,
    /// The `ct_created` counter read just before the walk.
    pub(crate) created_before: u64,
    pub took: Duration,
}

impl Census {
    /// Counts one entry that stays.
    pub(crate) fn count(&mut self, conn: &Conn) {
        let conns = self
            .by_backend
            .entry((conn.backend_id, conn.generation))
            .or_default();
        if conn.is_active() {
            conns.active += 1;
        } else {
            conns.closing += 1;
        }
    }
}

/// The periodic sweep, with handles of its own on CONNTRACK and STATS so it runs without
/// the controller's lock; it rebuilds the proven-flow filter as it walks.
pub struct Sweeper {
    table: ConntrackTable,
    stats: StatsMap,
    filter: ProvenFilter,
    timeouts: Timeouts,
}

impl Sweeper {
    pub fn new(
        table: ConntrackTable,
        stats: StatsMap,
        filter: ProvenFilter,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            table,
            stats,
            filter,
            timeouts,
        }
    }

    /// Deletes every expired entry and counts the others; the proven ones left are the
    /// proven-flow filter's new half, which answers once the walk is whole.
    pub fn sweep(&self) -> Result<Census, ConntrackError> {
        let started = Instant::now();
        // Creations and promotions first: flows created or promoted during the walk are
        // then never taken as evicted.
        let counter = |stat| {
            self.stats
                .get(stat)
                .map(|counter| counter.packets)
                .map_err(ConntrackError::Counter)
        };
        let created_before = counter(Stat::CtCreated)?;
        let promoted_before = counter(Stat::CtPromoted)?;
        let now = monotonic_coarse_ns();
        let mut census = Census {
            promoted_before,
            created_before,
            ..Census::default()
        };
        let rebuild = self.filter.rebuild();
        let (proven, unproven) = self.table.walk_both(|proven, key, conn| {
            let expired = if proven {
                conn.expired(now, &self.timeouts)
            } else {
                conn.expired_unproven(now, &self.timeouts)
            };
            if !expired {
                census.count(conn);
                if proven {
                    rebuild.mark(key);
                }
            }
            expired
        })?;
        rebuild.finish();
        let left = |pass: &Pass| pass.seen.saturating_sub(pass.deleted + pass.missing);
        census.proven_entries = left(&proven);
        census.entries = left(&proven) + left(&unproven);
        census.proven_pass = proven;
        census.pass = proven.plus(&unproven);
        census.took = started.elapsed();
        Ok(census)
    }
}

/// The latest census and the running totals the controller reports.
#[derive(Clone, Debug)]
pub(crate) struct ConntrackBook {
    census: Census,
    /// Entries deleted by userspace (sweeps and flushes) since this daemon started.
    deleted: u64,
    /// Of which proven ones (expired or flushed).
    deleted_proven: u64,
    /// Never lower than an earlier figure: a counter that dropped would read as a reset.
    evicted: u64,
    /// Proven flows the kernel evicted to make room for other proven flows (a flood
    /// cannot: only promotions insert into the proven table).
    evicted_proven: u64,
    /// Creations the first census could not account for: entries an earlier daemon
    /// deleted (its total died with it), or evicted before this daemon started. Negative
    /// when the table holds more than the counter says was created: flows of a release
    /// whose counters were reset at the upgrade (`PinDir::renew_short_stats`).
    baseline: i64,
    /// The same for promotions and the proven table (which a release without admission
    /// filled without promotions).
    baseline_proven: i64,
    /// Unproven flows evicted (never lower than before: it is a counter).
    evicted_unproven: u64,
    /// Sweeps recorded since this daemon started (the first, at start, included).
    sweeps: u64,
}

impl ConntrackBook {
    /// Starts from the first sweep.
    pub(crate) fn new(first: Census) -> Self {
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let baseline = signed(first.created_before) - signed(first.pass.seen);
        let baseline_proven = signed(first.promoted_before) - signed(first.proven_pass.seen);
        let mut book = Self {
            census: Census::default(),
            deleted: 0,
            deleted_proven: 0,
            evicted: 0,
            evicted_proven: 0,
            baseline,
            baseline_proven,
            evicted_unproven: 0,
            sweeps: 0,
        };
        book.record_sweep(first);
        book
    }

    pub(crate) fn record_sweep(&mut self, census: Census) {
        self.sweeps = self.sweeps.saturating_add(1);
        self.deleted = self.deleted.saturating_add(census.pass.deleted);
        self.deleted_proven = self
            .deleted_proven
            .saturating_add(census.proven_pass.deleted);
        let evicted = evictions(
            census.created_before,
            census.entries,
            self.deleted,
            self.baseline,
        );
        self.evicted = self.evicted.max(evicted);
        // A flow enters the proven table only by promotion.
        let evicted_proven = evictions(
            census.promoted_before,
            census.proven_entries,
            self.deleted_proven,
            self.baseline_proven,
        );
        self.evicted_proven = self.evicted_proven.max(evicted_proven);
        self.evicted_unproven = self
            .evicted_unproven
            .max(evicted.saturating_sub(evicted_proven));
        self.census = census;
    }

    /// Records a flush; `proven`: how many of the deleted entries were proven.
    pub(crate) fn record_flush(&mut self, deleted: u64, proven: u64) {
        self.deleted = self.deleted.saturating_add(deleted);
        self.deleted_proven = self.deleted_proven.saturating_add(proven);
    }

    pub(crate) fn evicted_proven(&self) -> u64 {
        self.evicted_proven
    }

    pub(crate) fn evicted_unproven(&self) -> u64 {
        self.evicted_unproven
    }

    pub(crate) fn census(&self) -> &Census {
        &self.census
    }

    pub(crate) fn sweeps(&self) -> u64 {
        self.sweeps
    }

    pub(crate) fn deleted(&self) -> u64 {
        self.deleted
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The flows pinned to this backend id under this generation.
    pub(crate) fn conns(&self, backend_id: u32, generation: u32) -> Conns {
        self.census
            .by_backend
            .get(&(backend_id, generation))
            .copied()
            .unwrap_or_default()
    }
}

/// The kernel's LRU evicts silently: whatever was created and is neither in the table nor
/// deleted by userspace was evicted.
pub fn evictions(created: u64, present: u64, deleted: u64, baseline: i64) -> u64 {
    let evicted =
        i128::from(created) - i128::from(present) - i128::from(deleted) - i128::from(baseline);
    u64::try_from(evicted.max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use lb_common::flow::{CT_CLOSED, CT_CLOSING, CT_DATAGRAM, CT_ESTABLISHED, CT_OPENING};

    use super::*;

    fn conn(backend_id: u32, generation: u32, state: u8) -> Conn {
        Conn {
            backend_id,
            generation,
            state,
            ..Conn::default()
        }
    }

    fn census(created_before: u64, seen: u64, deleted: u64) -> Census {
        Census {
            entries: seen - deleted,
            created_before,
            pass: Pass {
                seen,
                deleted,
                ..Pass::default()
            },
            ..Census::default()
        }
    }

    #[test]
    fn flows_are_counted_by_backend_and_generation() {
        let mut c = Census::default();
        for state in [
            CT_OPENING,
            CT_ESTABLISHED,
            CT_DATAGRAM,
            CT_CLOSING,
            CT_CLOSED,
        ] {
            c.count(&conn(7, 1, state));
        }
        c.count(&conn(7, 2, CT_ESTABLISHED));
        let book = ConntrackBook::new(c);
        assert_eq!(
            book.conns(7, 1),
            Conns {
                active: 3,
                closing: 2
            }
        );
        assert_eq!(
            book.conns(7, 2),
            Conns {
                active: 1,
                closing: 0
            }
        );
        assert_eq!(book.conns(8, 1), Conns::default());
    }

    #[test]
    fn evictions_are_what_neither_the_table_nor_userspace_accounts_for() {
        // A fresh table: 100 created, 60 there, 30 swept: 10 evicted.
        let mut book = ConntrackBook::new(census(0, 0, 0));
        book.record_sweep(census(100, 90, 30));
        assert_eq!((book.deleted(), book.evicted()), (30, 10));
        // A flush of 20 then a sweep that finds 40 left of 100: nothing new evicted.
        book.record_flush(20, 0);
        book.record_sweep(census(100, 40, 0));
        assert_eq!((book.deleted(), book.evicted()), (50, 10));
        // The figure never goes down, even when creations are read low.
        book.record_sweep(census(90, 40, 0));
        assert_eq!(book.evicted(), 10);
    }

    #[test]
    fn a_restarted_daemon_does_not_count_its_predecessors_deletions_as_evictions() {
        // 1,000 created before this daemon, 200 left: the 800 are the baseline.
        let mut book = ConntrackBook::new(census(1000, 200, 50));
        assert_eq!(book.evicted(), 0);
        book.record_sweep(census(1100, 250, 0));
        assert_eq!(book.evicted(), 0);
        book.record_sweep(census(1300, 250, 0));
        assert_eq!(book.evicted(), 200);
    }

    #[test]
    fn proven_evictions_count_promotions_not_creations() {
        let proven = |created, promoted, seen, proven_seen, deleted, proven_deleted| Census {
            entries: seen - deleted,
            proven_entries: proven_seen - proven_deleted,
            created_before: created,
            promoted_before: promoted,
            pass: Pass {
                seen,
                deleted,
                ..Pass::default()
            },
            proven_pass: Pass {
                seen: proven_seen,
                deleted: proven_deleted,
                ..Pass::default()
            },
            ..Census::default()
        };
        let mut book = ConntrackBook::new(proven(0, 0, 0, 0, 0, 0));
        // A flood: 10,000 created, 100 promoted; 1,100 left of which the 100 proven.
        book.record_sweep(proven(10_000, 100, 1_100, 100, 0, 0));
        assert_eq!((book.evicted(), book.evicted_proven()), (8_900, 0));
        assert_eq!(book.evicted_unproven(), 8_900);
        // Then 10 proven ones gone without a deletion: evicted.
        book.record_sweep(proven(10_000, 100, 1_090, 90, 0, 0));
        assert_eq!(book.evicted_proven(), 10);
    }

    #[test]
    fn an_upgrade_that_resets_the_counters_keeps_counting_evictions() {
        // The previous release left 500 flows, all in the proven table, and the counters
        // start again from zero: the baselines are negative, not zero.
        let first = Census {
            entries: 500,
            proven_entries: 500,
            pass: Pass {
                seen: 500,
                ..Pass::default()
            },
            proven_pass: Pass {
                seen: 500,
                ..Pass::default()
            },
            ..Census::default()
        };
        let mut book = ConntrackBook::new(first);
        // 300 of them expire and are swept; 50 new flows are created and stay.
        book.record_sweep(census(50, 550, 300));
        assert_eq!(book.evicted(), 0);
        // 20 more vanish without a deletion: evicted, not hidden by the 300 swept.
        book.record_sweep(census(50, 230, 0));
        assert_eq!(book.evicted(), 20);
    }

    #[test]
    fn the_clock_is_monotonic() {
        let a = monotonic_coarse_ns();
        let b = monotonic_coarse_ns();
        assert!(a > 0 && b >= a);
    }
}
