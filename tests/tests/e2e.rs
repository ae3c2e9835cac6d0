//! End to end: a client, the lb and three backends in namespaces; real TCP (HTTP) and UDP
//! request/response traffic to the VIP over IPv4 and IPv6, through `lb run` in native XDP.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_tests::{
    netns::{Link, NetNs, sh},
    process::{Daemon, lb_binary},
};

const REQUESTS: usize = 300;
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const TEST_BUDGET: Duration = Duration::from_secs(120);

/// Who each backend saw, by backend name: the peer addresses of its requests.
type Seen = Arc<Mutex<HashMap<String, Vec<IpAddr>>>>;

struct Lab {
    client: NetNs,
    lb: NetNs,
    backends: Vec<NetNs>,
    lb_ifaces: Vec<String>,
}

fn offload_off_and_napi_on(ns: &NetNs, dev: &str) {
    // veth leaves checksums partial (XDP cannot finish them) and needs NAPI to receive
    // redirected frames.
    sh(
        "nsenter",
        &[
            &format!("--net={}", ns.path().display()),
            "--",
            "ethtool",
            "-K",
            dev,
            "tx",
            "off",
            "gro",
            "on",
        ],
    );
}

impl Lab {
    fn new() -> Self {
        let client = NetNs::new("client");
        let lb = NetNs::new("lb");
        let front = Link::veth(&client, "198.18.0.1/24", &lb, "198.18.0.2/24");
        client.ip(&["-6", "addr", "add", "fd00::1/64", "dev", &front.a, "nodad"]);
        lb.ip(&["-6", "addr", "add", "fd00::2/64", "dev", &front.b, "nodad"]);
        client.ip(&["route", "add", "default", "via", "198.18.0.2"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd00::2"]);
        offload_off_and_napi_on(&client, &front.a);
        lb.enable_forwarding();
        let mut lb_ifaces = vec![front.b.clone()];
        let mut backends = Vec::new();
        for i in 1..=3 {
            let backend = NetNs::new(&format!("b{i}"));
            let link = Link::veth(
                &lb,
                &format!("198.18.{}.1/24", 10 + i),
                &backend,
                &format!("198.18.{}.2/24", 10 + i),
            );
            lb.ip(&[
                "-6",
                "addr",
                "add",
                &format!("fd00:{}::1/64", 10 + i),
                "dev",
                &link.a,
                "nodad",
            ]);
            backend.ip(&[
                "-6",
                "addr",
                "add",
                &format!("fd00:{}::2/64", 10 + i),
                "dev",
                &link.b,
                "nodad",
            ]);
            backend.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("198.18.{}.1", 10 + i),
            ]);
            backend.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:{}::1", 10 + i),
            ]);
            offload_off_and_napi_on(&backend, &link.b);
            offload_off_and_napi_on(&lb, &link.a);
            lb_ifaces.push(link.a);
            backends.push(backend);
        }
        offload_off_and_napi_on(&lb, &front.b);
        Self {
            client,
            lb,
            backends,
            lb_ifaces,
        }
    }

    fn config(&self) -> String {
        let mut toml = String::new();
        let v4 = |i: usize| format!("198.18.{}.2", 10 + i);
        let v6 = |i: usize| format!("[fd00:{}::2]", 10 + i);
        let families: [(&str, &dyn Fn(usize) -> String); 2] =
            [("198.18.1.1", &v4), ("[fd00:1::1]", &v6)];
        for (vip, backend) in families {
            for (port, proto, backend_port) in [(80, "tcp", 8080), (53, "udp", 5353)] {
                toml.push_str(&format!(
                    "[[vip]]\naddress = \"{vip}:{port}\"\nproto = \"{proto}\"\nbackends = [\n"
                ));
                for i in 1..=3 {
                    toml.push_str(&format!(
                        "  {{ address = \"{}:{backend_port}\" }},\n",
                        backend(i)
                    ));
                }
                toml.push_str("]\n");
            }
        }
        toml
    }
}

/// HTTP and UDP echo servers on every backend; they record the client address they see.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    seen: Seen,
}

impl Servers {
    fn start(backends: &[NetNs]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Seen = Arc::default();
        let mut threads = Vec::new();
        for (i, ns) in backends.iter().enumerate() {
            let name = format!("backend-{}", i + 1);
            let (v4, v6) = (
                format!("198.18.{}.2", 11 + i),
                format!("[fd00:{}::2]", 11 + i),
            );
            let (tcp4, tcp6, udp4, udp6) = ns.enter(|| {
                (
                    TcpListener::bind(format!("{v4}:8080")).expect("bind"),
                    TcpListener::bind(format!("{v6}:8080")).expect("bind"),
                    UdpSocket::bind(format!("{v4}:5353")).expect("bind"),
                    UdpSocket::bind(format!("{v6}:5353")).expect("bind"),
                )
            });
            for listener in [tcp4, tcp6] {
                let (stop, seen, name) = (stop.clone(), seen.clone(), name.clone());
                listener.set_nonblocking(true).expect("nonblocking");
                threads.push(std::thread::spawn(move || {
                    serve_http(&listener, &name, &stop, &seen)
                }));
            }
            for socket in [udp4, udp6] {
                let (stop, seen, name) = (stop.clone(), seen.clone(), name.clone());
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                threads.push(std::thread::spawn(move || {
                    serve_udp(&socket, &name, &stop, &seen)
                }));
            }
        }
        Self {
            stop,
            threads,
            seen,
        }
    }

