//! lb beside Katran in one harness: `../shared/katran-bench` (Katran's own XDP program,
//! built from its sources with its own recipe) times Katran, a MAC-swap floor and lb's
//! pinned `lb` program with `BPF_PROG_TEST_RUN`, one packet per call, rows interleaved over
//! rounds, each against the floor of the same round. lb runs in a lab namespace (real
//! routes and neighbours for `bpf_fib_lookup`, called with the ingress ifindex of its
//! client-facing veth) with a NAT VIP, a dsr-ipip VIP and a dsr-gue VIP of three backends
//! each, in IPv4 and IPv6, its maps at the daemon's default sizes but conntrack (its unproven table as large as
//! Katran's LRU), admission and the MAC check on.
//! lb's counters over the run prove that every row took the path it is named after.
//! Katran's IPv6 rows come from a second Katran (pinned, an IPv6 VIP added), its GUE rows
//! from two more built with `-DGUE_ENCAP` (one per family, so that neither sees more new
//! flows than its flood guard allows), each checked by its own counters and LRU.
//!
//! Needs root, clang, llc, gcc, libbpf-dev (installed by `cargo xtask setup --bench`) and
//! the harness: `LB_KATRAN_BENCH`, else `../shared/katran-bench` beside the checkout.
//! Prints a Markdown section. `--quick` runs fewer rounds and calls.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use lb_common::stats::Stat;
use lb_tests::{
    fiblab::{FibLab, Ids, add_dsr_vip, add_gue_vip, dsr_options},
    katran::{self, Encap, KatranBuild, KatranCounters, PinnedKatran},
    packets::{Family, LB_MAC, Spec, Transport},
    testrun::Datapath,
};
use lb_userspace::model::{
    limits::{Limits, Options},
    mode::Mode,
    state::{Change, Proto, Service},
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn v6(text: &str) -> std::net::Ipv6Addr {
    text.parse().expect("IPv6 address")
}

/// Entries of the harness's Katran LRU (its default), rounded to a power of two.
const KATRAN_LRU: u32 = 1 << 20;

/// The third backend of every VIP here (FibLab pins the first two).
const THIRD_BACKEND_MAC: [u8; 6] = [0x02, 0x18, 0, 0, 2, 4];

/// One family's addresses: the client, the NAT VIP, the DSR VIPs, an address that is no
/// VIP, and the three backends.
struct Addresses {
    family: Family,
    client: IpAddr,
    /// The new-flow rows' client: the harness varies its port and low address bits, which
    /// must never meet the established rows' 5-tuples.
    new_clients: IpAddr,
    nat_vip: IpAddr,
    dsr_vip: IpAddr,
    gue_vip: IpAddr,
    not_vip: IpAddr,
    backends: [IpAddr; 3],
}

fn addresses() -> [Addresses; 2] {
    [
        Addresses {
            family: Family::V4,
            client: ip("198.18.0.1"),
            new_clients: ip("198.18.100.1"),
            nat_vip: ip("198.18.1.20"),
            dsr_vip: ip("198.18.1.21"),
            gue_vip: ip("198.18.1.22"),
            not_vip: ip("198.18.9.9"),
            backends: [ip("198.18.2.2"), ip("198.18.2.3"), ip("198.18.2.4")],
        },
        Addresses {
            family: Family::V6,
            client: ip("fd00::1"),
            new_clients: ip("fd00::100:1"),
            nat_vip: ip("fd00:1::20"),
            dsr_vip: ip("fd00:1::21"),
            gue_vip: ip("fd00:1::22"),
            not_vip: ip("fd00:9::9"),
            backends: [ip("fd00:2::2"), ip("fd00:2::3"), ip("fd00:2::4")],
        },
    ]
}

/// What a row's calls must move in lb's counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Established,
    NewFlow,
    NotVip,
}

/// One lb row: its name, frame, path and its VIP's mode (NAT for the non-VIP rows).
struct LbRow {
    name: String,
    frame: Vec<u8>,
    path: Kind,
    mode: Mode,
    v6: bool,
}

/// The lb rows' VIPs in table order, with their modes' names.
const MODES: [(Mode, &str); 3] = [
    (Mode::Nat, "NAT"),
    (Mode::DsrIpip, "dsr-ipip"),
    (Mode::DsrGue, "dsr-gue"),
];

