//! What the datapath is sized and set up with: fixed when the maps are created
//! ([`Limits`]) or free to change at every load ([`Options`]). Pure data and validation.

use lb_common::{
    consts::{
        CONNTRACK_CAPACITY, CT_UNPROVEN_DIVISOR, CT_UNPROVEN_FLOOR, DEFAULT_MAGLEV_SIZE,
        DEFAULT_NEW_FLOW_LIMIT, MAX_BACKENDS, MAX_VIPS,
    },
    encap::EncapSource,
    flow::{DEFAULT_TIMEOUTS_NS, Timeouts},
    hash::HashSeed,
};
use thiserror::Error;

/// Sizes fixed when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_vips: u32,
    /// Maglev table size M: a prime, so every backend's permutation visits every slot.
    pub maglev_size: u32,
    /// Flows tracked (one entry per flow).
    pub conntrack_capacity: u32,
    /// Backend slots, over all VIPs.
    pub max_backends: u32,
}

/// Most VIP slots `--max-vips` may ask for.
pub const VIPS_CEILING: u32 = 1024;
/// Most backend slots `--max-backends` may ask for.
pub const BACKENDS_CEILING: u32 = 1 << 16;
/// Fewest flows `--conntrack-size` may ask for.
pub const CONNTRACK_FLOOR: u32 = 1024;
/// Most entries of the MAGLEV map (the kernel takes 8 bytes an entry: 4 GiB).
pub const MAGLEV_SLOTS_CEILING: u64 = 1 << 29;

/// The sizes an operator asked for (`lb run --table-size` and the others); `None` takes
/// the pinned datapath's, else the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub table_size: Option<u32>,
    pub conntrack_size: Option<u32>,
    pub max_vips: Option<u32>,
    pub max_backends: Option<u32>,
}

/// A size asked for that differs from what the pinned maps were created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeMismatch {
    pub flag: &'static str,
    pub pinned: u32,
    pub wanted: u32,
}

impl Requested {
    /// The sizes to create maps with when nothing is pinned yet.
    pub fn limits(&self) -> Limits {
        let defaults = Limits::default();
        Limits {
            maglev_size: self.table_size.unwrap_or(defaults.maglev_size),
            conntrack_capacity: self.conntrack_size.unwrap_or(defaults.conntrack_capacity),
            max_vips: self.max_vips.unwrap_or(defaults.max_vips),
            max_backends: self.max_backends.unwrap_or(defaults.max_backends),
        }
    }

    /// The first size asked for explicitly that the pinned maps do not have: maps cannot
    /// be resized in place, so such a start is refused rather than silently adopting.
    pub fn mismatch(&self, pinned: &Limits) -> Option<SizeMismatch> {
        [
            ("--table-size", self.table_size, pinned.maglev_size),
            (
                "--conntrack-size",
                self.conntrack_size,
                pinned.conntrack_capacity,
            ),
            ("--max-vips", self.max_vips, pinned.max_vips),
            ("--max-backends", self.max_backends, pinned.max_backends),
        ]
        .into_iter()
        .find_map(|(flag, wanted, pinned)| {
            wanted
                .filter(|&wanted| wanted != pinned)
                .map(|wanted| SizeMismatch {
                    flag,
                    pinned,
                    wanted,
                })
        })
    }
}

/// How a loaded program behaves; free to change at every load (unlike [`Limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Enables the datapath's aya-log statements (info level and above).
    pub log: bool,
    /// Conntrack idle timeouts in ns, by state.
    pub timeouts_ns: Timeouts,
    /// `ABLATE_*` stages left out: only `cargo xtask bench` sets any.
    pub ablate: u32,
    /// Outer sources of dsr-ipip for IPv4 and IPv6 backends (`--encap-source`); where
    /// `None`, the daemon takes an address of the attached interfaces.
    pub encap_v4: Option<EncapSource>,
    pub encap_v6: Option<EncapSource>,
    /// The cluster's hash seed (the same on every lb node).
    pub hash_seed: HashSeed,
    /// New flows each CPU tracks per second before the rate guard stops tracking more
    /// (`--new-flow-limit`; 0: no limit).
    pub new_flow_limit: u32,
    /// The UDP destination port of dsr-gue (`--gue-port`).
    pub gue_port: u16,
}

