//! The conntrack table as operators see it: expired flows swept away, tracked connections
//! counted per backend, flows listed and flushed, and `lb run` refusing settings under
//! which it could not work. The real `lb` binary in namespaces; needs root.

use std::{
    collections::HashSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    client::{WhoConnection, http_get, udp_request_from_new_port},
    eventually,
    netns::{Link, NetNs},
    process::{Daemon, Instance},
    servers::{HTTP_PORT, Servers, UDP_PORT, WHO_PORT},
    topology::Lab,
};
use serde_json::Value;

/// Longest any traffic loop here may run.
const BUDGET: Duration = Duration::from_secs(300);

fn endpoint(lab: &Lab, n: usize, port: u16) -> String {
    SocketAddr::new(lab.backends[n].v4.into(), port).to_string()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn stats(instance: &Instance) -> Value {
    instance.stats()
}

fn counter(stats: &Value, name: &str) -> u64 {
    lb_tests::process::stat_packets(stats, name)
}

/// `lb conntrack list <args> --json`: (flows shown, flows matched).
fn flows(instance: &Instance, args: &[&str]) -> (Vec<Value>, u64) {
    let mut full = vec!["conntrack", "list", "--json"];
    full.extend_from_slice(args);
    let list = json(&instance.ok(&full));
    let shown = list["flows"].as_array().cloned().unwrap_or_default();
    (shown, list["matched"].as_u64().unwrap_or(u64::MAX))
}

fn backend_entry(instance: &Instance, vip: &str, backend: &str) -> Value {
    let list = json(&instance.ok(&["backend", "list", vip, "--json"]));
    list.as_array()
        .and_then(|all| all.iter().find(|b| b["backend"] == backend).cloned())
        .unwrap_or_else(|| panic!("{backend} not listed: {list}"))
}

#[test]
fn ten_thousand_short_connections_are_swept_from_the_table() {
    lb_tests::require_root!();
    const CONNECTIONS: usize = 10_000;
    // Closing flows expire after 4 s at most; one sweep period more, and margin.
    const EMPTY_WITHIN: Duration = Duration::from_secs(4 + 1 + 4);
    let lab = Lab::new("lbct", 2);
    let instance = Instance::new();
    let _daemon = instance.start(
        &lab,
        &[
            "--timeout",
            "tcp_closed=2",
            "--timeout",
            "tcp_closing=4",
            "--conntrack-sweep",
            "1",
        ],
    );
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), 80);
    let vip_arg = vip.to_string();
    instance.ok(&["vip", "add", &vip_arg]);
    for n in 0..2 {
        instance.ok(&["backend", "add", &vip_arg, &endpoint(&lab, n, HTTP_PORT)]);
    }

    let started = Instant::now();
    let failures: Vec<String> = lab.client.enter(|| {
        let mut failures = Vec::new();
        for _ in 0..CONNECTIONS {
            assert!(
                started.elapsed() < BUDGET,
                "{CONNECTIONS} connections took over {BUDGET:?}"
            );
            if let Err(error) = http_get(vip) {
                failures.push(error);
            }
        }
        failures
    });
    let took = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} connections failed, first: {:?}",
        failures.len(),
        failures.first()
    );

    let before = stats(&instance)["conntrack"]["entries"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        before > 0,
        "the last connections are still tracked right after the loop"
    );
    let emptied = Instant::now();
    let after = eventually(EMPTY_WITHIN, "an empty conntrack table", || {
        let now = stats(&instance);
        let entries = now["conntrack"]["entries"].as_u64().unwrap_or(u64::MAX);
        if entries == 0 {
            Ok(now)
        } else {
            Err(now["conntrack"].to_string())
        }
    });
    let created = counter(&after, "ct_created");
    let replaced = counter(&after, "ct_replaced");
    let deleted = after["conntrack"]["deleted"].as_u64().unwrap_or(0);
    let evicted = after["conntrack"]["evicted"].as_u64().unwrap_or(u64::MAX);
    eprintln!(
        "{CONNECTIONS} connections in {took:?}; {before} entries right after, 0 after {:?}; \
         created {created}, replaced {replaced}, swept {deleted}, evicted {evicted}",
        emptied.elapsed()
    );
    assert!(
        created + replaced >= CONNECTIONS as u64,
        "every connection's SYN made or replaced an entry"
    );
    assert_eq!(evicted, 0, "a 1 Mi-entry table never evicts 10,000 flows");
    assert_eq!(
        deleted, created,
        "every entry created was deleted by a sweep: nothing else removes them"
    );
}

