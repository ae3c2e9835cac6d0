//! The multi-node scenarios of `tests/tests/cluster.rs`, shared with `cargo xtask bench`
//! (tests/benches/cluster.rs), which runs them again to report convergence times.
//!
//! Several lb nodes behind ECMP, through the real CLI and real BIRDs (`lb_lab::cluster`):
//! each node's `lb run --announce-table 4242` writes the VIP routes its BIRD announces to
//! a router that spreads flows over the nodes by layer-4 hash. Long-lived TCP connections
//! and UDP flows are opened once and asked again after every event; none may break or
//! change backend (each scenario panics if one does):
//! - [`dsr_events`]: spread over all nodes, `lb node drain` (withdrawn, still serving),
//!   resume, the loss of a node (link down, its daemon killed; the router learns it
//!   through BFD) whose connections continue on the survivors, and its return;
//! - [`nat_events`]: NAT, with the backends' replies spread over the nodes by their own
//!   ECMP route: every reply is translated by whichever node it reaches, none leaves with a
//!   backend's address (a counter on the router says so), and neither a drain nor the loss
//!   of a node (taken out of the backends' route too, as their routing daemon would)
//!   breaks a flow.

use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    loud,
    process::{Daemon, DecapPaths, Instance, STARTUP},
};
use lb_lab::{
    client::WhoConnection,
    cluster::{ANNOUNCE_TABLE, ClusterLab, Replies, VIP_V4, VIP_V6, client_addr},
    servers::{HTTP_PORT, Servers, UDP_PORT, WHO_PORT},
};

pub const NODES: usize = 3;
pub const BACKENDS: usize = 3;
pub const CONNECTIONS: usize = 300;
pub const FLOWS: usize = 300;
pub const SEED: &str = "c0ffee00d15ea5e5";
/// Announcing and withdrawing take a netlink notification and one BGP update; losing a
/// node takes BFD's 300 ms. Far less than this.
pub const CONVERGE: Duration = Duration::from_secs(15);
pub const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// New connections tried while the router still sends flows to a lost node: each gets
/// this long to connect (a SYN to a dead node is retransmitted after 1 s).
pub const PROBE_CONNECT: Duration = Duration::from_millis(900);

/// One lb node's daemon and CLI.
pub struct LbNode {
    pub instance: Instance,
    pub daemon: Option<Daemon>,
}

impl LbNode {
    pub fn vip_entry(&self, vip: SocketAddr, proto: &str) -> serde_json::Value {
        let list: serde_json::Value =
            serde_json::from_str(&self.instance.ok(&["vip", "list", "--json"])).expect("JSON");
        list.as_array()
            .expect("array")
            .iter()
            .find(|v| v["vip"] == vip.to_string() && v["proto"] == proto)
            .cloned()
            .unwrap_or_else(|| panic!("{vip}/{proto} not listed: {list}"))
    }

    pub fn new_flows(&self, vip: SocketAddr, proto: &str) -> u64 {
        self.vip_entry(vip, proto)["new_flows"]
            .as_u64()
            .unwrap_or_default()
    }

    pub fn vip_packets(&self, vip: SocketAddr, proto: &str) -> u64 {
        self.vip_entry(vip, proto)["packets"]
            .as_u64()
            .unwrap_or_default()
    }

