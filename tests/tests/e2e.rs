//! End to end: a client, the lb and three backends in namespaces; real TCP (HTTP) and UDP
//! request/response traffic to the VIP over IPv4 and IPv6, through `lb run` in native XDP.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    client::{IO_TIMEOUT, http_get, udp_request},
    process::{Daemon, Instance, stat_packets},
    servers::{HTTP_PORT, Servers, UDP_PORT},
    topology::Lab,
};

const REQUESTS: usize = 300;
const TEST_BUDGET: Duration = Duration::from_secs(120);

/// Both VIPs (IPv4 and IPv6), each with HTTP and UDP services on all three backends.
fn config(lab: &Lab) -> String {
    let mut toml = String::new();
    for v6 in [false, true] {
        let vip = SocketAddr::new(lab.vip(v6), 0);
        for (port, proto, backend_port) in [(80, "tcp", HTTP_PORT), (53, "udp", UDP_PORT)] {
            let vip = SocketAddr::new(vip.ip(), port);
            toml.push_str(&format!(
                "[[vip]]\naddress = \"{vip}\"\nproto = \"{proto}\"\nbackends = [\n"
            ));
            for backend in &lab.backends {
                let addr = SocketAddr::new(backend.addr(v6), backend_port);
                toml.push_str(&format!("  {{ address = \"{addr}\" }},\n"));
            }
            toml.push_str("]\n");
        }
    }
    toml
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
    lb_tests::require_root!();
    let started = Instant::now();
    let lab = Lab::new("lbt", 3);
    let instance = Instance::new();
    let config_path = instance.state.with_file_name("config.toml");
    std::fs::write(&config_path, config(&lab)).expect("write config");
    let config_arg = config_path.to_string_lossy().into_owned();
    let daemon = Daemon::start(instance.run(
        &lab.lb,
        &lab.lb_ifaces,
        &["--xdp-mode", "native", "--config", &config_arg],
    ));
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

    for (family, v6) in [("IPv4", false), ("IPv6", true)] {
        let client = lab.client_addr(v6);
        let vip_ip = lab.vip(v6);
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
        let bind = SocketAddr::new(client, 0);
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
    // Every request and every answer crossed XDP: forwarded, or rewritten and handed to the
    // kernel while a neighbour resolved. (A reused ephemeral port makes an established flow,
    // not a new one, so only the sum is an exact lower bound.)
    let stats = instance.stats();
    let count = |name| stat_packets(&stats, name);
    let translated = count("fwd_new_flow")
        + count("fwd_established")
        + count("fwd_reply")
        + count("pass_no_neighbour");
    assert!(
        translated >= 8 * REQUESTS as u64,
        "packets translated: {translated}"
    );
    assert!(count("fwd_reply") > 0 && count("fwd_new_flow") > 0);
    let (status, _) = daemon.terminate();
    assert!(status.success(), "lb stops cleanly");
    instance.down();
    assert!(!lab.lb.has_xdp(), "`lb down` detached every interface");
}
