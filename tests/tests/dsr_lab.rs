//! Direct server return through the real CLI, in namespaces: a client and backends behind
//! a router, the lb on its own link, backends whose default route is the router (never
//! the lb), set up only with `lb decap attach`. HTTP and UDP through IPv4, IPv6 and
//! IPv4-over-IPv6 VIPs (dsr-ipip) and through IPv4 and IPv6 VIPs with the backends on the
//! lb's link (dsr-l2): every request answered from the VIP, every backend sees the
//! client's own address, the lb forwards no reply, a 1 MB upload crosses 1500-byte links
//! (PMTU discovery through the lb's frag-needed / packet-too-big), and `lb decap detach`
//! leaves each backend as it was.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    client::{http_get, http_upload, udp_request},
    dsr::{self, DsrLab, Wiring},
    process::{Daemon, DecapPaths, FAST_CHECK, Instance, stat_packets},
    servers::{HTTP_PORT, Servers, UDP_PORT},
    topology::Backend,
};

const REQUESTS: usize = 300;
const UPLOAD: usize = 1 << 20;
const UPLOAD_LIMIT: Duration = Duration::from_secs(30);
const TEST_BUDGET: Duration = Duration::from_secs(240);

/// What a backend looks like from outside: its addresses, its links (XDP included) and
/// the sysctls a DSR setup touches.
fn snapshot(backend: &Backend) -> String {
    // A link-local address may still be in duplicate detection at the first look: that
    // flag is the kernel's clock, not a change.
    let mut text = backend
        .ns
        .ip(&["-j", "addr", "show"])
        .replace("\"tentative\":true,", "");
    text.push_str(&backend.ns.ip(&["-d", "-j", "link", "show"]));
    for dev in ["all", "default", "lo", backend.dev.as_str()] {
        for name in ["arp_ignore", "arp_announce", "rp_filter"] {
            let key = format!("/proc/sys/net/ipv4/conf/{dev}/{name}");
            let output = backend
                .ns
                .command("cat")
                .arg(&key)
                .output()
                .expect("read a sysctl");
            text.push_str(&format!(
                "{key}={}",
                String::from_utf8_lossy(&output.stdout)
            ));
        }
    }
    text
}

/// One DSR service under test: its VIP address and the backend address family.
#[derive(Clone, Copy)]
struct Service {
    vip: IpAddr,
    backends_v6: bool,
}

fn backend_addr(backend: &Backend, v6: bool) -> IpAddr {
    if v6 {
        backend.v6.into()
    } else {
        backend.v4.into()
    }
}

/// Starts `lb run` on the lab's lb and adds each service (HTTP and UDP) in `mode`, all
/// through the CLI.
fn start_lb(lab: &DsrLab, instance: &Instance, mode: &str, services: &[Service]) -> Daemon {
    let daemon = Daemon::start(instance.run(&lab.lb, std::slice::from_ref(&lab.lb_iface), &[]));
    for service in services {
        for (port, proto) in [(HTTP_PORT, "tcp"), (UDP_PORT, "udp")] {
            let vip = SocketAddr::new(service.vip, port).to_string();
            instance.ok(&["vip", "add", &vip, "--proto", proto, "--mode", mode]);
            for backend in &lab.backends {
                let addr = SocketAddr::new(backend_addr(backend, service.backends_v6), port);
                instance.ok(&["backend", "add", &vip, &addr.to_string(), "--proto", proto]);
            }
        }
    }
    daemon
}

/// Sets every backend up with `lb decap attach` only (VIPs on lo, sysctls, the program),
/// accepting tunnels from the lb's addresses alone; returns what each looked like before.
fn attach_backends(lab: &DsrLab, vips: &[IpAddr]) -> (Vec<DecapPaths>, Vec<String>) {
    let mut paths = Vec::new();
    let mut before = Vec::new();
    for backend in &lab.backends {
        before.push(snapshot(backend));
        let decap = DecapPaths::new(&backend.ns);
        let mut args = vec!["attach", "--iface", backend.dev.as_str()];
        let vips: Vec<String> = vips.iter().map(IpAddr::to_string).collect();
        for vip in &vips {
            args.extend(["--vip", vip.as_str()]);
        }
        let lb_v4 = format!("{}/32", dsr::LB_V4);
        let lb_v6 = format!("{}/128", dsr::LB_V6);
        args.extend(["--allow-source", &lb_v4, "--allow-source", &lb_v6]);
        let printed = decap.ok(&args);
        assert!(
            printed.contains(&vips[0]),
            "attach says what it changed: {printed}"
        );
        paths.push(decap);
    }
    (paths, before)
}

