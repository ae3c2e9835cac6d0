//! Health checks, metrics and live stats, against the real binary and real traffic in
//! namespaces. Needs root.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    client::{http_get, udp_request_from_new_port},
    metrics::{self, sample},
    process::{Daemon, FAST_CHECK, FAST_CHECK_FALL, Instance, lb_binary},
    servers::{HTTP_PORT, Servers, UDP_PORT},
    topology::Lab,
};

fn endpoint(lab: &Lab, n: usize, port: u16) -> String {
    SocketAddr::new(lab.backends[n].v4.into(), port).to_string()
}

#[test]
fn a_failing_backend_leaves_within_fall_checks_and_returns_after_rise() {
    lb_tests::require_root!();
    let lab = Lab::new("lbt", 3);
    let instance = Instance::new();
    let daemon = Daemon::start(instance.run(&lab.lb, &lab.lb_ifaces, &["--log-datapath"]));
    let mut servers: Vec<Option<Servers>> = lab
        .backends
        .iter()
        .map(|b| Some(Servers::start(std::slice::from_ref(b))))
        .collect();
    let vip = SocketAddr::new(lab.vip(false), 80);
    let vip_arg = vip.to_string();
    instance.ok(&[
        &["vip", "add", &vip_arg, "--check", "http:/"][..],
        &FAST_CHECK,
    ]
    .concat());
    for n in 0..3 {
        instance.ok(&["backend", "add", &vip_arg, &endpoint(&lab, n, HTTP_PORT)]);
    }
    let first = endpoint(&lab, 0, HTTP_PORT);
    instance.wait_for_health(&first, "up", Duration::from_secs(3));

    // Stop backend-1's servers; keep sending new connections meanwhile.
    servers[0] = None;
    let stopped = Instant::now();
    let limit = FAST_CHECK_FALL;
    let (mut sent, mut failed) = (0, 0);
    let took = lb_tests::eventually(
        limit + Duration::from_millis(500),
        "backend-1 marked down",
        || {
            let (health, entry) = instance.backend_health(&first);
            if health == "down" {
                assert!(
                    entry["last_check_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("connect")),
                    "{entry}"
                );
                return Ok(stopped.elapsed());
            }
            sent += 1;
            if lab.client.enter(|| http_get(vip)).is_err() {
                failed += 1;
            }
            Err(entry)
        },
    );
    eprintln!(
        "backend-1 marked down {took:?} after its server stopped (bound {limit:?}); \
         {failed} of {sent} new connections failed meanwhile"
    );
    assert!(took <= limit + Duration::from_millis(250), "took {took:?}");
    let answers: Vec<String> = lab.client.enter(|| {
        (0..200)
            .map(|_| http_get(vip).expect("only healthy backends answer"))
            .collect()
    });
    assert!(
        answers.iter().all(|a| a != "backend-1"),
        "no new flow to a down backend"
    );

    servers[0] = Some(Servers::start(&lab.backends[..1]));
    let back = instance.wait_for_health(&first, "up", Duration::from_secs(3));
    eprintln!("backend-1 back up {back:?} after its server returned");
    let answers: Vec<String> = lab
        .client
        .enter(|| (0..300).map(|_| http_get(vip).expect("request")).collect());
    assert!(
        answers.iter().any(|a| a == "backend-1"),
        "it takes flows again"
    );
    let (_, entry) = instance.backend_health(&first);
    let history: Vec<&str> = entry["health_history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|t| t["to"].as_str())
        .collect();
    assert_eq!(history, ["down", "up"], "{entry}");
    assert!(
        daemon.stderr().contains("new flow from port"),
        "--log-datapath shows the datapath's log"
    );
    instance.down();
}

/// A UDP VIP on port 53 with every backend's UDP server at `weight`.
fn udp_vip(lab: &Lab, instance: &Instance, weight: &str) -> SocketAddr {
    let vip = SocketAddr::new(lab.vip(false), 53);
    let vip_arg = vip.to_string();
    instance.ok(&["vip", "add", &vip_arg, "--proto", "udp"]);
    for n in 0..lab.backends.len() {
        let backend = endpoint(lab, n, UDP_PORT);
        instance.ok(&[
            "backend", "add", &vip_arg, &backend, "--proto", "udp", "--weight", weight,
        ]);
    }
    vip
}

/// One scrape of http://<addr>/metrics from inside the lb namespace.
fn scrape(lab: &Lab, addr: SocketAddr) -> String {
    metrics::scrape(&lab.lb, addr)
}

#[test]
fn metrics_count_exactly_what_was_sent_and_survive_a_restart() {
    lb_tests::require_root!();
    const DATAGRAMS: usize = 400;
    let lab = Lab::new("lbt", 2);
    let instance = Instance::new();
    let metrics: SocketAddr = "127.0.0.1:9464".parse().expect("addr");
    let metrics_arg = metrics.to_string();
    // Sweeps every 0.2 s, so the conntrack census is fresh when scraped.
    let daemon = Daemon::start(instance.run(
        &lab.lb,
        &lab.lb_ifaces,
        &["--metrics", &metrics_arg, "--conntrack-sweep", "0.2"],
    ));
    let servers = Servers::start(&lab.backends);
    let vip = udp_vip(&lab, &instance, "7");
    // Each request from a fresh socket; a reused source port is the same flow again.
    let client = lab.client_addr(false);
    let ports: std::collections::HashSet<u16> = lab.client.enter(|| {
        (0..DATAGRAMS)
            .map(|_| udp_request_from_new_port(client, vip).expect("an answer through the VIP"))
            .collect()
    });
    let seen: HashMap<String, usize> = servers
        .take_seen()
        .into_iter()
        .map(|(name, peers)| (name, peers.len()))
        .collect();

    // The conntrack figures are the last sweep's census (every 0.2 s here): wait for one
    // that ran after the last flow, so the exact counts below are all of the traffic's.
    let tracked = |text: &str| {
        sample(text, "lb_conntrack_entries", "map=\"CONNTRACK\"")
            + sample(text, "lb_conntrack_entries", "map=\"CT_UNPROVEN\"")
    };
    let text = lb_tests::eventually(
        Duration::from_secs(5),
        "a conntrack census counting every flow sent",
        || {
            let text = scrape(&lab, metrics);
            let entries = tracked(&text);
            if entries >= ports.len() as u64 {
                Ok(text)
            } else {
                Err(entries)
            }
        },
    );
    let vip_labels = format!("vip=\"{vip}\",proto=\"udp\"");
    assert_eq!(
        sample(&text, "lb_vip_packets_total", &vip_labels),
        DATAGRAMS as u64
    );
    assert_eq!(
        sample(&text, "lb_vip_new_flows_total", &vip_labels),
        ports.len() as u64,
        "one new flow per distinct client port (random ports collide now and then)"
    );
    for n in 0..2 {
        let labels = format!("{vip_labels},backend=\"{}\"", endpoint(&lab, n, UDP_PORT));
        let got = sample(&text, "lb_backend_packets_total", &labels);
        assert_eq!(
            got,
            seen[&lab.backends[n].name] as u64,
            "backend-{} packets: metrics vs what its server received",
            n + 1
        );
        assert_eq!(sample(&text, "lb_backend_weight", &labels), 7);
        assert_eq!(sample(&text, "lb_backend_up", &labels), 1);
        assert_eq!(sample(&text, "lb_backend_draining", &labels), 0);
        assert_eq!(
            sample(&text, "lb_backend_closing_conns", &labels),
            0,
            "UDP flows never close"
        );
    }
    // The census that counted every flow counted each by its backend: UDP flows are active.
    let active: u64 = (0..2)
        .map(|n| {
            let labels = format!("{vip_labels},backend=\"{}\"", endpoint(&lab, n, UDP_PORT));
            sample(&text, "lb_backend_active_conns", &labels)
        })
        .sum();
    assert_eq!(
        active,
        ports.len() as u64,
        "lb_backend_active_conns over the backends"
    );
    assert_eq!(sample(&text, "lb_vip_backends", &vip_labels), 2);
    assert_eq!(sample(&text, "lb_vip_active_backends", &vip_labels), 2);
    assert!(
        text.lines().any(|line| line
            .strip_prefix("lb_conntrack_sweeps_total ")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 1)),
        "a sweep count: {text}"
    );
    assert!(sample(&text, "lb_reason_packets_total", "name=\"fwd_reply\"") >= DATAGRAMS as u64);
    // Proven or not (a datagram answered once is not proven until its client sends again).
    assert_eq!(
        tracked(&text),
        ports.len() as u64,
        "one entry per flow, none expired (udp: 120 s)"
    );
    assert_eq!(
        sample(&text, "lb_conntrack_events_total", "name=\"ct_created\""),
        ports.len() as u64,
        "one conntrack entry per new flow"
    );
    for map in ["CONNTRACK", "CT_UNPROVEN"] {
        assert_eq!(
            sample(
                &text,
                "lb_conntrack_evictions_total",
                &format!("map=\"{map}\"")
            ),
            0,
            "nothing evicted from {map}, far from full"
        );
    }
    assert_eq!(
        sample(&text, "lb_conntrack_capacity", "map=\"CONNTRACK\""),
        1 << 20
    );
    assert_eq!(
        sample(
            &text,
            "lb_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
        ),
        1
    );

    // The address is taken: a second daemon says so and changes nothing.
    let other = Instance::new();
    let output = other
        .run(&lab.lb, &lab.lb_ifaces, &["--metrics", &metrics_arg])
        .output()
        .expect("run lb");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("cannot serve metrics on 127.0.0.1:9464") && stderr.contains("in use"),
        "{stderr}"
    );

    // Counters live in pinned maps: a restart does not reset them.
    let (status, _) = daemon.terminate();
    assert!(status.success());
    let _restarted =
        Daemon::start(instance.run(&lab.lb, &lab.lb_ifaces, &["--metrics", &metrics_arg]));
    let after = scrape(&lab, metrics);
    assert_eq!(
        sample(&after, "lb_vip_packets_total", &vip_labels),
        DATAGRAMS as u64,
        "counters carried over the restart"
    );
    // The restarted daemon's first sweep (before serving) finds every tracked flow, and
    // does not take the previous run's flows for evictions.
    assert_eq!(
        sample(&after, "lb_conntrack_entries", "map=\"CONNTRACK\"")
            + sample(&after, "lb_conntrack_entries", "map=\"CT_UNPROVEN\""),
        ports.len() as u64
    );
    for map in ["CONNTRACK", "CT_UNPROVEN"] {
        assert_eq!(
            sample(
                &after,
                "lb_conntrack_evictions_total",
                &format!("map=\"{map}\"")
            ),
            0,
            "{map}"
        );
    }
    instance.down();
}