#[test]
fn a_drained_backend_counts_its_connections_until_they_close() {
    lb_tests::require_root!();
    const HELD: usize = 24;
    let lab = Lab::new("lbct", 2);
    let instance = Instance::new();
    let _daemon = instance.start(
        &lab,
        &["--conntrack-sweep", "0.5", "--timeout", "tcp_closed=60"],
    );
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), WHO_PORT);
    let vip_arg = vip.to_string();
    instance.ok(&["vip", "add", &vip_arg]);
    for n in 0..2 {
        instance.ok(&["backend", "add", &vip_arg, &endpoint(&lab, n, WHO_PORT)]);
    }
    let (connections, names): (Vec<WhoConnection>, Vec<String>) = lab.client.enter(|| {
        (0..HELD)
            .map(|_| {
                let mut c = WhoConnection::open(vip).expect("connect through the VIP");
                let name = c.ask().expect("an answer");
                (c, name)
            })
            .unzip()
    });
    let on_first = names.iter().filter(|n| *n == "backend-1").count() as u64;
    assert!(
        on_first > 0,
        "backend-1 holds some of {HELD} connections: {names:?}"
    );
    let drained = endpoint(&lab, 0, WHO_PORT);
    instance.ok(&["backend", "drain", &vip_arg, &drained]);

    let counted = eventually(Duration::from_secs(5), "backend-1's active count", || {
        let entry = backend_entry(&instance, &vip_arg, &drained);
        let active = entry["active_conns"].as_u64().unwrap_or(0);
        if active == on_first {
            Ok(entry)
        } else {
            Err(entry.to_string())
        }
    });
    assert_eq!(counted["state"], "draining");
    assert_eq!(counted["closing_conns"], 0);
    let table = instance.ok(&["backend", "list", &vip_arg]);
    assert!(
        table.contains("ACTIVE") && table.contains("CLOSING"),
        "{table}"
    );

    drop(connections);
    let closed_in = Instant::now();
    let after = eventually(
        Duration::from_secs(5),
        "backend-1's active count at 0",
        || {
            let entry = backend_entry(&instance, &vip_arg, &drained);
            let active = entry["active_conns"].as_u64().unwrap_or(u64::MAX);
            if active == 0 {
                Ok(entry)
            } else {
                Err(entry.to_string())
            }
        },
    );
    eprintln!(
        "drained backend: {on_first} active while held, 0 active {:?} after close",
        closed_in.elapsed()
    );
    assert_eq!(
        after["closing_conns"].as_u64(),
        Some(on_first),
        "closed flows count as closing until they expire"
    );
}

