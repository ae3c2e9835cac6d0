//! What one run of the scenario measured: counts and times, for a test to assert on, a
//! benchmark to tabulate and the demo to judge ([`Report::unmet`]).

use std::{net::SocketAddr, time::Duration};

use super::Mode;

/// An event after which every long-lived flow is asked again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `lb node drain`: the node withdraws its VIPs and serves what still arrives.
    Drain,
    /// A round of new connections while the node is drained.
    NewFlowsDuringDrain,
    /// `lb node resume`.
    Resume,
    /// The node's flow table flushed, so that it tracks what it carries now.
    Flush,
    /// The node lost: link down, its lb and its BIRD killed.
    Loss,
    /// The lost node's link and BIRD back, not its daemon: not announced.
    BackWithoutDaemon,
    /// Its daemon back (`--drained`, adopting its pins), then `lb node resume`.
    Back,
    /// `lb down` through the node's daemon.
    Down,
    /// The node's daemon stopped with SIGTERM: its datapath forwards on.
    Stopped,
    /// `lb down` on the node without a daemon.
    DownWithoutDaemon,
    /// Every node's flow table flushed and every flow asked again, so that each node tracks
    /// only the flows it carries now (before a backend change is measured).
    FlushEvery,
    /// At the same moment, a fifth backend added on every node and the node drained: the
    /// flows ECMP moves land on nodes that never tracked them, whose tables changed.
    BackendAddedDuringDrain,
    /// The backend added a moment ago removed again from every node.
    BackendRemoved,
    /// While the node is down (`lb down`: no datapath, no flow table), a fifth backend added
    /// on the others, which track every flow they carry.
    BackendAddedWhileDown,
    /// The node back (its daemon started, the backend added to it too, `lb node resume`):
    /// the flows ECMP brings back find a table that changed and no entry.
    BackendChangedDuringRestart,
}

impl Event {
    /// What happened to `node`, as a sentence says it after "after".
    pub fn describe(self, node: usize) -> String {
        match self {
            Self::Drain => format!("the drain of node{node}"),
            Self::NewFlowsDuringDrain => format!("new connections while node{node} is drained"),
            Self::Resume => format!("node{node}'s return to service"),
            Self::Flush => format!("flushing node{node}'s flow table"),
            Self::Loss => format!("the loss of node{node}"),
            Self::BackWithoutDaemon => format!("node{node}'s link back without its daemon"),
            Self::Back => format!("node{node}'s daemon back (adopting its pins) and resumed"),
            Self::Down => format!("`lb down` on node{node}"),
            Self::Stopped => format!("node{node}'s daemon stopped"),
            Self::DownWithoutDaemon => format!("`lb down` on node{node} without a daemon"),
            Self::FlushEvery => "flushing every node's flow table".to_owned(),
            Self::BackendAddedDuringDrain => {
                format!("a backend added on every node while node{node} is drained")
            }
            Self::BackendRemoved => "the added backend removed again".to_owned(),
            Self::BackendAddedWhileDown => {
                format!("a backend added on the other nodes while node{node} is down")
            }
            Self::BackendChangedDuringRestart => {
                format!("node{node}'s restart with the backend added")
            }
        }
    }

    /// Whether only a second chance keeps every flow across this event: a backend change
    /// while flows reach nodes that do not track them. Without one, what breaks here is a
    /// measurement, not a broken promise.
    pub fn needs_second_chance(self) -> bool {
        matches!(
            self,
            Self::BackendAddedDuringDrain | Self::BackendChangedDuringRestart
        )
    }
}

/// What one check of the long-lived flows found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub after: Event,
    /// The node the event happened to.
    pub node: usize,
    /// Connections and UDP flows that did not answer, or answered from another backend:
    /// closed then, and never asked again.
    pub tcp_broken: usize,
    pub udp_broken: usize,
    /// Connections and UDP flows asked (those open: none found broken before).
    pub tcp_asked: usize,
    pub udp_asked: usize,
}

/// A backend change while flows moved between nodes ([`Event::needs_second_chance`]): the
/// flows that reached a node that did not track them, the ones a second chance is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The event; its check is the one after it.
    pub after: Event,
    /// The node drained, or restarted.
    pub node: usize,
    /// Connections and UDP flows that node carried (tracked) just before.
    pub carried_tcp: usize,
    pub carried_udp: usize,
    /// Connections and UDP flows that some node tracked after the event and not just
    /// before it: the flows ECMP moved to a node without their entry. At most these can
    /// break.
    pub moved_tcp: usize,
    pub moved_udp: usize,
}

