//! The multi-node scenario, in one place for the cluster test (`tests/tests/cluster.rs`),
//! the scale-out demo (`cargo xtask run --nodes N`, which prints the narration) and the
//! cluster benchmark (`cargo xtask bench`, which times it).
//!
//! N lb nodes behind the ECMP router of [`ClusterLab`], each running `lb run` with the
//! same `--config` (VIPs, backends, `[cluster] announce_table = 4242`) and the same
//! `--hash-seed-file`, so that every node picks the same backend for a flow. Long-lived
//! TCP connections and UDP flows are opened once and asked again after every event; none
//! may break or change backend, but at the two backend changes of steps 7 and 8 in a mode
//! without a second chance, where how many break is what is measured (issue 31). A flow
//! found broken is closed and counted once. In order:
//! 1. every node announces the VIPs: the router has a next hop per node;
//! 2. the same Maglev table on every node (fingerprints), another with one more backend;
//! 3. a round of requests spread over nodes and backends (in NAT, IPv6 too);
//! 4. `lb node drain` on the last node: withdrawn, new flows avoid it, it gets no packet,
//!    its flows continue on the others; `lb node resume`;
//! 5. the next-to-last node lost as in a power cut (lb killed, link down, BIRD killed):
//!    BFD takes it out of the route; the flows it carried continue on the survivors;
//! 6. direct server return: it returns (link and BIRD first: not announced without its
//!    daemon; then its daemon `--drained`, adopting its pins; then `lb node resume`); NAT:
//!    no reply left a node untranslated (an nft counter on the router, shown to count by a
//!    canary), and the story ends there;
//! 7. four backends are configured, the lab has five: the fifth is added on every node at
//!    the same moment as the last node is drained (`changes.rs`), then removed again;
//! 8. node0 stopped with `lb down`, the fifth added on the others, node0 started again with
//!    the config and the same `lb backend add`, resumed; the fifth removed again. These two
//!    come once every node serves again, as in a cluster at rest, and before step 9, which
//!    leaves one node serving;
//! 9. nodes are stopped (`lb down`; a daemon stopped by SIGTERM stays announced; `lb down`
//!    without a daemon withdraws).
//!
//! The scenario fails ([`Failure`]) when a step cannot be done or the cluster is not in the
//! state the next step needs (a route that does not converge, a command that fails, nodes
//! whose tables differ). What it measured (broken flows, spreads, times) is in the
//! [`Report`], for the caller to judge: it carries on after a broken flow, so that a
//! benchmark counts every one.

mod changes;
mod events;
mod flows;
mod report;
mod setup;

use std::{
    collections::BTreeSet,
    io::Read as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use report::{
    Change, Checked, Event, Leaks, Loss, NodeCount, NodeState, Report, Return, Round, Stop, Stopped,
};

use self::flows::Flows;
use crate::{
    client::http_get,
    cluster::{ANNOUNCE_TABLE, ClusterLab, Replies, VIP_V4, VIP_V6, node_addr, wait_until},
    lb::{Decap, Failure, LbNode},
    servers::{HTTP_PORT, Servers, UDP_PORT, WHO_PORT},
    topology::Backend,
};

/// How the nodes send flows to the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The node rewrites the destination; replies come back through any node.
    Nat,
    /// Direct server return in an outer IPv4 header from the node's own address.
    DsrIpip,
    /// Direct server return on the shared link: the node changes only the destination MAC.
    DsrL2,
    /// As dsr-ipip, in UDP and GUE with each flow's hop list: the second chance.
    DsrGue,
}