#[test]
fn flows_are_listed_and_flushed_by_vip_protocol_and_backend() {
    lb_tests::require_root!();
    const HELD: usize = 30;
    const DATAGRAMS: usize = 10;
    let lab = Lab::new("lbct", 2);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &["--conntrack-sweep", "0.5"]);
    let _servers = Servers::start(&lab.backends);
    let tcp_vip = SocketAddr::new(lab.vip(false), WHO_PORT);
    let udp_vip = SocketAddr::new(lab.vip(false), UDP_PORT);
    let (tcp_arg, udp_arg) = (tcp_vip.to_string(), udp_vip.to_string());
    instance.ok(&["vip", "add", &tcp_arg]);
    instance.ok(&["vip", "add", &udp_arg, "--proto", "udp"]);
    for n in 0..2 {
        instance.ok(&["backend", "add", &tcp_arg, &endpoint(&lab, n, WHO_PORT)]);
    }
    instance.ok(&[
        "backend",
        "add",
        &udp_arg,
        &endpoint(&lab, 0, UDP_PORT),
        "--proto",
        "udp",
    ]);

    let (mut held, names): (Vec<WhoConnection>, Vec<String>) = lab.client.enter(|| {
        (0..HELD)
            .map(|_| {
                let mut c = WhoConnection::open(tcp_vip).expect("connect through the VIP");
                let name = c.ask().expect("an answer");
                (c, name)
            })
            .unzip()
    });
    let client = lab.client_addr(false);
    let udp_ports: HashSet<u16> = lab.client.enter(|| {
        (0..DATAGRAMS)
            .map(|_| udp_request_from_new_port(client, udp_vip).expect("an answer through the VIP"))
            .collect()
    });
    let udp_flows = udp_ports.len() as u64;
    let total = HELD as u64 + udp_flows;
    let b1 = endpoint(&lab, 0, WHO_PORT);
    let b2 = endpoint(&lab, 1, WHO_PORT);
    let on_b1 = names.iter().filter(|n| *n == "backend-1").count() as u64;

    let (all, matched) = flows(&instance, &[]);
    assert_eq!((all.len() as u64, matched), (total, total), "{all:?}");
    let (udp, matched) = flows(&instance, &["--proto", "udp"]);
    assert_eq!(matched, udp_flows);
    assert!(
        udp.iter().all(|f| f["state"] == "udp"
            && f["backend"] == endpoint(&lab, 0, UDP_PORT)
            && f["vip"] == udp_arg.as_str()
            && f["expires_in_secs"].as_u64().is_some_and(|s| s > 100)),
        "{udp:?}"
    );
    let (tcp, matched) = flows(&instance, &[&tcp_arg]);
    assert_eq!(matched, HELD as u64);
    assert!(tcp.iter().all(|f| f["state"] == "established"), "{tcp:?}");
    let (_, matched) = flows(&instance, &["--backend", &b1]);
    assert_eq!(matched, on_b1);
    let (limited, matched) = flows(&instance, &["--limit", "5"]);
    assert_eq!((limited.len(), matched), (5, total));
    // The table shows the flows the JSON listed (the first 5 the walk met: unproven ones
    // first, here UDP flows answered once), with their state.
    let table = instance.ok(&["conntrack", "list", "--limit", "5"]);
    let shown_state = limited[0]["state"].as_str().unwrap_or("no state");
    assert!(
        table.contains(&format!("{} more matched", total - 5)) && table.contains(shown_state),
        "{table}"
    );

    // Bad filters are refused and delete nothing.
    for (args, reason) in [
        (
            vec!["conntrack", "list", "198.18.1.9:7000"],
            "no VIP 198.18.1.9:7000",
        ),
        (
            vec!["conntrack", "flush", "198.18.1.9:7000"],
            "no VIP 198.18.1.9:7000",
        ),
        (
            vec!["conntrack", "flush", &tcp_arg, "--proto", "udp"],
            "no VIP",
        ),
        (
            vec!["conntrack", "flush", "--backend", "198.18.11.2:9999"],
            "no backend 198.18.11.2:9999",
        ),
        (
            vec!["conntrack", "flush", &udp_arg, "--backend", &b2],
            "no backend",
        ),
        (
            vec!["conntrack", "flush", "--backend", "198.18.11.2"],
            "is not ADDRESS:PORT",
        ),
        (vec!["conntrack", "list", "--limit", "0"], "0"),
    ] {
        let stderr = instance.fails(&args);
        assert!(stderr.contains(reason), "lb {}: {stderr}", args.join(" "));
        assert_eq!(
            flows(&instance, &[]).1,
            total,
            "lb {} deleted flows",
            args.join(" ")
        );
    }

    let ask_all = |held: &mut Vec<WhoConnection>| {
        lab.client.enter(|| {
            for (connection, name) in held.iter_mut().zip(&names) {
                let answer = connection.ask().expect("a held connection answers");
                assert_eq!(&answer, name, "a held connection keeps its backend");
            }
        });
    };
    let flushed = instance.ok(&["conntrack", "flush", "--backend", &b1]);
    assert!(
        flushed.contains(&format!("flushed {on_b1} tracked flows")),
        "{flushed}"
    );
    assert_eq!(flows(&instance, &[]).1, total - on_b1);
    assert_eq!(flows(&instance, &["--backend", &b1]).1, 0);
    assert_eq!(flows(&instance, &["--backend", &b2]).1, HELD as u64 - on_b1);
    assert_eq!(flows(&instance, &["--proto", "udp"]).1, udp_flows);
    let deleted = stats(&instance)["conntrack"]["deleted"].as_u64();
    assert_eq!(
        deleted,
        Some(on_b1),
        "flushes count as deleted by userspace"
    );
    // Flushed connections that go on are tracked anew at their next packet, at once: the
    // flush empties the flow cache too, which would otherwise carry them on untracked for
    // up to a second. Each held connection asks (its flow now in the cache), the VIP's
    // flows are flushed, and each asks again right away.
    ask_all(&mut held);
    instance.ok(&["conntrack", "flush", &tcp_arg]);
    ask_all(&mut held);
    assert_eq!(
        flows(&instance, &[&tcp_arg]).1,
        HELD as u64,
        "flushed connections tracked again at their next packet"
    );

    // A flow whose backend is gone says so.
    instance.ok(&["backend", "del", &tcp_arg, &b2]);
    let (tcp_flows, matched) = flows(&instance, &[&tcp_arg]);
    assert_eq!(matched, HELD as u64);
    let orphans = tcp_flows.iter().filter(|f| f["backend"].is_null()).count() as u64;
    assert_eq!(orphans, HELD as u64 - on_b1, "{tcp_flows:?}");
    let table = instance.ok(&["conntrack", "list", &tcp_arg]);
    assert!(orphans == 0 || table.contains("(gone)"), "{table}");
    eprintln!(
        "{total} flows listed; --backend {b1} flushed {on_b1}; {} left",
        total - on_b1
    );
}

