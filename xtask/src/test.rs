//! `cargo xtask test`: everything CI checks, cheapest first, stopping at the first failure.

use std::process::Command;

use anyhow::bail;

use crate::{build, cmd, layers, setup};

/// Crates that run on the host (lb-ebpf is checked by its own nightly build).
const HOST_PACKAGES: &[&str] = &["lb-lab", "lb-common", "lb-userspace", "lb-tests", "xtask"];

/// What `../shared/katran-bench` builds Katran and kbench with (tests/katran.rs).
const KATRAN_TOOLS: &[(&str, &str)] = &[
    ("clang", "clang"),
    ("llc", "llvm"),
    ("gcc", "gcc"),
    ("python3", "python3"),
    ("/usr/include/bpf/libbpf.h", "libbpf-dev"),
];

pub fn run() -> anyhow::Result<()> {
    step(
        "format",
        cmd::cargo()?.args(["fmt", "--all", "--", "--check"]),
    )?;
    let root = cmd::workspace_root();
    let checked = layers::check(&root.join("lb-userspace/src"))?;
    eprintln!("\n==> layers: {checked} files of lb-userspace import only downward, no cycles");
    step(
        "lint",
        cmd::cargo()?.arg("clippy").args(package_args()).args([
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "unit tests",
        cmd::cargo()?.arg("test").args([
            "-p",
            "lb-common",
            "-p",
            "lb-userspace",
            "-p",
            "lb-lab",
            "-p",
            "xtask",
        ]),
    )?;
    // The test crate's own unit tests (its fuzzer's mutations, the root check) and its
    // unprivileged contract tests (known answers of the hash and Maglev table); its other
    // integration tests need root and run below.
    step(
        "test-helper unit tests and contract tests",
        cmd::cargo()?.args(["test", "-p", "lb-tests", "--lib", "--test", "contract"]),
    )?;
    if !cmd::is_root() {
        bail!(
            "the eBPF and integration tests load XDP programs and create namespaces: run `cargo xtask test` as root"
        );
    }
    let lb = build::run(&build::Options::default())?;
    // tests/katran.rs builds Katran with the shared katran-bench harness.
    setup::ensure_tools(KATRAN_TOOLS)?;
    step(
        "eBPF tests (BPF_PROG_TEST_RUN: golden packets, fragments, DSR encapsulation, the backends' decap program, one choice per flow across nodes, 10^4 fuzzed packets, Katran's IPv6 paths in katran-bench)",
        cmd::privileged_cargo()?.args([
            "test",
            "-p",
            "lb-tests",
            "--test",
            "golden",
            "--test",
            "admission",
            "--test",
            "fragments",
            "--test",
            "nat",
            "--test",
            "lifecycle",
            "--test",
            "policy",
            "--test",
            "icmp",
            "--test",
            "decap",
            "--test",
            "dsr",
            "--test",
            "cluster_hash",
            "--test",
            "fuzz",
            "--test",
            "flow_cache",
            "--test",
            "katran",
        ]),
    )?;
    step(
        "integration tests (network namespaces, a BGP/ECMP cluster of lb nodes; a 20 s soak)",
        cmd::privileged_cargo()?
            .args([
                "test",
                "-p",
                "lb-tests",
                "--test",
                "run",
                "--test",
                "e2e",
                "--test",
                "fragments_lab",
                "--test",
                "control",
                "--test",
                "observe",
                "--test",
                "ops",
                "--test",
                "explain",
                "--test",
                "conntrack",
                "--test",
                "flood",
                "--test",
                "restart_load",
                "--test",
                "faults",
                "--test",
                "flows",
                "--test",
                "decap_lab",
                "--test",
                "decap_cli",
                "--test",
                "dsr_lab",
                "--test",
                "cluster_lab",
                "--test",
                "cluster",
                "--test",
                "reload",
                "--test",
                "policy_lab",
                "--test",
                "soak",
            ])
            .env("LB_BIN", lb),
    )?;
    // Unprivileged, but it builds the release `lb` (once, through `cargo xtask install`).
    step(
        "install and package (cargo xtask install into a temporary prefix, systemd-analyze verify, cargo xtask package)",
        cmd::cargo()?.args(["test", "-p", "lb-tests", "--test", "install"]),
    )?;
    step(
        "demo lab (cargo xtask run --once)",
        cmd::cargo()?.args(["xtask", "run", "--once"]),
    )?;
    step(
        "demo lab in direct server return (cargo xtask run --once --mode dsr-ipip)",
        cmd::cargo()?.args(["xtask", "run", "--once", "--mode", "dsr-ipip"]),
    )?;
    step(
        "demo lab, scale-out: 3 lb nodes behind an ECMP router, drained and lost live (cargo xtask run --once --nodes 3 --mode dsr-ipip)",
        cmd::cargo()?.args([
            "xtask", "run", "--once", "--nodes", "3", "--mode", "dsr-ipip",
        ]),
    )?;
    step(
        "demo lab, scale-out in NAT: replies back through any node (cargo xtask run --once --nodes 3 --mode nat)",
        cmd::cargo()?.args(["xtask", "run", "--once", "--nodes", "3", "--mode", "nat"]),
    )?;
    step(
        "benchmarks, quick (cargo xtask bench --quick; the report goes to target/)",
        cmd::cargo()?.args(["xtask", "bench", "--quick"]),
    )?;
    eprintln!("xtask test: all checks passed");
    Ok(())
}

fn package_args() -> Vec<&'static str> {
    HOST_PACKAGES.iter().flat_map(|p| ["-p", *p]).collect()
}

fn step(name: &str, command: &mut Command) -> anyhow::Result<()> {
    eprintln!("\n==> {name}");
    cmd::run(command)
}
