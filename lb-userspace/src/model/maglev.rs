//! The weighted Maglev lookup table (Eisenbud et al., NSDI 2016), built in userspace.
//!
//! Each backend walks its own permutation of the M slots (offset and skip from two hashes of
//! its address); backends take turns claiming their next free slot, a backend of weight w
//! taking w/max_weight turns per round. Every slot ends up owned, shares follow the weights,
//! and removing a backend moves little more than that backend's own slots.

use lb_common::{
    consts::NO_BACKEND,
    hash::{HashSeed, bytes_hash},
};

const OFFSET_SEED: u32 = 0x6d61_676c;
const SKIP_SEED: u32 = 0x6576_3031;

/// A backend as Maglev sees it: a stable identity (its address bytes), its id in the
/// BACKENDS map, and a weight (0 takes no slots).
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: u32,
    pub weight: u32,
    pub identity: Vec<u8>,
}

/// The bytes a backend's permutation is hashed from: its identity, keyed by the cluster's
/// seed (the default seed adds nothing, so tables stay those of earlier releases).
fn keyed(identity: &[u8], seed: HashSeed) -> Vec<u8> {
    let mut bytes = identity.to_vec();
    if seed != [0; 2] {
        bytes.extend(seed.iter().flat_map(|word| word.to_le_bytes()));
    }
    bytes
}

/// Builds a table of `size` backend ids (`size` must be prime). With no weighted backend
/// every slot is [`NO_BACKEND`]. Nodes with the same backends, weights and `seed` build
/// the same table, whatever ids they gave the backends.
pub fn build(entries: &[Entry], size: u32, seed: HashSeed) -> Vec<u32> {
    let m = u64::from(size);
    let mut table = vec![NO_BACKEND; size as usize];
    let mut live: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    // The order of turns must not depend on insertion order.
    live.sort_by(|a, b| a.identity.cmp(&b.identity));
    if live.is_empty() || size < 2 {
        return table;
    }
    let max_weight = u64::from(live.iter().map(|e| e.weight).max().unwrap_or(1));
    let walks: Vec<(u64, u64)> = live
        .iter()
        .map(|e| {
            let key = keyed(&e.identity, seed);
            let offset = u64::from(bytes_hash(OFFSET_SEED, &key)) % m;
            let skip = u64::from(bytes_hash(SKIP_SEED, &key)) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut filled = 0u64;
    while filled < m {
        for (i, entry) in live.iter().enumerate() {
            credit[i] += u64::from(entry.weight);
            while credit[i] >= max_weight && filled < m {
                credit[i] -= max_weight;
                let (offset, skip) = walks[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == NO_BACKEND {
                        table[slot] = entry.id;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
    table
}

/// A fingerprint of a live table that does not depend on the node: which backend (by
/// identity, not by this node's ids) owns each slot. Equal on two nodes exactly when they
/// send every flow the same way. FNV-1a, 64 bits: enough to tell tables apart, no secret.
pub fn fingerprint(table: &[u32], entries: &[Entry]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(PRIME);
        }
    };
    let mut owners: Vec<&Entry> = entries.iter().collect();
    owners.sort_by(|a, b| a.identity.cmp(&b.identity));
    for owner in &owners {
        eat(&(owner.identity.len() as u32).to_le_bytes());
        eat(&owner.identity);
    }
    let rank: std::collections::HashMap<u32, u32> = owners
        .iter()
        .enumerate()
        .map(|(rank, e)| (e.id, rank as u32))
        .collect();
    for id in table {
        let owner = rank.get(id).copied().unwrap_or(NO_BACKEND);
        eat(&owner.to_le_bytes());
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, weight: u32) -> Entry {
        Entry {
            id,
            weight,
            identity: format!("198.18.2.{id}:80").into_bytes(),
        }
    }

    fn shares(table: &[u32], ids: &[u32]) -> Vec<f64> {
        ids.iter()
            .map(|id| table.iter().filter(|&&b| b == *id).count() as f64 / table.len() as f64)
            .collect()
    }

    #[test]
    fn every_slot_is_filled() {
        let table = build(
            &(0..10).map(|i| entry(i, 100)).collect::<Vec<_>>(),
            65_537,
            [0; 2],
        );
        assert!(table.iter().all(|&b| b < 10));
    }

    #[test]
    fn equal_weights_get_equal_shares_within_a_few_percent() {
        let entries: Vec<_> = (0..7).map(|i| entry(i, 100)).collect();
        let table = build(&entries, 65_537, [0; 2]);
        for share in shares(&table, &(0..7).collect::<Vec<_>>()) {
            assert!((share - 1.0 / 7.0).abs() < 0.01, "{share}");
        }
    }

    #[test]
    fn shares_follow_weights() {
        let entries = [entry(0, 1), entry(1, 2), entry(2, 1)];
        let table = build(&entries, 65_537, [0; 2]);
        let s = shares(&table, &[0, 1, 2]);
        for (share, want) in s.iter().zip([0.25, 0.5, 0.25]) {
            assert!((share - want).abs() < 0.02, "{s:?}");
        }
    }

    #[test]
    fn zero_weight_and_empty_sets_take_no_slots() {
        assert!(build(&[], 13, [0; 2]).iter().all(|&b| b == NO_BACKEND));
        let table = build(&[entry(0, 0), entry(1, 5)], 13, [0; 2]);
        assert!(table.iter().all(|&b| b == 1));
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        let all: Vec<_> = (0..5).map(|i| entry(i, 100)).collect();
        let before = build(&all, 65_537, [0; 2]);
        let after = build(&all[..4], 65_537, [0; 2]);
        let kept = before
            .iter()
            .zip(&after)
            .filter(|(b, _)| **b != 4)
            .filter(|(b, a)| b == a)
            .count();
        let others = before.iter().filter(|&&b| b != 4).count();
        assert!(kept as f64 / others as f64 > 0.95, "{kept}/{others}");
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let a = [entry(0, 100), entry(1, 100), entry(2, 50)];
        let b = [entry(2, 50), entry(0, 100), entry(1, 100)];
        assert_eq!(build(&a, 251, [0; 2]), build(&b, 251, [0; 2]));
    }

    /// Two nodes that gave the same backends other ids still agree on the fingerprint;
    /// another weight, another backend or another seed changes it.
    #[test]
    fn fingerprints_follow_the_table_not_the_ids() {
        let seed = [0x5eed, 0x1];
        let node_a = [entry(0, 100), entry(1, 100), entry(2, 50)];
        let renumbered: Vec<Entry> = node_a
            .iter()
            .map(|e| Entry {
                id: e.id + 40,
                ..e.clone()
            })
            .collect();
        let print = |entries: &[Entry], seed| fingerprint(&build(entries, 251, seed), entries);
        let base = print(&node_a, seed);
        assert_eq!(base, print(&renumbered, seed));
        assert_ne!(base, print(&node_a[..2], seed));
        assert_ne!(
            base,
            print(&[entry(0, 100), entry(1, 100), entry(2, 60)], seed)
        );
        assert_ne!(base, print(&node_a, [0; 2]));
        assert_ne!(
            build(&node_a, 251, seed),
            build(&node_a, 251, [0; 2]),
            "the seed moves slots"
        );
    }
}