#[test]
fn an_endpoint_cannot_serve_a_second_vip() {
    lb_tests::require_root!();
    let lab = Lab::new("lbct", 1);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    let backend = endpoint(&lab, 0, HTTP_PORT);
    instance.ok(&["vip", "add", "198.18.1.1:80"]);
    instance.ok(&["vip", "add", "198.18.1.2:80"]);
    instance.ok(&["backend", "add", "198.18.1.1:80", &backend]);
    let before = instance.ok(&["backend", "list", "--json"]);
    let stderr = instance.fails(&["backend", "add", "198.18.1.2:80", &backend]);
    assert!(
        stderr.contains("already serves VIP 198.18.1.1:80"),
        "{stderr}"
    );
    assert_eq!(instance.ok(&["backend", "list", "--json"]), before);
}

/// A client and an lb namespace joined by one veth, forwarding as given.
struct Pair {
    _client: NetNs,
    lb: NetNs,
    lb_if: String,
}

impl Pair {
    fn new(ipv4_forwarding: &str) -> Self {
        let client = NetNs::new("ctclient");
        let lb = NetNs::new("ctlb");
        let link = Link::veth(&client, "198.18.0.1/24", &lb, "198.18.0.2/24");
        lb.sysctl("net/ipv4/ip_forward", ipv4_forwarding);
        lb.sysctl("net/ipv6/conf/all/forwarding", "0");
        Self {
            _client: client,
            lb,
            lb_if: link.b,
        }
    }

