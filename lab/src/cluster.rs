//! The scale-out lab: several lb nodes behind a router that spreads flows over them by
//! ECMP, each node announcing the VIPs it serves to the router over eBGP (BIRD 2), with
//! BFD to notice a lost node within a few hundred milliseconds.
//!
//! ```text
//! client 198.18.70.1 ── .254 router ── bridge "fabric" 198.18.71.0/24: router .254,
//!                                        node0 .1, node1 .2, ... (node i: .1+i),
//!                                        backend-1 .101, backend-2 .102, ...
//! ```
//! IPv6 follows the same plan in fd00:70::/64 and fd00:71::/64 (router ::fe, node i
//! ::1+i, backend j ::101+j). Every node's and backend's veth is a port of the router's
//! bridge, as on a switch: when a node goes away the router's interface stays up, and the
//! router must learn it from BFD (or, failing that, the BGP hold time).
//!
//! The router knows the VIPs ([`VIP_V4`], [`VIP_V6`]) only from BGP: one session per node
//! and family, router AS [`ROUTER_AS`], node i AS 65001 + i. A node announces what lb (or
//! a test) writes into its kernel table [`ANNOUNCE_TABLE`]: `<VIP>/32` (or `/128`)
//! through its fabric interface, protocol [`ANNOUNCE_PROTO`], see [`announce_route_args`]. The router
//! installs one multipath route per VIP with a next hop per announcing node and hashes
//! flows over them by layer 4 (`fib_multipath_hash_policy=1`).
//!
//! Each BIRD (one per node, one on the router) has its configuration, control socket, pid
//! file and log in a temporary directory of the lab; the node configuration is
//! `docs/bird/lb-node.conf` with its placeholders filled in. Every BIRD is killed, the
//! directory removed and the namespaces deleted when the lab is dropped, even on a panic.

use std::{
    fs::{self, File},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{
    netns::{Link, NetNs},
    topology::{Backend, add_v6, offload_off_and_napi_on},
};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 70, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x70, 0, 0, 0, 0, 0, 1);
/// The router's address on the fabric: BGP neighbor of every node, the backends' gateway
/// with [`Replies::Direct`].
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 71, 254);
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x71, 0, 0, 0, 0, 0, 0xfe);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 78, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, 1);

/// The kernel table a node's BIRD learns the VIPs to announce from (and never writes).
pub const ANNOUNCE_TABLE: u32 = 4242;
/// The route protocol number of the announce routes: an unassigned one. BIRD 2.0 learns
/// routes of any protocol but unspec (0, netlink's default), kernel (2) and bird (12).
pub const ANNOUNCE_PROTO: u8 = 248;
pub const ROUTER_AS: u32 = 65000;
/// Node i's AS is `FIRST_NODE_AS + i`.
pub const FIRST_NODE_AS: u32 = 65001;
/// How long BFD takes to declare a peer lost (100 ms interval, multiplier 3): what brings
/// a session down when a node disappears.
pub const BFD_DETECTION: Duration = Duration::from_millis(300);
/// The BGP hold time: the fallback when BFD does not run.
pub const HOLD_TIME: Duration = Duration::from_secs(3);

/// The node configuration, documented for deployments; the lab fills in its placeholders.
pub const NODE_CONF_TEMPLATE: &str = include_str!("../../docs/bird/lb-node.conf");

/// How long the sessions may take to come up when the lab starts.
const ESTABLISH_LIMIT: Duration = Duration::from_secs(15);
/// How long a BIRD may take to answer on its control socket after it starts.
const BIRD_START_LIMIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// A prefix no VIP has, put in a node's announce table for a moment to see a scan happen.
const SCAN_CANARY: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 78, 254));
/// How long a node's BIRD takes at most to scan its announce table (every second,
/// docs/bird/lb-node.conf) and the router to install what that scan found, with a margin.
const SCAN_LIMIT: Duration = Duration::from_secs(5);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// Where the backends send their replies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Replies {
    /// Default route via the router: direct server return.
    #[default]
    Direct,
    /// Default route multipath over every node (IPv4 and IPv6, layer-4 hash): NAT, whose
    /// replies must go back through an lb node, spread over the nodes by ECMP. Lost nodes
    /// leave these routes ([`ClusterLab::lose_node`]), restored ones come back.
    ThroughNodes,
}

