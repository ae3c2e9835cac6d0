//! Datapath cost per packet: the real XDP program under BPF_PROG_TEST_RUN, in a namespace
//! whose routes and neighbours `bpf_fib_lookup` reads, against two baselines loaded from
//! the same object in the same run (`baseline_pass`, `baseline_floor`).
//!
//! The kernel reuses one buffer across `repeat`s, so a NAT program would see its own
//! rewritten packet from the second repeat on and measure another path. Every path is
//! therefore timed one packet per call, with the kernel's own per-run time (syscall cost
//! excluded), the baselines the same way; each call gets a fresh copy of the packet, and
//! a new-flow case gets a new 5-tuple per call. Before timing, each case's counters prove
//! it takes the path it is named after. The idempotent programs are also timed with
//! `repeat` for reference. The DSR rows (dsr-ipip's encapsulations, dsr-l2) come from a
//! second load with outer-source prefixes and DSR VIPs, appended after the NAT rows.
//! Needs root. Prints a Markdown section; `LB_BENCH_PLOT=<file>`
//! also draws an SVG. `--quick` runs fewer packets and a smaller conntrack table.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::capture::{CAPTURE_SNAPLEN_MAX, CaptureFilter};
use lb_common::consts::{ABLATE_STAGES, IPPROTO_TCP};
use lb_common::flow::PROVEN_AFTER_PACKETS;
use lb_common::stats::Stat;
use lb_tests::{
    fiblab::{DSR_SOURCE_V4, DSR_SOURCE_V6, FibLab, Ids, add_dsr_vip, dsr_options},
    packets::{Family, Spec, Transport},
    testrun::{Datapath, flow_key},
};
use lb_userspace::model::{
    limits::{Limits, Options},
    mode::Mode,
    state::{Change, Proto, Service},
};

const RUNS: usize = 5;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// A measured case, and the floor timed interleaved with it.
struct Row {
    name: String,
    ns: f64,
    floor: f64,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.ns / self.floor.max(1e-9)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Calls of the case, then as many of the floor, in turn.
const CHUNK: usize = 500;

/// Median over `RUNS` of the mean kernel time per call, `calls` calls per run, and the same
/// for the floor program, timed in chunks that alternate with the case's: drift on a shared
/// machine then moves both alike.
fn per_call(
    datapath: &mut Datapath,
    calls: usize,
    mut call: impl FnMut(&mut Datapath, usize, usize) -> Duration,
) -> (f64, f64) {
    let probe = probe();
    let mut case_runs = Vec::new();
    let mut floor_runs = Vec::new();
    for run in 0..RUNS {
        let (mut case, mut floor) = (Duration::ZERO, Duration::ZERO);
        for start in (0..calls).step_by(CHUNK) {
            for i in start..(start + CHUNK).min(calls) {
                case += call(datapath, run, i);
            }
            for _ in start..(start + CHUNK).min(calls) {
                floor += datapath.run_program("baseline_floor", &probe, 1).1;
            }
        }
        case_runs.push(case.as_nanos() as f64 / calls as f64);
        floor_runs.push(floor.as_nanos() as f64 / calls as f64);
    }
    (median(case_runs), median(floor_runs))
}

/// Median over `RUNS` of the kernel's time per repeat.
fn amortized(datapath: &mut Datapath, program: &str, packet: &[u8], repeat: u32) -> f64 {
    median(
        (0..RUNS)
            .map(|_| {
                let (_, took) = datapath.run_program(program, packet, repeat);
                took.as_nanos() as f64
            })
            .collect(),
    )
}

fn client_and_vip(family: Family) -> (IpAddr, IpAddr) {
    match family {
        Family::V6 => (ip("fd00::1"), ip("fd00:1::1")),
        _ => (ip("198.18.0.1"), ip("198.18.1.1")),
    }
}

/// The `n`th distinct client endpoint: 64,512 ports on each of 250 client addresses.
fn nth_client(family: Family, n: usize) -> (IpAddr, u16) {
    let port = 1024 + (n % 64_512) as u16;
    let host = 1 + (n / 64_512) as u8;
    let addr = match family {
        Family::V6 => IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0x100, u16::from(host)]),
        _ => IpAddr::from([198, 18, 100, host]),
    };
    (addr, port)
}

fn vip_port(transport: Transport) -> u16 {
    match transport {
        Transport::Tcp => 80,
        Transport::Udp => 53,
    }
}

/// Asserts that one run of `packet` is forwarded (where the counters that would name its
/// path are ablated).
fn check_forwarded(datapath: &mut Datapath, packet: &[u8], case: &str) {
    let (verdict, delta) = datapath.run_counted(packet);
    let action = verdict.action;
    assert!(
        action == lb_common::consts::XDP_TX || action == lb_common::consts::XDP_REDIRECT,
        "{case} must be forwarded, got action {action}: {:?}",
        delta.moved()
    );
}

/// A deterministic pseudo-random sequence (xorshift64), for access orders.
fn shuffled(len: usize, count: usize) -> Vec<usize> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % len as u64) as usize
        })
        .collect()
}

/// Asserts that one run of `packet` moves `stat`: the case measures the path it names.
fn check_path(datapath: &mut Datapath, packet: &[u8], stat: Stat, case: &str) {
    let (_, delta) = datapath.run_counted(packet);
    assert_eq!(
        delta.packets(stat),
        1,
        "{case} must take the {} path: {:?}",
        stat.name(),
        delta.moved()
    );
}

/// Asserts that one run of `packet` is redirected and moves each of `stats` once: a DSR
/// case takes its path (new or established) and its mode's own (encapsulated, or MACs
/// only).
fn check_dsr(datapath: &mut Datapath, packet: &[u8], stats: [Stat; 2], case: &str) {
    let (verdict, delta) = datapath.run_counted(packet);
    assert_eq!(
        verdict.action,
        lb_common::consts::XDP_REDIRECT,
        "{case} must be redirected: {:?}",
        delta.moved()
    );
    for stat in stats {
        assert_eq!(
            delta.packets(stat),
            1,
            "{case} must take the {} path: {:?}",
            stat.name(),
            delta.moved()
        );
    }
}

struct Bench<'a> {
    datapath: &'a mut Datapath,
    ids: &'a Ids,
    calls: usize,
    /// Whether each case first proves its path with the counters (not when the counters,
    /// or the stage a path is named after, are ablated).
    verify: bool,
    /// Next unused client endpoint for new flows.
    next_client: usize,
    rows: Vec<Row>,
}

