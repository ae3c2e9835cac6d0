//! `cargo xtask test`: everything CI checks, cheapest first, stopping at the first failure.
//!
//! One profile is built, once, and shared by every step: the dev build, compiled by
//! clippy-driver (the lint step is the build). The install and package tests take the dev
//! `lb` (`--debug`): what they check does not depend on the profile, and a second, release
//! build of every dependency would be a third of the run. The tests run under cargo-nextest (`.config/nextest.toml`: the groups that
//! must not overlap and a timeout per test); the benchmarks are compiled, not timed. Every
//! step prints how long it took, and the end a table of all of them.
//!
//! Each scenario runs once: the multi-node one (`lb_lab::scenario`) in the cluster lab
//! tests, which run the code `cargo xtask run --nodes N` runs, so the scale-out demo is not
//! run again; the single-node demos run, as README's first commands.

use std::{
    ffi::OsString,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{build, cmd, layers, setup};

/// Crates that run on the host (lb-ebpf is checked by its own nightly build).
const HOST_PACKAGES: &[&str] = &[
    "lb-lab",
    "lb-common",
    "lb-userspace",
    "lb-tests",
    "quic-lb",
    "xtask",
];

/// What `../shared/katran-bench` builds Katran and kbench with (the `katran` eBPF tests).
const KATRAN_TOOLS: &[(&str, &str)] = &[
    ("clang", "clang"),
    ("llc", "llvm"),
    ("gcc", "gcc"),
    ("python3", "python3"),
    ("/usr/include/bpf/libbpf.h", "libbpf-dev"),
];

/// The lb-tests harnesses that need root: the eBPF objects under test-run, the namespace
/// labs, and the install tree and package. One nextest run schedules them all, so
/// CPU-bound eBPF tests fill the time lab tests spend waiting on the network.
const PRIVILEGED_HARNESSES: &[&str] = &["ebpf", "lab", "install"];

pub(crate) fn run() -> anyhow::Result<()> {
    lint_as_you_build()?;
    let mut steps = Steps::default();
    steps.run(
        "setup (toolchains, bpf-linker, cargo-nextest, Debian packages)",
        setup::run,
    )?;
    steps.run("format", || {
        cmd::run(cmd::cargo()?.args(["fmt", "--all", "--", "--check"]))
    })?;
    steps.run("layers", || {
        let root = cmd::workspace_root();
        let checked = layers::check(&root.join("lb-userspace/src"))?;
        eprintln!("{checked} files of lb-userspace import only downward, no cycles");
        Ok(())
    })?;
    steps.run(
        "build and lint (dev profile: every target of the host crates, benchmarks included, compiled by clippy-driver with -D warnings)",
        || {
            cmd::run(
                cmd::cargo()?
                    .args(["test", "--no-run", "--all-targets"])
                    .args(package_args()),
            )?;
            cmd::run(cmd::cargo()?.args(["build", "--bins"]).args(package_args()))?;
            // `cargo xtask` alone, as the install test and the demos run it: built with
            // only its own dependencies, their features differ from the workspace's.
            cmd::run(cmd::cargo()?.args(["build", "-p", "xtask"]))
        },
    )?;
    steps.run(
        "unit and contract tests (unprivileged: lb-common, lb-userspace, lb-lab, xtask, lb-tests' own)",
        || {
            cmd::run(nextest()?.args(package_args()).args([
                "-E",
                "not (binary(=ebpf) | binary(=lab) | binary(=install))",
            ]))
        },
    )?;
    if !cmd::is_root() {
        bail!(
            "the eBPF and lab tests load XDP programs and create namespaces: run `cargo xtask test` as root"
        );
    }
    let lb = steps.run("dev lb binary", || build::run(&build::Options::default()))?;
    // The `katran` eBPF tests build Katran with the shared katran-bench harness.
    steps.run("tools for the Katran tests", || {
        setup::ensure_tools(KATRAN_TOOLS)
    })?;
    steps.run(
        "eBPF, lab, install and package tests (root: golden packets under BPF_PROG_TEST_RUN, fuzzed packets, Katran's IPv6 paths, verifier budgets; the real binary in network namespaces, a 12 s soak, and the BGP/ECMP cluster scenario that `cargo xtask run --nodes 3` tells, in dsr-ipip and NAT; cargo xtask install --debug into a temporary prefix, systemd-analyze verify, cargo xtask package --debug and lintian; the package installed, upgraded and removed with dpkg, its daemon in namespaces)",
        || {
            let mut nextest = nextest()?;
            nextest.args(["-p", "lb-tests"]);
            for harness in PRIVILEGED_HARNESSES {
                nextest.args(["--test", harness]);
            }
            cmd::run(nextest.env(cmd::REQUIRE_ROOT_ENV, "1").env("LB_BIN", &lb))
        },
    )?;
    steps.run("demo lab (cargo xtask run --once)", || {
        cmd::run(cmd::cargo()?.args(["xtask", "run", "--once"]))
    })?;
    steps.run(
        "demo lab in direct server return (cargo xtask run --once --mode dsr-ipip)",
        || cmd::run(cmd::cargo()?.args(["xtask", "run", "--once", "--mode", "dsr-ipip"])),
    )?;
    steps.report();
    eprintln!("xtask test: all checks passed");
    Ok(())
}

/// Makes every cargo that this run starts (its children's too: the install test runs
/// `cargo xtask install`) compile the workspace's crates with clippy-driver and
/// `-D warnings`, as `cargo clippy` does, but with code generation: the lint and the dev
/// build are one compilation instead of two. The same environment for every step keeps
/// cargo's fingerprints equal, so no step rebuilds what an earlier one built.
fn lint_as_you_build() -> anyhow::Result<()> {
    let driver = cmd::cargo_home()?.join("bin/clippy-driver");
    if !cmd::succeeds(Command::new(&driver).arg("--version")) {
        bail!(
            "{} does not run: `rustup component add clippy` installs it",
            driver.display()
        );
    }
    let settings: [(&str, OsString); 2] = [
        ("RUSTC_WORKSPACE_WRAPPER", driver.into_os_string()),
        // cargo-clippy's own encoding of the arguments it passes to clippy-driver.
        (
            "CLIPPY_ARGS",
            "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__".into(),
        ),
    ];
    for (key, value) in settings {
        // SAFETY: set before this process starts any thread or child.
        unsafe { std::env::set_var(key, value) };
    }
    // A fresh clone in CI builds everything once: incremental compilation only adds to it.
    if std::env::var_os("CI").is_some() {
        // SAFETY: as above.
        unsafe { std::env::set_var("CARGO_INCREMENTAL", "0") };
    }
    Ok(())
}

/// `cargo nextest run` with the CI profile of `.config/nextest.toml`.
fn nextest() -> anyhow::Result<Command> {
    let mut cargo = cmd::cargo()?;
    cargo.args(["nextest", "run", "--profile", "ci", "--no-tests", "fail"]);
    Ok(cargo)
}

fn package_args() -> Vec<&'static str> {
    HOST_PACKAGES.iter().flat_map(|p| ["-p", *p]).collect()
}

/// The steps run so far and how long each took.
#[derive(Default)]
struct Steps {
    done: Vec<(String, Duration)>,
    started: Option<Instant>,
}

impl Steps {
    fn run<T>(
        &mut self,
        name: &str,
        step: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        self.started.get_or_insert(started);
        eprintln!("\n==> {name}");
        let result = step();
        let took = started.elapsed();
        let outcome = if result.is_ok() { "done" } else { "FAILED" };
        eprintln!("==> {outcome} in {:.1} s: {name}", took.as_secs_f64());
        self.done.push((name.to_owned(), took));
        if result.is_err() {
            self.report();
        }
        result
    }

    /// Each step's time, for the CI log.
    fn report(&self) {
        eprintln!("\nxtask test: time per step");
        for (name, took) in &self.done {
            let short = name.split(" (").next().unwrap_or(name);
            eprintln!("{:>8.1} s  {short}", took.as_secs_f64());
        }
        if let Some(started) = self.started {
            eprintln!("{:>8.1} s  total", started.elapsed().as_secs_f64());
        }
    }
}
