//! Flows that must not break, through the real binary and CLI in namespaces: a UDP client
//! with a fixed source port survives its backend dying, a backend's port unreachable
//! reaches the client, path MTU discovery works through the VIP, and long-lived flows
//! keep the VIP's address while the conntrack table is oversubscribed. Needs root.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    client::{WhoConnection, udp_request},
    process::{Daemon, FAST_CHECK, FAST_CHECK_FALL, Instance},
    servers::{Servers, UDP_PORT, WHO_PORT},
    topology::Lab,
};

fn started(lab: &Lab, extra: &[&str]) -> (Instance, Daemon) {
    let instance = Instance::new();
    let daemon = instance.start(lab, extra);
    (instance, daemon)
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

#[test]
fn a_fixed_port_udp_client_moves_to_a_live_backend_when_its_backend_dies() {
    lb_tests::require_root!();
    let lab = Lab::new("lbu", 2);
    let (instance, _daemon) = started(&lab, &[]);
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), UDP_PORT);
    let vip_arg = vip.to_string();
    let check = [
        &[
            "vip", "add", &vip_arg, "--proto", "udp", "--check", "udp:ping",
        ][..],
        &FAST_CHECK,
    ]
    .concat();
    instance.ok(&check);
    for backend in &lab.backends {
        let addr = endpoint(backend.v4.into(), UDP_PORT);
        instance.ok(&["backend", "add", &vip_arg, &addr, "--proto", "udp"]);
        instance.wait_for_health(&addr, "up", Duration::from_secs(3));
    }

    let client_addr = lab.client_addr(false);
    let client = lab.client.enter(|| {
        let socket = UdpSocket::bind((client_addr, 40_000)).expect("fixed port");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        socket
    });
    let ask = |socket: &UdpSocket| -> Option<String> {
        socket.send_to(b"ping", vip).ok()?;
        let mut buffer = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buffer).ok()?;
        assert_eq!(from, vip, "answers come from the VIP");
        Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
    };
    let first = ask(&client).expect("an answer before the failure");
    let dead = lab
        .backends
        .iter()
        .find(|b| b.name == first)
        .expect("a known backend");
    dead.ns.ip(&["link", "set", "dev", &dead.dev, "down"]);
    let failed_at = Instant::now();

    // The same socket (same 5-tuple) keeps asking; the bound is the check's fall time
    // (fall × interval + timeout) plus the client's own 100 ms per unanswered ask.
    let bound = FAST_CHECK_FALL + Duration::from_millis(700);
    let moved = lb_tests::eventually(bound, "an answer from a live backend", || {
        match ask(&client) {
            Some(answer) if answer != first => Ok(failed_at.elapsed()),
            other => Err(other),
        }
    });
    eprintln!("fixed-port UDP flow answered by another backend after {moved:?}");
    let after: Vec<Option<String>> = (0..5).map(|_| ask(&client)).collect();
    assert!(
        after
            .iter()
            .all(|a| a.as_deref().is_some_and(|name| name != first)),
        "5 of 5 answered by a live backend: {after:?}"
    );
}

#[test]
fn a_backends_port_unreachable_reaches_a_connected_udp_client() {
    lb_tests::require_root!();
    let lab = Lab::new("lbr", 1);
    let (instance, _daemon) = started(&lab, &[]);
    let vip = SocketAddr::new(lab.vip(false), 6000);
    let vip_arg = vip.to_string();
    instance.ok(&["vip", "add", &vip_arg, "--proto", "udp"]);
    // Nothing listens on the backend's 6001: its kernel answers port unreachable.
    let closed = endpoint(lab.backends[0].v4.into(), 6001);
    instance.ok(&["backend", "add", &vip_arg, &closed, "--proto", "udp"]);
    let client_addr = lab.client_addr(false);
    let error = lab.client.enter(|| {
        let socket = UdpSocket::bind((client_addr, 0)).expect("bind");
        socket.connect(vip).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        socket.send(b"anyone?").expect("send");
        let mut buffer = [0u8; 64];
        socket.recv(&mut buffer).expect_err("no server, no answer")
    });
    assert_eq!(
        error.kind(),
        ErrorKind::ConnectionRefused,
        "the translated port unreachable refuses the connected socket: {error}"
    );
}

/// A server on every backend, both families, that sends `size` bytes to each connection.
struct Downloads {
    stop: Arc<AtomicBool>,
}

impl Downloads {
    const PORT: u16 = 9100;

