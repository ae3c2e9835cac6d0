//! Attaching the loaded program to interfaces, with clear errors for the usual mistakes.

use std::{ffi::CString, io};

use aya::programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId};
use thiserror::Error;
use tracing::warn;

use crate::cli::XdpModeArg;

#[derive(Debug, Error)]
pub enum AttachError {
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
}

/// An interface resolved to its index, as named by the operator.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

impl Interface {
    pub fn resolve(name: &str) -> Result<Self, AttachError> {
        let unknown = || AttachError::UnknownInterface(name.to_owned());
        let c_name = CString::new(name).map_err(|_| unknown())?;
        // SAFETY: c_name is a valid NUL-terminated string for the duration of the call.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if index == 0 {
            return Err(unknown());
        }
        Ok(Self {
            name: name.to_owned(),
            index,
        })
    }
}

/// Where the program ended up attached, for logs and detaching.
#[derive(Debug)]
pub struct Attachment {
    pub iface: Interface,
    pub mode: &'static str,
    pub link: XdpLinkId,
}

pub fn attach(
    program: &mut Xdp,
    iface: &Interface,
    mode: XdpModeArg,
) -> Result<Attachment, AttachError> {
    let attempt = |program: &mut Xdp, xdp_mode: XdpMode, mode_name: &'static str| {
        program
            .attach_to_if_index(iface.index, xdp_mode)
            .map(|link| Attachment {
                iface: iface.clone(),
                mode: mode_name,
                link,
            })
            .map_err(|source| classify(iface, mode_name, source))
    };
    match mode {
        XdpModeArg::Native => attempt(program, XdpMode::Driver, "native"),
        XdpModeArg::Skb => attempt(program, XdpMode::Skb, "skb"),
        XdpModeArg::Auto => match attempt(program, XdpMode::Driver, "native") {
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

fn classify(iface: &Interface, mode: &'static str, source: ProgramError) -> AttachError {
    match os_error(&source) {
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

/// The errno at the bottom of an aya error, wherever aya wrapped it.
fn os_error(error: &ProgramError) -> Option<i32> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
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

/// "outer: inner: innermost", for one-line logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
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
