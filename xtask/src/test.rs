//! `cargo xtask test`: everything CI checks, cheapest first, stopping at the first failure.
//!
//! Each profile is built once and shared by the steps after it: the dev build is compiled
//! by clippy-driver (the lint step is the build), the release `lb` once for the install and
//! package tests. The tests run under cargo-nextest (`.config/nextest.toml`: the groups that
//! must not overlap and a timeout per test); the benchmarks are compiled, not timed. Every
//! step prints how long it took, and the end a table of all of them.

use std::{
    ffi::OsString,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{build, cmd, layers, setup};

/// Crates that run on the host (lb-ebpf is checked by its own nightly build).
const HOST_PACKAGES: &[&str] = &["lb-lab", "lb-common", "lb-userspace", "lb-tests", "xtask"];

/// What `../shared/katran-bench` builds Katran and kbench with (the `katran` eBPF tests).
const KATRAN_TOOLS: &[(&str, &str)] = &[
    ("clang", "clang"),
    ("llc", "llvm"),
    ("gcc", "gcc"),
    ("python3", "python3"),
    ("/usr/include/bpf/libbpf.h", "libbpf-dev"),
];

/// The lb-tests harnesses that need root: the eBPF objects under test-run and the
/// namespace labs. One nextest run schedules both, so CPU-bound eBPF tests fill the time
/// lab tests spend waiting on the network.
const PRIVILEGED_HARNESSES: &[&str] = &["ebpf", "lab"];

pub fn run() -> anyhow::Result<()> {
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
    // The one release build runs beside the tests at the lowest priority: the lab tests
    // mostly wait on their namespaces, and the build takes the CPU they leave.
    let release = Background::start(
        "the release lb binary",
        nice(build::command(&build::Options { release: true })?),
    )?;
    steps.run(
        "eBPF and lab tests (root: golden packets under BPF_PROG_TEST_RUN, fuzzed packets, Katran's IPv6 paths; the real binary in network namespaces, a BGP/ECMP cluster, a 20 s soak; the release build beside them at nice 19)",
        || {
            let mut nextest = nextest()?;
            nextest.args(["-p", "lb-tests"]);
            for harness in PRIVILEGED_HARNESSES {
                nextest.args(["--test", harness]);
            }
            cmd::run(nextest.env(cmd::REQUIRE_ROOT_ENV, "1").env("LB_BIN", &lb))
        },
    )?;
    steps.run(
        "release lb binary (the rest of the build begun beside the tests)",
        || release.finish(),
    )?;
    steps.run(
        "install and package (cargo xtask install into a temporary prefix, systemd-analyze verify, cargo xtask package)",
        || cmd::run(nextest()?.args(["-p", "lb-tests", "--test", "install"])),
    )?;
    steps.run("demo lab (cargo xtask run --once)", || {
        cmd::run(cmd::cargo()?.args(["xtask", "run", "--once"]))
    })?;
    steps.run(
        "demo lab, scale-out: 3 lb nodes behind an ECMP router in dsr-ipip, drained and lost live (cargo xtask run --once --nodes 3 --mode dsr-ipip)",
        || {
            cmd::run(cmd::cargo()?.args([
                "xtask", "run", "--once", "--nodes", "3", "--mode", "dsr-ipip",
            ]))
        },
    )?;
    steps.run(
        "demo lab in direct server return (cargo xtask run --once --mode dsr-ipip)",
        || cmd::run(cmd::cargo()?.args(["xtask", "run", "--once", "--mode", "dsr-ipip"])),
    )?;
    steps.run(
        "demo lab, scale-out in NAT: replies back through any node (cargo xtask run --once --nodes 3 --mode nat)",
        || {
            cmd::run(
                cmd::cargo()?.args(["xtask", "run", "--once", "--nodes", "3", "--mode", "nat"]),
            )
        },
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

/// `command` at the lowest CPU priority.
fn nice(command: Command) -> Command {
    let mut nice = Command::new("nice");
    nice.args(["-n", "19"])
        .arg(command.get_program())
        .args(command.get_args())
        .envs(
            command
                .get_envs()
                .filter_map(|(key, value)| Some((key, value?))),
        );
    if let Some(dir) = command.get_current_dir() {
        nice.current_dir(dir);
    }
    nice
}

/// A command run beside the steps, its output kept in a file and shown if it fails;
/// killed if the run stops before it is waited for.
struct Background {
    what: &'static str,
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Background {
    fn start(what: &'static str, mut command: Command) -> anyhow::Result<Self> {
        let log = cmd::workspace_root()
            .join("target")
            .join(format!("xtask-test-{}.log", std::process::id()));
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(&log)?;
        eprintln!(
            "+ {} (beside the next steps; output in {})",
            cmd::describe(&command),
            log.display()
        );
        let child = command
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {what}: {e}"))?;
        Ok(Self { what, child, log })
    }

    /// Waits for the command; on failure shows its output.
    fn finish(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        let output = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let Err(error) = std::fs::remove_file(&self.log) {
            eprintln!("could not remove {}: {error}", self.log.display());
        }
        if !status.success() {
            eprintln!("{output}");
            bail!("{} failed ({status})", self.what);
        }
        Ok(())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Already reaped by `finish`, or still running because a step failed first.
        if let Ok(None) = self.child.try_wait() {
            eprintln!("stopping {} (a step before it failed)", self.what);
            if let Err(error) = self.child.kill() {
                eprintln!("could not stop {}: {error}", self.what);
            }
            if let Err(error) = self.child.wait() {
                eprintln!("could not reap {}: {error}", self.what);
            }
        }
    }
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
