//! Several lb nodes behind ECMP with BIRD: the scenarios of `lb_tests::cluster` (see
//! there), each of which fails the test when a connection breaks, moves to another backend
//! or a reply leaks; here, what they measured is checked too.

use lb_tests::cluster::{BFD_DETECTION, BFD_MARGIN, Checked, NODES, dsr_events, nat_events};

/// Every check counted no broken or moved flow, and there were checks.
fn assert_no_flow_broke(checks: &[Checked]) {
    assert!(
        !checks.is_empty(),
        "the scenario checked its flows at no event"
    );
    let broken: Vec<&Checked> = checks
        .iter()
        .filter(|c| c.tcp_broken + c.udp_broken > 0)
        .collect();
    assert!(broken.is_empty(), "flows broke: {broken:?}");
}

#[test]
fn dsr_nodes_spread_drain_lose_and_regain_flows_without_breaking_one() {
    lb_tests::require_root!();
    let events = dsr_events("lbc");
    assert!(
        events.detection < BFD_DETECTION + BFD_MARGIN,
        "the router took {:?} to drop a lost node; BFD promises about {BFD_DETECTION:?} (README), with a margin of {BFD_MARGIN:?}",
        events.detection
    );
    assert_no_flow_broke(&events.checks);
    assert!(
        events.lost_tcp > 0 && events.lost_udp > 0,
        "the lost node carried no flow: {events:?}"
    );
    assert_eq!(events.tcp_spread.len(), NODES);
}

#[test]
fn nat_nodes_translate_every_reply_whichever_node_it_reaches() {
    lb_tests::require_root!();
    let events = nat_events("lbn");
    assert_no_flow_broke(&events.checks);
    assert!(
        events.requests.iter().all(|r| *r > 0) && events.replies.iter().all(|r| *r > 0),
        "requests and replies must reach every node: {events:?}"
    );
}
