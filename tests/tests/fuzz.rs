//! Mutated golden packets through the real datapath: every verdict one the design allows,
//! forwarded packets well-formed and bound for a backend or back from a VIP, passed packets
//! untouched, each counted under exactly one reason. `LB_FUZZ_COUNT` packets (10,000 by
//! default; `cargo xtask fuzz` runs 10^6), from seed `LB_FUZZ_SEED`. Failing inputs are
//! kept in tests/regressions/ and replayed first on every run. Needs root.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use lb_common::stats::Stat;
use lb_tests::{
    fiblab::FibLab,
    fuzz::{self, Rng},
};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Packets between two sweeps.
const SWEEP_EVERY: u64 = 50_000;

#[test]
fn mutated_packets_get_only_allowed_verdicts() {
    lb_tests::require_root!();
    let count = env_number("LB_FUZZ_COUNT", 10_000);
    let seed = env_number("LB_FUZZ_SEED", 0x6c62_2d66_757a_7a31);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("regressions");
    // Read before anything is loaded: a missing or unreadable folder fails the test.
    let saved = fuzz::regressions(&dir).unwrap_or_else(|e| panic!("{e}"));
    let replayed = saved.len();
    let started = Instant::now();
    let lab = FibLab::new();
    let (limits, options) = fuzz::lab_setup();
    let (failures, reasons, dsr) = lab.with_datapath_loaded(limits, &options, |datapath, ids| {
        fuzz::configure_dsr(datapath);
        fuzz::configure_quic(datapath);
        let mut failures = Vec::new();
        let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (name, side, packet) in saved {
            if let Err(error) = fuzz::check(datapath, ids, side, &packet) {
                failures.push(format!("regression {name}: {error}"));
            }
        }
        let seeds = fuzz::seeds();
        let mut rng = Rng::new(seed);
        // The daemon's sweep, as it runs every few seconds: it rebuilds the proven-flow
        // filter that SYNs read, so they are fuzzed with it built.
        let sweeper = datapath.sweeper(lb_common::flow::DEFAULT_TIMEOUTS_NS);
        for n in 0..count {
            if n % SWEEP_EVERY == 0 {
                sweeper.sweep().expect("sweep the conntrack tables");
            }
            let (side, golden) = &seeds[rng.below(seeds.len())];
            let packet = fuzz::mutate(&mut rng, golden);
            match fuzz::check(datapath, ids, *side, &packet) {
                Ok(reason) => *reasons.entry(reason.name()).or_default() += 1,
                Err(error) => {
                    let name = format!("{seed:016x}-{n}.bin");
                    failures.push(match fuzz::save(&dir, &name, *side, &packet) {
                        Ok(()) => format!("{name}: {error}"),
                        Err(e) => format!("{name} (NOT SAVED: {e}): {error}"),
                    });
                    if failures.len() >= 20 {
                        break;
                    }
                }
            }
        }
        let stats = datapath.stats();
        let dsr = [
            Stat::DsrIpipEncapsulated,
            Stat::DsrL2Forwarded,
            Stat::DsrGueEncapsulated,
            Stat::GueSecondHop,
            Stat::DsrTooBig,
            Stat::QuicByServerId,
        ]
        .map(|stat| (stat.name(), stats.get(stat).packets));
        (failures, reasons, dsr)
    });
    eprintln!(
        "fuzz: {replayed} regressions and {count} packets from seed {seed:#x} in {:.1} s; \
         reasons: {reasons:?}; DSR outputs checked: {dsr:?}",
        started.elapsed().as_secs_f64()
    );
    // The DSR paths are among the seeds: a run of any size sends some of them.
    if count >= 1_000 {
        assert!(
            dsr[0].1 > 0 && dsr[1].1 > 0 && dsr[2].1 > 0 && dsr[3].1 > 0 && dsr[5].1 > 0,
            "no DSR output (or no packet by QUIC server id) was checked: {dsr:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} inputs broke a property (kept in {}):\n{}",
        failures.len(),
        dir.display(),
        failures.join("\n")
    );
}
