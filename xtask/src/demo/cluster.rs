//! `cargo xtask run --nodes N [--mode nat|dsr-ipip|dsr-l2]`: the scale-out demo (issue 18).
//!
//! A client behind a router, and N lb nodes and three backends on one link (the "fabric")
//! behind the same router (`lb_lab::cluster`). Each node runs lb with `--announce-table
//! 4242` and its own BIRD, which announces what lb writes into table 4242 to the router
//! over eBGP (with BFD); the router installs one route to the VIP with a next hop per node
//! that announces it and spreads flows over them by a layer-4 hash (ECMP). Every node has
//! the same VIPs, backends and hash seed, so all of them send a flow to the same backend.
//!
//! The demo shows the route with a next hop per node, the nodes' identical Maglev table
//! fingerprints, how requests spread over nodes and backends, `lb node drain` taking a
//! node out of the route live (new flows avoid it, long-lived connections keep their
//! backend), `lb node resume`, and a node lost as in a power cut (BFD takes it out of the
//! route). Each of these is checked: the demo fails when one did not happen.

use std::{
    collections::BTreeSet,
    fs::OpenOptions,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_lab::{
    client::WhoConnection,
    cluster::{
        ANNOUNCE_TABLE, BFD_DETECTION, Bird, ClusterLab, HOLD_TIME, ROUTER_AS, ROUTER_V4, Replies,
        VIP_V4, node_addr,
    },
    servers::{HTTP_PORT, Servers, WHO_PORT},
};

use super::{
    DemoMode, REQUESTS, dsr::BackendDecap, interrupted, round, spawn_daemon, wait_for_interrupt,
    wait_until_forwarding,
};

const BACKENDS: usize = 3;
/// Long-lived connections opened before the drain and asked again after each change.
const LONG_LIVED: usize = 12;
/// How long the router may take to follow an announce, a withdraw or a lost node: BIRD
/// hears of a route at once over netlink, BFD notices a lost node in 300 ms.
const CONVERGE: Duration = Duration::from_secs(10);
/// The nodes' link, where the dsr-ipip packets come from (each node's own address).
const NODES_SUBNET: &str = "198.18.71.0/24";
/// The NAT VIP's HTTP port (the backends serve HTTP on `HTTP_PORT`).
const NAT_HTTP_PORT: u16 = 80;

/// The demo's directory (sockets, state files, logs, the hash seed), removed on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        lb_lab::cleanup::remove_dir_all(&self.0);
    }
}

/// One lb node's daemon: socket, pins and state of its own. It keeps the path of the
/// node's namespace (not the namespace, which the lab owns and may take down). Dropping it
/// runs `lb down` in that namespace and stops the daemon.
struct Node {
    name: String,
    lb: PathBuf,
    netns: PathBuf,
    iface: String,
    api: PathBuf,
    pin_dir: PathBuf,
    state: PathBuf,
    log: PathBuf,
    daemon: Option<Child>,
}

/// A row of `lb vip list`.
struct VipRow {
    /// `ADDRESS:PORT/PROTO`.
    service: String,
    packets: u64,
    new_flows: u64,
    /// The Maglev table fingerprint.
    table: String,
}

impl Node {
    /// `lb` in the node's namespace (`nsenter`, which keeps the host's bpffs), talking to
    /// the node's daemon.
    fn command(&self) -> Command {
        let mut command = super::in_netns(&self.netns, &self.lb);
        command.env("LB_API", &self.api);
        command
    }