/// A node's part in a round of requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Announces the VIPs.
    Serving,
    /// Withdrawn by `lb node drain`, forwarding what still arrives.
    Drained,
    /// Gone: not asked.
    Lost,
}

/// What a node counted during a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeCount {
    pub state: NodeState,
    /// New flows of the round's VIP (`new_flows` in `lb vip list`); 0 for a lost node.
    pub new_flows: u64,
    /// Replies translated back to a VIP (`fwd_reply` in `lb stats`); 0 for a lost node.
    pub replies: u64,
}

/// A round of HTTP requests, each a new connection from a new source port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    pub title: String,
    pub vip: SocketAddr,
    /// Answers by backend name, every backend listed.
    pub backends: Vec<(String, usize)>,
    /// Requests that got no answer.
    pub failed: usize,
    /// By node.
    pub nodes: Vec<NodeCount>,
}

/// The loss of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    pub node: usize,
    /// Connections and UDP flows it carried (tracked) when it was lost.
    pub tcp: usize,
    pub udp: usize,
    /// From its link going down to the router's route without it.
    pub detection: Duration,
    /// Whether the router's session with it went down by BFD (not the BGP hold time).
    pub by_bfd: bool,
    /// New connections tried (one every 20 ms) while the router still sent flows to it, and
    /// how many failed to connect within [`super::PROBE_CONNECT`].
    pub attempts: usize,
    pub failed: usize,
}

/// The lost node's return (direct server return only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Return {
    /// Link and BIRD back, no daemon: whether its BIRD announced the VIP after a scan of
    /// its announce table, and the router's next hops then.
    pub announced_without_daemon: bool,
    pub next_hops_without_daemon: usize,
    /// Its daemon started with `--drained`: whether it said it is drained, whether its
    /// table's fingerprint is another node's, and the router's next hops then.
    pub drained_on_start: bool,
    pub same_fingerprint: bool,
    pub next_hops_while_drained: usize,
    /// From the restore to the route through every node (after `lb node resume`).
    pub back: Duration,
}

/// Nodes taken out of service (direct server return only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    /// `lb down` through a daemon said it withdrew the VIP.
    pub withdrew: bool,
    /// With three nodes or more, one more node: its daemon stopped (SIGTERM), then `lb down`.
    pub stopped: Option<Stopped>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// After the daemon stopped: whether the node's BIRD still announced the VIP after a
    /// scan of its announce table, and the router's next hops then.
    pub still_announced: bool,
    pub next_hops: usize,
    /// `lb down` without a daemon said it withdrew the VIP.
    pub withdrew: bool,
}

/// The router's counters of packets toward the client with a backend's source address
/// (IPv4, IPv6): replies that left a node untranslated (NAT only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaks {
    /// At the end of the events.
    pub before_canary: [u64; 2],
    /// Once one datagram from a backend's port that is no VIP's endpoint (which a node
    /// forwards as it is) crossed the router: the counter can see a leak.
    pub with_canary: [u64; 2],
}

/// Everything one run measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub mode: Mode,
    pub nodes: usize,
    /// Long-lived TCP connections and UDP flows, asked again at every check.
    pub connections: usize,
    pub udp_flows: usize,
    /// The Maglev table fingerprints of the who VIP on each node, and node0's with one
    /// more backend.
    pub fingerprints: Vec<String>,
    pub fingerprint_with_one_more: String,
    /// Every round of requests, in order.
    pub rounds: Vec<Round>,
    /// New flows per node when the long-lived connections and UDP flows opened.
    pub tcp_spread: Vec<u64>,
    pub udp_spread: Vec<u64>,
    /// The drained node, from `lb node drain` to the route without it, and the client
    /// packets it received while drained (a round of requests and a check of every flow).
    pub drained: usize,
    pub withdraw: Duration,
    pub drained_packets: u64,
    /// From `lb node resume` to the route through every node.
    pub announce: Duration,
    pub loss: Loss,
    pub returned: Option<Return>,
    pub stop: Option<Stop>,
    pub leaks: Option<Leaks>,
    /// Every check of the long-lived flows, in order.
    pub checks: Vec<Checked>,
    /// The backend changes while flows moved (direct server return only).
    pub changes: Vec<Change>,
}

impl Report {
    /// The check after `event`, if there was one.
    pub fn check_after(&self, event: Event) -> Option<&Checked> {
        self.checks.iter().find(|c| c.after == event)
    }

