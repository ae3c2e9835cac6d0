//! The second chance of dsr-gue VIPs: the Maglev tables a VIP had before its live one,
//! and from them, for each slot of a new table, the backends the earlier tables gave that
//! slot (the hops after the current backend in a packet's list, `lb_common::gue`).
//!
//! Tables are remembered by backend address, not id: ids are this node's own, while every
//! node with the same seed and the same changes builds the same tables, so every node
//! computes the same hop list for a flow. A change that leaves the table as it was is no
//! new table. [`EARLIER_TABLES`] tables are kept: a flow that began before them has no
//! second chance. Three cover a backend replaced in two steps (removed, then its
//! successor added) plus one more change, and bound the list at four hops (16 bytes of
//! IPv4 addresses); deeper lists cost bytes on every packet of moved slots.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

use lb_common::{
    consts::NO_BACKEND,
    gue::{EARLIER_TABLES, EarlierHops},
};

/// A table as it went live: its slots by backend id, and whose address each id was then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub slots: Vec<u32>,
    pub addrs: BTreeMap<u32, SocketAddr>,
}

impl Snapshot {
    fn addr(&self, slot: usize) -> Option<SocketAddr> {
        self.addrs.get(self.slots.get(slot)?).copied()
    }

    /// The same backend address in every slot.
    fn same_as(&self, other: &Snapshot) -> bool {
        self.slots.len() == other.slots.len()
            && (0..self.slots.len()).all(|slot| self.addr(slot) == other.addr(slot))
    }
}

/// A VIP's live table and the [`EARLIER_TABLES`] before it, newest first.
#[derive(Clone, Debug, Default)]
pub struct TableHistory {
    live: Option<Arc<Snapshot>>,
    earlier: VecDeque<Arc<Snapshot>>,
}

impl TableHistory {
    /// Records that `table` is live now: the table it replaces becomes the newest earlier
    /// one (unless they are the same), and the oldest beyond [`EARLIER_TABLES`] goes.
    pub fn went_live(&mut self, table: Snapshot) {
        let table = Arc::new(table);
        if let Some(old) = self.live.replace(Arc::clone(&table))
            && !old.same_as(&table)
        {
            self.earlier.push_front(old);
            self.earlier.truncate(EARLIER_TABLES);
        }
    }

    /// Forgets every table (the VIP left dsr-gue or went away).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// How many tables precede the live one.
    pub fn depth(&self) -> usize {
        self.earlier.len()
    }

    /// For `new` (about to go live), the slots whose earlier tables (the live one first)
    /// gave them other backends that still serve (`id_now`: a backend's id now, `None` when
    /// it no longer serves the VIP): those backends' current ids, newest first, each once.
    pub fn earlier_hops(
        &self,
        new: &[u32],
        id_now: impl Fn(&SocketAddr) -> Option<u32>,
    ) -> Vec<(u32, EarlierHops)> {
        let tables: Vec<&Snapshot> = self
            .live
            .iter()
            .chain(self.earlier.iter())
            .take(EARLIER_TABLES)
            .map(Arc::as_ref)
            .collect();
        if tables.is_empty() {
            return Vec::new();
        }
        let mut hops = Vec::new();
        for (slot, &current) in new.iter().enumerate() {
            let mut ids = [NO_BACKEND; EARLIER_TABLES];
            let mut count = 0;
            for table in &tables {
                let Some(id) = table.addr(slot).as_ref().and_then(&id_now) else {
                    continue;
                };
                if id != current && !ids[..count].contains(&id) {
                    ids[count] = id;
                    count += 1;
                }
            }
            if count > 0 {
                hops.push((slot as u32, EarlierHops { ids }));
            }
        }
        hops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, last], 80))
    }

    /// A table of `slots` where id i is backend address i.
    fn table(slots: &[u32]) -> Snapshot {
        Snapshot {
            slots: slots.to_vec(),
            addrs: slots.iter().map(|&id| (id, addr(id as u8))).collect(),
        }
    }

    fn same_id(a: &SocketAddr) -> Option<u32> {
        match a.ip() {
            std::net::IpAddr::V4(v4) => Some(u32::from(v4.octets()[3])),
            std::net::IpAddr::V6(_) => None,
        }
    }

    #[test]
    fn a_moved_slot_gets_its_earlier_backend() {
        let mut history = TableHistory::default();
        history.went_live(table(&[1, 2, 3, 1]));
        let hops = history.earlier_hops(&[1, 4, 3, 4], same_id);
        assert_eq!(
            hops,
            vec![
                (
                    1,
                    EarlierHops {
                        ids: [2, NO_BACKEND, NO_BACKEND]
                    }
                ),
                (
                    3,
                    EarlierHops {
                        ids: [1, NO_BACKEND, NO_BACKEND]
                    }
                ),
            ]
        );
    }

    #[test]
    fn newest_first_each_once_and_only_serving_backends() {
        let mut history = TableHistory::default();
        history.went_live(table(&[1]));
        history.went_live(table(&[2]));
        history.went_live(table(&[1]));
        history.went_live(table(&[3]));
        // Live 3, then 1, 2 and 1 again: 1 once.
        assert_eq!(
            history.earlier_hops(&[4], same_id),
            vec![(0, EarlierHops { ids: [3, 1, 2] })]
        );
        // Backend 1 no longer serves: left out.
        let hops = history.earlier_hops(&[4], |a| same_id(a).filter(|&id| id != 1));
        assert_eq!(
            hops,
            vec![(
                0,
                EarlierHops {
                    ids: [3, 2, NO_BACKEND]
                }
            )]
        );
    }

    #[test]
    fn only_three_earlier_tables_are_kept_and_repeats_are_no_change() {
        let mut history = TableHistory::default();
        for id in 1..=6 {
            history.went_live(table(&[id]));
            history.went_live(table(&[id]));
        }
        assert_eq!(history.depth(), EARLIER_TABLES);
        // Live 6, earlier 5, 4, 3: the next table's hops are 6, 5, 4 (three tables).
        assert_eq!(
            history.earlier_hops(&[7], same_id),
            vec![(0, EarlierHops { ids: [6, 5, 4] })]
        );
    }

    #[test]
    fn ids_are_read_by_address() {
        // The same backend under another id on this node now (its id was reused).
        let mut history = TableHistory::default();
        history.went_live(table(&[9]));
        let hops = history.earlier_hops(&[1], |a| (*a == addr(9)).then_some(5));
        assert_eq!(
            hops,
            vec![(
                0,
                EarlierHops {
                    ids: [5, NO_BACKEND, NO_BACKEND]
                }
            )]
        );
        assert!(
            TableHistory::default()
                .earlier_hops(&[1], same_id)
                .is_empty()
        );
    }
}