    fn run(&self, instance: &Instance, extra: &[&str]) -> std::process::Output {
        instance
            .run(&self.lb, std::slice::from_ref(&self.lb_if), extra)
            .output()
            .expect("run lb")
    }
}

#[test]
fn forwarding_off_is_refused_before_anything_is_loaded() {
    lb_tests::require_root!();
    let pair = Pair::new("0");
    let instance = Instance::new();
    let output = pair.run(&instance, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "lb ran with forwarding off: {stderr}"
    );
    let sysctl = format!("sysctl -w net.ipv4.conf.{}.forwarding=1", pair.lb_if);
    assert!(
        stderr.contains(&sysctl) && stderr.contains("bpf_fib_lookup"),
        "{stderr}"
    );
    assert!(!pair.lb.has_xdp(), "nothing attached");
    assert!(!instance.pin_dir.exists(), "nothing pinned");

    // IPv4 on, IPv6 off: an IPv6 VIP in the config is refused the same way.
    let pair = Pair::new("1");
    let config = tempfile::Builder::new()
        .prefix("lbct-v6-")
        .suffix(".toml")
        .tempfile()
        .expect("create a config file");
    std::fs::write(config.path(), "[[vip]]\naddress = \"[fd00:1::1]:80\"\n").expect("write config");
    let config_arg = config.path().to_string_lossy().into_owned();
    let output = pair.run(&instance, &["--config", &config_arg]);
    drop(config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "lb ran with IPv6 forwarding off: {stderr}"
    );
    assert!(
        stderr.contains(&format!("net.ipv6.conf.{}.forwarding", pair.lb_if)),
        "{stderr}"
    );
    assert!(!pair.lb.has_xdp(), "nothing attached");

    // Running IPv4 only: adding an IPv6 VIP is refused and changes nothing.
    let _daemon = Daemon::start(instance.run(&pair.lb, std::slice::from_ref(&pair.lb_if), &[]));
    instance.ok(&["vip", "add", "198.18.1.1:80"]);
    let before = (
        instance.ok(&["vip", "list", "--json"]),
        std::fs::read(&instance.state).expect("state file"),
    );
    let stderr = instance.fails(&["vip", "add", "[fd00:1::1]:80"]);
    assert!(
        stderr.contains(&format!(
            "sysctl -w net.ipv6.conf.{}.forwarding=1",
            pair.lb_if
        )),
        "{stderr}"
    );
    let after = (
        instance.ok(&["vip", "list", "--json"]),
        std::fs::read(&instance.state).expect("state file"),
    );
    assert_eq!(after, before, "the refused VIP changed something");
    let status = json(&instance.ok(&["status", "--json"]));
    let timeouts: Vec<(String, u64)> = status["conntrack_timeouts"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|t| {
                    (
                        t["state"].as_str().unwrap_or_default().to_owned(),
                        t["secs"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        timeouts,
        [
            ("tcp_opening".to_owned(), 60),
            ("tcp_established".to_owned(), 10_800),
            ("tcp_closing".to_owned(), 120),
            ("tcp_closed".to_owned(), 10),
            ("udp".to_owned(), 120)
        ],
        "{status}"
    );
    assert_eq!(status["conntrack_sweep_secs"].as_f64(), Some(5.0));
    assert_eq!(status["conntrack_entries"].as_u64(), Some(0));
    let text = instance.ok(&["status"]);
    assert!(
        text.contains("tcp_established 10800 s") && text.contains("swept every 5 s"),
        "{text}"
    );
    instance.down();
}

#[test]
fn bad_timeouts_and_sweep_intervals_are_refused_with_a_reason() {
    lb_tests::require_root!();
    // An interface that does not exist: should a bad value slip through, lb still stops
    // before touching anything.
    let ns = NetNs::new("ctflags");
    let instance = Instance::new();
    let ifaces = ["no-such-if0".to_owned()];
    for (flag, value, reason) in [
        ("--timeout", "tcp_fin=5", "unknown state `tcp_fin`"),
        ("--timeout", "udp=0", "between 1 and 604800"),
        ("--timeout", "udp=soon", "not a whole number of seconds"),
        ("--timeout", "udp", "is not STATE=SECS"),
        ("--conntrack-sweep", "0", "between 0.1 and 3600"),
        ("--conntrack-sweep", "7200", "between 0.1 and 3600"),
        ("--conntrack-sweep", "often", "not a number of seconds"),
    ] {
        let output = instance
            .run(&ns, &ifaces, &[flag, value])
            .output()
            .expect("run lb");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value} accepted");
        assert!(
            stderr.contains(reason) && !stderr.contains("unknown interface"),
            "{flag} {value}: {stderr}"
        );
    }
}

/// The reply half of the unattached-egress case: the client's requests come in on an
/// attached link, but lb's route back to the client leaves through a second link lb is
/// not attached to. A reply must leave with the VIP as its source (rewritten in XDP, then
/// forwarded by the kernel), or the client's stack resets the connection.
#[test]
fn a_reply_routed_out_of_an_unattached_interface_leaves_from_the_vip() {
    lb_tests::require_root!();
    let lab = Lab::new("lbue", 1);
    let back = Link::veth(&lab.client, "198.18.9.1/24", &lab.lb, "198.18.9.2/24");
    lab.lb.ip(&[
        "route",
        "add",
        "198.18.0.1/32",
        "via",
        "198.18.9.1",
        "dev",
        &back.b,
    ]);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), HTTP_PORT);
    let vip_arg = vip.to_string();
    instance.ok(&["vip", "add", &vip_arg]);
    instance.ok(&["backend", "add", &vip_arg, &endpoint(&lab, 0, HTTP_PORT)]);
    let answers = lab
        .client
        .enter(|| (0..5).map(|_| http_get(vip)).collect::<Vec<_>>());
    for answer in &answers {
        assert!(
            answer.as_ref().is_ok_and(|a| a.contains("backend-1")),
            "every request answered through the VIP: {answers:?}"
        );
    }
    let passed = counter(&stats(&instance), "pass_egress_not_attached");
    assert!(
        passed >= 5,
        "the replies were rewritten and passed: {passed}"
    );
}

