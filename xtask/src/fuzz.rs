//! `cargo xtask fuzz [--count N] [--seed S]`: mutated golden packets through the real
//! datapath (10^6 by default; `cargo xtask test` runs 10^4). Failing inputs are kept in
//! tests/regressions/ and replayed by every later run.

use clap::Args;

use crate::cmd;

#[derive(Args, Debug)]
pub(crate) struct Options {
    /// Packets to generate.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Seed for the mutations [default: from the clock, printed].
    #[arg(long)]
    seed: Option<u64>,
}

pub(crate) fn run(options: &Options) -> anyhow::Result<()> {
    if !cmd::is_root() {
        anyhow::bail!(
            "fuzzing loads the XDP program in a namespace: run `cargo xtask fuzz` as root"
        );
    }
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!(
        "fuzz: {} packets, seed {seed} (pass --seed {seed} to repeat)",
        options.count
    );
    cmd::run(
        cmd::release_test("ebpf", "fuzz")?
            .env("LB_FUZZ_COUNT", options.count.to_string())
            .env("LB_FUZZ_SEED", seed.to_string()),
    )
}
