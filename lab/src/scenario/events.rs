//! The events, each followed by a check of every long-lived flow: a drain and a resume, a
//! node lost, and then in direct server return its return and nodes taken out of service
//! (after the backend changes of `changes.rs`), in NAT the router's count of untranslated
//! replies.

use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    CONVERGE, Event, Leaks, Loss, Mode, NodeState, PROBE_CONNECT, PROBE_EVERY, Return, Round,
    Scenario, Stop, Stopped, flows::Flows, next_hops, node_args,
};
use crate::{
    cluster::{
        ANNOUNCE_TABLE, BFD_DETECTION, Bird, CLIENT_V4, HOLD_TIME, VIP_V4, node_addr, wait_until,
    },
    lb::{Failure, LbNode},
};

/// What the drain measured.
pub(super) struct Drain {
    pub(super) tcp_spread: Vec<u64>,
    pub(super) udp_spread: Vec<u64>,
    pub(super) withdraw: Duration,
    pub(super) packets: u64,
    pub(super) announce: Duration,
    pub(super) round: Round,
}

impl Scenario<'_> {
    /// The drain of node `d` and its return to service.
    pub(super) fn drain(&mut self, d: usize, all: &[usize]) -> Result<Drain, Failure> {
        let n = self.n();
        self.step(&format!(
            "4. node{d} is drained, live: it withdraws the VIP and keeps serving the flows \
             that still reach it."
        ))?;
        let who = self.vips.who;
        let udp = self.vips.udp;
        let new_flows = |nodes: &[LbNode], vip: SocketAddr, proto: &str| {
            nodes
                .iter()
                .map(|node| node.vip_count(vip, proto, "new_flows"))
                .collect::<Result<Vec<_>, _>>()
        };
        let tcp_before = new_flows(&self.nodes, who, "tcp")?;
        let udp_before = new_flows(&self.nodes, udp, "udp")?;
        let flows = Flows::open(
            &self.lab.client,
            who,
            udp,
            self.options.connections,
            self.options.udp_flows,
        )?;
        let minus = |now: Vec<u64>, before: &[u64]| -> Vec<u64> {
            now.iter()
                .zip(before)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect()
        };
        let tcp_spread = minus(new_flows(&self.nodes, who, "tcp")?, &tcp_before);
        let udp_spread = minus(new_flows(&self.nodes, udp, "udp")?, &udp_before);
        let carried_tcp = self.nodes[d].tracks(who, &flows.tcp_ports())?;
        let carried_udp = self.nodes[d].tracks(udp, &flows.udp_ports())?;
        self.say(&format!(
            "{} long-lived connections from the client to {who} (the who server: each line \
             sent is answered with the backend's name): {}; by node {tcp_spread:?}.\n{} UDP \
             flows to {udp}, asked the same way: {}; by node {udp_spread:?}.\n{carried_tcp} of \
             the connections and {carried_udp} of the UDP flows go through node{d} (its \
             conntrack table, `lb conntrack list`): after the drain the router sends them to \
             the other nodes, whose Maglev tables pick the same backends\n",
            flows.connections(),
            flows.spread(false),
            flows.udp_flows(),
            flows.spread(true),
        ));
        self.flows = Some(flows);

        let since = Instant::now();
        self.show(d, &["node", "drain"])?;
        let others: Vec<usize> = (0..n).filter(|&i| i != d).collect();
        let withdraw = self.expect_routes(&others, since, "`lb node drain`")?;
        let report = self.nodes[d].node_report()?;
        let withdrawn = report["drained"] == true
            && report["vips"].as_array().is_some_and(|vips| {
                vips.iter()
                    .all(|v| v["reason"] == "node-drained" && v["announced"] == false)
            });
        if !withdrawn {
            return Err(Failure::new(format!(
                "node{d} should be drained with every VIP withdrawn: {report}"
            )));
        }
        self.check(Event::Drain, d)?;
        let packets = |node: &LbNode, services: &[(SocketAddr, &str, u16)]| {
            services
                .iter()
                .map(|(vip, proto, _)| node.vip_count(*vip, proto, "packets"))
                .sum::<Result<u64, _>>()
        };
        let services = self.vips.services();
        let packets_then = packets(&self.nodes[d], &services)?;
        let mut states = vec![NodeState::Serving; n];
        states[d] = NodeState::Drained;
        let round = self.round(self.vips.http, &format!("node{d} drained"), &states)?;
        self.check(Event::NewFlowsDuringDrain, d)?;
        let drained_packets = packets(&self.nodes[d], &services)?.saturating_sub(packets_then);
        self.say(&format!(
            "=> node{d} received {drained_packets} client packets while drained (PACKETS of \
             its VIPs in `lb vip list`)"
        ));

        self.say(&format!("\nnode{d} back in service:"));
        let since = Instant::now();
        self.show(d, &["node", "resume"])?;
        let announce = self.expect_routes(all, since, "`lb node resume`")?;
        self.check(Event::Resume, d)?;
        Ok(Drain {
            tcp_spread,
            udp_spread,
            withdraw,
            packets: drained_packets,
            announce,
            round,
        })
    }

    /// Node `l` lost as in a power cut; how the router and the flows took it.
    pub(super) fn lose(&mut self, l: usize) -> Result<(Loss, Round), Failure> {
        let n = self.n();
        self.step(&format!(
            "5. node{l} is lost, live, as when its machine loses power: its lb is killed \
             (SIGKILL: no withdraw), then its link goes down and its BIRD is killed. (`lb down` \
             would withdraw the VIP first, like the drain above; a crash is what BFD is for.)"
        ))?;
        // What node l carries now, not what it carried before the drain moved flows around:
        // its table flushed, every flow asked again (a mid-flow miss that Maglev sends to
        // the same backend).
        self.say(&format!(
            "First node{l}'s flow table is flushed and every flow asked again, so that it \
             tracks what it carries now:"
        ));
        self.show(l, &["conntrack", "flush"])?;
        self.check(Event::Flush, l)?;
        let (tcp_ports, udp_ports) = match &self.flows {
            Some(flows) => (flows.tcp_ports(), flows.udp_ports()),
            None => return Err(Failure::new("no long-lived flows")),
        };
        let tcp = self.nodes[l].tracks(self.vips.who, &tcp_ports)?;
        let udp = self.nodes[l].tracks(self.vips.udp, &udp_ports)?;
        self.say(&format!(
            "{tcp} of the {} long-lived connections and {udp} of the {} UDP flows go through \
             node{l} now",
            tcp_ports.len(),
            udp_ports.len()
        ));
        if let Some(pid) = self.nodes[l].crash()? {
            self.say(&format!("$ [node{l}] kill -KILL {pid}    # lb run"));
        }
        let bird_pid = std::fs::read_to_string(self.lab.dir().join(format!("node{l}.pid")))
            .map_or_else(|_| "<its bird>".to_owned(), |pid| pid.trim().to_owned());
        self.say(&format!(
            "$ [node{l}] ip link set {} down; kill -KILL {bird_pid}    # its BIRD",
            self.nodes[l].iface
        ));
        let lost_at = Instant::now();
        self.lab.lose_node(l);
        let (probes, detection) = self.probe_until_dropped(l, lost_at);
        let survivors: Vec<usize> = (0..n).filter(|&i| i != l).collect();
        self.expect_routes(&survivors, lost_at, "the link went down")?;
        let attempts = probes.len();
        // A probe whose thread panicked counts as failed.
        let failed = probes
            .into_iter()
            .map(|probe| probe.join().unwrap_or(true))
            .filter(|&failed| failed)
            .count();
        // The IPv6 session (no VIP in direct server return) may go down a moment after the
        // IPv4 one.
        let limit = HOLD_TIME + Duration::from_secs(2);
        if let Err(e) = wait_until(limit, || {
            (!self.lab.session_established(l, false) && !self.lab.session_established(l, true))
                .then_some(())
        }) {
            return Err(Failure::new(format!(
                "the router's sessions with node{l} stay up: {e}"
            )));
        }
        let session = self.lab.bird_cli(
            Bird::Router,
            &["show", "protocols", "all", &format!("node{l}_v4")],
        )?;
        let by_bfd = session.contains("BFD session down");
        let protocols = self.lab.bird_cli(Bird::Router, &["show", "protocols"])?;
        self.say(&format!("$ [router] birdc show protocols\n{protocols}"));
        if by_bfd {
            self.say(&format!(
                "=> BFD brought the router's sessions with node{l} down (a peer is lost after \
                 {} ms without its BFD packets; the BGP hold time, {} s, is only the fallback)",
                BFD_DETECTION.as_millis(),
                HOLD_TIME.as_secs()
            ));
        } else {
            self.say(&format!(
                "=> the router dropped node{l} after {detection:?}, but NOT by BFD; its session:\n{session}"
            ));
        }
        self.say(&format!(
            "While the router still sent flows to node{l} ({:.0} ms): {failed} of {attempts} \
             new connections (one every {} ms) failed to connect within {PROBE_CONNECT:?}",
            detection.as_secs_f64() * 1000.0,
            PROBE_EVERY.as_millis()
        ));
        if self.options.mode == Mode::Nat {
            self.say(&format!(
                "The backends' replies avoid node{l} too (the lab changes their default route; \
                 a real network needs the backends' routing to notice, by BFD for instance):"
            ));
            let backend = &self.lab.backends[0];
            let (name, route) = (
                backend.name.clone(),
                backend.ns.ip(&["route", "show", "default"]),
            );
            self.say(&format!("$ [{name}] ip route show default\n{route}"));
        }
        let mut states = vec![NodeState::Serving; n];
        states[l] = NodeState::Lost;
        let round = self.round(self.vips.http, &format!("node{l} lost"), &states)?;
        self.say(&format!(
            "(the {tcp} long-lived connections and {udp} UDP flows that went through node{l} \
             now reach a survivor, whose Maglev table picks the same backend as node{l}'s did)"
        ));
        self.check(Event::Loss, l)?;
        Ok((
            Loss {
                node: l,
                tcp,
                udp,
                detection,
                by_bfd,
                attempts,
                failed,
            },
            round,
        ))
    }

    /// Tries a new connection every [`PROBE_EVERY`], each in a thread of its own, until the
    /// router's IPv4 route has dropped node `l` (at most [`CONVERGE`] after `lost_at`): those
    /// it still sent to node l will fail. The probes (each says whether it failed, within
    /// [`PROBE_CONNECT`]), and the time from `lost_at` to the route without node l.
    fn probe_until_dropped(&self, l: usize, lost_at: Instant) -> (Vec<JoinHandle<bool>>, Duration) {
        let http = self.vips.http;
        let gone = node_addr(l, false);
        let lab = &self.lab;
        // Threads started in the client's namespace are in it too.
        lab.client.enter(|| {
            let mut probes = Vec::new();
            while lab.router_next_hops(http.ip()).contains(&gone) && lost_at.elapsed() < CONVERGE {
                probes.push(std::thread::spawn(move || {
                    TcpStream::connect_timeout(&http, PROBE_CONNECT).is_err()
                }));
                std::thread::sleep(PROBE_EVERY);
            }
            (probes, lost_at.elapsed())
        })
    }

    /// Direct server return: the lost node returns, link and BIRD first, then its daemon.
    pub(super) fn come_back(
        &mut self,
        l: usize,
        config: &Path,
        seed_file: &Path,
    ) -> Result<Return, Failure> {
        let n = self.n();
        let vip = IpAddr::from(VIP_V4);
        self.step(&format!(
            "6. node{l} comes back: its link and its BIRD first, not yet its daemon. Its link \
             going down took its announce route (a route through an interface that goes down \
             is deleted), and with it the backends' next hops that only a daemon resolves \
             again: it must stay out of the router's route until its daemon is back."
        ))?;
        let back_at = Instant::now();
        self.lab.restore_node(l);
        self.lab
            .wait_for_sessions(CONVERGE)
            .map_err(|e| Failure::new(format!("node{l}'s BGP sessions come back: {e}")))?;
        self.say(&format!("node{l}'s BGP sessions are up again."));
        let (announced_without_daemon, next_hops_without_daemon) = self.after_a_scan(l)?;
        self.check(Event::BackWithoutDaemon, l)?;

        self.say(
            "Its daemon starts drained (`--drained`), adopting its pinned datapath; the node \
             joins once its tables match the others' (fingerprints), with `lb node resume`:",
        );
        let mut extra = node_args(config, seed_file);
        extra.push("--drained".to_owned());
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let node = &mut self.nodes[l];
        let told = format!(
            "$ [node{l}] lb --api {} {}",
            node.api.display(),
            node.run_args(&extra).join(" ")
        );
        node.spawn(&extra)?;
        let line = node.wait_ready()?;
        self.say(&format!("{told}\n[node{l}] {line}"));
        let drained_on_start = self.nodes[l].node_report()?["drained"] == true;
        let who = self.vips.who;
        // Another node's table: node0's, unless node0 is the one returning.
        let other = usize::from(l == 0);
        let theirs = self.nodes[other].fingerprint(who, "tcp")?;
        let its = self.nodes[l].fingerprint(who, "tcp")?;
        let same_fingerprint = theirs == its;
        let next_hops_while_drained = self.lab.router_next_hops(vip).len();
        self.say(&format!(
            "=> node{l} drained: {drained_on_start}; {who}/tcp: node{l} {its}, node{other} \
             {theirs} ({}); {}",
            if same_fingerprint {
                "the same"
            } else {
                "DIFFERENT"
            },
            next_hops(next_hops_while_drained)
        ));
        self.show(l, &["node", "resume"])?;
        let all: Vec<usize> = (0..n).collect();
        let back = self.expect_routes(&all, back_at, &format!("node{l}'s link came back"))?;
        self.check(Event::Back, l)?;
        Ok(Return {
            announced_without_daemon,
            next_hops_without_daemon,
            drained_on_start,
            same_fingerprint,
            next_hops_while_drained,
            back,
        })
    }

    /// Direct server return: nodes taken out of service, `lb down` through the daemon of
    /// node `d`, then (with a node left after it) node0's daemon stopped and `lb down`
    /// without it.
    pub(super) fn stop(&mut self, d: usize) -> Result<Stop, Failure> {
        let n = self.n();
        let vip = IpAddr::from(VIP_V4);
        let withdrew_line = format!("withdrew {vip}");
        self.step(&format!(
            "9. Taking nodes out of service: `lb down` withdraws the VIPs before it detaches \
             the datapath, so the router moves node{d}'s flows first:"
        ))?;
        let down = self.nodes[d].down()?;
        let pins = self.nodes[d].pin_dir.display().to_string();
        self.say(&format!("$ [node{d}] lb down --pin-dir {pins}\n{down}"));
        let mut remaining: Vec<usize> = (0..n).filter(|&i| i != d).collect();
        self.expect_routes(&remaining, Instant::now(), "`lb down`")?;
        self.check(Event::Down, d)?;
        let stopped = if remaining.len() > 1 {
            Some(self.stop_without_daemon(0, &mut remaining)?)
        } else {
            None
        };
        Ok(Stop {
            withdrew: down.contains(&withdrew_line),
            stopped,
        })
    }

    /// Node `s`'s daemon stopped (SIGTERM): its datapath forwards on and its VIPs stay
    /// announced; then `lb down` without a daemon withdraws them.
    fn stop_without_daemon(
        &mut self,
        s: usize,
        remaining: &mut Vec<usize>,
    ) -> Result<Stopped, Failure> {
        let vip = IpAddr::from(VIP_V4);
        self.say(&format!(
            "\nA daemon that stops (SIGTERM) leaves its datapath forwarding and its VIPs \
             announced (its routes stay in table {ANNOUNCE_TABLE}):"
        ));
        let pid = self.nodes[s].pid().unwrap_or_default();
        let status = self.nodes[s].terminate()?;
        self.say(&format!(
            "$ [node{s}] kill -TERM {pid}    # lb run, which exits: {status}"
        ));
        if !status.success() {
            return Err(Failure::new(format!(
                "node{s}'s daemon exited with {status} on SIGTERM"
            )));
        }
        let (still_announced, hops) = self.after_a_scan(s)?;
        self.check(Event::Stopped, s)?;
        self.say(
            "Without a daemon, `lb down` works on the pins, and withdraws the routes through \
             the datapath's interfaces (run in the node's namespace):",
        );
        let down = self.nodes[s].down()?;
        let pins = self.nodes[s].pin_dir.display().to_string();
        self.say(&format!("$ [node{s}] lb down --pin-dir {pins}\n{down}"));
        remaining.retain(|&i| i != s);
        let remaining = remaining.clone();
        self.expect_routes(&remaining, Instant::now(), "`lb down` without a daemon")?;
        self.check(Event::DownWithoutDaemon, s)?;
        Ok(Stopped {
            still_announced,
            next_hops: hops,
            withdrew: down.contains(&format!("withdrew {vip}")),
        })
    }

    /// Once node `i`'s BIRD has scanned its announce table (whatever it announces now, it
    /// found there): whether it announces the VIP, and the router's next hops to it; told.
    fn after_a_scan(&mut self, i: usize) -> Result<(bool, usize), Failure> {
        let vip = IpAddr::from(VIP_V4);
        self.lab.after_a_scan(i)?;
        let announced = self.lab.announces(i, vip)?;
        let hops = self.lab.router_next_hops(vip).len();
        self.say(&format!(
            "=> node{i}'s BIRD has scanned its announce table since: it announces {}; {}",
            if announced { "the VIP" } else { "nothing" },
            next_hops(hops)
        ));
        Ok((announced, hops))
    }

    /// NAT: the router's leak counters, then a canary that shows they count.
    pub(super) fn leaks(&mut self, rules: &str) -> Result<Leaks, Failure> {
        self.step(
            "6. No reply left a node untranslated: the router's counters of packets toward \
             the client from a backend's address (IPv4, IPv6)",
        )?;
        let before_canary = self.leak_counters()?.0;
        self.say(&format!("=> {before_canary:?} after every event above"));
        // One datagram from a backend's port that is no VIP's endpoint: a node forwards it
        // as it is, with the backend's address.
        let backend = &self.lab.backends[0];
        let from = SocketAddr::new(backend.v4.into(), 40_999);
        backend
            .ns
            .enter(|| {
                UdpSocket::bind(from)
                    .and_then(|socket| socket.send_to(b"canary", (IpAddr::from(CLIENT_V4), 9)))
            })
            .map_err(|e| Failure::new(format!("sending the canary from {from}: {e}")))?;
        let counted = wait_until(Duration::from_secs(5), || match self.leak_counters() {
            Ok((counts, _)) if counts.iter().sum::<u64>() > before_canary.iter().sum::<u64>() => {
                Some(Ok(counts))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        });
        let with_canary = match counted {
            Ok((counts, _)) => counts?,
            Err(e) => {
                return Err(Failure::new(format!(
                    "the canary was not counted: {e}; the rules:\n{rules}"
                )));
            }
        };
        self.say(&format!(
            "=> {with_canary:?} once a datagram from {from}, no VIP's endpoint, crossed a node \
             untranslated: the counter sees a leak"
        ));
        Ok(Leaks {
            before_canary,
            with_canary,
        })
    }

    /// The packets of the leak counters (IPv4, IPv6), and the table as nft lists it.
    fn leak_counters(&self) -> Result<([u64; 2], String), Failure> {
        let listed = crate::lb::stdout_of(
            self.lab
                .router
                .command("nft")
                .args(["list", "table", "inet", "leak"]),
            "nft list table inet leak",
        )?;
        let counts: Vec<u64> = listed
            .split("packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        match counts[..] {
            [v4, v6] => Ok(([v4, v6], listed)),
            _ => Err(Failure::new(format!("two counters expected:\n{listed}"))),
        }
    }
}
