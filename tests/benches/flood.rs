//! A flood of live frames against proven connections: the real `lb` daemon in a lab of
//! namespaces (`--conntrack-size 65536`), idle connections through a NAT VIP, then
//! random-source SYN and bare-ACK frames from the AF_PACKET generator as fast as it sends
//! them, then a backend added and one drained. Reports the frames offered per second, the
//! new flows lb tracked per second during the flood and those it did not, and the
//! connections broken (goal 0). Needs root. Prints a Markdown section; `--quick` sends a
//! tenth of the frames.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    client::open_who_connections,
    process::{Instance, stat_packets},
    servers::{Servers, WHO_PORT},
    topology::Lab,
};

const TABLE: u32 = 65_536;
const CONNECTIONS: usize = 1_000;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let count: usize = if quick { 100_000 } else { 1_000_000 };
    let started = Instant::now();
    let lab = Lab::new("lbbf", 4);
    let instance = Instance::new();
    let size = TABLE.to_string();
    let _daemon = instance.start(&lab, &["--conntrack-size", &size]);
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), WHO_PORT);
    let vip_arg = vip.to_string();
    let endpoint = |n: usize| SocketAddr::new(lab.backends[n].v4.into(), WHO_PORT).to_string();
    instance.ok(&["vip", "add", &vip_arg]);
    for n in 0..3 {
        instance.ok(&["backend", "add", &vip_arg, &endpoint(n)]);
    }
    let (mut connections, names) = lab
        .client
        .enter(|| open_who_connections(vip, CONNECTIONS, Duration::from_secs(120)));
    let IpAddr::V4(vip_v4) = vip.ip() else {
        panic!("an IPv4 VIP")
    };
    let frames = lb_tests::flood::frames(
        count,
        lab.client.mac(&lab.client_dev),
        lab.lb.mac(&lab.lb_ifaces[0]),
        vip_v4,
        WHO_PORT,
    );
    let before = instance.stats();
    let dev = lab.client_dev.clone();
    let sent = lab
        .client
        .enter(|| lb_tests::generator::blast(&dev, &frames, count as u64, Duration::from_secs(120)))
        .expect("send the flood");
    let after = instance.stats();
    let moved = |name| stat_packets(&after, name) - stat_packets(&before, name);
    let seconds = sent.took.as_secs_f64();
    instance.ok(&["backend", "add", &vip_arg, &endpoint(3)]);
    instance.ok(&["backend", "drain", &vip_arg, &endpoint(0)]);
    let broken = lab.client.enter(|| {
        connections
            .iter_mut()
            .zip(&names)
            .filter_map(|(connection, before)| {
                (connection.ask().ok().as_ref() != Some(before)).then_some(())
            })
            .count()
    });
    println!("## Flood: live frames against proven connections\n");
    println!(
        "The real `lb` daemon in a lab of namespaces (veth, native XDP; `--conntrack-size \
         {TABLE}`, the rate guard at its default), {CONNECTIONS} idle connections through a NAT \
         VIP (each proven: the backend's SYN-ACK and the client's ACK passed through lb), then \
         {count} frames from the AF_PACKET generator on the client's side, as fast as it \
         sends them: SYNs and bare ACKs to the VIP, each from a never-seen source and port. \
         Then a fourth backend added and the first drained, and every connection asked again: \
         broken if it failed or answered from another backend. The generator and the lb share \
         this machine's CPUs, and veth converts every frame to an XDP buffer (a copy real NICs \
         do not make): the rates are this lab's, not a NIC's. ({:.0} s)\n",
        started.elapsed().as_secs_f64()
    );
    println!(
        "| frames | offered per second | new flows tracked per second | not tracked (rate guard) | dropped by lb | connections broken |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.0} | {:.0} | {} | {} | {broken} of {CONNECTIONS} |",
        sent.frames,
        sent.frames as f64 / seconds,
        moved("ct_created") as f64 / seconds,
        moved("ct_flood_untracked"),
        moved("xdp_drop"),
    );
    assert_eq!(broken, 0, "no proven connection broken by the flood");
}
