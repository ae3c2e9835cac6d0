//! What the datapath is sized and set up with: fixed when the maps are created
//! ([`Limits`]) or free to change at every load ([`Options`]). Pure data and validation.

use lb_common::{
    consts::{CONNTRACK_CAPACITY, DEFAULT_MAGLEV_SIZE, MAX_VIPS},
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
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_vips: MAX_VIPS,
            maglev_size: DEFAULT_MAGLEV_SIZE,
            conntrack_capacity: CONNTRACK_CAPACITY,
        }
    }
}

#[derive(Debug, Error)]
pub(crate) enum LimitsError {
    #[error("Maglev table size {0} is not a prime (try 65537, 131071 or 16381)")]
    NotPrime(u32),
    #[error("Maglev table size {0} is out of range (must be between 7 and 1048573)")]
    TableSizeOutOfRange(u32),
    #[error("max VIPs must be between 1 and {MAX_VIPS}")]
    VipsOutOfRange,
    #[error("conntrack capacity must be at least 1024")]
    ConntrackTooSmall,
}

impl Limits {
    pub(crate) fn validate(&self) -> Result<(), LimitsError> {
        if !(7..=1_048_573).contains(&self.maglev_size) {
            return Err(LimitsError::TableSizeOutOfRange(self.maglev_size));
        }
        if !is_prime(self.maglev_size) {
            return Err(LimitsError::NotPrime(self.maglev_size));
        }
        if !(1..=MAX_VIPS).contains(&self.max_vips) {
            return Err(LimitsError::VipsOutOfRange);
        }
        if self.conntrack_capacity < 1024 {
            return Err(LimitsError::ConntrackTooSmall);
        }
        Ok(())
    }
}

pub(crate) fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
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
        assert!(Limits::default().validate().is_ok());
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
        let vips = Limits {
            max_vips: 0,
            ..Limits::default()
        };
        assert!(matches!(vips.validate(), Err(LimitsError::VipsOutOfRange)));
    }
}
