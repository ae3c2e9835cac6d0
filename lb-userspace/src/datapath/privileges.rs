//! Checks, before touching the kernel, that this process may load and attach XDP programs.

use std::fs;

use thiserror::Error;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error)]
#[error(
    "lb needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) to load and attach XDP \
     programs; try again with sudo"
)]
pub(crate) struct NotPrivileged;

/// Succeeds when the effective capability set allows loading BPF and changing interfaces.
/// CAP_PERFMON too: without it the verifier refuses the program's pointer arithmetic on
/// packet pointers ("pointer -= pointer prohibited"); CAP_SYS_ADMIN stands for both.
pub(crate) fn check() -> Result<(), NotPrivileged> {
    let effective = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_capabilities(&status));
    match effective {
        Some(caps) if allows_xdp(caps) => Ok(()),
        // Without /proc we cannot tell; the kernel will answer EPERM if it disagrees.
        None => Ok(()),
        Some(_) => Err(NotPrivileged),
    }
}

fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn allows_xdp(caps: u64) -> bool {
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tlb\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_capabilities(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_capabilities("Name:\tlb\n"), None);
    }

    #[test]
    fn needs_net_admin_and_bpf_with_perfmon_or_sys_admin() {
        assert!(allows_xdp(u64::MAX));
        assert!(allows_xdp(
            1 << CAP_NET_ADMIN | 1 << CAP_BPF | 1 << CAP_PERFMON
        ));
        assert!(!allows_xdp(1 << CAP_NET_ADMIN | 1 << CAP_BPF));
        assert!(allows_xdp(1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN));
        assert!(!allows_xdp(1 << CAP_BPF));
        assert!(!allows_xdp(0));
    }
}
