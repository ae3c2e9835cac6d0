//! Network namespaces, as far as pins need them: bpffs and /run are shared by every network
//! namespace of a host while interface names and indexes repeat in each, so a pin directory
//! says whose it is by the namespace's inode ([`current`]), and a pinned XDP link tells
//! whether it runs in this namespace ([`pinned_link_place`]).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
        unix::fs::MetadataExt as _,
    },
    path::Path,
};

use crate::datapath::netlink;

/// The inode of this process's network namespace (`/proc/self/ns/net`), the number
/// `ip netns identify`, `lsns` and `readlink /proc/<pid>/ns/net` (`net:[<inode>]`) show.
pub(crate) fn current() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino())
}

/// Where the XDP link pinned at a path runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkPlace {
    /// No pin there, or not an XDP link that can be read.
    Unknown,
    /// Its interface is gone: the link is defunct and runs nowhere.
    Defunct,
    /// On interface `ifindex` of this namespace, which runs its program.
    Here { ifindex: u32 },
    /// On interface `ifindex` of some namespace; this namespace's interface of that index
    /// (if any) does not run its program: another namespace's link.
    Elsewhere { ifindex: u32 },
}

/// Where the XDP link pinned at `path` runs: the link's own interface index (0 once the
/// interface is gone) and whether this namespace's interface of that index runs the
/// link's program.
pub(crate) fn pinned_link_place(path: &Path) -> LinkPlace {
    let Some((ifindex, program_id)) = pinned_xdp_link(path) else {
        return LinkPlace::Unknown;
    };
    if ifindex == 0 {
        return LinkPlace::Defunct;
    }
    match netlink::xdp_program(ifindex) {
        Ok(Some(xdp)) if xdp.program_id == program_id => LinkPlace::Here { ifindex },
        _ => LinkPlace::Elsewhere { ifindex },
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// `bpf_attr` for `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct GetInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of `struct bpf_link_info`: type, id, program id, then the union whose XDP
/// member is `{ ifindex: u32 }` (at offset 16); room for the rest of the union.
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    union: [u32; 16],
}

/// The interface index and program id of the XDP link pinned at `path` (aya's link info
/// has no interface index).
fn pinned_xdp_link(path: &Path) -> Option<(u32, u32)> {
    let name = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut get = ObjGet {
        pathname: name.as_ptr() as u64,
        ..ObjGet::default()
    };
    // SAFETY: a valid BPF_OBJ_GET attr whose pathname points at a NUL-terminated string
    // that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw mut get,
            size_of::<ObjGet>() as u32,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfo::default();
    let mut attr = GetInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<LinkInfo>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: a valid BPF_OBJ_GET_INFO_BY_FD attr; `info` has room for `info_len` bytes
    // and lives until the call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<GetInfo>() as u32,
        )
    };
    (rc == 0 && info.link_type == BPF_LINK_TYPE_XDP).then_some((info.union[0], info.prog_id))
}
