//! Runs the real XDP program on given bytes with `BPF_PROG_TEST_RUN`.

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{Program, TestRun as _, TestRunOptions, Xdp},
};
use std::time::Duration;

use lb_common::{
    capture::{CaptureCounts, CaptureFilter, CaptureHeader, CaptureScratch},
    consts::{MAP_CAPTURE_FILTER, MAP_CAPTURE_RING, MAP_CAPTURE_SCRATCH, PROGRAM_NAME},
    stats::Stat,
};
use lb_userspace::{
    control::map_sync::MapSync,
    datapath::{
        capture, load,
        maps::ServiceMaps,
        stats::{Snapshot, StatsMap},
    },
    model::limits::{Limits, Options},
};

/// Room for the program to grow a packet (encapsulation, later) without truncation.
const OUTPUT_HEADROOM: usize = 256;

/// The datapath loaded into the kernel (not attached anywhere), with its counters.
pub struct Datapath {
    ebpf: Ebpf,
    stats: StatsMap,
    /// Fills VIPS, BACKENDS and MAGLEV the way the daemon does.
    pub balancer: MapSync,
    ifindex: u32,
    /// `lb capture`'s ring, once [`Datapath::start_capture`] took it.
    capture_ring: Option<RingBuf<MapData>>,
}

/// One `lb capture` record: its header, the packet as received and as sent.
#[derive(Debug)]
pub struct CaptureRecord {
    pub header: CaptureHeader,
    pub received: Vec<u8>,
    pub sent: Vec<u8>,
}

/// What the program did to one packet.
#[derive(Debug)]
pub struct Verdict {
    pub action: u32,
    pub packet: Vec<u8>,
}

impl Datapath {
    /// Small maps: enough for every golden packet.
    pub const TEST_LIMITS: Limits = Limits {
        max_vips: 8,
        maglev_size: lb_common::consts::DEFAULT_MAGLEV_SIZE,
        conntrack_capacity: 65_536,
        max_backends: lb_common::consts::MAX_BACKENDS,
    };

    /// Loads the object embedded in `lb`. Needs root.
    pub fn load() -> Self {
        Self::load_with(Self::TEST_LIMITS)
    }

    /// Loads the object with maps of the given sizes.
    pub fn load_with(limits: Limits) -> Self {
        Self::load_with_options(limits, &Options::default())
    }

    /// Loads the object with maps of the given sizes and load-time options.
    pub fn load_with_options(limits: Limits, options: &Options) -> Self {
        let mut ebpf = load::open(load::OBJECT, &limits, None, options)
            .expect("open the embedded eBPF object");
        load::program(&mut ebpf)
            .expect("the object has the lb XDP program")
            .load()
            .expect("the verifier accepts the program (run as root)");
        let without_slot =
            load::install_tail_calls(&mut ebpf).expect("the tail-called programs load");
        assert!(
            without_slot.is_empty(),
            "no JUMPS slot for {without_slot:?}"
        );
        let stats = StatsMap::take(&mut ebpf).expect("the object has the stats map");
        let maps = ServiceMaps::take(&mut ebpf, &limits).expect("the object has its service maps");
        Self {
            ebpf,
            stats,
            balancer: MapSync::new(maps, limits).with_hash_seed(options.hash_seed),
            ifindex: 0,
            capture_ring: None,
        }
    }

    /// Runs as if packets arrived on `ifindex` (of the calling thread's namespace), so
    /// `bpf_fib_lookup` answers from that namespace's routes and neighbours.
    pub fn set_ingress(&mut self, ifindex: u32) {
        self.ifindex = ifindex;
    }

    /// Keeps the calling thread on the CPU it runs on now, so per-CPU maps (the next-hop
    /// and flow caches) answer the same way from one run to the next. The current CPU,
    /// not a fixed one: two eBPF tests run at once, each on its own core.
    pub fn stay_on_one_cpu() {
        // SAFETY: no arguments; returns the CPU of the calling thread or -1.
        let cpu = unsafe { libc::sched_getcpu() };
        let cpu = usize::try_from(cpu)
            .unwrap_or_else(|_| panic!("sched_getcpu: {}", std::io::Error::last_os_error()));
        Self::run_on_cpu(cpu);
    }

