//! Fragmented UDP through a NAT VIP, end to end (issue 27): `lb run` in native XDP between
//! a client and three backends on 1500-byte veths. The client's 3,000-byte datagram is
//! fragmented by its kernel, crosses the lb in two fragments that must reach one backend,
//! and the backend's 3,000-byte answer comes back in two fragments that must both leave
//! from the VIP; likewise a small request whose answer is 3,000 bytes. Over IPv4 and IPv6.
//! And through dsr-ipip VIPs: the fragments reach one backend, which answers directly.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_tests::{
    dsr::{self, DsrLab, Wiring},
    netns::NetNs,
    process::{Daemon, DecapPaths, Instance, stat_packets},
    topology::Lab,
};

/// The backends' echo port.
const ECHO_PORT: u16 = 5300;
const VIP_PORT: u16 = 53;
const BIG: usize = 3000;
const ROUNDS: usize = 20;
const TEST_BUDGET: Duration = Duration::from_secs(90);

/// One UDP echo socket per backend and family: a datagram starting with `big ` is answered
/// with [`BIG`] bytes, anything else is sent back as it came.
struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn big_answer() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

impl Echo {
    /// On every backend address of the NAT lab.
    fn start(lab: &Lab) -> Self {
        let sockets = lab
            .backends
            .iter()
            .flat_map(|b| [false, true].map(|v6| (&b.ns, SocketAddr::new(b.addr(v6), ECHO_PORT))));
        Self::start_on(sockets)
    }

    fn start_on<'a>(sockets: impl Iterator<Item = (&'a NetNs, SocketAddr)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (ns, addr) in sockets {
            {
                let socket = ns.enter(|| UdpSocket::bind(addr).expect("bind the echo socket"));
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                let stop = Arc::clone(&stop);
                threads.push(std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 65_536];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((n, peer)) = socket.recv_from(&mut buffer) {
                            let answer = if buffer[..n].starts_with(b"big ") {
                                big_answer()
                            } else {
                                buffer[..n].to_vec()
                            };
                            // A lost answer is the client's test failure, seen there.
                            socket.send_to(&answer, peer).unwrap_or_default();
                        }
                    }
                }));
            }
        }
        Self { stop, threads }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            lb_tests::cleanup::join(thread, "joining an echo server thread");
        }
    }
}

fn config(lab: &Lab) -> String {
    let mut toml = String::new();
    for v6 in [false, true] {
        let vip = SocketAddr::new(lab.vip(v6), VIP_PORT);
        toml.push_str(&format!(
            "[[vip]]\naddress = \"{vip}\"\nproto = \"udp\"\nbackends = [\n"
        ));
        for backend in &lab.backends {
            let addr = SocketAddr::new(backend.addr(v6), ECHO_PORT);
            toml.push_str(&format!("  {{ address = \"{addr}\" }},\n"));
        }
        toml.push_str("]\n");
    }
    toml
}

/// Sends `request` from a new port to `vip` and waits for an answer from the VIP, up to 3
/// tries of 2 s (the first packet toward a new neighbour may wait for ARP/ND; in DSR the
/// first datagram may be answered with frag-needed / packet-too-big instead).
fn ask(client: IpAddr, vip: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let socket = UdpSocket::bind(SocketAddr::new(client, 0)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 65_536];
    for _ in 0..3 {
        socket.send_to(request, vip).map_err(|e| e.to_string())?;
        if let Ok((n, from)) = socket.recv_from(&mut buffer) {
            if from != vip {
                return Err(format!("answered from {from}, not {vip}"));
            }
            return Ok(buffer[..n].to_vec());
        }
    }
    Err(format!("no answer to {} bytes", request.len()))
}

