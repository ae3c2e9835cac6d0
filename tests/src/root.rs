//! Whether this test process may load XDP programs and create namespaces (root), and what a
//! privileged test does when it may not: skip loudly, or, under `LB_REQUIRE_ROOT=1` (set by
//! `cargo xtask test`, `fuzz` and `soak`), fail, so that CI can never pass by skipping.

/// Set by xtask: a privileged test that is not root fails instead of skipping.
pub const REQUIRE_ROOT_ENV: &str = "LB_REQUIRE_ROOT";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the calling test must return now: true (after one line on stderr) when not root;
/// a panic when not root and `LB_REQUIRE_ROOT` is set. Use [`crate::require_root!`].
pub fn skip_without_root(test: &str) -> bool {
    skip_decision(
        test,
        is_root(),
        std::env::var_os(REQUIRE_ROOT_ENV).is_some(),
    )
}

fn skip_decision(test: &str, root: bool, required: bool) -> bool {
    if root {
        return false;
    }
    assert!(
        !required,
        "{test}: needs root, and {REQUIRE_ROOT_ENV} is set (CI must not skip it): run as root"
    );
    crate::loud(&format!(
        "{test}: skipped: needs root (run: sudo cargo xtask test)"
    ));
    true
}

/// First line of a privileged test: returns from it, with one line on stderr, when the
/// process is not root (unless `LB_REQUIRE_ROOT` is set, when it fails instead).
#[macro_export]
macro_rules! require_root {
    () => {{
        fn here() {}
        let here = ::std::any::type_name_of_val(&here);
        if $crate::root::skip_without_root(here.strip_suffix("::here").unwrap_or(here)) {
            return;
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::skip_decision;

    #[test]
    fn root_runs_the_test() {
        assert!(!skip_decision("t", true, false));
        assert!(!skip_decision("t", true, true));
    }

    #[test]
    fn not_root_skips() {
        assert!(skip_decision("t", false, false));
    }

    #[test]
    #[should_panic(expected = "LB_REQUIRE_ROOT is set")]
    fn not_root_fails_when_root_is_required() {
        skip_decision("t", false, true);
    }
}