/// One BIRD of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bird {
    Router,
    Node(usize),
}

impl Bird {
    fn name(self) -> String {
        match self {
            Self::Router => "router".to_owned(),
            Self::Node(i) => format!("node{i}"),
        }
    }
}

/// An lb node: one interface on the fabric, default routes via the router.
pub struct Node {
    pub ns: NetNs,
    /// Its interface on the fabric (where lb attaches).
    pub iface: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub asn: u32,
}

/// A running BIRD, killed (SIGKILL) and reaped when dropped.
struct BirdProcess {
    child: Child,
}

impl Drop for BirdProcess {
    fn drop(&mut self) {
        crate::cleanup::kill(&mut self.child, "bird");
    }
}

pub struct ClusterLab {
    pub client: NetNs,
    pub router: NetNs,
    pub nodes: Vec<Node>,
    pub backends: Vec<Backend>,
    replies: Replies,
    /// Configurations, sockets, pid files and logs of every BIRD.
    dir: PathBuf,
    router_bird: Option<BirdProcess>,
    /// One per node; `None` before it starts and once the node is lost.
    node_birds: Vec<Option<BirdProcess>>,
    /// Which nodes [`ClusterLab::lose_node`] took away.
    lost: Vec<bool>,
}

/// The arguments of `ip` that add (`"add"`) or delete (`"del"`) the route that makes a
/// node announce `vip`: `[-6] route <op> <vip>/<32|128> dev <dev> scope link table 4242
/// proto 248`. This is the route form lb writes (through the interface it serves on, so
/// that the kernel deletes it when that link goes down).
pub fn announce_route_args(op: &str, vip: IpAddr, dev: &str) -> Vec<String> {
    let (family, len) = if vip.is_ipv4() {
        ("-4", 32)
    } else {
        ("-6", 128)
    };
    [
        family,
        "route",
        op,
        &format!("{vip}/{len}"),
        "dev",
        dev,
        "scope",
        "link",
        "table",
        &ANNOUNCE_TABLE.to_string(),
        "proto",
        &ANNOUNCE_PROTO.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Node i's address on the fabric.
pub fn node_addr(i: usize, v6: bool) -> IpAddr {
    if v6 {
        node_v6(i).into()
    } else {
        node_v4(i).into()
    }
}

fn node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 71, u8::try_from(1 + i).expect("at most 99 nodes"))
}

fn node_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x71,
        0,
        0,
        0,
        0,
        0,
        u16::try_from(1 + i).expect("a small index"),
    )
}

/// The client's address in the family of `vip`.
pub fn client_addr(vip: IpAddr) -> IpAddr {
    if vip.is_ipv4() {
        CLIENT_V4.into()
    } else {
        CLIENT_V6.into()
    }
}

/// The lab's VIP of one family.
pub fn vip(v6: bool) -> IpAddr {
    if v6 { VIP_V6.into() } else { VIP_V4.into() }
}

/// `docs/bird/lb-node.conf` for node i of this lab.
fn node_config(i: usize) -> String {
    let replacements = [
        ("<ROUTER_ID>", node_v4(i).to_string()),
        ("<LOCAL_AS>", (FIRST_NODE_AS + i as u32).to_string()),
        ("<ROUTER_V4>", ROUTER_V4.to_string()),
        ("<ROUTER_V6>", ROUTER_V6.to_string()),
        ("<ROUTER_AS>", ROUTER_AS.to_string()),
    ];
    let mut text = NODE_CONF_TEMPLATE.to_owned();
    for (placeholder, value) in replacements {
        assert!(
            text.contains(placeholder),
            "docs/bird/lb-node.conf lost its {placeholder}"
        );
        text = text.replace(placeholder, &value);
    }
    text
}

