//! The multi-node lab itself (`lb_lab::cluster`), without lb: three nodes whose BIRD learns
//! the VIP routes lb writes (`<VIP> dev <IF> table 4242 proto 248`) and announces them,
//! a router that installs one ECMP route per VIP over the nodes, plain kernel forwarding
//! that spreads TCP connections over them by layer-4 hash, a withdrawn route that takes
//! one next hop away, a lost node (link down, BIRD killed) that BFD takes away well within
//! the BGP hold time, and a restored node that comes back. The times are printed.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_lab::cluster::{
    BFD_DETECTION, Bird, ClusterLab, HOLD_TIME, Replies, announce_route_args, next_hops, node_addr,
    vip,
};
use lb_tests::loud;

const NODES: usize = 3;
const BACKENDS: usize = 2;
const CONNECTIONS: usize = 60;
const PORT: u16 = 7100;
/// Announcing and withdrawing take BIRD's netlink notification (or its 1 s scan) and one
/// BGP update: far less than this.
const CONVERGE: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const VIPS: [bool; 2] = [false, true];

/// After `action`, waits for `n` next hops to both VIPs; the time from the action to the
/// later of the two.
fn time_to(
    lab: &mut ClusterLab,
    n: usize,
    what: &str,
    action: impl FnOnce(&mut ClusterLab),
) -> Duration {
    let started = Instant::now();
    action(lab);
    for v6 in VIPS {
        lab.wait_for_next_hops(vip(v6), n, CONVERGE)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let took = started.elapsed();
    loud(&format!(
        "cluster_lab: {what}: {n} next hop{} for {} and {} after {:.0} ms",
        if n == 1 { "" } else { "s" },
        vip(false),
        vip(true),
        took.as_secs_f64() * 1000.0
    ));
    took
}

fn up_nodes(lab: &ClusterLab, v6: bool) -> Vec<IpAddr> {
    (0..NODES)
        .filter(|&i| lab.is_up(i))
        .map(|i| node_addr(i, v6))
        .collect()
}

/// Every backend's default route (both families) has exactly the nodes that are up.
fn assert_backends_route_over_up_nodes(lab: &ClusterLab, why: &str) {
    for backend in &lab.backends {
        for v6 in VIPS {
            assert_eq!(
                sorted(next_hops(&backend.ns, "default", v6)),
                up_nodes(lab, v6),
                "{}: {why}",
                backend.name
            );
        }
    }
}

fn sorted(mut hops: Vec<IpAddr>) -> Vec<IpAddr> {
    hops.sort();
    hops
}

/// A TCP server on the VIP in every node that answers each connection with `node<i>`.
struct NodeServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl NodeServers {
    fn start(lab: &ClusterLab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, node) in lab.nodes.iter().enumerate() {
            for v6 in VIPS {
                let listener = node.ns.enter(|| {
                    TcpListener::bind((vip(v6), PORT)).expect("bind on the VIP in a node")
                });
                listener.set_nonblocking(true).expect("nonblocking");
                let stop = Arc::clone(&stop);
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((mut stream, _)) => {
                                // A client that left is its own test's failure, seen there.
                                stream
                                    .write_all(format!("node{i}").as_bytes())
                                    .unwrap_or_default();
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                }));
            }
        }
        Self { stop, threads }
    }
}

impl Drop for NodeServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            lb_tests::cleanup::join(thread, "joining a node's server thread");
        }
    }
}

/// `CONNECTIONS` connections from the client to the VIP (each from a new source port);
/// how many each node answered.
fn spread(lab: &ClusterLab, v6: bool) -> HashMap<String, usize> {
    let target = SocketAddr::new(vip(v6), PORT);
    lab.client.enter(|| {
        let mut answers = HashMap::new();
        for n in 0..CONNECTIONS {
            let mut stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("connection {n} to {target}: {e}"));
            stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut name = String::new();
            stream
                .read_to_string(&mut name)
                .unwrap_or_else(|e| panic!("connection {n} to {target}: read: {e}"));
            *answers.entry(name).or_default() += 1;
        }
        answers
    })
}