impl<'a> Bench<'a> {
    /// A bench that proves each case's path before timing it, on a fresh load.
    /// A bench on `datapath` as the daemon leaves it after its start-up sweep, which builds
    /// the proven-flow filter that new flows read.
    fn verified(datapath: &'a mut Datapath, ids: &'a Ids, calls: usize) -> Self {
        datapath.sweep();
        Bench {
            datapath,
            ids,
            calls,
            verify: true,
            next_client: 0,
            rows: Vec::new(),
        }
    }

    fn record(&mut self, name: impl Into<String>, (ns, floor): (f64, f64)) {
        self.rows.push(Row {
            name: name.into(),
            ns,
            floor,
        });
    }

    /// Times one fixed packet per call.
    fn fixed(&mut self, name: &str, program: &str, packet: &[u8], ingress: u32) {
        self.datapath.set_ingress(ingress);
        let timed = per_call(self.datapath, self.calls, |datapath, _, _| {
            datapath.run_program(program, packet, 1).1
        });
        self.record(name, timed);
    }

    /// SYNs (or first datagrams) of never-seen flows: conntrack miss, Maglev, insert. A
    /// tenth of the calls of the other cases, so the table stays far from full.
    fn new_flows(&mut self, name: &str, family: Family, transport: Transport) {
        let (_, vip) = client_and_vip(family);
        self.new_flows_to(name, family, transport, vip, |datapath, packet| {
            check_path(datapath, packet, Stat::ForwardNew, name);
        });
    }

    /// As [`Self::new_flows`], to `vip`; `check` proves the path on one more new flow.
    fn new_flows_to(
        &mut self,
        name: &str,
        family: Family,
        transport: Transport,
        vip: IpAddr,
        check: impl FnOnce(&mut Datapath, &[u8]),
    ) {
        let calls = (self.calls / 10).max(100);
        let first = self.next_client;
        self.next_client += RUNS * calls + 1;
        let build = |n: usize| {
            let (client, port) = nth_client(family, first + n);
            Spec::new(family, transport)
                .between(client, vip)
                .ports(port, vip_port(transport))
                .build(&[])
        };
        self.datapath.set_ingress(self.ids.from_client);
        check(self.datapath, &build(RUNS * calls));
        let packets: Vec<Vec<u8>> = (0..RUNS * calls).map(build).collect();
        let timed = per_call(self.datapath, calls, |datapath, run, i| {
            datapath.run_program("lb", &packets[run * calls + i], 1).1
        });
        self.record(name, timed);
    }

    /// An established flow to the DSR `vip`, opened untimed; `via` is its mode's counter
    /// (encapsulated, or MACs only), which the opening packet and the timed one both move.
    fn dsr_established(
        &mut self,
        name: &str,
        family: Family,
        transport: Transport,
        vip: IpAddr,
        via: Stat,
    ) {
        let (client, port) = nth_client(family, self.next_client);
        self.next_client += 1;
        let request = Spec::new(family, transport)
            .between(client, vip)
            .ports(port, vip_port(transport));
        self.datapath.set_ingress(self.ids.from_client);
        check_dsr(
            self.datapath,
            &request.build(&[]),
            [Stat::ForwardNew, via],
            name,
        );
        let established = request.ack().build(b"0123456789");
        check_dsr(
            self.datapath,
            &established,
            [Stat::ForwardEstablished, via],
            name,
        );
        prove(self.datapath, &established);
        self.fixed(name, "lb", &established, self.ids.from_client);
    }

    /// An established flow's packets, and its backend's replies.
    /// Returns the two packets.
    fn established_and_reply(
        &mut self,
        label: &str,
        family: Family,
        transport: Transport,
    ) -> (Vec<u8>, Vec<u8>) {
        let (_, vip) = client_and_vip(family);
        let (client, port) = nth_client(family, self.next_client);
        self.next_client += 1;
        let request = Spec::new(family, transport)
            .between(client, vip)
            .ports(port, vip_port(transport));
        self.datapath.set_ingress(self.ids.from_client);
        let opened = self.datapath.run(&request.build(&[]));
        // Unrewritten when the NAT stage is ablated: then any backend of the VIP serves for
        // the reply (the reply rule translates it, tracked or not).
        let backend = match lb_tests::verify::verify(&opened.packet).dst {
            dst if dst == vip => match family {
                Family::V6 => ip("fd00:2::2"),
                _ => ip("198.18.2.2"),
            },
            dst => dst,
        };
        let established = request.ack().build(b"0123456789");
        let name = format!("{label} established");
        if self.verify {
            check_path(self.datapath, &established, Stat::ForwardEstablished, &name);
        } else {
            check_forwarded(self.datapath, &established, &name);
        }
        prove_nat(self.datapath, self.ids, request, backend);
        self.fixed(&name, "lb", &established, self.ids.from_client);

        let reply = Spec::new(family, transport)
            .between(backend, client)
            .ports(8080, port)
            .ack()
            .build(b"0123456789");
        let name = format!("{label} reply");
        self.datapath.set_ingress(self.ids.from_backends);
        if self.verify {
            check_path(self.datapath, &reply, Stat::ForwardReply, &name);
        } else {
            check_forwarded(self.datapath, &reply, &name);
        }
        self.fixed(&name, "lb", &reply, self.ids.from_backends);
        (established, reply)
    }

    /// Established packets of the flows `first..end` (IPv4 TCP, filled by
    /// [`Self::fill_conntrack`]), touched in random order: the table as it is in
    /// production, its buckets far out of the CPU's caches.
    fn established_random(&mut self, name: &str, first: usize, end: usize) {
        let (_, vip) = client_and_vip(Family::V4);
        let calls = self.calls;
        let packets: Vec<Vec<u8>> = shuffled(end - first, RUNS * calls)
            .into_iter()
            .map(|n| {
                let (client, port) = nth_client(Family::V4, first + n);
                Spec::new(Family::V4, Transport::Tcp)
                    .between(client, vip)
                    .ports(port, 80)
                    .ack()
                    .build(b"0123456789")
            })
            .collect();
        self.distinct(
            name,
            &packets,
            self.ids.from_client,
            Stat::ForwardEstablished,
        );
    }

    /// A backend's replies toward `clients` distinct IPv6 client addresses, in random
    /// order: every reply needs the next hop of another destination.
    fn replies_to_many(&mut self, name: &str, clients: usize) {
        let backend = ip("fd00:2::2");
        let calls = self.calls;
        let packets: Vec<Vec<u8>> = shuffled(clients, RUNS * calls)
            .into_iter()
            .map(|n| {
                let client = IpAddr::from([0xfd00, 0, 0, 1, 0, 0, (n >> 16) as u16, n as u16]);
                Spec::new(Family::V6, Transport::Tcp)
                    .between(backend, client)
                    .ports(8080, 40_000)
                    .ack()
                    .build(b"0123456789")
            })
            .collect();
        self.distinct(name, &packets, self.ids.from_backends, Stat::ForwardReply);
    }

