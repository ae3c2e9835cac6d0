//! End to end: a client, the lb and three backends in namespaces; real TCP (HTTP) and UDP
//! request/response traffic to the VIP over IPv4 and IPv6, through `lb run` in native XDP.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    client::{IO_TIMEOUT, http_get, udp_request_from_new_port},
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
            .map_or(&[][..], Vec::as_slice);
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

    // Every neighbour the lb host forwards to is known before any traffic (permanent
    // entries, as ARP/ND would resolve them), so that XDP forwards every packet below
    // itself: none is handed to the kernel as pass_no_neighbour.
    let mac = |ns: &lb_tests::netns::NetNs, dev: &str| {
        ns.mac(dev)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut neighbours = vec![(
        lab.lb_ifaces[0].clone(),
        mac(&lab.client, &lab.client_dev),
        [lab.client_addr(false), lab.client_addr(true)],
    )];
    for (backend, lb_if) in lab.backends.iter().zip(&lab.lb_ifaces[1..]) {
        neighbours.push((
            lb_if.clone(),
            mac(&backend.ns, &backend.dev),
            [backend.addr(false), backend.addr(true)],
        ));
    }
    for (dev, lladdr, addresses) in &neighbours {
        for address in addresses {
            lab.lb.ip(&[
                "neigh",
                "replace",
                &address.to_string(),
                "lladdr",
                lladdr,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
    }
    // Per VIP, the packets and new flows of its UDP service (the test knows those exactly).
    let mut udp_sent = Vec::new();

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
        let (ports, failures): (Vec<_>, Vec<_>) = lab.client.enter(|| {
            (0..REQUESTS)
                .map(|_| {
                    assert!(started.elapsed() < TEST_BUDGET, "test budget exceeded");
                    udp_request_from_new_port(client, dns)
                })
                .partition(Result::is_ok)
        });
        assert!(
            failures.is_empty(),
            "{family} UDP: {} of {REQUESTS} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        let seen = servers.take_seen();
        assert_spread(&seen, client, &format!("{family} UDP"));
        // One datagram per request, from a fresh socket: a new flow unless the kernel
        // handed out a source port again (then the flow is the earlier one's).
        let ports: std::collections::HashSet<u16> = ports.into_iter().flatten().collect();
        let per_backend: Vec<(SocketAddr, u64)> = lab
            .backends
            .iter()
            .map(|b| {
                let got = seen.get(&b.name).map_or(0, Vec::len) as u64;
                (SocketAddr::new(b.addr(v6), UDP_PORT), got)
            })
            .collect();
        udp_sent.push((dns, ports.len() as u64, per_backend));
    }
    drop(servers);
    let stats = instance.stats();
    let count = |name| stat_packets(&stats, name);
    let vip_entry = |vip: SocketAddr, proto: &str| {
        stats["vips"]
            .as_array()
            .and_then(|vips| {
                vips.iter()
                    .find(|v| v["vip"] == vip.to_string().as_str() && v["proto"] == proto)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {proto} VIP {vip} in `lb stats --json`: {stats}"))
    };
    let backend_packets = |vip: SocketAddr, backend: SocketAddr| {
        stats["backends"]
            .as_array()
            .and_then(|backends| {
                backends.iter().find(|b| {
                    b["vip"] == vip.to_string().as_str()
                        && b["backend"] == backend.to_string().as_str()
                })
            })
            .and_then(|b| b["packets"].as_u64())
            .unwrap_or_else(|| {
                panic!("no backend {backend} of {vip} in `lb stats --json`: {stats}")
            })
    };
    for (dns, new_flows, per_backend) in &udp_sent {
        let entry = vip_entry(*dns, "udp");
        assert_eq!(
            entry["packets"], REQUESTS,
            "{dns}: one datagram per request"
        );
        assert_eq!(
            entry["new_flows"], *new_flows,
            "{dns}: one flow per source port"
        );
        for (backend, received) in per_backend {
            assert_eq!(
                backend_packets(*dns, *backend),
                *received,
                "{dns} → {backend}: what lb sent it is what its server received"
            );
        }
    }
    let (mut balanced, mut new_flows) = (0, 0);
    for v6 in [false, true] {
        for (port, proto, backend_port) in [(80, "tcp", HTTP_PORT), (53, "udp", UDP_PORT)] {
            let vip = SocketAddr::new(lab.vip(v6), port);
            let entry = vip_entry(vip, proto);
            let packets = entry["packets"].as_u64().expect("packets");
            let to_backends: u64 = lab
                .backends
                .iter()
                .map(|b| backend_packets(vip, SocketAddr::new(b.addr(v6), backend_port)))
                .sum();
            assert_eq!(
                packets, to_backends,
                "{vip}: each packet went to one backend"
            );
            balanced += packets;
            new_flows += entry["new_flows"].as_u64().expect("new_flows");
        }
    }
    // With every neighbour resolved, XDP forwarded each client packet itself: a new flow's
    // first packet or an established one; none was handed to the kernel.
    assert_eq!(count("pass_no_neighbour"), 0, "neighbours resolved first");
    assert_eq!(
        count("fwd_new_flow"),
        new_flows,
        "one fwd_new_flow per new flow"
    );
    assert_eq!(
        count("fwd_new_flow") + count("fwd_established"),
        balanced,
        "every client packet to a VIP forwarded by XDP"
    );
    // Replies: one per UDP request; a TCP exchange's reply packets vary (at least the SYN-ACK
    // and the answer each), so they give only a lower bound.
    let udp_replies = 2 * REQUESTS as u64;
    let tcp_replies_at_least = 2 * 2 * REQUESTS as u64;
    assert!(
        count("fwd_reply") >= udp_replies + tcp_replies_at_least,
        "fwd_reply {} below the {udp_replies} UDP answers and {tcp_replies_at_least} TCP replies sent",
        count("fwd_reply")
    );
    let (status, _) = daemon.terminate();
    assert!(status.success(), "lb stops cleanly");
    instance.down();
    assert!(!lab.lb.has_xdp(), "`lb down` detached every interface");
}
