//! The datapath's nested build, started by xtask itself ahead of the host build.
//!
//! lb-userspace's build script builds `lb-ebpf` with nightly through aya-build (a second
//! cargo, `--release`, `-Z build-std=core`, 65 s from scratch on two cores). Cargo runs that
//! script only once its build-dependencies are compiled, which its scheduler leaves until
//! 85 s into a fresh build, and the crates that wait for it are most of what is left: in
//! CI the datapath build then ran alone for 45 s at the end of the host build. Started
//! here with the very command the script runs, it overlaps the host build from the first
//! second, and the script's own cargo finds everything fresh. A command that differed would
//! only cost the time it tried to save: the script builds again whatever is not fresh.

use std::{
    ffi::OsString,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// The package the build script builds and its target (aya-build's choice on a
/// little-endian host).
const PACKAGE: &str = "lb-ebpf";
const BPF_TARGET: &str = "bpfel-unknown-none";

/// A datapath build under way.
pub(crate) struct Prebuild {
    /// `None` once waited for.
    child: Option<Child>,
    log: PathBuf,
}

/// Starts the nested build as lb-userspace's build script would run it for the host's
/// profile directory under `target`.
pub(crate) fn start(target: &Path) -> anyhow::Result<Prebuild> {
    // build.rs points aya-build at `<target>/lb-ebpf`, which builds in
    // `aya-build/target/<package>` below it.
    let shared = target.join("lb-ebpf");
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    let log = shared.join("prebuild.log");
    let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new("rustup");
    command
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            PACKAGE,
            "--bins",
        ])
        .args(["--message-format=json", "--release", "--target", BPF_TARGET])
        .args(["-Z", "build-std=core", "--features", ""])
        .arg("--target-dir")
        .arg(shared.join("aya-build/target").join(PACKAGE))
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags())
        // Set by cargo for every build script; aya-ebpf's own scripts rerun when it changes.
        .env("HOST", host_triple()?)
        .env("PATH", cmd::path_with_cargo_bin()?)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        // Where cargo runs a build script: lb-userspace's directory.
        .current_dir(cmd::workspace_root().join("lb-userspace"))
        .stdout(Stdio::null())
        .stderr(stderr);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", cmd::describe(&command)))?;
    eprintln!(
        "datapath: building {PACKAGE} beside the host build (log: {})",
        log.display()
    );
    Ok(Prebuild {
        child: Some(child),
        log,
    })
}

impl Prebuild {
    /// Waits for the build. A failure is reported with the end of its log; the host build
    /// that ran meanwhile has shown the same error through the build script.
    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = child.wait().context("waiting for the datapath build")?;
        if !status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            bail!(
                "the datapath build failed ({status}); the end of {}:\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }
}

/// A host build that failed leaves the datapath build nothing to do it for.
impl Drop for Prebuild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(error) = child.kill().and_then(|()| child.wait().map(drop)) {
                eprintln!("datapath: stopping its build: {error}");
            }
        }
    }
}

/// The host's target triple, as `rustc -vV` names it (cargo's HOST).
fn host_triple() -> anyhow::Result<String> {
    let version = cmd::output(Command::new("rustc").arg("-vV"))?;
    String::from_utf8_lossy(&version)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` names no host")
}

/// aya-build's flags for the eBPF crates: the host's architecture for the `bpf_target_arch`
/// cfg, full debug info, and BTF from bpf-linker (separated as CARGO_ENCODED_RUSTFLAGS
/// separates them).
fn rustflags() -> OsString {
    let arch = match std::env::consts::ARCH {
        arch if arch.starts_with("riscv64") => "riscv64",
        arch => arch,
    };
    format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf").into()
}
