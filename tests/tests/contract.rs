//! Known answers for what every lb node must compute alike: the Maglev table a backend list
//! builds. Unprivileged (pure userspace code, no root, no namespaces).
//!
//! These values are a contract between lb nodes and between versions: two nodes (or an old
//! and a new version during a rolling upgrade) given the same backends must build the same
//! table, or the same packet goes to different backends depending on which node it hits and
//! established flows break. A change to an expected value here is a breaking change: do not
//! update the literals to make the test pass unless that break is intended and announced.
//! (The flow hash's own known answers are in lb-common/src/hash.rs.)

use lb_userspace::model::maglev::{Entry, build};

/// 64-bit FNV-1a over the table's ids, little-endian: a stable digest of the whole table.
fn fnv1a(table: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in table.iter().flat_map(|id| id.to_le_bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Three backends as the balancer describes them: BACKENDS-map id, weight, and identity
/// (the backend's `SocketAddr` as text).
fn backends() -> Vec<Entry> {
    [
        (1, 1, "198.18.2.2:8080"),
        (2, 2, "198.18.2.3:8080"),
        (3, 1, "[fd00:2::2]:8080"),
    ]
    .into_iter()
    .map(|(id, weight, identity): (u32, u32, &str)| Entry {
        id,
        weight,
        identity: identity.as_bytes().to_vec(),
    })
    .collect()
}

/// The whole table, digested, and its first 32 slots, for a small prime size and for the
/// default size ([`lb_common::consts::DEFAULT_MAGLEV_SIZE`]).
#[test]
fn maglev_table_known_answers() {
    let cases: [(u32, [u32; 32], u64); 2] = [
        (
            251,
            [
                3, 2, 1, 2, 2, 3, 3, 1, 2, 2, 2, 3, 1, 2, 2, 2, 3, 2, 2, 3, 2, 2, 2, 2, 2, 3, 2, 3,
                2, 2, 3, 2,
            ],
            0xd043_f25d_62e8_fff4,
        ),
        (
            lb_common::consts::DEFAULT_MAGLEV_SIZE,
            [
                2, 2, 1, 1, 3, 1, 2, 2, 3, 2, 1, 1, 3, 1, 1, 2, 2, 2, 2, 1, 1, 3, 1, 3, 2, 2, 2, 3,
                1, 1, 1, 2,
            ],
            0x6d3a_4045_48f4_70c7,
        ),
    ];
    for (size, first, digest) in cases {
        let table = build(&backends(), size, [0; 2]);
        assert_eq!(table.len(), size as usize);
        assert_eq!(
            table[..32],
            first,
            "the first slots of the {size}-slot Maglev table changed: a breaking change"
        );
        assert_eq!(
            fnv1a(&table),
            digest,
            "the {size}-slot Maglev table changed: a breaking change between lb nodes"
        );
    }
}

/// What the known answers rest on, stated so a failure above is easier to read: the table
/// does not depend on the order backends are listed in, and shares follow the weights.
#[test]
fn maglev_table_ignores_order_and_follows_weights() {
    let size = lb_common::consts::DEFAULT_MAGLEV_SIZE;
    let table = build(&backends(), size, [0; 2]);
    let mut reversed = backends();
    reversed.reverse();
    assert_eq!(
        build(&reversed, size, [0; 2]),
        table,
        "the order of backends matters"
    );
    for (id, share) in [(1, 0.25), (2, 0.5), (3, 0.25)] {
        let owned = table.iter().filter(|&&slot| slot == id).count() as f64 / f64::from(size);
        assert!(
            (owned - share).abs() < 0.01,
            "backend {id} owns {owned:.3} of the table, not {share}"
        );
    }
}

/// With a cluster's `--hash-seed`, the table is still a contract: every node (and every
/// version) given the same backends and seed builds this table.
#[test]
fn seeded_maglev_table_known_answer() {
    let size = lb_common::consts::DEFAULT_MAGLEV_SIZE;
    let seeded = build(&backends(), size, [0x5eed_0001, 0x00c1_a55e]);
    assert_eq!(
        fnv1a(&seeded),
        0x39d5_f2c9_fe24_a997,
        "the seeded Maglev table changed: a breaking change between lb nodes"
    );
    assert_ne!(
        seeded,
        build(&backends(), size, [0; 2]),
        "the seed did nothing"
    );
}
