//! Running child commands with the tool paths setup installed, echoing what runs.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// `$CARGO_HOME`, defaulting like cargo does.
pub(crate) fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// PATH with `$CARGO_HOME/bin` first, so a freshly installed bpf-linker is found.
/// Idempotent: lb-userspace's build script reruns when PATH changes, so a `cargo xtask`
/// started by one (the install test's) must pass on the same PATH, not one more entry.
pub(crate) fn path_with_cargo_bin() -> anyhow::Result<OsString> {
    path_with_first(&cargo_home()?.join("bin"), env::var_os("PATH").as_deref())
}

/// `path` with `first` at its head and nowhere else.
fn path_with_first(first: &Path, path: Option<&std::ffi::OsStr>) -> anyhow::Result<OsString> {
    let mut paths = vec![first.to_path_buf()];
    if let Some(path) = path {
        paths.extend(env::split_paths(path).filter(|entry| entry != first));
    }
    env::join_paths(paths).context("joining PATH")
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub(crate) fn cargo() -> anyhow::Result<Command> {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .env("PATH", path_with_cargo_bin()?);
    Ok(cmd)
}

/// Read by lb-tests' `require_root!`: set, a privileged test that finds itself not root
/// fails instead of skipping, so that a run of xtask can never pass by skipping.
pub(crate) const REQUIRE_ROOT_ENV: &str = "LB_REQUIRE_ROOT";

/// `cargo` for tests that need root (lb-tests' integration tests): with
/// [`REQUIRE_ROOT_ENV`] set, so that they fail rather than skip without it.
pub(crate) fn privileged_cargo() -> anyhow::Result<Command> {
    let mut cmd = cargo()?;
    cmd.env(REQUIRE_ROOT_ENV, "1");
    Ok(cmd)
}

/// The tests of one module (`fuzz`, `soak`) of an lb-tests harness (`ebpf`, `lab`) on the
/// release build, their output shown as they run.
pub(crate) fn release_test(harness: &str, module: &str) -> anyhow::Result<Command> {
    let mut cmd = privileged_cargo()?;
    cmd.args(["test", "--release", "-p", "lb-tests", "--test", harness])
        .args(["--", &format!("{module}::"), "--nocapture"]);
    Ok(cmd)
}

/// Runs `cmd` to completion, echoing it first; fails on a non-zero exit.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `command` to completion without echoing it; its stdout, or an error with its
/// stderr when it fails.
pub(crate) fn output(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = command
        .output()
        .with_context(|| format!("starting {}", describe(command)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(command),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Whether `cmd` exits 0, without echoing it or its output.
pub(crate) fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_bin_goes_first_once_however_often_it_is_added() {
        let bin = Path::new("/home/u/.cargo/bin");
        let once = path_with_first(bin, Some("/usr/bin:/bin".as_ref())).expect("join");
        assert_eq!(once, "/home/u/.cargo/bin:/usr/bin:/bin");
        let twice = path_with_first(bin, Some(&once)).expect("join");
        assert_eq!(twice, once);
        let moved = path_with_first(bin, Some("/usr/bin:/home/u/.cargo/bin".as_ref()));
        assert_eq!(moved.expect("join"), "/home/u/.cargo/bin:/usr/bin");
        assert_eq!(
            path_with_first(bin, None).expect("join"),
            "/home/u/.cargo/bin"
        );
    }
}
