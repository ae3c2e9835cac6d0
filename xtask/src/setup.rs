//! `cargo xtask setup`: idempotently installs what a fresh host lacks for building and testing.
//!
//! - `rust-src` for nightly (the eBPF crate is built with `-Z build-std=core`);
//! - cargo-nextest, which runs the tests of `cargo xtask test`;
//! - bpf-linker, built against nightly's own libLLVM so both agree on the LLVM version. Its
//!   LLVM prefix lives under `$CARGO_HOME` because the binary keeps an rpath to it;
//! - the Debian packages the tests drive (iproute2, ethtool, util-linux's nsenter, and
//!   bird2 for the multi-node lab's BGP: its service is never started on the host, and
//!   systemd for `systemd-analyze verify` of the unit), and what `cargo xtask package`
//!   builds and checks the Debian package with (binutils, dpkg-dev, lintian).

use std::{fs, os::unix::fs::symlink, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::cmd::{self, cargo_home, succeeds};

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The release `.config/nextest.toml` is written for (test groups, `--no-tests`).
const NEXTEST_VERSION: &str = "0.9.143";
/// Commands (or, when absolute, files) the tests need, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("nsenter", "util-linux"),
    ("script", "bsdutils"),
    // BIRD 2 announces the VIPs of the multi-node lab (lab::cluster) over BGP; the lab
    // starts its own instances inside namespaces, never the host's bird.service.
    ("bird", "bird2"),
    ("birdc", "bird2"),
    // `systemd-analyze verify` checks the installed unit (tests/install.rs); systemd need
    // not run.
    ("systemd-analyze", "systemd"),
    // The maps' own memlock, against which `lb status` is checked (tests/ops.rs).
    ("bpftool", "bpftool"),
    // Stops the daemon at the first write of a state-file save (tests/control.rs).
    ("strace", "strace"),
    // `cargo xtask package`: strips the binary (as dh_strip), computes Depends (as
    // dh_shlibdeps); lintian checks the package as Debian does (tests/install.rs).
    ("strip", "binutils"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("lintian", "lintian"),
    // Read what `lb capture` writes, as an operator would (tests/capture_lab.rs).
    ("tcpdump", "tcpdump"),
    ("tshark", "tshark"),
    // The cluster lab's router counts replies that left a node untranslated
    // (lab/src/scenario).
    ("nft", "nftables"),
];

/// What the end-to-end benchmark compares lb with, and drives it with.
pub(crate) const BENCH_TOOLS: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("nft", "nftables"),
    ("taskset", "util-linux"),
    // `perf record` of where the CPU goes per new connection (the e2e benchmark).
    ("perf", "linux-perf"),
    (
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "libnginx-mod-stream",
    ),
    // What the shared katran-bench harness builds Katran and its timer with (the
    // benchmark beside Katran).
    ("clang", "clang"),
    ("llc", "llvm"),
    ("gcc", "gcc"),
    ("python3", "python3"),
    ("/usr/include/bpf/libbpf.h", "libbpf-dev"),
];

pub(crate) fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_nextest()?;
    ensure_tools(TOOLS)?;
    eprintln!("setup: ready ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn ensure_nightly() -> anyhow::Result<()> {
    if succeeds(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--version"])) {
        return Ok(());
    }
    eprintln!("setup: installing the {NIGHTLY} toolchain");
    cmd::run(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.starts_with("rust-src"))
    {
        eprintln!("setup: rust-src for {NIGHTLY} already installed");
        return Ok(());
    }
    eprintln!("setup: adding rust-src to {NIGHTLY}");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let cargo_home = cargo_home()?;
    let linker = cargo_home.join("bin").join("bpf-linker");
    if succeeds(Command::new(&linker).arg("--version")) {
        eprintln!(
            "setup: bpf-linker already installed at {}",
            linker.display()
        );
        return Ok(());
    }
    let llvm = nightly_libllvm()?;
    let prefix = cargo_home.join("lb-bpf-linker-llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = llvm
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();
    for name in [Path::new("libLLVM.so").as_os_str(), file_name.as_os_str()] {
        let link = lib.join(name);
        match fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", link.display()));
            }
            _ => {}
        }
        symlink(&llvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), llvm.display()))?;
    }
    let llvm_major = llvm_major(&file_name.to_string_lossy())?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        llvm.display()
    );
    let started = Instant::now();
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    eprintln!(
        "setup: bpf-linker built in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// cargo-nextest runs `cargo xtask test`'s tests: in groups, with a timeout per test.
fn ensure_nextest() -> anyhow::Result<()> {
    if succeeds(cmd::cargo()?.args(["nextest", "--version"])) {
        return Ok(());
    }
    eprintln!("setup: building cargo-nextest {NEXTEST_VERSION} (a few minutes)");
    cmd::run(Command::new("cargo").args([
        "install",
        "cargo-nextest",
        "--version",
        NEXTEST_VERSION,
        "--locked",
    ]))
}

/// The real shared library in nightly's sysroot (the other libLLVM file is a linker script).
fn nightly_libllvm() -> anyhow::Result<std::path::PathBuf> {
    let output = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "--print", "sysroot"])
        .output()
        .context("asking nightly rustc for its sysroot")?;
    let sysroot = String::from_utf8(output.stdout).context("sysroot is not UTF-8")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("libLLVM.so.")) {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.* in {}: the {NIGHTLY} toolchain lacks its LLVM library",
        lib.display()
    )
}

/// "libLLVM.so.22.1-rust-1.97.0-nightly" → 22.
fn llvm_major(file_name: &str) -> anyhow::Result<u32> {
    file_name
        .strip_prefix("libLLVM.so.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {file_name}"))
}

/// Installs the Debian packages of the `tools` that are missing, without starting any
/// service they bring (neither nginx nor bird may start on the host).
pub(crate) fn ensure_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| {
            if tool.starts_with('/') {
                return !Path::new(tool).exists();
            }
            !succeeds(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
        })
        .map(|&(_, package)| package)
        .collect();
    // One package can bring several of the tools (bird2: bird and birdc).
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages {}: install them (apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        fs::write(
            policy,
            "#!/bin/sh\n# lb setup: install, do not start services\nexit 101\n",
        )?;
        fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let result = cmd::run(Command::new("apt-get").arg("update").arg("-qq")).and_then(|()| {
        cmd::run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    if own_policy {
        lb_lab::cleanup::remove_file(policy);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_comes_from_the_file_name() {
        assert_eq!(
            llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").ok(),
            Some(22)
        );
        llvm_major("libLLVM-22-rust-1.97.0-nightly.so").unwrap_err();
    }
}
