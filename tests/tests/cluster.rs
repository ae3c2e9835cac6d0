//! Several lb nodes behind ECMP with BIRD: the multi-node scenario of `lb_lab::scenario`
//! (the one `cargo xtask run --nodes 3` tells and `cargo xtask bench` times), with three
//! nodes in dsr-ipip and in NAT. The scenario fails on its own when a step cannot be done
//! (a route that does not converge, nodes whose tables differ); here, what it measured is
//! checked: no flow broke or moved at any event, and each event did what it promises. The
//! exceptions are the backend changes while flows move between nodes ([`MEASURED`], issue
//! 31): without a second chance they break flows, and their counts are printed (`cluster:
//! measured`), bounded, and only in a mode with a second chance must they be 0.

use std::time::Duration;

use lb_lab::{
    cluster::BFD_DETECTION,
    scenario::{self, Event, Mode, NodeState, Options, Report, Stderr},
};
use lb_tests::process::lb_binary;

const NODES: usize = 3;
/// Every check of the scenario in direct server return, in order; the first
/// [`IN_BOTH_MODES`] happen in NAT too.
const EVENTS: [Event; 19] = [
    Event::Drain,
    Event::NewFlowsDuringDrain,
    Event::Resume,
    Event::Flush,
    Event::Loss,
    Event::BackWithoutDaemon,
    Event::Back,
    // A backend added during a drain.
    Event::FlushEvery,
    Event::BackendAddedDuringDrain,
    Event::Resume,
    Event::BackendRemoved,
    // A backend added during a restart with `lb down`.
    Event::FlushEvery,
    Event::Down,
    Event::BackendAddedWhileDown,
    Event::BackendChangedDuringRestart,
    Event::BackendRemoved,
    Event::Down,
    Event::Stopped,
    Event::DownWithoutDaemon,
];
const IN_BOTH_MODES: usize = 5;
/// The events after which flows break unless the mode has a second chance: a backend
/// changed while ECMP moves flows to nodes that do not track them.
const MEASURED: [Event; 2] = [
    Event::BackendAddedDuringDrain,
    Event::BackendChangedDuringRestart,
];
const SEED: &str = "c0ffee00d15ea5e5";
/// On top of BFD's detection (what README promises for a lost node, "in about 300 ms"):
/// the router's BIRD writing its kernel route, and the polling of it (a few tens of ms
/// each) on a loaded 2-CPU machine.
const BFD_MARGIN: Duration = Duration::from_millis(500);