#[test]
fn stats_watch_on_a_terminal_shows_the_rate_sent() {
    lb_tests::require_root!();
    const RATE: f64 = 200.0;
    let lab = Lab::new("lbt", 2);
    let instance = Instance::new();
    let _daemon = Daemon::start(instance.run(&lab.lb, &lab.lb_ifaces, &[]));
    let _servers = Servers::start(&lab.backends);
    let vip = udp_vip(&lab, &instance, "100");
    let vip_arg = vip.to_string();
    // A paced sender: one datagram every 1/RATE s, on schedule, for 6 s.
    let sender = lab.client.spawn(move || {
        let socket = UdpSocket::bind("198.18.0.1:0").expect("bind");
        let started = Instant::now();
        let mut sent = 0u32;
        while started.elapsed() < Duration::from_secs(6) {
            let due = started + Duration::from_secs_f64(f64::from(sent) / RATE);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            socket.send_to(b"tick", vip).expect("send");
            sent += 1;
        }
        sent
    });
    // The watch starts once the sender is on schedule: a tenth of a second of its traffic
    // has reached the VIP.
    lb_tests::eventually(Duration::from_secs(5), "the paced traffic counted", || {
        let stats = instance.stats();
        let packets = stats["vips"]
            .as_array()
            .and_then(|vips| vips.iter().find(|v| v["vip"] == vip_arg.as_str()))
            .and_then(|v| v["packets"].as_u64())
            .unwrap_or(0);
        if packets >= (RATE / 10.0) as u64 {
            Ok(())
        } else {
            Err(stats["vips"].clone())
        }
    });
    // `script` gives lb a pseudo-terminal, as an operator's shell would.
    let command = format!(
        "{} --api {} stats --watch --interval 1 --count 4",
        lb_binary().display(),
        instance.api.display()
    );
    let output = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .output()
        .expect("run script (util-linux)");
    let sent = sender.join().expect("sender");
    assert!(output.status.success(), "{output:?}");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(screen.contains("\x1b[2J"), "redrawn in place");
    let frames: Vec<f64> = screen
        .split("\x1b[2J")
        .filter_map(|frame| {
            let line = frame
                .lines()
                .find(|l| l.trim_start().starts_with(&vip_arg))?;
            line.split_whitespace().nth(2)?.parse().ok()
        })
        .collect();
    assert_eq!(frames.len(), 4, "{screen}");
    for rate in &frames {
        assert!(
            (rate - RATE).abs() <= RATE * 0.10,
            "shown {rate} pkt/s, sent {RATE}/s: {frames:?}"
        );
    }
    eprintln!("lb stats --watch showed {frames:?} pkt/s for {RATE}/s sent ({sent} datagrams)");
    instance.down();
}