impl Mode {
    /// The mode as `lb` and the config file name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::DsrIpip => "dsr-ipip",
            Self::DsrL2 => "dsr-l2",
            Self::DsrGue => "dsr-gue",
        }
    }

    /// Whether a flow that reaches a node without its entry, after a backend change, still
    /// finds its backend: only dsr-gue's hop list gives it a second chance; elsewhere such
    /// flows break wherever the change moved their slot in the Maglev table.
    pub fn second_chance(self) -> bool {
        match self {
            Self::Nat | Self::DsrIpip | Self::DsrL2 => false,
            Self::DsrGue => true,
        }
    }

    fn replies(self) -> Replies {
        match self {
            Self::Nat => Replies::ThroughNodes,
            Self::DsrIpip | Self::DsrL2 | Self::DsrGue => Replies::Direct,
        }
    }

    fn how(self) -> &'static str {
        match self {
            Self::Nat => {
                "nat: a node rewrites the destination to the backend; the backends' default \
                 route is multipath over the nodes, so a reply comes back through any node \
                 (often not the one the request took), which rewrites its source back to the VIP"
            }
            Self::DsrIpip => {
                "dsr-ipip: a node sends the client's packet to the backend inside an outer IPv4 \
                 header from the node's own address; the backend answers the client directly, \
                 through the router"
            }
            Self::DsrL2 => {
                "dsr-l2: the nodes and the backends share the fabric, so a node changes only the \
                 destination MAC of the client's packet; the backend answers the client \
                 directly, through the router"
            }
            Self::DsrGue => {
                "dsr-gue: as dsr-ipip, in UDP and GUE with the flow's hop list: the backend \
                 the current table chooses, then those earlier tables chose; a backend without \
                 the connection hands the packet on to the next (the second chance)"
            }
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `lb` binary.
    pub lb: PathBuf,
    pub mode: Mode,
    /// 2 to 99 lb nodes.
    pub nodes: usize,
    /// The start of the namespaces' names.
    pub prefix: String,
    /// The cluster's hash seed (16 hex digits); `None`: a random one for this run.
    pub hash_seed: Option<String>,
    /// Long-lived TCP connections and UDP flows.
    pub connections: usize,
    pub udp_flows: usize,
    /// HTTP requests per round.
    pub requests: usize,
}

impl Options {
    /// `nodes` nodes in `mode`, 200 long-lived connections and 100 UDP flows (what issue 31
    /// measures its backend changes with) and rounds of 300 requests, with a random seed.
    pub fn new(lb: &Path, mode: Mode, nodes: usize, prefix: &str) -> Self {
        Self {
            lb: lb.to_owned(),
            mode,
            nodes,
            prefix: prefix.to_owned(),
            hash_seed: None,
            connections: 200,
            udp_flows: 100,
            requests: 300,
        }
    }
}

/// Who hears the story as it happens.
pub trait Narrator {
    /// A line (or lines) of the story: what runs, what it printed, what it shows.
    fn say(&mut self, text: &str);

    /// Whether to stop (Ctrl-C in the demo): asked before each step and while waiting.
    fn interrupted(&self) -> bool {
        false
    }

    /// Every event has happened; the lab is still up until this returns (the demo waits
    /// for Ctrl-C here). `hint` says how to look at it.
    fn finished(&mut self, _hint: &str) {}
}