fn run(mode: Mode, prefix: &str) -> Report {
    let mut options = Options::new(&lb_binary(), mode, NODES, prefix);
    options.hash_seed = Some(SEED.to_owned());
    scenario::run(&options, &mut Stderr("cluster: ")).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether `mode` promises to keep every connection across the [`MEASURED`] events (issue
/// 31's second chance): a mode that has one is a line here.
fn second_chance_expected(mode: Mode) -> bool {
    match mode {
        Mode::Nat | Mode::DsrIpip | Mode::DsrL2 => false,
        Mode::DsrGue => true,
    }
}

/// The flows were checked after each of `events`, in that order, and no check found one
/// broken or moved, but after the [`MEASURED`] events.
fn assert_no_flow_broke(report: &Report, events: &[Event]) {
    let checked: Vec<Event> = report.checks.iter().map(|c| c.after).collect();
    assert_eq!(checked, events, "{:?}", report.checks);
    let broken: Vec<_> = report
        .checks
        .iter()
        .filter(|c| !MEASURED.contains(&c.after) && c.tcp_broken + c.udp_broken > 0)
        .collect();
    assert!(broken.is_empty(), "flows broke or moved: {broken:?}");
}

/// A flow found broken is counted once: every check asks the flows the one before left
/// open, but after [`Event::FlushEvery`], which first replaces those closed (and the first
/// check asks every flow).
fn assert_broken_flows_counted_once(report: &Report) {
    let mut open = (report.connections, report.udp_flows);
    for check in &report.checks {
        if check.after == Event::FlushEvery {
            open = (report.connections, report.udp_flows);
        }
        assert_eq!(
            (check.tcp_asked, check.udp_asked),
            open,
            "{check:?} in {:?}",
            report.checks
        );
        open = (
            open.0 - check.tcp_broken.min(open.0),
            open.1 - check.udp_broken.min(open.1),
        );
    }
}

/// Each [`MEASURED`] event (printed): every flow asked, the node it was about carried some,
/// flows reached nodes that did not track them, and no more broke than those. With a
/// second chance no connection broke; without one some did (a fifth backend takes about a
/// fifth of the Maglev slots, and 60 connections or more move: none on a changed slot has
/// odds of about one in a million; seven runs broke 12 to 21).
fn assert_measured(report: &Report) {
    let mode = report.mode;
    for event in MEASURED {
        let check = report
            .check_after(event)
            .unwrap_or_else(|| panic!("no check after {event:?}: {:?}", report.checks));
        let change = report
            .change_after(event)
            .unwrap_or_else(|| panic!("no change measured at {event:?}: {:?}", report.changes));
        eprintln!(
            "cluster: measured ({}) {event:?} on node{}: {} of {} connections and {} of {} UDP \
             flows broken; node{} carried {} and {}; {} and {} reached a node without their entry",
            mode.name(),
            change.node,
            check.tcp_broken,
            check.tcp_asked,
            check.udp_broken,
            check.udp_asked,
            change.node,
            change.carried_tcp,
            change.carried_udp,
            change.moved_tcp,
            change.moved_udp
        );
        assert_eq!(
            (check.tcp_asked, check.udp_asked),
            (report.connections, report.udp_flows),
            "{check:?}"
        );
        assert!(
            change.carried_tcp > 0 && change.carried_udp > 0,
            "{change:?}"
        );
        assert!(change.moved_tcp > 0 && change.moved_udp > 0, "{change:?}");
        assert!(
            check.tcp_broken <= change.moved_tcp && check.udp_broken <= change.moved_udp,
            "more flows broke than moved: {check:?}, {change:?}"
        );
        if second_chance_expected(mode) {
            assert_eq!(check.tcp_broken, 0, "{check:?}, {change:?}");
        } else {
            assert!(check.tcp_broken > 0, "{check:?}, {change:?}");
        }
    }
}

/// The same table on every node, another with one more backend; the long-lived flows
/// spread over every node; every request answered, none on the drained node, some on each
/// serving one; the drained node got no packet; BFD took the lost node out in time, and the
/// flows it carried were among those checked.
fn assert_common(report: &Report) {
    let prints = &report.fingerprints;
    assert!(
        prints.len() == NODES && prints.iter().all(|p| *p == prints[0] && p.len() == 16),
        "{prints:?}"
    );
    assert_ne!(report.fingerprint_with_one_more, prints[0]);
    // Each node gets a third of the flows by ECMP's hash: with 100 UDP flows, a node with a
    // tenth or less comes once in about 6 million runs (a sixth or less: once in 4,000).
    let tenth = |flows: usize| u64::try_from(flows / 10).unwrap_or(u64::MAX);
    for (spread, flows) in [
        (&report.tcp_spread, report.connections),
        (&report.udp_spread, report.udp_flows),
    ] {
        assert_eq!(spread.len(), NODES);
        assert!(
            spread.iter().all(|share| *share > tenth(flows)),
            "uneven: TCP {:?}, UDP {:?}",
            report.tcp_spread,
            report.udp_spread
        );
    }
    assert!(report.rounds.len() >= 3, "{:?}", report.rounds);
    for round in &report.rounds {
        assert_eq!(round.failed, 0, "{round:?}");
        for (i, node) in round.nodes.iter().enumerate() {
            match node.state {
                NodeState::Drained => assert_eq!(node.new_flows, 0, "node{i}: {round:?}"),
                NodeState::Serving => assert!(node.new_flows > 0, "node{i}: {round:?}"),
                NodeState::Lost => {}
            }
        }
    }
    assert_eq!(
        report.drained_packets, 0,
        "the drained node still received packets"
    );
    let loss = &report.loss;
    assert!(loss.by_bfd, "not by BFD: {loss:?}");
    assert!(
        loss.detection < BFD_DETECTION + BFD_MARGIN,
        "the router took {:?} to drop a lost node; BFD promises about {BFD_DETECTION:?} (README), with a margin of {BFD_MARGIN:?}",
        loss.detection
    );
    assert!(
        loss.tcp > 0 && loss.udp > 0,
        "the lost node carried no flow: {loss:?}"
    );
    // And what the demo judges a run by (the same counts, said as sentences).
    assert_eq!(report.unmet(), Vec::<String>::new());
}

#[test]
fn dsr_nodes_spread_drain_lose_and_regain_flows_and_measure_backend_changes() {
    lb_tests::require_root!();
    assert_direct_server_return(Mode::DsrIpip, "lbc");
}

/// The same in dsr-gue: no TCP connection broken by either backend change.
#[test]
fn dsr_gue_nodes_keep_every_connection_across_backend_changes() {
    lb_tests::require_root!();
    assert_direct_server_return(Mode::DsrGue, "lbg");
}

/// The scenario in a direct server return `mode`, with namespaces named from `prefix`:
/// what each event promises, and the [`MEASURED`] counts as [`second_chance_expected`]
/// says.
fn assert_direct_server_return(mode: Mode, prefix: &str) {
    let report = run(mode, prefix);
    assert_no_flow_broke(&report, &EVENTS);
    assert_broken_flows_counted_once(&report);
    assert_measured(&report);
    assert_common(&report);
    for round in &report.rounds {
        assert!(
            round.nodes.iter().all(|node| node.replies == 0),
            "replies crossed a node in direct server return: {round:?}"
        );
    }
    // Back without its daemon: not announced (its next hops are not resolved); back with
    // it, drained and with the others' table, until `lb node resume`.
    let back = report.returned.as_ref().expect("the lost node returned");
    assert!(!back.announced_without_daemon, "{back:?}");
    assert_eq!(back.next_hops_without_daemon, NODES - 1, "{back:?}");
    assert!(back.drained_on_start && back.same_fingerprint, "{back:?}");
    assert_eq!(back.next_hops_while_drained, NODES - 1, "{back:?}");
    // `lb down` withdraws before it detaches; a stopped daemon's VIPs stay announced while
    // its datapath forwards, and `lb down` without it still withdraws them.
    let stop = report.stop.as_ref().expect("nodes were stopped");
    assert!(stop.withdrew, "{stop:?}");
    let stopped = stop.stopped.as_ref().expect("a daemon was stopped");
    assert!(stopped.still_announced, "{stopped:?}");
    assert_eq!(stopped.next_hops, NODES - 1, "{stopped:?}");
    assert!(stopped.withdrew, "{stopped:?}");
}

#[test]
fn nat_nodes_translate_every_reply_whichever_node_it_reaches() {
    lb_tests::require_root!();
    let report = run(Mode::Nat, "lbn");
    assert_no_flow_broke(&report, &EVENTS[..IN_BOTH_MODES]);
    assert!(report.changes.is_empty(), "{:?}", report.changes);
    assert_common(&report);
    // Replies come back through any node (the backends' route is multipath over them):
    // with every node serving, each translated some, over IPv4 and IPv6.
    for round in report.rounds.iter().take(2) {
        assert!(round.nodes.iter().all(|node| node.replies > 0), "{round:?}");
    }
    assert!(report.rounds[1].vip.is_ipv6(), "{:?}", report.rounds[1]);
    // Nothing reached the client with a backend's address but the canary that shows the
    // counter counts.
    let leaks = report.leaks.as_ref().expect("the leak counters were read");
    assert_eq!(leaks.before_canary, [0, 0], "{leaks:?}");
    assert_eq!(leaks.with_canary, [1, 0], "{leaks:?}");
}