    /// Times `RUNS` × `calls` distinct packets, one per call, after the first proved its
    /// path.
    fn distinct(&mut self, name: &str, packets: &[Vec<u8>], ingress: u32, path: Stat) {
        self.datapath.set_ingress(ingress);
        check_path(self.datapath, &packets[0], path, name);
        let calls = self.calls;
        let timed = per_call(self.datapath, calls, |datapath, run, i| {
            datapath.run_program("lb", &packets[run * calls + i], 1).1
        });
        self.record(name, timed);
    }

    /// Fills the proven table to `share` of `capacity` with distinct flows, untimed (a SYN,
    /// then the client's segments until the flow is proven), counting the flows earlier
    /// cases left there (every client endpoint handed out made one).
    fn fill_conntrack(&mut self, capacity: u32, share: f64) -> usize {
        let (_, vip) = client_and_vip(Family::V4);
        let target = (f64::from(capacity) * share) as usize;
        let count = target.saturating_sub(self.next_client);
        self.datapath.set_ingress(self.ids.from_client);
        for n in 0..count {
            let (client, port) = nth_client(Family::V4, self.next_client + n);
            let request = Spec::new(Family::V4, Transport::Tcp)
                .between(client, vip)
                .ports(port, 80);
            let opened = self.datapath.run(&request.build(&[]));
            let backend = lb_tests::verify::verify(&opened.packet).dst;
            prove_nat(self.datapath, self.ids, request, backend);
        }
        self.next_client += count;
        self.next_client
    }
}

/// Proves a NAT flow whose first packet went to `backend` as a real one is proven, so the
/// timed established path is the proven one (one conntrack lookup): the backend answers
/// (a SYN-ACK with sequence 1, or a datagram), and the client acknowledges it (ACK number
/// 2) or sends again.
fn prove_nat(datapath: &mut Datapath, ids: &Ids, request: Spec, backend: IpAddr) {
    let answer = Spec::new(request.family, request.transport)
        .between(backend, request.addrs.map_or(backend, |(client, _)| client))
        .ports(8080, request.src_port);
    datapath.set_ingress(ids.from_backends);
    datapath.run(&answer.build(&[]));
    datapath.set_ingress(ids.from_client);
    let again = match request.transport {
        Transport::Tcp => request.acking(2),
        Transport::Udp => request,
    };
    datapath.run(&again.build(&[]));
}

/// Sends a DSR flow's packet until the flow is proven (as a client that keeps sending
/// does), so the timed established path is the proven one: one conntrack lookup.
fn prove(datapath: &mut Datapath, packet: &[u8]) {
    for _ in 0..PROVEN_AFTER_PACKETS {
        datapath.run(packet);
    }
}

/// What a flood did to a table holding proven flows.
struct Flood {
    guard: &'static str,
    packets: usize,
    ns: f64,
    floor: f64,
    tracked_per_sec: f64,
    untracked: u64,
    proven: usize,
    proven_left: usize,
}

/// The flood section: a 65,536-entry table holding `PROVEN` proven flows, then `packets`
/// SYNs and bare ACKs from random sources (never-seen 5-tuples), one per call against the
/// interleaved floor; then which proven flows are still tracked, proven. Once with the rate
/// guard at its default, once without it (the two tables alone).
fn floods(lab: &FibLab, packets: usize) -> Vec<Flood> {
    const PROVEN: usize = 10_000;
    let limits = Limits {
        max_vips: 8,
        conntrack_capacity: 1 << 16,
        ..Limits::default()
    };
    let (_, vip) = client_and_vip(Family::V4);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let flood: Vec<Vec<u8>> = (0..packets)
        .map(|n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let src = IpAddr::from([198, 19, (state >> 8) as u8, state as u8]);
            let spec = Spec::new(Family::V4, Transport::Tcp)
                .between(src, vip)
                .ports(1024 + (state >> 16) as u16 % 60_000, 80);
            if n % 2 == 0 { spec } else { spec.ack() }.build(&[])
        })
        .collect();
    let guards = [
        ("on (default, 100000/s per CPU)", Options::default()),
        (
            "off (--new-flow-limit 0)",
            Options {
                new_flow_limit: 0,
                ..Options::default()
            },
        ),
    ];
    guards
        .into_iter()
        .map(|(guard, options)| {
            lab.with_datapath_loaded(limits, &options, |datapath, ids| {
                datapath.set_ingress(ids.from_client);
                let mut keys = Vec::with_capacity(PROVEN);
                for n in 0..PROVEN {
                    let (client, port) = nth_client(Family::V4, n);
                    let request = Spec::new(Family::V4, Transport::Tcp)
                        .between(client, vip)
                        .ports(port, 80);
                    let opened = datapath.run(&request.build(&[]));
                    let backend = lb_tests::verify::verify(&opened.packet).dst;
                    prove_nat(datapath, ids, request, backend);
                    keys.push(flow_key(client, port, vip, 80, IPPROTO_TCP));
                }
                let proven = |datapath: &Datapath| {
                    keys.iter()
                        .filter(|key| {
                            matches!(
                                datapath.balancer.maps().tracked_entry(key),
                                Ok(Some((_, true)))
                            )
                        })
                        .count()
                };
                let before = proven(datapath);
                assert_eq!(before, PROVEN, "every flow proven before the flood");
                // As the daemon's periodic sweep would have by now (it builds the
                // proven-flow filter the flood's SYNs read).
                datapath.sweep();
                let counted = datapath.stats();
                let calls = packets / RUNS;
                let started = Instant::now();
                let (ns, floor) = per_call(datapath, calls, |datapath, run, i| {
                    datapath.run_program("lb", &flood[run * calls + i], 1).1
                });
                // The floor's calls are interleaved: the flood's own time is its share.
                let flooding = started.elapsed().as_secs_f64() * ns / (ns + floor);
                let after = datapath.stats();
                let moved = |stat| after.get(stat).packets - counted.get(stat).packets;
                Flood {
                    guard,
                    packets,
                    ns,
                    floor,
                    tracked_per_sec: moved(Stat::CtCreated) as f64 / flooding.max(1e-9),
                    untracked: moved(Stat::CtFloodUntracked),
                    proven: before,
                    proven_left: proven(datapath),
                }
            })
        })
        .collect()
}

/// The bench's loads: the rate guard's check runs as shipped, but its limit is out of reach
/// (new-flow rows insert faster than any per-CPU limit a host would set); the flood section
/// loads with the default.
fn unguarded(options: Options) -> Options {
    Options {
        new_flow_limit: u32::MAX,
        ..options
    }
}