/// The router's BIRD: a session per node and family, every route learned installed in
/// the main table, equal ones merged into one multipath route.
fn router_config(nodes: usize) -> String {
    let mut text = format!(
        r#"# The lab's router: learns the VIPs from every node, installs one ECMP route each.
router id {ROUTER_V4};

protocol device {{
	scan time 10;
}}

# `merge paths`: without it BIRD installs only the best route, one next hop.
protocol kernel {{
	merge paths yes;
	ipv4 {{ import none; export all; }};
}}

protocol kernel {{
	merge paths yes;
	ipv6 {{ import none; export all; }};
}}

# BFD detects a lost node (300 ms); the BGP hold time (3 s) is only the fallback.
protocol bfd {{
	interface "*" {{
		interval 100 ms;
		multiplier 3;
	}};
}}

template bgp lb_node {{
	local as {ROUTER_AS};
	hold time 3;
	keepalive time 1;
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 5;
	graceful restart off;
	bfd on;
}}
"#
    );
    for i in 0..nodes {
        let asn = FIRST_NODE_AS + i as u32;
        for (family, v6) in [("4", false), ("6", true)] {
            text.push_str(&format!(
                "\nprotocol bgp node{i}_v{family} from lb_node {{\n\tneighbor {} as {asn};\n\tipv{family} {{ import all; export none; }};\n}}\n",
                node_addr(i, v6)
            ));
        }
    }
    text
}

