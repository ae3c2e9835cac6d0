//! QUIC connections through a VIP while their clients move: real quinn servers on three
//! backends (their connection IDs made by the `quic-lb` crate's generator with the server
//! id lb gave each), and a real quinn client that rebinds its UDP port 20 times during
//! each of 30 connections (`tests/src/bin/quic-peer.rs`), through `lb run` in native XDP
//! (NAT). First to a UDP VIP without the QUIC mode, where a new port is a new 5-tuple
//! for Maglev and connections die; then to one with it, where none may die, while one
//! backend is drained halfway through.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use lb_tests::{
    process::{Daemon, Instance, stat_packets},
    topology::Lab,
};

const CONNECTIONS: usize = 30;
const REBINDS: usize = 20;
const CONFIG: &str = "config=2,server-id-len=2,nonce-len=8";
/// The VIP's ports: without the QUIC mode, and with it; the backends' ports for each.
const PLAIN: (u16, u16) = (443, 4433);
const QUIC: (u16, u16) = (8443, 4434);
/// A client run: 30 connections at once, each at most 21 requests of 2 s.
const CLIENT_LIMIT: Duration = Duration::from_secs(120);

fn peer() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quic-peer"))
}

/// A quinn server in `ns` on `listen`, answering with `name`; with `--quic-lb` when given
/// a config and its server id. Ready when it says so.
fn server(
    lab_ns: &lb_tests::netns::NetNs,
    listen: SocketAddr,
    name: &str,
    id: Option<&str>,
) -> Daemon {
    let mut command = lab_ns.command(peer());
    command.args(["server", "--listen", &listen.to_string(), "--name", name]);
    if let Some(id) = id {
        command.args(["--quic-lb", CONFIG, "--server-id", id]);
    }
    let mut server = Daemon::spawn(command);
    server.wait_for_line("ready", Duration::from_secs(20));
    server
}

/// The client's command: 30 connections to `vip`, each rebinding 20 times.
fn client(lab: &Lab, vip: SocketAddr, pause_file: Option<&Path>) -> Command {
    let mut command = lab.client.command(peer());
    command.args([
        "client",
        "--connect",
        &vip.to_string(),
        "--connections",
        &CONNECTIONS.to_string(),
        "--rebinds",
        &REBINDS.to_string(),
        "--bind-ip",
        &lab.client_addr(false).to_string(),
    ]);
    if let Some(file) = pause_file {
        command.arg("--pause-file").arg(file);
    }
    command
}

/// The client's one JSON line: what happened to its connections.
fn outcome(client: &mut Daemon) -> serde_json::Value {
    let line = client.wait_for_line("\"connections\"", CLIENT_LIMIT);
    let report: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the client's report is not JSON ({e}): {line}"));
    assert_eq!(report["connections"], CONNECTIONS, "{report}");
    report
}

fn died(report: &serde_json::Value) -> u64 {
    report["died"]
        .as_u64()
        .unwrap_or_else(|| panic!("no `died` in {report}"))
}

#[test]
fn quic_connections_survive_their_clients_moving_only_by_connection_id() {
    lb_tests::require_root!();
    let lab = Lab::new("lbq", 3);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &["--xdp-mode", "native"]);
    let vip = lab.vip(false);
    let plain = SocketAddr::new(vip, PLAIN.0).to_string();
    let quic = SocketAddr::new(vip, QUIC.0).to_string();
    instance.ok(&["vip", "add", &plain, "--proto", "udp"]);
    instance.ok(&["vip", "add", &quic, "--proto", "udp", "--quic", CONFIG]);
    for backend in &lab.backends {
        for (vip, port) in [(&plain, PLAIN.1), (&quic, QUIC.1)] {
            let address = SocketAddr::new(backend.addr(false), port).to_string();
            instance.ok(&["backend", "add", vip, "--proto", "udp", &address]);
        }
    }
    // The server ids lb gave the QUIC VIP's backends: what each server is configured with.
    let listed: serde_json::Value =
        serde_json::from_str(&instance.ok(&["backend", "list", "--json"]))
            .expect("backend list is JSON");
    let server_id = |address: SocketAddr| -> String {
        listed
            .as_array()
            .expect("a list")
            .iter()
            .find(|entry| entry["backend"] == address.to_string())
            .and_then(|entry| entry["server_id"].as_str())
            .unwrap_or_else(|| panic!("no server id for {address} in {listed}"))
            .to_owned()
    };
    let mut servers = Vec::new();
    for backend in &lab.backends {
        let plain_at = SocketAddr::new(backend.addr(false), PLAIN.1);
        servers.push(server(&backend.ns, plain_at, &backend.name, None));
        let quic_at = SocketAddr::new(backend.addr(false), QUIC.1);
        let id = server_id(quic_at);
        servers.push(server(&backend.ns, quic_at, &backend.name, Some(&id)));
    }

    // Without the QUIC mode: each new port is a new 5-tuple, balanced afresh.
    let mut without = Daemon::spawn(client(&lab, plain.parse().expect("VIP"), None));
    let without = outcome(&mut without);
    eprintln!("without the QUIC mode: {without}");
    assert!(
        died(&without) >= (CONNECTIONS / 2) as u64,
        "moving 20 times among 3 backends by 5-tuple must break most connections: {without}"
    );

    // With it, one backend drained when every connection has moved 10 times.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let go_on = dir.path().join("go-on");
    let mut with = Daemon::spawn(client(&lab, quic.parse().expect("VIP"), Some(&go_on)));
    with.wait_for_line("paused", CLIENT_LIMIT);
    let drained = &lab.backends[0];
    let drained_at = SocketAddr::new(drained.addr(false), QUIC.1).to_string();
    instance.ok(&["backend", "drain", &quic, "--proto", "udp", &drained_at]);
    std::fs::write(&go_on, b"").expect("let the client go on");
    let with = outcome(&mut with);
    eprintln!("with the QUIC mode: {with}");
    assert_eq!(died(&with), 0, "no connection may die by moving: {with}");
    let rebinds = with["rebinds_done"].as_u64().expect("rebinds_done");
    assert_eq!(rebinds, (CONNECTIONS * REBINDS) as u64, "{with}");
    let served_by_drained = with["served_by"][&drained.name].as_u64().unwrap_or(0);
    assert!(
        served_by_drained > 0,
        "the drained backend kept serving its connections: {with}"
    );
    let stats = instance.stats();
    assert!(
        stat_packets(&stats, "quic_by_server_id") >= (CONNECTIONS * REBINDS) as u64,
        "every move found its backend by server id: {}",
        stats["counters"]
    );
    drop(servers);
}
