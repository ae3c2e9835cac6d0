//! Several lb nodes behind ECMP with BIRD: the scenarios of `lb_tests::cluster` (see
//! there), each of which fails the test when a connection breaks, moves to another backend
//! or a reply leaks; here, what they measured is checked too.

use std::time::Duration;

use lb_tests::cluster::{NODES, dsr_events, nat_events};

#[test]
fn dsr_nodes_spread_drain_lose_and_regain_flows_without_breaking_one() {
    lb_tests::require_root!();
    let events = dsr_events("lbc");
    assert!(
        events.detection < Duration::from_secs(3),
        "the router took {:?} to drop a lost node, longer than the BGP hold time: BFD did not act",
        events.detection
    );
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
    assert!(
        events.requests.iter().all(|r| *r > 0) && events.replies.iter().all(|r| *r > 0),
        "requests and replies must reach every node: {events:?}"
    );
}