#[test]
fn a_3000_byte_udp_datagram_crosses_a_nat_vip_both_ways_in_fragments() {
    lb_tests::require_root!();
    let started = Instant::now();
    let lab = Lab::new("lbfr", 3);
    let instance = Instance::new();
    let config_path = instance.state.with_file_name("config.toml");
    std::fs::write(&config_path, config(&lab)).expect("write config");
    let config_arg = config_path.to_string_lossy().into_owned();
    let daemon = Daemon::start(instance.run(
        &lab.lb,
        &lab.lb_ifaces,
        &["--xdp-mode", "native", "--config", &config_arg],
    ));
    let echo = Echo::start(&lab);
    let before = instance.stats();
    let big_request: Vec<u8> = (0..BIG).map(|i| (i % 239) as u8).collect();
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let vip = SocketAddr::new(lab.vip(v6), VIP_PORT);
        let client = lab.client_addr(v6);
        lab.client.enter(|| {
            for round in 0..ROUNDS {
                assert!(started.elapsed() < TEST_BUDGET, "test budget exceeded");
                let echoed = ask(client, vip, &big_request)
                    .unwrap_or_else(|e| panic!("{family} round {round}: 3,000 bytes up: {e}"));
                assert!(
                    echoed == big_request,
                    "{family} round {round}: {} bytes came back, not the 3,000 sent",
                    echoed.len()
                );
                let answer = ask(client, vip, b"big please")
                    .unwrap_or_else(|e| panic!("{family} round {round}: small up, big down: {e}"));
                assert!(
                    answer == big_answer(),
                    "{family} round {round}: a {}-byte answer, not 3,000",
                    answer.len()
                );
            }
        });
    }
    drop(echo);
    let after = instance.stats();
    let count = |name| stat_packets(&after, name) - stat_packets(&before, name);
    // Each round: two datagrams up (one fragmented) and two down (both fragmented).
    let later = 2 * ROUNDS as u64 * 3;
    assert!(
        count("fwd_fragment") >= later,
        "later fragments forwarded: {} (at least {later})",
        count("fwd_fragment")
    );
    assert_eq!(
        count("drop_fragment_no_first"),
        0,
        "no fragment lost its first"
    );
    let (status, _) = daemon.terminate();
    assert!(status.success(), "lb stops cleanly");
    instance.down();
}

/// The same datagrams through dsr-ipip VIPs (IPv4 and IPv6 backends, `lb decap attach` on
/// each): both fragments of every client datagram reach one backend, whose whole answer
/// goes to the client directly. A 1,500-byte first fragment does not fit with the outer
/// header: the client's first datagram to a VIP is answered with frag-needed /
/// packet-too-big, and its kernel fragments the next ones smaller.
#[test]
fn a_3000_byte_udp_datagram_reaches_a_dsr_ipip_backend_in_fragments() {
    lb_tests::require_root!();
    let started = Instant::now();
    let lab = DsrLab::new("dsrfr", Wiring::Routed, 2);
    let instance = Instance::new();
    let vips = [IpAddr::from(dsr::VIP_V4), IpAddr::from(dsr::VIP_V6)];
    let vip_args: Vec<String> = vips.iter().map(IpAddr::to_string).collect();
    let _decaps: Vec<DecapPaths> = lab
        .backends
        .iter()
        .map(|backend| {
            let decap = DecapPaths::new(&backend.ns);
            let (lb_v4, lb_v6) = (format!("{}/32", dsr::LB_V4), format!("{}/128", dsr::LB_V6));
            let mut args = vec!["attach", "--iface", backend.dev.as_str()];
            for vip in &vip_args {
                args.extend(["--vip", vip.as_str()]);
            }
            args.extend(["--allow-source", &lb_v4, "--allow-source", &lb_v6]);
            decap.ok(&args);
            decap
        })
        .collect();
    let daemon = Daemon::start(instance.run(&lab.lb, std::slice::from_ref(&lab.lb_iface), &[]));
    for vip in vips {
        let service = SocketAddr::new(vip, ECHO_PORT).to_string();
        instance.ok(&[
            "vip", "add", &service, "--proto", "udp", "--mode", "dsr-ipip",
        ]);
        for backend in &lab.backends {
            let addr = SocketAddr::new(backend.addr(vip.is_ipv6()), ECHO_PORT).to_string();
            instance.ok(&["backend", "add", &service, &addr, "--proto", "udp"]);
        }
    }
    // DSR backends answer from the VIP itself.
    let echo = Echo::start_on(
        lab.backends
            .iter()
            .flat_map(|b| vips.map(|vip| (&b.ns, SocketAddr::new(vip, ECHO_PORT)))),
    );
    let before = instance.stats();
    let big_request: Vec<u8> = (0..BIG).map(|i| (i % 239) as u8).collect();
    for vip in vips {
        let service = SocketAddr::new(vip, ECHO_PORT);
        let client = DsrLab::client_addr(vip);
        lab.client.enter(|| {
            for round in 0..ROUNDS {
                assert!(started.elapsed() < TEST_BUDGET, "test budget exceeded");
                let echoed = ask(client, service, &big_request)
                    .unwrap_or_else(|e| panic!("{vip} round {round}: 3,000 bytes up: {e}"));
                assert!(
                    echoed == big_request,
                    "{vip} round {round}: {} bytes came back, not the 3,000 sent",
                    echoed.len()
                );
                let answer = ask(client, service, b"big please")
                    .unwrap_or_else(|e| panic!("{vip} round {round}: small up, big down: {e}"));
                assert!(
                    answer == big_answer(),
                    "{vip} round {round}: {} bytes",
                    answer.len()
                );
            }
        });
    }
    drop(echo);
    let after = instance.stats();
    let count = |name| stat_packets(&after, name) - stat_packets(&before, name);
    // One fragmented datagram up per round and family.
    let later = 2 * ROUNDS as u64;
    assert!(
        count("fwd_fragment") >= later,
        "later fragments encapsulated: {} (at least {later})",
        count("fwd_fragment")
    );
    assert!(count("dsr_ipip_encapsulated") >= 2 * later);
    assert_eq!(count("fwd_reply"), 0, "answers bypass the lb");
    let (status, _) = daemon.terminate();
    assert!(status.success(), "lb stops cleanly");
    instance.down();
}