impl ClusterLab {
    /// Builds the lab with `nodes` lb nodes and `backends` backends (namespace names start
    /// with `prefix`), starts every BIRD and waits until every BGP session is up (at most
    /// 15 s). No node announces anything yet.
    pub fn new(prefix: &str, nodes: usize, backends: usize, replies: Replies) -> Self {
        assert!(
            (1..=99).contains(&nodes) && backends <= 99,
            "1 to 99 nodes, at most 99 backends"
        );
        let client = NetNs::with_prefix(prefix, "client");
        let router = NetNs::with_prefix(prefix, "router");
        router.enable_forwarding();
        // Replies leave nodes and backends from the VIP, which the router routes to the
        // fabric itself: no reverse-path filtering in the way.
        for key in ["all", "default"] {
            router.sysctl(&format!("net/ipv4/conf/{key}/rp_filter"), "0");
        }
        // ECMP by layer 4: flows of one client spread over the nodes.
        router.sysctl("net/ipv4/fib_multipath_hash_policy", "1");
        router.sysctl("net/ipv6/fib_multipath_hash_policy", "1");

        let front = Link::veth(&client, "198.18.70.1/24", &router, "198.18.70.254/24");
        add_v6(&client, "fd00:70::1/64", &front.a);
        add_v6(&router, "fd00:70::fe/64", &front.b);
        client.ip(&["route", "add", "default", "via", "198.18.70.254"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd00:70::fe"]);
        // The client's checksums complete (lb carries its packets on without finishing them).
        offload_off_and_napi_on(&client, &front.a);

        router.ip(&["link", "add", "fabric", "type", "bridge"]);
        router.ip(&["link", "set", "fabric", "up"]);
        router.ip(&["addr", "add", "198.18.71.254/24", "dev", "fabric"]);
        add_v6(&router, "fd00:71::fe/64", "fabric");

        let mut node_list = Vec::new();
        for i in 0..nodes {
            let ns = NetNs::with_prefix(prefix, &format!("node{i}"));
            ns.enable_forwarding();
            let link = Link::veth_bare(&router, &ns);
            enslave(&router, &link.a);
            // The router's end receives lb's XDP_TX frames: it needs NAPI.
            offload_off_and_napi_on(&router, &link.a);
            offload_off_and_napi_on(&ns, &link.b);
            let node = Node {
                ns,
                iface: link.b,
                v4: node_v4(i),
                v6: node_v6(i),
                asn: FIRST_NODE_AS + i as u32,
            };
            address_node(&node);
            node_list.push(node);
        }

        let mut backend_list = Vec::new();
        for j in 0..backends {
            let host = 101 + j;
            let ns = NetNs::with_prefix(prefix, &format!("b{}", j + 1));
            let link = Link::veth_bare(&router, &ns);
            enslave(&router, &link.a);
            ns.ip(&[
                "addr",
                "add",
                &format!("198.18.71.{host}/24"),
                "dev",
                &link.b,
            ]);
            add_v6(&ns, &format!("fd00:71::{host}/64"), &link.b);
            offload_off_and_napi_on(&router, &link.a);
            offload_off_and_napi_on(&ns, &link.b);
            if replies == Replies::ThroughNodes {
                ns.sysctl("net/ipv4/fib_multipath_hash_policy", "1");
                ns.sysctl("net/ipv6/fib_multipath_hash_policy", "1");
            }
            backend_list.push(Backend {
                name: format!("backend-{}", j + 1),
                ns,
                dev: link.b,
                gateway_v4: match replies {
                    Replies::Direct => ROUTER_V4,
                    Replies::ThroughNodes => node_v4(0),
                },
                v4: Ipv4Addr::new(198, 18, 71, host as u8),
                v6: format!("fd00:71::{host}").parse().expect("IPv6"),
            });
        }

        let dir = std::env::temp_dir().join(format!(
            "lb-cluster-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        // A stale one from an earlier run of the same pid.
        crate::cleanup::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // From here on a panic drops `lab`, which kills what started.
        let mut lab = Self {
            client,
            router,
            nodes: node_list,
            backends: backend_list,
            replies,
            dir,
            router_bird: None,
            node_birds: (0..nodes).map(|_| None).collect(),
            lost: vec![false; nodes],
        };
        lab.set_backend_routes();
        let router_conf = router_config(nodes);
        lab.router_bird = Some(lab.start_bird(Bird::Router, &router_conf));
        for i in 0..nodes {
            lab.node_birds[i] = Some(lab.start_bird(Bird::Node(i), &node_config(i)));
        }
        if let Err(e) = lab.wait_for_sessions(ESTABLISH_LIMIT) {
            panic!(
                "{e}\n{}",
                lab.bird_cli(Bird::Router, &["show", "protocols", "all"])
                    .unwrap_or_default()
            );
        }
        lab
    }

    /// The temporary directory with every BIRD's configuration, socket, pid file and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether node i is up (not lost).
    pub fn is_up(&self, i: usize) -> bool {
        !self.lost[i]
    }

    /// Starts `which` in its namespace, in the foreground (so the lab owns the process),
    /// and waits until it answers on its control socket.
    fn start_bird(&self, which: Bird, config: &str) -> BirdProcess {
        let name = which.name();
        let conf = self.dir.join(format!("{name}.conf"));
        let log = self.dir.join(format!("{name}.log"));
        let text = format!("log \"{}\" all;\n{config}", log.display());
        fs::write(&conf, text).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
        let socket = self.socket(which);
        crate::cleanup::remove_file(&socket);
        let stderr_path = self.dir.join(format!("{name}.stderr"));
        let stderr = File::create(&stderr_path).expect("create the stderr file");
        let child = self
            .ns(which)
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(self.dir.join(format!("{name}.pid")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start bird (cargo xtask setup installs bird2): {e}"));
        let mut bird = BirdProcess { child };
        let result = wait_until(BIRD_START_LIMIT, || {
            if let Ok(Some(status)) = bird.child.try_wait() {
                return Some(Err(format!("{name}'s bird exited: {status}")));
            }
            self.bird_cli(which, &["show", "status"])
                .ok()
                .filter(|out| out.contains("Daemon is up"))
                .map(|_| Ok(()))
        });
        match result {
            Ok((Ok(()), _)) => bird,
            Ok((Err(e), _)) | Err(e) => panic!(
                "{e}\nstderr: {}\nlog: {}",
                fs::read_to_string(&stderr_path).unwrap_or_default(),
                fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    }

    fn ns(&self, which: Bird) -> &NetNs {
        match which {
            Bird::Router => &self.router,
            Bird::Node(i) => &self.nodes[i].ns,
        }
    }

    fn socket(&self, which: Bird) -> PathBuf {
        self.dir.join(format!("{}.ctl", which.name()))
    }

    /// `birdc <args>` on the control socket of `which`; its output, or why it failed.
    pub fn bird_cli(&self, which: Bird, args: &[&str]) -> Result<String, String> {
        let output = Command::new("birdc")
            .arg("-s")
            .arg(self.socket(which))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run birdc: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() || text.contains("Unable to connect") {
            return Err(format!(
                "birdc {} on {}: {} {}",
                args.join(" "),
                which.name(),
                text,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(text)
    }

    /// Whether the router has both sessions (IPv4 and IPv6) with node i established.
    pub fn bgp_established(&self, i: usize) -> bool {
        [false, true]
            .into_iter()
            .all(|v6| self.session_established(i, v6))
    }

    /// Whether the router's session with node i in one family is established.
    pub fn session_established(&self, i: usize, v6: bool) -> bool {
        let family = if v6 { "6" } else { "4" };
        self.bird_cli(
            Bird::Router,
            &["show", "protocols", &format!("node{i}_v{family}")],
        )
        .is_ok_and(|out| out.contains("Established"))
    }

    /// Whether node i's BIRD holds a route to `vip` learned from its announce table: what
    /// it exports to the router.
    pub fn announces(&self, i: usize, vip: IpAddr) -> Result<bool, String> {
        let len = if vip.is_ipv4() { 32 } else { 128 };
        match self.bird_cli(Bird::Node(i), &["show", "route", &format!("{vip}/{len}")]) {
            Ok(shown) => Ok(shown.contains("[lb_vips")),
            // birdc exits non-zero for a route it does not have.
            Err(e) if e.contains("Network not found") => Ok(false),
            Err(e) => Err(format!("asking node{i}'s BIRD: {e}")),
        }
    }

    /// Waits until node i's BIRD has scanned its announce table since this call: a canary
    /// route written there now is learned and reaches the router. Whatever the table held
    /// at that scan is then what the node's BIRD announces. The canary goes again (and
    /// leaves the router) before this returns.
    pub fn after_a_scan(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let route = |op: &str| {
            let args = announce_route_args(op, SCAN_CANARY, &node.iface);
            node.ns
                .ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
        };
        route("add");
        self.wait_for_next_hops(SCAN_CANARY, 1, SCAN_LIMIT)
            .map_err(|e| format!("node{i}'s BIRD did not scan its announce table: {e}"))?;
        if !self.announces(i, SCAN_CANARY)? {
            return Err(format!("node{i}'s BIRD sent a canary it does not have"));
        }
        route("del");
        self.wait_for_next_hops(SCAN_CANARY, 0, SCAN_LIMIT)
            .map_err(|e| format!("node{i}'s canary route was not withdrawn: {e}"))?;
        Ok(())
    }

    /// Waits until the router has every session with every node that is up established;
    /// how long it took.
    pub fn wait_for_sessions(&self, limit: Duration) -> Result<Duration, String> {
        wait_until(limit, || {
            (0..self.nodes.len())
                .filter(|&i| self.is_up(i))
                .all(|i| self.bgp_established(i))
                .then_some(())
        })
        .map(|((), took)| took)
        .map_err(|e| format!("BGP sessions with the nodes: {e}"))
    }

    /// The next hops of the router's route to `vip` (empty without one).
    pub fn router_next_hops(&self, vip: IpAddr) -> Vec<IpAddr> {
        let len = if vip.is_ipv4() { 32 } else { 128 };
        next_hops(&self.router, &format!("{vip}/{len}"), vip.is_ipv6())
    }

    /// Waits until the router's route to `vip` has `n` next hops; how long it took.
    pub fn wait_for_next_hops(
        &self,
        vip: IpAddr,
        n: usize,
        limit: Duration,
    ) -> Result<Duration, String> {
        wait_until(limit, || {
            (self.router_next_hops(vip).len() == n).then_some(())
        })
        .map(|((), took)| took)
        .map_err(|e| {
            format!(
                "{vip}: {n} next hops: {e}; the router has {:?}",
                self.router_next_hops(vip)
            )
        })
    }

    /// Node i disappears, as when its machine loses power: its interface goes down inside
    /// its namespace (the router's bridge port loses carrier, the bridge stays up), then its
    /// BIRD is killed with SIGKILL (after the link is gone, so no BGP notification or TCP
    /// FIN reaches the router). The router notices through BFD. Whatever else the caller
    /// runs in the node's namespace (lb) is the caller's to stop. With
    /// [`Replies::ThroughNodes`] the backends' default routes lose the node.
    pub fn lose_node(&mut self, i: usize) {
        assert!(self.is_up(i), "node{i} is already lost");
        let node = &self.nodes[i];
        node.ns.ip(&["link", "set", &node.iface, "down"]);
        // Dropping the process kills it with SIGKILL and reaps it.
        self.node_birds[i] = None;
        self.lost[i] = true;
        self.set_backend_routes();
    }

    /// Brings a lost node back: its link up and addressed again, its BIRD started with the
    /// same configuration (its announce routes went with its link: whoever announces puts
    /// them back). Does not wait for BGP:
    /// see [`ClusterLab::wait_for_sessions`] and [`ClusterLab::wait_for_next_hops`].
    pub fn restore_node(&mut self, i: usize) {
        assert!(!self.is_up(i), "node{i} is not lost");
        let node = &self.nodes[i];
        node.ns.ip(&["link", "set", &node.iface, "up"]);
        // Link down took the IPv6 address and the routes through the link.
        address_node(node);
        self.lost[i] = false;
        self.node_birds[i] = Some(self.start_bird(Bird::Node(i), &node_config(i)));
        self.set_backend_routes();
    }

    /// The backends' default routes: the router, or multipath over the nodes that are up.
    fn set_backend_routes(&self) {
        for backend in &self.backends {
            for v6 in [false, true] {
                let family = if v6 { "-6" } else { "-4" };
                let mut args = vec![family, "route", "replace", "default"];
                let hops: Vec<String> = match self.replies {
                    Replies::Direct => vec![if v6 {
                        ROUTER_V6.to_string()
                    } else {
                        ROUTER_V4.to_string()
                    }],
                    Replies::ThroughNodes => (0..self.nodes.len())
                        .filter(|&i| self.is_up(i))
                        .map(|i| node_addr(i, v6).to_string())
                        .collect(),
                };
                if hops.is_empty() {
                    // Every node lost: no way back (there may be no route to delete, so
                    // ip's verdict is not checked).
                    backend
                        .ns
                        .command("ip")
                        .args([family, "route", "del", "default"])
                        .output()
                        .expect("run ip");
                    continue;
                }
                if hops.len() == 1 {
                    args.extend(["via", hops[0].as_str()]);
                } else {
                    for hop in &hops {
                        args.extend(["nexthop", "via", hop.as_str()]);
                    }
                }
                backend.ns.ip(&args);
            }
        }
    }
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        // Every BIRD first (SIGKILL and reap), then their files; the namespaces go after
        // this, with the fields.
        self.router_bird = None;
        self.node_birds.clear();
        crate::cleanup::remove_dir_all(&self.dir);
    }
}

/// Makes `port` a port of the router's bridge that never gets unknown unicast: a real NIC
/// drops frames for other MACs before XDP sees them, a veth does not, so a flooded frame
/// (the bridge forgets a MAC when its port goes down) would reach every node's XDP program
/// and be forwarded once per node.
fn enslave(router: &NetNs, port: &str) {
    router.ip(&["link", "set", port, "master", "fabric"]);
    let output = router
        .command("bridge")
        .args(["link", "set", "dev", port, "flood", "off"])
        .output()
        .expect("run bridge");
    assert!(
        output.status.success(),
        "bridge link set dev {port} flood off: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Node addresses and default routes on its fabric interface; `replace`, so that it also
/// serves a node whose link comes back.
fn address_node(node: &Node) {
    let ns = &node.ns;
    ns.ip(&[
        "addr",
        "replace",
        &format!("{}/24", node.v4),
        "dev",
        &node.iface,
    ]);
    ns.ip(&[
        "-6",
        "addr",
        "replace",
        &format!("{}/64", node.v6),
        "dev",
        &node.iface,
        "nodad",
    ]);
    ns.ip(&["route", "replace", "default", "via", &ROUTER_V4.to_string()]);
    ns.ip(&[
        "-6",
        "route",
        "replace",
        "default",
        "via",
        &ROUTER_V6.to_string(),
    ]);
}

/// The next hops of the route to exactly `prefix` (`default` included) in `ns`'s main
/// table: one gateway, several for a multipath route, none without a route.
pub fn next_hops(ns: &NetNs, prefix: &str, v6: bool) -> Vec<IpAddr> {
    let family = if v6 { "-6" } else { "-4" };
    parse_next_hops(&ns.ip(&[family, "-j", "route", "show", prefix]))
}

/// Next hops in `ip -j route show <prefix>`: one `gateway`, or `nexthops[].gateway`.
fn parse_next_hops(json: &str) -> Vec<IpAddr> {
    let routes: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_default();
    let Some(route) = routes.as_array().and_then(|r| r.first()) else {
        return Vec::new();
    };
    let gateway = |hop: &serde_json::Value| hop["gateway"].as_str()?.parse().ok();
    match route["nexthops"].as_array() {
        Some(hops) => hops.iter().filter_map(gateway).collect(),
        None => gateway(route).into_iter().collect(),
    }
}

/// Polls `check` every 20 ms until it gives a value or `limit` passes; the value and how
/// long it took.
pub(crate) fn wait_until<T>(
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<(T, Duration), String> {
    let started = Instant::now();
    let max_polls = limit.as_millis() / POLL.as_millis() + 1;
    for _ in 0..max_polls {
        if let Some(value) = check() {
            return Ok((value, started.elapsed()));
        }
        if started.elapsed() >= limit {
            break;
        }
        std::thread::sleep(POLL);
    }
    Err(format!("not within {limit:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_of_one_route_and_of_a_multipath_one() {
        let single = r#"[{"dst":"198.18.78.1","gateway":"198.18.71.1","dev":"fabric","protocol":"bird","metric":32,"flags":[]}]"#;
        assert_eq!(parse_next_hops(single), vec![node_addr(0, false)]);
        let multi = r#"[{"dst":"fd00:78::1","protocol":"bird","metric":32,"flags":[],"pref":"medium","nexthops":[{"gateway":"fd00:71::1","dev":"fabric","weight":1,"flags":[]},{"gateway":"fd00:71::2","dev":"fabric","weight":1,"flags":[]}]}]"#;
        assert_eq!(
            parse_next_hops(multi),
            vec![node_addr(0, true), node_addr(1, true)]
        );
        assert!(parse_next_hops("[]").is_empty());
        assert!(parse_next_hops("").is_empty());
    }

    #[test]
    fn the_node_configuration_is_the_documented_one_filled_in() {
        let text = node_config(2);
        assert!(text.contains("router id 198.18.71.3;"));
        assert!(text.contains("local as 65003;"));
        assert!(text.contains("neighbor 198.18.71.254 as 65000;"));
        assert!(text.contains("neighbor fd00:71::fe as 65000;"));
        assert!(text.contains(&format!("kernel table {ANNOUNCE_TABLE};")));
        assert!(router_config(3).contains("protocol bgp node2_v6 from lb_node"));
    }

    #[test]
    fn the_announce_route_goes_through_the_interface_in_the_announce_table() {
        assert_eq!(
            announce_route_args("add", VIP_V4.into(), "eth0").join(" "),
            "-4 route add 198.18.78.1/32 dev eth0 scope link table 4242 proto 248"
        );
        assert_eq!(
            announce_route_args("del", VIP_V6.into(), "eth0").join(" "),
            "-6 route del fd00:78::1/128 dev eth0 scope link table 4242 proto 248"
        );
    }
}
