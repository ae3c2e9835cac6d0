//! `lb explain` against the real daemon and real connections in namespaces: what it says of
//! a flow is checked against where the datapath actually sends it (the servers say which
//! backend they are), for tracked and untracked flows, a draining and a failing backend,
//! non-VIP addresses, IPv4 and IPv6, NAT and dsr-ipip. Needs root.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::unix::net::UnixStream,
    time::Duration,
};

use lb_tests::{
    client::{IO_TIMEOUT, WhoConnection, udp_request},
    dsr::{self, DsrLab, Wiring},
    process::{DecapPaths, FAST_CHECK, Instance, stat_packets},
    servers::{HTTP_PORT, Servers, UDP_PORT, WHO_PORT},
    topology::Lab,
};
use serde_json::Value;

/// Loaded into the daemon, so the answer's timeout is the loaded one, not a default.
const ESTABLISHED_SECS: u64 = 600;

fn endpoint(lab: &Lab, n: usize, port: u16, v6: bool) -> SocketAddr {
    SocketAddr::new(lab.backends[n].addr(v6), port)
}

/// The backend whose servers answer `name` (`backend-<n>`), at `port`.
fn named(lab: &Lab, name: &str, port: u16, v6: bool) -> SocketAddr {
    let n = lab
        .backends
        .iter()
        .position(|b| b.name == name)
        .unwrap_or_else(|| panic!("no backend answers {name:?}"));
    endpoint(lab, n, port, v6)
}

/// A VIP with every backend of the lab at `port`, and `extra` flags for `vip add`.
fn add_vip(instance: &Instance, lab: &Lab, vip: SocketAddr, port: u16, extra: &[&str]) {
    let vip_arg = vip.to_string();
    instance.ok(&[&["vip", "add", &vip_arg][..], extra].concat());
    for n in 0..lab.backends.len() {
        let backend = endpoint(lab, n, port, vip.is_ipv6()).to_string();
        instance.ok(&["backend", "add", &vip_arg, &backend]);
    }
}

/// `lb explain --json`, parsed; every answer names a counter `lb stats` has.
fn explain(instance: &Instance, client: SocketAddr, vip: SocketAddr, proto: &str) -> Value {
    let text = instance.ok(&[
        "explain",
        &client.to_string(),
        &vip.to_string(),
        "--proto",
        proto,
        "--json",
    ]);
    let answer: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("`lb explain --json` is not JSON ({e}): {text}"));
    let counter = answer["counter"].as_str().expect("a counter");
    stat_packets(&instance.stats(), counter);
    answer
}

fn addr_of(value: &Value) -> Option<SocketAddr> {
    value.as_str().and_then(|text| text.parse().ok())
}

/// The backend Maglev would give a new flow, as explained.
fn pick(answer: &Value) -> SocketAddr {
    addr_of(&answer["maglev"]["backend"]["backend"])
        .unwrap_or_else(|| panic!("no Maglev pick: {answer}"))
}

fn tracked_backend(answer: &Value) -> Option<SocketAddr> {
    addr_of(&answer["tracked"]["backend"]["backend"])
}

/// A TCP connection from exactly `client` (address and port) to `vip`.
fn connect_from(client: SocketAddr, vip: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let family = if vip.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket(family, SocketType::STREAM, None).expect("socket");
    sockopt::set_socket_reuseaddr(&fd, true).expect("SO_REUSEADDR");
    // Bounds connect(2) as well as writes.
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(IO_TIMEOUT)).expect("timeout");
    rustix::net::bind(&fd, &client).unwrap_or_else(|e| panic!("bind {client}: {e}"));
    rustix::net::connect(&fd, &vip).unwrap_or_else(|e| panic!("connect {client} -> {vip}: {e}"));
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream
}

/// Asks the `who` server behind `vip` from `client`; the connection stays open.
fn who_from(client: SocketAddr, vip: SocketAddr) -> (BufReader<TcpStream>, String) {
    let mut reader = BufReader::new(connect_from(client, vip));
    let name = ask(&mut reader);
    (reader, name)
}

fn ask(reader: &mut BufReader<TcpStream>) -> String {
    reader.get_mut().write_all(b"who\n").expect("send");
    let mut line = String::new();
    reader.read_line(&mut line).expect("an answer");
    line.trim().to_owned()
}