    /// The arguments of this node's `lb run`.
    fn run_args(&self, seed_file: &Path) -> Vec<String> {
        [
            "--api",
            &self.api.display().to_string(),
            "run",
            "--iface",
            &self.iface,
            "--pin-dir",
            &self.pin_dir.display().to_string(),
            "--state",
            &self.state.display().to_string(),
            "--announce-table",
            &ANNOUNCE_TABLE.to_string(),
            "--hash-seed-file",
            &seed_file.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `lb <args>`, printed with its output when `loud`.
    fn call(&self, args: &[&str], loud: bool) -> anyhow::Result<String> {
        if loud {
            println!("$ [{}] lb {}", self.name, args.join(" "));
        }
        let what = format!("lb {} on {}", args.join(" "), self.name);
        let stdout = super::stdout_of(self.command().args(args), &what)?;
        if loud {
            print!("{stdout}");
        }
        Ok(stdout)
    }

    fn lb(&self, args: &[&str]) -> anyhow::Result<String> {
        self.call(args, true)
    }

    fn lb_quiet(&self, args: &[&str]) -> anyhow::Result<String> {
        self.call(args, false)
    }

    fn vips(&self) -> anyhow::Result<Vec<VipRow>> {
        parse_vip_list(&self.lb_quiet(&["vip", "list"])?)
            .with_context(|| format!("reading `lb vip list` of {}", self.name))
    }

    /// The row of `service` (`ADDRESS:PORT/PROTO`) in `lb vip list`.
    fn vip(&self, service: &str) -> anyhow::Result<VipRow> {
        self.vips()?
            .into_iter()
            .find(|row| row.service == service)
            .with_context(|| format!("{} has no VIP {service}", self.name))
    }

    /// Replies to clients the node translated (`fwd_reply` in `lb stats`).
    fn replies(&self) -> anyhow::Result<u64> {
        let text = self.lb_quiet(&["stats"])?;
        let row = text
            .lines()
            .find(|line| line.split_whitespace().next() == Some("fwd_reply"));
        // A counter still at zero may be left out.
        let Some(row) = row else { return Ok(0) };
        row.split_whitespace()
            .nth(1)
            .and_then(|packets| packets.parse().ok())
            .with_context(|| {
                format!(
                    "unexpected fwd_reply row in `lb stats` of {}: {row:?}",
                    self.name
                )
            })
    }

    /// Kills the daemon with SIGKILL (no withdraw, no cleanup: a crash); its pid.
    fn crash(&mut self) -> Option<u32> {
        let mut child = self.daemon.take()?;
        let pid = child.id();
        lb_lab::cleanup::kill(&mut child, format_args!("node daemon {pid}"));
        Some(pid)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Through the daemon if it still runs, else straight on the pins. In the node's
        // namespace either way: without a daemon, `lb down` withdraws the routes through
        // the datapath's interfaces, which only that namespace has.
        // A node already down (the demo's own `lb down`) fails this one: nothing to say.
        drop(
            self.command()
                .arg("down")
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
        );
        if let Some(mut child) = self.daemon.take() {
            lb_lab::cleanup::kill(&mut child, "a node daemon");
        }
        lb_lab::cleanup::remove_dir_all(&self.pin_dir);
    }
}

/// The rows of `lb vip list`: VIP PROTO ... PACKETS BYTES NEW-FLOWS TABLE, read from both
/// ends, so the columns between (mode, on-down policy, sources, backends) may change.
fn parse_vip_list(text: &str) -> anyhow::Result<Vec<VipRow>> {
    let mut rows = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let ([vip, proto, ..], [.., packets, _, new_flows, table]) = (&cells[..], &cells[..])
        else {
            bail!("unexpected row in `lb vip list`: {line:?}");
        };
        if cells.len() < 6 {
            bail!("unexpected row in `lb vip list`: {line:?}");
        }
        rows.push(VipRow {
            service: format!("{vip}/{proto}"),
            packets: packets
                .parse()
                .with_context(|| format!("PACKETS in {line:?}"))?,
            new_flows: new_flows
                .parse()
                .with_context(|| format!("NEW FLOWS in {line:?}"))?,
            table: (*table).to_owned(),
        });
    }
    Ok(rows)
}

/// 16 random hex digits, not all zero (lb refuses a zero seed).
fn random_seed() -> anyhow::Result<String> {
    let mut urandom = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    loop {
        let mut bytes = [0u8; 8];
        urandom
            .read_exact(&mut bytes)
            .context("reading /dev/urandom")?;
        let seed = u64::from_ne_bytes(bytes);
        if seed != 0 {
            return Ok(format!("{seed:016x}"));
        }
    }
}

/// Prints `$ [router] ip route show <VIP>` and its output.
fn show_route(lab: &ClusterLab) -> anyhow::Result<()> {
    println!("$ [router] ip route show {VIP_V4}");
    let output = lab
        .router
        .command("ip")
        .args(["route", "show", &VIP_V4.to_string()])
        .output()
        .context("running ip route")?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    Ok(())
}

/// Waits until the router's route to the VIP goes exactly through `nodes` (indices);
/// prints the route and how long that took from `since`, the moment of `what`.
fn expect_next_hops(
    lab: &ClusterLab,
    nodes: &[usize],
    since: Instant,
    what: &str,
) -> anyhow::Result<Duration> {
    let want: BTreeSet<IpAddr> = nodes.iter().map(|&i| node_addr(i, false)).collect();
    let limit = Instant::now() + CONVERGE;
    loop {
        interrupted()?;
        let have: BTreeSet<IpAddr> = lab.router_next_hops(VIP_V4.into()).into_iter().collect();
        if have == want {
            break;
        }
        if Instant::now() > limit {
            show_route(lab)?;
            bail!(
                "the router's route to {VIP_V4} should go through {} ({want:?}) but, after {CONVERGE:?}, goes through {have:?}",
                names(nodes)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = since.elapsed();
    show_route(lab)?;
    println!(
        "=> {} next hop{} ({}), {:.0} ms after {what}",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        names(nodes),
        took.as_secs_f64() * 1000.0
    );
    Ok(took)
}

fn names(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|i| format!("node{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a node counted: new flows of the HTTP VIP and replies translated.
fn counters(node: &Node, service: &str) -> anyhow::Result<(u64, u64)> {
    Ok((node.vip(service)?.new_flows, node.replies()?))
}

/// A round of `REQUESTS` HTTP requests (each a new connection from a new source port):
/// how they spread over the backends and, from the nodes' counters, over the nodes.
/// Fails when a request failed, when a node in `serving` got no new flow (the router
/// spreads by ECMP), when one in `drained` got any, or when replies crossed a node in
/// direct server return.
fn traffic(
    lab: &ClusterLab,
    nodes: &[Node],
    round_of: &Round,
    serving: &[usize],
    drained: &[usize],
    title: &str,
) -> anyhow::Result<()> {
    let service = &round_of.service;
    let counted: Vec<usize> = (0..nodes.len())
        .filter(|i| serving.contains(i) || drained.contains(i))
        .collect();
    let before = counted
        .iter()
        .map(|&i| counters(&nodes[i], service))
        .collect::<anyhow::Result<Vec<_>>>()?;
    round(&lab.client, &lab.backends, round_of.vip, title)?;
    let after = counted
        .iter()
        .map(|&i| counters(&nodes[i], service))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "  by node: new flows (NEW FLOWS of {service} in `lb vip list`){}",
        if round_of.nat {
            ", replies translated back to the VIP (fwd_reply in `lb stats`)"
        } else {
            ""
        }
    );
    let mut problems = Vec::new();
    let mut replies_total = 0;
    for (i, node) in nodes.iter().enumerate() {
        let Some(k) = counted.iter().position(|&c| c == i) else {
            println!("  {:<10}    -          lost", node.name);
            continue;
        };
        let count = after[k].0.saturating_sub(before[k].0);
        let replies = after[k].1.saturating_sub(before[k].1);
        replies_total += replies;
        let share = count as f64 / REQUESTS as f64;
        let bar = "#".repeat((share * 50.0).round() as usize);
        let replies_cell = if round_of.nat {
            format!("{replies:>5} replies  ")
        } else {
            String::new()
        };
        let note = if drained.contains(&i) {
            "(drained)"
        } else {
            ""
        };
        println!(
            "  {:<10} {count:>4}  {:>5.1}%  {replies_cell}{bar}{note}",
            node.name,
            share * 100.0
        );
        if drained.contains(&i) && count > 0 {
            problems.push(format!(
                "{} is drained but took {count} new flows",
                node.name
            ));
        }
        if serving.contains(&i) && count == 0 {
            problems.push(format!(
                "{} announces the VIP but took no new flow of {REQUESTS}",
                node.name
            ));
        }
    }
    if !round_of.nat {
        println!(
            "  replies through the nodes: {replies_total} (fwd_reply in `lb stats`): the \
             backends answer the client directly"
        );
        if replies_total > 0 {
            problems.push(format!(
                "{replies_total} replies crossed the nodes in direct server return"
            ));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// The HTTP VIP the rounds of requests go to.
struct Round {
    vip: SocketAddr,
    /// `ADDRESS:PORT/tcp`, as `lb vip list` names it.
    service: String,
    /// Replies come back through the nodes (NAT), or not (DSR).
    nat: bool,
}

/// Long-lived connections to the who server through the VIP, each with the backend that
/// answered first.
struct LongLived {
    connections: Vec<(WhoConnection, String)>,
}

impl LongLived {
    fn open(lab: &ClusterLab, vip: SocketAddr) -> anyhow::Result<Self> {
        let connections = lab.client.enter(|| {
            (0..LONG_LIVED)
                .map(|_| {
                    let mut connection = WhoConnection::open(vip)?;
                    let backend = connection.ask()?;
                    Ok((connection, backend))
                })
                .collect::<Result<Vec<_>, String>>()
        });
        let connections =
            connections.map_err(|e| anyhow::anyhow!("a long-lived connection to {vip}: {e}"))?;
        let mut by_backend = std::collections::BTreeMap::<&str, usize>::new();
        for (_, backend) in &connections {
            *by_backend.entry(backend).or_default() += 1;
        }
        let spread: Vec<String> = by_backend
            .iter()
            .map(|(backend, n)| format!("{n} on {backend}"))
            .collect();
        println!(
            "{LONG_LIVED} long-lived connections from the client to {vip} (the who server: \
             each line sent is answered with the backend's name): {}",
            spread.join(", ")
        );
        Ok(Self { connections })
    }

    /// How many of the connections the router sends through `node` now: asks on each, one
    /// at a time, and watches the node's packet count of the who VIP (`service`).
    fn through(&mut self, node: &Node, service: &str) -> anyhow::Result<usize> {
        let mut through = 0;
        let mut packets = node.vip(service)?.packets;
        for (n, (connection, backend)) in self.connections.iter_mut().enumerate() {
            let name = connection
                .ask()
                .map_err(|e| anyhow::anyhow!("long-lived connection #{n} (on {backend}): {e}"))?;
            if name != *backend {
                bail!("long-lived connection #{n} moved from {backend} to {name}");
            }
            // The request and the client's ACK of the answer, both through the same node.
            std::thread::sleep(Duration::from_millis(50));
            let now = node.vip(service)?.packets;
            if now > packets {
                through += 1;
            }
            packets = now;
        }
        Ok(through)
    }

    /// Asks on every connection; fails unless each answers, from the backend it had.
    fn check(&mut self, after: &str) -> anyhow::Result<()> {
        let mut answered = 0;
        let mut problems = Vec::new();
        for (n, (connection, backend)) in self.connections.iter_mut().enumerate() {
            match connection.ask() {
                Ok(name) if name == *backend => answered += 1,
                Ok(name) => problems.push(format!("#{n} moved from {backend} to {name}")),
                Err(e) => problems.push(format!("#{n} (on {backend}): {e}")),
            }
        }
        println!(
            "=> {answered} of {} long-lived connections still answered after {after}, each by the backend it had",
            self.connections.len()
        );
        if !problems.is_empty() {
            bail!(
                "long-lived connections broken after {after}: {}",
                problems.join("; ")
            );
        }
        Ok(())
    }
}

/// Whether the router's BGP session with node `i` in `family` ("4" or "6") is up.
fn session_up(lab: &ClusterLab, i: usize, family: &str) -> bool {
    lab.bird_cli(
        Bird::Router,
        &["show", "protocols", &format!("node{i}_v{family}")],
    )
    .is_ok_and(|out| out.contains("Established"))
}

pub(super) fn run(lb: &Path, once: bool, count: usize, mode: DemoMode) -> anyhow::Result<()> {
    let (mode_arg, replies, how) = match mode {
        DemoMode::Nat => (
            "nat",
            Replies::ThroughNodes,
            "nat: a node rewrites the destination to the backend; the backends' default route \
             is multipath over the nodes, so a reply comes back through any node (often not \
             the one the request took), which rewrites its source back to the VIP",
        ),
        DemoMode::DsrIpip => (
            "dsr-ipip",
            Replies::Direct,
            "dsr-ipip: a node sends the client's packet to the backend inside an outer IPv4 \
             header from the node's own address; the backend answers the client directly, \
             through the router",
        ),
        DemoMode::DsrL2 => (
            "dsr-l2",
            Replies::Direct,
            "dsr-l2: the nodes and the backends share the fabric, so a node changes only the \
             destination MAC of the client's packet; the backend answers the client directly, \
             through the router",
        ),
    };
    let tag = format!("lb-demo-{}", std::process::id());
    let work = WorkDir(PathBuf::from("/run").join(&tag));
    std::fs::create_dir_all(&work.0).context("creating the demo directory")?;
    let pin_prefix = PathBuf::from("/sys/fs/bpf").join(&tag);

    println!(
        "lb demo, scale-out: a client, a router, {count} lb nodes and {BACKENDS} backends in \
         network namespaces (lbdemo-{}-*).\nAddresses are from 198.18.0.0/15; nothing leaves \
         this machine.\n\n\
         The router learns the VIP {VIP_V4} from every node over eBGP (BIRD 2, with BFD), \
         installs one route with a next hop per node that announces it, and spreads flows \
         over them by a layer-4 hash (ECMP). On each node lb writes `blackhole <VIP>/32 \
         table {ANNOUNCE_TABLE} proto 248` for every VIP it can serve, and the node's BIRD \
         announces what is in table {ANNOUNCE_TABLE} (docs/bird/lb-node.conf).\n{how}.\n",
        std::process::id()
    );
    let started = Instant::now();
    let mut lab = ClusterLab::new("lbdemo", count, BACKENDS, replies);
    println!("client 198.18.70.1 -- router {ROUTER_V4} (AS {ROUTER_AS}) -- fabric {NODES_SUBNET}:");
    for (i, node) in lab.nodes.iter().enumerate() {
        println!("  node{i}      {:<15} AS {}", node.v4, node.asn);
    }
    for backend in &lab.backends {
        println!("  {:<10} {}", backend.name, backend.v4);
    }
    println!(
        "{} BGP sessions (IPv4 and IPv6 per node) established in {:.1} s; nothing announced yet.\n",
        2 * count,
        started.elapsed().as_secs_f64()
    );

    let seed = random_seed()?;
    let seed_file = work.0.join("hash-seed");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&seed_file)
        .and_then(|mut file| writeln!(file, "{seed}"))
        .with_context(|| format!("writing {}", seed_file.display()))?;
    println!(
        "The cluster's hash seed: 16 random hex digits for this run, in {} (mode 0600). \
         Shared: every node gets the same one, so all of them pick the same backend for a \
         flow. Secret: whoever knows it can compute where a flow lands and aim flows at one \
         backend, so it goes in a file (--hash-seed-file), not on a command line.\n",
        seed_file.display()
    );

    let (http_vip, backend_http_port) = match mode {
        DemoMode::Nat => (SocketAddr::new(VIP_V4.into(), NAT_HTTP_PORT), HTTP_PORT),
        _ => (SocketAddr::new(VIP_V4.into(), HTTP_PORT), HTTP_PORT),
    };
    let who_vip = SocketAddr::new(VIP_V4.into(), WHO_PORT);
    let mut decaps = Vec::new();
    if mode != DemoMode::Nat {
        println!(
            "Each backend holds the VIP and takes the nodes' packets (from the nodes' link, \
             {NODES_SUBNET}) with `lb decap`:"
        );
        for (j, backend) in lab.backends.iter().enumerate() {
            let decap = BackendDecap::new(lb, backend, &pin_prefix, &work.0);
            decap.call(
                &[
                    "attach",
                    "--iface",
                    &backend.dev,
                    "--vip",
                    &VIP_V4.to_string(),
                    "--allow-source",
                    NODES_SUBNET,
                ],
                j == 0,
            )?;
            decaps.push(decap);
        }
        let others: Vec<&str> = lab.backends[1..].iter().map(|b| b.name.as_str()).collect();
        println!(
            "(the same on {}, each with its own interface)\n",
            others.join(", ")
        );
    }
    let servers = match mode {
        DemoMode::Nat => Servers::start(&lab.backends),
        _ => Servers::start_on_vips(&lab.backends, &[VIP_V4.into()]),
    };

    println!(
        "lb on every node, attached to its fabric interface, announcing through table \
         {ANNOUNCE_TABLE}, with the shared seed:"
    );
    let mut nodes: Vec<Node> = lab
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| Node {
            name: format!("node{i}"),
            lb: lb.to_owned(),
            netns: node.ns.path(),
            iface: node.iface.clone(),
            api: work.0.join(format!("node{i}.sock")),
            // bpffs refuses dots in names.
            pin_dir: PathBuf::from(format!("{}-node{i}", pin_prefix.display())),
            state: work.0.join(format!("node{i}-state.toml")),
            log: work.0.join(format!("node{i}-lb.log")),
            daemon: None,
        })
        .collect();
    let mut starting = Vec::new();
    for node in &mut nodes {
        let args = node.run_args(&seed_file);
        println!("$ [{}] lb {}", node.name, args.join(" "));
        let mut command = node.command();
        command.args(&args);
        let (child, lines) = spawn_daemon(&mut command, &node.log)?;
        node.daemon = Some(child);
        starting.push(lines);
    }
    for (node, lines) in nodes.iter().zip(&starting) {
        let line = wait_until_forwarding(lines, &node.log)?;
        println!("[{}] {line}", node.name);
    }
    drop(starting);

    let http_arg = http_vip.to_string();
    let who_arg = who_vip.to_string();
    let backend = |n: usize, port: u16| SocketAddr::new(lab.backends[n].v4.into(), port);
    let mut setup: Vec<Vec<String>> = Vec::new();
    for vip in [&http_arg, &who_arg] {
        setup.push(
            ["vip", "add", vip, "--mode", mode_arg]
                .map(str::to_owned)
                .to_vec(),
        );
    }
    for n in 0..BACKENDS {
        setup.push(
            [
                "backend",
                "add",
                &http_arg,
                &backend(n, backend_http_port).to_string(),
            ]
            .map(str::to_owned)
            .to_vec(),
        );
        setup.push(
            [
                "backend",
                "add",
                &who_arg,
                &backend(n, WHO_PORT).to_string(),
            ]
            .map(str::to_owned)
            .to_vec(),
        );
    }
    println!(
        "\nThe same VIPs and backends on every node (HTTP on {http_arg}, and the who server \
         on {who_arg} for long-lived connections):"
    );
    for (i, node) in nodes.iter().enumerate() {
        for args in &setup {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if i == 0 {
                node.lb(&args)?;
            } else {
                node.lb_quiet(&args)?;
            }
        }
    }
    let configured = Instant::now();
    if count > 1 {
        println!(
            "(the same {} commands on {})",
            setup.len(),
            names(&(1..count).collect::<Vec<_>>())
        );
    }

    let all: Vec<usize> = (0..count).collect();
    println!("\n1. Every node announces {VIP_V4}; the router has a next hop per node:");
    expect_next_hops(
        &lab,
        &all,
        configured,
        "the last node was configured (each announces once a backend takes new flows)",
    )?;
    println!();
    nodes[0].lb(&["status"])?;

    println!(
        "\n2. Same backends and same seed, so the same Maglev table on every node: \
         `lb vip list`, column TABLE (a fingerprint of the table)"
    );
    nodes[0].lb(&["vip", "list"])?;
    let tables = nodes
        .iter()
        .map(Node::vips)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut differ = Vec::new();
    for row in &tables[0] {
        let prints: Vec<String> = tables
            .iter()
            .map(|rows| {
                rows.iter()
                    .find(|r| r.service == row.service)
                    .map_or_else(|| "(none)".to_owned(), |r| r.table.clone())
            })
            .collect();
        let same = prints.iter().all(|p| *p == row.table);
        let cells: Vec<String> = nodes
            .iter()
            .zip(&prints)
            .map(|(node, print)| format!("{} {print}", node.name))
            .collect();
        println!(
            "  {:<22} {}  => {}",
            row.service,
            cells.join("  "),
            if same { "identical" } else { "DIFFERENT" }
        );
        if !same {
            differ.push(row.service.clone());
        }
    }
    if !differ.is_empty() {
        bail!(
            "the nodes' Maglev tables differ for {}: they would send one flow to different backends",
            differ.join(", ")
        );
    }

    let http = Round {
        vip: http_vip,
        service: format!("{http_vip}/tcp"),
        nat: mode == DemoMode::Nat,
    };
    println!(
        "\n3. Traffic: each request is a new TCP connection from a new source port; the \
         router hashes it to a node, the node's Maglev table picks the backend."
    );
    traffic(
        &lab,
        &nodes,
        &http,
        &all,
        &[],
        &format!("{count} nodes announcing"),
    )?;

    let drained = count - 1;
    println!(
        "\n4. node{drained} is drained, live: it withdraws the VIP and keeps serving the flows \
         that still reach it."
    );
    println!();
    let mut long_lived = LongLived::open(&lab, who_vip)?;
    let who_service = format!("{who_vip}/tcp");
    let through_drained = long_lived.through(&nodes[drained], &who_service)?;
    println!(
        "{through_drained} of them go through node{drained} (asked one at a time, its PACKETS \
         count of {who_service} rose): after the drain the router sends them to the other \
         nodes, whose Maglev tables pick the same backends\n"
    );
    let since = Instant::now();
    nodes[drained].lb(&["node", "drain"])?;
    let others: Vec<usize> = (0..count).filter(|&i| i != drained).collect();
    expect_next_hops(&lab, &others, since, "`lb node drain`")?;
    traffic(
        &lab,
        &nodes,
        &http,
        &others,
        &[drained],
        &format!("node{drained} drained"),
    )?;
    long_lived.check(&format!("the drain of node{drained}"))?;

    println!("\nnode{drained} back in service:");
    let since = Instant::now();
    nodes[drained].lb(&["node", "resume"])?;
    expect_next_hops(&lab, &all, since, "`lb node resume`")?;

    let lost = count - 2;
    println!(
        "\n5. node{lost} is lost, live, as when its machine loses power: its lb is killed \
         (SIGKILL: no withdraw), then its link goes down and its BIRD is killed. (`lb down` \
         would withdraw the VIP first, like the drain above; a crash is what BFD is for.)"
    );
    let through_lost = long_lived.through(&nodes[lost], &who_service)?;
    println!("{through_lost} of the {LONG_LIVED} long-lived connections go through node{lost} now");
    if let Some(pid) = nodes[lost].crash() {
        println!("$ [node{lost}] kill -KILL {pid}    # lb run");
    }
    let bird_pid = std::fs::read_to_string(lab.dir().join(format!("node{lost}.pid")))
        .map_or_else(|_| "<its bird>".to_owned(), |pid| pid.trim().to_owned());
    println!(
        "$ [node{lost}] ip link set {} down; kill -KILL {bird_pid}    # its BIRD",
        nodes[lost].iface
    );
    let since = Instant::now();
    lab.lose_node(lost);
    let survivors: Vec<usize> = (0..count).filter(|&i| i != lost).collect();
    let took = expect_next_hops(&lab, &survivors, since, "the link went down")?;
    // The IPv6 session (no VIP of this demo) may go down a moment after the IPv4 one.
    let limit = Instant::now() + HOLD_TIME + Duration::from_secs(2);
    while ["4", "6"].iter().any(|f| session_up(&lab, lost, f)) && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    let session = lab
        .bird_cli(
            Bird::Router,
            &["show", "protocols", "all", &format!("node{lost}_v4")],
        )
        .map_err(|e| anyhow::anyhow!(e))?;
    let by_bfd = session.contains("BFD session down");
    println!("$ [router] birdc show protocols");
    print!(
        "{}",
        lab.bird_cli(Bird::Router, &["show", "protocols"])
            .map_err(|e| anyhow::anyhow!(e))?
    );
    if !by_bfd {
        bail!(
            "the router dropped node{lost} after {took:?}, but not by BFD (detection \
             {BFD_DETECTION:?}); its session:\n{session}"
        );
    }
    println!(
        "=> BFD brought the router's sessions with node{lost} down (a peer is lost \
         after {} ms without its BFD packets; the BGP hold time, {} s, is only the fallback)",
        BFD_DETECTION.as_millis(),
        HOLD_TIME.as_secs()
    );
    if mode == DemoMode::Nat {
        let backend = &lab.backends[0];
        println!(
            "The backends' replies avoid node{lost} too (the lab changes their default route; \
             a real network needs the backends' routing to notice, by BFD for instance):"
        );
        println!("$ [{}] ip route show default", backend.name);
        let output = backend
            .ns
            .command("ip")
            .args(["route", "show", "default"])
            .output()
            .context("running ip route")?;
        print!("{}", String::from_utf8_lossy(&output.stdout));
    }
    traffic(
        &lab,
        &nodes,
        &http,
        &survivors,
        &[],
        &format!("node{lost} lost"),
    )?;
    println!(
        "(the {through_lost} long-lived connections that went through node{lost} now reach \
         a survivor, whose Maglev table picks the same backend as node{lost}'s did)"
    );
    long_lived.check(&format!("the loss of node{lost}"))?;

    if !once {
        println!(
            "\nThe lab stays up: try `LB_API={} lb vip list` (node0), or `lb status` with \
             another node's socket in {}. Ctrl-C removes everything.",
            nodes[0].api.display(),
            work.0.display()
        );
        wait_for_interrupt();
    }
    println!(
        "\ncleaning up: lb down on every node{}, BIRDs stopped, namespaces removed",
        if decaps.is_empty() {
            ""
        } else {
            ", lb decap detach on the backends"
        }
    );
    drop(long_lived);
    drop(nodes);
    drop(servers);
    drop(decaps);
    drop(lab);
    drop(work);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_list_rows_are_read_by_position() {
        let text = " VIP            PROTO  MODE      ON DOWN   SOURCES                      BACKENDS  ACTIVE  PACKETS  BYTES     NEW FLOWS  TABLE            \n \
                     198.18.1.1:80  tcp    nat       keep-tcp  198.18.0.0/24, 198.19.0.0/16 2         1       123456   98765432  4321       5d1f0a7c93e2b468 \n \
                     [fd00::1]:53   udp    dsr-ipip  move      any                          1         1       7        560       7          0c4e8a21f6b7d390\n";
        let rows = parse_vip_list(text).expect("parsed");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].service, "198.18.1.1:80/tcp");
        assert_eq!((rows[0].packets, rows[0].new_flows), (123_456, 4321));
        assert_eq!(rows[1].table, "0c4e8a21f6b7d390");
        assert!(parse_vip_list("VIP\n 1 2 3\n").is_err());
    }

    #[test]
    fn seeds_are_16_hex_digits() {
        let seed = random_seed().expect("seed");
        assert_eq!(seed.len(), 16);
        assert!(seed.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(seed, "0000000000000000");
    }
}