fn vip_of(a: &Addresses, mode: Mode) -> IpAddr {
    match mode {
        Mode::DsrIpip => a.dsr_vip,
        Mode::DsrGue => a.gue_vip,
        Mode::Nat | Mode::DsrL2 => a.nat_vip,
    }
}

fn lb_rows() -> Vec<LbRow> {
    let mut rows = Vec::new();
    for a in addresses() {
        let v6 = a.family == Family::V6;
        let fam = if v6 { "IPv6" } else { "IPv4" };
        for (mode, mode_name) in MODES {
            let vip = vip_of(&a, mode);
            let established = Spec::new(a.family, Transport::Tcp)
                .between(a.client, vip)
                .ports(31337, 80)
                .ack();
            rows.push(LbRow {
                name: format!("lb {fam} {mode_name} established"),
                frame: established.build(b"katran-bench pkt"),
                path: Kind::Established,
                mode,
                v6,
            });
            let syn = Spec::new(a.family, Transport::Tcp)
                .between(a.new_clients, vip)
                .ports(1024, 80);
            rows.push(LbRow {
                name: format!("lb {fam} {mode_name} new flow"),
                frame: syn.build(b"katran-bench pkt"),
                path: Kind::NewFlow,
                mode,
                v6,
            });
        }
        let other = Spec::new(a.family, Transport::Tcp)
            .between(a.client, a.not_vip)
            .ports(31337, 80)
            .ack();
        rows.push(LbRow {
            name: format!("lb {fam} non-VIP"),
            frame: other.build(b"katran-bench pkt"),
            path: Kind::NotVip,
            mode: Mode::Nat,
            v6,
        });
    }
    rows
}

/// The NAT, dsr-ipip and dsr-gue VIPs of each family, three backends each, as the daemon
/// would set them up; the client-side interface's MAC recorded (the MAC check runs). The
/// dsr-gue VIP is built in one change, as a config file or a restart applies it: one
/// table and no earlier one, so every hop list holds one hop.
fn configure(lab: &FibLab, datapath: &mut Datapath, ids: &Ids) {
    lab.set_backend_neighbour("198.18.2.4", THIRD_BACKEND_MAC);
    lab.set_backend_neighbour("fd00:2::4", THIRD_BACKEND_MAC);
    for a in addresses() {
        let service = Service {
            addr: std::net::SocketAddr::new(a.nat_vip, 80),
            proto: Proto::Tcp,
        };
        datapath
            .balancer
            .apply(&Change::AddVip(service))
            .expect("a NAT VIP");
        for backend in a.backends {
            datapath
                .balancer
                .apply(&Change::AddBackend {
                    server_id: None,
                    service,
                    backend: std::net::SocketAddr::new(backend, 8081),
                    weight: 100,
                })
                .expect("a NAT backend");
        }
        add_dsr_vip(datapath, a.dsr_vip, Mode::DsrIpip, &a.backends);
        add_gue_vip(datapath, a.gue_vip, &a.backends);
    }
    datapath
        .balancer
        .set_local_macs(&[(ids.from_client, LB_MAC)], &[ids.from_client])
        .expect("record the client side's MAC");
}

/// Proves each established row's flow first (the client's packets until it is promoted to
/// the proven table), as a real connection would be before its steady state.
fn prove(datapath: &mut Datapath, rows: &[LbRow]) {
    let before = datapath.stats();
    let mut established = 0;
    for row in rows.iter().filter(|row| row.path == Kind::Established) {
        established += 1;
        for _ in 0..=lb_common::flow::PROVEN_AFTER_PACKETS {
            datapath.run(&row.frame);
        }
    }
    let promoted =
        datapath.stats().get(Stat::CtPromoted).packets - before.get(Stat::CtPromoted).packets;
    assert_eq!(
        promoted, established,
        "every established row's flow is proven before timing"
    );
    // The daemon sweeps at start and every few seconds: its walk builds the proven-flow
    // filter, which new flows read.
    datapath.sweep();
}

/// One row of the harness's table.
struct Measured {
    name: String,
    action: String,
    ns: f64,
    ratio: f64,
    above: f64,
}

