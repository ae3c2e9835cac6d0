//! Maglev table build time for M = 65537 and 10, 100, 1,000 backends, against a baseline
//! measured in the same process: one hash and one store per slot, the least any builder of
//! an M-slot table must do. Prints a Markdown section for docs/BENCHMARKS.md
//! (`cargo xtask bench` collects it). `--quick` runs fewer rounds.

use std::{hint::black_box, time::Instant};

use lb_common::{consts::DEFAULT_MAGLEV_SIZE, hash::bytes_hash};
use lb_userspace::model::maglev::{self, Entry};

fn median_ns(rounds: usize, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_nanos() as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn backends(count: u32) -> Vec<Entry> {
    (0..count)
        .map(|i| Entry {
            id: i,
            weight: 100,
            identity: format!("198.18.{}.{}:8080", 10 + i / 250, 1 + i % 250).into_bytes(),
        })
        .collect()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 11 };
    let size = DEFAULT_MAGLEV_SIZE;
    let baseline = median_ns(rounds, || {
        let mut table = vec![0u32; size as usize];
        for (slot, entry) in table.iter_mut().enumerate() {
            *entry = bytes_hash(0, &(slot as u32).to_ne_bytes()) % size;
        }
        black_box(table);
    });
    println!("## Control plane: Maglev table build (M = {size})\n");
    println!(
        "Median of {rounds} builds. Baseline, same process: one hash and one store per slot \
         ({:.2} ms).\n",
        baseline / 1e6
    );
    println!("| backends | build (ms) | × baseline | per slot (ns) |");
    println!("|---:|---:|---:|---:|");
    for count in [10, 100, 1000] {
        let entries = backends(count);
        let build = median_ns(rounds, || {
            black_box(maglev::build(black_box(&entries), size, [0; 2]));
        });
        println!(
            "| {count} | {:.2} | {:.2} | {:.1} |",
            build / 1e6,
            build / baseline,
            build / f64::from(size)
        );
    }
}