    /// Flows broken or moved where the scenario promises none ([`Report::unmet`] names
    /// them), over every check.
    pub fn broken_against_promises(&self) -> usize {
        self.checks.iter().map(|c| self.broken_promises(c)).sum()
    }

    /// The change measured at the check after `event`, if there was one.
    pub fn change_after(&self, event: Event) -> Option<&Change> {
        self.changes.iter().find(|c| c.after == event)
    }

    /// The flows broken at `check` that break a promise: every one, but at a backend
    /// change while flows move, where a mode with a second chance promises its connections
    /// (a UDP flow has no SYN to tell a new flow from a moved one) and a mode without one
    /// promises nothing: there the counts are what is measured.
    fn broken_promises(&self, check: &Checked) -> usize {
        match (check.after.needs_second_chance(), self.mode.second_chance()) {
            (false, _) => check.tcp_broken + check.udp_broken,
            (true, true) => check.tcp_broken,
            (true, false) => 0,
        }
    }

    /// What the scenario promises and this run did not keep, one line each: no flow
    /// broken or moved (at a backend change while flows move, only with a second chance),
    /// no request failed, a drained node gets no new flow and no packet
    /// while every serving node gets new flows, no reply crosses a node in direct server
    /// return (and none leaves one untranslated in NAT), BFD notices a lost node, a node
    /// comes back only once its daemon does, `lb down` withdraws first.
    pub fn unmet(&self) -> Vec<String> {
        let mut unmet = Vec::new();
        for check in &self.checks {
            if self.broken_promises(check) > 0 {
                unmet.push(format!(
                    "after {}: {} connections and {} UDP flows broken or moved",
                    check.after.describe(check.node),
                    check.tcp_broken,
                    check.udp_broken
                ));
            }
        }
        for round in &self.rounds {
            self.unmet_in(round, &mut unmet);
        }
        if self.drained_packets > 0 {
            unmet.push(format!(
                "drained node{} received {} client packets",
                self.drained, self.drained_packets
            ));
        }
        if !self.loss.by_bfd {
            unmet.push(format!(
                "the router dropped lost node{} after {:?}, but not by BFD",
                self.loss.node, self.loss.detection
            ));
        }
        if let Some(back) = &self.returned {
            let lost = self.loss.node;
            if back.announced_without_daemon || back.next_hops_without_daemon != self.nodes - 1 {
                unmet.push(format!(
                    "node{lost} was announced without a daemon to resolve its next hops"
                ));
            }
            if !back.drained_on_start || back.next_hops_while_drained != self.nodes - 1 {
                unmet.push(format!(
                    "node{lost} started with --drained but was announced"
                ));
            }
            if !back.same_fingerprint {
                unmet.push(format!("node{lost}'s table differs after its return"));
            }
        }
        if let Some(stop) = &self.stop {
            if !stop.withdrew {
                unmet.push("`lb down` did not say it withdrew the VIP".to_owned());
            }
            if let Some(stopped) = &stop.stopped {
                if !stopped.still_announced {
                    unmet.push("a stopped daemon's VIP was withdrawn".to_owned());
                }
                if !stopped.withdrew {
                    unmet.push("`lb down` without a daemon did not withdraw the VIP".to_owned());
                }
            }
        }
        if let Some(leaks) = &self.leaks {
            if leaks.before_canary != [0, 0] || leaks.with_canary != [1, 0] {
                unmet.push(format!(
                    "packets with a backend's source toward the client (IPv4, IPv6): {:?}, {:?} with the canary (expected [0, 0] and [1, 0])",
                    leaks.before_canary, leaks.with_canary
                ));
            }
        }
        unmet
    }