#[test]
fn cluster_lab() {
    lb_tests::require_root!();
    let started = Instant::now();
    let mut lab = ClusterLab::new("cluster", NODES, BACKENDS, Replies::ThroughNodes);
    loud(&format!(
        "cluster_lab: {NODES} nodes, {} BGP sessions established, in {:.1} s",
        2 * NODES,
        started.elapsed().as_secs_f64()
    ));
    assert_backends_route_over_up_nodes(&lab, "NAT replies go back over every node");
    for v6 in VIPS {
        assert!(
            lab.router_next_hops(vip(v6)).is_empty(),
            "nothing announced yet"
        );
    }

    time_to(&mut lab, NODES, "every node announces", |lab| {
        for node in &lab.nodes {
            for v6 in VIPS {
                let args = announce_route_args("add", vip(v6), &node.iface);
                node.ns
                    .ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
            }
        }
    });
    for v6 in VIPS {
        assert_eq!(sorted(lab.router_next_hops(vip(v6))), up_nodes(&lab, v6));
    }

    // Plain forwarding: each node holds the VIPs itself, only for this check.
    for node in &lab.nodes {
        node.ns
            .ip(&["addr", "add", &format!("{}/32", vip(false)), "dev", "lo"]);
        node.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/128", vip(true)),
            "dev",
            "lo",
            // Without it the address is tentative until the DAD work runs, even on lo,
            // and a bind in that moment fails with EADDRNOTAVAIL.
            "nodad",
        ]);
    }
    let servers = NodeServers::start(&lab);
    for v6 in VIPS {
        let answers = spread(&lab, v6);
        loud(&format!(
            "cluster_lab: {CONNECTIONS} connections to {} spread over the nodes: {answers:?}",
            vip(v6)
        ));
        assert_eq!(answers.values().sum::<usize>(), CONNECTIONS);
        assert!(
            answers.len() > 1,
            "{}: ECMP spreads connections over more than one node: {answers:?}",
            vip(v6)
        );
    }
    drop(servers);

    time_to(&mut lab, NODES - 1, "node0 withdraws", |lab| {
        for v6 in VIPS {
            let args = announce_route_args("del", vip(v6), &lab.nodes[0].iface);
            lab.nodes[0]
                .ns
                .ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
    });
    for v6 in VIPS {
        assert!(!lab.router_next_hops(vip(v6)).contains(&node_addr(0, v6)));
    }

    let lost = time_to(
        &mut lab,
        NODES - 2,
        "node1 lost (link down, BIRD killed)",
        |lab| {
            lab.lose_node(1);
        },
    );
    assert!(
        lost < HOLD_TIME,
        "BFD ({BFD_DETECTION:?}) takes a lost node away well before the hold time {HOLD_TIME:?}: {lost:?}"
    );
    for family in ["4", "6"] {
        let session = lab
            .bird_cli(
                Bird::Router,
                &["show", "protocols", "all", &format!("node1_v{family}")],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            session.contains("BFD session down"),
            "BFD brought node1's IPv{family} session down:\n{session}"
        );
    }
    assert!(!lab.bgp_established(1));
    assert_backends_route_over_up_nodes(&lab, "replies avoid the lost node");

    // The link going down took node1's routes (they go through it); lb's daemon puts them
    // back once the link is up, as this does.
    time_to(&mut lab, NODES - 1, "node1 restored", |lab| {
        lab.restore_node(1);
        let node = &lab.nodes[1];
        for v6 in VIPS {
            let args = announce_route_args("add", vip(v6), &node.iface);
            node.ns
                .ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
    });
    for v6 in VIPS {
        assert_eq!(
            sorted(lab.router_next_hops(vip(v6))),
            vec![node_addr(1, v6), node_addr(2, v6)]
        );
    }
    loud(&format!(
        "cluster_lab: done in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}