/// Tells the story on stderr after a prefix, where a test harness keeps it to show with a
/// failure.
pub struct Stderr(pub &'static str);

impl Narrator for Stderr {
    fn say(&mut self, text: &str) {
        for line in text.lines() {
            eprintln!("{}{line}", self.0);
        }
    }
}

/// The backends in the config. Direct server return's lab has one more (the spare), added
/// and removed again live in steps 7 and 8.
pub const BACKENDS: usize = 4;
/// How long the router may take to follow an announce, a withdraw or a lost node: BIRD
/// hears of a route at once over netlink, BFD notices a lost node in 300 ms.
pub const CONVERGE: Duration = Duration::from_secs(15);
/// New connections tried while the router still sends flows to a lost node: each gets
/// this long to connect (a SYN to a dead node is retransmitted after 1 s).
pub const PROBE_CONNECT: Duration = Duration::from_millis(900);
/// How often a new connection is tried while the router still sends flows to a lost node.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// The nodes' link, where the dsr-ipip packets come from (each node's own address).
const NODES_SUBNET: &str = "198.18.71.0/24";
/// The backends' addresses, as the router's leak counter matches them.
const BACKENDS_V4: &str = "198.18.71.64/26";
const BACKENDS_V6: &str = "fd00:71::100/120";
/// A backend that does not exist, added to one node for a moment to change its table.
const EXTRA_BACKEND: &str = "198.18.71.200";

/// The VIPs of one run: the who server (long-lived connections), UDP and HTTP, on the
/// same address; in NAT also HTTP on an IPv6 VIP.
struct Vips {
    who: SocketAddr,
    udp: SocketAddr,
    http: SocketAddr,
    http6: Option<SocketAddr>,
}

impl Vips {
    /// In direct server return the backends serve on the VIP's own ports.
    fn of(mode: Mode) -> Self {
        let v4 = IpAddr::from(VIP_V4);
        let who = SocketAddr::new(v4, WHO_PORT);
        if mode == Mode::Nat {
            Self {
                who,
                udp: SocketAddr::new(v4, 53),
                http: SocketAddr::new(v4, 80),
                http6: Some(SocketAddr::new(VIP_V6.into(), 80)),
            }
        } else {
            Self {
                who,
                udp: SocketAddr::new(v4, UDP_PORT),
                http: SocketAddr::new(v4, HTTP_PORT),
                http6: None,
            }
        }
    }

    /// Each VIP with its protocol and the backends' port.
    fn services(&self) -> Vec<(SocketAddr, &'static str, u16)> {
        let mut services = vec![
            (self.who, "tcp", WHO_PORT),
            (self.udp, "udp", UDP_PORT),
            (self.http, "tcp", HTTP_PORT),
        ];
        services.extend(self.http6.map(|vip| (vip, "tcp", HTTP_PORT)));
        services
    }

    /// The addresses the nodes announce.
    fn addresses(&self) -> Vec<IpAddr> {
        let mut addresses = vec![self.who.ip()];
        addresses.extend(self.http6.map(|vip| vip.ip()));
        addresses
    }
}

/// Runs the scenario, telling `narrator` the story; what it measured.
pub fn run(options: &Options, narrator: &mut dyn Narrator) -> Result<Report, Failure> {
    if !(2..=99).contains(&options.nodes) {
        return Err(Failure::new(format!(
            "the scenario takes 2 to 99 nodes, not {}",
            options.nodes
        )));
    }
    let n = options.nodes;
    // The spare of steps 7 and 8, in direct server return.
    let spares = usize::from(options.mode != Mode::Nat);
    narrator.say(&format!(
        "Scale-out: a client, a router, {n} lb nodes and {} backends in network \
         namespaces ({}-{}-*).\nAddresses are from 198.18.0.0/15; nothing leaves this \
         machine.\n\n\
         The router learns the VIP {VIP_V4} from every node over eBGP (BIRD 2, with BFD), \
         installs one route with a next hop per node that announces it, and spreads flows \
         over them by a layer-4 hash (ECMP). On each node lb writes `<VIP>/32 dev <its fabric \
         interface> table {ANNOUNCE_TABLE} proto 248` for every VIP it can serve, and the \
         node's BIRD announces what is in table {ANNOUNCE_TABLE} (docs/bird/lb-node.conf).\n{}.\n",
        BACKENDS + spares,
        options.prefix,
        std::process::id(),
        options.mode.how()
    ));
    let started = Instant::now();
    let lab = ClusterLab::new(
        &options.prefix,
        n,
        BACKENDS + spares,
        options.mode.replies(),
    );
    let mut scenario = Scenario {
        options,
        say: narrator,
        nodes: Vec::new(),
        flows: None,
        servers: None,
        decaps: Vec::new(),
        vips: Vips::of(options.mode),
        checks: Vec::new(),
        changes: Vec::new(),
        lab,
    };
    scenario.topology(started);
    let report = scenario.play()?;
    let hint = scenario.hint();
    scenario.say.finished(&hint);
    scenario.say(&format!(
        "\ncleaning up: lb down on every node{}, BIRDs stopped, namespaces removed",
        if scenario.decaps.is_empty() {
            ""
        } else {
            ", lb decap detach on the backends"
        }
    ));
    Ok(report)
}

/// A run in progress. Fields drop in order: the nodes first (`lb down` in namespaces that
/// still exist), the lab last (BIRDs, namespaces, and the directory with every file).
struct Scenario<'a> {
    options: &'a Options,
    say: &'a mut dyn Narrator,
    nodes: Vec<LbNode>,
    flows: Option<Flows>,
    servers: Option<Servers>,
    decaps: Vec<Decap>,
    vips: Vips,
    checks: Vec<Checked>,
    changes: Vec<Change>,
    lab: ClusterLab,
}

