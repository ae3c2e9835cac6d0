//! `cargo xtask`: the one entry point to set up, build, run and test lb.

mod bench;
mod build;
mod cmd;
mod demo;
mod fuzz;
mod install;
mod layers;
mod package;
mod run;
mod setup;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test lb")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs (nightly rust-src, bpf-linker) and the test tools.
    Setup,
    /// Build the eBPF datapath and the `lb` binary that embeds it.
    Build(build::Options),
    /// Build, then the demo lab (no arguments) or `lb` as root with the given arguments.
    Run(run::Options),
    /// Run every check CI runs: fmt, clippy, unit, eBPF and integration tests.
    Test,
    /// Check that lb-userspace's layers import only downward, with no cycles.
    Layers,
    /// Run the benchmarks and write docs/BENCHMARKS.md.
    Bench(bench::Options),
    /// Fuzz the datapath with mutated packets (10^6 by default).
    Fuzz(fuzz::Options),
    /// Soak lb with traffic while backends change (10 minutes by default).
    Soak(soak::Options),
    /// Build the release `lb` and install it with its systemd unit, man pages and shell
    /// completions (as root for the default prefix).
    Install(install::Options),
    /// Build a Debian package of the same files (prefix /usr) under target/; prints its path.
    Package(package::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Build(options) => {
            setup::run()?;
            build::run(&options).map(drop)
        }
        Task::Run(options) => {
            setup::run()?;
            run::run(&options)
        }
        Task::Fuzz(options) => {
            setup::run()?;
            fuzz::run(&options)
        }
        Task::Soak(options) => {
            setup::run()?;
            soak::run(&options)
        }
        Task::Bench(options) => {
            setup::run()?;
            bench::run(&options)
        }
        Task::Install(options) => {
            setup::run()?;
            install::run(&options).map(drop)
        }
        Task::Package(options) => {
            setup::run()?;
            let deb = package::run(&options)?;
            println!("{}", deb.display());
            Ok(())
        }
        Task::Layers => {
            let files = layers::check(&cmd::workspace_root().join("lb-userspace/src"))?;
            eprintln!("{files} files: every import goes downward, no cycles");
            Ok(())
        }
        Task::Test => test::run(),
    }
}
