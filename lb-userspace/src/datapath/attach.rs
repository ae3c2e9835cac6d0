//! Attaching the loaded program to interfaces, with clear errors for the usual mistakes.

use std::io;

use aya::programs::{
    ProgramError, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::{XdpLink, XdpLinkId},
};
use rustix::net::{AddressFamily, SocketType, netdevice::name_to_index, socket};
use thiserror::Error;
use tracing::{info, warn};

use crate::datapath::pins::PinDir;
use crate::model::error_chain::error_chain;

/// How to attach: native (driver), skb (generic), or native else skb with a warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttachMode {
    Auto,
    Native,
    Skb,
}

#[derive(Debug, Error)]
pub(crate) enum AttachError {
    #[error("unknown interface `{0}` (list interfaces with `ip link`)")]
    UnknownInterface(String),
    #[error(
        "interface `{iface}` already has an XDP program attached; detach it first \
         (`ip link set dev {iface} xdp off`) or stop the lb that owns it"
    )]
    AlreadyAttached { iface: String },
    #[error("attaching to `{iface}` in {mode} mode failed")]
    Failed {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "the XDP link on `{iface}` cannot be pinned ({reason}); without a pin the datapath would stop with the daemon"
    )]
    Pin { iface: String, reason: String },
    #[error(
        "cannot take over the XDP link pinned for `{iface}` ({reason}); it keeps forwarding with the previous program"
    )]
    Adopt { iface: String, reason: String },
}

/// An interface resolved to its index, as named by the operator.
#[derive(Clone, Debug)]
pub(crate) struct Interface {
    pub(crate) name: String,
    pub(crate) index: u32,
}

impl Interface {
    pub(crate) fn resolve(name: &str) -> Result<Self, AttachError> {
        let unknown = || AttachError::UnknownInterface(name.to_owned());
        // SIOCGIFINDEX needs a socket, any socket.
        let socket = socket(AddressFamily::INET, SocketType::DGRAM, None).map_err(|_| unknown())?;
        let index = name_to_index(&socket, name).map_err(|_| unknown())?;
        Ok(Self {
            name: name.to_owned(),
            index,
        })
    }
}

/// The hardware (MAC) address of interface `name` (SIOCGIFHWADDR): the datapath forwards
/// only frames addressed to it. Read again at every sweep, so a changed MAC is followed.
pub(crate) fn hardware_address(name: &str) -> io::Result<[u8; 6]> {
    let socket = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    // SAFETY: a zeroed ifreq is valid; the name is copied in bounds (at most IFNAMSIZ - 1
    // bytes, NUL-terminated by the zeroing).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (slot, &byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes the address inside `request`, which
    // lives across the call; the descriptor is valid.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SIOCGIFHWADDR,
            &mut request,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
    let address = unsafe { request.ifr_ifru.ifru_hwaddr };
    // Only an Ethernet address is what the datapath compares frames with.
    if address.sa_family != libc::ARPHRD_ETHER {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "not an Ethernet interface (hardware type {})",
                address.sa_family
            ),
        ));
    }
    let data = address.sa_data;
    Ok(std::array::from_fn(|i| data[i] as u8))
}

/// Where the program ended up attached, for logs and detaching.
#[derive(Debug)]
pub(crate) struct Attachment {
    pub(crate) mode: &'static str,
    pub(crate) link: XdpLinkId,
}

pub(crate) fn attach(
    program: &mut Xdp,
    iface: &Interface,
    mode: AttachMode,
) -> Result<Attachment, AttachError> {
    let attempt = |program: &mut Xdp, xdp_mode: XdpMode, mode_name: &'static str| {
        program
            .attach_to_if_index(iface.index, xdp_mode)
            .map(|link| Attachment {
                mode: mode_name,
                link,
            })
            .map_err(|source| classify(iface, mode_name, source))
    };
    match mode {
        AttachMode::Native => attempt(program, XdpMode::Driver, "native"),
        AttachMode::Skb => attempt(program, XdpMode::Skb, "skb"),
        AttachMode::Auto => match attempt(program, XdpMode::Driver, "native") {
            Err(error @ AttachError::Failed { .. }) => {
                warn!(
                    iface = %iface.name,
                    error = %error_chain(&error),
                    "native XDP unavailable, falling back to skb (generic) mode, which is slower"
                );
                attempt(program, XdpMode::Skb, "skb")
            }
            other => other,
        },
    }
}