impl Scenario<'_> {
    fn say(&mut self, text: &str) {
        self.say.say(text.trim_end_matches('\n'));
    }

    /// A new step, unless the narrator asks to stop.
    fn step(&mut self, text: &str) -> Result<(), Failure> {
        self.interrupted()?;
        self.say(&format!("\n{text}"));
        Ok(())
    }

    fn interrupted(&self) -> Result<(), Failure> {
        if self.say.interrupted() {
            return Err(Failure::new("interrupted"));
        }
        Ok(())
    }

    fn n(&self) -> usize {
        self.options.nodes
    }

    /// The lab's backend that is in no config: added live in steps 7 and 8.
    fn spare(&self) -> Result<&Backend, Failure> {
        self.lab
            .backends
            .get(BACKENDS)
            .ok_or_else(|| Failure::new("the lab has no fifth backend (NAT has none)"))
    }

    fn spare_name(&self) -> String {
        self.spare()
            .map_or_else(|_| "the fifth backend".to_owned(), |b| b.name.clone())
    }

    /// `lb <args>` on node i, told with its output; its output.
    fn show(&mut self, i: usize, args: &[&str]) -> Result<String, Failure> {
        let out = self.nodes[i].cli(args)?;
        self.say(&format!("$ [node{i}] lb {}\n{out}", args.join(" ")));
        Ok(out)
    }

    fn play(&mut self) -> Result<Report, Failure> {
        let n = self.n();
        let (seed_file, config) = self.files()?;
        self.backends()?;
        let leak_rules = if self.options.mode == Mode::Nat {
            Some(self.leak_counter()?)
        } else {
            None
        };
        self.start_nodes(&seed_file, &config)?;
        let all: Vec<usize> = (0..n).collect();
        let (fingerprints, fingerprint_with_one_more) = self.same_tables()?;

        self.step(
            "3. Traffic: each request is a new TCP connection from a new source port; the \
             router hashes it to a node, the node's Maglev table picks the backend.",
        )?;
        let serving = vec![NodeState::Serving; n];
        let mut rounds =
            vec![self.round(self.vips.http, &format!("{n} nodes announcing"), &serving)?];
        if let Some(http6) = self.vips.http6 {
            rounds.push(self.round(http6, &format!("{n} nodes announcing, IPv6"), &serving)?);
        }

        let drained = n - 1;
        let drain = self.drain(drained, &all)?;
        rounds.push(drain.round);

        let lost = n - 2;
        let (loss, round) = self.lose(lost)?;
        rounds.push(round);

        let (returned, stop, leaks) = if self.options.mode == Mode::Nat {
            let rules = leak_rules.unwrap_or_default();
            (None, None, Some(self.leaks(&rules)?))
        } else {
            let returned = self.come_back(lost, &config, &seed_file)?;
            self.add_during_drain(drained)?;
            self.change_during_restart(0, &config, &seed_file)?;
            (Some(returned), Some(self.stop(drained)?), None)
        };

        let report = Report {
            mode: self.options.mode,
            nodes: n,
            connections: self.options.connections,
            udp_flows: self.options.udp_flows,
            fingerprints,
            fingerprint_with_one_more,
            rounds,
            tcp_spread: drain.tcp_spread,
            udp_spread: drain.udp_spread,
            drained,
            withdraw: drain.withdraw,
            drained_packets: drain.packets,
            announce: drain.announce,
            loss,
            returned,
            stop,
            leaks,
            checks: self.checks.clone(),
            changes: self.changes.clone(),
        };
        self.summary(&report);
        Ok(report)
    }

    /// `requests` HTTP requests through `vip`: how they spread over the backends and, from
    /// the nodes' counters, over the nodes.
    fn round(
        &mut self,
        vip: SocketAddr,
        title: &str,
        states: &[NodeState],
    ) -> Result<Round, Failure> {
        self.interrupted()?;
        let requests = self.options.requests;
        let proto = "tcp";
        let counters = |nodes: &[LbNode]| {
            nodes
                .iter()
                .zip(states)
                .map(|(node, state)| {
                    if *state == NodeState::Lost {
                        return Ok((0, 0));
                    }
                    Ok((
                        node.vip_count(vip, proto, "new_flows")?,
                        node.counter("fwd_reply")?,
                    ))
                })
                .collect::<Result<Vec<_>, Failure>>()
        };
        let before = counters(&self.nodes)?;
        let answers: Vec<Result<String, String>> = self
            .lab
            .client
            .enter(|| (0..requests).map(|_| http_get(vip)).collect());
        let after = counters(&self.nodes)?;
        let mut backends: Vec<(String, usize)> = self.lab.backends[..BACKENDS]
            .iter()
            .map(|b| (b.name.clone(), 0))
            .collect();
        let mut failed = 0;
        for answer in answers {
            match answer
                .ok()
                .and_then(|name| backends.iter_mut().find(|(b, _)| *b == name))
            {
                Some((_, count)) => *count += 1,
                None => failed += 1,
            }
        }
        let nodes: Vec<NodeCount> = states
            .iter()
            .zip(before.iter().zip(&after))
            .map(|(state, (b, a))| NodeCount {
                state: *state,
                new_flows: a.0.saturating_sub(b.0),
                replies: a.1.saturating_sub(b.1),
            })
            .collect();
        let round = Round {
            title: title.to_owned(),
            vip,
            backends,
            failed,
            nodes,
        };
        self.tell_round(&round);
        Ok(round)
    }

    fn tell_round(&mut self, round: &Round) {
        let requests = self.options.requests;
        let nat = self.options.mode == Mode::Nat;
        let url = match round.vip {
            SocketAddr::V4(vip) => format!("http://{vip}/"),
            SocketAddr::V6(vip) => format!("http://[{}]:{}/", vip.ip(), vip.port()),
        };
        let mut lines = vec![
            String::new(),
            format!(
                "{}: {requests} HTTP requests from the client to {url}",
                round.title
            ),
        ];
        for (name, count) in &round.backends {
            let (percent, bar) = share(*count, requests);
            lines.push(format!("  {name:<10} {count:>4}  {percent}  {bar}"));
        }
        if round.failed > 0 {
            lines.push(format!("  failed     {:>4}", round.failed));
        }
        lines.push(format!(
            "  by node: new flows (NEW FLOWS of {}/tcp in `lb vip list`){}",
            round.vip,
            if nat {
                ", replies translated back to the VIP (fwd_reply in `lb stats`)"
            } else {
                ""
            }
        ));
        for (i, node) in round.nodes.iter().enumerate() {
            let name = format!("node{i}");
            if node.state == NodeState::Lost {
                lines.push(format!("  {name:<10}    -          lost"));
                continue;
            }
            let replies = if nat {
                format!("{:>5} replies  ", node.replies)
            } else {
                String::new()
            };
            let note = if node.state == NodeState::Drained {
                "(drained)"
            } else {
                ""
            };
            let new_flows = usize::try_from(node.new_flows).unwrap_or(usize::MAX);
            let (percent, bar) = share(new_flows, requests);
            lines.push(format!(
                "  {name:<10} {new_flows:>4}  {percent}  {replies}{bar}{note}"
            ));
        }
        if !nat {
            let replies: u64 = round.nodes.iter().map(|node| node.replies).sum();
            lines.push(format!(
                "  replies through the nodes: {replies} (fwd_reply in `lb stats`): the backends \
                 answer the client directly"
            ));
        }
        self.say(&lines.join("\n"));
    }

    /// Waits until the router's routes to the VIPs go exactly through `nodes`; tells the
    /// IPv4 route and how long it took from `since`, the moment of `what`.
    fn expect_routes(
        &mut self,
        nodes: &[usize],
        since: Instant,
        what: &str,
    ) -> Result<Duration, Failure> {
        let mut took = Duration::ZERO;
        for vip in self.vips.addresses() {
            let want: BTreeSet<IpAddr> =
                nodes.iter().map(|&i| node_addr(i, vip.is_ipv6())).collect();
            let waited = wait_until(CONVERGE, || {
                if self.say.interrupted() {
                    return Some(Err(Failure::new("interrupted")));
                }
                let have: BTreeSet<IpAddr> = self.lab.router_next_hops(vip).into_iter().collect();
                (have == want).then_some(Ok(()))
            });
            match waited {
                Ok((Ok(()), _)) => {}
                Ok((Err(e), _)) => return Err(e),
                Err(e) => {
                    return Err(Failure::new(format!(
                        "the router's route to {vip} should go through {} ({want:?}): {e}; it goes through {:?}",
                        names(nodes),
                        self.lab.router_next_hops(vip)
                    )));
                }
            }
            took = since.elapsed();
            let family = if vip.is_ipv6() { "-6" } else { "-4" };
            let router = self
                .lab
                .router
                .ip(&[family, "route", "show", &vip.to_string()]);
            self.say(&format!(
                "$ [router] ip {family} route show {vip}\n{router}=> {} next hop{} ({}), {:.0} ms after {what}",
                nodes.len(),
                if nodes.len() == 1 { "" } else { "s" },
                names(nodes),
                took.as_secs_f64() * 1000.0
            ));
        }
        Ok(took)
    }

    /// Asks every long-lived flow again after `event` (to node `node`); tells and records
    /// what broke.
    fn check(&mut self, after: Event, node: usize) -> Result<(), Failure> {
        self.interrupted()?;
        let flows = self
            .flows
            .as_mut()
            .ok_or_else(|| Failure::new("no long-lived flows to check"))?;
        let broken = flows.check();
        let (connections, udp) = (broken.tcp_asked, broken.udp_asked);
        let text = format!(
            "=> {} of {connections} long-lived connections and {} of {udp} UDP flows still \
             answered after {}, each by the backend it had{}",
            connections - broken.tcp,
            udp - broken.udp,
            after.describe(node),
            if broken.tcp + broken.udp > 0 {
                " (the others are closed: never asked again)"
            } else {
                ""
            }
        );
        let mut lines = vec![text];
        lines.extend(
            broken
                .named
                .iter()
                .map(|problem| format!("   BROKEN: {problem}")),
        );
        self.say(&lines.join("\n"));
        self.checks.push(Checked {
            after,
            node,
            tcp_broken: broken.tcp,
            udp_broken: broken.udp,
            tcp_asked: broken.tcp_asked,
            udp_asked: broken.udp_asked,
        });
        Ok(())
    }

    fn summary(&mut self, report: &Report) {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        let back = report
            .returned
            .as_ref()
            .map(|r| format!(", return {}", ms(r.back)))
            .unwrap_or_default();
        let changes: String = report
            .changes
            .iter()
            .filter_map(|change| {
                let check = report.check_after(change.after)?;
                Some(format!(
                    "\n  after {}: {} of {} connections and {} of {} UDP flows broken (node{} \
                     carried {} and {}; {} and {} reached a node without their entry)",
                    change.after.describe(change.node),
                    check.tcp_broken,
                    check.tcp_asked,
                    check.udp_broken,
                    check.udp_asked,
                    change.node,
                    change.carried_tcp,
                    change.carried_udp,
                    change.moved_tcp,
                    change.moved_udp
                ))
            })
            .collect();
        self.say(&format!(
            "\nSummary ({}): drain withdraw {}, resume announce {}, BFD loss {}{back}; failed \
             new connections during the loss {}/{}; flows broken or moved where none may {} \
             over {} checks{changes}",
            report.mode.name(),
            ms(report.withdraw),
            ms(report.announce),
            ms(report.loss.detection),
            report.loss.failed,
            report.loss.attempts,
            report.broken_against_promises(),
            report.checks.len()
        ));
    }

    /// How to look at the lab while it is up: a node whose daemon still runs.
    fn hint(&self) -> String {
        let live = self.nodes.iter().find(|node| node.serving());
        match live {
            Some(node) => format!(
                "\nThe lab stays up: try `LB_API={} lb vip list` ({}), or `lb status` with \
                 another node's socket in {}. Ctrl-C removes everything.",
                node.api.display(),
                node.name,
                self.lab.dir().display()
            ),
            None => "\nThe lab stays up. Ctrl-C removes everything.".to_owned(),
        }
    }
}