impl Options {
    /// How long a flow-cache slot answers after the slow path filled it: a second (as a
    /// next hop's), or a quarter of the shortest conntrack timeout if that is less, so that
    /// a cached flow's entry is refreshed long before it could expire.
    pub fn flow_cache_ns(&self) -> u64 {
        let shortest = self.timeouts_ns.iter().copied().min().unwrap_or(0);
        (shortest / 4).min(lb_common::consts::NEXTHOP_TTL_NS)
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            log: false,
            timeouts_ns: DEFAULT_TIMEOUTS_NS,
            ablate: 0,
            encap_v4: None,
            encap_v6: None,
            hash_seed: [0; 2],
            new_flow_limit: DEFAULT_NEW_FLOW_LIMIT,
            gue_port: lb_common::gue::DEFAULT_GUE_PORT,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_vips: MAX_VIPS,
            maglev_size: DEFAULT_MAGLEV_SIZE,
            conntrack_capacity: CONNTRACK_CAPACITY,
            max_backends: MAX_BACKENDS,
        }
    }
}

#[derive(Debug, Error)]
pub(crate) enum LimitsError {
    #[error("Maglev table size {0} is not a prime (try 65537, 131071 or 16381)")]
    NotPrime(u32),
    #[error("Maglev table size {0} is out of range (must be between 7 and 1048573)")]
    TableSizeOutOfRange(u32),
    #[error("--max-vips must be between 1 and {VIPS_CEILING}, not {0}")]
    VipsOutOfRange(u32),
    #[error("--max-backends must be between 1 and {BACKENDS_CEILING}, not {0}")]
    BackendsOutOfRange(u32),
    #[error("--conntrack-size must be at least {CONNTRACK_FLOOR}, not {0}")]
    ConntrackTooSmall(u32),
    #[error(
        "--max-vips {max_vips} × 2 tables × --table-size {table_size} is {} Maglev slots, \
         more than {MAGLEV_SLOTS_CEILING} (4 GiB of kernel memory): lower either",
        u64::from(*max_vips) * 2 * u64::from(*table_size)
    )]
    MaglevTooLarge { max_vips: u32, table_size: u32 },
}

impl Limits {
    pub(crate) fn validate(&self) -> Result<(), LimitsError> {
        if !(7..=1_048_573).contains(&self.maglev_size) {
            return Err(LimitsError::TableSizeOutOfRange(self.maglev_size));
        }
        if !is_prime(self.maglev_size) {
            return Err(LimitsError::NotPrime(self.maglev_size));
        }
        if !(1..=VIPS_CEILING).contains(&self.max_vips) {
            return Err(LimitsError::VipsOutOfRange(self.max_vips));
        }
        if !(1..=BACKENDS_CEILING).contains(&self.max_backends) {
            return Err(LimitsError::BackendsOutOfRange(self.max_backends));
        }
        if self.conntrack_capacity < CONNTRACK_FLOOR {
            return Err(LimitsError::ConntrackTooSmall(self.conntrack_capacity));
        }
        if u64::from(self.maglev_slots()) > MAGLEV_SLOTS_CEILING {
            return Err(LimitsError::MaglevTooLarge {
                max_vips: self.max_vips,
                table_size: self.maglev_size,
            });
        }
        Ok(())
    }
}

impl Limits {
    /// Entries of the MAGLEV map: two tables per VIP slot (saturating: [`Limits::validate`]
    /// refuses anything past [`MAGLEV_SLOTS_CEILING`]).
    pub fn maglev_slots(&self) -> u32 {
        self.max_vips
            .saturating_mul(2)
            .saturating_mul(self.maglev_size)
    }

