//! Waiting for the kernel to let go of lb's XDP programs after `lb down`.
//!
//! Removing a link's pin drops the kernel's last reference to it from a work queue, not
//! in the unlink itself: the interface can still run the program for a moment after the
//! pins are gone. `lb down` says "detached" only once the interfaces say so.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::datapath::{attach::Interface, netlink};

/// How long the kernel gets to release the links: milliseconds, normally.
pub(crate) const RELEASE_WITHIN: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// An interface and the XDP program it ran before the pins went.
#[derive(Clone, Debug)]
pub(crate) struct Running {
    name: String,
    ifindex: u32,
    program_id: u32,
}

#[derive(Debug, Error)]
pub(crate) enum ReleaseError {
    #[error(
        "{} still run{} lb's XDP program {:?} after the pins were removed: another \
         process holds its link (`bpftool link show` names it; stop that process)",
        .0.join(", "), if .0.len() == 1 { "s" } else { "" }, RELEASE_WITHIN
    )]
    StillAttached(Vec<String>),
}

/// The program each interface runs now (those with none are left out).
pub(crate) fn running_on(ifaces: &[Interface]) -> Vec<Running> {
    ifaces
        .iter()
        .filter_map(|iface| {
            let xdp = netlink::xdp_program(iface.index).ok().flatten()?;
            Some(Running {
                name: iface.name.clone(),
                ifindex: iface.index,
                program_id: xdp.program_id,
            })
        })
        .collect()
}

/// Returns once no interface of `before` runs the program it ran then (another program,
/// attached since, is not lb's to wait for), or fails naming those that still do after
/// [`RELEASE_WITHIN`].
pub(crate) fn wait_released(before: &[Running]) -> Result<(), ReleaseError> {
    let deadline = Instant::now() + RELEASE_WITHIN;
    loop {
        let still: Vec<String> = before
            .iter()
            .filter(|was| {
                netlink::xdp_program(was.ifindex)
                    .ok()
                    .flatten()
                    .is_some_and(|now| now.program_id == was.program_id)
            })
            .map(|was| was.name.clone())
            .collect();
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReleaseError::StillAttached(still));
        }
        std::thread::sleep(POLL);
    }
}
