//! Fragmented UDP through a NAT VIP, end to end (issue 27): `lb run` in native XDP between
//! a client and three backends on 1500-byte veths. The client's 3,000-byte datagram is
//! fragmented by its kernel, crosses the lb in two fragments that must reach one backend,
//! and the backend's 3,000-byte answer comes back in two fragments that must both leave
//! from the VIP; likewise a small request whose answer is 3,000 bytes. Over IPv4 and IPv6.

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
    process::{Daemon, Instance, stat_packets},
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
    fn start(lab: &Lab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for backend in &lab.backends {
            for v6 in [false, true] {
                let addr = SocketAddr::new(backend.addr(v6), ECHO_PORT);
                let socket = backend
                    .ns
                    .enter(|| UdpSocket::bind(addr).expect("bind the echo socket"));
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
                            let _ = socket.send_to(&answer, peer);
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
            let _ = thread.join();
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
/// tries of 2 s (the first packet toward a new neighbour may wait for ARP/ND).
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
    let mut daemon = Daemon::spawn(instance.run(
        &lab.lb,
        &lab.lb_ifaces,
        &["--xdp-mode", "native", "--config", &config_arg],
    ));
    daemon.wait_for_line("lb: forwarding on", Duration::from_secs(20));
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