/// Rows of kbench's table: name, action, dlen, ns/call, x floor, -floor, min-max, p50, wall.
fn parse_table(text: &str) -> Vec<Measured> {
    text.lines()
        .skip_while(|line| !line.starts_with("row "))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let n = fields.len();
            (n >= 9).then(|| Measured {
                name: fields[..n - 8].join(" "),
                action: fields[n - 8].to_owned(),
                ns: fields[n - 6].parse().unwrap_or(f64::NAN),
                ratio: fields[n - 5].parse().unwrap_or(f64::NAN),
                above: fields[n - 4].parse().unwrap_or(f64::NAN),
            })
        })
        .collect()
}

/// Which Katran row an lb row is held against: the IPv6 ones for IPv6, the GUE build's
/// for dsr-gue.
fn katran_peer(row: &LbRow) -> &'static str {
    match (row.path, row.v6, row.mode == Mode::DsrGue) {
        (Kind::Established, false, false) => "katran established (LRU hit)",
        (Kind::NewFlow, false, false) => "katran new flow (SYN, new sport)",
        (Kind::NotVip, false, _) => "katran non-VIP (XDP_PASS)",
        (Kind::Established, true, false) => KATRAN6_ESTABLISHED,
        (Kind::NewFlow, true, false) => KATRAN6_NEW,
        (Kind::NotVip, true, _) => KATRAN6_NOT_VIP,
        (Kind::Established, false, true) => KATRAN_GUE4_ESTABLISHED,
        (Kind::NewFlow, false, true) => KATRAN_GUE4_NEW,
        (Kind::Established, true, true) => KATRAN_GUE6_ESTABLISHED,
        (Kind::NewFlow, true, true) => KATRAN_GUE6_NEW,
    }
}

/// Katran's IPv6 VIP (in the pinned Katrans) and its rows' names.
const KATRAN_VIP6: &str = "fd00:1::100";
const KATRAN6_ESTABLISHED: &str = "katran IPv6 established";
const KATRAN6_NEW: &str = "katran IPv6 new flow";
const KATRAN6_NOT_VIP: &str = "katran IPv6 non-VIP";
/// The GUE build's rows, and the outer sources it is given (`pckt_srcs`).
const KATRAN_GUE4_ESTABLISHED: &str = "katran GUE IPv4 established";
const KATRAN_GUE4_NEW: &str = "katran GUE IPv4 new flow";
const KATRAN_GUE6_ESTABLISHED: &str = "katran GUE IPv6 established";
const KATRAN_GUE6_NEW: &str = "katran GUE IPv6 new flow";
const KATRAN_GUE_SOURCE4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(172, 16, 0, 1);
const KATRAN_GUE_SOURCE6: &str = "fd00:16::1";
/// The IPv4 VIP and reals kbench configures in every Katran it loads (its defaults).
const KBENCH_VIP4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 200, 0, 1);
const KBENCH_REALS4: u8 = 4;

