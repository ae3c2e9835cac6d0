//! The embedded XDP object: sizing its maps and loading it.

use aya::{Ebpf, EbpfLoader, maps::ProgramArray, programs::Xdp};
use lb_common::consts::{
    GLOBAL_ABLATE, GLOBAL_CT_TIMEOUTS, GLOBAL_FLOW_CACHE_NS, GLOBAL_HASH_SEED, GLOBAL_MAGLEV_SIZE,
    GLOBAL_NEW_FLOW_LIMIT, GLOBAL_PROVEN_FILTER_WORDS, MAP_BACKEND_HOPS, MAP_BACKEND_STATS,
    MAP_BACKENDS, MAP_CONNTRACK, MAP_CT_UNPROVEN, MAP_ENDPOINTS, MAP_JUMPS, MAP_MAGLEV,
    MAP_PROVEN_FILTER, MAP_SOURCE_RANGES, MAP_VIP_STATS, MAP_VIPS, PINNED_MAPS, PROGRAM_NAME,
    TAIL_PROGRAMS,
};
use lb_common::consts::{
    GLOBAL_RING_CPUS, GLOBAL_UNPROVEN_RING_SLOTS, MAP_UNPROVEN_RING, unproven_ring_slots,
};
use lb_common::encap::{GLOBAL_ENCAP_SOURCE_V4, GLOBAL_ENCAP_SOURCE_V6};
use lb_common::flow::{proven_filter_entries, proven_filter_words};
use thiserror::Error;

use crate::{
    datapath::pins::PinDir,
    model::limits::{Limits, Options},
};

/// The eBPF object built by build.rs from `lb-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// The build of [`OBJECT`]: the first 12 hex digits of its SHA-256, computed by build.rs
/// (hashing it at every start of the CLI would cost more than the rest of a command).
pub const DATAPATH_BUILD: &str = env!("LB_DATAPATH_BUILD");

/// The build id of an eBPF object: [`DATAPATH_BUILD`] for the embedded one, the same hash
/// of the bytes of another (`lb run --bpf-object`).
pub fn build_id(custom: Option<&[u8]>) -> String {
    use sha2::Digest as _;
    match custom {
        None => DATAPATH_BUILD.to_owned(),
        Some(object) => sha2::Sha256::digest(object)
            .iter()
            .take(6)
            .map(|byte| format!("{byte:02x}"))
            .collect(),
    }
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
    let flow_cache_ns = options.flow_cache_ns();
    let filter_words = proven_filter_words(limits.conntrack_capacity);
    // Possible CPUs: every one the kernel may run the program on has a ring.
    let cpus = aya::util::nr_cpus().map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let ring_slots = unproven_ring_slots(limits.unproven_capacity(), cpus);
    loader
        .override_global(GLOBAL_MAGLEV_SIZE, &limits.maglev_size, true)
        .override_global(GLOBAL_FLOW_CACHE_NS, &flow_cache_ns, true)
        .override_global(GLOBAL_PROVEN_FILTER_WORDS, &filter_words, true)
        .override_global(GLOBAL_UNPROVEN_RING_SLOTS, &ring_slots, true)
        .override_global(GLOBAL_RING_CPUS, &cpus, true)
        .override_global(GLOBAL_CT_TIMEOUTS, &options.timeouts_ns, true)
        .override_global(GLOBAL_ABLATE, &options.ablate, true)
        .override_global(GLOBAL_HASH_SEED, &options.hash_seed, true)
        .override_global(GLOBAL_NEW_FLOW_LIMIT, &options.new_flow_limit, true)
        .override_global(lb_common::gue::GLOBAL_GUE_PORT, &options.gue_port, true)
        .override_global(
            GLOBAL_ENCAP_SOURCE_V4,
            &options.encap_v4.unwrap_or_default(),
            true,
        )
        .override_global(
            GLOBAL_ENCAP_SOURCE_V6,
            &options.encap_v6.unwrap_or_default(),
            true,
        )
        .map_max_entries(MAP_VIPS, limits.max_vips * 2)
        .map_max_entries(MAP_VIP_STATS, limits.max_vips)
        .map_max_entries(
            lb_common::consts::MAP_VIP_DROPS,
            limits.max_vips * lb_common::stats::DROP_SLOTS,
        )
        .map_max_entries(MAP_MAGLEV, limits.maglev_slots())
        .map_max_entries(lb_common::consts::MAP_MAGLEV_HOPS, limits.maglev_slots())
        .map_max_entries(MAP_CONNTRACK, limits.conntrack_capacity)
        .map_max_entries(MAP_CT_UNPROVEN, limits.unproven_capacity())
        .map_max_entries(MAP_UNPROVEN_RING, ring_slots)
        .map_max_entries(
            MAP_PROVEN_FILTER,
            proven_filter_entries(proven_filter_words(limits.conntrack_capacity)),
        )
        .map_max_entries(MAP_BACKENDS, limits.max_backends)
        .map_max_entries(MAP_BACKEND_STATS, limits.max_backends)
        .map_max_entries(MAP_BACKEND_HOPS, limits.max_backends)
        .map_max_entries(lb_common::consts::MAP_QUIC_CONFIGS, limits.max_vips)
        .map_max_entries(
            lb_common::consts::MAP_QUIC_SERVERS,
            limits.max_backends * lb_common::quic::CONFIG_IDS as u32,
        )
        .map_max_entries(MAP_ENDPOINTS, limits.endpoints_capacity())
        .map_max_entries(MAP_SOURCE_RANGES, limits.source_ranges_capacity())
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

/// Loads the programs `lb` tail-calls (ICMP, too-big answers, DSR, later fragments) and
/// registers them in the JUMPS map, replacing whatever a previous daemon registered in a
/// pinned one. Until this runs, `lb` passes ICMP to the kernel and drops too-big packets
/// and later fragments (counted). Returns the programs that found no slot: a JUMPS map
/// pinned by an earlier release is adopted as it is, with fewer slots (its later
/// fragments stay dropped until `lb down` lets the next start create the map anew).
pub fn install_tail_calls(ebpf: &mut Ebpf) -> Result<Vec<&'static str>, TailCallError> {
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
    let mut without_slot = Vec::new();
    for (name, index, fd) in fds {
        match jumps.set(index, &fd, 0) {
            Ok(()) => {}
            // The kernel's answer for an index past a program array's end.
            Err(aya::maps::MapError::SyscallError(error))
                if error.io_error.raw_os_error()
                    == Some(rustix::io::Errno::TOOBIG.raw_os_error()) =>
            {
                without_slot.push(name);
            }
            Err(aya::maps::MapError::OutOfBounds { .. }) => without_slot.push(name),
            Err(source) => return Err(TailCallError::Register { name, source }),
        }
    }
    Ok(without_slot)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
pub(crate) fn raise_memlock_limit() -> rustix::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(
        Resource::Memlock,
        Rlimit {
            current: None,
            maximum: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_id_is_the_hash_build_rs_computed() {
        assert_eq!(build_id(Some(OBJECT)), DATAPATH_BUILD);
        assert_eq!(DATAPATH_BUILD.len(), 12);
        assert_ne!(build_id(Some(b"another object")), DATAPATH_BUILD);
    }
}