fn family_label(family: Family, transport: Transport) -> &'static str {
    match (family, transport) {
        (Family::V6, Transport::Tcp) => "IPv6 TCP",
        (Family::V6, Transport::Udp) => "IPv6 UDP",
        (_, Transport::Tcp) => "IPv4 TCP",
        (_, Transport::Udp) => "IPv4 UDP",
    }
}

fn plot(path: &str, rows: &[Row], floor: f64) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let max = rows.iter().map(|r| r.ns).fold(floor, f64::max) * 1.15;
    let height = 60 + 28 * rows.len() as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "lb datapath: ns per packet (BPF_PROG_TEST_RUN)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..max, 0.0..rows.len() as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|y| {
            let i = y.floor() as usize;
            rows.get(rows.len().saturating_sub(i + 1))
                .map(|r| r.name.clone())
                .unwrap_or_default()
        })
        .x_desc("ns per packet")
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, row)| {
        let y = (rows.len() - i - 1) as f64;
        Rectangle::new(
            [(0.0, y + 0.15), (row.ns, y + 0.85)],
            BLUE.mix(0.6).filled(),
        )
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(floor, 0.0), (floor, rows.len() as f64)],
        RED.stroke_width(2),
    )))?;
    root.present()?;
    Ok(())
}

/// Two sweeps of the filled table: one that deletes nothing (default timeouts), one that
/// deletes everything (every timeout zero).
fn sweep_costs(
    datapath: &Datapath,
) -> Vec<(&'static str, lb_userspace::datapath::conntrack::Census)> {
    let keep = datapath.sweep();
    // Entries refreshed in this very tick are not past a zero timeout: wait one out.
    std::thread::sleep(Duration::from_millis(20));
    let drop_all = datapath.sweeper([0; 5]).sweep().expect("sweep");
    assert!(
        drop_all.pass.deleted > 0,
        "a zero timeout expires the table: {:?}",
        drop_all.pass
    );
    vec![
        ("default timeouts (deletes what has expired)", keep),
        ("everything expired (walk and delete)", drop_all),
    ]
}

/// Rounds of each part's program and its baseline, in turn.
const PART_ROUNDS: usize = 9;