    /// Entries of the CT_UNPROVEN map: a fraction of CONNTRACK's, enough for the flows
    /// that open within a few round trips (they are proven after one).
    pub fn unproven_capacity(&self) -> u32 {
        (self.conntrack_capacity / CT_UNPROVEN_DIVISOR).max(CT_UNPROVEN_FLOOR)
    }

    /// Entries of the SOURCE_RANGES trie: every VIP slot's most prefixes, and room for one
    /// VIP's whole replacement (a change writes the new prefixes before the old ones go).
    pub fn source_ranges_capacity(&self) -> u32 {
        self.max_vips
            .saturating_add(1)
            .saturating_mul(lb_common::consts::MAX_SOURCE_RANGES_PER_VIP)
    }

    /// Entries of the ENDPOINTS map.
    pub fn endpoints_capacity(&self) -> u32 {
        self.max_backends
            .saturating_mul(lb_common::consts::ENDPOINTS_PER_BACKEND)
    }
}

pub(crate) fn is_prime(n: u32) -> bool {
    n >= 2 && (2..=n.isqrt()).all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_536));
    }

    #[test]
    fn limits_are_validated() {
        Limits::default().validate().unwrap();
        let table = |maglev_size| Limits {
            maglev_size,
            ..Limits::default()
        };
        assert!(matches!(
            table(65_536).validate(),
            Err(LimitsError::NotPrime(65_536))
        ));
        assert!(matches!(
            table(5).validate(),
            Err(LimitsError::TableSizeOutOfRange(5))
        ));
        let vips = |max_vips| Limits {
            max_vips,
            ..Limits::default()
        };
        assert!(matches!(
            vips(0).validate(),
            Err(LimitsError::VipsOutOfRange(0))
        ));
        assert!(matches!(
            vips(VIPS_CEILING + 1).validate(),
            Err(LimitsError::VipsOutOfRange(_))
        ));
        vips(VIPS_CEILING).validate().unwrap();
        let backends = |max_backends| Limits {
            max_backends,
            ..Limits::default()
        };
        assert!(matches!(
            backends(0).validate(),
            Err(LimitsError::BackendsOutOfRange(0))
        ));
        assert!(matches!(
            backends(BACKENDS_CEILING + 1).validate(),
            Err(LimitsError::BackendsOutOfRange(_))
        ));
        backends(1).validate().unwrap();
        let conntrack = Limits {
            conntrack_capacity: 1023,
            ..Limits::default()
        };
        assert!(matches!(
            conntrack.validate(),
            Err(LimitsError::ConntrackTooSmall(1023))
        ));
        // 1024 VIPs × 2 × 1048573 slots would take 16 GiB.
        let huge = Limits {
            max_vips: VIPS_CEILING,
            maglev_size: 1_048_573,
            ..Limits::default()
        };
        let error = huge.validate().expect_err("too large").to_string();
        assert!(
            error.contains("is 2147477504 Maglev slots, more than 536870912"),
            "{error}"
        );
    }

    #[test]
    fn requested_sizes_fill_in_defaults_and_name_the_first_mismatch() {
        let none = Requested::default();
        assert_eq!(none.limits(), Limits::default());
        assert_eq!(none.mismatch(&Limits::default()), None);
        let asked = Requested {
            max_vips: Some(4),
            max_backends: Some(64),
            ..Requested::default()
        };
        let limits = asked.limits();
        assert_eq!((limits.max_vips, limits.max_backends), (4, 64));
        assert_eq!(limits.endpoints_capacity(), 128);
        assert_eq!(limits.maglev_slots(), 4 * 2 * 65_537);
        assert_eq!(asked.mismatch(&limits), None);
        assert_eq!(
            asked.mismatch(&Limits::default()),
            Some(SizeMismatch {
                flag: "--max-vips",
                pinned: MAX_VIPS,
                wanted: 4
            })
        );
        let backends_only = Requested {
            max_backends: Some(64),
            ..Requested::default()
        };
        assert_eq!(
            backends_only.mismatch(&Limits::default()),
            Some(SizeMismatch {
                flag: "--max-backends",
                pinned: MAX_BACKENDS,
                wanted: 64
            })
        );
    }
}
