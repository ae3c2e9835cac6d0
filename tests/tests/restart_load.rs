//! A restart under load: dsr-ipip UDP at 60,000 packets a second through a daemon that is
//! stopped and started again (adopting its pinned datapath) while the packets flow. Between
//! the new load's JUMPS update and the link switch the old `lb` tail-calls the new
//! `lb_encap`; with per-load argument maps it would read zeros. Every packet sent must be
//! decapsulated by a backend. The real `lb` binary, the backends' decap program and an
//! AF_PACKET generator in namespaces; needs root.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use lb_tests::{
    dsr::{self, DsrLab, Wiring},
    generator,
    process::{Daemon, DecapPaths, Instance, stat_packets},
    servers::UDP_PORT,
};
use serde_json::Value;

/// Packets a second: past the 50,000 the restart must be shown to survive.
const RATE: u64 = 60_000;
/// Before the restart: the lab alone at this rate loses nothing.
const WARM_UP: u64 = RATE;
/// Across the restart: ten seconds' worth.
const ACROSS: u64 = 10 * RATE;
const FLOWS: u16 = 1_000;

/// Datagrams the backends' decap programs took apart, summed.
fn decapsulated(decaps: &[DecapPaths]) -> u64 {
    decaps
        .iter()
        .map(|decap| {
            let status: Value =
                serde_json::from_str(&decap.ok(&["status", "--json"])).expect("status JSON");
            status["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    i["counters"]["decap_ipv4_in_ipv4"]["packets"]
                        .as_u64()
                        .unwrap_or(0)
                })
                .sum::<u64>()
        })
        .sum()
}

/// Polls until the backends have taken apart `expected` more than `base`, or the count
/// stops moving for a second; what they took apart.
fn settled(decaps: &[DecapPaths], base: u64, expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = (decapsulated(decaps) - base, Instant::now());
    loop {
        if last.0 >= expected || Instant::now() > deadline {
            return last.0;
        }
        std::thread::sleep(Duration::from_millis(100));
        let now = decapsulated(decaps) - base;
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            return now;
        }
    }
}

fn frames(src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|n| {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2(src_mac, dst_mac)
                .ipv4(dsr::CLIENT_V4.octets(), dsr::VIP_V4.octets(), 64)
                .udp(20_000 + n, UDP_PORT)
                .write(&mut frame, b"restart")
                .expect("build a datagram");
            frame
        })
        .collect()
}

#[test]
fn a_restart_at_60000_packets_a_second_loses_none() {
    lb_tests::require_root!();
    let lab = DsrLab::new("lbrl", Wiring::Routed, 2);
    let vip = std::net::IpAddr::V4(dsr::VIP_V4);
    let decaps: Vec<DecapPaths> = lab
        .backends
        .iter()
        .map(|backend| {
            let decap = DecapPaths::new(&backend.ns);
            let lb_v4 = format!("{}/32", dsr::LB_V4);
            decap.ok(&[
                "attach",
                "--iface",
                backend.dev.as_str(),
                "--vip",
                &vip.to_string(),
                "--allow-source",
                &lb_v4,
            ]);
            decap
        })
        .collect();
    let instance = Instance::new();
    let run = || Daemon::start(instance.run(&lab.lb, std::slice::from_ref(&lab.lb_iface), &[]));
    let daemon = run();
    let vip_arg = SocketAddr::new(vip, UDP_PORT).to_string();
    instance.ok(&[
        "vip", "add", &vip_arg, "--proto", "udp", "--mode", "dsr-ipip",
    ]);
    for backend in &lab.backends {
        let addr = SocketAddr::new(backend.v4.into(), UDP_PORT).to_string();
        instance.ok(&["backend", "add", &vip_arg, &addr, "--proto", "udp"]);
    }
    let frames = frames(lab.router.mac(&lab.router_to_lb), lab.lb.mac(&lab.lb_iface));
    let send = |total: u64| {
        let dev = lab.router_to_lb.clone();
        let frames = frames.clone();
        let router = lab.router.path();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(router).expect("the router's namespace");
            // SAFETY: setns on this thread only, with a namespace descriptor we opened.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            generator::paced(&dev, &frames, total, RATE, Duration::from_secs(60))
                .expect("send datagrams")
        })
    };

    // The lab alone at this rate.
    let base = decapsulated(&decaps);
    let warm = send(WARM_UP).join().expect("the generator");
    let took = settled(&decaps, base, warm.frames);
    assert_eq!(warm.frames, WARM_UP);
    assert_eq!(
        took, warm.frames,
        "without a restart, every datagram at {RATE}/s reaches a backend"
    );

    // The same across a restart: stop the daemon (the pinned datapath keeps forwarding)
    // and start another, which loads the program again and switches the links over.
    let base = decapsulated(&decaps);
    let counters_before = instance.stats();
    let sender = send(ACROSS);
    lb_tests::eventually(Duration::from_secs(10), "traffic flowing", || {
        let through = decapsulated(&decaps) - base;
        if through >= RATE / 2 {
            Ok(())
        } else {
            Err(through)
        }
    });
    let restarted = Instant::now();
    let (status, _) = daemon.terminate();
    assert!(status.success(), "the daemon stops cleanly: {status}");
    let daemon = run();
    let restart_took = restarted.elapsed();
    let sent = sender.join().expect("the generator");
    let took = settled(&decaps, base, sent.frames);
    let rate = sent.frames as f64 / sent.took.as_secs_f64();
    eprintln!(
        "restart under load: {} datagrams at {rate:.0}/s, the restart took {restart_took:?} \
         in the middle, {took} decapsulated, {} lost",
        sent.frames,
        sent.frames.saturating_sub(took)
    );
    assert!(rate >= 50_000.0, "the rate held: {rate:.0}/s");
    assert!(
        sent.took > restart_took,
        "the traffic outlasted the restart"
    );
    assert_eq!(took, sent.frames, "no datagram lost across the restart");
    // Every flow was tracked before: each datagram was sent as an established one. An
    // `lb_encap` that read another load's empty arguments would send it as a new flow to
    // backend 0 (still delivered, so only this counter tells).
    let counters = instance.stats();
    let moved = |name| stat_packets(&counters, name) - stat_packets(&counters_before, name);
    assert_eq!(moved("fwd_new_flow"), 0, "no datagram taken for a new flow");
    assert!(
        moved("fwd_established") >= sent.frames,
        "every datagram forwarded as established: {}",
        moved("fwd_established")
    );
    drop(daemon);
}
