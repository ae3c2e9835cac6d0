//! Runs the real XDP program on given bytes with `BPF_PROG_TEST_RUN`.

use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::stats::Stat;
use lb_userspace::{
    datapath,
    stats::{Snapshot, StatsMap},
};

/// Room for the program to grow a packet (encapsulation, later) without truncation.
const OUTPUT_HEADROOM: usize = 256;

/// The datapath loaded into the kernel (not attached anywhere), with its counters.
pub struct Datapath {
    ebpf: Ebpf,
    stats: StatsMap,
}

/// What the program did to one packet.
#[derive(Debug)]
pub struct Verdict {
    pub action: u32,
    pub packet: Vec<u8>,
}

impl Datapath {
    /// Loads the object embedded in `lb`. Needs root.
    pub fn load() -> Self {
        let mut ebpf = datapath::open(datapath::OBJECT).expect("open the embedded eBPF object");
        datapath::program(&mut ebpf)
            .expect("the object has the lb XDP program")
            .load()
            .expect("the verifier accepts the program (run as root)");
        let stats = StatsMap::take(&mut ebpf).expect("the object has the stats map");
        Self { ebpf, stats }
    }

    fn program(&mut self) -> &mut Xdp {
        datapath::program(&mut self.ebpf).expect("the program is loaded")
    }

    /// Runs the program once on `packet`.
    pub fn run(&mut self, packet: &[u8]) -> Verdict {
        let mut out = vec![0u8; packet.len() + OUTPUT_HEADROOM];
        let result = self
            .program()
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes failed: {e}", packet.len()));
        out.truncate(result.data_size_out as usize);
        Verdict {
            action: result.return_value,
            packet: out,
        }
    }

    pub fn stats(&self) -> Snapshot {
        self.stats.read().expect("read the stats map")
    }

    /// Runs `packet` and returns the verdict with the packet counts each counter gained.
    pub fn run_counted(&mut self, packet: &[u8]) -> (Verdict, CounterDelta) {
        let before = self.stats();
        let verdict = self.run(packet);
        let after = self.stats();
        (verdict, CounterDelta { before, after })
    }
}

/// Counter changes across one run.
pub struct CounterDelta {
    before: Snapshot,
    after: Snapshot,
}

impl CounterDelta {
    pub fn packets(&self, stat: Stat) -> u64 {
        self.after.get(stat).packets - self.before.get(stat).packets
    }

    /// The stats that moved, by name, for assertion messages.
    pub fn moved(&self) -> Vec<(&'static str, u64)> {
        Stat::ALL
            .iter()
            .map(|&s| (s.name(), self.packets(s)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}
