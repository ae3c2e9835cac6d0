//! Backend changes while ECMP moves flows between nodes: what issue 31's second chance is
//! for, measured in direct server return. Four backends are configured; the lab's fifth
//! ([`Scenario::spare`]) is added, then removed again, so that each change starts from the
//! configured four and the steps after these find the tables they started with.
//!
//! Both begin the same way ([`Scenario::retrack`]): flows broken earlier are replaced, every
//! node's flow table is flushed and every flow asked again, so that each node tracks only
//! what it carries now. Entries left by the earlier events (the drain and the loss moved
//! flows around) would otherwise hide some moves, and how many would depend on the story
//! so far; a real cluster forgets them too, at their idle timeouts.
//!
//! The long-lived flows are idle between checks: "at the same moment" means that the
//! change and the move are both done before the flows send again, the worst order of a race
//! that real traffic runs (a moved flow that a node tracks before its table changes keeps
//! its backend). Which flows break is then only a matter of tables: those that reach a node
//! with no entry for them, and whose slot in the changed Maglev table went to another
//! backend. The [`Change`] of each says how many flows could break (those that some node
//! tracks afterwards and did not before), out of which the check counts those that did.
//!
//! The change is an add. Removing a backend breaks its own flows in every design (no second
//! chance brings back a backend that is gone), so it would not tell the designs apart; and
//! removing the fifth again, which has no long-lived flow, only brings back the table every
//! flow was balanced with: nothing can break, second chance or not.

use std::{
    collections::HashSet,
    net::SocketAddr,
    process::{Child, Stdio},
    time::Instant,
};

use super::{Change, Event, Scenario, node_args};
use crate::lb::Failure;

/// A flow as a node's conntrack table names it: its VIP and its client's port.
type Flow = (SocketAddr, u16);

