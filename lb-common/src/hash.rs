//! The flow hash that picks a Maglev slot. Pure and deterministic: every lb node (and every
//! restart) maps a 5-tuple to the same slot, so flows stay put without shared state.

use crate::flow::FlowKey;

const SEED: u32 = 0x9e37_79b9;

#[inline(always)]
const fn mix(mut h: u32, word: u32) -> u32 {
    // MurmurHash3's 32-bit block step.
    let mut k = word.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
    h ^= k;
    h = h.rotate_left(13);
    h.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
const fn word(bytes: &[u8; 16], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The cluster-wide secret that keys the flow hash and the Maglev permutations, as two
/// words. Every lb node of a cluster must use the same one; the default (zero) keeps the
/// hashes of releases before seeds existed.
pub type HashSeed = [u32; 2];

/// Hash of a flow's 5-tuple, keyed by the cluster's `seed`: without the seed nobody can
/// tell which 5-tuples share a slot (murmur is not a cryptographic PRF, but it takes the
/// seed through every round).
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: &HashSeed) -> u32 {
    // The addresses' words read in place (`FlowKey::src_words`): the same words as
    // `address_words` of their bytes, in a load each.
    let (src, dst) = (key.src_words(), key.dst_words());
    let mut h = SEED ^ seed[0];
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, u32::from(key.src_port) << 16 | u32::from(key.dst_port));
    h = mix(h, u32::from(key.proto));
    finish(h ^ seed[1])
}

/// The slot of an address (with `salt`) in a table of `slots` (a power of two): each word
/// multiplied in and its high bits folded down (Fibonacci hashing per word). Cheap enough
/// for every packet; not collision-proof. A plain XOR of the words made structured IPv6
/// addresses collide (fd00:a::b with fd00:b::a, and fd00::1 with fd00:2::3).
#[inline(always)]
pub const fn address_slot(addr: &[u8; 16], salt: u32, slots: u32) -> u32 {
    address_slot_words(&address_words(addr), salt, slots)
}

/// [`address_slot`] of an address given as its four little-endian words (the datapath
/// reads them in place from an aligned [`FlowKey`]).
#[inline(always)]
pub const fn address_slot_words(words: &[u32; 4], salt: u32, slots: u32) -> u32 {
    const K: u32 = 0x9e37_79b1;
    let mut h = (words[0] ^ salt).wrapping_mul(K);
    h = (h ^ (h >> 15) ^ words[1]).wrapping_mul(K);
    h = (h ^ (h >> 15) ^ words[2]).wrapping_mul(K);
    h = (h ^ (h >> 15) ^ words[3]).wrapping_mul(K);
    // The last word's high bits reach the slot's bits too.
    h = (h ^ (h >> 16)).wrapping_mul(0x85eb_ca6b);
    h >> (32 - slots.trailing_zeros())
}

/// An address as the four little-endian words the slot hashes take.
#[inline(always)]
pub const fn address_words(addr: &[u8; 16]) -> [u32; 4] {
    [word(addr, 0), word(addr, 4), word(addr, 8), word(addr, 12)]
}

/// The ADDRESSES bucket of an address (the datapath computes it once or twice per
/// packet); a collision costs one hash lookup.
#[inline(always)]
pub const fn address_bucket(addr: &[u8; 16], family: u8) -> u32 {
    address_bucket_words(&address_words(addr), family)
}

/// [`address_bucket`] of an address given as its words ([`address_slot_words`]).
#[inline(always)]
pub const fn address_bucket_words(words: &[u32; 4], family: u8) -> u32 {
    address_slot_words(words, family as u32, crate::consts::ADDRESS_BUCKETS)
}

