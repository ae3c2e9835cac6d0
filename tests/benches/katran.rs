//! lb beside Katran in one harness: `../shared/katran-bench` (Katran's own XDP program,
//! built from its sources with its own recipe) times Katran, a MAC-swap floor and lb's
//! pinned `lb` program with `BPF_PROG_TEST_RUN`, one packet per call, rows interleaved over
//! rounds, each against the floor of the same round. lb runs in a lab namespace (real
//! routes and neighbours for `bpf_fib_lookup`, called with the ingress ifindex of its
//! client-facing veth) with a NAT VIP and a dsr-ipip VIP of three backends each, in IPv4
//! and IPv6, its maps at the daemon's default sizes but conntrack (its unproven table as large as
//! Katran's LRU), admission and the MAC check on.
//! lb's counters over the run prove that every row took the path it is named after.
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
    fiblab::{FibLab, Ids, add_dsr_vip, dsr_options},
    katran::{self, PinnedKatran},
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

/// One family's addresses: the client, the NAT VIP, the dsr-ipip VIP, an address that is
/// no VIP, and the three backends.
struct Addresses {
    family: Family,
    client: IpAddr,
    /// The new-flow rows' client: the harness varies its port and low address bits, which
    /// must never meet the established rows' 5-tuples.
    new_clients: IpAddr,
    nat_vip: IpAddr,
    dsr_vip: IpAddr,
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
            not_vip: ip("198.18.9.9"),
            backends: [ip("198.18.2.2"), ip("198.18.2.3"), ip("198.18.2.4")],
        },
        Addresses {
            family: Family::V6,
            client: ip("fd00::1"),
            new_clients: ip("fd00::100:1"),
            nat_vip: ip("fd00:1::20"),
            dsr_vip: ip("fd00:1::21"),
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

/// One lb row: its name, frame, path and mode.
struct LbRow {
    name: String,
    frame: Vec<u8>,
    path: Kind,
    dsr: bool,
    v6: bool,
}

fn lb_rows() -> Vec<LbRow> {
    let mut rows = Vec::new();
    for a in addresses() {
        let v6 = a.family == Family::V6;
        let fam = if v6 { "IPv6" } else { "IPv4" };
        for (vip, mode, dsr) in [(a.nat_vip, "NAT", false), (a.dsr_vip, "dsr-ipip", true)] {
            let established = Spec::new(a.family, Transport::Tcp)
                .between(a.client, vip)
                .ports(31337, 80)
                .ack();
            rows.push(LbRow {
                name: format!("lb {fam} {mode} established"),
                frame: established.build(b"katran-bench pkt"),
                path: Kind::Established,
                dsr,
                v6,
            });
            let syn = Spec::new(a.family, Transport::Tcp)
                .between(a.new_clients, vip)
                .ports(1024, 80);
            rows.push(LbRow {
                name: format!("lb {fam} {mode} new flow"),
                frame: syn.build(b"katran-bench pkt"),
                path: Kind::NewFlow,
                dsr,
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
            dsr: false,
            v6,
        });
    }
    rows
}

/// The NAT VIP and the dsr-ipip VIP of each family, three backends each, as the daemon
/// would set them up; the client-side interface's MAC recorded (the MAC check runs).
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
                    service,
                    backend: std::net::SocketAddr::new(backend, 8081),
                    weight: 100,
                })
                .expect("a NAT backend");
        }
        add_dsr_vip(datapath, a.dsr_vip, Mode::DsrIpip, &a.backends);
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

/// Which Katran row an lb row is held against: the IPv6 ones for IPv6.
fn katran_peer(row: &LbRow) -> &'static str {
    match (row.path, row.v6) {
        (Kind::Established, false) => "katran established (LRU hit)",
        (Kind::NewFlow, false) => "katran new flow (SYN, new sport)",
        (Kind::NotVip, false) => "katran non-VIP (XDP_PASS)",
        (Kind::Established, true) => KATRAN6_ESTABLISHED,
        (Kind::NewFlow, true) => KATRAN6_NEW,
        (Kind::NotVip, true) => KATRAN6_NOT_VIP,
    }
}

/// Katran's IPv6 VIP (in the pinned Katran) and its rows' names.
const KATRAN_VIP6: &str = "fd00:1::100";
const KATRAN6_ESTABLISHED: &str = "katran IPv6 established";
const KATRAN6_NEW: &str = "katran IPv6 new flow";
const KATRAN6_NOT_VIP: &str = "katran IPv6 non-VIP";

