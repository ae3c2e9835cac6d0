//! Refuses, before anything is loaded, a kernel older than lb needs
//! ([`crate::model::kernel`]), naming what it lacks; and one without BTF.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::model::kernel::{self, KernelVersion, MINIMUM};

const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("cannot read the kernel release from {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Linux {running} is too old: lb needs {MINIMUM} or later; it lacks {missing}")]
    TooOld {
        running: KernelVersion,
        missing: String,
    },
    #[error(
        "the kernel has no BTF ({VMLINUX_BTF} is missing): lb needs a kernel built with CONFIG_DEBUG_INFO_BTF"
    )]
    NoBtf,
}

/// The running kernel's version, if it has every feature lb uses. A release string that
/// does not parse (a custom kernel) is let through with a warning: the load says more.
pub fn check() -> Result<Option<KernelVersion>, KernelError> {
    let release = std::fs::read_to_string(OSRELEASE).map_err(|source| KernelError::Unreadable {
        path: PathBuf::from(OSRELEASE),
        source,
    })?;
    let running = kernel::parse_release(&release);
    if let Some(running) = running {
        let missing = kernel::missing(running);
        if !missing.is_empty() {
            let names: Vec<String> = missing
                .iter()
                .map(|f| format!("{} (Linux {})", f.name, f.since))
                .collect();
            return Err(KernelError::TooOld {
                running,
                missing: names.join(", "),
            });
        }
    } else {
        tracing::warn!(
            release = release.trim(),
            "cannot tell the kernel's version from its release; lb needs Linux {MINIMUM} or later"
        )
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(KernelError::NoBtf);
    }
    Ok(running)
}