/// Hash of arbitrary bytes with a seed (userspace: Maglev permutations of backends).
pub fn bytes_hash(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = seed;
    let mut chunks = bytes.chunks_exact(4);
    for chunk in &mut chunks {
        h = mix(
            h,
            u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
        );
    }
    let mut tail = [0u8; 4];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = mix(h, u32::from_le_bytes(tail) ^ bytes.len() as u32);
    finish(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        consts::{FAMILY_V4, FAMILY_V6, IPPROTO_TCP, IPPROTO_UDP},
        service::Addr,
    };

    fn key(src_port: u16) -> FlowKey {
        FlowKey {
            src: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [198, 18, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port,
            dst_port: 80,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn each_seed_word_moves_flows() {
        let slots = |seed: HashSeed| -> Vec<u32> {
            (0..64)
                .map(|port| flow_hash(&key(port), &seed) % 97)
                .collect()
        };
        let base = slots([0; 2]);
        for seed in [[1, 0], [0, 1], [0x5eed, 0xcafe]] {
            let moved = slots(seed)
                .iter()
                .zip(&base)
                .filter(|(a, b)| a != b)
                .count();
            assert!(moved > 48, "seed {seed:?} moved only {moved} of 64 flows");
        }
    }

    #[test]
    fn flow_hash_is_port_sensitive() {
        assert_ne!(
            flow_hash(&key(1000), &[0; 2]),
            flow_hash(&key(1001), &[0; 2])
        );
    }

    /// A 5-tuple as the datapath builds it (IPv4 addresses in the first 4 bytes).
    fn tuple(src: &str, dst: &str, ports: (u16, u16), proto: u8) -> FlowKey {
        let (src, family) = addr(src);
        let (dst, _) = addr(dst);
        FlowKey {
            src,
            dst,
            src_port: ports.0,
            dst_port: ports.1,
            proto,
            family,
            _pad: [0; 2],
        }
    }

    fn addr(text: &str) -> (Addr, u8) {
        match text.parse::<std::net::IpAddr>().expect("address") {
            std::net::IpAddr::V4(v4) => (crate::service::addr_from_v4(v4.octets()), FAMILY_V4),
            std::net::IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
        }
    }

    // Known answers. These values are a contract between lb nodes and between versions:
    // every node, old or new, must map a packet's 5-tuple to the same Maglev slot (and an
    // address to the same bucket/slot), or flows move when a cluster is upgraded one node
    // at a time. A change to any of these numbers is a breaking change: do not "fix" the
    // expected values to make this test pass, unless every node is replaced at once and
    // the release notes say so.
    #[test]
    fn flow_hash_known_answers() {
        let cases: [(FlowKey, u32); 6] = [
            (
                tuple("198.18.0.1", "198.18.1.1", (40_000, 80), IPPROTO_TCP),
                0x2211_1b8a,
            ),
            (
                tuple("198.18.0.1", "198.18.1.1", (40_000, 53), IPPROTO_UDP),
                0x0a23_e178,
            ),
            (
                tuple("10.0.0.7", "192.0.2.10", (1, 443), IPPROTO_TCP),
                0x21a9_916a,
            ),
            (
                tuple("fd00::1", "fd00:1::1", (40_000, 80), IPPROTO_TCP),
                0x7e8e_914c,
            ),
            (
                tuple("fd00::1", "fd00:1::1", (40_000, 53), IPPROTO_UDP),
                0xf261_6360,
            ),
            (
                tuple(
                    "2001:db8:ffff::abcd",
                    "2001:db8::80",
                    (65_535, 8080),
                    IPPROTO_UDP,
                ),
                0x554a_b3e5,
            ),
        ];
        for (key, expected) in cases {
            assert_eq!(
                flow_hash(&key, &[0; 2]),
                expected,
                "flow_hash changed for {key:?}: a breaking change between lb nodes"
            );
        }
    }

    /// The seeded hash is as much a contract: nodes of one cluster (and versions) share it.
    #[test]
    fn seeded_flow_hash_known_answers() {
        let seed = [0x5eed_0001, 0x00c1_a55e];
        let cases: [(FlowKey, u32); 2] = [
            (
                tuple("198.18.0.1", "198.18.1.1", (40_000, 80), IPPROTO_TCP),
                0x006d_e86e,
            ),
            (
                tuple("fd00::1", "fd00:1::1", (40_000, 53), IPPROTO_UDP),
                0x75f5_d56d,
            ),
        ];
        for (key, expected) in cases {
            assert_eq!(
                flow_hash(&key, &seed),
                expected,
                "seeded flow_hash changed for {key:?}: a breaking change between lb nodes"
            );
        }
    }

    // Unlike the flow hash, an address's bucket is local to a node. ADDRESSES is pinned
    // across restarts, but a new daemon sets every present address's bucket at adoption,
    // before its program is attached; bits left by an earlier function only cost lookups.
    #[test]
    fn address_slot_and_bucket_known_answers() {
        let cases: [(&str, u32, u32, u32); 4] = [
            ("198.18.2.2", 0, 1 << 10, 159),
            ("198.18.2.2", 7, 1 << 16, 4_806),
            ("fd00:2::2", 0, 1 << 10, 290),
            ("2001:db8::1", 0xdead_beef, 1 << 14, 3_750),
        ];
        for (text, salt, slots, expected) in cases {
            let (a, _) = addr(text);
            assert_eq!(
                address_slot(&a, salt, slots),
                expected,
                "address_slot changed for {text} (salt {salt}, {slots} slots)"
            );
        }
        let buckets: [(&str, u32); 3] = [
            ("198.18.1.1", 11_789),
            ("fd00:1::1", 5_879),
            ("203.0.113.200", 7_006),
        ];
        for (text, expected) in buckets {
            let (a, family) = addr(text);
            assert_eq!(
                address_bucket(&a, family),
                expected,
                "address_bucket changed for {text}"
            );
        }
    }

    /// The datapath hashes a flow's addresses from words it reads in place; userspace
    /// from the bytes. Both must land in the same bucket.
    #[test]
    fn flow_key_words_hash_as_the_address_bytes() {
        for (src, dst) in [("198.18.0.1", "198.18.1.1"), ("fd00::1", "fd00:1::20")] {
            let key = tuple(src, dst, (40_000, 80), IPPROTO_TCP);
            assert_eq!(key.src_words(), address_words(&key.src));
            assert_eq!(key.dst_words(), address_words(&key.dst));
            assert_eq!(
                address_bucket_words(&key.dst_words(), key.family),
                address_bucket(&key.dst, key.family),
                "{dst}"
            );
        }
    }

    /// Lab and data-centre plans number addresses by structure (fd00:<net>::<host>,
    /// 10.<net>.<host>): their buckets must spread like random ones, or traffic of no VIP
    /// pays the hash lookups the buckets exist to save.
    #[test]
    fn address_buckets_spread_structured_addresses() {
        for family in [FAMILY_V4, FAMILY_V6] {
            let mut buckets = std::collections::BTreeSet::new();
            let mut count = 0u32;
            for net in 0..32u8 {
                for host in 0..32u8 {
                    let text = if family == FAMILY_V4 {
                        format!("198.18.{net}.{host}")
                    } else {
                        format!("fd00:{net:x}::{host:x}")
                    };
                    let (a, family) = addr(&text);
                    buckets.insert(address_bucket(&a, family));
                    count += 1;
                }
            }
            // 1024 random addresses in 16384 buckets share about 31 of them.
            assert!(
                buckets.len() as u32 >= count * 95 / 100,
                "{count} family-{family} addresses fell in only {} buckets",
                buckets.len()
            );
        }
    }

    #[test]
    fn bytes_hash_known_answers() {
        // The Maglev permutations of backends hang on these (identity = "addr:port").
        let cases: [(u32, &[u8], u32); 4] = [
            (0, b"", 0xff19_274a),
            (0x6d61_676c, b"198.18.2.2:8080", 0x7ea6_340f),
            (0x6576_3031, b"198.18.2.2:8080", 0xb3b6_2389),
            (0x6d61_676c, b"[fd00:2::2]:8080", 0x3b4b_8c7d),
        ];
        for (seed, bytes, expected) in cases {
            assert_eq!(
                bytes_hash(seed, bytes),
                expected,
                "bytes_hash changed for seed {seed:#x}, {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn flow_hash_spreads_source_ports_evenly() {
        const BUCKETS: usize = 7;
        let mut counts = [0u32; BUCKETS];
        for port in 0..14_000u16 {
            counts[flow_hash(&key(port), &[0; 2]) as usize % BUCKETS] += 1;
        }
        for count in counts {
            assert!((1800..2200).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn address_buckets_are_in_range_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for host in 0..1024u32 {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&(0xc612_0000 + host).to_be_bytes());
            let bucket = address_bucket(&addr, 4);
            assert!(bucket < crate::consts::ADDRESS_BUCKETS);
            seen.insert(bucket);
        }
        assert!(seen.len() > 900, "{} distinct buckets", seen.len());
    }

    #[test]
    fn bytes_hash_depends_on_seed_and_length() {
        assert_ne!(bytes_hash(1, b"abc"), bytes_hash(2, b"abc"));
        assert_ne!(bytes_hash(1, b"abc"), bytes_hash(1, b"abc\0"));
    }
}