/// Replaces a pinned map by an empty one of another size, as `bpftool` makes it.
fn pin_map_of_size(pin_dir: &std::path::Path, name: &str, kind: &str, value: u32, entries: u32) {
    let path = pin_dir.join(name);
    std::fs::remove_file(&path).unwrap_or_else(|e| panic!("unpin {name}: {e}"));
    let output = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args(["type", kind, "key", "4", "value", &value.to_string()])
        .args(["entries", &entries.to_string(), "name", name])
        .output()
        .expect("run bpftool (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "bpftool map create {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A pin directory of the release before fragments (a JUMPS map of 3 slots, no room for
/// `lb_fragment`; a STATS map of 57 counters) is adopted: the daemon warns, serves, reads
/// its counters, and later fragments are dropped as before (`drop_fragment`) until
/// `lb down` lets the next start create the maps anew, after which they are followed.
#[test]
fn a_pin_dir_of_the_release_before_is_adopted_and_drops_later_fragments_until_lb_down() {
    lb_tests::require_root!();
    let lab = Lab::new("lbfp", 2);
    let instance = Instance::new();
    let config_path = instance.state.with_file_name("config.toml");
    std::fs::write(&config_path, config(&lab)).expect("write config");
    let config_arg = config_path.to_string_lossy().into_owned();
    let run = || {
        Daemon::start(instance.run(
            &lab.lb,
            &lab.lb_ifaces,
            &["--xdp-mode", "native", "--config", &config_arg],
        ))
    };
    let (status, _) = run().terminate();
    assert!(status.success());
    pin_map_of_size(&instance.pin_dir, "JUMPS", "prog_array", 4, 3);
    pin_map_of_size(&instance.pin_dir, "STATS", "percpu_array", 16, 57);

    let daemon = run();
    assert!(
        daemon.stderr().contains("no slot for these programs"),
        "the daemon says what it cannot do: {}",
        daemon.stderr()
    );
    let echo = Echo::start(&lab);
    let vip = SocketAddr::new(lab.vip(false), VIP_PORT);
    let client = lab.client_addr(false);
    let before = instance.stats();
    lab.client.enter(|| {
        let small = ask(client, vip, b"small").expect("whole datagrams are balanced");
        assert_eq!(small, b"small");
        let big: Vec<u8> = vec![7; BIG];
        assert!(
            ask(client, vip, &big).is_err(),
            "later fragments have no lb_fragment to follow them"
        );
    });
    let after = instance.stats();
    let count = |name| stat_packets(&after, name) - stat_packets(&before, name);
    assert!(count("drop_fragment") >= 3, "dropped as before: {after}");
    assert_eq!(count("fwd_fragment"), 0, "no slot in the old STATS map");
    let (status, _) = daemon.terminate();
    assert!(status.success());

    instance.down();
    let daemon = run();
    assert!(!daemon.stderr().contains("no slot"), "{}", daemon.stderr());
    lab.client.enter(|| {
        let big: Vec<u8> = vec![7; BIG];
        let echoed = ask(client, vip, &big).expect("followed after lb down");
        assert!(echoed == big, "{} bytes", echoed.len());
    });
    drop(echo);
    let (status, _) = daemon.terminate();
    assert!(status.success());
    instance.down();
}
