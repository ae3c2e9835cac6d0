//! Each backend's health: rise/fall counting, the state with the time it began, and recent
//! changes. Pure; the probes run in [`crate::control`].

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::state::Service;

/// State changes remembered per backend.
const HISTORY: usize = 16;

/// A backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Its VIP has no check.
    Unchecked,
    Up,
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unchecked => "unchecked",
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// One state change, kept for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub to: Health,
    /// Seconds since the Unix epoch.
    pub(crate) at: u64,
    pub(crate) reason: String,
}

/// A backend's health changed: from what, and the change as its history keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HealthChange {
    pub(crate) from: Health,
    pub(crate) transition: Transition,
}

/// How many times a backend's checks took it down and back up (the metric
/// `lb_backend_health_changes_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeCounts {
    pub down: u64,
    pub up: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct BackendHealth {
    pub(crate) health: Health,
    pub(crate) since: SystemTime,
    successes: u32,
    failures: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) history: VecDeque<Transition>,
    pub(crate) changes: ChangeCounts,
}

pub(crate) type HealthKey = (Service, SocketAddr);

pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Every backend's health. New backends of a checked VIP start up (they take traffic at
/// once, as an unchecked one would) and need `fall` failures to go down.
#[derive(Clone, Debug, Default)]
pub(crate) struct HealthBook {
    entries: BTreeMap<HealthKey, BackendHealth>,
}

impl HealthBook {
    pub(crate) fn get(&self, key: &HealthKey) -> Option<&BackendHealth> {
        self.entries.get(key)
    }

    /// Makes the book cover exactly `checked` (backends of VIPs with a check) and
    /// `unchecked`; entries of backends that stay keep their state.
    pub(crate) fn reconcile(&mut self, checked: &[HealthKey], unchecked: &[HealthKey]) {
        let now = SystemTime::now();
        self.entries
            .retain(|key, _| checked.contains(key) || unchecked.contains(key));
        for (keys, initial) in [(checked, Health::Up), (unchecked, Health::Unchecked)] {
            for key in keys {
                let entry = self.entries.entry(*key).or_insert_with(|| BackendHealth {
                    health: initial,
                    since: now,
                    successes: 0,
                    failures: 0,
                    last_error: None,
                    history: VecDeque::new(),
                    changes: ChangeCounts::default(),
                });
                // A check added to (or removed from) a VIP changes what the state means.
                if (initial == Health::Unchecked) != (entry.health == Health::Unchecked) {
                    entry.health = initial;
                    entry.since = now;
                    entry.successes = 0;
                    entry.failures = 0;
                }
            }
        }
    }

    /// Counts one probe result; returns the change if the health changed.
    pub(crate) fn record(
        &mut self,
        key: &HealthKey,
        result: &Result<(), String>,
        rise: u32,
        fall: u32,
    ) -> Option<HealthChange> {
        let entry = self.entries.get_mut(key)?;
        if entry.health == Health::Unchecked {
            return None;
        }
        match result {
            Ok(()) => {
                entry.successes += 1;
                entry.failures = 0;
            }
            Err(error) => {
                entry.failures += 1;
                entry.successes = 0;
                entry.last_error = Some(error.clone());
            }
        }
        let next = match entry.health {
            Health::Up if entry.failures >= fall => Health::Down,
            Health::Down if entry.successes >= rise => Health::Up,
            _ => return None,
        };
        let now = SystemTime::now();
        let reason = match (next, result) {
            (Health::Down, Err(error)) => format!("{fall} failed checks in a row, last: {error}"),
            _ => format!("{rise} successful checks in a row"),
        };
        let from = entry.health;
        entry.health = next;
        entry.since = now;
        match next {
            Health::Down => entry.changes.down += 1,
            _ => entry.changes.up += 1,
        }
        let transition = Transition {
            to: next,
            at: unix_seconds(now),
            reason,
        };
        entry.history.push_back(transition.clone());
        if entry.history.len() > HISTORY {
            entry.history.pop_front();
        }
        Some(HealthChange { from, transition })
    }

    /// Backends that are down.
    pub(crate) fn down(&self) -> impl Iterator<Item = &HealthKey> {
        self.entries
            .iter()
            .filter(|(_, h)| h.health == Health::Down)
            .map(|(key, _)| key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::Proto;

    #[test]
    fn fall_and_rise_count_in_a_row() {
        let key = (
            Service {
                addr: "198.18.1.1:80".parse().expect("addr"),
                proto: Proto::Tcp,
            },
            "198.18.11.2:80".parse().expect("addr"),
        );
        let mut book = HealthBook::default();
        book.reconcile(&[key], &[]);
        let fail = Err("refused".to_owned());
        let record = |book: &mut HealthBook, result: &Result<(), String>| {
            book.record(&key, result, 2, 3)
                .map(|change| (change.from, change.transition.to))
        };
        assert_eq!(record(&mut book, &fail), None);
        assert_eq!(record(&mut book, &fail), None);
        assert_eq!(record(&mut book, &Ok(())), None, "the run is broken");
        assert_eq!(record(&mut book, &fail), None);
        assert_eq!(record(&mut book, &fail), None);
        assert_eq!(record(&mut book, &fail), Some((Health::Up, Health::Down)));
        assert_eq!(book.down().count(), 1);
        assert_eq!(record(&mut book, &fail), None, "once per change");
        assert_eq!(record(&mut book, &Ok(())), None);
        assert_eq!(record(&mut book, &Ok(())), Some((Health::Down, Health::Up)));
        assert_eq!(record(&mut book, &Ok(())), None, "once per change");
        let entry = book.get(&key).expect("entry");
        assert_eq!(entry.changes, ChangeCounts { down: 1, up: 1 });
        let history = &entry.history;
        assert_eq!(history.len(), 2);
        assert!(history[0].reason.contains("refused"), "{history:?}");
        book.reconcile(&[], &[key]);
        assert_eq!(book.get(&key).map(|h| h.health), Some(Health::Unchecked));
        assert_eq!(book.record(&key, &fail, 2, 3), None);
    }
}
