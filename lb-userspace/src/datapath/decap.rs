//! The backends' decapsulation program (`lb_decap`, its own object: none of the
//! balancer's maps): loading it through the verifier, the outer destinations it accepts,
//! the outer source prefixes it allows, and its counters.
//!
//! Maps can be pinned ([`Decap::load_pinned`]), and what they accept and count read from
//! the pins alone ([`read_pinned_filters`], [`read_pinned_counters`]); attaching, the
//! pinned link and the host's settings are `lb decap`'s ([`crate::datapath::backend_setup`]).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, MapError, PerCpuArray, ProgramArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, Xdp},
};
use lb_common::{
    decap::{
        DECAP_FILTER_SOURCES, DECAP_GUE_PROGRAM_NAME, DECAP_PINNED_MAPS, DECAP_PROGRAM_NAME,
        DECAP_STATS_LEN, DecapConfig, DecapStat, JUMP_DECAP_GUE, MAP_DECAP_CONFIG, MAP_DECAP_JUMPS,
        MAP_DECAP_LOCAL, MAP_DECAP_SOURCES, MAP_DECAP_STATS, mapped_v4, mapped_v4_prefix_len,
    },
    gue::DEFAULT_GUE_PORT,
    stats::Counter,
};
use thiserror::Error;

/// The decap object built by build.rs from `lb-ebpf` (its `decap` binary).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap"));