    pub fn fingerprint(&self, vip: SocketAddr, proto: &str) -> String {
        self.vip_entry(vip, proto)["table_fingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn node_report(&self) -> serde_json::Value {
        let status: serde_json::Value =
            serde_json::from_str(&self.instance.ok(&["status", "--json"])).expect("JSON");
        status["node"].clone()
    }
}

/// The config every node starts from: the same VIPs, backends and cluster settings.
pub fn write_config(
    dir: &std::path::Path,
    mode: &str,
    vips: &[(SocketAddr, &str, u16)],
    backends: &[IpAddr],
) -> PathBuf {
    let mut text =
        format!("[cluster]\nhash_seed = \"{SEED}\"\nannounce_table = {ANNOUNCE_TABLE}\n\n");
    for (vip, proto, port) in vips {
        text.push_str(&format!(
            "[[vip]]\naddress = \"{vip}\"\nproto = \"{proto}\"\nmode = \"{mode}\"\nbackends = [\n"
        ));
        for backend in backends.iter().filter(|b| b.is_ipv4() == vip.is_ipv4()) {
            text.push_str(&format!(
                "  {{ address = \"{}\" }},\n",
                SocketAddr::new(*backend, *port)
            ));
        }
        text.push_str("]\n\n");
    }
    let path = dir.join(format!("cluster-{mode}.toml"));
    std::fs::write(&path, text).expect("write the config");
    path
}

/// Starts every node's daemon with `config` (in parallel: each takes seconds to load).
pub fn start_nodes(lab: &ClusterLab, config: &std::path::Path) -> Vec<LbNode> {
    let config = config.to_string_lossy().into_owned();
    let mut nodes: Vec<LbNode> = lab
        .nodes
        .iter()
        .map(|node| {
            let instance = Instance::new();
            let daemon = Daemon::spawn_notified(instance.run(
                &node.ns,
                std::slice::from_ref(&node.iface),
                &["--config", &config],
            ));
            LbNode {
                instance,
                daemon: Some(daemon),
            }
        })
        .collect();
    for node in &mut nodes {
        if let Some(daemon) = node.daemon.as_mut() {
            daemon.wait_ready(STARTUP);
        }
    }
    nodes
}

/// Long-lived flows opened once from the client, asked again after every event.
pub struct Flows {
    pub tcp: Vec<WhoConnection>,
    pub udp: Vec<UdpSocket>,
    /// The backend each answered first.
    pub tcp_backends: Vec<String>,
    pub udp_backends: Vec<String>,
    pub udp_ports: Vec<u16>,
    pub tcp_ports: Vec<u16>,
    /// What each [`Flows::check`] found, in order.
    pub checks: Vec<Checked>,
}

/// What one [`Flows::check`] found: how many of the connections and UDP flows broke or
/// moved to another backend (the check fails the scenario unless both are 0).
#[derive(Clone, Debug)]
pub struct Checked {
    /// The event the flows were asked again after.
    pub after: String,
    pub tcp_broken: usize,
    pub udp_broken: usize,
}

/// The backend that answered, or why none did.
pub type Answer = Result<String, String>;

pub fn ask_udp(socket: &UdpSocket) -> Answer {
    socket.send(b"who").map_err(|e| format!("send: {e}"))?;
    let mut buffer = [0u8; 256];
    let n = socket.recv(&mut buffer).map_err(|e| format!("recv: {e}"))?;
    Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

impl Flows {
    pub fn open(lab: &ClusterLab, who: SocketAddr, udp: SocketAddr) -> Self {
        let client = client_addr(who.ip());
        let (tcp, udp) = lab.client.enter(|| {
            let tcp: Vec<WhoConnection> = (0..CONNECTIONS)
                .map(|i| {
                    WhoConnection::open(who)
                        .unwrap_or_else(|e| panic!("connection {i} to {who}: {e}"))
                })
                .collect();
            let sockets: Vec<UdpSocket> = (0..FLOWS)
                .map(|_| {
                    let socket = UdpSocket::bind((client, 0)).expect("bind");
                    socket.connect(udp).expect("connect");
                    socket.set_read_timeout(Some(ASK_TIMEOUT)).expect("timeout");
                    socket
                })
                .collect();
            (tcp, sockets)
        });
        let mut flows = Self {
            tcp_ports: tcp.iter().map(WhoConnection::local_port).collect(),
            udp_ports: udp
                .iter()
                .map(|s| s.local_addr().expect("bound").port())
                .collect(),
            tcp,
            udp,
            tcp_backends: Vec::new(),
            udp_backends: Vec::new(),
            checks: Vec::new(),
        };
        let (tcp_backends, udp_backends) = flows.ask_all();
        flows.tcp_backends = tcp_backends
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("first ask: {e}")))
            .collect();
        flows.udp_backends = udp_backends
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("first UDP ask: {e}")))
            .collect();
        flows
    }

    pub fn ask_all(&mut self) -> (Vec<Answer>, Vec<Answer>) {
        let tcp = self.tcp.iter_mut().map(WhoConnection::ask).collect();
        let udp = self.udp.iter().map(ask_udp).collect();
        (tcp, udp)
    }

    /// Asks every flow again: each must answer, from the backend it had.
    pub fn check(&mut self, after: &str) {
        let (tcp, udp) = self.ask_all();
        let broken = |answers: &[Answer], first: &[String]| -> Vec<String> {
            answers
                .iter()
                .zip(first)
                .enumerate()
                .filter_map(|(i, (now, then))| match now {
                    Ok(backend) if backend == then => None,
                    Ok(backend) => Some(format!("#{i} moved {then} → {backend}")),
                    Err(e) => Some(format!("#{i} ({then}): {e}")),
                })
                .collect()
        };
        let tcp_broken = broken(&tcp, &self.tcp_backends);
        let udp_broken = broken(&udp, &self.udp_backends);
        loud(&format!(
            "cluster: after {after}: {} of {CONNECTIONS} TCP connections and {} of {FLOWS} UDP flows broken or moved",
            tcp_broken.len(),
            udp_broken.len()
        ));
        self.checks.push(Checked {
            after: after.to_owned(),
            tcp_broken: tcp_broken.len(),
            udp_broken: udp_broken.len(),
        });
        assert!(
            tcp_broken.is_empty() && udp_broken.is_empty(),
            "after {after}: TCP {tcp_broken:?}; UDP {udp_broken:?}"
        );
    }
}