/// 300 HTTP requests and 300 UDP request/response pairs to `vip` from the client, each
/// a new flow; every one answered from the VIP. Returns the answers per backend.
fn traffic(
    lab: &DsrLab,
    vip: IpAddr,
    deadline: Instant,
    diagnose: impl Fn() -> String,
) -> HashMap<String, usize> {
    let client = DsrLab::client_addr(vip);
    let mut answers: HashMap<String, usize> = HashMap::new();
    for i in 0..REQUESTS {
        assert!(
            Instant::now() < deadline,
            "{vip}: out of time at request {i}"
        );
        let (http, udp) = lab.client.enter(|| {
            (
                http_get(SocketAddr::new(vip, HTTP_PORT)),
                udp_request(SocketAddr::new(client, 0), SocketAddr::new(vip, UDP_PORT)),
            )
        });
        let http = http.unwrap_or_else(|e| panic!("{vip}: HTTP request {i}: {e}\n{}", diagnose()));
        let udp = udp.unwrap_or_else(|e| panic!("{vip}: UDP request {i}: {e}\n{}", diagnose()));
        *answers.entry(http).or_default() += 1;
        *answers.entry(udp).or_default() += 1;
    }
    answers
}

fn run_lab(wiring: Wiring, mode: &str, services: &[Service]) {
    lb_tests::require_root!();
    let deadline = Instant::now() + TEST_BUDGET;
    let lab = DsrLab::new("dsr", wiring, 2);
    let instance = Instance::new();
    let vips: Vec<IpAddr> = services.iter().map(|s| s.vip).collect();
    let (decaps, before) = attach_backends(&lab, &vips);
    let daemon = start_lb(&lab, &instance, mode, services);
    let servers = Servers::start_on_vips(&lab.backends, &vips);

    for service in services {
        let vip = service.vip;
        let diagnose = || {
            let stats = instance.stats();
            let moved: Vec<String> = stats["counters"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, c)| c["packets"].as_u64().unwrap_or(0) > 0)
                .map(|(name, c)| format!("{name}={}", c["packets"]))
                .collect();
            let decap: Vec<String> = decaps.iter().map(|d| d.ok(&["status", "--json"])).collect();
            format!("lb counters: {moved:?}\ndecap: {decap:?}")
        };
        let answers = traffic(&lab, vip, deadline, diagnose);
        assert_eq!(
            answers.values().sum::<usize>(),
            2 * REQUESTS,
            "{vip}: every request answered once: {answers:?}"
        );
        assert!(
            lab.backends
                .iter()
                .all(|b| answers.get(&b.name).is_some_and(|n| *n > REQUESTS / 4)),
            "{vip}: both backends serve: {answers:?}"
        );
        let client = DsrLab::client_addr(vip);
        let seen = servers.take_seen();
        for (backend, peers) in &seen {
            assert!(
                peers.iter().all(|peer| *peer == client),
                "{vip}: {backend} saw a source other than the client {client}: {peers:?}"
            );
        }
        let upload = lab
            .client
            .enter(|| http_upload(SocketAddr::new(vip, HTTP_PORT), UPLOAD, UPLOAD_LIMIT))
            .unwrap_or_else(|e| panic!("{vip}: 1 MB upload: {e}"));
        assert!(
            upload.ends_with(&format!(" {UPLOAD}")),
            "{vip}: the backend got all of it: {upload}"
        );
        servers.take_seen();
    }

    let stats = instance.stats();
    assert_eq!(
        stat_packets(&stats, "fwd_reply"),
        0,
        "no reply crosses the lb in DSR"
    );
    let sent = if mode == "dsr-l2" {
        "dsr_l2_forwarded"
    } else {
        "dsr_ipip_encapsulated"
    };
    let forwarded = stat_packets(&stats, sent);
    assert!(
        forwarded >= (2 * REQUESTS * services.len()) as u64,
        "{sent} = {forwarded}"
    );
    if mode == "dsr-ipip" {
        // 1500-byte segments do not fit 1500-byte links with an outer header: the client
        // learnt the tunnel's MTU from the lb.
        assert!(stat_packets(&stats, "dsr_too_big") > 0, "no PMTU message");
        assert!(stat_packets(&stats, "icmp_too_big_sent") > 0);
    }
    for decap in &decaps {
        let status: serde_json::Value =
            serde_json::from_str(&decap.ok(&["status", "--json"])).expect("status JSON");
        let iface = &status["interfaces"][0];
        assert_eq!(iface["attached"], true, "{status}");
        let packets = |name: &str| iface["counters"][name]["packets"].as_u64().unwrap_or(0);
        let decapsulated = packets("decap_ipv4_in_ipv4")
            + packets("decap_ipv6_in_ipv6")
            + packets("decap_ipv4_in_ipv6");
        if mode == "dsr-ipip" {
            assert!(
                decapsulated > 0,
                "status counts tunnels taken apart: {status}"
            );
        } else {
            assert_eq!(decapsulated, 0, "dsr-l2 sends no tunnel: {status}");
        }
    }

    // A restarted daemon adopts the pinned DSR datapath: the modes are read back, and
    // traffic keeps flowing through the restart.
    let modes_before = instance.ok(&["vip", "list", "--json"]);
    let (status, _) = daemon.terminate();
    assert!(
        status.success(),
        "lb run exits cleanly on SIGTERM: {status}"
    );
    let during = lab
        .client
        .enter(|| http_get(SocketAddr::new(services[0].vip, HTTP_PORT)));
    assert!(
        during.is_ok(),
        "the pinned datapath serves without its daemon: {during:?}"
    );
    let daemon = Daemon::start(instance.run(&lab.lb, std::slice::from_ref(&lab.lb_iface), &[]));
    let modes = |text: &str| -> Vec<String> {
        let vips: serde_json::Value = serde_json::from_str(text).expect("vip list JSON");
        vips.as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{} {} {}", v["vip"], v["proto"], v["mode"]))
            .collect()
    };
    assert_eq!(
        modes(&instance.ok(&["vip", "list", "--json"])),
        modes(&modes_before),
        "the restarted daemon keeps every VIP's mode"
    );
    for service in services {
        for i in 0..30 {
            lab.client
                .enter(|| http_get(SocketAddr::new(service.vip, HTTP_PORT)))
                .unwrap_or_else(|e| panic!("{}: request {i} after the restart: {e}", service.vip));
        }
    }
    drop(daemon);

    drop(servers);
    for ((decap, backend), before) in decaps.iter().zip(&lab.backends).zip(&before) {
        decap.ok(&["detach", "--all"]);
        let after = snapshot(backend);
        let at = after
            .bytes()
            .zip(before.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| after.len().min(before.len()));
        let around =
            |text: &str| text[at.saturating_sub(300)..(at + 300).min(text.len())].to_owned();
        assert!(
            &after == before,
            "{}: detach leaves it as it was; first difference:\nbefore: {}\nafter:  {}",
            backend.name,
            around(before),
            around(&after)
        );
        assert!(!backend.ns.has_xdp(), "{}: no XDP left", backend.name);
    }
}