/// One HTTP GET from `client` through `vip`; the answering backend's name.
fn http_from(client: SocketAddr, vip: SocketAddr) -> String {
    let mut stream = connect_from(client, vip);
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
    answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn tracked_untracked_and_non_vip_flows_are_explained_as_forwarded() {
    lb_tests::require_root!();
    let lab = Lab::new("lbx", 3);
    let instance = Instance::new();
    let timeout = format!("tcp_established={ESTABLISHED_SECS}");
    let _daemon = instance.start(&lab, &["--timeout", &timeout]);
    let _servers = Servers::start(&lab.backends);
    let who = SocketAddr::new(lab.vip(false), WHO_PORT);
    add_vip(&instance, &lab, who, WHO_PORT, &[]);
    let http6 = SocketAddr::new(lab.vip(true), HTTP_PORT);
    add_vip(&instance, &lab, http6, HTTP_PORT, &[]);

    // 1. A tracked flow: a long-lived connection, and the backend that answers on it.
    let mut connection = lab
        .client
        .enter(|| WhoConnection::open(who).expect("connect through the VIP"));
    let answered = connection.ask().expect("an answer");
    let client = SocketAddr::new(lab.client_addr(false), connection.local_port());
    let answer = explain(&instance, client, who, "tcp");
    let tracked = &answer["tracked"];
    assert_eq!(
        tracked_backend(&answer),
        Some(named(&lab, &answered, WHO_PORT, false)),
        "{answer}"
    );
    assert_eq!(tracked["state"], "established", "{answer}");
    assert_eq!(tracked["timeout_secs"], ESTABLISHED_SECS, "{answer}");
    let left = tracked["expires_in_secs"].as_u64().expect("time left");
    assert!(left > 0 && left <= ESTABLISHED_SECS, "{answer}");
    assert_eq!(tracked["backend"]["state"], "active", "{answer}");
    assert_eq!(answer["verdict"], "forward-tracked", "{answer}");
    assert_eq!(
        (&answer["action"], &answer["counter"]),
        (&"forward".into(), &"fwd_established".into())
    );
    assert_eq!(answer["service"]["mode"], "nat", "{answer}");
    // Nothing changed since its SYN was balanced: Maglev picks the same backend now.
    assert_eq!(
        Some(pick(&answer)),
        tracked_backend(&answer),
        "the hash, the slot and the table are the datapath's: {answer}"
    );
    eprintln!("tracked: {}", answer["explanation"]);
    let text = instance.ok(&["explain", &client.to_string(), &who.to_string()]);
    assert!(
        text.contains("verdict:  forward-tracked")
            && text.contains(&named(&lab, &answered, WHO_PORT, false).to_string()),
        "{text}"
    );

    // 2. Untracked flows: the predicted backend is where a connection from exactly that
    //    port lands, for several ports, IPv4 (who) and IPv6 (HTTP).
    let mut predicted = BTreeSet::new();
    for (vip, ports, v6) in [(who, 41_001..41_009, false), (http6, 42_001..42_006, true)] {
        for port in ports {
            let client = SocketAddr::new(lab.client_addr(v6), port);
            let before = explain(&instance, client, vip, "tcp");
            assert_eq!(before["tracked"], Value::Null, "{before}");
            assert_eq!(before["verdict"], "new-flow", "{before}");
            assert_eq!(before["counter"], "fwd_new_flow", "{before}");
            let expected = pick(&before);
            predicted.insert(expected);
            let name = if v6 {
                lab.client.enter(|| http_from(client, vip))
            } else {
                let (reader, name) = lab.client.enter(|| who_from(client, vip));
                drop(reader);
                name
            };
            let port_of = if v6 { HTTP_PORT } else { WHO_PORT };
            assert_eq!(
                named(&lab, &name, port_of, v6),
                expected,
                "{client} -> {vip} predicted {expected}, answered by {name}: {before}"
            );
            // Now tracked, to that backend.
            let after = explain(&instance, client, vip, "tcp");
            assert_eq!(tracked_backend(&after), Some(expected), "{after}");
            assert_eq!(after["verdict"], "forward-tracked", "{after}");
        }
    }
    eprintln!(
        "13 untracked flows (8 IPv4, 5 IPv6) each landed on the predicted backend; {} distinct",
        predicted.len()
    );
    assert!(
        predicted.len() >= 4,
        "13 ports spread over several backends of both VIPs: {predicted:?}"
    );

    // 5. Not a VIP, and a VIP's address on another port: passed to the kernel.
    let client = SocketAddr::new(lab.client_addr(false), 40_000);
    let elsewhere = explain(
        &instance,
        client,
        "198.18.9.9:80".parse().expect("addr"),
        "tcp",
    );
    assert_eq!(elsewhere["service"], Value::Null, "{elsewhere}");
    assert_eq!(elsewhere["vip_address"], false, "{elsewhere}");
    assert_eq!(elsewhere["maglev"], Value::Null, "{elsewhere}");
    assert_eq!(elsewhere["verdict"], "pass-not-vip", "{elsewhere}");
    assert_eq!(elsewhere["action"], "pass", "{elsewhere}");
    let other_port = SocketAddr::new(lab.vip(false), 81);
    let other = explain(&instance, client, other_port, "udp");
    assert_eq!(other["verdict"], "pass-vip-other-port", "{other}");
    assert_eq!(other["vip_address"], true, "{other}");
    // The datapath counts exactly that: one datagram, one pass_vip_other_port.
    let counted = || stat_packets(&instance.stats(), "pass_vip_other_port");
    let before = counted();
    lab.client.enter(|| {
        let socket = UdpSocket::bind(client).expect("bind");
        socket.send_to(b"x", other_port).expect("send");
    });
    assert_eq!(counted(), before + 1, "{other}");

    // A VIP without backends: its slot is empty, the packet dropped, and counted so.
    let empty = SocketAddr::new(lab.vip(false), 9_999);
    instance.ok(&["vip", "add", &empty.to_string(), "--proto", "udp"]);
    let none = explain(&instance, client, empty, "udp");
    assert_eq!(none["verdict"], "drop-no-backend", "{none}");
    assert_eq!(none["action"], "drop", "{none}");
    assert_eq!(none["maglev"]["backend"], Value::Null, "{none}");
    let dropped = || stat_packets(&instance.stats(), "drop_no_backend");
    let before = dropped();
    lab.client.enter(|| {
        let socket = UdpSocket::bind(client).expect("bind");
        socket.send_to(b"x", empty).expect("send");
    });
    assert_eq!(dropped(), before + 1, "{none}");

    // The first connection is still there, still tracked.
    assert_eq!(connection.ask().expect("still answered"), answered);
    instance.down();
}

#[test]
fn a_draining_backend_keeps_its_flow_and_a_failing_one_loses_it() {
    lb_tests::require_root!();
    let lab = Lab::new("lbx", 3);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    // One server set per backend, so one backend's can stop.
    let mut servers: Vec<Option<Servers>> = lab
        .backends
        .iter()
        .map(|b| Some(Servers::start(std::slice::from_ref(b))))
        .collect();
    let drained_vip = SocketAddr::new(lab.vip(false), WHO_PORT);
    // Step 4 fails a backend under a live connection and expects it to move.
    add_vip(
        &instance,
        &lab,
        drained_vip,
        WHO_PORT,
        &["--on-down", "move"],
    );

    // 3. Drain the backend of a live connection.
    let mut connection = lab
        .client
        .enter(|| WhoConnection::open(drained_vip).expect("connect"));
    let holder = connection.ask().expect("an answer");
    let client = SocketAddr::new(lab.client_addr(false), connection.local_port());
    let draining = named(&lab, &holder, WHO_PORT, false);
    instance.ok(&[
        "backend",
        "drain",
        &drained_vip.to_string(),
        &draining.to_string(),
    ]);
    let answer = explain(&instance, client, drained_vip, "tcp");
    assert_eq!(tracked_backend(&answer), Some(draining), "{answer}");
    assert_eq!(
        answer["tracked"]["backend"]["state"], "draining",
        "{answer}"
    );
    assert_eq!(answer["tracked"]["backend"]["drained"], true, "{answer}");
    assert_eq!(answer["verdict"], "forward-tracked", "{answer}");
    let why = answer["explanation"].as_str().unwrap_or_default();
    assert!(why.contains("keeps its tracked flows"), "{why}");
    assert_ne!(pick(&answer), draining, "no new flow to a draining backend");
    assert_eq!(
        connection.ask().expect("still answered"),
        holder,
        "it continues"
    );
    for port in 43_001..43_021 {
        let other = SocketAddr::new(lab.client_addr(false), port);
        let answer = explain(&instance, other, drained_vip, "tcp");
        assert_ne!(pick(&answer), draining, "{answer}");
    }

    // 4. The VIP gets a check, and the backend of another live connection fails it (a
    //    new connection never lands on the draining backend, whose servers keep serving).
    let vip_arg = drained_vip.to_string();
    instance.ok(&[
        &["vip", "set-check", &vip_arg, "--check", "tcp"][..],
        &FAST_CHECK,
    ]
    .concat());
    for n in 0..lab.backends.len() {
        instance.wait_for_health(
            &endpoint(&lab, n, WHO_PORT, false).to_string(),
            "up",
            Duration::from_secs(5),
        );
    }
    let from = SocketAddr::new(lab.client_addr(false), 44_001);
    let (mut old, failing) = lab.client.enter(|| who_from(from, drained_vip));
    assert_ne!(failing, holder, "a new flow reached the draining backend");
    let failing_addr = named(&lab, &failing, WHO_PORT, false);
    let n = lab
        .backends
        .iter()
        .position(|b| b.name == failing)
        .expect("a backend");
    servers[n] = None;
    let health_of = |answer: &Value| answer["tracked"]["backend"]["health"].clone();
    let answer = lb_tests::eventually(
        Duration::from_secs(5),
        "explain shows the backend down",
        || {
            let answer = explain(&instance, from, drained_vip, "tcp");
            if health_of(&answer) == "down" {
                Ok(answer)
            } else {
                Err(answer)
            }
        },
    );
    assert_eq!(tracked_backend(&answer), Some(failing_addr), "{answer}");
    assert_eq!(answer["tracked"]["backend"]["state"], "down", "{answer}");
    assert_eq!(
        (&answer["service"]["live"], &answer["service"]["healthy"]),
        (&2.into(), &1.into()),
        "{answer}"
    );
    // select.rs `tracked`: a backend down by its check loses its flows.
    assert_eq!(answer["verdict"], "rebalance", "{answer}");
    let new_home = pick(&answer);
    assert!(
        new_home != failing_addr && new_home != draining,
        "the pick avoids the down and the draining backend: {answer}"
    );
    assert_eq!(answer["maglev"]["backend"]["health"], "up", "{answer}");
    // As the datapath does it: the flow's next packet is balanced again, to that pick.
    let rebalanced = || stat_packets(&instance.stats(), "ct_rebalanced");
    let before = rebalanced();
    // The packet is what counts: the socket may already have heard of the failed backend.
    old.get_mut().write_all(b"who\n").unwrap_or_default();
    let after = lb_tests::eventually(
        Duration::from_secs(2),
        "the flow tracked away from the failed backend",
        || {
            let after = explain(&instance, from, drained_vip, "tcp");
            if tracked_backend(&after) == Some(failing_addr) {
                Err(after)
            } else {
                Ok(after)
            }
        },
    );
    assert_eq!(tracked_backend(&after), Some(new_home), "{after}");
    assert_eq!(rebalanced(), before + 1);
    drop(old);

    // The last live backend fails too: all of them stay in the table (fail open), and
    // explain says so.
    let last = lab
        .backends
        .iter()
        .position(|b| named(&lab, &b.name, WHO_PORT, false) == new_home)
        .expect("the pick is a backend");
    servers[last] = None;
    instance.wait_for_health(&new_home.to_string(), "down", Duration::from_secs(5));
    let fresh = SocketAddr::new(lab.client_addr(false), 44_002);
    let open = explain(&instance, fresh, drained_vip, "tcp");
    assert_eq!(open["service"]["fail_open"], true, "{open}");
    assert_eq!(open["service"]["healthy"], 0, "{open}");
    assert_eq!(open["verdict"], "new-flow", "{open}");
    let chosen = &open["maglev"]["backend"];
    assert_eq!(
        (&chosen["state"], &chosen["health"]),
        (&"active".into(), &"down".into()),
        "a failing backend back in the table: {open}"
    );
    assert_ne!(pick(&open), draining, "the drained one stays out: {open}");
    let why = open["explanation"].as_str().unwrap_or_default();
    assert!(why.contains("fail open"), "{why}");
    drop(servers);
    instance.down();
}

/// One raw API exchange; the daemon's answer, parsed.
fn raw_request(instance: &Instance, line: &str) -> Value {
    let mut stream = UnixStream::connect(&instance.api).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(line.as_bytes()).expect("send");
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .expect("an answer");
    serde_json::from_str(&answer).expect("JSON")
}

#[test]
fn bad_flows_are_refused_and_change_nothing() {
    lb_tests::require_root!();
    let lab = Lab::new("lbx", 1);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    instance.ok(&["vip", "add", "198.18.1.1:80"]);
    instance.ok(&["backend", "add", "198.18.1.1:80", "198.18.11.2:8080"]);
    let snapshot = || {
        (
            instance.ok(&["vip", "list", "--json"]),
            instance.ok(&["backend", "list", "--json"]),
            instance.ok(&["conntrack", "list", "--json"]),
            std::fs::read(&instance.state).expect("state file"),
        )
    };
    let before = snapshot();
    let cases: &[(&[&str], &str)] = &[
        (&["198.18.0.1", "198.18.1.1:80"], "is not ADDRESS:PORT"),
        (&["198.18.0.1:4000", "vip:80"], "is not ADDRESS:PORT"),
        (
            &["198.18.0.1:4000", "198.18.1.300:80"],
            "is not ADDRESS:PORT",
        ),
        (&["198.18.0.1:0", "198.18.1.1:80"], "port 0"),
        (&["198.18.0.1:4000", "198.18.1.1:0"], "port 0"),
        (
            &["198.18.0.1:4000", "[fd00:1::1]:80"],
            "different address families",
        ),
        (
            &["[fd00::1]:4000", "198.18.1.1:80"],
            "different address families",
        ),
        (
            &["198.18.0.1:4000", "198.18.1.1:80", "--proto", "sctp"],
            "invalid value 'sctp'",
        ),
        (&["198.18.0.1:4000"], "required"),
    ];
    for (args, reason) in cases {
        let stderr = instance.fails(&[&["explain"][..], args].concat());
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    for (line, code) in [
        (
            r#"{"op":"explain","client":"198.18.0.1:0","vip":"198.18.1.1:80"}"#,
            "invalid_address",
        ),
        (
            r#"{"op":"explain","client":"198.18.0.1:4000","vip":"[fd00:1::1]:80"}"#,
            "family_mismatch",
        ),
        (
            r#"{"op":"explain","client":"198.18.0.1","vip":"198.18.1.1:80"}"#,
            "bad_request",
        ),
        (r#"{"op":"explain","vip":"198.18.1.1:80"}"#, "bad_request"),
        (
            r#"{"op":"explain","client":"198.18.0.1:1","vip":"198.18.1.1:80","proto":"icmp"}"#,
            "bad_request",
        ),
    ] {
        let answer = raw_request(&instance, &format!("{line}\n"));
        assert_eq!(answer["ok"], false, "{line}: {answer}");
        assert_eq!(answer["code"], code, "{line}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    assert!(before == snapshot(), "a refused explain changed nothing");
    instance.down();
}

#[test]
fn a_dsr_flow_is_explained_with_its_mode_and_backend() {
    lb_tests::require_root!();
    let lab = DsrLab::new("lbx", Wiring::Routed, 2);
    let instance = Instance::new();
    let _daemon = lb_tests::process::Daemon::start(instance.run(
        &lab.lb,
        std::slice::from_ref(&lab.lb_iface),
        &[],
    ));
    let vip = SocketAddr::new(IpAddr::from(dsr::VIP_V6), UDP_PORT);
    let vip_arg = vip.to_string();
    instance.ok(&[
        "vip", "add", &vip_arg, "--proto", "udp", "--mode", "dsr-ipip",
    ]);
    for backend in &lab.backends {
        let addr = SocketAddr::new(backend.v6.into(), UDP_PORT).to_string();
        instance.ok(&["backend", "add", &vip_arg, &addr, "--proto", "udp"]);
    }
    let _decap = DecapPaths::attach_all(&lab.backends, vip.ip(), &format!("{}/128", dsr::LB_V6));
    let _servers = Servers::start_on_vips(&lab.backends, &[vip.ip()]);
    let backend_named = |name: &str| {
        let b = lab
            .backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"));
        SocketAddr::new(b.v6.into(), UDP_PORT)
    };
    let mut seen = BTreeSet::new();
    for port in 45_001..45_007 {
        let client = SocketAddr::new(IpAddr::from(dsr::CLIENT_V6), port);
        let before = explain(&instance, client, vip, "udp");
        assert_eq!(before["service"]["mode"], "dsr-ipip", "{before}");
        assert_eq!(before["verdict"], "new-flow", "{before}");
        let name = lab
            .client
            .enter(|| udp_request(client, vip).expect("an answer from the VIP"));
        assert_eq!(backend_named(&name), pick(&before), "{before}");
        seen.insert(name);
        let after = explain(&instance, client, vip, "udp");
        assert_eq!(after["tracked"]["state"], "udp", "{after}");
        assert_eq!(tracked_backend(&after), Some(pick(&before)), "{after}");
        assert_eq!(after["verdict"], "forward-tracked", "{after}");
        let why = after["explanation"].as_str().unwrap_or_default();
        assert!(why.contains("dsr-ipip"), "{why}");
    }
    assert_eq!(seen.len(), 2, "six flows reach both backends: {seen:?}");
    instance.down();
}

/// dsr-gue: `lb explain` shows a flow's hop list, and the datapath and the backends follow
/// it. With one backend a flow has one hop. After a second backend joins, a new UDP flow
/// whose slot moved lists the joiner then the first backend: the joiner does not know the
/// flow and hands it on (through the router: the backends do not forward), and the first
/// backend, the last hop, answers it.
#[test]
fn a_dsr_gue_flow_is_explained_with_its_hop_list_and_follows_it() {
    lb_tests::require_root!();
    let lab = DsrLab::new("lbxg", Wiring::Routed, 2);
    let instance = Instance::new();
    let _daemon = lb_tests::process::Daemon::start(instance.run(
        &lab.lb,
        std::slice::from_ref(&lab.lb_iface),
        &[],
    ));
    let vip = SocketAddr::new(IpAddr::from(dsr::VIP_V4), UDP_PORT);
    let vip_arg = vip.to_string();
    instance.ok(&[
        "vip", "add", &vip_arg, "--proto", "udp", "--mode", "dsr-gue",
    ]);
    let addr = |i: usize| SocketAddr::new(lab.backends[i].v4.into(), UDP_PORT);
    instance.ok(&[
        "backend",
        "add",
        &vip_arg,
        &addr(0).to_string(),
        "--proto",
        "udp",
    ]);
    let backends_v4 = "198.18.0.0/15".to_owned();
    let _decap: Vec<DecapPaths> = lab
        .backends
        .iter()
        .map(|backend| {
            let decap = DecapPaths::new(&backend.ns);
            decap.ok(&[
                "attach",
                "--iface",
                &backend.dev,
                "--vip",
                &vip.ip().to_string(),
                "--allow-source",
                &backends_v4,
            ]);
            decap
        })
        .collect();
    let _servers = Servers::start_on_vips(&lab.backends, &[vip.ip()]);
    let client = |port: u16| SocketAddr::new(IpAddr::from(dsr::CLIENT_V4), port);
    let hops = |answer: &Value| -> Vec<SocketAddr> {
        answer["hops"]
            .as_array()
            .map(|h| h.iter().filter_map(addr_of).collect())
            .unwrap_or_default()
    };
    let one = explain(&instance, client(47_000), vip, "udp");
    assert_eq!(hops(&one), [addr(0)], "one backend, one hop: {one}");
    instance.ok(&[
        "backend",
        "add",
        &vip_arg,
        &addr(1).to_string(),
        "--proto",
        "udp",
    ]);
    let moved = (47_001..47_101)
        .find(|&port| hops(&explain(&instance, client(port), vip, "udp")) == [addr(1), addr(0)])
        .expect("a flow among 100 whose slot moved to the joiner");
    let answer = explain(&instance, client(moved), vip, "udp");
    let why = answer["explanation"].as_str().unwrap_or_default();
    assert!(why.contains("hop list"), "{why}");
    let name = lab
        .client
        .enter(|| udp_request(client(moved), vip).expect("an answer from the VIP"));
    assert_eq!(
        name, lab.backends[0].name,
        "the joiner hands the new flow on; the last hop answers it"
    );
    instance.down();
}