/// Waits for `n` next hops to `vip`; how long it took from `since`.
pub fn converge(lab: &ClusterLab, vip: IpAddr, n: usize, since: Instant, what: &str) -> Duration {
    lab.wait_for_next_hops(vip, n, CONVERGE)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let took = since.elapsed();
    loud(&format!(
        "cluster: {what}: the router has {n} next hop(s) to {vip} after {:.0} ms",
        took.as_secs_f64() * 1000.0
    ));
    took
}

/// What README promises for a lost node: BFD takes it out of the route "in about 300 ms"
/// (100 ms × 3, docs/bird/lb-node.conf).
pub const BFD_DETECTION: Duration = lb_lab::cluster::BFD_DETECTION;
/// On top of [`BFD_DETECTION`]: the router's BIRD writing its kernel route, and this
/// test's polling of it (a few tens of ms each) on a loaded 2-CPU machine.
pub const BFD_MARGIN: Duration = Duration::from_millis(500);

/// A prefix no VIP has, put in a node's announce table for a moment to see a scan happen.
const SCAN_CANARY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 78, 254));

/// How long a node's BIRD takes at most to scan its announce table (every second,
/// docs/bird/lb-node.conf) and the router to install what that scan found, with a margin.
const SCAN_LIMIT: Duration = Duration::from_secs(5);