/// The pinned Katran's own counters over the run: its IPv6 established flow hit its LRU
/// on every call, every new flow missed it and was inserted (none skipped by its flood
/// guard), nothing fell back to the shared LRU.
fn check_katran6(katran: &PinnedKatran, before: &katran::KatranCounters, per_row: u64) {
    let moved = katran.counters().since(before);
    assert_eq!(moved.vip_packets, 2 * per_row, "Katran IPv6: VIP packets");
    assert_eq!(
        moved.lru_misses, per_row,
        "Katran IPv6: only new flows miss its LRU"
    );
    assert_eq!(moved.fallback_lru, 0, "Katran IPv6: its CPU's own LRU");
    assert_eq!(
        katran.lru_entries() as u64,
        1 + per_row,
        "Katran IPv6: every new flow inserted (none skipped by its flood guard)"
    );
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
    let dsr = rows
        .iter()
        .filter(|r| r.dsr && r.path != Kind::NotVip)
        .count() as u64
        * per_row;
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
            dsr,
        ),
    ];
    let events = format!(
        "ct_created {}, ct_replaced {}, ct_insert_failed {}, ct_flood_untracked {}",
        moved(Stat::CtCreated),
        moved(Stat::CtReplaced),
        moved(Stat::CtInsertFailed),
        moved(Stat::CtFloodUntracked)
    );
    // Established rows (NAT and DSR) go out from the flow cache, but for one slow-path
    // packet a second per flow (the slot's refresh).
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
    // Katran's own rows are IPv4; an IPv6 VIP goes into a second Katran, pinned by the
    // harness and completed here, and timed as extra rows in the same run.
    let cpu = katran::default_cpu();
    let katran6 = PinnedKatran::new(
        &harness,
        &build,
        &katran::unique_pin_dir("bench"),
        cpu,
        v6(KATRAN_VIP6),
        80,
        &[v6("fd00:2::11"), v6("fd00:2::12"), v6("fd00:2::13")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let vip6 = v6(KATRAN_VIP6);
    let katran6_rows = [
        (
            KATRAN6_ESTABLISHED,
            katran::frame6(v6("fd00::1"), 31337, vip6, 80, false),
            false,
        ),
        (
            KATRAN6_NEW,
            katran::frame6(v6("fd00::100:1"), 1024, vip6, 80, true),
            true,
        ),
        (
            KATRAN6_NOT_VIP,
            katran::frame6(v6("fd00::1"), 31337, v6("fd00:9::9"), 80, false),
            false,
        ),
    ];
    // The established flow's first packet, before timing: the harness sends none of its
    // own for extra rows.
    katran6
        .run(&katran6_rows[0].1)
        .unwrap_or_else(|e| panic!("Katran's IPv6 flow: {e}"));
    let katran6_before = katran6.counters();
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
        for (i, (name, frame, new_flow)) in katran6_rows.iter().enumerate() {
            let file = frames.join(format!("katran6-{i}.bin"));
            std::fs::write(&file, frame).expect("write a frame");
            command
                .arg("--extra-prog")
                .arg(&katran6.prog_pin)
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
    check_katran6(&katran6, &katran6_before, per_row);
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
    let find = |name: &str| table.iter().find(|m| m.name == name);
    let mut out = String::new();
    out.push_str("## Beside Katran: one harness\n\n");
    out.push_str(&format!(
        "`../shared/katran-bench` ({}) builds Katran's own XDP program from its sources with its own \
         recipe and times it, a MAC-swap floor and lb's `lb` program with `BPF_PROG_TEST_RUN`: one \
         packet per call, {rounds} rounds × {calls} calls per row after {warmup} warm-up calls, rows \
         interleaved and their order rotated each round; medians over rounds, each against the floor \
         of the same round. lb runs in a lab namespace with a NAT VIP and a dsr-ipip VIP of three \
         backends each (IPv4 and IPv6), its maps at the daemon's default sizes but for conntrack \
         (4 Mi entries, so that its unproven table, where new flows go, holds 1 Mi like Katran's \
         LRU here), called with the ingress ifindex of its client-facing veth (real routes and neighbours for its FIB \
         lookups); admission, the fragment and MAC checks and the rate guard (set above the \
         harness's rate, as the harness paces Katran below Katran's) are all in its path. Every \
         established flow is proven before timing; new-flow rows send a never-seen 5-tuple per \
         call. lb's counters over the run showed every call took its row's path (checked: \
         `fwd_established`, `fwd_new_flow`, `ct_created`, `pass_not_vip`, \
         `dsr_ipip_encapsulated`, nothing untracked). Katran's IPv4 rows are checked by the \
         harness (its own counters and LRU); its IPv6 rows come from a second Katran (the \
         harness's, pinned, with an IPv6 VIP of three IPv6 reals added as Katran's userspace \
         adds one), checked here by its counters and LRU the same way. Katran forwards IPIP with XDP_TX; lb's NAT rewrites and \
         redirects, dsr-ipip encapsulates and redirects.\n\n",
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
    println!("{out}");
}

/// Removes a pin directory (and what is pinned in it) when dropped, even on panic.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        lb_tests::cleanup::remove_dir_all(&self.0);
    }
}
