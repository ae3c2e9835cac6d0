//! Which lb this is: the package version and the build of the embedded datapath, and the
//! warning when the daemon `lb status` asks runs another.

use crate::{api::wire::StatusReport, datapath::load::DATAPATH_BUILD};

/// `lb --version`: "0.1.0 (datapath 3f2a9c1b7d4e)".
pub(crate) const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (datapath ",
    env!("LB_DATAPATH_BUILD"),
    ")"
);

/// A package version and a datapath build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Build {
    pub(crate) version: String,
    /// Empty when a daemon predates reporting it.
    pub(crate) datapath: String,
}

impl Build {
    /// This binary.
    pub(crate) fn own() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            datapath: DATAPATH_BUILD.to_owned(),
        }
    }

    /// The daemon that answered `status`.
    pub(crate) fn daemon(status: &StatusReport) -> Self {
        Self {
            version: status.version.clone(),
            datapath: status.datapath_build.clone(),
        }
    }
}

impl std::fmt::Display for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let datapath = if self.datapath.is_empty() {
            "unknown"
        } else {
            &self.datapath
        };
        write!(f, "lb {} (datapath {datapath})", self.version)
    }
}

/// The warning to print when the daemon is not this build, `None` when it is.
pub(crate) fn mismatch(daemon: &Build) -> Option<String> {
    mismatch_between(&Build::own(), daemon)
}

fn mismatch_between(own: &Build, daemon: &Build) -> Option<String> {
    (own != daemon).then(|| {
        format!(
            "the daemon runs {daemon} but this is {own}: upgrade them together (a restart of \
             `lb run` adopts the pinned datapath and keeps its flows)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(version: &str, datapath: &str) -> Build {
        Build {
            version: version.to_owned(),
            datapath: datapath.to_owned(),
        }
    }

    #[test]
    fn a_daemon_of_another_version_or_datapath_is_named_and_the_same_is_silent() {
        let own = build("0.1.0", "3f2a9c1b7d4e");
        assert_eq!(mismatch_between(&own, &own.clone()), None);
        let older = mismatch_between(&own, &build("0.0.9", "3f2a9c1b7d4e")).expect("differs");
        assert!(
            older.contains("the daemon runs lb 0.0.9 (datapath 3f2a9c1b7d4e)")
                && older.contains("this is lb 0.1.0 (datapath 3f2a9c1b7d4e)"),
            "{older}"
        );
        let rebuilt = mismatch_between(&own, &build("0.1.0", "000000000000")).expect("differs");
        assert!(rebuilt.contains("datapath 000000000000"), "{rebuilt}");
        let unknown = mismatch_between(&own, &build("0.1.0", "")).expect("unknown build");
        assert!(unknown.contains("datapath unknown"), "{unknown}");
    }

    #[test]
    fn the_long_version_names_the_datapath_build() {
        assert_eq!(
            LONG_VERSION,
            format!("{} (datapath {DATAPATH_BUILD})", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(Build::own().to_string(), format!("lb {LONG_VERSION}"));
    }
}