/// What the parts of the datapath cost: the `cost_*` programs with `repeat` (hot caches),
/// each minus parsing. `tcp`: the IPv4 and the IPv6 TCP (established, reply) packets.
fn part_costs(
    datapath: &mut Datapath,
    ids: &Ids,
    tcp: &[(Vec<u8>, Vec<u8>)],
    quick: bool,
) -> Vec<(&'static str, f64)> {
    let repeat = if quick { 20_000 } else { 100_000 };
    let [(v4, v4_reply), (v6, _)] = tcp else {
        panic!("an IPv4 and an IPv6 TCP case");
    };
    // The sweeps emptied the table: track both flows again.
    datapath.set_ingress(ids.from_client);
    for packet in [v4, v6] {
        datapath.run(packet);
    }
    // A part's cost: its program minus `cost_parse` on the same packet, timed in turn
    // over rounds; the median difference.
    let mut cost = |program: &str, baseline: &str, packet: &[u8], ingress: u32| {
        datapath.set_ingress(ingress);
        // The part did its work: the program says so with XDP_PASS.
        let verdict = datapath.run_program(program, packet, 1).0.action;
        assert_eq!(
            verdict,
            lb_common::consts::XDP_PASS,
            "{program} did its part"
        );
        let differences = (0..PART_ROUNDS)
            .map(|_| {
                let base = datapath.run_program(baseline, packet, repeat).1;
                let part = datapath.run_program(program, packet, repeat).1;
                part.as_nanos() as f64 - base.as_nanos() as f64
            })
            .collect();
        median(differences)
    };
    let parts: [(&'static str, &str, &[u8], u32); 10] = [
        (
            "clock read (bpf_ktime_get_coarse_ns)",
            "cost_clock",
            v4,
            ids.from_client,
        ),
        (
            "counters: 4 global, the VIP's, the backend's (per-CPU arrays)",
            "cost_counters",
            v4,
            ids.from_client,
        ),
        (
            "address buckets: 2 array reads",
            "cost_address_buckets",
            v4,
            ids.from_client,
        ),
        (
            "VIP lookup (hash, 20-byte key)",
            "cost_vip_lookup",
            v4,
            ids.from_client,
        ),
        (
            "endpoint lookup (hash, 20-byte key)",
            "cost_endpoint_lookup",
            v4_reply,
            ids.from_backends,
        ),
        (
            "conntrack lookup, IPv4 (proven LRU hash, 40-byte key)",
            "cost_conntrack_lookup",
            v4,
            ids.from_client,
        ),
        (
            "conntrack lookup, IPv6 (proven LRU hash, 40-byte key)",
            "cost_conntrack_lookup",
            v6,
            ids.from_client,
        ),
        (
            "conntrack insert, IPv4 (unproven hash; full, so its oldest evicted first)",
            "cost_conntrack_insert",
            v4,
            ids.from_client,
        ),
        (
            "FIB lookup (bpf_fib_lookup), a next-hop slot's miss",
            "cost_fib_lookup",
            v4_reply,
            ids.from_backends,
        ),
        (
            "redirect (bpf_redirect_map, devmap hash)",
            "cost_redirect",
            v4,
            ids.from_client,
        ),
    ];
    let mut costs = vec![(
        "parse: Ethernet, IPv4 (header checksum), TCP",
        cost("cost_parse", "baseline_pass", v4, ids.from_client),
    )];
    for (name, program, packet, ingress) in parts {
        costs.push((name, cost(program, "cost_parse", packet, ingress)));
    }
    costs
}

/// The probe for the baselines and the non-VIP case: 198.18.0.1 → 198.18.9.9, TCP.
fn probe() -> Vec<u8> {
    Spec::new(Family::V4, Transport::Tcp)
        .between(ip("198.18.0.1"), ip("198.18.9.9"))
        .build(b"0123456789")
}

/// The lab's backends, on its backend link with pinned neighbours.
const BACKENDS_V4: [&str; 2] = ["198.18.2.2", "198.18.2.3"];
const BACKENDS_V6: [&str; 2] = ["fd00:2::2", "fd00:2::3"];

/// One DSR VIP of the DSR load (tcp/80 and udp/53, its backends on the same ports, on the
/// lab's backend link with pinned neighbours).
struct DsrVip {
    label: &'static str,
    /// The clients' family (the VIP's).
    family: Family,
    vip: &'static str,
    mode: Mode,
    backends: [&'static str; 2],
    /// The counter its mode moves for every packet it sends.
    via: Stat,
}

const DSR_VIPS: [DsrVip; 4] = [
    DsrVip {
        label: "dsr-ipip IPv4-in-IPv4",
        family: Family::V4,
        vip: "198.18.1.20",
        mode: Mode::DsrIpip,
        backends: BACKENDS_V4,
        via: Stat::DsrIpipEncapsulated,
    },
    DsrVip {
        label: "dsr-ipip IPv6-in-IPv6",
        family: Family::V6,
        vip: "fd00:1::20",
        mode: Mode::DsrIpip,
        backends: BACKENDS_V6,
        via: Stat::DsrIpipEncapsulated,
    },
    DsrVip {
        label: "dsr-ipip IPv4-in-IPv6",
        family: Family::V4,
        vip: "198.18.1.21",
        mode: Mode::DsrIpip,
        backends: BACKENDS_V6,
        via: Stat::DsrIpipEncapsulated,
    },
    DsrVip {
        label: "dsr-l2 IPv4",
        family: Family::V4,
        vip: "198.18.1.22",
        mode: Mode::DsrL2,
        backends: BACKENDS_V4,
        via: Stat::DsrL2Forwarded,
    },
];

/// The NAT row timed in the DSR load, the DSR rows' own comparison.
const DSR_CONTROL: &str = "nat IPv4 TCP established, in the DSR load";

/// The DSR rows: the program loaded again with outer-source prefixes and [`DSR_VIPS`]
/// added (conntrack empty again): a NAT established flow ([`DSR_CONTROL`]), then per VIP
/// a TCP new flow and TCP and UDP established flows, each against its interleaved floor.
fn dsr_rows(lab: &FibLab, limits: Limits, calls: usize) -> Vec<Row> {
    let options = unguarded(dsr_options());
    // The lab's NAT VIPs and these.
    let limits = Limits {
        max_vips: 32,
        ..limits
    };
    lab.with_datapath_loaded(limits, &options, |datapath, ids| {
        for dsr in &DSR_VIPS {
            add_dsr_vip(datapath, ip(dsr.vip), dsr.mode, &dsr.backends.map(ip));
        }
        let mut bench = Bench::verified(datapath, ids, calls);
        // The control: a NAT flow timed in this load, beside the DSR rows.
        let (client, port) = nth_client(Family::V4, bench.next_client);
        bench.next_client += 1;
        let request = Spec::new(Family::V4, Transport::Tcp)
            .between(client, client_and_vip(Family::V4).1)
            .ports(port, 80);
        bench.datapath.set_ingress(ids.from_client);
        let opened = bench.datapath.run(&request.build(&[]));
        let backend = lb_tests::verify::verify(&opened.packet).dst;
        let established = request.ack().build(b"0123456789");
        check_path(
            bench.datapath,
            &established,
            Stat::ForwardEstablished,
            DSR_CONTROL,
        );
        prove_nat(bench.datapath, ids, request, backend);
        bench.fixed(DSR_CONTROL, "lb", &established, ids.from_client);
        for dsr in &DSR_VIPS {
            let (label, vip, via) = (dsr.label, ip(dsr.vip), dsr.via);
            let name = format!("{label} TCP new flow");
            bench.new_flows_to(
                &name,
                dsr.family,
                Transport::Tcp,
                vip,
                |datapath, packet| {
                    check_dsr(datapath, packet, [Stat::ForwardNew, via], &name);
                },
            );
            for (transport, proto) in [(Transport::Tcp, "TCP"), (Transport::Udp, "UDP")] {
                let name = format!("{label} {proto} established");
                bench.dsr_established(&name, dsr.family, transport, vip, via);
            }
        }
        bench.rows
    })
}

/// A QUIC VIP of the QUIC rows' load: udp/443 on the lab's IPv4 VIP address, NAT, its
/// two backends given these server ids under [`QUIC_CONFIG`].
const QUIC_CONFIG: &str = "config=1,server-id-len=2,nonce-len=6";
const QUIC_SERVER_IDS: [[u8; 2]; 2] = [[0x0a, 0x01], [0x0b, 0x02]];
const QUIC_PORT: u16 = 443;

/// A QUIC packet to the second backend's server id: a 1-RTT (short header) packet, or
/// (`initial`) an Initial whose ID the client chose.
fn quic_payload(initial: bool) -> Vec<u8> {
    let config: quic_lb::Config = QUIC_CONFIG.parse().expect("config");
    let id = quic_lb::ServerId::new(&QUIC_SERVER_IDS[1]).expect("server id");
    let cid = quic_lb::encode(&config, &id, &[7; 6], true).expect("an ID");
    let mut payload = if initial {
        vec![0xc0, 0, 0, 0, 1, cid.as_bytes().len() as u8]
    } else {
        vec![0x41]
    };
    payload.extend_from_slice(cid.as_bytes());
    payload.extend_from_slice(&[0x5a; 40]);
    payload
}

/// The QUIC rows: a load with a QUIC VIP beside the lab's plain UDP VIP, each row against
/// its interleaved floor: the plain VIP's established datagram and new flow, and QUIC's
/// short header on a tracked 5-tuple, on a new 5-tuple (a client that moved: routed by
/// its server id) and an Initial (by Maglev).
fn quic_rows(lab: &FibLab, limits: Limits, calls: usize) -> Vec<Row> {
    lab.with_datapath_loaded(limits, &unguarded(Options::default()), |datapath, ids| {
        let (_, vip) = client_and_vip(Family::V4);
        let service = Service {
            addr: std::net::SocketAddr::new(vip, QUIC_PORT),
            proto: Proto::Udp,
        };
        let config: quic_lb::Config = QUIC_CONFIG.parse().expect("config");
        let mut changes = vec![
            Change::AddVip(service),
            Change::SetQuic {
                service,
                configs: vec![config],
            },
        ];
        for (backend, id) in ["198.18.2.2", "198.18.2.3"].iter().zip(QUIC_SERVER_IDS) {
            changes.push(Change::AddBackend {
                service,
                // Their 8080/udp serves the plain UDP VIP: an endpoint serves one VIP.
                backend: std::net::SocketAddr::new(ip(backend), 4433),
                weight: 100,
                server_id: Some(quic_lb::ServerId::new(&id).expect("server id")),
            });
        }
        datapath.balancer.apply_all(&changes).expect("the QUIC VIP");
        let mut bench = Bench::verified(datapath, ids, calls);
        bench.established_and_reply("plain UDP VIP: IPv4 UDP", Family::V4, Transport::Udp);
        bench.rows.pop(); // its reply: the same for both VIPs
        bench.new_flows(
            "plain UDP VIP: IPv4 UDP new flow",
            Family::V4,
            Transport::Udp,
        );
        let to_quic = |n: usize, initial: bool| {
            let (client, port) = nth_client(Family::V4, n);
            Spec::new(Family::V4, Transport::Udp)
                .between(client, vip)
                .ports(port, QUIC_PORT)
                .build(&quic_payload(initial))
        };
        // A tracked 5-tuple: its ID is read on every packet.
        let tracked = to_quic(bench.next_client, false);
        bench.next_client += 1;
        bench.datapath.set_ingress(ids.from_client);
        bench.datapath.run(&tracked);
        check_path(
            bench.datapath,
            &tracked,
            Stat::QuicByServerId,
            "QUIC tracked",
        );
        prove(bench.datapath, &tracked);
        check_path(
            bench.datapath,
            &tracked,
            Stat::ForwardEstablished,
            "QUIC tracked",
        );
        bench.fixed(
            "QUIC VIP: short header, tracked 5-tuple",
            "lb",
            &tracked,
            ids.from_client,
        );
        for (name, initial, path) in [
            (
                "QUIC VIP: short header, new 5-tuple (by server id)",
                false,
                Stat::QuicByServerId,
            ),
            (
                "QUIC VIP: Initial, new flow (by Maglev)",
                true,
                Stat::QuicLongHeader,
            ),
        ] {
            let per_run = (calls / 10).max(100);
            let first = bench.next_client;
            bench.next_client += RUNS * per_run + 1;
            let packets: Vec<Vec<u8>> = (0..=RUNS * per_run)
                .map(|n| to_quic(first + n, initial))
                .collect();
            check_path(bench.datapath, &packets[RUNS * per_run], path, name);
            let timed = per_call(bench.datapath, per_run, |datapath, run, i| {
                datapath.run_program("lb", &packets[run * per_run + i], 1).1
            });
            bench.record(name, timed);
        }
        bench.rows
    })
}

/// The QUIC section: its rows against the floor and against the plain UDP VIP's.
fn print_quic(rows: &[Row]) {
    let plain = |name: &str| rows.iter().find(|r| r.name == name).map_or(1.0, Row::ratio);
    let established = plain("plain UDP VIP: IPv4 UDP established");
    let new = plain("plain UDP VIP: IPv4 UDP new flow");
    println!(
        "\n### QUIC VIPs: connection-ID routing\n\nA third load: a QUIC VIP (udp/443, NAT, \
         `--quic {QUIC_CONFIG}`, two backends with server ids) beside the lab's plain UDP VIP \
         (udp/53). Each row against its interleaved floor, and against the plain VIP's row \
         of the same kind (established, or new flow). A QUIC flow is never served by the flow \
         cache: each packet's ID is read, so a 5-tuple that now carries another connection \
         follows it. Each case's counters were checked first (`quic_by_server_id`, \
         `quic_long_header`, `fwd_established`).\n"
    );
    println!("| path | ns/packet | floor, interleaved (ns) | × floor | × plain UDP |");
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        let against = if row.name.contains("tracked") || row.name.ends_with("established") {
            established
        } else {
            new
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} |",
            row.name,
            row.ns,
            row.floor,
            row.ratio(),
            row.ratio() / against
        );
    }
}