#[test]
fn bad_check_definitions_are_refused_with_a_reason() {
    lb_tests::require_root!();
    let lab = Lab::new("lbt", 1);
    let instance = Instance::new();
    let _daemon = Daemon::start(instance.run(&lab.lb, &lab.lb_ifaces, &[]));
    instance.ok(&["vip", "add", "198.18.1.1:80"]);
    let before = instance.ok(&["vip", "list", "--json"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["vip", "add", "198.18.1.2:80", "--check", "icmp"],
            "unknown check",
        ),
        (
            &["vip", "add", "198.18.1.2:80", "--check", "http:health"],
            "must start with /",
        ),
        (
            &[
                "vip",
                "add",
                "198.18.1.2:80",
                "--check",
                "tcp",
                "--interval",
                "0",
            ],
            "interval",
        ),
        (
            &[
                "vip",
                "add",
                "198.18.1.2:80",
                "--check",
                "tcp",
                "--interval",
                "1",
                "--timeout",
                "5",
            ],
            "not be longer than the interval",
        ),
        (
            &[
                "vip",
                "add",
                "198.18.1.2:80",
                "--check",
                "tcp",
                "--fall",
                "0",
            ],
            "fall must be",
        ),
        (
            &[
                "vip",
                "add",
                "198.18.1.2:80",
                "--check",
                "http:/",
                "--expect",
                "ok",
            ],
            "not a status",
        ),
        (
            &["vip", "add", "198.18.1.2:80", "--interval", "1"],
            "--check",
        ),
        (
            &["vip", "set-check", "198.18.1.9:80", "--check", "tcp"],
            "no VIP",
        ),
        (&["vip", "set-check", "198.18.1.1:80"], "--check"),
    ];
    for (args, reason) in cases {
        let stderr = instance.fails(args);
        assert!(stderr.contains(reason), "lb {}: {stderr}", args.join(" "));
        assert_eq!(
            instance.ok(&["vip", "list", "--json"]),
            before,
            "lb {} changed something",
            args.join(" ")
        );
    }
    instance.ok(&[
        "vip",
        "set-check",
        "198.18.1.1:80",
        "--check",
        "udp:ping",
        "--expect",
        "pong",
    ]);
    let listed = instance.ok(&["vip", "list", "--json"]);
    assert!(listed.contains("udp:ping"), "{listed}");
    instance.ok(&["vip", "set-check", "198.18.1.1:80", "--no-check"]);
    assert_eq!(instance.ok(&["vip", "list", "--json"]), before);
    instance.down();
}