    fn start(lab: &Lab, size: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        for backend in &lab.backends {
            for ip in [IpAddr::from(backend.v4), IpAddr::from(backend.v6)] {
                let listener = backend
                    .ns
                    .enter(|| TcpListener::bind((ip, Self::PORT)).expect("bind"));
                listener.set_nonblocking(true).expect("nonblocking");
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((mut stream, _)) => {
                                // A client that left early is its own test's failure.
                                stream
                                    .set_nonblocking(false)
                                    .and_then(|()| stream.write_all(&vec![0x5a; size]))
                                    .unwrap_or_default();
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                });
            }
        }
        Self { stop }
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn path_mtu_discovery_works_through_the_vip() {
    lb_tests::require_root!();
    const SIZE: usize = 1 << 20;
    let lab = Lab::new("lbm", 1);
    let (instance, _daemon) = started(&lab, &[]);
    let _downloads = Downloads::start(&lab, SIZE);
    let lb_side = &lab.lb_ifaces[0];
    for (v6, mtu) in [(false, 1400), (true, 1280)] {
        // The lb's link to the client is narrower than the backends' (1500): full-size
        // segments from a backend do not fit, and nothing clamps the MSS.
        lab.lb
            .ip(&["link", "set", "dev", lb_side, "mtu", &mtu.to_string()]);
        let vip = SocketAddr::new(lab.vip(v6), Downloads::PORT);
        let vip_arg = vip.to_string();
        instance.ok(&["vip", "add", &vip_arg]);
        let backend = endpoint(lab.backends[0].addr(v6), Downloads::PORT);
        instance.ok(&["backend", "add", &vip_arg, &backend]);
        let started = Instant::now();
        let received = lab.client.enter(|| {
            let mut stream =
                TcpStream::connect_timeout(&vip, Duration::from_secs(2)).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut data = Vec::with_capacity(SIZE);
            stream.read_to_end(&mut data).map(|_| data.len())
        });
        let received = received.unwrap_or_else(|e| panic!("MTU {mtu}: download failed: {e}"));
        assert_eq!(received, SIZE, "MTU {mtu}: the whole megabyte");
        eprintln!(
            "MTU {mtu} ({}): 1 MiB in {:?}",
            if v6 { "IPv6" } else { "IPv4" },
            started.elapsed()
        );
        let stats = instance.stats();
        let count = |name: &str| lb_tests::process::stat_packets(&stats, name);
        let sent = count("icmp_too_big_sent");
        eprintln!(
            "MTU {mtu}: too-big answered {sent}, rate-limited {}, fragmented by the kernel {}, icmp to client {}, to backend {}",
            count("drop_too_big_rate_limited"),
            count("pass_fragmentation_needed"),
            count("fwd_icmp_to_client"),
            count("fwd_icmp_to_backend"),
        );
        assert!(sent > 0, "MTU {mtu}: the lb answered too-big packets");
        instance.ok(&["vip", "del", &vip_arg]);
    }
}

#[test]
fn long_lived_flows_keep_the_vip_while_the_table_is_oversubscribed() {
    lb_tests::require_root!();
    const HELD: usize = 40;
    const CAPACITY: usize = 1024;
    let lab = Lab::new("lbo", 2);
    let (instance, _daemon) = started(
        &lab,
        &["--conntrack-size", "1024", "--conntrack-sweep", "0.2"],
    );
    let _servers = Servers::start(&lab.backends);
    let who = SocketAddr::new(lab.vip(false), WHO_PORT);
    let udp = SocketAddr::new(lab.vip(false), UDP_PORT);
    instance.ok(&["vip", "add", &who.to_string()]);
    instance.ok(&["vip", "add", &udp.to_string(), "--proto", "udp"]);
    for backend in &lab.backends {
        let ip = IpAddr::from(backend.v4);
        instance.ok(&["backend", "add", &who.to_string(), &endpoint(ip, WHO_PORT)]);
        instance.ok(&[
            "backend",
            "add",
            &udp.to_string(),
            &endpoint(ip, UDP_PORT),
            "--proto",
            "udp",
        ]);
    }
    let mut held: Vec<(WhoConnection, String)> = lab.client.enter(|| {
        (0..HELD)
            .map(|_| {
                let mut connection = WhoConnection::open(who).expect("connect");
                let backend = connection.ask().expect("first answer");
                (connection, backend)
            })
            .collect()
    });
    // Twice the table's capacity in new flows, each from its own source port; every
    // answer must come from the VIP (`udp_request` refuses any other source).
    let client = lab.client_addr(false);
    let flows = 2 * CAPACITY;
    let failures = lab.client.enter(|| {
        (0..flows)
            .filter(|&i| {
                let port = 20_000 + i as u16;
                udp_request(SocketAddr::new(client, port), udp).is_err()
            })
            .count()
    });
    assert_eq!(failures, 0, "{failures} of {flows} short flows failed");
    // A reply with a backend's address would have reset the held connection (the client
    // answers it with a RST): every one still answers, from the same backend.
    for (connection, backend) in &mut held {
        let answer = connection.ask().expect("a held connection survived");
        assert_eq!(&answer, backend);
    }
    // The figure comes from the daemon's sweep (every 0.2 s here): wait for one that ran
    // after the last flow.
    let evicted = lb_tests::eventually(
        Duration::from_secs(3),
        "evictions counted (the table was oversubscribed)",
        || {
            let stats = instance.stats();
            let evicted = stats["conntrack"]["evicted"]
                .as_u64()
                .unwrap_or_else(|| panic!("no conntrack.evicted in `lb stats --json`: {stats}"));
            if evicted > 0 {
                Ok(evicted)
            } else {
                Err(stats["conntrack"].clone())
            }
        },
    );
    eprintln!("{flows} short flows through a {CAPACITY}-entry table: {evicted} evicted");
}
