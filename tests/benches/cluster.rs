//! `cargo xtask bench`'s cluster section: the multi-node scenario of `lb_lab::scenario`
//! (the one `tests/tests/cluster.rs` checks and `cargo xtask run --nodes 3` tells) run
//! again, a few rounds in each mode, for how long each event takes to reach the router and
//! how many connections and flows it broke, as counted at the checks after it. Prints one
//! markdown section. `--quick` runs one round of each.

use std::time::Duration;

use lb_lab::scenario::{self, Event, Mode, Narrator, Options, PROBE_CONNECT, Report};

const NODES: usize = 3;

/// Progress on stderr: each run's summary line, not its whole story (the test tells that).
struct Summaries;

impl Narrator for Summaries {
    fn say(&mut self, text: &str) {
        for line in text.lines().filter(|line| line.starts_with("Summary")) {
            eprintln!("cluster bench: {line}");
        }
    }
}

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

/// Connections and UDP flows broken or moved at the checks after `events`, summed over
/// every round, of those asked there. Panics if a round did not check after one of them: the report must count,
/// not assume.
fn broken(rounds: &[Report], events: &[Event]) -> Broken {
    let mut sum = Broken {
        tcp: 0,
        udp: 0,
        checks: 0,
        connections: 0,
        flows: 0,
    };
    for (round, report) in rounds.iter().enumerate() {
        for event in events {
            let check = report.check_after(*event).unwrap_or_else(|| {
                panic!(
                    "round {round}: no check after {event:?}: {:?}",
                    report.checks
                )
            });
            sum.tcp += check.tcp_broken;
            sum.udp += check.udp_broken;
            sum.checks += 1;
            sum.connections += check.tcp_asked;
            sum.flows += check.udp_asked;
        }
    }
    sum
}

/// Connections and UDP flows found broken or moved, over how many checks of those open.
#[derive(Clone, Copy)]
struct Broken {
    tcp: usize,
    udp: usize,
    checks: usize,
    /// Connections and UDP flows asked, over every check.
    connections: usize,
    flows: usize,
}

/// A [`Broken`] as the table shows it: `tcp + udp of connections + flows (checks)`.
fn shown(b: Broken) -> String {
    format!(
        "{} + {} of {} + {} ({} check(s))",
        b.tcp, b.udp, b.connections, b.flows, b.checks
    )
}

/// `rounds` runs of the scenario in `mode`, each in namespaces of its own.
fn runs(mode: Mode, rounds: usize, prefix: &str) -> Vec<Report> {
    (0..rounds)
        .map(|round| {
            let options = Options::new(
                &lb_tests::process::lb_binary(),
                mode,
                NODES,
                &format!("{prefix}{round}"),
            );
            scenario::run(&options, &mut Summaries)
                .unwrap_or_else(|e| panic!("{} round {round}: {e}", mode.name()))
        })
        .collect()
}

fn main() {
    if !lb_tests::root::is_root() {
        eprintln!("cluster bench: needs root (namespaces, XDP, BIRD); skipped");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 3 };
    let dsr = runs(Mode::DsrIpip, rounds, "lbbc");
    let nat = runs(Mode::Nat, rounds, "lbbn");
    let each = |f: &dyn Fn(&Report) -> Duration| -> String {
        summary(dsr.iter().map(|e| ms(f(e))).collect())
    };
    let attempts: usize = dsr.iter().map(|e| e.loss.attempts).sum();
    let failed: usize = dsr.iter().map(|e| e.loss.failed).sum();
    let lost_tcp: usize = dsr.iter().map(|e| e.loss.tcp).sum();
    let lost_udp: usize = dsr.iter().map(|e| e.loss.udp).sum();
    let nat_loss = summary(nat.iter().map(|e| ms(e.loss.detection)).collect());
    let drain = broken(&dsr, &[Event::Drain, Event::NewFlowsDuringDrain]);
    let resume = broken(&dsr, &[Event::Resume]);
    let loss = broken(&dsr, &[Event::Loss]);
    let back = broken(&dsr, &[Event::BackWithoutDaemon, Event::Back]);
    let nat_lost = broken(&nat, &[Event::Loss]);
    // Measurements, not promises: lb has no second chance (issue 31).
    let added_during_drain = broken(&dsr, &[Event::BackendAddedDuringDrain]);
    let changed_during_restart = broken(&dsr, &[Event::BackendChangedDuringRestart]);
    let moved = |event: Event| -> (usize, usize) {
        dsr.iter()
            .filter_map(|report| report.change_after(event))
            .fold((0, 0), |(tcp, udp), c| {
                (tcp + c.moved_tcp, udp + c.moved_udp)
            })
    };
    let every: usize = [drain, resume, loss, back, nat_lost]
        .iter()
        .map(|b| b.tcp + b.udp)
        .sum();
    let (connections, flows) = (dsr[0].connections, dsr[0].udp_flows);
    println!(
        "## Several lb nodes: convergence and broken connections per event\n\n\
         {NODES} lb nodes in namespaces, each with its own BIRD 2 announcing its VIPs (learned \
         from kernel table 4242, `[cluster] announce_table`) over eBGP with BFD (100 ms × 3) to \
         a router that installs one multipath route and hashes flows by layer 4; \
         {connections} long-lived TCP connections and {flows} UDP flows, opened once and asked \
         again after every event (a broken one is closed, and replaced before the next backend \
         change) (`lb_lab::scenario`, the scenario `tests/tests/cluster.rs` \
         checks). Times in ms from the event to the \
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
        each(&|e| e.loss.detection),
        shown(loss)
    );
    println!(
        "| node back (link, BIRD, then `lb run --drained` adopting its pins, fingerprints compared, `lb node resume`) | {} | {} |",
        each(&|e| e.returned.as_ref().map_or(Duration::ZERO, |r| r.back)),
        shown(back)
    );
    println!(
        "| node lost, NAT (replies through the nodes) | {nat_loss} | {} (the backends' route drops the node too) |",
        shown(nat_lost)
    );
    let (tcp, udp) = moved(Event::BackendAddedDuringDrain);
    println!(
        "| a fifth backend added on every node as a node is drained (no second chance) | — | {}: of the {tcp} connections and {udp} UDP flows that reached a node without their entry (all rounds) |",
        shown(added_during_drain)
    );
    let (tcp, udp) = moved(Event::BackendChangedDuringRestart);
    println!(
        "| a node restarted after `lb down` (no flow table) while the fifth backend is added (no second chance) | — | {}: of the {tcp} connections and {udp} UDP flows it got back (all rounds) |",
        shown(changed_during_restart)
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
