//! A flood never evicts proven flows: idle connections through a VIP, then a flood of
//! random-source SYN and ACK frames ten times the conntrack table's size, then a backend
//! added and one drained. Every connection must still reach the backend it began on (a
//! flow moved by the new Maglev table would be reset by a backend that has no socket for
//! it). NAT and dsr-ipip, the real `lb` binary and real TCP servers in namespaces; needs
//! root.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    client::{WhoConnection, open_who_connections},
    dsr::{self, DsrLab, Wiring},
    generator,
    netns::NetNs,
    process::{Daemon, DecapPaths, Instance, stat_packets},
    servers::{Servers, WHO_PORT},
    topology::{Backend, Lab},
};
use serde_json::Value;

const CONNECTIONS: usize = 40;
const TABLE: u32 = 4096;
/// Ten times the table's size.
const FLOOD: u64 = 10 * TABLE as u64;
const BUDGET: Duration = Duration::from_secs(120);

/// Sends the flood out of `dev` in `ns`; how many frames left.
fn flood(ns: &NetNs, dev: &str, frames: &[Vec<u8>]) -> u64 {
    let dev = dev.to_owned();
    ns.enter(move || generator::blast(&dev, frames, FLOOD, Duration::from_secs(60)))
        .expect("send the flood")
        .frames
}

fn conntrack(instance: &Instance) -> Value {
    instance.stats()["conntrack"].clone()
}

/// Every connection still answers, from the backend it began on; the ones that do not.
fn broken(connections: &mut [WhoConnection], names: &[String]) -> Vec<String> {
    connections
        .iter_mut()
        .zip(names)
        .filter_map(|(connection, before)| match connection.ask() {
            Ok(now) if now == *before => None,
            Ok(now) => Some(format!(
                "port {}: {before} -> {now}",
                connection.local_port()
            )),
            Err(error) => Some(format!("port {}: {error}", connection.local_port())),
        })
        .collect()
}

/// The scenario once the VIP serves `backends[..3]`: connect, check every connection is
/// proven, flood, add `added` and drain `drained`, ask again.
fn scenario(
    instance: &Instance,
    client: &NetNs,
    vip: SocketAddr,
    flooder: (&NetNs, &str, [u8; 6], [u8; 6]),
    added: &str,
    drained: &str,
    proto_args: &[&str],
) {
    let started = Instant::now();
    let vip_arg = vip.to_string();
    let (mut connections, names) = client.enter(|| open_who_connections(vip, CONNECTIONS, BUDGET));
    // Every connection completed its handshake (and, in NAT, the backend's answer passed
    // through lb): all are proven before the flood.
    let list: Value = serde_json::from_str(&instance.ok(&["conntrack", "list", "--json"]))
        .expect("conntrack list is JSON");
    let flows = list["flows"].as_array().cloned().unwrap_or_default();
    let proven = flows.iter().filter(|f| f["proven"] == true).count();
    assert_eq!(
        proven, CONNECTIONS,
        "every connection is proven before the flood: {list}"
    );

    let IpAddr::V4(vip_v4) = vip.ip() else {
        panic!("an IPv4 VIP")
    };
    let (ns, dev, src_mac, dst_mac) = flooder;
    let frames = lb_tests::flood::frames(FLOOD as usize, src_mac, dst_mac, vip_v4, WHO_PORT);
    let sent = flood(ns, dev, &frames);
    assert_eq!(sent, FLOOD, "the whole flood left");
    let before = conntrack(instance);

    let mut add = vec!["backend", "add", &vip_arg, added];
    add.extend_from_slice(proto_args);
    instance.ok(&add);
    instance.ok(&["backend", "drain", &vip_arg, drained]);

    let broken = client.enter(|| broken(&mut connections, &names));
    let stats = instance.stats();
    eprintln!(
        "{vip}: {CONNECTIONS} idle connections, {FLOOD} flood frames, a backend added and one drained: {} broken in {:?}; conntrack {}",
        broken.len(),
        started.elapsed(),
        stats["conntrack"]
    );
    assert!(broken.is_empty(), "{vip}: broken connections: {broken:?}");
    let created = stat_packets(&stats, "ct_created") + stat_packets(&stats, "ct_flood_untracked");
    let moved: Vec<String> = stats["counters"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, c)| c["packets"].as_u64().unwrap_or(0) > 0)
        .map(|(name, c)| format!("{name}={}", c["packets"]))
        .collect();
    assert!(
        created >= FLOOD / 2,
        "{vip}: the flood reached the datapath as new flows ({created}); conntrack before the change: {before}; counters: {moved:?}"
    );
}

fn who_endpoint(backend: &Backend) -> String {
    SocketAddr::new(backend.v4.into(), WHO_PORT).to_string()
}

#[test]
fn a_flood_ten_times_the_table_breaks_no_nat_connection() {
    lb_tests::require_root!();
    let lab = Lab::new("lbfl", 4);
    let instance = Instance::new();
    let size = TABLE.to_string();
    let _daemon = instance.start(&lab, &["--conntrack-size", &size]);
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), WHO_PORT);
    let vip_arg = vip.to_string();
    instance.ok(&["vip", "add", &vip_arg]);
    for backend in &lab.backends[..3] {
        instance.ok(&["backend", "add", &vip_arg, &who_endpoint(backend)]);
    }
    let flooder = (
        &lab.client,
        lab.client_dev.as_str(),
        lab.client.mac(&lab.client_dev),
        lab.lb.mac(&lab.lb_ifaces[0]),
    );
    scenario(
        &instance,
        &lab.client,
        vip,
        flooder,
        &who_endpoint(&lab.backends[3]),
        &who_endpoint(&lab.backends[0]),
        &[],
    );
}

#[test]
fn a_flood_ten_times_the_table_breaks_no_dsr_connection() {
    lb_tests::require_root!();
    let lab = DsrLab::new("lbfd", Wiring::Routed, 4);
    let vip_ip = IpAddr::V4(dsr::VIP_V4);
    #[expect(
        clippy::collection_is_never_read,
        reason = "held to the end: each detaches its backend on drop"
    )]
    let mut decaps = Vec::new();
    for backend in &lab.backends {
        let decap = DecapPaths::new(&backend.ns);
        let vip_text = vip_ip.to_string();
        let lb_v4 = format!("{}/32", dsr::LB_V4);
        decap.ok(&[
            "attach",
            "--iface",
            backend.dev.as_str(),
            "--vip",
            &vip_text,
            "--allow-source",
            &lb_v4,
        ]);
        decaps.push(decap);
    }
    let instance = Instance::new();
    let size = TABLE.to_string();
    let _daemon = Daemon::start(instance.run(
        &lab.lb,
        std::slice::from_ref(&lab.lb_iface),
        &["--conntrack-size", &size],
    ));
    let _servers = Servers::start_on_vips(&lab.backends, &[vip_ip]);
    let vip = SocketAddr::new(vip_ip, WHO_PORT);
    let vip_arg = vip.to_string();
    instance.ok(&["vip", "add", &vip_arg, "--mode", "dsr-ipip"]);
    for backend in &lab.backends[..3] {
        instance.ok(&["backend", "add", &vip_arg, &who_endpoint(backend)]);
    }
    let flooder = (
        &lab.router,
        lab.router_to_lb.as_str(),
        lab.router.mac(&lab.router_to_lb),
        lab.lb.mac(&lab.lb_iface),
    );
    scenario(
        &instance,
        &lab.client,
        vip,
        flooder,
        &who_endpoint(&lab.backends[3]),
        &who_endpoint(&lab.backends[0]),
        &[],
    );
}