/// Every node's `lb run` arguments after its own files: the shared config and seed.
fn node_args(config: &Path, seed_file: &Path) -> Vec<String> {
    vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--hash-seed-file".to_owned(),
        seed_file.display().to_string(),
    ]
}

/// "the router's route has N next hop(s)".
fn next_hops(n: usize) -> String {
    format!(
        "the router's route has {n} next hop{}",
        if n == 1 { "" } else { "s" }
    )
}

fn names(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|i| format!("node{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `count` of `of` as a percentage (`" 33.3%"`) and a bar of 50 marks for all, both
/// rounded.
fn share(count: usize, of: usize) -> (String, String) {
    let of = of.max(1);
    let tenths = count.saturating_mul(2000).saturating_add(of) / (2 * of);
    let marks = count.saturating_mul(100).saturating_add(of) / (2 * of);
    (
        format!("{:>3}.{}%", tenths / 10, tenths % 10),
        "#".repeat(marks),
    )
}

/// 16 random hex digits, not all zero (lb refuses a zero seed).
pub fn random_seed() -> Result<String, Failure> {
    let mut urandom = std::fs::File::open("/dev/urandom")
        .map_err(|e| Failure::new(format!("opening /dev/urandom: {e}")))?;
    for _ in 0..16 {
        let mut bytes = [0u8; 8];
        urandom
            .read_exact(&mut bytes)
            .map_err(|e| Failure::new(format!("reading /dev/urandom: {e}")))?;
        let seed = u64::from_ne_bytes(bytes);
        if seed != 0 {
            return Ok(format!("{seed:016x}"));
        }
    }
    Err(Failure::new("/dev/urandom gave only zeros"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_percentages_and_bars_of_fifty() {
        assert_eq!(share(100, 300), (" 33.3%".to_owned(), "#".repeat(17)));
        assert_eq!(share(94, 300), (" 31.3%".to_owned(), "#".repeat(16)));
        assert_eq!(share(0, 300), ("  0.0%".to_owned(), String::new()));
        assert_eq!(share(300, 300), ("100.0%".to_owned(), "#".repeat(50)));
    }

    #[test]
    fn seeds_are_16_hex_digits() {
        let seed = random_seed().expect("seed");
        assert_eq!(seed.len(), 16);
        assert!(seed.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(seed, "0000000000000000");
    }

    #[test]
    fn every_vip_has_its_backends_in_the_config() {
        let vips = Vips::of(Mode::Nat);
        let services = vips.services();
        assert_eq!(services.len(), 4);
        assert_eq!(
            vips.addresses(),
            vec![IpAddr::from(VIP_V4), IpAddr::from(VIP_V6)]
        );
        let dsr = Vips::of(Mode::DsrIpip);
        assert!(
            dsr.services()
                .iter()
                .all(|(vip, _, port)| vip.port() == *port)
        );
    }
}