/// One pinned Katran timed as extra rows: each row's name, frame and whether it is a new
/// flow; the first row is its established flow, which has been sent once before `before`.
struct TimedKatran {
    katran: PinnedKatran,
    rows: Vec<(&'static str, Vec<u8>, bool)>,
    before: KatranCounters,
}

impl TimedKatran {
    /// Sends the established flow's first packet, before timing (the harness sends none of
    /// its own for extra rows), so that every timed call of it hits the LRU; a GUE build's
    /// output is checked (UDP to Katran's GUE port from `pckt_srcs`, toward a real, the
    /// client's packet intact).
    fn primed(katran: PinnedKatran, rows: Vec<(&'static str, Vec<u8>, bool)>) -> Self {
        let (name, frame, _) = &rows[0];
        let (action, out) = katran
            .run(frame)
            .unwrap_or_else(|e| panic!("{name}: its flow's first packet: {e}"));
        assert_eq!(action, 3, "{name}: XDP_TX");
        if let Encap::Gue { source4, source6 } = katran.encap {
            let (src, dst) = katran::check_gue_frame(&out, &frame[14..])
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let reals: Vec<IpAddr> = if dst.is_ipv4() {
                (1..=KBENCH_REALS4)
                    .map(|i| IpAddr::from([10, 0, 0, i]))
                    .collect()
            } else {
                katran.reals6.iter().copied().map(IpAddr::V6).collect()
            };
            let source = if dst.is_ipv4() {
                IpAddr::V4(source4)
            } else {
                IpAddr::V6(source6)
            };
            assert_eq!(src, source, "{name}: the outer source from pckt_srcs");
            assert!(reals.contains(&dst), "{name}: {dst} is no real");
        }
        let before = katran.counters();
        Self {
            katran,
            rows,
            before,
        }
    }

    /// Katran's own counters over the run: its established flow hit its LRU on every call,
    /// every new flow missed it and was inserted (none skipped by its flood guard), every
    /// VIP packet was encapsulated and sent, nothing fell back to the shared LRU.
    fn check(&self, per_row: u64) {
        let name = self.rows[0].0;
        let moved = self.katran.counters().since(&self.before);
        assert_eq!(moved.vip_packets, 2 * per_row, "{name}: VIP packets");
        assert_eq!(moved.xdp_tx, 2 * per_row, "{name}: VIP packets sent");
        assert_eq!(moved.encap_fails, 0, "{name}: encapsulation failures");
        assert_eq!(
            moved.lru_misses, per_row,
            "{name}: only new flows miss its LRU"
        );
        assert_eq!(moved.fallback_lru, 0, "{name}: its CPU's own LRU");
        assert_eq!(
            self.katran.lru_entries() as u64,
            1 + per_row,
            "{name}: every new flow inserted (none skipped by its flood guard)"
        );
    }
}

/// The Katrans pinned beside kbench's own: the IPIP build with an IPv6 VIP for the IPv6
/// rows, and the GUE build twice (IPv4 rows, IPv6 rows), so that each Katran carries one
/// new-flow row as kbench's own does: its flood guard counts all its new flows, and
/// extra rows are not paced below it.
fn pinned_katrans(harness: &Path, build: &Path, cpu: usize) -> Vec<TimedKatran> {
    let vip6 = v6(KATRAN_VIP6);
    let reals6 = [v6("fd00:2::11"), v6("fd00:2::12"), v6("fd00:2::13")];
    let gue_build = build.with_file_name("katran-bench-gue");
    let gue = Encap::Gue {
        source4: KATRAN_GUE_SOURCE4,
        source6: v6(KATRAN_GUE_SOURCE6),
    };
    let pin = |dir: &Path, encap: Encap, tag: &str| {
        PinnedKatran::new(
            harness,
            &KatranBuild { dir, encap },
            &katran::unique_pin_dir(tag),
            cpu,
            vip6,
            80,
            &reals6,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let rows6 = |established: &'static str, new: &'static str| {
        vec![
            (
                established,
                katran::frame6(v6("fd00::1"), 31337, vip6, 80, false),
                false,
            ),
            (
                new,
                katran::frame6(v6("fd00::100:1"), 1024, vip6, 80, true),
                true,
            ),
        ]
    };
    let mut ipip6 = rows6(KATRAN6_ESTABLISHED, KATRAN6_NEW);
    ipip6.push((
        KATRAN6_NOT_VIP,
        katran::frame6(v6("fd00::1"), 31337, v6("fd00:9::9"), 80, false),
        false,
    ));
    let gue4 = vec![
        (
            KATRAN_GUE4_ESTABLISHED,
            katran::frame4(
                std::net::Ipv4Addr::new(192, 0, 2, 1),
                31337,
                KBENCH_VIP4,
                80,
                false,
            ),
            false,
        ),
        (
            KATRAN_GUE4_NEW,
            katran::frame4(
                std::net::Ipv4Addr::new(198, 18, 0, 1),
                1024,
                KBENCH_VIP4,
                80,
                true,
            ),
            true,
        ),
    ];
    vec![
        TimedKatran::primed(pin(build, Encap::Ipip, "bench"), ipip6),
        TimedKatran::primed(pin(&gue_build, gue, "bench-gue4"), gue4),
        TimedKatran::primed(
            pin(&gue_build, gue, "bench-gue6"),
            rows6(KATRAN_GUE6_ESTABLISHED, KATRAN_GUE6_NEW),
        ),
    ]
}

/// lb's counters over the harness's run must show every call took its row's path.
fn check_paths(
    before: &lb_userspace::datapath::stats::Snapshot,
    after: &lb_userspace::datapath::stats::Snapshot,
    rows: &[LbRow],
    per_row: u64,
) {
    let moved = |stat: Stat| after.get(stat).packets - before.get(stat).packets;
    let count = |path: Kind| rows.iter().filter(|r| r.path == path).count() as u64 * per_row;
    let encapsulated = |mode: Mode| {
        rows.iter()
            .filter(|r| r.mode == mode && r.path != Kind::NotVip)
            .count() as u64
            * per_row
    };
    let checks = [
        (
            "fwd_established",
            moved(Stat::ForwardEstablished),
            count(Kind::Established),
        ),
        (
            "fwd_new_flow",
            moved(Stat::ForwardNew),
            count(Kind::NewFlow),
        ),
        ("pass_not_vip", moved(Stat::PassNotVip), count(Kind::NotVip)),
        ("ct_created", moved(Stat::CtCreated), count(Kind::NewFlow)),
        ("ct_flood_untracked", moved(Stat::CtFloodUntracked), 0),
        (
            "dsr_ipip_encapsulated",
            moved(Stat::DsrIpipEncapsulated),
            encapsulated(Mode::DsrIpip),
        ),
        (
            "dsr_gue_encapsulated",
            moved(Stat::DsrGueEncapsulated),
            encapsulated(Mode::DsrGue),
        ),
        // No change during the run: every hop list holds one hop.
        ("gue_sent_with_second_hop", moved(Stat::GueSecondHop), 0),
    ];
    let events = format!(
        "ct_created {}, ct_replaced {}, ct_insert_failed {}, ct_flood_untracked {}",
        moved(Stat::CtCreated),
        moved(Stat::CtReplaced),
        moved(Stat::CtInsertFailed),
        moved(Stat::CtFloodUntracked)
    );
    // Established rows go out from the flow cache (dsr-gue's through a tail call that
    // builds the hop list), but for one slow-path packet a second per flow (the slot's
    // refresh).
    let established = rows.iter().filter(|r| r.path == Kind::Established).count() as u64 * per_row;
    let hits = moved(Stat::FlowCacheHit);
    assert!(
        hits <= established && hits * 100 >= established * 99,
        "flow cache hits {hits} of {established} established packets ({events})"
    );
    for (name, got, want) in checks {
        assert_eq!(got, want, "lb's {name} over the harness's run ({events})");
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, calls, warmup) = if quick {
        (2, 5_000, 500)
    } else {
        (5, 20_000, 1_000)
    };
    let harness = katran::harness_dir();
    if let Err(why) = katran::check_harness(&harness) {
        panic!("{why}");
    }
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/katran-bench");
    let frames = build.join("lb-frames");
    std::fs::create_dir_all(&frames).expect("frames directory");
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/lb-katran-bench-{}",
        std::process::id()
    ));
    let rows = lb_rows();
    // Katran's own rows are IPv4 and IPIP; its IPv6 and GUE rows come from Katrans pinned
    // by the harness and completed here, timed as extra rows in the same run.
    let cpu = katran::default_cpu();
    let katrans = pinned_katrans(&harness, &build, cpu);
    let lab = FibLab::new();
    // The rate guard stays in the path, set above the harness's rate of new flows (its
    // rows are not paced), as the harness keeps Katran below Katran's own limit.
    let options = Options {
        new_flow_limit: 10_000_000,
        ..dsr_options()
    };
    // The unproven table, where new flows go, as large as Katran's LRU here (10^6): a
    // full table evicts on every insert, which Katran's never does in this harness.
    let limits = Limits {
        conntrack_capacity: KATRAN_LRU * lb_common::consts::CT_UNPROVEN_DIVISOR,
        ..Limits::default()
    };
    let (output, before, after) = lab.with_datapath_loaded(limits, &options, |datapath, ids| {
        configure(&lab, datapath, ids);
        datapath.set_ingress(ids.from_client);
        prove(datapath, &rows);
        std::fs::create_dir_all(&pin_dir).expect("pin directory");
        let _cleanup = RemoveOnDrop(pin_dir.clone());
        let pin = pin_dir.join("lb");
        datapath.pin_program("lb", &pin);
        let mut command = Command::new(harness.join("run.sh"));
        command
            .arg("--build")
            .arg(&build)
            .args(["--cpu", &cpu.to_string()])
            .args(["--rounds", &rounds.to_string()])
            .args(["--calls", &calls.to_string()])
            .args(["--warmup", &warmup.to_string()]);
        for (i, row) in rows.iter().enumerate() {
            let file = frames.join(format!("row{i}.bin"));
            std::fs::write(&file, &row.frame).expect("write a frame");
            command
                .arg("--extra-prog")
                .arg(&pin)
                .arg("--extra-pkt")
                .arg(&file)
                .args(["--extra-name", &row.name])
                .args(["--extra-ifindex", &ids.from_client.to_string()]);
            if row.path == Kind::NewFlow {
                command.arg("--extra-new-flow");
            }
        }
        let katran_rows = katrans
            .iter()
            .flat_map(|k| k.rows.iter().map(move |row| (&k.katran.prog_pin, row)));
        for (i, (prog, (name, frame, new_flow))) in katran_rows.enumerate() {
            let file = frames.join(format!("katran-{i}.bin"));
            std::fs::write(&file, frame).expect("write a frame");
            command
                .arg("--extra-prog")
                .arg(prog)
                .arg("--extra-pkt")
                .arg(&file)
                .args(["--extra-name", name]);
            if *new_flow {
                command.arg("--extra-new-flow");
            }
        }
        let before = datapath.stats();
        let output = command.output().expect("run the katran-bench harness");
        let after = datapath.stats();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "katran-bench failed: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        (text, before, after)
    });
    eprintln!("{output}");
    let per_row = (warmup + rounds * calls) as u64;
    check_paths(&before, &after, &rows, per_row);
    for timed in &katrans {
        timed.check(per_row);
    }
    let table = parse_table(&output);
    for row in &rows {
        let measured = table
            .iter()
            .find(|m| m.name == row.name)
            .unwrap_or_else(|| panic!("the harness printed no row {}", row.name));
        let want = if row.path == Kind::NotVip {
            "PASS"
        } else {
            "REDIRECT"
        };
        assert_eq!(
            measured.action, want,
            "{}: the action of every call",
            row.name
        );
    }
    check_gue_outputs(&output, &rows);
    let find = |name: &str| table.iter().find(|m| m.name == name);
    let mut out = String::new();
    out.push_str("## Beside Katran: one harness\n\n");
    out.push_str(&format!(
        "`../shared/katran-bench` ({}) builds Katran's own XDP program from its sources with its own \
         recipe and times it, a MAC-swap floor and lb's `lb` program with `BPF_PROG_TEST_RUN`: one \
         packet per call, {rounds} rounds × {calls} calls per row after {warmup} warm-up calls, rows \
         interleaved and their order rotated each round; medians over rounds, each against the floor \
         of the same round. lb runs in a lab namespace with a NAT VIP, a dsr-ipip VIP and a dsr-gue \
         VIP (built in one change: one table, so one-hop lists) of three backends each (IPv4 and \
         IPv6), its maps at the daemon's default sizes but for conntrack \
         (4 Mi entries, so that its unproven table, where new flows go, holds 1 Mi like Katran's \
         LRU here), called with the ingress ifindex of its client-facing veth (real routes and neighbours for its FIB \
         lookups); admission, the fragment and MAC checks and the rate guard (set above the \
         harness's rate, as the harness paces Katran below Katran's) are all in its path. Every \
         established flow is proven before timing; new-flow rows send a never-seen 5-tuple per \
         call. lb's counters over the run showed every call took its row's path (checked: \
         `fwd_established`, `fwd_new_flow`, `ct_created`, `pass_not_vip`, \
         `dsr_ipip_encapsulated`, `dsr_gue_encapsulated`, no `gue_sent_with_second_hop`, \
         nothing untracked). Katran's IPv4 rows are checked by the \
         harness (its own counters and LRU); its IPv6 rows come from a second Katran (the \
         harness's, pinned, with an IPv6 VIP of three IPv6 reals added as Katran's userspace \
         adds one), checked here by its counters and LRU the same way. Its GUE rows come from \
         Katran built with `--defines -DGUE_ENCAP` (outer IP and UDP to port 6080 with a UDP \
         checksum, the client's packet right behind: no GUE header, no hop list), twice, one \
         per family so that each carries one new-flow row (its flood guard counts them all, \
         and extra rows are not paced), each pinned with its outer \
         sources written into `pckt_srcs` as Katran's `addSrcIpForPcktEncap` does, its first \
         output checked, and its counters and LRU checked the same way. Katran forwards with \
         XDP_TX; lb's NAT rewrites and redirects, dsr-ipip and dsr-gue encapsulate and \
         redirect; dsr-gue rows are held against Katran's GUE rows.\n\n",
        std::fs::read_to_string(harness.join("src/KATRAN_COMMIT")).map_or_else(|_| "Katran".to_owned(), |c| format!("Katran {}", &c.trim()[..c.trim().len().min(12)]))
    ));
    out.push_str(
        "| row | action | ns/call | × floor | ns above floor | × Katran (above floor) |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|\n");
    let mut missed = Vec::new();
    for m in &table {
        let peer = rows
            .iter()
            .find(|r| r.name == m.name)
            .and_then(|r| find(katran_peer(r)));
        let versus = match peer {
            Some(k) => {
                let ratio = m.above / k.above;
                if m.above > k.above {
                    missed.push(format!(
                        "{} ({:.0} ns against {:.0})",
                        m.name, m.above, k.above
                    ));
                }
                format!("{ratio:.2}")
            }
            None => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.2} | {:.1} | {versus} |\n",
            m.name, m.action, m.ns, m.ratio, m.above
        ));
    }
    out.push('\n');
    if missed.is_empty() {
        out.push_str("Every lb row is at or below its Katran row in ns above the floor.\n");
    } else {
        out.push_str(&format!(
            "Above Katran in ns above the floor: {}.\n",
            missed.join("; ")
        ));
    }
    out.push_str(&gue_costs(&table));
    println!("{out}");
}