    /// Moves the calling thread to `cpu` and keeps it there: the runs that follow use
    /// that CPU's slots of the per-CPU maps.
    pub fn run_on_cpu(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET ignores a CPU past the set's range (then the call below fails).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: pid 0 is this thread; `set` is a valid cpu_set_t of the size given.
        let rc = unsafe { libc::sched_setaffinity(0, size_of_val(&set), &raw const set) };
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Runs the program once on `packet`.
    pub fn run(&mut self, packet: &[u8]) -> Verdict {
        let (verdict, _) = self.run_program(PROGRAM_NAME, packet, 1);
        verdict
    }

    /// Runs program `name` of the object (`lb`, `baseline_pass`, `baseline_floor`)
    /// `repeat` times on `packet`; the verdict of the last run and the kernel's time per run.
    /// The kernel reuses one buffer across repeats: only a program that leaves the packet
    /// as it found it sees the same input every time.
    pub fn run_program(&mut self, name: &str, packet: &[u8], repeat: u32) -> (Verdict, Duration) {
        let mut out = vec![0u8; packet.len() + OUTPUT_HEADROOM];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data_end == packet length.
        let xdp_md: Vec<u8> = [0, packet.len() as u32, 0, self.ifindex, 0, 0]
            .iter()
            .flat_map(|field| field.to_ne_bytes())
            .collect();
        let ifindex = self.ifindex;
        let program = self.program_named(name);
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ctx_in: (ifindex != 0).then_some(&xdp_md[..]),
                repeat,
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes failed: {e}", packet.len()));
        out.truncate(result.data_size_out as usize);
        (
            Verdict {
                action: result.return_value,
                packet: out,
            },
            result.duration,
        )
    }

    /// How many instructions the verifier processed to accept program `name` (the
    /// budget is 10^6), loading it if needed; `None` on kernels before 5.16. An XDP
    /// program or the tracing program that counts lost redirects.
    pub fn verified_instructions(&mut self, name: &str) -> Option<u32> {
        let info = match self.ebpf.program_mut(name) {
            Some(Program::TracePoint(program)) => {
                if program.fd().is_err() {
                    program
                        .load()
                        .unwrap_or_else(|e| panic!("loading {name}: {e}"));
                }
                program.info()
            }
            _ => self.program_named(name).info(),
        };
        info.expect("program info").verified_instruction_count()
    }

    /// Pins program `name` (loaded if needed) at `path` in bpffs, so that another process
    /// (the shared Katran harness) can test-run it with this datapath's maps.
    pub fn pin_program(&mut self, name: &str, path: &std::path::Path) {
        self.program_named(name)
            .pin(path)
            .unwrap_or_else(|e| panic!("pinning {name} at {}: {e}", path.display()));
    }

    /// Program `name`, loaded on first use.
    fn program_named(&mut self, name: &str) -> &mut Xdp {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("the object has no XDP program {name}"));
        if program.fd().is_err() {
            program
                .load()
                .unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        program
    }

    /// Sets `lb capture`'s filter (as the daemon does before it swaps `lb_capture` in) and
    /// empties the ring; run the program `lb_capture` to capture.
    pub fn start_capture(&mut self, filter: &CaptureFilter) {
        let mut filters: Array<_, CaptureFilter> = Array::try_from(
            self.ebpf
                .map_mut(MAP_CAPTURE_FILTER)
                .expect("the object has the capture filter"),
        )
        .expect("an array");
        filters.set(0, filter, 0).expect("write the capture filter");
        if self.capture_ring.is_none() {
            let map = self
                .ebpf
                .take_map(MAP_CAPTURE_RING)
                .expect("the object has the capture ring");
            self.capture_ring = Some(RingBuf::try_from(map).expect("a ring buffer"));
        }
        self.capture_records();
    }

    /// The records `lb_capture` wrote since the last call, in order.
    pub fn capture_records(&mut self) -> Vec<CaptureRecord> {
        let ring = self.capture_ring.as_mut().expect("start_capture first");
        let mut records = Vec::new();
        while let Some(item) = ring.next() {
            let record = capture::decode(&item).expect("a record as long as its header says");
            records.push(CaptureRecord {
                header: record.header,
                received: record.received.to_vec(),
                sent: record.sent.to_vec(),
            });
        }
        records
    }

    /// The capture's counts (matched, written, lost), summed over the CPUs.
    pub fn capture_counts(&self) -> CaptureCounts {
        let scratch: PerCpuArray<_, CaptureScratch> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_CAPTURE_SCRATCH)
                .expect("the object has the capture scratch"),
        )
        .expect("a per-CPU array");
        let mut total = CaptureCounts::default();
        for cpu in scratch.get(&0, 0).expect("read the capture counts").iter() {
            total.merge(&cpu.counts);
        }
        total
    }

    /// The daemon's conntrack sweep over this datapath's table, with `timeouts`.
    pub fn sweeper(
        &self,
        timeouts: lb_common::flow::Timeouts,
    ) -> lb_userspace::datapath::conntrack::Sweeper {
        let table = self
            .balancer
            .maps()
            .conntrack_table()
            .expect("a handle on the conntrack map");
        let stats = self.stats.try_clone().expect("a handle on the stats map");
        lb_userspace::datapath::conntrack::Sweeper::new(
            table,
            stats,
            self.proven_filter(),
            timeouts,
        )
    }

    /// One pass of the daemon's sweep with the default timeouts, as it runs at start and
    /// every few seconds (it deletes expired flows and rebuilds the proven-flow filter).
    pub fn sweep(&self) -> lb_userspace::datapath::conntrack::Census {
        self.sweeper(lb_common::flow::DEFAULT_TIMEOUTS_NS)
            .sweep()
            .expect("sweep the conntrack tables")
    }

    /// The proven-flow filter of this datapath, mapped here.
    pub fn proven_filter(&self) -> lb_userspace::datapath::proven_filter::ProvenFilter {
        self.balancer
            .maps()
            .proven_filter()
            .expect("map the proven-flow filter")
    }

    pub fn stats(&self) -> Snapshot {
        self.stats.read().expect("read the stats map")
    }

    /// Runs `packet` and returns the verdict with the packet counts each counter gained.
    /// Runs program `name` on `repeat` live frames of `packet` (BPF_F_TEST_XDP_LIVE_FRAMES,
    /// `batch` frames at a time): XDP_TX and XDP_REDIRECT really transmit, XDP_PASS hands
    /// the frame to this namespace's stack. Returns the wall time of the call and the
    /// counters that moved.
    pub fn run_live(
        &mut self,
        name: &str,
        packet: &[u8],
        repeat: u32,
        batch: u32,
    ) -> (Duration, CounterDelta) {
        let xdp_md: Vec<u8> = [0, packet.len() as u32, 0, self.ifindex, 0, 0]
            .iter()
            .flat_map(|field| field.to_ne_bytes())
            .collect();
        let before = self.stats();
        let program = self.program_named(name);
        let started = std::time::Instant::now();
        program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                ctx_in: Some(&xdp_md[..]),
                repeat,
                attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(batch),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("live BPF_PROG_TEST_RUN of {name} failed: {e}"));
        let took = started.elapsed();
        let after = self.stats();
        (took, CounterDelta { before, after })
    }

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

/// The conntrack key of `client`:`port` → `vip`:`vip_port` for `proto`, as the datapath
/// builds it.
pub fn flow_key(
    client: std::net::IpAddr,
    port: u16,
    vip: std::net::IpAddr,
    vip_port: u16,
    proto: u8,
) -> lb_common::flow::FlowKey {
    let (src, family) = lb_userspace::control::map_sync::wire_addr(client);
    let (dst, _) = lb_userspace::control::map_sync::wire_addr(vip);
    lb_common::flow::FlowKey {
        src,
        dst,
        src_port: port,
        dst_port: vip_port,
        proto,
        family,
        _pad: [0; 2],
    }
}