#[test]
fn a_route_through_an_interface_lb_is_not_attached_to_is_warned_once() {
    lb_tests::require_root!();
    let lab = Lab::new("lbct", 2);
    let instance = Instance::new();
    // Attached toward the client and backend-1 only: backend-2's link is not lb's.
    let attached = lab.lb_ifaces[..2].to_vec();
    let unattached = lab.lb_ifaces[2].clone();
    let daemon = Daemon::start(instance.run(&lab.lb, &attached, &[]));
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), 80);
    let vip_arg = vip.to_string();
    instance.ok(&["vip", "add", &vip_arg]);
    instance.ok(&["backend", "add", &vip_arg, &endpoint(&lab, 1, HTTP_PORT)]);
    // Passed to the kernel (rewritten), these leave through a link lb does not see: the
    // packets are what counts, not whether an answer comes back.
    lab.client.enter(|| {
        for _ in 0..3 {
            http_get(vip).unwrap_or_default();
        }
    });
    let needle = format!("leaves through {unattached}, which lb is not attached to");
    let warned = eventually(
        Duration::from_secs(5),
        "the unattached-egress warning",
        || {
            let stderr = daemon.stderr();
            if stderr.contains(&needle) {
                Ok(stderr)
            } else {
                Err(stderr)
            }
        },
    );
    assert!(
        warned.contains(&format!("attach lb to {unattached} too")),
        "{warned}"
    );
    let passed = counter(&stats(&instance), "pass_egress_not_attached");
    assert!(passed > 0, "the datapath counted what it passed");
    // More traffic, two more polls: still one warning.
    lab.client.enter(|| http_get(vip)).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(daemon.stderr().matches(&needle).count(), 1, "warned once");
    instance.down();
}
