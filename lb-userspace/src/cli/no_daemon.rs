//! What `lb` says when no daemon answers: how to start one, where its log is, and whether
//! a datapath it left pinned still forwards without it.

use std::path::Path;

use crate::{
    api::client::{ClientError, DEFAULT_SOCKET, SOCKET_ENV},
    datapath::pins::{DEFAULT_PIN_DIR, pinned_links_in},
};

/// Where a packaged install puts the unit (`cargo xtask install`, the .deb), and where an
/// administrator's own goes.
const UNIT_FILES: [&str; 3] = [
    "/usr/lib/systemd/system/lb.service",
    "/lib/systemd/system/lb.service",
    "/etc/systemd/system/lb.service",
];

/// `error` with the remedy added when it says that no daemon listens on `socket`.
pub(crate) fn with_remedy(error: anyhow::Error, socket: &Path) -> anyhow::Error {
    let no_daemon = error
        .chain()
        .any(|cause| matches!(cause.downcast_ref(), Some(ClientError::NoDaemon { .. })));
    if !no_daemon {
        return error;
    }
    let unit = UNIT_FILES.iter().any(|unit| Path::new(unit).exists());
    // Only the default socket says which pins to look at: a daemon run with its own
    // --api has its own --pin-dir too, which the CLI cannot know.
    let pinned = if socket == Path::new(DEFAULT_SOCKET) {
        // No directory, no pins: nothing to say.
        pinned_links_in(Path::new(DEFAULT_PIN_DIR)).unwrap_or_default()
    } else {
        Vec::new()
    };
    error.context(remedy(unit, &pinned))
}

/// The advice: systemd's commands for a packaged install, `lb run` otherwise, and the
/// interfaces a pinned datapath still forwards on.
fn remedy(unit_installed: bool, pinned_on: &[String]) -> String {
    let mut advice = if unit_installed {
        "no lb daemon is running: start it with `systemctl start lb`; `journalctl -u lb` \
         shows why it stopped"
            .to_owned()
    } else {
        format!(
            "no lb daemon is running: start one with `lb run --iface <IF>` (or point --api \
             / ${SOCKET_ENV} at the socket of one that runs)"
        )
    };
    if !pinned_on.is_empty() {
        advice.push_str(&format!(
            ". Its datapath is still pinned in {DEFAULT_PIN_DIR} and forwarding on {} with \
             the VIPs and backends it last had; `lb down` stops it",
            pinned_on.join(", ")
        ));
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packaged_install_is_told_systemctl_and_journalctl() {
        let advice = remedy(true, &[]);
        assert!(advice.contains("systemctl start lb"), "{advice}");
        assert!(advice.contains("journalctl -u lb"), "{advice}");
        assert!(!advice.contains("lb run"), "{advice}");
    }

    #[test]
    fn without_a_unit_lb_run_is_the_remedy() {
        let advice = remedy(false, &[]);
        assert!(advice.contains("lb run --iface <IF>"), "{advice}");
        assert!(!advice.contains("pinned"), "{advice}");
    }

    #[test]
    fn a_datapath_left_pinned_is_named_with_its_interfaces() {
        let advice = remedy(true, &["eth0".to_owned(), "eth1".to_owned()]);
        assert!(
            advice.contains("still pinned in /sys/fs/bpf/lb and forwarding on eth0, eth1"),
            "{advice}"
        );
        assert!(advice.contains("`lb down` stops it"), "{advice}");
    }

    #[test]
    fn other_errors_are_left_alone() {
        let error = anyhow::anyhow!("something else");
        let same = with_remedy(error, Path::new(DEFAULT_SOCKET));
        assert_eq!(format!("{same:#}"), "something else");
    }
}
