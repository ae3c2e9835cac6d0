//! `cargo xtask bench [--quick]`: runs the benchmarks (release builds) and writes their
//! sections, with the machine they ran on, to docs/BENCHMARKS.md. `--quick` runs fewer
//! rounds and writes target/BENCHMARKS.quick.md instead, so a test can keep it from rotting
//! without replacing published figures.

use std::process::Stdio;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{build, cmd, setup};

#[derive(Args, Debug)]
pub(crate) struct Options {
    /// Fewer rounds; the report goes to target/BENCHMARKS.quick.md.
    #[arg(long)]
    quick: bool,
}

/// Benchmark targets (package, bench), in report order.
const BENCHES: &[(&str, &str)] = &[
    ("lb-tests", "katran"),
    ("lb-tests", "datapath"),
    ("lb-tests", "e2e"),
    ("lb-tests", "cluster"),
    ("lb-tests", "flood"),
    ("lb-userspace", "maglev"),
];

fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

pub(crate) fn run(options: &Options) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "the datapath benchmarks load XDP programs in namespaces: run `cargo xtask bench` as root"
        );
    }
    setup::ensure_tools(setup::BENCH_TOOLS)?;
    let lb = build::run(&build::Options { release: true })?;
    let out_dir = if options.quick {
        cmd::workspace_root().join("target")
    } else {
        cmd::workspace_root().join("docs")
    };
    let plot = out_dir.join("benchmarks-datapath.svg");
    let mut sections = Vec::new();
    for (package, bench) in BENCHES {
        let mut command = cmd::cargo()?;
        command
            .args(["bench", "-p", package, "--bench", bench, "--"])
            .args(options.quick.then_some("--quick"))
            .env("LB_BENCH_PLOT", &plot)
            .env("LB_BIN", &lb)
            .stdout(Stdio::piped())
            // Progress and, should it fail, the reason: on the terminal.
            .stderr(Stdio::inherit());
        eprintln!("+ {}", cmd::describe(&command));
        let output = command.output().context("running cargo bench")?;
        if !output.status.success() {
            bail!("benchmark {bench} failed");
        }
        let text = String::from_utf8(output.stdout).context("benchmark output")?;
        let section = text
            .find("## ")
            .map(|at| text[at..].trim_end().to_owned())
            .with_context(|| format!("benchmark {bench} printed no section"))?;
        sections.push(section);
    }
    sections.insert(
        2,
        "![ns per packet by path; the red line is the floor](benchmarks-datapath.svg)".to_owned(),
    );
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let report = format!(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench{}` (as root) on {}; do not edit by hand. \
         Every figure is measured against a baseline from the same run.\n\n\
         - kernel: {}\n- CPU: {} ({cpus} CPUs)\n- rustc: {}\n\n{}\n",
        if options.quick { " --quick" } else { "" },
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        first_line("uname", &["-r"]),
        cpu_model(),
        first_line("rustc", &["--version"]),
        sections.join("\n\n"),
    );
    let path = out_dir.join(if options.quick {
        "BENCHMARKS.quick.md"
    } else {
        "BENCHMARKS.md"
    });
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    print!("{report}");
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}