#[test]
fn dsr_ipip_serves_ipv4_ipv6_and_ipv4_over_ipv6_backends_with_replies_bypassing_the_lb() {
    run_lab(
        Wiring::Routed,
        "dsr-ipip",
        &[
            Service {
                vip: dsr::VIP_V4.into(),
                backends_v6: false,
            },
            Service {
                vip: dsr::VIP_V6.into(),
                backends_v6: true,
            },
            Service {
                vip: dsr::VIP_V4_OVER_V6.into(),
                backends_v6: true,
            },
        ],
    );
}

#[test]
fn dsr_l2_serves_backends_on_the_lbs_link_with_replies_bypassing_the_lb() {
    run_lab(
        Wiring::SharedLink,
        "dsr-l2",
        &[
            Service {
                vip: dsr::VIP_V4.into(),
                backends_v6: false,
            },
            Service {
                vip: dsr::VIP_V6.into(),
                backends_v6: true,
            },
        ],
    );
}

#[test]
fn dsr_changes_the_lb_cannot_carry_out_are_refused_with_the_reason_and_change_nothing() {
    lb_tests::require_root!();
    let lab = DsrLab::new("dsrno", Wiring::Routed, 1);
    let instance = Instance::new();
    let _daemon = start_lb(&lab, &instance, "dsr-ipip", &[]);
    let routed = SocketAddr::new(lab.backends[0].v4.into(), HTTP_PORT).to_string();
    instance.ok(&["vip", "add", "198.18.48.1:8080", "--mode", "dsr-l2"]);
    instance.ok(&["vip", "add", "198.18.48.2:8080", "--mode", "dsr-ipip"]);
    instance.ok(&["backend", "add", "198.18.48.2:8080", &routed]);
    let before = instance.ok(&["vip", "list", "--json"]);
    let other_port = SocketAddr::new(lab.backends[0].v4.into(), 9090).to_string();
    let v6_backend = SocketAddr::new(lab.backends[0].v6.into(), HTTP_PORT).to_string();
    for (args, expected) in [
        (
            vec!["backend", "add", "198.18.48.1:8080", routed.as_str()],
            "[not_on_link]",
        ),
        (
            vec!["backend", "add", "198.18.48.2:8080", other_port.as_str()],
            "[dsr_port_mismatch]",
        ),
        (
            vec!["vip", "set-mode", "198.18.48.2:8080", "--mode", "nat"],
            "[mode_change_with_backends]",
        ),
        (
            vec!["backend", "add", "198.18.48.1:8080", v6_backend.as_str()],
            "[dsr_family]",
        ),
    ] {
        let error = instance.fails(&args);
        assert!(error.contains(expected), "`lb {}`: {error}", args.join(" "));
    }
    assert_eq!(
        instance.ok(&["vip", "list", "--json"]),
        before,
        "nothing changed"
    );
    let vips: serde_json::Value = serde_json::from_str(&before).expect("JSON");
    let modes: Vec<&str> = vips
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["mode"].as_str())
        .collect();
    assert_eq!(modes, ["dsr-l2", "dsr-ipip"], "vip list shows the modes");
    // Without backends, a mode changes.
    instance.ok(&["vip", "set-mode", "198.18.48.1:8080", "--mode", "dsr-ipip"]);
    instance.ok(&["backend", "add", "198.18.48.1:8080", &routed]);
}

