//! The embedded XDP object: sizing its maps and loading it.

use aya::{Ebpf, EbpfLoader, maps::ProgramArray, programs::Xdp};
use lb_common::{
    consts::{
        CONNTRACK_CAPACITY, DEFAULT_MAGLEV_SIZE, GLOBAL_ABLATE, GLOBAL_CT_TIMEOUTS,
        GLOBAL_MAGLEV_SIZE, MAP_CONNTRACK, MAP_JUMPS, MAP_MAGLEV, MAP_VIP_STATS, MAP_VIPS,
        MAX_VIPS, PINNED_MAPS, PROGRAM_NAME, TAIL_PROGRAMS,
    },
    flow::{DEFAULT_TIMEOUTS_NS, Timeouts},
};
use thiserror::Error;

use crate::pins::PinDir;

/// The eBPF object built by build.rs from `lb-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            log: false,
            timeouts_ns: DEFAULT_TIMEOUTS_NS,
            ablate: 0,
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
pub enum LimitsError {
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
    pub fn validate(&self) -> Result<(), LimitsError> {
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

pub fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Parses `object` and creates its maps sized by `limits`; the program is not loaded yet.
/// With `pins`, maps already pinned there are reused as they are and new ones are pinned.
pub fn open(
    object: &[u8],
    limits: &Limits,
    pins: Option<&PinDir>,
    options: &Options,
) -> Result<Ebpf, aya::EbpfError> {
    let level = if options.log {
        aya_log::Level::Info as u8
    } else {
        0
    };
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &level, false);
    if let Some(pins) = pins {
        for name in PINNED_MAPS {
            loader.map_pin_path(name, pins.map_path(name));
        }
    }
    loader
        .override_global(GLOBAL_MAGLEV_SIZE, &limits.maglev_size, true)
        .override_global(GLOBAL_CT_TIMEOUTS, &options.timeouts_ns, true)
        .override_global(GLOBAL_ABLATE, &options.ablate, true)
        .map_max_entries(MAP_VIPS, limits.max_vips * 2)
        .map_max_entries(MAP_VIP_STATS, limits.max_vips)
        .map_max_entries(MAP_MAGLEV, limits.max_vips * 2 * limits.maglev_size)
        .map_max_entries(MAP_CONNTRACK, limits.conntrack_capacity)
        .load(object)
}

/// The XDP program of an opened object.
pub fn program(ebpf: &mut Ebpf) -> Option<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)?.try_into().ok()
}

#[derive(Debug, Error)]
pub enum TailCallError {
    #[error("the eBPF object has no XDP program {0}")]
    Missing(&'static str),
    #[error("loading {name}")]
    Load {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the eBPF object has no {MAP_JUMPS} map")]
    NoJumps,
    #[error("registering {name} in {MAP_JUMPS}")]
    Register {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Loads the programs `lb` tail-calls (ICMP, too-big answers) and registers them in the
/// JUMPS map, replacing whatever a previous daemon registered in a pinned one. Until this
/// runs, `lb` passes ICMP to the kernel and drops too-big packets (counted).
pub fn install_tail_calls(ebpf: &mut Ebpf) -> Result<(), TailCallError> {
    let mut fds = Vec::with_capacity(TAIL_PROGRAMS.len());
    for (name, index) in TAIL_PROGRAMS {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(TailCallError::Missing(name))?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| TailCallError::Load { name, source })?;
        }
        let fd = program
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|source| TailCallError::Load { name, source })?;
        fds.push((name, index, fd));
    }
    let map = ebpf.map_mut(MAP_JUMPS).ok_or(TailCallError::NoJumps)?;
    let mut jumps = ProgramArray::try_from(map).map_err(|source| TailCallError::Register {
        name: MAP_JUMPS,
        source,
    })?;
    for (name, index, fd) in fds {
        jumps
            .set(index, &fd, 0)
            .map_err(|source| TailCallError::Register { name, source })?;
    }
    Ok(())
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