    fn unmet_in(&self, round: &Round, unmet: &mut Vec<String>) {
        if round.failed > 0 {
            unmet.push(format!("{}: {} requests failed", round.title, round.failed));
        }
        for (i, node) in round.nodes.iter().enumerate() {
            match node.state {
                NodeState::Drained if node.new_flows > 0 => unmet.push(format!(
                    "{}: node{i} is drained but took {} new flows",
                    round.title, node.new_flows
                )),
                NodeState::Serving if node.new_flows == 0 => unmet.push(format!(
                    "{}: node{i} announces the VIP but took no new flow",
                    round.title
                )),
                _ => {}
            }
            if self.mode != Mode::Nat && node.replies > 0 {
                unmet.push(format!(
                    "{}: {} replies crossed node{i} in direct server return",
                    round.title, node.replies
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;

    /// A run of three nodes in direct server return that kept every promise.
    fn kept() -> Report {
        let count = |state, new_flows| NodeCount {
            state,
            new_flows,
            replies: 0,
        };
        Report {
            mode: Mode::DsrIpip,
            nodes: 3,
            connections: 200,
            udp_flows: 100,
            fingerprints: vec!["a".to_owned(); 3],
            fingerprint_with_one_more: "b".to_owned(),
            rounds: vec![Round {
                title: "node2 drained".to_owned(),
                vip: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 80),
                backends: vec![("backend-1".to_owned(), 300)],
                failed: 0,
                nodes: vec![
                    count(NodeState::Serving, 150),
                    count(NodeState::Serving, 150),
                    count(NodeState::Drained, 0),
                ],
            }],
            tcp_spread: vec![100; 3],
            udp_spread: vec![100; 3],
            drained: 2,
            withdraw: Duration::from_millis(20),
            drained_packets: 0,
            announce: Duration::from_millis(20),
            loss: Loss {
                node: 1,
                tcp: 100,
                udp: 100,
                detection: Duration::from_millis(300),
                by_bfd: true,
                attempts: 10,
                failed: 3,
            },
            returned: Some(Return {
                announced_without_daemon: false,
                next_hops_without_daemon: 2,
                drained_on_start: true,
                same_fingerprint: true,
                next_hops_while_drained: 2,
                back: Duration::from_secs(2),
            }),
            stop: Some(Stop {
                withdrew: true,
                stopped: Some(Stopped {
                    still_announced: true,
                    next_hops: 2,
                    withdrew: true,
                }),
            }),
            leaks: None,
            checks: vec![Checked {
                after: Event::Loss,
                node: 1,
                tcp_broken: 0,
                udp_broken: 0,
                tcp_asked: 200,
                udp_asked: 100,
            }],
            changes: Vec::new(),
        }
    }

    #[test]
    fn flows_broken_by_a_backend_change_break_no_promise_without_a_second_chance() {
        let mut report = kept();
        let broken = |after| Checked {
            after,
            node: 2,
            tcp_broken: 20,
            udp_broken: 10,
            tcp_asked: 200,
            udp_asked: 100,
        };
        report.checks = vec![
            broken(Event::BackendAddedDuringDrain),
            broken(Event::BackendChangedDuringRestart),
        ];
        assert!(!report.mode.second_chance());
        assert_eq!(report.unmet(), Vec::<String>::new());
        report.checks.push(broken(Event::BackendAddedWhileDown));
        let unmet = report.unmet();
        assert!(
            unmet.len() == 1 && unmet[0].contains("20 connections and 10 UDP flows"),
            "{unmet:?}"
        );
    }

    #[test]
    fn a_run_that_kept_its_promises_has_nothing_unmet() {
        assert_eq!(kept().unmet(), Vec::<String>::new());
    }

    #[test]
    fn each_broken_promise_is_one_line() {
        type Fault = fn(&mut Report);
        let faults: [(&str, Fault); 9] = [
            ("broken", |r| r.checks[0].udp_broken = 1),
            ("requests failed", |r| r.rounds[0].failed = 1),
            ("drained but took", |r| r.rounds[0].nodes[2].new_flows = 1),
            ("took no new flow", |r| r.rounds[0].nodes[0].new_flows = 0),
            ("replies crossed", |r| r.rounds[0].nodes[1].replies = 1),
            ("client packets", |r| r.drained_packets = 1),
            ("not by BFD", |r| r.loss.by_bfd = false),
            ("without a daemon to resolve", |r| {
                if let Some(back) = r.returned.as_mut() {
                    back.announced_without_daemon = true;
                }
            }),
            ("did not say it withdrew", |r| {
                if let Some(stop) = r.stop.as_mut() {
                    stop.withdrew = false;
                }
            }),
        ];
        for (what, fault) in faults {
            let mut report = kept();
            fault(&mut report);
            let unmet = report.unmet();
            assert!(
                unmet.len() == 1 && unmet[0].contains(what),
                "{what}: {unmet:?}"
            );
        }
        let mut nat = kept();
        nat.mode = Mode::Nat;
        nat.rounds[0].nodes[1].replies = 1;
        nat.leaks = Some(Leaks {
            before_canary: [0, 1],
            with_canary: [1, 1],
        });
        let unmet = nat.unmet();
        assert!(
            unmet.len() == 1 && unmet[0].contains("backend's source"),
            "{unmet:?}"
        );
    }
}