/// A TCP check of a dsr-gue or dsr-ipip VIP probes through the tunnel: a SYN to the VIP
/// inside the tunnel, answered by the service on the VIP. Both backends pass; when the VIP
/// leaves one backend's `lo` (its service still listening there, and another service
/// answering on the backend's own address, so a probe to the host would pass), that
/// backend fails and goes down, and comes back when the VIP does.
#[test]
fn tcp_checks_of_tunnelled_vips_probe_through_the_tunnel() {
    lb_tests::require_root!();
    let lab = DsrLab::new("dsrhc", Wiring::Routed, 2);
    let instance = Instance::new();
    let vip = IpAddr::from(dsr::VIP_V4);
    let (_decaps, _) = attach_backends(&lab, &[vip]);
    let _daemon = Daemon::start(instance.run(&lab.lb, std::slice::from_ref(&lab.lb_iface), &[]));
    let _servers = Servers::start_on_vips(&lab.backends, &[vip]);
    // Something answers on the first backend's own address: a direct probe would pass.
    let first = &lab.backends[0];
    let host_listener = first.ns.enter(|| {
        std::net::TcpListener::bind((first.v4, HTTP_PORT)).expect("listen on the backend")
    });
    for (mode, port) in [("dsr-gue", HTTP_PORT), ("dsr-ipip", HTTP_PORT + 1)] {
        let service = SocketAddr::new(vip, port).to_string();
        let add = [
            &["vip", "add", &service, "--mode", mode, "--check", "tcp"][..],
            &FAST_CHECK,
        ];
        instance.ok(&add.concat());
        for backend in &lab.backends {
            let addr = SocketAddr::new(backend.v4.into(), port).to_string();
            instance.ok(&["backend", "add", &service, &addr]);
        }
    }
    // The dsr-ipip VIP's port has its own services, on the VIP.
    let extra: Vec<std::net::TcpListener> = lab
        .backends
        .iter()
        .map(|b| {
            b.ns.enter(|| std::net::TcpListener::bind((vip, HTTP_PORT + 1)).expect("bind"))
        })
        .collect();
    let limit = Duration::from_secs(10);
    let name = |backend: &Backend, port: u16| SocketAddr::new(backend.v4.into(), port).to_string();
    for port in [HTTP_PORT, HTTP_PORT + 1] {
        for backend in &lab.backends {
            instance.wait_for_health(&name(backend, port), "up", limit);
        }
    }
    first
        .ns
        .ip(&["addr", "del", &format!("{vip}/32"), "dev", "lo"]);
    for port in [HTTP_PORT, HTTP_PORT + 1] {
        instance.wait_for_health(&name(first, port), "down", limit);
        let (other, entry) = instance.backend_health(&name(&lab.backends[1], port));
        assert_eq!(other, "up", "the other backend stays up: {entry}");
    }
    first
        .ns
        .ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"]);
    for port in [HTTP_PORT, HTTP_PORT + 1] {
        instance.wait_for_health(&name(first, port), "up", limit);
    }
    drop((host_listener, extra));
}
