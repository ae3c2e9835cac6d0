//! The oldest kernel lb runs on, and why: each kernel feature the datapath and the daemon
//! use, with the release that brought it. Pure: the caller reads the running release.

use std::fmt;

/// A kernel release, major and minor (`6.18.0-1-amd64` is 6.18).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

const fn version(major: u32, minor: u32) -> KernelVersion {
    KernelVersion { major, minor }
}

/// A kernel feature lb cannot work without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub since: KernelVersion,
}

/// Every feature with a release floor, oldest first.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "LRU hash maps (CONNTRACK, CT_UNPROVEN)",
        since: version(4, 10),
    },
    Feature {
        name: "LPM trie maps (SOURCE_RANGES)",
        since: version(4, 11),
    },
    Feature {
        name: "the bpf_fib_lookup helper (next hops)",
        since: version(4, 18),
    },
    Feature {
        name: "kernel BTF (/sys/kernel/btf/vmlinux)",
        since: version(5, 4),
    },
    Feature {
        name: "DEVMAP_HASH maps (TX_PORTS)",
        since: version(5, 4),
    },
    Feature {
        name: "the bpf_jiffies64 helper (the flow cache's clock)",
        since: version(5, 5),
    },
    Feature {
        name: "bpf_link XDP attachments and their atomic update (pinned links, restarts)",
        since: version(5, 9),
    },
    Feature {
        name: "the bpf_ktime_get_coarse_ns helper (conntrack's clock)",
        since: version(5, 11),
    },
];

/// The oldest release that has every feature.
pub const MINIMUM: KernelVersion = version(5, 11);

/// The version at the start of a release string (`/proc/sys/kernel/osrelease`);
/// `None` if it does not start with `<major>.<minor>`.
pub fn parse_release(release: &str) -> Option<KernelVersion> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(version(major, minor))
}

/// The features `running` lacks, oldest first.
pub fn missing(running: KernelVersion) -> Vec<Feature> {
    FEATURES
        .iter()
        .filter(|feature| feature.since > running)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(parse_release("6.18.0-1-amd64\n"), Some(version(6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some(version(5, 15)));
        assert_eq!(parse_release("6.1-rc3"), Some(version(6, 1)));
        assert_eq!(parse_release("6"), None);
        assert_eq!(parse_release("linux"), None);
    }

    #[test]
    fn the_minimum_is_the_newest_feature() {
        let newest = FEATURES.iter().map(|f| f.since).max();
        assert_eq!(newest, Some(MINIMUM));
        assert!(missing(MINIMUM).is_empty());
        assert!(missing(version(6, 1)).is_empty());
    }

    #[test]
    fn an_older_kernel_is_told_what_it_lacks() {
        let lacking: Vec<&str> = missing(version(5, 10)).iter().map(|f| f.name).collect();
        assert_eq!(
            lacking,
            ["the bpf_ktime_get_coarse_ns helper (conntrack's clock)"]
        );
        assert_eq!(missing(version(4, 19)).len(), 5);
        assert!(version(4, 19) < version(5, 4) && version(5, 4) < version(5, 11));
    }
}