/// The capture rows: an established IPv4 TCP flow (NAT) through `lb`, which has no capture
/// code, and through `lb_capture` (swapped in while `lb capture` runs) with a filter that
/// keeps nothing and with one that keeps every packet (both copies, whole or cut to 96
/// bytes); the ring is emptied between chunks, untimed, and must lose nothing.
fn capture_rows(lab: &FibLab, limits: Limits, calls: usize) -> Vec<Row> {
    lab.with_datapath_loaded(limits, &unguarded(Options::default()), |datapath, ids| {
        let mut bench = Bench::verified(datapath, ids, calls);
        let (established, _) = bench.established_and_reply("IPv4 TCP", Family::V4, Transport::Tcp);
        bench.rows.clear();
        let keep = |snaplen| CaptureFilter {
            sample: 1,
            snaplen,
            ..CaptureFilter::default()
        };
        let nothing = CaptureFilter {
            vip: lb_common::service::addr_from_v4([198, 18, 99, 99]),
            vip_port: 1,
            vip_family: lb_common::consts::FAMILY_V4,
            ..keep(CAPTURE_SNAPLEN_MAX)
        };
        for (name, program, filter) in [
            ("lb: no capture running", "lb", None),
            (
                "lb_capture: the filter keeps nothing",
                "lb_capture",
                Some(nothing),
            ),
            (
                "lb_capture: every packet kept, whole (both copies)",
                "lb_capture",
                Some(keep(CAPTURE_SNAPLEN_MAX)),
            ),
            (
                "lb_capture: every packet kept, --snaplen 96",
                "lb_capture",
                Some(keep(96)),
            ),
        ] {
            let capturing = filter.is_some();
            if let Some(filter) = filter {
                bench.datapath.start_capture(&filter);
            }
            bench.datapath.set_ingress(ids.from_client);
            let lost_before = capturing.then(|| bench.datapath.capture_counts().lost);
            let timed = per_call(bench.datapath, calls, |datapath, _, i| {
                let took = datapath.run_program(program, &established, 1).1;
                if capturing && i % CHUNK == 0 {
                    datapath.capture_records();
                }
                took
            });
            if let Some(before) = lost_before {
                let lost = bench.datapath.capture_counts().lost - before;
                assert_eq!(
                    lost, 0,
                    "{name}: the ring lost records, so the copy was not timed"
                );
            }
            bench.record(name, timed);
        }
        bench.rows
    })
}

/// The capture section: each row against the floor and against `lb` itself.
fn print_capture(rows: &[Row]) {
    let plain = rows.first().map_or(0.0, |row| row.ns - row.floor);
    println!(
        "\n### `lb capture`: what a capture costs while it runs\n\nA third load, the same \
         established IPv4 TCP flow (NAT) in each row. `lb` carries no capture code: with no \
         capture running, every other row of this page is its cost. While `lb capture` \
         runs, the daemon swaps `lb_capture` (the same datapath, plus a copy of the packet \
         at entry and a record at exit) into the links: its cost with a filter that keeps \
         nothing (a VIP this load does not have), and per kept packet (received and sent \
         copies, one ring record; the ring emptied between chunks, untimed, none lost). \
         The copies cost little next to the capture program itself: the record's lookups \
         (VIP, conntrack) and the ring.\n"
    );
    println!("| path | ns/packet | floor, interleaved (ns) | × floor | ns above `lb` |");
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:+.1} |",
            row.name,
            row.ns,
            row.floor,
            row.ratio(),
            (row.ns - row.floor) - plain
        );
    }
}

