//! What a node shares with the other lb nodes of its cluster: the hash seed that makes every
//! node pick the same backend for a flow, and the kernel routing table through which it
//! announces its VIPs (a routing daemon exports that table over BGP).

use std::{fmt, str::FromStr};

use lb_common::hash::HashSeed;
use thiserror::Error;

/// The kernel's own tables: announcing into them would change how this host forwards.
const RESERVED_TABLES: [(u32, &str); 4] = [
    (0, "unspec"),
    (253, "default"),
    (254, "main"),
    (255, "local"),
];

/// The routing protocol number lb's announcement routes carry (`ip route show proto 248`),
/// so lb tells its routes from anyone else's in a shared table and routing daemons can
/// filter on it.
pub const ANNOUNCE_PROTOCOL: u8 = 248;

/// The cluster's hash seed: 64 bits, written as 16 hex digits. Secret: whoever knows it
/// can compute which backend a 5-tuple lands on, so it is never printed.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Seed(u64);

impl Seed {
    /// The words the datapath and Maglev take (zero is the default of earlier releases).
    pub fn words(self) -> HashSeed {
        [self.0 as u32, (self.0 >> 32) as u32]
    }

    pub fn is_default(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_default() {
            "Seed(default)"
        } else {
            "Seed(<secret>)"
        })
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ClusterError {
    #[error(
        "hash seed: expected 16 hex digits (64 bits), e.g. from `openssl rand -hex 8`; got {0} characters"
    )]
    SeedLength(usize),
    #[error("hash seed: {0:?} is not a hex digit")]
    SeedDigit(char),
    #[error("hash seed: all zeros is the public default; choose a random one")]
    SeedZero,
    #[error(
        "announce table {table} is the kernel's {name} table: lb would change how this host forwards; give lb a table of its own (e.g. 4242)"
    )]
    ReservedTable { table: u32, name: &'static str },
}

impl FromStr for Seed {
    type Err = ClusterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 16 {
            return Err(ClusterError::SeedLength(text.chars().count()));
        }
        if let Some(bad) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(ClusterError::SeedDigit(bad));
        }
        let value = u64::from_str_radix(text, 16).map_err(|_| ClusterError::SeedLength(16))?;
        if value == 0 {
            return Err(ClusterError::SeedZero);
        }
        Ok(Self(value))
    }
}

/// A kernel routing table lb may announce into.
pub fn check_announce_table(table: u32) -> Result<u32, ClusterError> {
    match RESERVED_TABLES.iter().find(|(id, _)| *id == table) {
        Some(&(table, name)) => Err(ClusterError::ReservedTable { table, name }),
        None => Ok(table),
    }
}

/// Settings every node of a cluster sets alike (`--hash-seed`, `--announce-table`, or the
/// `[cluster]` table of `--config`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterSettings {
    pub hash_seed: Option<Seed>,
    pub announce_table: Option<u32>,
}

impl ClusterSettings {
    /// Flags win over the file, field by field.
    #[must_use]
    pub fn or(self, file: ClusterSettings) -> ClusterSettings {
        ClusterSettings {
            hash_seed: self.hash_seed.or(file.hash_seed),
            announce_table: self.announce_table.or(file.announce_table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_from_16_hex_digits_and_never_print() {
        let seed: Seed = "0123456789ABCDEF".parse().expect("valid");
        assert_eq!(seed.words(), [0x89ab_cdef, 0x0123_4567]);
        assert_eq!(format!("{seed:?}"), "Seed(<secret>)");
        assert_eq!(Seed::default().words(), [0, 0]);
        for (text, error) in [
            ("", ClusterError::SeedLength(0)),
            ("0123456789abcde", ClusterError::SeedLength(15)),
            ("0123456789abcdef0", ClusterError::SeedLength(17)),
            ("0123456789abcdeg", ClusterError::SeedDigit('g')),
            ("+123456789abcdef", ClusterError::SeedDigit('+')),
            ("0000000000000000", ClusterError::SeedZero),
        ] {
            assert_eq!(text.parse::<Seed>(), Err(error), "{text:?}");
        }
    }

    #[test]
    fn the_kernels_tables_are_refused() {
        assert_eq!(check_announce_table(4242), Ok(4242));
        assert_eq!(check_announce_table(100), Ok(100));
        for table in [0, 253, 254, 255] {
            let error = check_announce_table(table).expect_err("reserved");
            assert!(error.to_string().contains("table of its own"), "{error}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let seed: Seed = "00000000000000a1".parse().expect("valid");
        let flags = ClusterSettings {
            hash_seed: None,
            announce_table: Some(7),
        };
        let file = ClusterSettings {
            hash_seed: Some(seed),
            announce_table: Some(9),
        };
        assert_eq!(
            flags.or(file),
            ClusterSettings {
                hash_seed: Some(seed),
                announce_table: Some(7)
            }
        );
    }
}