/// An interface the datapath runs on, and the pinned link that keeps it there after the
/// daemon exits. Dropping this closes the daemon's handle only; the pin keeps forwarding.
#[derive(Debug)]
pub(crate) struct PinnedAttachment {
    pub(crate) iface: Interface,
    /// `native`, `skb`, or `adopted` for a link an earlier run pinned (its mode unchanged).
    pub(crate) mode: &'static str,
    _link: FdLink,
}

/// Runs `program` on `iface` through a link pinned in `pins`. A link an earlier run pinned
/// is adopted: the new program replaces the old one in a single atomic update, so no packet
/// misses the datapath. Otherwise the program is attached and the new link pinned.
pub(crate) fn attach_pinned(
    program: &mut Xdp,
    iface: &Interface,
    mode: AttachMode,
    pins: &PinDir,
) -> Result<PinnedAttachment, AttachError> {
    attach_pinned_at(program, iface, mode, &pins.link_path(&iface.name))
}

/// [`attach_pinned`] with the link pinned at `path` (`lb decap` keeps its own layout).
pub(crate) fn attach_pinned_at(
    program: &mut Xdp,
    iface: &Interface,
    mode: AttachMode,
    path: &std::path::Path,
) -> Result<PinnedAttachment, AttachError> {
    let path = path.to_owned();
    if path.exists() {
        match replace_program(program, &path) {
            Ok(link) => {
                return Ok(PinnedAttachment {
                    iface: iface.clone(),
                    mode: "adopted",
                    _link: link,
                });
            }
            Err((error, Some(libc::ENOLINK))) => {
                // The link's interface went away (it is defunct): start over on this one.
                warn!(iface = %iface.name, %error, "pinned link is defunct, attaching anew");
                if let Err(error) = std::fs::remove_file(&path) {
                    // Attaching anew pins over it, or says why it cannot.
                    warn!(pin = %path.display(), %error, "could not remove the defunct link's pin");
                }
            }
            Err((reason, _)) => {
                // Anything else leaves the pinned datapath running as it is.
                return Err(AttachError::Adopt {
                    iface: iface.name.clone(),
                    reason,
                });
            }
        }
    }
    let attachment = attach(program, iface, mode)?;
    let pin_error = |reason: String| AttachError::Pin {
        iface: iface.name.clone(),
        reason,
    };
    let link = program
        .take_link(attachment.link)
        .map_err(|e| pin_error(error_chain(&e)))?;
    let link = FdLink::try_from(link).map_err(|_| {
        pin_error("the kernel attached it without a bpf_link (Linux 5.9 or later needed)".into())
    })?;
    let pinned = link.pin(&path).map_err(|e| pin_error(error_chain(&e)))?;
    info!(iface = %iface.name, path = %path.display(), "pinned XDP link");
    Ok(PinnedAttachment {
        iface: iface.clone(),
        mode: attachment.mode,
        _link: pinned.into(),
    })
}

/// Swaps `program` into the link pinned at `path`. Errors carry text for the operator and
/// the errno, if there is one.
pub(crate) fn replace_program(
    program: &mut Xdp,
    path: &std::path::Path,
) -> Result<FdLink, (String, Option<i32>)> {
    fn fail(e: &(dyn std::error::Error + 'static)) -> (String, Option<i32>) {
        (error_chain(e), errno(e))
    }
    let link: FdLink = PinnedLink::from_pin(path).map_err(|e| fail(&e))?.into();
    let link = XdpLink::try_from(link).map_err(|e| fail(&e))?;
    let id = program.attach_to_link(link).map_err(|e| fail(&e))?;
    let link = program.take_link(id).map_err(|e| fail(&e))?;
    FdLink::try_from(link).map_err(|e| fail(&e))
}

/// The errno at the bottom of an error chain, wherever aya wrapped it.
fn errno(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        if let Some(aya::programs::xdp::XdpError::NetlinkError(netlink)) = error.downcast_ref()
            && let Some(code) = netlink.raw_os_error()
        {
            return Some(code);
        }
        current = error.source();
    }
    None
}

fn classify(iface: &Interface, mode: &'static str, source: ProgramError) -> AttachError {
    match errno(&source) {
        Some(libc::EBUSY | libc::EEXIST) => AttachError::AlreadyAttached {
            iface: iface.name.clone(),
        },
        _ => AttachError::Failed {
            iface: iface.name.clone(),
            mode,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_invalid_names_are_reported_by_name() {
        for name in ["lb-test-no-such-if", "bad\0name", ""] {
            let error = Interface::resolve(name).expect_err("must not resolve");
            assert!(matches!(&error, AttachError::UnknownInterface(n) if n == name));
        }
    }

    #[test]
    fn loopback_resolves() {
        let lo = Interface::resolve("lo").expect("every namespace has lo");
        assert!(lo.index > 0);
    }
}