/// Waits until node `i`'s BIRD has scanned its announce table (table 4242) since this
/// call: a canary route written there now is learned and reaches the router. Whatever the
/// table held at that scan is then what the node's BIRD announces. The canary goes again
/// (and leaves the router) before this returns.
pub fn after_a_scan(lab: &ClusterLab, i: usize) {
    let node = &lab.nodes[i];
    let route = |op: &str| {
        let args = lb_lab::cluster::announce_route_args(op, SCAN_CANARY, &node.iface);
        node.ns
            .ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    route("add");
    lab.wait_for_next_hops(SCAN_CANARY, 1, SCAN_LIMIT)
        .unwrap_or_else(|e| panic!("node{i}'s BIRD did not scan its announce table: {e}"));
    assert!(
        announces(lab, i, SCAN_CANARY),
        "node{i}'s BIRD sent a canary it does not have"
    );
    route("del");
    lab.wait_for_next_hops(SCAN_CANARY, 0, SCAN_LIMIT)
        .unwrap_or_else(|e| panic!("node{i}'s canary route was not withdrawn: {e}"));
}

/// Whether node `i`'s BIRD holds a route to `vip` learned from its announce table (what
/// it exports to the router).
pub fn announces(lab: &ClusterLab, i: usize, vip: IpAddr) -> bool {
    let len = if vip.is_ipv4() { 32 } else { 128 };
    match lab.bird_cli(
        lb_lab::cluster::Bird::Node(i),
        &["show", "route", &format!("{vip}/{len}")],
    ) {
        Ok(shown) => shown.contains("[lb_vips"),
        // birdc exits non-zero for a route it does not have.
        Err(e) if e.contains("Network not found") => false,
        Err(e) => panic!("asking node{i}'s BIRD: {e}"),
    }
}

/// New flows spread over every node: each node's share of `flows` new flows.
pub fn spread(nodes: &[LbNode], vip: SocketAddr, proto: &str, before: &[u64]) -> Vec<u64> {
    nodes
        .iter()
        .zip(before)
        .map(|(node, b)| node.new_flows(vip, proto) - b)
        .collect()
}

/// What [`dsr_events`] measured (it panics when a flow breaks).
#[derive(Clone, Debug)]
pub struct DsrEvents {
    /// New TCP connections and UDP flows per node.
    pub tcp_spread: Vec<u64>,
    pub udp_spread: Vec<u64>,
    /// From `lb node resume` to the router's route with every node.
    pub announce: Duration,
    /// From `lb node drain` to the router's route without the node.
    pub withdraw: Duration,
    /// From the node's loss to the router's route without it (BFD).
    pub detection: Duration,
    /// New connections tried while the router still sent flows to the lost node, and how
    /// many failed to connect within [`PROBE_CONNECT`].
    pub attempts: usize,
    pub failed: usize,
    /// Connections and UDP flows the lost node carried (they continued on the survivors).
    pub lost_tcp: usize,
    pub lost_udp: usize,
    /// From the lost node's return (link, BIRD, then its daemon adopting its pins with
    /// `--drained`, then `lb node resume`) to the route with every node.
    pub back: Duration,
    /// What the flows' check after each event found.
    pub checks: Vec<Checked>,
}

/// The dsr-ipip scenario; `prefix` names its namespaces.
pub fn dsr_events(prefix: &str) -> DsrEvents {
    let mut lab = ClusterLab::new(prefix, NODES, BACKENDS, Replies::Direct);
    let vip = IpAddr::from(VIP_V4);
    let who = SocketAddr::new(vip, WHO_PORT);
    let udp = SocketAddr::new(vip, UDP_PORT);
    let http = SocketAddr::new(vip, HTTP_PORT);
    // Backends: the decap program and the VIP on lo, nothing else (`lb decap attach`).
    let decaps: Vec<DecapPaths> = lab
        .backends
        .iter()
        .map(|backend| {
            let decap = DecapPaths::new(&backend.ns);
            decap.ok(&[
                "attach",
                "--iface",
                &backend.dev,
                "--vip",
                &vip.to_string(),
                "--allow-source",
                "198.18.71.0/24",
            ]);
            decap
        })
        .collect();
    let _servers = Servers::start_on_vips(&lab.backends, &[vip]);
    let backends: Vec<IpAddr> = lab.backends.iter().map(|b| IpAddr::from(b.v4)).collect();
    let config = write_config(
        lab.dir(),
        "dsr-ipip",
        &[
            (who, "tcp", WHO_PORT),
            (udp, "udp", UDP_PORT),
            (http, "tcp", HTTP_PORT),
        ],
        &backends,
    );
    let started = Instant::now();
    let mut nodes = start_nodes(&lab, &config);
    converge(
        &lab,
        vip,
        NODES,
        started,
        "three daemons started and announced",
    );
    for node in &nodes {
        let report = node.node_report();
        assert_eq!(report["announced"], serde_json::json!([vip]), "{report}");
        assert_eq!(report["hash_seed"], "set", "{report}");
    }

    // The same config gives the same tables; another backend list another fingerprint.
    let prints: Vec<String> = nodes.iter().map(|n| n.fingerprint(who, "tcp")).collect();
    assert!(
        prints.iter().all(|p| *p == prints[0] && p.len() == 16),
        "{prints:?}"
    );
    let extra = SocketAddr::new("198.18.71.200".parse().expect("ip"), WHO_PORT).to_string();
    nodes[0]
        .instance
        .ok(&["backend", "add", &who.to_string(), &extra]);
    let differs = nodes[0].fingerprint(who, "tcp");
    assert_ne!(
        differs, prints[1],
        "another backend list, the same fingerprint"
    );
    nodes[0]
        .instance
        .ok(&["backend", "del", &who.to_string(), &extra]);
    assert_eq!(nodes[0].fingerprint(who, "tcp"), prints[1]);
    loud(&format!(
        "cluster: fingerprints {prints:?}; with one more backend on node0: {differs}"
    ));

    // 300 long-lived connections and 300 UDP flows, spread over all three nodes.
    let tcp_before: Vec<u64> = nodes.iter().map(|n| n.new_flows(who, "tcp")).collect();
    let udp_before: Vec<u64> = nodes.iter().map(|n| n.new_flows(udp, "udp")).collect();
    let mut flows = Flows::open(&lab, who, udp);
    let tcp_spread = spread(&nodes, who, "tcp", &tcp_before);
    let udp_spread = spread(&nodes, udp, "udp", &udp_before);
    loud(&format!(
        "cluster: {CONNECTIONS} connections per node {tcp_spread:?}, {FLOWS} UDP flows per node {udp_spread:?}"
    ));
    for share in tcp_spread.iter().chain(&udp_spread) {
        assert!(
            *share as usize > CONNECTIONS / 6,
            "uneven: TCP {tcp_spread:?}, UDP {udp_spread:?}"
        );
    }

    // Drain node0: withdrawn, serving what still arrives; nothing breaks.
    let drained_at = Instant::now();
    nodes[0].instance.ok(&["node", "drain"]);
    let withdraw = converge(&lab, vip, NODES - 1, drained_at, "node0 drained");
    let report = nodes[0].node_report();
    assert_eq!(report["drained"], true, "{report}");
    assert!(
        report["vips"].as_array().is_some_and(|v| v
            .iter()
            .all(|e| e["reason"] == "node-drained" && e["announced"] == false)),
        "{report}"
    );
    flows.check("node0's drain");
    let packets_then = nodes[0].vip_packets(who, "tcp") + nodes[0].vip_packets(http, "tcp");
    let new_before: Vec<u64> = nodes.iter().map(|n| n.new_flows(http, "tcp")).collect();
    lab.client.enter(|| {
        for i in 0..60 {
            lb_lab::client::http_get(http).unwrap_or_else(|e| panic!("request {i}: {e}"));
        }
    });
    let new_spread = spread(&nodes, http, "tcp", &new_before);
    flows.check("new connections during the drain");
    assert_eq!(
        nodes[0].vip_packets(who, "tcp") + nodes[0].vip_packets(http, "tcp"),
        packets_then,
        "the drained node still receives packets"
    );
    assert_eq!(
        new_spread[0], 0,
        "new connections reached the drained node: {new_spread:?}"
    );
    assert!(new_spread[1] > 0 && new_spread[2] > 0, "{new_spread:?}");
    loud(&format!(
        "cluster: 60 new connections during the drain per node {new_spread:?}"
    ));

    let resumed_at = Instant::now();
    nodes[0].instance.ok(&["node", "resume"]);
    let announce = converge(&lab, vip, NODES, resumed_at, "node0 resumed");
    flows.check("node0's return");

    // Lose node2: its link goes down and its daemon dies; BFD tells the router.
    let carried = |vip: SocketAddr, ports: &[u16]| -> usize {
        let list: serde_json::Value = serde_json::from_str(&nodes[2].instance.ok(&[
            "conntrack",
            "list",
            &vip.to_string(),
            "--limit",
            "100000",
            "--json",
        ]))
        .expect("JSON");
        let clients: Vec<u16> = list["flows"]
            .as_array()
            .expect("flows")
            .iter()
            .filter_map(|f| f["client"].as_str()?.parse::<SocketAddr>().ok())
            .map(|client| client.port())
            .collect();
        ports.iter().filter(|port| clients.contains(port)).count()
    };
    // What node2 carries now, not what it carried before the drain moved flows around:
    // its table flushed, every flow asked again (node2 tracks its share afresh, each a
    // mid-flow miss that Maglev sends to the same backend).
    nodes[2].instance.ok(&["conntrack", "flush"]);
    flows.check("flushing node2's flows");
    let lost_carried = carried(who, &flows.tcp_ports);
    let lost_carried_udp = carried(udp, &flows.udp_ports);
    assert!(
        lost_carried > 0 && lost_carried_udp > 0,
        "node2 carried {lost_carried} connections and {lost_carried_udp} UDP flows"
    );
    let lost_at = Instant::now();
    lab.lose_node(2);
    if let Some(daemon) = nodes[2].daemon.take() {
        daemon.kill_hard();
    }
    // New connections every 20 ms, each in a thread of its own, until the router has
    // dropped node2: those it still sent to node2 fail.
    let (attempts, failed, detection) = lab.client.enter(|| {
        std::thread::scope(|scope| {
            let mut probes = Vec::new();
            while lab.router_next_hops(vip).len() > NODES - 1 && lost_at.elapsed() < CONVERGE {
                probes.push(
                    scope.spawn(|| TcpStream::connect_timeout(&http, PROBE_CONNECT).is_err()),
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let detection = lost_at.elapsed();
            let attempts = probes.len();
            let failed = probes
                .into_iter()
                .map(|probe| probe.join().unwrap_or(true))
                .filter(|&failed| failed)
                .count();
            (attempts, failed, detection)
        })
    });
    lab.wait_for_next_hops(vip, NODES - 1, CONVERGE)
        .expect("the router drops the lost node");
    loud(&format!(
        "cluster: BFD took node2 off the router's route {:.0} ms after it was lost",
        detection.as_secs_f64() * 1000.0
    ));
    assert!(
        detection < BFD_DETECTION + BFD_MARGIN,
        "the router took {detection:?} to drop the lost node; BFD promises about {BFD_DETECTION:?} (README), with a margin of {BFD_MARGIN:?}"
    );
    loud(&format!(
        "cluster: while the router still sent flows to node2: {failed} of {attempts} new connections failed to connect within {PROBE_CONNECT:?}"
    ));
    flows.check("node2's loss");
    loud(&format!(
        "cluster: the {lost_carried} connections and {lost_carried_udp} UDP flows node2 carried continue on the survivors with their backends"
    ));

    // node2 returns: its link and its BIRD, not yet its daemon. Its link going down took
    // its announce route with it (a route through an interface that goes down is
    // deleted), and with it the backends' next hops that only a daemon resolves again: it
    // must stay out of the router's route until its daemon is back.
    let back_at = Instant::now();
    lab.restore_node(2);
    lab.wait_for_sessions(CONVERGE)
        .expect("node2's BGP sessions come back");
    // Not announced: node2's BIRD has scanned its announce table since, and found no VIP.
    after_a_scan(&lab, 2);
    assert!(
        !announces(&lab, 2, vip),
        "node2's BIRD learned the VIP without a daemon to resolve its next hops"
    );
    assert_eq!(
        lab.router_next_hops(vip).len(),
        NODES - 1,
        "node2 is announced again without a daemon to resolve its next hops"
    );
    flows.check("node2's link back without its daemon (not announced)");
    // Its daemon starts drained (`--drained`), so the node joins only once its tables
    // match the others' (same fingerprints), then `lb node resume`.
    let daemon = Daemon::start(nodes[2].instance.run(
        &lab.nodes[2].ns,
        std::slice::from_ref(&lab.nodes[2].iface),
        &["--config", &config.to_string_lossy(), "--drained"],
    ));
    nodes[2].daemon = Some(daemon);
    let report = nodes[2].node_report();
    assert_eq!(report["drained"], true, "--drained: {report}");
    assert_eq!(
        nodes[2].fingerprint(who, "tcp"),
        nodes[0].fingerprint(who, "tcp"),
        "the returning node's table differs"
    );
    assert_eq!(
        lab.router_next_hops(vip).len(),
        NODES - 1,
        "announced while drained"
    );
    nodes[2].instance.ok(&["node", "resume"]);
    let back = converge(
        &lab,
        vip,
        NODES,
        back_at,
        "node2 back (link, BIRD, daemon, resume)",
    );
    let report = nodes[2].node_report();
    assert_eq!(report["announced"], serde_json::json!([vip]), "{report}");
    flows.check("node2's daemon restarted (adopting its pins)");
    loud(&format!(
        "cluster: dsr-ipip summary: announce {:.0} ms, drain withdraw {:.0} ms, BFD loss {:.0} ms, return {:.0} ms; failed new connections during the loss {failed}/{attempts}; broken connections 0 at every event",
        announce.as_secs_f64() * 1000.0,
        withdraw.as_secs_f64() * 1000.0,
        detection.as_secs_f64() * 1000.0,
        back.as_secs_f64() * 1000.0
    ));

    // `lb down` withdraws before it detaches.
    let down = nodes[1].instance.down();
    assert!(down.contains(&format!("withdrew {vip}")), "{down}");
    converge(&lab, vip, NODES - 1, Instant::now(), "node1 down");
    flows.check("node1's `lb down`");

    // A daemon that stops (SIGTERM) leaves its datapath forwarding and its VIPs announced;
    // `lb down` without a daemon still withdraws them before it removes the pins.
    if let Some(daemon) = nodes[0].daemon.take() {
        let (status, _) = daemon.terminate();
        assert!(status.success(), "SIGTERM: {status}");
    }
    // Still announced: node0's BIRD has scanned its announce table since the daemon
    // stopped, and found the VIP there.
    after_a_scan(&lab, 0);
    assert!(
        announces(&lab, 0, vip),
        "node0's BIRD lost the VIP when its daemon stopped"
    );
    assert_eq!(
        lab.router_next_hops(vip).len(),
        NODES - 1,
        "a stopped daemon's VIPs must stay announced while its datapath forwards"
    );
    flows.check("node0's daemon stopped (its datapath forwards on)");
    // Without a daemon, `lb down` works on the node's own routes: run it in its namespace.
    let output = lab.nodes[0]
        .ns
        .command(crate::process::lb_binary())
        .arg("--api")
        .arg(&nodes[0].instance.api)
        .args(["down", "--pin-dir"])
        .arg(&nodes[0].instance.pin_dir)
        .output()
        .expect("run lb down");
    assert!(output.status.success(), "lb down: {output:?}");
    let down = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(down.contains(&format!("withdrew {vip}")), "{down}");
    converge(
        &lab,
        vip,
        NODES - 2,
        Instant::now(),
        "node0 down without a daemon",
    );
    flows.check("node0's `lb down` without a daemon");
    drop(decaps);
    DsrEvents {
        tcp_spread,
        udp_spread,
        announce,
        withdraw,
        detection,
        attempts,
        failed,
        lost_tcp: lost_carried,
        lost_udp: lost_carried_udp,
        back,
        checks: flows.checks,
    }
}

/// What [`nat_events`] measured (it panics when a flow breaks or a reply leaks).
#[derive(Clone, Debug)]
pub struct NatEvents {
    /// New TCP connections per node, and replies each node translated.
    pub requests: Vec<u64>,
    pub replies: Vec<u64>,
    /// From the node's loss to the router's route without it.
    pub detection: Duration,
    /// What the flows' check after each event found.
    pub checks: Vec<Checked>,
}

/// The NAT scenario; `prefix` names its namespaces.
pub fn nat_events(prefix: &str) -> NatEvents {
    let mut lab = ClusterLab::new(prefix, NODES, BACKENDS, Replies::ThroughNodes);
    let vip = IpAddr::from(VIP_V4);
    let vip6 = IpAddr::from(VIP_V6);
    let who = SocketAddr::new(vip, WHO_PORT);
    let udp = SocketAddr::new(vip, 53);
    let http6 = SocketAddr::new(vip6, 80);
    let _servers = Servers::start(&lab.backends);
    let backends: Vec<IpAddr> = lab
        .backends
        .iter()
        .flat_map(|b| [IpAddr::from(b.v4), IpAddr::from(b.v6)])
        .collect();
    let config = write_config(
        lab.dir(),
        "nat",
        &[
            (who, "tcp", WHO_PORT),
            (udp, "udp", UDP_PORT),
            (http6, "tcp", HTTP_PORT),
        ],
        &backends,
    );
    // A reply that left a node untranslated would be routed to the client with a
    // backend's address: count such packets where the router sends them to the client
    // (the bridged hops between backends and nodes also cross the router's hooks).
    let to_client = lab
        .router
        .ip(&["-br", "-4", "addr", "show", "to", "198.18.70.0/24"])
        .split_whitespace()
        .next()
        .and_then(|name| name.split('@').next())
        .expect("the router's client-side interface")
        .to_owned();
    let rules = format!(
        "table inet leak {{\n chain forward {{\n  type filter hook forward priority 0;\n  oifname \"{to_client}\" ip saddr 198.18.71.64/26 counter\n  oifname \"{to_client}\" ip6 saddr fd00:71::100/120 counter\n }}\n}}\n"
    );
    let mut nft = lab
        .router
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    {
        use std::io::Write as _;
        nft.stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("rules");
    }
    assert!(nft.wait().expect("nft").success(), "nft rules refused");

    let started = Instant::now();
    let nodes = start_nodes(&lab, &config);
    converge(&lab, vip, NODES, started, "three NAT daemons announced");
    converge(
        &lab,
        vip6,
        NODES,
        started,
        "three NAT daemons announced (IPv6)",
    );
    let replies_before: Vec<u64> = nodes
        .iter()
        .map(|n| crate::process::stat_packets(&n.instance.stats(), "fwd_reply"))
        .collect();
    let mut flows = Flows::open(&lab, who, udp);
    lab.client.enter(|| {
        for i in 0..60 {
            let answer =
                lb_lab::client::http_get(http6).unwrap_or_else(|e| panic!("IPv6 request {i}: {e}"));
            assert!(answer.starts_with("backend-"), "{answer}");
        }
    });
    let replies: Vec<u64> = nodes
        .iter()
        .zip(&replies_before)
        .map(|(n, b)| crate::process::stat_packets(&n.instance.stats(), "fwd_reply") - b)
        .collect();
    let requests = spread(&nodes, who, "tcp", &[0; NODES]);
    loud(&format!(
        "cluster: NAT: connections per node {requests:?}, replies translated per node {replies:?}"
    ));
    assert!(
        requests.iter().all(|r| *r > 0) && replies.iter().all(|r| *r > 0),
        "requests {requests:?} and replies {replies:?} must reach every node"
    );

    // A drain moves the requests of a third of the flows; the replies keep their spread.
    nodes[1].instance.ok(&["node", "drain"]);
    converge(&lab, vip, NODES - 1, Instant::now(), "NAT node1 drained");
    flows.check("a NAT node's drain");
    nodes[1].instance.ok(&["node", "resume"]);
    converge(&lab, vip, NODES, Instant::now(), "NAT node1 resumed");
    flows.check("a NAT node's return");

    // Lose node2: the router stops sending it requests (BFD), the backends stop sending it
    // replies (the lab takes it out of their route, as a routing daemon on the backends
    // would); every flow continues, its requests and replies on the survivors.
    let mut nodes = nodes;
    let lost_at = Instant::now();
    lab.lose_node(2);
    if let Some(daemon) = nodes[2].daemon.take() {
        daemon.kill_hard();
    }
    let detection = converge(&lab, vip, NODES - 1, lost_at, "NAT node2 lost");
    flows.check("a NAT node's loss");

    // The counter can see a leak: one datagram from a backend's port that is no VIP's
    // endpoint is forwarded by a node as it is, with the backend's address.
    lab.backends[0].ns.enter(|| {
        let socket = UdpSocket::bind((IpAddr::from(lab.backends[0].v4), 40_999)).expect("bind");
        socket
            .send_to(b"canary", (IpAddr::from(lb_lab::cluster::CLIENT_V4), 9))
            .expect("send the canary");
    });
    // Counted once the canary has crossed the router.
    let leak_counters = || {
        let listed = String::from_utf8_lossy(
            &lab.router
                .command("nft")
                .args(["list", "table", "inet", "leak"])
                .output()
                .expect("nft list")
                .stdout,
        )
        .into_owned();
        let leaked: Vec<u64> = listed
            .split("packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        (leaked, listed)
    };
    let (leaked, listed) = crate::eventually(Duration::from_secs(5), "the canary counted", || {
        let (leaked, listed) = leak_counters();
        if leaked.iter().sum::<u64>() > 0 {
            Ok((leaked, listed))
        } else {
            Err(listed)
        }
    });
    assert_eq!(
        leaked,
        [1, 0],
        "only the canary may reach the client with a backend's address: {listed}"
    );
    loud("cluster: NAT: packets with a backend's source toward the client: only the canary");
    NatEvents {
        requests,
        replies,
        detection,
        checks: flows.checks,
    }
}