/// dsr-gue against dsr-ipip, and Katran's GUE build against its IPIP build, in ns above
/// the floor of the same run: one sentence.
fn gue_costs(table: &[Measured]) -> String {
    let above = |name: &str| table.iter().find(|m| m.name == name).map(|m| m.above);
    // (label, GUE row, IPIP row)
    let deltas = |pairs: &[(String, String, String)]| {
        pairs
            .iter()
            .filter_map(|(label, gue, ipip)| {
                Some(format!("{label} {:+.0} ns", above(gue)? - above(ipip)?))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let labels = ["IPv4", "IPv6"]
        .into_iter()
        .flat_map(|fam| ["established", "new flow"].map(|path| (fam, path)));
    let lb: Vec<_> = labels
        .clone()
        .map(|(fam, path)| {
            (
                format!("{fam} {path}"),
                format!("lb {fam} dsr-gue {path}"),
                format!("lb {fam} dsr-ipip {path}"),
            )
        })
        .collect();
    let katran: Vec<_> = labels
        .zip([
            (KATRAN_GUE4_ESTABLISHED, "katran established (LRU hit)"),
            (KATRAN_GUE4_NEW, "katran new flow (SYN, new sport)"),
            (KATRAN_GUE6_ESTABLISHED, KATRAN6_ESTABLISHED),
            (KATRAN_GUE6_NEW, KATRAN6_NEW),
        ])
        .map(|((fam, path), (gue, ipip))| (format!("{fam} {path}"), gue.into(), ipip.into()))
        .collect();
    format!(
        "\ndsr-gue against dsr-ipip in ns above the floor (what the second chance costs per \
         packet while nothing changes: UDP, the GUE header and a one-hop list built for every \
         packet after a tail call to `lb_encap_gue`, which parses the packet again, looks up \
         its VIP and the table's earlier hops): {}. Katran's GUE build against its IPIP \
         build: {}.\n",
        deltas(&lb),
        deltas(&katran)
    )
}

/// kbench's decode of the first output frame of every GUE row, lb's and Katran's: UDP to
/// the GUE port (6080), the same length on every call, XDP_REDIRECT or XDP_TX on all.
fn check_gue_outputs(output: &str, rows: &[LbRow]) {
    let lb = rows
        .iter()
        .filter(|r| r.mode == Mode::DsrGue && r.path != Kind::NotVip)
        .map(|r| (r.name.as_str(), "REDIRECT"));
    let katran = [
        KATRAN_GUE4_ESTABLISHED,
        KATRAN_GUE4_NEW,
        KATRAN_GUE6_ESTABLISHED,
        KATRAN_GUE6_NEW,
    ]
    .map(|name| (name, "TX"));
    for (name, action) in lb.chain(katran) {
        let check = katran::kbench_check(output, name).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            check.actions.len() == 1 && check.actions[0].0 == action,
            "{name}: {action} on every call: {:?}",
            check.actions
        );
        assert!(check.same_length, "{name}: every output the same length");
        assert!(
            check.out.contains(" udp ") && check.out.ends_with(">6080"),
            "{name}: not UDP to the GUE port: {}",
            check.out
        );
    }
}

/// Removes a pin directory (and what is pinned in it) when dropped, even on panic.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        lb_tests::cleanup::remove_dir_all(&self.0);
    }
}
