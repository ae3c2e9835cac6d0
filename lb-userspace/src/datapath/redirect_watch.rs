//! Counting frames the kernel drops after the datapath redirected them (`xdp_redirect_lost`):
//! the tracing program `lb_redirect_lost` on the tracepoint xdp:xdp_redirect_err, told the
//! id of this datapath's TX_PORTS so that other XDP programs on the host do not count.
//! Without tracefs, or on a kernel whose record differs, nothing is counted: the caller
//! says so and the datapath runs on.

use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, Map},
    programs::TracePoint,
};
use lb_common::consts::{
    MAP_REDIRECT_WATCH, MAP_TX_PORTS, PROGRAM_REDIRECT_LOST, REDIRECT_ERR_MAP_ID_OFFSET,
    REDIRECT_ERR_TRACEPOINT,
};
use rustix::{
    fs::statfs,
    mount::{MountFlags, mount},
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RedirectWatchError {
    #[error(
        "the tracepoint {0}:{1} is not readable under /sys/kernel/tracing or /sys/kernel/debug/tracing"
    )]
    NoFormat(&'static str, &'static str),
    #[error(
        "the tracepoint's record has map_id at {found:?}, the datapath reads it at {REDIRECT_ERR_MAP_ID_OFFSET}"
    )]
    Layout { found: Option<usize> },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("reading TX_PORTS's id")]
    MapInfo(#[source] aya::maps::MapError),
    #[error("writing {MAP_REDIRECT_WATCH}")]
    Watch(#[source] aya::maps::MapError),
    #[error("loading or attaching {PROGRAM_REDIRECT_LOST}")]
    Program(#[source] aya::programs::ProgramError),
}

/// Where tracefs may be mounted.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Loads `lb_redirect_lost`, points it at TX_PORTS and attaches it. The attachment lives
/// as long as `ebpf`.
pub fn attach(ebpf: &mut Ebpf) -> Result<(), RedirectWatchError> {
    let (category, name) = REDIRECT_ERR_TRACEPOINT;
    let format = tracepoint_format(category, name)
        .or_else(|| mount_tracefs().then(|| tracepoint_format(category, name))?)
        .ok_or(RedirectWatchError::NoFormat(category, name))?;
    let found = field_offset(&format, "map_id", 4);
    if found != Some(REDIRECT_ERR_MAP_ID_OFFSET) {
        return Err(RedirectWatchError::Layout { found });
    }
    let tx_ports = match ebpf.map(MAP_TX_PORTS) {
        Some(Map::DevMapHash(data) | Map::DevMap(data)) => {
            data.info().map_err(RedirectWatchError::MapInfo)?.id()
        }
        _ => return Err(RedirectWatchError::Missing(MAP_TX_PORTS)),
    };
    let watch = ebpf
        .map_mut(MAP_REDIRECT_WATCH)
        .ok_or(RedirectWatchError::Missing(MAP_REDIRECT_WATCH))?;
    Array::<_, u32>::try_from(watch)
        .and_then(|mut watch| watch.set(0, tx_ports, 0))
        .map_err(RedirectWatchError::Watch)?;
    let program: &mut TracePoint = ebpf
        .program_mut(PROGRAM_REDIRECT_LOST)
        .and_then(|p| p.try_into().ok())
        .ok_or(RedirectWatchError::Missing(PROGRAM_REDIRECT_LOST))?;
    program.load().map_err(RedirectWatchError::Program)?;
    program
        .attach(category, name)
        .map_err(RedirectWatchError::Program)?;
    Ok(())
}

fn tracepoint_format(category: &str, name: &str) -> Option<String> {
    TRACEFS.iter().find_map(|root| {
        std::fs::read_to_string(Path::new(root).join(format!("events/{category}/{name}/format")))
            .ok()
    })
}

/// `statfs`'s `f_type` of tracefs.
const TRACEFS_MAGIC: i64 = 0x7472_6163;

/// Mounts tracefs on /sys/kernel/tracing when nothing is mounted there, as perf does: many
/// hosts boot without it. Whether it mounted.
fn mount_tracefs() -> bool {
    let root = Path::new(TRACEFS[0]);
    if !root.is_dir() || statfs(root).is_ok_and(|stat| stat.f_type == TRACEFS_MAGIC) {
        return false;
    }
    match mount("tracefs", root, "tracefs", MountFlags::empty(), None) {
        Ok(()) => {
            tracing::info!("mounted tracefs on {}", root.display());
            true
        }
        Err(error) => {
            tracing::debug!(%error, "mounting tracefs failed");
            false
        }
    }
}

/// The offset of field `name` of `size` bytes in a tracepoint's `format` file, whose lines
/// read `\tfield:u32 map_id;\toffset:28;\tsize:4;\tsigned:0;`.
fn field_offset(format: &str, name: &str, size: usize) -> Option<usize> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        if declaration.rsplit(' ').next() != Some(name) {
            return None;
        }
        let offset = parts.next()?.strip_prefix("offset:")?.parse().ok()?;
        let width: usize = parts.next()?.strip_prefix("size:")?.parse().ok()?;
        (width == size).then_some(offset)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format of xdp:xdp_redirect_err as Linux 6.18 prints it.
    const FORMAT: &str = "name: xdp_redirect_err\nID: 581\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int prog_id;\toffset:8;\tsize:4;\tsigned:1;\n\
        \tfield:u32 act;\toffset:12;\tsize:4;\tsigned:0;\n\
        \tfield:int to_ifindex;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:u32 map_id;\toffset:28;\tsize:4;\tsigned:0;\n\
        \tfield:int map_index;\toffset:32;\tsize:4;\tsigned:1;\n";

    #[test]
    fn the_map_id_is_found_where_the_datapath_reads_it() {
        assert_eq!(
            field_offset(FORMAT, "map_id", 4),
            Some(REDIRECT_ERR_MAP_ID_OFFSET)
        );
        assert_eq!(field_offset(FORMAT, "map_index", 4), Some(32));
        assert_eq!(field_offset(FORMAT, "map_id", 8), None, "another width");
        assert_eq!(field_offset(FORMAT, "id", 4), None, "whole names only");
        assert_eq!(field_offset("", "map_id", 4), None);
    }
}