/// One load of the program with `ablate`'s stages left out: a non-VIP packet, an
/// established IPv4 TCP flow and its reply, per call, each beside its interleaved floor.
fn ablated_load(lab: &FibLab, limits: Limits, calls: usize, ablate: u32) -> Vec<Row> {
    let options = unguarded(Options {
        ablate,
        ..Options::default()
    });
    lab.with_datapath_loaded(limits, &options, |datapath, ids| {
        let mut bench = Bench {
            datapath,
            ids,
            calls,
            verify: ablate == 0,
            next_client: 0,
            rows: Vec::new(),
        };
        bench.fixed("non-VIP", "lb", &probe(), ids.from_client);
        bench.established_and_reply("IPv4 TCP", Family::V4, Transport::Tcp);
        bench.rows
    })
}

/// The ablation table: every stage left out in turn (each its own load), the loads taken
/// in turn over 3 rounds; medians of each case's ratio to its interleaved floor.
fn ablation(lab: &FibLab, limits: Limits, calls: usize) -> Vec<(&'static str, [f64; 3])> {
    let configs: Vec<(&'static str, u32)> = std::iter::once(("none (the program as shipped)", 0))
        .chain(ABLATE_STAGES)
        .collect();
    let mut ratios: Vec<Vec<[f64; 3]>> = vec![Vec::new(); configs.len()];
    for _ in 0..3 {
        for (i, (_, ablate)) in configs.iter().enumerate() {
            let rows = ablated_load(lab, limits, calls / 4, *ablate);
            ratios[i].push([rows[0].ratio(), rows[1].ratio(), rows[2].ratio()]);
        }
    }
    configs
        .iter()
        .zip(ratios)
        .map(|((name, _), runs)| {
            let column = |c: usize| median(runs.iter().map(|r| r[c]).collect());
            (*name, [column(0), column(1), column(2)])
        })
        .collect()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let calls = if quick { 2_000 } else { 200_000 };
    let capacity: u32 = if quick { 1 << 16 } else { 1 << 20 };
    let started = Instant::now();
    let lab = FibLab::new();
    let limits = Limits {
        max_vips: 8,
        conntrack_capacity: capacity,
        ..Limits::default()
    };
    let options = unguarded(Options::default());
    let (rows, amortized_rows, filled) =
        lab.with_datapath_loaded(limits, &options, |datapath, ids| {
            let mut tcp_packets = Vec::new();
            let mut bench = Bench::verified(datapath, ids, calls);
            let probe = probe();
            bench.fixed(
                "baseline: XDP_PASS",
                "baseline_pass",
                &probe,
                ids.from_client,
            );
            bench.fixed(
                "floor: swap MACs, XDP_TX",
                "baseline_floor",
                &probe,
                ids.from_client,
            );
            bench.datapath.set_ingress(ids.from_client);
            check_path(bench.datapath, &probe, Stat::PassNotVip, "non-VIP");
            bench.fixed("non-VIP packet (passed)", "lb", &probe, ids.from_client);
            for (family, transport) in [
                (Family::V4, Transport::Tcp),
                (Family::V6, Transport::Tcp),
                (Family::V4, Transport::Udp),
                (Family::V6, Transport::Udp),
            ] {
                let label = family_label(family, transport);
                bench.new_flows(&format!("{label} new flow"), family, transport);
                let packets = bench.established_and_reply(label, family, transport);
                if transport == Transport::Tcp {
                    tcp_packets.push(packets);
                }
            }
            bench.replies_to_many("IPv6 TCP reply, 100000 distinct clients", 100_000);
            let fill_start = bench.next_client;
            let filled = bench.fill_conntrack(capacity, 0.9);
            bench.established_random(
                "IPv4 TCP, conntrack 90 % full: established, random flows",
                fill_start,
                filled,
            );
            bench.established_and_reply(
                "IPv4 TCP, conntrack 90 % full:",
                Family::V4,
                Transport::Tcp,
            );
            bench.new_flows(
                "IPv4 TCP, conntrack 90 % full: new flow",
                Family::V4,
                Transport::Tcp,
            );
            let sweeps = sweep_costs(bench.datapath);
            let parts = part_costs(bench.datapath, ids, &tcp_packets, quick);
            let repeat = if quick { 10_000 } else { 1_000_000 };
            let amortized_rows = [
                ("baseline: XDP_PASS", "baseline_pass"),
                ("floor: swap MACs, XDP_TX", "baseline_floor"),
                ("non-VIP packet (passed)", "lb"),
            ]
            .map(|(name, program)| {
                (
                    name,
                    amortized(bench.datapath, program, &probe, repeat),
                    repeat,
                )
            });
            (bench.rows, amortized_rows, (filled, sweeps, parts))
        });
    let (filled, sweeps, parts) = filled;
    let mut rows = rows;
    let first_load_rows = rows.len();
    rows.extend(dsr_rows(&lab, limits, calls));
    let quic = quic_rows(&lab, limits, calls);
    let capture = capture_rows(&lab, limits, calls);
    let ablations = ablation(&lab, limits, calls);
    let floods = floods(&lab, if quick { 100_000 } else { 1_000_000 });
    let floor = median(rows.iter().map(|r| r.floor).collect());
    println!("## Datapath: cost per packet (BPF_PROG_TEST_RUN)\n");
    println!(
        "The real `lb` XDP program, run inside a lab namespace (real routes and neighbours for \
         `bpf_fib_lookup`), one packet per call, kernel-timed; {calls} calls per run ({} for \
         new flows, each a never-seen 5-tuple), median of {RUNS} runs. The per-call time \
         includes the kernel's fixed test-run cost, in every row alike: compare `XDP_PASS` \
         with its `repeat` figure below. Baselines from the same object in the same run: \
         `XDP_PASS`, and the floor (swap MACs, `XDP_TX`), which every row times in turn with \
         itself, {CHUNK} calls each, so that each ratio is to a floor measured over the same \
         seconds (this machine's speed drifts by tens of percent over a run). Before timing, each case's counters show it took the path it \
         is named after. Conntrack: {capacity} entries; the \"90 % full\" rows after filling \
         it to 90 % ({filled} flows). The last {} rows come from a second load of the same \
         object (direct server return; the first of them a NAT flow again, for comparison \
         within that load), conntrack empty again, with outer-source prefixes \
         `--encap-source-v4 {DSR_SOURCE_V4} --encap-source-v6 {DSR_SOURCE_V6}` (a source \
         per flow) and one VIP per kind: dsr-ipip encapsulates the client's packet untouched \
         toward an IPv4 or IPv6 backend, dsr-l2 rewrites only the MACs; each was checked to \
         be redirected and to move `fwd_new_flow` or `fwd_established` and its mode's \
         counter (`dsr_ipip_encapsulated`, `dsr_l2_forwarded`). A DSR VIP has no reply \
         rows: its backends answer the clients directly.\n",
        (calls / 10).max(100),
        rows.len() - first_load_rows,
    );
    println!("| path | ns/packet | floor, interleaved (ns) | × floor |");
    println!("|---|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.2} |",
            row.name,
            row.ns,
            row.floor,
            row.ratio()
        );
    }
    println!(
        "\nWith `repeat` (one buffer reused, so only for programs that leave the packet as they \
         found it), kernel time per packet:\n"
    );
    println!("| program | repeat | ns/packet | × floor (repeat) |");
    println!("|---|---:|---:|---:|");
    let floor_repeat = amortized_rows[1].1.max(1e-9);
    for (name, ns, repeat) in &amortized_rows {
        println!("| {name} | {repeat} | {ns:.1} | {:.2} |", ns / floor_repeat);
    }
    let (established, established_floor) = rows
        .iter()
        .find(|r| r.name == "IPv4 TCP established")
        .map_or((0.0, 1.0), |r| (r.ns, r.floor));
    let pass = rows
        .iter()
        .find(|r| r.name.starts_with("baseline"))
        .map_or(0.0, |r| r.ns);
    // The kernel's fixed cost per test-run call, the same in every per-call row.
    let fixed = (pass - amortized_rows[0].1).max(0.0);
    let in_dsr_load = |name: &str| {
        rows[first_load_rows..]
            .iter()
            .find(|r| r.name == name)
            .map_or(1.0, Row::ratio)
    };
    let dsr = in_dsr_load("dsr-ipip IPv4-in-IPv4 TCP established");
    let control = in_dsr_load(DSR_CONTROL);
    let l2 = in_dsr_load("dsr-l2 IPv4 TCP established");
    println!(
        "\nEstablished IPv4 TCP flow: {:.2} × the floor per call. Without the fixed per-call \
         test-run cost ({fixed:.0} ns: `XDP_PASS` per call minus per repeat), the program \
         itself takes ~{:.0} ns against the floor's ~{:.0} ns ({:.1} ×). In the DSR load, an \
         established IPv4 TCP flow takes {dsr:.2} × the floor encapsulated (dsr-ipip, \
         IPv4-in-IPv4) and {l2:.2} × with new MACs only (dsr-l2), against {control:.2} × \
         translated (NAT) in the same load: {:.2} × and {:.2} × NAT's cost. Katran \
         publishes ~101 ns per packet for its IPIP encapsulation through test-run (its \
         tester's perf mode, `repeat` over one buffer, so without a per-call cost; another \
         machine and kernel): compare ratios to a floor measured in the same run, not \
         nanoseconds across machines. ({:.0} s)",
        established / established_floor,
        established - fixed,
        established_floor - fixed,
        (established - fixed) / (established_floor - fixed).max(1.0),
        dsr / control,
        l2 / control,
        started.elapsed().as_secs_f64()
    );
    print_quic(&quic);
    print_capture(&capture);
    println!(
        "\n### What the parts cost (hot caches)\n\nOne program per part (`cost_*` in \
         lb-ebpf/src/costs.rs: parse, then that part with the real maps and helpers, the \
         packet left as it was), timed with `repeat` like the rows just above, so every map \
         line is in the CPU's caches; each figure is its program's time minus parsing's \
         (parsing: minus `XDP_PASS`'s). A per-call row costs more than the sum of its parts: \
         each call comes in through a syscall that leaves the caches colder.\n"
    );
    println!("| part | ns per packet |");
    println!("|---|---:|");
    for (name, ns) in &parts {
        println!("| {name} | {ns:.0} |");
    }
    println!(
        "\n### Ablation: what each stage costs\n\nThe program loaded again with one stage \
         left out (a load-time constant the verifier folds, `ABLATE` in lb-common), timed as \
         above ({} calls per case), each case against its interleaved floor; the loads in turn over 3 rounds, \
         median ratios. A stage's cost is the first row's ratio minus its own; stages left \
         out change what the packet gets (no NAT: it leaves unrewritten), so only the first \
         row is a working balancer.\n",
        calls / 4
    );
    println!("| left out | non-VIP × floor | established × floor | reply × floor |");
    println!("|---|---:|---:|---:|");
    for (name, [non_vip, established, reply]) in &ablations {
        println!("| {name} | {non_vip:.2} | {established:.2} | {reply:.2} |");
    }
    println!(
        "\n### Flood: proven flows against a flood of new ones\n\nA 65,536-entry table \
         (`--conntrack-size 65536`: its unproven table holds 16,384) with 10,000 proven flows \
         (each a SYN, then the client's segments until proven), then SYNs and bare ACKs from \
         random sources, every one a never-seen 5-tuple, one per call against the \
         interleaved floor as above. Proven flows left: still in the proven table after the \
         flood (goal: all). New flows tracked per second: `ct_created` over the flood's share \
         of the wall time (one CPU; the test-run calls arrive as fast as one thread sends \
         them). Live frames through veth are in `tests/tests/flood.rs` (40,960 frames against \
         a 4,096-entry table, NAT and dsr-ipip, 0 connections broken); this section does not \
         time them.\n"
    );
    println!(
        "| rate guard | flood packets | ns/packet | × floor | new flows tracked/s | not tracked | proven flows left |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for f in &floods {
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.0} | {} | {} of {} |",
            f.guard,
            f.packets,
            f.ns,
            f.ns / f.floor.max(1e-9),
            f.tracked_per_sec,
            f.untracked,
            f.proven_left,
            f.proven
        );
    }
    println!(
        "\n### Conntrack sweep (userspace garbage collection)\n\nThe daemon's sweep \
         (`BPF_MAP_LOOKUP_BATCH` walk, `BPF_MAP_DELETE_BATCH` of expired entries) over the \
         table above; it runs every `--conntrack-sweep` (5 s by default) outside the \
         controller's lock.\n"
    );
    println!("| sweep | entries walked | deleted | syscalls | ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, census) in &sweeps {
        println!(
            "| {name} | {} | {} | {} | {:.1} |",
            census.pass.seen,
            census.pass.deleted,
            census.pass.syscalls,
            census.took.as_secs_f64() * 1e3
        );
    }
    if let Ok(path) = std::env::var("LB_BENCH_PLOT") {
        match plot(&path, &rows, floor) {
            Ok(()) => eprintln!("bench: plot written to {path}"),
            Err(error) => eprintln!("bench: plotting failed: {error}"),
        }
    }
}
