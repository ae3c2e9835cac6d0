//! What the loaded datapath's maps cost in kernel memory: each map the programs use, with
//! the kernel's own figure for it (`memlock:` in /proc/self/fdinfo of a descriptor of the
//! map), the number `bpftool map show` prints as `memlock`.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf,
    maps::{MapError, MapInfo},
    programs::ProgramError,
};
use lb_common::consts::{PROGRAM_NAME, TAIL_PROGRAMS};
use thiserror::Error;

use crate::model::memory::{MapMemory, MemoryReport};

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("the eBPF object has no loaded program {0}")]
    NoProgram(&'static str),
    #[error("reading the program's map ids")]
    Program(#[source] ProgramError),
    #[error("this kernel does not list the maps a program uses")]
    NoMapIds,
    #[error("opening map {id}")]
    Map {
        id: u32,
        #[source]
        source: MapError,
    },
    #[error("reading {path}")]
    FdInfo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no memlock line")]
    NoMemlock { path: String },
}

/// Every map that `lb` or a program it tail-calls uses, each once, with its memory.
pub fn of_datapath(ebpf: &Ebpf) -> Result<MemoryReport, MemoryError> {
    let mut ids = Vec::new();
    for name in std::iter::once(PROGRAM_NAME).chain(TAIL_PROGRAMS.map(|(name, _)| name)) {
        let program = ebpf.program(name).ok_or(MemoryError::NoProgram(name))?;
        let info = program.info().map_err(MemoryError::Program)?;
        ids.extend(
            info.map_ids()
                .map_err(MemoryError::Program)?
                .ok_or(MemoryError::NoMapIds)?,
        );
    }
    ids.sort_unstable();
    ids.dedup();
    let maps = ids
        .into_iter()
        .map(|id| {
            let map_error = |source| MemoryError::Map { id, source };
            let info = MapInfo::from_id(id).map_err(map_error)?;
            let fd = info.fd().map_err(map_error)?;
            Ok(MapMemory {
                name: info.name_as_str().unwrap_or_default().to_owned(),
                bytes: memlock(fd.as_fd().as_raw_fd())?,
            })
        })
        .collect::<Result<Vec<_>, MemoryError>>()?;
    Ok(MemoryReport::new(maps))
}

/// The `memlock:` figure of this process's descriptor `fd`.
fn memlock(fd: i32) -> Result<u64, MemoryError> {
    let path = format!("/proc/self/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).map_err(|source| MemoryError::FdInfo {
        path: path.clone(),
        source,
    })?;
    parse_memlock(&text).ok_or(MemoryError::NoMemlock { path })
}

fn parse_memlock(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_is_read_from_a_map_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2071\nmap_type:\t2\n\
                      key_size:\t4\nvalue_size:\t4\nmax_entries:\t8388736\nmap_flags:\t0x0\n\
                      map_extra:\t0x0\nmemlock:\t67110208\nmap_id:\t52\nfrozen:\t0\n";
        assert_eq!(parse_memlock(fdinfo), Some(67_110_208));
        assert_eq!(parse_memlock("pos:\t0\n"), None);
    }
}