    fn take_seen(&self) -> HashMap<String, Vec<IpAddr>> {
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn record(seen: &Seen, name: &str, peer: IpAddr) {
    seen.lock()
        .expect("lock")
        .entry(name.to_owned())
        .or_default()
        .push(peer);
}

fn serve_http(listener: &TcpListener, name: &str, stop: &AtomicBool, seen: &Seen) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut stream, peer)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let mut request = [0u8; 1024];
        let mut len = 0;
        while !request[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < request.len() {
            match stream.read(&mut request[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
        record(seen, name, peer.ip());
        let body = format!("{name} saw {}\n", peer.ip());
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

fn serve_udp(socket: &UdpSocket, name: &str, stop: &AtomicBool, seen: &Seen) {
    let mut buffer = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = socket.recv_from(&mut buffer) {
            record(seen, name, peer.ip());
            let _ = socket.send_to(name.as_bytes(), peer);
        }
    }
}

fn http_get(vip: SocketAddr) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&vip, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    assert_eq!(
        stream.peer_addr().ok(),
        Some(vip),
        "the client talks to the VIP only"
    );
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    if !response.starts_with("HTTP/1.0 200 OK") {
        return Err(format!("bad response {response:?}"));
    }
    Ok(response)
}

fn udp_request(bind: &str, vip: SocketAddr) -> Result<String, String> {
    let socket = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    socket
        .send_to(b"ping", vip)
        .map_err(|e| format!("send: {e}"))?;
    let mut buffer = [0u8; 512];
    let (n, from) = socket
        .recv_from(&mut buffer)
        .map_err(|e| format!("recv: {e}"))?;
    if from != vip {
        return Err(format!("answer came from {from}, not the VIP {vip}"));
    }
    Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

fn assert_spread(seen: &HashMap<String, Vec<IpAddr>>, client: IpAddr, what: &str) {
    let total: usize = seen.values().map(Vec::len).sum();
    assert_eq!(
        total, REQUESTS,
        "{what}: every request reached a backend once"
    );
    for i in 1..=3 {
        let peers = seen
            .get(&format!("backend-{i}"))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let share = peers.len() as f64 / total as f64;
        assert!(
            (0.20..=0.47).contains(&share),
            "{what}: backend-{i} got {:.1}% of flows",
            share * 100.0
        );
        assert!(
            peers.iter().all(|p| *p == client),
            "{what}: backends see the client's real address"
        );
    }
}

#[test]
fn tcp_and_udp_through_the_vip_reach_all_backends_over_ipv4_and_ipv6() {
    let started = Instant::now();
    let lab = Lab::new();
    let config = std::env::temp_dir().join(format!("lb-e2e-{}.toml", std::process::id()));
    std::fs::write(&config, lab.config()).expect("write config");
    let mut cmd = lab.lb.command(lb_binary());
    cmd.args([
        "run",
        "--xdp-mode",
        "native",
        "--stats-interval",
        "0",
        "--config",
    ])
    .arg(&config)
    .arg("--iface")
    .args(&lab.lb_ifaces);
    let mut daemon = Daemon::spawn(cmd);
    daemon.wait_for_line("lb: forwarding on", Duration::from_secs(20));
    let _ = std::fs::remove_file(&config);
    let servers = Servers::start(&lab.backends);

    // The lb host itself stays reachable on its own address.
    let own = lab
        .lb
        .enter(|| TcpListener::bind("198.18.0.2:9000").expect("bind"));
    lab.client.enter(|| {
        let mut s =
            TcpStream::connect_timeout(&"198.18.0.2:9000".parse().expect("addr"), IO_TIMEOUT)
                .expect("the lb host's own address still answers");
        s.write_all(b"hi").expect("write");
    });
    drop(own);

    for (family, client, vip) in [
        ("IPv4", "198.18.0.1", "198.18.1.1"),
        ("IPv6", "fd00::1", "fd00:1::1"),
    ] {
        let client: IpAddr = client.parse().expect("client");
        let vip_ip: IpAddr = vip.parse().expect("vip");
        let http = SocketAddr::new(vip_ip, 80);
        let failures: Vec<String> = lab.client.enter(|| {
            (0..REQUESTS)
                .filter_map(|_| {
                    assert!(started.elapsed() < TEST_BUDGET, "test budget exceeded");
                    http_get(http).err()
                })
                .collect()
        });
        assert!(
            failures.is_empty(),
            "{family} HTTP: {} of {REQUESTS} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert_spread(&servers.take_seen(), client, &format!("{family} TCP"));

        let dns = SocketAddr::new(vip_ip, 53);
        let bind = if vip_ip.is_ipv4() {
            "198.18.0.1:0"
        } else {
            "[fd00::1]:0"
        };
        let failures: Vec<String> = lab.client.enter(|| {
            (0..REQUESTS)
                .filter_map(|_| {
                    assert!(started.elapsed() < TEST_BUDGET, "test budget exceeded");
                    udp_request(bind, dns).err()
                })
                .collect()
        });
        assert!(
            failures.is_empty(),
            "{family} UDP: {} of {REQUESTS} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert_spread(&servers.take_seen(), client, &format!("{family} UDP"));
    }
    drop(servers);
    let (status, stdout) = daemon.terminate();
    assert!(status.success(), "lb stops cleanly");
    // Every request and every answer crossed XDP: forwarded, or rewritten and handed to the
    // kernel while a neighbour resolved. (A reused ephemeral port makes an established flow,
    // not a new one, so only the sum is an exact lower bound.)
    let count = |name| lb_tests::process::counter(&stdout, name);
    let translated = count("fwd_new_flow")
        + count("fwd_established")
        + count("fwd_reply")
        + count("pass_no_neighbour");
    assert!(
        translated >= 8 * REQUESTS as u64,
        "packets translated: {translated}"
    );
    assert!(count("fwd_reply") > 0 && count("fwd_new_flow") > 0);
}