impl Scenario<'_> {
    /// Step 7: the lab's fifth backend added on every node at the same moment as node `d` is
    /// drained; then node `d` resumed and the backend removed again.
    pub(super) fn add_during_drain(&mut self, d: usize) -> Result<(), Failure> {
        let n = self.n();
        let spare = self.spare_name();
        self.step(&format!(
            "7. A backend added while a node is drained: at the same moment, {spare} is added \
             on every node and node{d} is drained. The flows ECMP moves reach nodes that never \
             tracked them, whose Maglev tables changed; {}",
            self.second_chance_says()
        ))?;
        self.retrack(d)?;
        let flows = self.flow_keys()?;
        let before = self.tracked_by_node()?;
        let all: Vec<usize> = (0..n).collect();
        let mut calls = self.backend_calls("add", &all)?;
        calls.push((d, vec!["node".to_owned(), "drain".to_owned()]));
        let since = Instant::now();
        self.at_once(&calls)?;
        let others: Vec<usize> = (0..n).filter(|&i| i != d).collect();
        self.expect_routes(&others, since, "the commands started")?;
        self.check(Event::BackendAddedDuringDrain, d)?;
        let carried = before[d].clone();
        self.record_change(Event::BackendAddedDuringDrain, d, &flows, &carried, &before)?;

        self.say(&format!(
            "\nnode{d} back in service, and {spare} removed again (the flows it took are \
             closed: none of the others is on it):"
        ));
        let since = Instant::now();
        self.show(d, &["node", "resume"])?;
        self.expect_routes(&all, since, "`lb node resume`")?;
        self.check(Event::Resume, d)?;
        self.remove_spare(&all, d)
    }

    /// Step 8: node `r` stopped with `lb down`, the fifth backend added on the others, node `r`
    /// started again as an operator would (the shared config, then the same `lb backend
    /// add`, then `lb node resume`); then the backend removed again.
    pub(super) fn change_during_restart(
        &mut self,
        r: usize,
        config: &std::path::Path,
        seed_file: &std::path::Path,
    ) -> Result<(), Failure> {
        let n = self.n();
        let spare = self.spare_name();
        self.step(&format!(
            "8. A backend added while a node is down: node{r} stopped with `lb down` (its \
             datapath and flow table removed), {spare} added on the others, node{r} started \
             again and given the same change. The flows ECMP brings back to it find no entry \
             and a changed table; {}",
            self.second_chance_says()
        ))?;
        self.retrack(r)?;
        let flows = self.flow_keys()?;
        let carried = self.tracked_by_node()?;
        let down = self.nodes[r].down()?;
        let pins = self.nodes[r].pin_dir.display().to_string();
        self.say(&format!("$ [node{r}] lb down --pin-dir {pins}\n{down}"));
        let status = self.nodes[r].wait_stopped()?;
        if !status.success() {
            return Err(Failure::new(format!(
                "node{r}'s daemon exited with {status} after `lb down`"
            )));
        }
        let others: Vec<usize> = (0..n).filter(|&i| i != r).collect();
        self.expect_routes(&others, Instant::now(), "`lb down`")?;
        self.check(Event::Down, r)?;
        let calls = self.backend_calls("add", &others)?;
        self.at_once(&calls)?;
        self.check(Event::BackendAddedWhileDown, r)?;
        let before = self.tracked_by_node()?;

        self.restart(r, config, seed_file)?;
        let all: Vec<usize> = (0..n).collect();
        let since = Instant::now();
        self.show(r, &["node", "resume"])?;
        self.expect_routes(&all, since, "`lb node resume`")?;
        self.check(Event::BackendChangedDuringRestart, r)?;
        // What node r carried before it went down (its table is empty since).
        self.record_change(
            Event::BackendChangedDuringRestart,
            r,
            &flows,
            &carried[r],
            &before,
        )?;
        self.remove_spare(&all, r)
    }

    /// Node `r`'s daemon started again, drained, with the shared config (the four
    /// backends), then given the fifth as the others were; its tables compared with
    /// another node's before it is resumed.
    fn restart(
        &mut self,
        r: usize,
        config: &std::path::Path,
        seed_file: &std::path::Path,
    ) -> Result<(), Failure> {
        self.say(&format!(
            "node{r} starts again as an operator starts it: drained, with the shared config; \
             then the same `lb backend add` as the others; `lb node resume` once its tables \
             match theirs:"
        ));
        let mut extra = node_args(config, seed_file);
        extra.push("--drained".to_owned());
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let node = &mut self.nodes[r];
        let told = format!(
            "$ [node{r}] lb --api {} {}",
            node.api.display(),
            node.run_args(&extra).join(" ")
        );
        node.spawn(&extra)?;
        let line = node.wait_ready()?;
        self.say(&format!("{told}\n[node{r}] {line}"));
        let calls = self.backend_calls("add", &[r])?;
        self.at_once(&calls)?;
        let other = usize::from(r == 0);
        let (theirs, its) = (self.fingerprints(other)?, self.fingerprints(r)?);
        self.say(&format!(
            "=> tables (fingerprints): node{r} {}, node{other} {}",
            its.join(" "),
            theirs.join(" ")
        ));
        if theirs != its {
            return Err(Failure::new(format!(
                "node{r}'s tables differ from node{other}'s after its restart: {its:?}, {theirs:?}"
            )));
        }
        Ok(())
    }

    /// Replaces the flows broken so far, flushes every node's flow table and asks every
    /// flow again: each node then tracks only what it carries (the check after
    /// [`Event::FlushEvery`]). Told for node `i`, the one the change is about.
    fn retrack(&mut self, i: usize) -> Result<(), Failure> {
        let client = &self.lab.client;
        let flows = self
            .flows
            .as_mut()
            .ok_or_else(|| Failure::new("no long-lived flows"))?;
        let (tcp, udp) = flows.top_up(client)?;
        let (connections, udp_flows) = (flows.connections(), flows.udp_flows());
        if tcp + udp > 0 {
            self.say(&format!(
                "{tcp} connections and {udp} UDP flows broken earlier are replaced by new ones: \
                 {connections} and {udp_flows} again."
            ));
        }
        self.say(
            "Every node's flow table flushed and every flow asked again, so that each node \
             tracks only the flows it carries now:",
        );
        for node in 0..self.n() {
            self.show(node, &["conntrack", "flush"])?;
        }
        self.check(Event::FlushEvery, i)
    }

    /// The `lb backend <op>` of the fifth backend to every VIP, on each of `nodes`.
    fn backend_calls(
        &self,
        op: &str,
        nodes: &[usize],
    ) -> Result<Vec<(usize, Vec<String>)>, Failure> {
        let spare = self.spare()?;
        let mut calls = Vec::new();
        for &i in nodes {
            for (vip, proto, port) in self.vips.services() {
                let backend = SocketAddr::new(spare.addr(vip.is_ipv6()), port);
                calls.push((
                    i,
                    [
                        "backend",
                        op,
                        &vip.to_string(),
                        &backend.to_string(),
                        "--proto",
                        proto,
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                ));
            }
        }
        Ok(calls)
    }

    /// The fifth backend removed from every node in `nodes` (the flows it took broke and
    /// are closed); every flow asked again. Told for node `i`.
    fn remove_spare(&mut self, nodes: &[usize], i: usize) -> Result<(), Failure> {
        let calls = self.backend_calls("del", nodes)?;
        self.at_once(&calls)?;
        self.check(Event::BackendRemoved, i)
    }

    /// `lb <args>` on several nodes at the same moment: every process started before any
    /// is waited for. Told once per command with the nodes it ran on.
    fn at_once(&mut self, calls: &[(usize, Vec<String>)]) -> Result<(), Failure> {
        let started: Vec<std::io::Result<Child>> = calls
            .iter()
            .map(|(i, args)| {
                self.nodes[*i]
                    .command()
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect();
        let mut failed = Vec::new();
        let mut told: Vec<(String, Vec<usize>, String)> = Vec::new();
        for ((i, args), child) in calls.iter().zip(started) {
            let command = format!("lb {}", args.join(" "));
            match child.and_then(Child::wait_with_output) {
                Ok(output) if output.status.success() => {
                    let out = String::from_utf8_lossy(&output.stdout).into_owned();
                    match told.iter_mut().find(|(c, _, o)| *c == command && *o == out) {
                        Some((_, nodes, _)) => nodes.push(*i),
                        None => told.push((command, vec![*i], out)),
                    }
                }
                Ok(output) => failed.push(format!(
                    "`{command}` on node{i} failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim_end()
                )),
                Err(e) => failed.push(format!("`{command}` on node{i}: {e}")),
            }
        }
        let lines: Vec<String> = told
            .iter()
            .map(|(command, nodes, out)| {
                let nodes: Vec<String> = nodes.iter().map(|i| format!("node{i}")).collect();
                format!("$ [{}] {command}\n{out}", nodes.join(" "))
            })
            .collect();
        let nodes: HashSet<usize> = calls.iter().map(|(i, _)| *i).collect();
        let at_once = if nodes.len() > 1 {
            "(at once: every command started before any was waited for)\n"
        } else {
            ""
        };
        self.say(&format!("{at_once}{}", lines.join("")));
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Failure::new(failed.join("\n")))
        }
    }

    /// What the change after `event` to node `node` moved, from every node's flow table
    /// `before` it and now, with what that node `carried` before; recorded and told.
    fn record_change(
        &mut self,
        event: Event,
        node: usize,
        flows: &(Vec<Flow>, Vec<Flow>),
        carried: &HashSet<Flow>,
        before: &[HashSet<Flow>],
    ) -> Result<(), Failure> {
        let after = self.tracked_by_node()?;
        let (tcp, udp) = flows;
        let change = Change {
            after: event,
            node,
            carried_tcp: count_in(tcp, carried),
            carried_udp: count_in(udp, carried),
            moved_tcp: moved(tcp, before, &after),
            moved_udp: moved(udp, before, &after),
        };
        self.say(&format!(
            "=> node{node} carried {} of the {} connections and {} of the {} UDP flows; {} \
             and {} reached a node that did not track them (ECMP's hash-threshold also moves \
             flows between the other nodes when one leaves): those could break",
            change.carried_tcp,
            tcp.len(),
            change.carried_udp,
            udp.len(),
            change.moved_tcp,
            change.moved_udp,
        ));
        self.changes.push(change);
        Ok(())
    }

    /// The long-lived flows open now, as conntrack names them: connections, UDP flows.
    fn flow_keys(&self) -> Result<(Vec<Flow>, Vec<Flow>), Failure> {
        let flows = self
            .flows
            .as_ref()
            .ok_or_else(|| Failure::new("no long-lived flows"))?;
        let (who, udp) = (self.vips.who, self.vips.udp);
        Ok((
            flows.tcp_ports().into_iter().map(|p| (who, p)).collect(),
            flows.udp_ports().into_iter().map(|p| (udp, p)).collect(),
        ))
    }

    /// The flows each node tracks (none for a node without a running daemon).
    fn tracked_by_node(&self) -> Result<Vec<HashSet<Flow>>, Failure> {
        self.nodes
            .iter()
            .map(|node| {
                if node.serving() {
                    node.tracked(None)
                } else {
                    Ok(HashSet::new())
                }
            })
            .collect()
    }

    /// Node `i`'s Maglev table fingerprint of every VIP, in the order of the services.
    fn fingerprints(&self, i: usize) -> Result<Vec<String>, Failure> {
        self.vips
            .services()
            .into_iter()
            .map(|(vip, proto, _)| self.nodes[i].fingerprint(vip, proto))
            .collect()
    }

    /// What happens to the flows that need a second chance, in this mode.
    fn second_chance_says(&self) -> String {
        if self.options.mode.second_chance() {
            format!(
                "{} gives them a second chance: no connection may break.",
                self.options.mode.name()
            )
        } else {
            format!(
                "{} has no second chance: each of them whose slot changed breaks.",
                self.options.mode.name()
            )
        }
    }
}

