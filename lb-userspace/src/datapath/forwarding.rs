//! Kernel settings the datapath depends on, checked before anything is loaded:
//! `bpf_fib_lookup` refuses to forward (BPF_FIB_LKUP_RET_FWD_DISABLED) packets that arrive
//! on an interface with forwarding off, so lb would drop every balanced packet there.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    const fn sysctl_dir(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum ForwardingError {
    #[error(
        "{family} forwarding is off on {iface}: bpf_fib_lookup refuses to forward packets that \
         arrive there, so lb would drop them; turn it on with `sysctl -w {sysctl}=1`"
    )]
    Off {
        iface: String,
        family: &'static str,
        sysctl: String,
    },
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
}

/// The sysctl name of an interface's forwarding switch. A dot in an interface name (a VLAN,
/// `eth0.100`) is written `/` in sysctl names.
pub(crate) fn sysctl_name(iface: &str, family: Family) -> String {
    format!(
        "net.{}.conf.{}.forwarding",
        family.sysctl_dir(),
        iface.replace('.', "/")
    )
}

/// Refuses the first interface on which `family` forwarding is off.
pub(crate) fn check<'a>(
    ifaces: impl IntoIterator<Item = &'a str>,
    family: Family,
) -> Result<(), ForwardingError> {
    check_under(Path::new("/proc/sys/net"), ifaces, family)
}

fn check_under<'a>(
    root: &Path,
    ifaces: impl IntoIterator<Item = &'a str>,
    family: Family,
) -> Result<(), ForwardingError> {
    for iface in ifaces {
        let path = root
            .join(family.sysctl_dir())
            .join("conf")
            .join(iface)
            .join("forwarding");
        let text = std::fs::read_to_string(&path).map_err(|e| ForwardingError::Unreadable {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if text.trim() == "0" {
            return Err(ForwardingError::Off {
                iface: iface.to_owned(),
                family: match family {
                    Family::V4 => "IPv4",
                    Family::V6 => "IPv6",
                },
                sysctl: sysctl_name(iface, family),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_interface_with_forwarding_off_is_named_with_its_sysctl() {
        let root = std::env::temp_dir().join(format!("lb-fwd-{}", std::process::id()));
        for (iface, value) in [("eth0", "1\n"), ("eth1", "0\n")] {
            let dir = root.join("ipv4/conf").join(iface);
            std::fs::create_dir_all(&dir).expect("create dir");
            std::fs::write(dir.join("forwarding"), value).expect("write");
        }
        assert_eq!(check_under(&root, ["eth0"], Family::V4), Ok(()));
        let error = check_under(&root, ["eth0", "eth1"], Family::V4).expect_err("eth1 is off");
        assert!(
            error
                .to_string()
                .contains("sysctl -w net.ipv4.conf.eth1.forwarding=1"),
            "{error}"
        );
        let missing = check_under(&root, ["eth0"], Family::V6).expect_err("no ipv6 dir");
        assert!(matches!(missing, ForwardingError::Unreadable { .. }));
        std::fs::remove_dir_all(&root).expect("remove the scratch tree");
    }

    #[test]
    fn vlan_dots_become_slashes() {
        assert_eq!(
            sysctl_name("eth0.100", Family::V6),
            "net.ipv6.conf.eth0/100.forwarding"
        );
    }
}
