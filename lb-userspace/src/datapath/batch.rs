//! The `bpf(2)` batch commands (lookup, update, delete), typed over `Pod` keys and values.
//! A whole map walk or table write takes one syscall per few thousand entries instead of
//! one per entry. Every loop here is bounded.

use std::{io, os::fd::AsRawFd as _, os::fd::BorrowedFd};

use aya::Pod;

/// `union bpf_attr` for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_MAP_DELETE_ELEM`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

// The kernel reads these by offset (include/uapi/linux/bpf.h); a field out of place would
// send a pointer where a count belongs. Checked when this file compiles.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(offset_of!(BatchAttr, in_batch) == 0);
    assert!(offset_of!(BatchAttr, out_batch) == 8);
    assert!(offset_of!(BatchAttr, keys) == 16);
    assert!(offset_of!(BatchAttr, values) == 24);
    assert!(offset_of!(BatchAttr, count) == 32);
    assert!(offset_of!(BatchAttr, map_fd) == 36);
    assert!(offset_of!(BatchAttr, elem_flags) == 40);
    assert!(offset_of!(BatchAttr, flags) == 48);
    assert!(size_of::<BatchAttr>() == 56);
    assert!(offset_of!(ElemAttr, map_fd) == 0);
    assert!(offset_of!(ElemAttr, key) == 8);
    assert!(offset_of!(ElemAttr, value) == 16);
    assert!(offset_of!(ElemAttr, flags) == 24);
    assert!(size_of::<ElemAttr>() == 32);
};

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal "not supported" (not in libc).
const ENOTSUPP: i32 = 524;

/// Entries asked for per lookup call: 4,096 keys and values stay well inside a few pages
/// of memory each, and a million-entry map takes ~256 calls.
pub(crate) const LOOKUP_CHUNK: usize = 4096;

/// One `bpf(2)` call with `attr`.
///
/// # Safety
/// `attr` must be a valid `bpf_attr` prefix for `command`, its pointers valid for the
/// command (buffers with room for `count` entries, batch tokens u32s) until this returns.
unsafe fn bpf<A>(command: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: the caller's promise.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut::<A>(attr),
            size_of::<A>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether an error means the kernel lacks the command (not that it failed).
pub(crate) fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// Walks a hash map with `BPF_MAP_LOOKUP_BATCH`, handing each chunk of entries to `visit`
/// (which may stop the walk by returning false). At most `max_calls` calls; returns how
/// many were made. Entries deleted from buckets already walked do not disturb the walk
/// (the resume token is a bucket index).
pub(crate) fn walk_hash<K: Pod + Default, V: Pod + Default>(
    map: BorrowedFd<'_>,
    max_calls: u64,
    mut visit: impl FnMut(&[K], &[V]) -> bool,
) -> io::Result<u64> {
    let mut keys = vec![K::default(); LOOKUP_CHUNK];
    let mut values = vec![V::default(); LOOKUP_CHUNK];
    let mut resume_at: Option<u32> = None;
    let mut next = 0u32;
    for call in 1..=max_calls {
        let mut attr = BatchAttr {
            in_batch: resume_at
                .as_ref()
                .map_or(0, |at| std::ptr::from_ref::<u32>(at) as u64),
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: LOOKUP_CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold `count` entries of the map's key and value types
        // (Pod: any bytes are valid), the tokens are u32s; all outlive the call.
        let done = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let got = (attr.count as usize).min(LOOKUP_CHUNK);
        let go_on = got == 0 || visit(&keys[..got], &values[..got]);
        match done {
            Ok(()) if go_on => resume_at = Some(next),
            Ok(()) => return Ok(call),
            // ENOENT: the last bucket was read.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(call),
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::other(format!(
        "the map walk did not finish within {max_calls} batch lookups"
    )))
}

/// Updates `keys[i]` to `values[i]` for every i in one syscall.
pub(crate) fn update<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: map.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    let wanted = attr.count;
    // SAFETY: `keys` and `values` hold `count` entries each and outlive the call; the
    // kernel only reads them.
    unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }?;
    if attr.count != wanted {
        return Err(io::Error::other(format!(
            "batch update wrote {} of {wanted} entries",
            attr.count
        )));
    }
    Ok(())
}

/// What a batch delete did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_field_names,
    reason = "deleted, missing, syscalls: what the delete did"
)]
pub(crate) struct Deleted {
    pub(crate) deleted: u64,
    /// Keys that were gone already (the LRU or another deleter took them meanwhile).
    pub(crate) missing: u64,
    pub(crate) syscalls: u64,
}

/// Deletes `keys` with `BPF_MAP_DELETE_BATCH`. The kernel stops at the first key it cannot
/// delete and says how many it did: a key that vanished meanwhile (ENOENT) is skipped and
/// the rest retried, so at most `keys.len() + 1` calls. Kernels without batch deletes get
/// one `BPF_MAP_DELETE_ELEM` per key.
pub(crate) fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<Deleted> {
    let mut outcome = Deleted::default();
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len().min(u32::MAX as usize) as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `rest` holds `count` keys and outlives the call; the kernel only reads it.
        let done = unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
        outcome.syscalls += 1;
        let did = (attr.count as usize).min(rest.len());
        outcome.deleted += did as u64;
        match done {
            Ok(()) => rest = &rest[did..],
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                outcome.missing += 1;
                rest = rest.get(did + 1..).unwrap_or_default();
            }
            Err(error) if did == 0 && outcome.deleted == 0 && unsupported(&error) => {
                let one_by_one = delete_each(map, rest)?;
                outcome.deleted += one_by_one.deleted;
                outcome.missing += one_by_one.missing;
                outcome.syscalls += one_by_one.syscalls;
                return Ok(outcome);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(outcome)
}

/// One `BPF_MAP_DELETE_ELEM` per key; ENOENT is counted as missing.
fn delete_each<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<Deleted> {
    let mut outcome = Deleted::default();
    for key in keys {
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: std::ptr::from_ref::<K>(key) as u64,
            ..ElemAttr::default()
        };
        // SAFETY: `key` is one key of the map's key type, alive during the call.
        let done = unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) };
        outcome.syscalls += 1;
        match done {
            Ok(()) => outcome.deleted += 1,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => outcome.missing += 1,
            Err(error) => return Err(error),
        }
    }
    Ok(outcome)
}