/// Of `flows`, how many are in `tracked`.
fn count_in(flows: &[Flow], tracked: &HashSet<Flow>) -> usize {
    flows.iter().filter(|flow| tracked.contains(flow)).count()
}

/// Of `flows`, how many some node tracks `after` and did not `before` (node by node).
fn moved(flows: &[Flow], before: &[HashSet<Flow>], after: &[HashSet<Flow>]) -> usize {
    flows
        .iter()
        .filter(|flow| {
            before
                .iter()
                .zip(after)
                .any(|(then, now)| now.contains(flow) && !then.contains(flow))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn a_flow_moved_when_a_node_tracks_it_that_did_not_before() {
        let vip = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7);
        let set = |ports: &[u16]| ports.iter().map(|p| (vip, *p)).collect::<HashSet<Flow>>();
        let flows: Vec<Flow> = [1, 2, 3, 4].map(|p| (vip, p)).to_vec();
        // 1 stays on node0; 2 moves from node1 to node0; 3 from node2 (drained, its entry
        // left) to node1; 4 was on node2 and is tracked nowhere new.
        let before = [set(&[1]), set(&[2]), set(&[3, 4])];
        let after = [set(&[1, 2]), set(&[2, 3]), set(&[3, 4])];
        assert_eq!(moved(&flows, &before, &after), 2);
        assert_eq!(count_in(&flows, &before[2]), 2);
        // A node restarted with an empty table: all it tracks afterwards moved there.
        let restarted = [set(&[1]), set(&[2]), set(&[])];
        let back = [set(&[1]), set(&[2]), set(&[3, 4])];
        assert_eq!(moved(&flows, &restarted, &back), 2);
    }
}
