//! The cluster before any event: the lab told, the seed and config written, the backends
//! served (and in direct server return decapsulating), the daemons started and announced,
//! and the same Maglev table on every node.

use std::{
    collections::BTreeSet,
    fs::OpenOptions,
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use super::{
    BACKENDS, BACKENDS_V4, BACKENDS_V6, EXTRA_BACKEND, Mode, NODES_SUBNET, Scenario, node_args,
    random_seed,
};
use crate::{
    cluster::{ANNOUNCE_TABLE, CLIENT_V4, ROUTER_AS, ROUTER_V4, VIP_V4},
    lb::{Decap, Failure, LbNode},
    servers::{Servers, WHO_PORT},
};

impl Scenario<'_> {
    pub(super) fn topology(&mut self, started: Instant) {
        let mut lines = vec![format!(
            "client {CLIENT_V4} -- router {ROUTER_V4} (AS {ROUTER_AS}) -- fabric {NODES_SUBNET}:"
        )];
        for (i, node) in self.lab.nodes.iter().enumerate() {
            lines.push(format!("  node{i}      {:<15} AS {}", node.v4, node.asn));
        }
        for (j, backend) in self.lab.backends.iter().enumerate() {
            let spare = if j < BACKENDS {
                ""
            } else {
                "  (in no config: added live in steps 7 and 8)"
            };
            lines.push(format!("  {:<10} {}{spare}", backend.name, backend.v4));
        }
        lines.push(format!(
            "{} BGP sessions (IPv4 and IPv6 per node) established in {:.1} s; nothing announced yet.\n",
            2 * self.n(),
            started.elapsed().as_secs_f64()
        ));
        self.say(&lines.join("\n"));
    }

    /// The hash seed file (mode 0600) and the config every node runs with.
    pub(super) fn files(&mut self) -> Result<(PathBuf, PathBuf), Failure> {
        let seed = match &self.options.hash_seed {
            Some(seed) => seed.clone(),
            None => random_seed()?,
        };
        let seed_file = self.lab.dir().join("hash-seed");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&seed_file)
            .and_then(|mut file| writeln!(file, "{seed}"))
            .map_err(|e| Failure::new(format!("writing {}: {e}", seed_file.display())))?;
        self.say(&format!(
            "The cluster's hash seed: 16 hex digits for this run, in {} (mode 0600). Shared: \
             every node gets the same one, so all of them pick the same backend for a flow. \
             Secret: whoever knows it can compute where a flow lands and aim flows at one \
             backend, so it goes in a file (--hash-seed-file), not on a command line.\n",
            seed_file.display()
        ));
        let text = self.config_text();
        let config = self
            .lab
            .dir()
            .join(format!("cluster-{}.toml", self.options.mode.name()));
        std::fs::write(&config, &text)
            .map_err(|e| Failure::new(format!("writing {}: {e}", config.display())))?;
        self.say(&format!(
            "The same config on every node (`lb run --config`): the VIPs (HTTP on {}, UDP on \
             {}, and the who server on {} for long-lived connections), their backends, and \
             the table lb announces through:\n$ cat {}\n{text}",
            self.vips.http,
            self.vips.udp,
            self.vips.who,
            config.display()
        ));
        Ok((seed_file, config))
    }

    fn config_text(&self) -> String {
        let mode = self.options.mode.name();
        let mut lines = vec![
            "[cluster]".to_owned(),
            format!("announce_table = {ANNOUNCE_TABLE}"),
        ];
        for (vip, proto, port) in self.vips.services() {
            lines.extend([
                String::new(),
                "[[vip]]".to_owned(),
                format!("address = \"{vip}\""),
                format!("proto = \"{proto}\""),
                format!("mode = \"{mode}\""),
                "backends = [".to_owned(),
            ]);
            for backend in &self.lab.backends[..BACKENDS] {
                let address = SocketAddr::new(backend.addr(vip.is_ipv6()), port);
                lines.push(format!("  {{ address = \"{address}\" }},"));
            }
            lines.push("]".to_owned());
        }
        lines.push(String::new());
        lines.join("\n")
    }

    /// The backends' servers, and in direct server return their `lb decap`.
    pub(super) fn backends(&mut self) -> Result<(), Failure> {
        if self.options.mode == Mode::Nat {
            self.servers = Some(Servers::start(&self.lab.backends));
            return Ok(());
        }
        self.say(&format!(
            "Each backend holds the VIP and takes the nodes' packets (from the nodes' link, \
             {NODES_SUBNET}) with `lb decap`:"
        ));
        let vip = VIP_V4.to_string();
        let args = [
            "attach",
            "--iface",
            "",
            "--vip",
            &vip,
            "--allow-source",
            NODES_SUBNET,
        ];
        let pins = self.pin_prefix();
        for j in 0..self.lab.backends.len() {
            let backend = &self.lab.backends[j];
            let decap = Decap::new(
                &self.options.lb,
                backend,
                PathBuf::from(format!("{pins}-{}", backend.name)),
                self.lab.dir(),
            );
            let mut args = args;
            args[2] = &backend.dev;
            let out = decap.run(&args)?;
            let told = format!("$ [{}] lb decap {}\n{out}", backend.name, args.join(" "));
            self.decaps.push(decap);
            if j == 0 {
                self.say(&told);
            }
        }
        let others: Vec<&str> = self.lab.backends[1..]
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        self.say(&format!(
            "(the same on {}, each with its own interface)\n",
            others.join(", ")
        ));
        self.servers = Some(Servers::start_on_vips(&self.lab.backends, &[VIP_V4.into()]));
        Ok(())
    }

    /// `/sys/fs/bpf/<the lab directory's name>`: the start of every pin directory of the run.
    fn pin_prefix(&self) -> String {
        let name = self
            .lab
            .dir()
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("/sys/fs/bpf/{name}")
    }

    /// An nft counter on the router of packets toward the client with a backend's source
    /// address: a reply that left a node untranslated. The router's interface toward the
    /// client, where it counts (the bridged hops between backends and nodes also cross its
    /// hooks).
    pub(super) fn leak_counter(&mut self) -> Result<String, Failure> {
        let to_client = self
            .lab
            .router
            .ip(&["-br", "-4", "addr", "show", "to", "198.18.70.0/24"])
            .split_whitespace()
            .next()
            .and_then(|name| name.split('@').next())
            .map(str::to_owned)
            .ok_or_else(|| Failure::new("the router has no interface toward the client"))?;
        let rules = format!(
            "table inet leak {{\n chain forward {{\n  type filter hook forward priority 0;\n  oifname \"{to_client}\" ip saddr {BACKENDS_V4} counter\n  oifname \"{to_client}\" ip6 saddr {BACKENDS_V6} counter\n }}\n}}\n"
        );
        let mut nft = self
            .lab
            .router
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| Failure::new(format!("running nft: {e}")))?;
        let written = nft
            .stdin
            .take()
            .ok_or_else(|| Failure::new("nft has no stdin"))
            .and_then(|mut stdin| {
                stdin
                    .write_all(rules.as_bytes())
                    .map_err(|e| Failure::new(format!("writing nft's rules: {e}")))
            });
        let status = nft
            .wait()
            .map_err(|e| Failure::new(format!("waiting for nft: {e}")))?;
        written?;
        if !status.success() {
            return Err(Failure::new(format!(
                "nft refused the rules ({status}):\n{rules}"
            )));
        }
        self.say(&format!(
            "On the router, a counter of packets toward the client from a backend's address \
             (a reply that left a node untranslated):\n$ [router] nft -f -\n{rules}"
        ));
        Ok(rules)
    }

    /// Starts every node's daemon (at once: each takes seconds to load) and waits until
    /// each has announced.
    pub(super) fn start_nodes(&mut self, seed_file: &Path, config: &Path) -> Result<(), Failure> {
        self.say(&format!(
            "lb on every node, attached to its fabric interface, with the shared config and \
             seed (table {ANNOUNCE_TABLE} from the config):"
        ));
        let extra = node_args(config, seed_file);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let pins = self.pin_prefix();
        let started = Instant::now();
        let mut told = Vec::new();
        for (i, node) in self.lab.nodes.iter().enumerate() {
            let mut lb = LbNode::new(
                &self.options.lb,
                &format!("node{i}"),
                node.ns.path(),
                &node.iface,
                self.lab.dir(),
                PathBuf::from(format!("{pins}-node{i}")),
            );
            told.push(format!(
                "$ [node{i}] lb --api {} {}",
                lb.api.display(),
                lb.run_args(&extra).join(" ")
            ));
            lb.spawn(&extra)?;
            self.nodes.push(lb);
        }
        self.say(&told.join("\n"));
        for i in 0..self.n() {
            let line = self.nodes[i].wait_ready()?;
            self.say(&format!("[node{i}] {line}"));
        }
        let all: Vec<usize> = (0..self.n()).collect();
        let addresses: Vec<String> = self
            .vips
            .addresses()
            .iter()
            .map(ToString::to_string)
            .collect();
        self.step(&format!(
            "1. Every node announces {}; the router has a next hop per node:",
            addresses.join(" and ")
        ))?;
        self.expect_routes(
            &all,
            started,
            "the daemons started (each announces once a backend takes new flows)",
        )?;
        for (i, node) in self.nodes.iter().enumerate() {
            let report = node.node_report()?;
            let announced: Option<BTreeSet<&str>> = report["announced"]
                .as_array()
                .map(|list| list.iter().filter_map(serde_json::Value::as_str).collect());
            let wanted: BTreeSet<&str> = addresses.iter().map(String::as_str).collect();
            if announced.as_ref() != Some(&wanted) || report["hash_seed"] != "set" {
                return Err(Failure::new(format!(
                    "node{i} should announce {addresses:?} with its hash seed set: {report}"
                )));
            }
        }
        self.say("");
        self.show(0, &["status"])?;
        Ok(())
    }

    /// The same table on every node; node0's with one more backend, another. The who
    /// VIP's fingerprints on every node, and node0's with the extra backend.
    pub(super) fn same_tables(&mut self) -> Result<(Vec<String>, String), Failure> {
        self.step(
            "2. Same backends and same seed, so the same Maglev table on every node: \
             `lb vip list`, column TABLE (a fingerprint of the table)",
        )?;
        self.show(0, &["vip", "list"])?;
        let mut lines = Vec::new();
        let mut differ = Vec::new();
        for (vip, proto, _) in self.vips.services() {
            let prints = self
                .nodes
                .iter()
                .map(|node| node.fingerprint(vip, proto))
                .collect::<Result<Vec<_>, _>>()?;
            let same = prints.iter().all(|p| *p == prints[0]);
            let cells: Vec<String> = prints
                .iter()
                .enumerate()
                .map(|(i, print)| format!("node{i} {print}"))
                .collect();
            let service = format!("{vip}/{proto}");
            lines.push(format!(
                "  {service:<22} {}  => {}",
                cells.join("  "),
                if same { "identical" } else { "DIFFERENT" }
            ));
            if !same {
                differ.push(service);
            }
        }
        self.say(&lines.join("\n"));
        if !differ.is_empty() {
            return Err(Failure::new(format!(
                "the nodes' Maglev tables differ for {}: they would send one flow to different backends",
                differ.join(", ")
            )));
        }
        let who = self.vips.who;
        let fingerprints = self
            .nodes
            .iter()
            .map(|node| node.fingerprint(who, "tcp"))
            .collect::<Result<Vec<_>, _>>()?;
        self.say("A node with other backends has another table: one more backend on node0 alone, for a moment:");
        let who_arg = who.to_string();
        let extra = SocketAddr::new(
            EXTRA_BACKEND
                .parse()
                .map_err(|e| Failure::new(format!("{EXTRA_BACKEND}: {e}")))?,
            WHO_PORT,
        )
        .to_string();
        self.show(0, &["backend", "add", &who_arg, &extra])?;
        let with_one_more = self.nodes[0].fingerprint(who, "tcp")?;
        self.show(0, &["backend", "del", &who_arg, &extra])?;
        let again = self.nodes[0].fingerprint(who, "tcp")?;
        self.say(&format!(
            "=> {who}/tcp on node0: {with_one_more} with the extra backend, {again} without \
             it again (the others: {})",
            fingerprints[1]
        ));
        if with_one_more == fingerprints[0] || again != fingerprints[0] {
            return Err(Failure::new(format!(
                "node0's fingerprint of {who}: {} before, {with_one_more} with one more backend, {again} without it again",
                fingerprints[0]
            )));
        }
        Ok((fingerprints, with_one_more))
    }
}
