//! `cargo xtask bench`'s cluster section: the scenarios of `tests/tests/cluster.rs`
//! (`lb_tests::cluster`) run again, a few rounds each, for how long each event takes to
//! reach the router and what it costs in connections. Prints one markdown section.
//! `--quick` runs one round of each.

use std::time::Duration;

use lb_tests::cluster::{
    CONNECTIONS, Checked, FLOWS, NODES, PROBE_CONNECT, dsr_events, nat_events,
};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `median (min–max)` of some milliseconds.
fn summary(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    let (min, max) = (values[0], values[values.len() - 1]);
    if values.len() == 1 {
        format!("{median:.0}")
    } else {
        format!("{median:.0} ({min:.0}–{max:.0})")
    }
}

/// Connections and UDP flows broken or moved at the checks after `events` (by the names
/// the scenario gives them), summed over every round. Panics if a round did not check
/// after one of them: the report must count, not assume.
fn broken(rounds: &[&[Checked]], events: &[&str]) -> Broken {
    let mut sum = Broken {
        tcp: 0,
        udp: 0,
        checks: 0,
    };
    for (round, checks) in rounds.iter().enumerate() {
        for event in events {
            let check = checks
                .iter()
                .find(|c| c.after == *event)
                .unwrap_or_else(|| panic!("round {round}: no check after {event:?}: {checks:?}"));
            sum.tcp += check.tcp_broken;
            sum.udp += check.udp_broken;
            sum.checks += 1;
        }
    }
    sum
}

/// Connections and UDP flows found broken or moved, over how many checks of all of them.
#[derive(Clone, Copy)]
struct Broken {
    tcp: usize,
    udp: usize,
    checks: usize,
}

/// A [`Broken`] as the table shows it: `tcp + udp of CONNECTIONS + FLOWS`, times the checks.
fn shown(b: Broken) -> String {
    format!(
        "{} + {} of {} + {} ({} check(s))",
        b.tcp,
        b.udp,
        CONNECTIONS * b.checks,
        FLOWS * b.checks,
        b.checks
    )
}

fn main() {
    if !lb_tests::root::is_root() {
        eprintln!("cluster bench: needs root (namespaces, XDP, BIRD); skipped");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 3 };
    let dsr: Vec<_> = (0..rounds)
        .map(|round| dsr_events(&format!("lbbc{round}")))
        .collect();
    let nat: Vec<_> = (0..rounds)
        .map(|round| nat_events(&format!("lbbn{round}")))
        .collect();
    let each = |f: &dyn Fn(&lb_tests::cluster::DsrEvents) -> Duration| -> String {
        summary(dsr.iter().map(|e| ms(f(e))).collect())
    };
    let attempts: usize = dsr.iter().map(|e| e.attempts).sum();
    let failed: usize = dsr.iter().map(|e| e.failed).sum();
    let lost_tcp: usize = dsr.iter().map(|e| e.lost_tcp).sum();
    let lost_udp: usize = dsr.iter().map(|e| e.lost_udp).sum();
    let nat_loss = summary(nat.iter().map(|e| ms(e.detection)).collect());
    let dsr_checks: Vec<&[Checked]> = dsr.iter().map(|e| e.checks.as_slice()).collect();
    let nat_checks: Vec<&[Checked]> = nat.iter().map(|e| e.checks.as_slice()).collect();
    let drain = broken(
        &dsr_checks,
        &["node0's drain", "new connections during the drain"],
    );
    let resume = broken(&dsr_checks, &["node0's return"]);
    let loss = broken(&dsr_checks, &["node2's loss"]);
    let back = broken(
        &dsr_checks,
        &[
            "node2's link back without its daemon (not announced)",
            "node2's daemon restarted (adopting its pins)",
        ],
    );
    let nat_lost = broken(&nat_checks, &["a NAT node's loss"]);
    let every: usize = [drain, resume, loss, back, nat_lost]
        .iter()
        .map(|b| b.tcp + b.udp)
        .sum();
    println!(
        "## Several lb nodes: convergence and broken connections per event\n\n\
         {NODES} lb nodes in namespaces, each with its own BIRD 2 announcing its VIPs (learned \
         from `--announce-table 4242`) over eBGP with BFD (100 ms × 3) to a router that \
         installs one multipath route and hashes flows by layer 4; {CONNECTIONS} long-lived \
         TCP connections and {FLOWS} UDP flows, opened once and asked again after every event \
         (`tests/tests/cluster.rs`, the same scenarios). Times in ms from the event to the \
         router's route changing, median (min–max) of {rounds} round(s); a lost node has its \
         link taken down and its daemon and BIRD killed, so only BFD can tell.\n"
    );
    println!(
        "| event (dsr-ipip) | router converged (ms) | connections + UDP flows broken or moved |"
    );
    println!("|---|---:|---|");
    println!(
        "| `lb node drain` (withdraw) | {} | {} (the drained node serves what still arrives) |",
        each(&|e| e.withdraw),
        shown(drain)
    );
    println!(
        "| `lb node resume` (announce) | {} | {} |",
        each(&|e| e.announce),
        shown(resume)
    );
    println!(
        "| node lost (BFD) | {} | {}: the {lost_tcp} connections and {lost_udp} UDP flows it carried (all rounds) continued on the survivors, same backends |",
        each(&|e| e.detection),
        shown(loss)
    );
    println!(
        "| node back (link, BIRD, then `lb run --drained` adopting its pins, fingerprints compared, `lb node resume`) | {} | {} |",
        each(&|e| e.back),
        shown(back)
    );
    println!(
        "| node lost, NAT (replies through the nodes) | {nat_loss} | {} (the backends' route drops the node too) |",
        shown(nat_lost)
    );
    println!(
        "\nWhile the router still sent flows to a lost node, {failed} of {attempts} new \
         connections (one every 20 ms, all rounds) failed to connect within \
         {PROBE_CONNECT:?}: those ECMP sent to the lost node before the router dropped it. \
         Without BFD that window is the BGP hold time (3 s here, 90–240 s at common \
         defaults). A returning node's time is mostly its daemon's start (loading and \
         verifying the program, ~3.5 s)."
    );
    if every > 0 {
        eprintln!("cluster bench: {every} connections or flows broke or moved (see the table)");
        std::process::exit(1);
    }
}