#[derive(Debug, Error)]
pub enum DecapError {
    #[error("parsing the decap object")]
    Open(#[source] aya::EbpfError),
    #[error("the decap object has no XDP program {DECAP_PROGRAM_NAME}")]
    NoProgram,
    #[error("loading {DECAP_PROGRAM_NAME}")]
    Load(#[source] ProgramError),
    #[error("the decap object has no map {0}")]
    NoMap(&'static str),
    #[error("decap map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("creating the pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}/{len} is not a prefix (at most {max} bits)")]
    InvalidPrefix { addr: IpAddr, len: u8, max: u8 },
}

/// A source prefix the decap program accepts tunnels from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl SourcePrefix {
    /// The prefix as an LPM key: IPv4 mapped into `::ffff:0:0/96`, host bits cleared.
    fn key(self) -> Result<Key<[u8; 16]>, DecapError> {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.len > max {
            return Err(DecapError::InvalidPrefix {
                addr: self.addr,
                len: self.len,
                max,
            });
        }
        let bits = match self.addr {
            IpAddr::V4(_) => mapped_v4_prefix_len(self.len),
            IpAddr::V6(_) => u32::from(self.len),
        };
        let full = u128::from_be_bytes(map_key(self.addr));
        let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
        Ok(Key::new(bits, (full & mask).to_be_bytes()))
    }
}

/// An address as the decap maps hold it (IPv4 mapped).
pub fn map_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => mapped_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a decap map key holds (IPv4 when mapped).
pub fn from_map_key(key: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The prefix an LPM key of `DECAP_SOURCES` holds.
fn from_lpm_key(key: &Key<[u8; 16]>) -> SourcePrefix {
    let addr = from_map_key(key.data());
    let len = key.prefix_len();
    match addr {
        IpAddr::V4(_) if len >= 96 => SourcePrefix {
            addr,
            len: (len - 96) as u8,
        },
        // A short prefix that covers ::ffff:0:0/96 is an IPv6 prefix.
        IpAddr::V4(v4) => SourcePrefix {
            addr: IpAddr::V6(v4.to_ipv6_mapped()),
            len: len as u8,
        },
        IpAddr::V6(_) => SourcePrefix {
            addr,
            len: len as u8,
        },
    }
}

impl From<crate::model::decap::Prefix> for SourcePrefix {
    fn from(prefix: crate::model::decap::Prefix) -> Self {
        Self {
            addr: prefix.addr,
            len: prefix.len,
        }
    }
}

impl From<SourcePrefix> for crate::model::decap::Prefix {
    fn from(prefix: SourcePrefix) -> Self {
        Self {
            addr: prefix.addr,
            len: prefix.len,
        }
    }
}

/// What a decap program accepts, as its maps say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecapFilters {
    /// Outer destinations (`DECAP_LOCAL`), sorted.
    pub local: Vec<IpAddr>,
    /// Outer source prefixes (`DECAP_SOURCES`), sorted; empty when the filter is off (any
    /// source).
    pub sources: Vec<SourcePrefix>,
}

/// Counter totals over all CPUs, indexed like [`DecapStat::ALL`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecapSnapshot {
    pub counters: Vec<Counter>,
}

impl DecapSnapshot {
    pub fn get(&self, stat: DecapStat) -> Counter {
        self.counters
            .get(stat.index() as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// The decap program loaded into the kernel (not attached), with its maps.
pub struct Decap {
    ebpf: Ebpf,
    local: HashMap<MapData, [u8; 16], u32>,
    sources: LpmTrie<MapData, [u8; 16], u32>,
    config: Array<MapData, DecapConfig>,
    stats: PerCpuArray<MapData, Counter>,
    /// What [`Decap::write_config`] writes as the GUE port.
    gue_port: u16,
    /// Held so the program array keeps `lb_decap_gue` while this handle lives (the pin
    /// keeps it after).
    _jumps: ProgramArray<MapData>,
}

/// Removes pins an earlier release made with another shape (a smaller DECAP_CONFIG value
/// before dsr-gue, fewer counters): the program could not use them. Both are rewritten
/// by the attach that follows (the counters start again from zero).
fn drop_outdated_pins(dir: &Path) -> Result<(), DecapError> {
    let shapes = [
        (MAP_DECAP_CONFIG, size_of::<DecapConfig>() as u32, 1),
        (
            MAP_DECAP_STATS,
            size_of::<Counter>() as u32,
            DECAP_STATS_LEN,
        ),
    ];
    for (name, value_size, entries) in shapes {
        let path = dir.join(name);
        let Ok(pinned) = MapData::from_pin(&path) else {
            continue;
        };
        let info = pinned
            .info()
            .map_err(|source| DecapError::Map { name, source })?;
        if info.value_size() != value_size || info.max_entries() < entries {
            std::fs::remove_file(&path).map_err(|source| DecapError::PinDir {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DecapError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DecapError::NoMap(name))?;
    T::try_from(map).map_err(|source| DecapError::Map { name, source })
}

impl Decap {
    /// Parses `object` (normally [`DECAP_OBJECT`]), creates its maps and loads the program
    /// through the verifier. Accepts nothing until [`Decap::add_local`].
    pub fn load(object: &[u8]) -> Result<Self, DecapError> {
        Self::load_with(object, &mut EbpfLoader::new())
    }

    /// As [`Decap::load`], with every map pinned in `dir` by its name (the directory is
    /// created on bpffs if missing). Maps an earlier load pinned there are reused as they
    /// are, addresses, prefixes and counters included; missing ones are created and pinned.
    pub fn load_pinned(object: &[u8], dir: &Path) -> Result<Self, DecapError> {
        std::fs::create_dir_all(dir).map_err(|source| DecapError::PinDir {
            path: dir.to_owned(),
            source,
        })?;
        drop_outdated_pins(dir)?;
        let mut loader = EbpfLoader::new();
        for name in DECAP_PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
        Self::load_with(object, &mut loader)
    }

    fn load_with(object: &[u8], loader: &mut EbpfLoader<'_>) -> Result<Self, DecapError> {
        let mut ebpf = loader.load(object).map_err(DecapError::Open)?;
        let program: &mut Xdp = ebpf
            .program_mut(DECAP_PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .ok_or(DecapError::NoProgram)?;
        program.load().map_err(DecapError::Load)?;
        // dsr-gue's program, reached by a tail call: loaded, then put in its slot.
        let gue: &mut Xdp = ebpf
            .program_mut(DECAP_GUE_PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .ok_or(DecapError::NoProgram)?;
        gue.load().map_err(DecapError::Load)?;
        let gue_fd = gue
            .fd()
            .map_err(DecapError::Load)?
            .try_clone()
            .map_err(|source| DecapError::Map {
                name: MAP_DECAP_JUMPS,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "dup",
                    io_error: source,
                }),
            })?;
        let mut jumps: ProgramArray<MapData> = take(&mut ebpf, MAP_DECAP_JUMPS)?;
        jumps
            .set(JUMP_DECAP_GUE, &gue_fd, 0)
            .map_err(|source| DecapError::Map {
                name: MAP_DECAP_JUMPS,
                source,
            })?;
        Ok(Self {
            local: take(&mut ebpf, MAP_DECAP_LOCAL)?,
            sources: take(&mut ebpf, MAP_DECAP_SOURCES)?,
            config: take(&mut ebpf, MAP_DECAP_CONFIG)?,
            stats: take(&mut ebpf, MAP_DECAP_STATS)?,
            gue_port: DEFAULT_GUE_PORT,
            _jumps: jumps,
            ebpf,
        })
    }

    /// The tail-called dsr-gue program, loaded (to test-run or measure).
    pub fn gue_program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(DECAP_GUE_PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load")
    }

    /// The loaded XDP program, to attach or test-run.
    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(DECAP_PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load")
    }

    /// Accepts tunnels whose outer destination is `addr`.
    pub fn add_local(&mut self, addr: IpAddr) -> Result<(), DecapError> {
        self.local
            .insert(map_key(addr), 1, 0)
            .map_err(|source| DecapError::Map {
                name: MAP_DECAP_LOCAL,
                source,
            })
    }

    /// Accepts tunnels to exactly `addrs`: the new ones go in before the old ones leave, so
    /// an address in both is never refused.
    pub fn set_local(&mut self, addrs: &[IpAddr]) -> Result<(), DecapError> {
        for addr in addrs {
            self.add_local(*addr)?;
        }
        let keys: Vec<IpAddr> = self
            .local
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| DecapError::Map {
                name: MAP_DECAP_LOCAL,
                source,
            })?
            .into_iter()
            .map(from_map_key)
            .collect();
        for stale in keys.into_iter().filter(|k| !addrs.contains(k)) {
            self.remove_local(stale)?;
        }
        Ok(())
    }

    /// Stops accepting tunnels to `addr`; absent is not an error.
    pub fn remove_local(&mut self, addr: IpAddr) -> Result<(), DecapError> {
        match self.local.remove(&map_key(addr)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DecapError::Map {
                name: MAP_DECAP_LOCAL,
                source,
            }),
        }
    }

    /// Decapsulates dsr-gue sent to UDP `port` (0: none), keeping the source filter as it is.
    pub fn set_gue_port(&mut self, port: u16) -> Result<(), DecapError> {
        let flags = self
            .config
            .get(&0, 0)
            .map_err(|source| DecapError::Map {
                name: MAP_DECAP_CONFIG,
                source,
            })?
            .flags;
        self.gue_port = port;
        self.write_config(flags)
    }

    fn write_config(&mut self, flags: u32) -> Result<(), DecapError> {
        let config = DecapConfig {
            flags,
            gue_port: self.gue_port,
            _pad: [0; 2],
        };
        self.config
            .set(0, config, 0)
            .map_err(|source| DecapError::Map {
                name: MAP_DECAP_CONFIG,
                source,
            })
    }

    /// Replaces the allowed outer source prefixes; empty allows any source. In a
    /// packet-safe order: new prefixes go in before the filter is switched on, and the
    /// filter goes off before the last prefix leaves, so no moment refuses a source both
    /// the old and the new setting allow.
    pub fn set_sources(&mut self, prefixes: &[SourcePrefix]) -> Result<(), DecapError> {
        let keys = prefixes
            .iter()
            .map(|p| p.key())
            .collect::<Result<Vec<_>, _>>()?;
        let map_error = |name| move |source| DecapError::Map { name, source };
        for key in &keys {
            self.sources
                .insert(key, 1, 0)
                .map_err(map_error(MAP_DECAP_SOURCES))?;
        }
        let flags = if keys.is_empty() {
            0
        } else {
            DECAP_FILTER_SOURCES
        };
        self.write_config(flags)?;
        let stale: Vec<Key<[u8; 16]>> = self
            .sources
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error(MAP_DECAP_SOURCES))?
            .into_iter()
            .filter(|old| {
                !keys
                    .iter()
                    .any(|new| new.prefix_len() == old.prefix_len() && new.data() == old.data())
            })
            .collect();
        for key in &stale {
            match self.sources.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(MAP_DECAP_SOURCES)(source)),
            }
        }
        Ok(())
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<DecapSnapshot, DecapError> {
        sum_counters(&self.stats)
    }
}

/// The addresses and prefixes a decap program whose maps are pinned in `dir` accepts,
/// without loading anything.
pub fn read_pinned_filters(dir: &Path) -> Result<DecapFilters, DecapError> {
    let open = |name: &'static str| {
        MapData::from_pin(dir.join(name)).map_err(|source| DecapError::Map { name, source })
    };
    let map_error = |name: &'static str| move |source| DecapError::Map { name, source };
    let local: HashMap<MapData, [u8; 16], u32> =
        HashMap::try_from(aya::maps::Map::HashMap(open(MAP_DECAP_LOCAL)?))
            .map_err(map_error(MAP_DECAP_LOCAL))?;
    let mut local: Vec<IpAddr> = local
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_error(MAP_DECAP_LOCAL))?
        .into_iter()
        .map(from_map_key)
        .collect();
    local.sort();
    let config: Array<MapData, DecapConfig> =
        Array::try_from(aya::maps::Map::Array(open(MAP_DECAP_CONFIG)?))
            .map_err(map_error(MAP_DECAP_CONFIG))?;
    let filtering = config
        .get(&0, 0)
        .map_err(map_error(MAP_DECAP_CONFIG))?
        .flags
        & DECAP_FILTER_SOURCES
        != 0;
    let mut sources = Vec::new();
    if filtering {
        let trie: LpmTrie<MapData, [u8; 16], u32> =
            LpmTrie::try_from(aya::maps::Map::LpmTrie(open(MAP_DECAP_SOURCES)?))
                .map_err(map_error(MAP_DECAP_SOURCES))?;
        for key in trie.keys() {
            sources.push(from_lpm_key(&key.map_err(map_error(MAP_DECAP_SOURCES))?));
        }
        sources.sort_by_key(|p| (p.addr, p.len));
    }
    Ok(DecapFilters { local, sources })
}

/// The counters of a decap program whose maps are pinned in `dir`, without loading
/// anything (what a status command needs while the program runs on).
pub fn read_pinned_counters(dir: &Path) -> Result<DecapSnapshot, DecapError> {
    let map_error = |source| DecapError::Map {
        name: MAP_DECAP_STATS,
        source,
    };
    let data = MapData::from_pin(dir.join(MAP_DECAP_STATS)).map_err(map_error)?;
    let stats = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(map_error)?;
    sum_counters(&stats)
}

fn sum_counters(stats: &PerCpuArray<MapData, Counter>) -> Result<DecapSnapshot, DecapError> {
    let counters = DecapStat::ALL
        .iter()
        .map(|stat| {
            let per_cpu = stats
                .get(&stat.index(), 0)
                .map_err(|source| DecapError::Map {
                    name: MAP_DECAP_STATS,
                    source,
                })?;
            let mut total = Counter::default();
            per_cpu.iter().for_each(|slot| total.merge(slot));
            Ok(total)
        })
        .collect::<Result<_, DecapError>>()?;
    Ok(DecapSnapshot { counters })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_masked_lpm_keys() {
        let v4 = SourcePrefix {
            addr: "198.18.7.9".parse().unwrap(),
            len: 24,
        }
        .key()
        .unwrap();
        assert_eq!(v4.prefix_len(), 120);
        assert_eq!(v4.data(), map_key("198.18.7.0".parse().unwrap()));
        let v6 = SourcePrefix {
            addr: "fd00::1:2".parse().unwrap(),
            len: 112,
        }
        .key()
        .unwrap();
        assert_eq!(v6.prefix_len(), 112);
        assert_eq!(v6.data(), map_key("fd00::1:0".parse().unwrap()));
        let any = SourcePrefix {
            addr: "::".parse().unwrap(),
            len: 0,
        }
        .key()
        .unwrap();
        assert_eq!(any.prefix_len(), 0);
        assert!(
            SourcePrefix {
                addr: "198.18.0.0".parse().unwrap(),
                len: 33
            }
            .key()
            .is_err()
        );
    }

    #[test]
    fn lpm_keys_read_back_as_the_prefixes_written() {
        for (addr, len) in [
            ("198.18.7.0", 24),
            ("0.0.0.0", 0),
            ("fd00::", 64),
            ("::", 0),
            ("::", 80),
        ] {
            let prefix = SourcePrefix {
                addr: addr.parse().unwrap(),
                len,
            };
            assert_eq!(from_lpm_key(&prefix.key().unwrap()), prefix, "{addr}/{len}");
        }
        assert_eq!(
            from_map_key(map_key("198.18.7.2".parse().unwrap())),
            "198.18.7.2".parse::<IpAddr>().unwrap()
        );
    }
}
