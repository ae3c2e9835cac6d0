//! Golden packets for admission: new flows wait in CT_UNPROVEN until proven, a flood never
//! evicts a proven flow, the rate guard stops tracking (never forwarding), replies keep
//! datagram flows fresh, and frames for another MAC are the kernel's. The real program
//! under BPF_PROG_TEST_RUN in a FibLab; forwarded packets are re-parsed and checked.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_common::{
    consts::{IPPROTO_TCP, IPPROTO_UDP, XDP_PASS, XDP_REDIRECT},
    flow::{CT_ESTABLISHED, Conn, FlowKey, PROVEN_AFTER_PACKETS, Timeout},
    stats::Stat,
};
use lb_tests::{
    fiblab::{FibLab, Ids, add_dsr_vip, dsr_options},
    fragments::split,
    packets::{Family, LB_MAC, Spec, Transport},
    testrun::Datapath,
    testrun::flow_key as key,
    verify::verify,
};
use lb_userspace::model::{
    limits::{Limits, Options},
    mode::Mode,
    state::{Change, Proto, Service},
};

const CLIENT: &str = "198.18.0.1";
const VIP: &str = "198.18.1.1";
const DSR_VIP: &str = "198.18.1.20";
const BACKENDS: [&str; 2] = ["198.18.2.2", "198.18.2.3"];

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// The flow's entry and whether it is in the proven table.
fn tracked(datapath: &Datapath, flow: &FlowKey) -> Option<(Conn, bool)> {
    datapath
        .balancer
        .maps()
        .tracked_entry(flow)
        .expect("read conntrack")
}

fn proven(datapath: &Datapath, flow: &FlowKey) -> Option<bool> {
    tracked(datapath, flow).map(|(_, proven)| proven)
}

fn tcp(port: u16) -> Spec {
    Spec::new(Family::V4, Transport::Tcp)
        .between(ip(CLIENT), ip(VIP))
        .ports(port, 80)
}

/// The backend's answer to `client_port`, from `backend` (a SYN: what moves the entry).
fn reply_from(backend: IpAddr, client_port: u16, transport: Transport) -> Spec {
    Spec::new(Family::V4, transport)
        .between(backend, ip(CLIENT))
        .ports(8080, client_port)
}

#[test]
fn nat_tcp_is_proven_by_the_backends_answer_and_the_clients_ack() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        let flow = key(ip(CLIENT), 42_000, ip(VIP), 80, IPPROTO_TCP);
        datapath.set_ingress(ids.from_client);
        let (out, delta) = datapath.run_counted(&tcp(42_000).build(&[]));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::CtCreated), 1);
        assert_eq!(proven(datapath, &flow), Some(false), "a SYN is unproven");
        let backend = verify(&out.packet).dst;

        // A blind ACK (no answer seen): still unproven.
        datapath.run(&tcp(42_000).ack().build(&[]));
        assert_eq!(
            proven(datapath, &flow),
            Some(false),
            "an ACK without answer"
        );

        datapath.set_ingress(ids.from_backends);
        let out = datapath.run(&reply_from(backend, 42_000, Transport::Tcp).build(&[]));
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(verify(&out.packet).src, ip(VIP));
        assert_eq!(
            proven(datapath, &flow),
            Some(false),
            "answered, not yet acked"
        );

        // A blind ACK (a forger's guess) after the answer: still unproven, however many.
        datapath.set_ingress(ids.from_client);
        for _ in 0..2 * PROVEN_AFTER_PACKETS {
            datapath.run(&tcp(42_000).acking(0x0001_1234).build(&[]));
        }
        assert_eq!(proven(datapath, &flow), Some(false), "a wrong ACK number");

        // The client's ACK of the SYN-ACK (its sequence, 1, plus one).
        let (out, delta) = datapath.run_counted(&tcp(42_000).acking(2).build(b"GET"));
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(verify(&out.packet).dst, backend, "the same backend");
        assert_eq!(delta.packets(Stat::CtPromoted), 1, "{:?}", delta.moved());
        let (conn, in_proven) = tracked(datapath, &flow).expect("tracked");
        assert!(in_proven, "moved to the proven table");
        assert_eq!(conn.state, CT_ESTABLISHED);
    });
}

/// A NAT connection from `port` opened, answered and acknowledged, so proven; its backend.
/// Leaves the client's interface as the ingress.
fn open_and_prove(datapath: &mut Datapath, ids: &Ids, port: u16) -> IpAddr {
    datapath.set_ingress(ids.from_client);
    let (out, _) = datapath.run_counted(&tcp(port).build(&[]));
    let backend = verify(&out.packet).dst;
    datapath.set_ingress(ids.from_backends);
    datapath.run(&reply_from(backend, port, Transport::Tcp).build(&[]));
    datapath.set_ingress(ids.from_client);
    let (_, delta) = datapath.run_counted(&tcp(port).acking(2).build(b"GET"));
    assert_eq!(delta.packets(Stat::CtPromoted), 1, "{:?}", delta.moved());
    backend
}

/// When the test's sweep (which builds the proven-flow filter) runs.
#[derive(Clone, Copy, Debug)]
enum FilterBuilt {
    /// Never: the filter is not built, and every SYN looks in the proven table.
    Never,
    /// Before the flow is proven: only the datapath's promotion sets its bit.
    BeforePromotion,
    /// After: the sweep's walk of the proven table sets it.
    AfterPromotion,
}

/// A client reusing the 5-tuple of a proven, cached connection after that connection's
/// backend stopped taking new ones: the SYN is balanced afresh and replaces the entry in
/// place, and the new connection's later packets follow it (the old flow-cache slot,
/// forgotten by the SYN, does not decide). Whether or not the proven-flow filter is built,
/// and whichever of the promotion and the sweep set the flow's bit.
#[test]
fn a_syn_reusing_a_proven_flows_port_opens_a_new_connection() {
    lb_tests::require_root!();
    for built in [
        FilterBuilt::Never,
        FilterBuilt::BeforePromotion,
        FilterBuilt::AfterPromotion,
    ] {
        syn_reusing_a_proven_flows_port(built);
    }
}

fn syn_reusing_a_proven_flows_port(built: FilterBuilt) {
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        let port = 42_100;
        let flow = key(ip(CLIENT), port, ip(VIP), 80, IPPROTO_TCP);
        if matches!(built, FilterBuilt::BeforePromotion) {
            datapath.sweep();
        }
        // Opened, answered, acknowledged: proven; then cached.
        let old = open_and_prove(datapath, ids, port);
        if matches!(built, FilterBuilt::AfterPromotion) {
            datapath.sweep();
        }
        let filter = datapath.proven_filter();
        assert_eq!(
            filter.contains(&flow),
            match built {
                FilterBuilt::Never => None,
                _ => Some(true),
            },
            "{built:?}: the proven flow's bit"
        );
        datapath.run(&tcp(port).acking(2).build(&[]));
        let (_, delta) = datapath.run_counted(&tcp(port).acking(2).build(&[]));
        assert_eq!(delta.packets(Stat::FlowCacheHit), 1, "{:?}", delta.moved());

        datapath
            .balancer
            .apply(&Change::DrainBackend {
                service: Service {
                    addr: SocketAddr::new(ip(VIP), 80),
                    proto: Proto::Tcp,
                },
                backend: SocketAddr::new(old, 8080),
            })
            .expect("drain the connection's backend");
        let (out, delta) = datapath.run_counted(&tcp(port).build(&[]));
        let new = verify(&out.packet).dst;
        assert_ne!(new, old, "{built:?}: balanced afresh: {:?}", delta.moved());
        assert_eq!(delta.packets(Stat::ForwardNew), 1, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::CtReplaced), 1, "{:?}", delta.moved());
        let (conn, in_proven) = tracked(datapath, &flow).expect("tracked");
        assert!(in_proven, "replaced in place");
        for _ in 0..3 {
            let (out, delta) = datapath.run_counted(&tcp(port).acking(7).build(b"x"));
            assert_eq!(
                verify(&out.packet).dst,
                new,
                "{built:?}, {conn:?}: {:?}",
                delta.moved()
            );
        }
    });
}

/// The proven-flow filter spares a new flow's SYN the proven table's lookup once a sweep
/// has built it; until then every SYN looks (`ct_filter_false_positive`). A proven flow
/// that the sweep deletes leaves the rebuilt half with its bit clear.
#[test]
fn the_proven_flow_filter_spares_new_flows_the_proven_lookup() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let looked_in_vain = |datapath: &mut Datapath, port: u16| {
            let (out, delta) = datapath.run_counted(&tcp(port).build(&[]));
            assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardNew), 1, "{:?}", delta.moved());
            delta.packets(Stat::CtFilterFalsePositive)
        };
        assert_eq!(
            looked_in_vain(datapath, 43_000),
            1,
            "not built: every SYN looks"
        );

        // Proven: its bit is set by the promotion, then kept by the sweep's rebuild.
        let port = 43_001;
        let flow = key(ip(CLIENT), port, ip(VIP), 80, IPPROTO_TCP);
        open_and_prove(datapath, ids, port);
        let sweep = datapath.sweep();
        assert_eq!(sweep.proven_pass.seen, 1, "{sweep:?}");
        let filter = datapath.proven_filter();
        assert_eq!(filter.contains(&flow), Some(true), "kept by the rebuild");
        for port in 43_100..43_110 {
            assert_eq!(looked_in_vain(datapath, port), 0, "built: port {port}");
        }

        // Everything expires (timeouts of 0, once the coarse clock has moved on): the
        // proven flow is deleted, and the rebuilt half leaves its bit clear.
        let expire = datapath.sweeper([0; 5]);
        lb_tests::wait::eventually(Duration::from_secs(2), "the proven flow expired", || {
            let sweep = expire.sweep().expect("sweep");
            if sweep.proven_pass.deleted == 1 {
                Ok(())
            } else {
                Err(sweep.proven_pass)
            }
        });
        assert_eq!(
            filter.contains(&flow),
            Some(false),
            "cleared by the rebuild"
        );
        assert_eq!(looked_in_vain(datapath, port), 0, "its SYN does not look");
        assert_eq!(
            tracked(datapath, &flow).map(|(_, proven)| proven),
            Some(false)
        );
    });
}

#[test]
fn a_mid_flow_miss_is_unproven_until_the_client_keeps_sending() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let flow = key(ip(CLIENT), 42_001, ip(VIP), 80, IPPROTO_TCP);
        let ack = tcp(42_001).ack().build(b"data");
        let mut backends = Vec::new();
        for n in 1..=PROVEN_AFTER_PACKETS {
            let (out, delta) = datapath.run_counted(&ack);
            assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
            backends.push(verify(&out.packet).dst);
            let expected = n >= PROVEN_AFTER_PACKETS;
            assert_eq!(proven(datapath, &flow), Some(expected), "after {n} packets");
            if n == 1 {
                assert_eq!(delta.packets(Stat::CtMissMidFlow), 1);
                // Unproven, it lives no longer than an opening flow, not 3 hours.
                let now = datapath.balancer.maps().tracked_entry(&flow).ok().flatten();
                let (conn, _) = now.expect("tracked");
                let opening = Timeout::TcpOpening.default_secs() * 1_000_000_000;
                let aged = Conn {
                    last_seen_ns: conn.last_seen_ns - opening - 1_000_000_000,
                    ..conn
                };
                assert!(
                    aged.expired_unproven(conn.last_seen_ns, &lb_common::flow::DEFAULT_TIMEOUTS_NS)
                );
                assert!(!aged.expired(conn.last_seen_ns, &lb_common::flow::DEFAULT_TIMEOUTS_NS));
            }
        }
        backends.dedup();
        assert_eq!(backends.len(), 1, "one backend throughout");
    });
}

#[test]
fn an_expired_unproven_mid_flow_entry_counts_as_absent() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let flow = key(ip(CLIENT), 42_002, ip(VIP), 80, IPPROTO_TCP);
        let ack = tcp(42_002).ack().build(b"data");
        datapath.run(&ack);
        let (conn, _) = tracked(datapath, &flow).expect("tracked");
        // Idle past the opening timeout: an established proven flow would still be live.
        let idle = (Timeout::TcpOpening.default_secs() + 1) * 1_000_000_000;
        let aged = Conn {
            last_seen_ns: conn.last_seen_ns.saturating_sub(idle),
            ..conn
        };
        datapath
            .balancer
            .maps_mut()
            .set_conntrack_entry(&flow, &aged)
            .expect("age the entry");
        let (_, delta) = datapath.run_counted(&ack);
        assert_eq!(delta.packets(Stat::CtExpired), 1, "{:?}", delta.moved());
    });
}

#[test]
fn dsr_tcp_is_proven_by_the_handshake_and_udp_by_packets() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath_loaded(Datapath::TEST_LIMITS, &dsr_options(), |datapath, ids| {
        add_dsr_vip(datapath, ip(DSR_VIP), Mode::DsrIpip, &BACKENDS.map(ip));
        datapath.set_ingress(ids.from_client);
        let syn = Spec::new(Family::V4, Transport::Tcp)
            .between(ip(CLIENT), ip(DSR_VIP))
            .ports(42_010, 80);
        let flow = key(ip(CLIENT), 42_010, ip(DSR_VIP), 80, IPPROTO_TCP);
        let (out, delta) = datapath.run_counted(&syn.build(&[]));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
        assert_eq!(proven(datapath, &flow), Some(false));
        let (_, delta) = datapath.run_counted(&syn.ack().build(&[]));
        assert_eq!(delta.packets(Stat::CtPromoted), 1, "{:?}", delta.moved());
        assert_eq!(proven(datapath, &flow), Some(true), "handshake completed");

        let udp = Spec::new(Family::V4, Transport::Udp)
            .between(ip(CLIENT), ip(DSR_VIP))
            .ports(42_011, 53);
        let flow = key(ip(CLIENT), 42_011, ip(DSR_VIP), 53, IPPROTO_UDP);
        for n in 1..=PROVEN_AFTER_PACKETS {
            datapath.run(&udp.build(b"q"));
            assert_eq!(
                proven(datapath, &flow),
                Some(n >= PROVEN_AFTER_PACKETS),
                "after {n} datagrams"
            );
        }
    });
}

#[test]
fn nat_udp_replies_prove_and_refresh_their_flow() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let request = Spec::new(Family::V4, Transport::Udp)
            .between(ip(CLIENT), ip(VIP))
            .ports(42_020, 53);
        let flow = key(ip(CLIENT), 42_020, ip(VIP), 53, IPPROTO_UDP);
        let backend = verify(&datapath.run(&request.build(b"q")).packet).dst;
        assert_eq!(proven(datapath, &flow), Some(false));

        // Only the backend talks for a while: its replies keep the entry fresh.
        let (conn, _) = tracked(datapath, &flow).expect("tracked");
        let idle = (Timeout::Udp.default_secs() - 1) * 1_000_000_000;
        let aged = Conn {
            last_seen_ns: conn.last_seen_ns.saturating_sub(idle),
            ..conn
        };
        datapath
            .balancer
            .maps_mut()
            .set_conntrack_entry(&flow, &aged)
            .expect("age the entry");
        datapath.set_ingress(ids.from_backends);
        let out = datapath.run(&reply_from(backend, 42_020, Transport::Udp).build(b"a"));
        assert_eq!(out.action, XDP_REDIRECT);
        let (after, _) = tracked(datapath, &flow).expect("tracked");
        assert!(
            after.last_seen_ns > aged.last_seen_ns,
            "a reply refreshes its flow"
        );

        datapath.set_ingress(ids.from_client);
        let (_, delta) = datapath.run_counted(&request.build(b"q"));
        assert_eq!(delta.packets(Stat::CtPromoted), 1, "{:?}", delta.moved());
        assert_eq!(
            proven(datapath, &flow),
            Some(true),
            "answered, then asked again"
        );
    });
}

#[test]
fn a_flood_never_evicts_proven_flows() {
    lb_tests::require_root!();
    const PROVEN: u16 = 50;
    const FLOOD: u32 = 20_000;
    let limits = Limits {
        conntrack_capacity: 1024,
        ..Datapath::TEST_LIMITS
    };
    let options = Options {
        new_flow_limit: 0,
        ..Options::default()
    };
    let lab = FibLab::new();
    lab.with_datapath_loaded(limits, &options, |datapath, ids| {
        datapath.set_ingress(ids.from_client);
        // Proven flows: a datagram exchange each.
        let mut pinned = Vec::new();
        for port in 0..PROVEN {
            let request = Spec::new(Family::V4, Transport::Udp)
                .between(ip(CLIENT), ip(VIP))
                .ports(30_000 + port, 53);
            datapath.set_ingress(ids.from_client);
            let backend = verify(&datapath.run(&request.build(b"q")).packet).dst;
            datapath.set_ingress(ids.from_backends);
            datapath.run(&reply_from(backend, 30_000 + port, Transport::Udp).build(b"a"));
            datapath.set_ingress(ids.from_client);
            datapath.run(&request.build(b"q"));
            let flow = key(ip(CLIENT), 30_000 + port, ip(VIP), 53, IPPROTO_UDP);
            assert_eq!(proven(datapath, &flow), Some(true), "port {port}");
            pinned.push((flow, backend));
        }
        // A flood of new flows from random sources, twenty times the unproven table: a
        // SYN then a blind ACK on each 5-tuple (the ACK finds the SYN's entry, which the
        // kernel's LRU then takes for a used one, as it takes the proven flows).
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut flooded = 0;
        for _ in 0..FLOOD / 2 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let src = std::net::Ipv4Addr::new(198, 18, 100 + (state >> 8) as u8 % 50, state as u8);
            let spec = Spec::new(Family::V4, Transport::Tcp)
                .between(IpAddr::V4(src), ip(VIP))
                .ports(1024 + (state >> 16) as u16 % 60_000, 80);
            for packet in [spec, spec.ack()] {
                if datapath.run(&packet.build(&[])).action == XDP_REDIRECT {
                    flooded += 1;
                }
            }
        }
        assert_eq!(
            flooded, FLOOD,
            "every flood packet still goes where Maglev says"
        );
        for (flow, backend) in &pinned {
            let (_, in_proven) = tracked(datapath, flow).expect("a proven flow survives");
            assert!(in_proven);
            let again = Spec::new(Family::V4, Transport::Udp)
                .between(ip(CLIENT), ip(VIP))
                .ports(flow.src_port, 53);
            let out = datapath.run(&again.build(b"q"));
            assert_eq!(verify(&out.packet).dst, *backend);
        }
    });
}

/// A forger's flood that gets answers: a SYN on each forged 5-tuple, the backend's SYN-ACK
/// passing through lb (as it would), then blind ACKs guessing the acknowledgment number.
#[test]
fn an_answered_nat_flood_with_blind_acks_evicts_no_proven_flow() {
    lb_tests::require_root!();
    const PROVEN: u16 = 50;
    const FORGED: u32 = 3_000;
    let limits = Limits {
        conntrack_capacity: 1024,
        ..Datapath::TEST_LIMITS
    };
    let options = Options {
        new_flow_limit: 0,
        ..Options::default()
    };
    let lab = FibLab::new();
    lab.with_datapath_loaded(limits, &options, |datapath, ids| {
        let mut pinned = Vec::new();
        for port in 0..PROVEN {
            let request = tcp(31_000 + port);
            datapath.set_ingress(ids.from_client);
            let backend = verify(&datapath.run(&request.build(&[])).packet).dst;
            datapath.set_ingress(ids.from_backends);
            datapath.run(&reply_from(backend, 31_000 + port, Transport::Tcp).build(&[]));
            datapath.set_ingress(ids.from_client);
            datapath.run(&request.acking(2).build(&[]));
            let flow = key(ip(CLIENT), 31_000 + port, ip(VIP), 80, IPPROTO_TCP);
            assert_eq!(proven(datapath, &flow), Some(true), "port {port}");
            pinned.push(flow);
        }
        let mut state = 0x1234_5678_9abc_def1_u64;
        for _ in 0..FORGED {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let src = IpAddr::from([198, 18, 100 + (state >> 8) as u8 % 50, state as u8]);
            let port = 1024 + (state >> 16) as u16 % 60_000;
            let forged = Spec::new(Family::V4, Transport::Tcp)
                .between(src, ip(VIP))
                .ports(port, 80);
            datapath.set_ingress(ids.from_client);
            let out = datapath.run(&forged.build(&[]));
            let backend = verify(&out.packet).dst;
            datapath.set_ingress(ids.from_backends);
            let answer = Spec::new(Family::V4, Transport::Tcp)
                .between(backend, src)
                .ports(8080, port)
                .build(&[]);
            datapath.run(&answer);
            datapath.set_ingress(ids.from_client);
            for guess in 0..PROVEN_AFTER_PACKETS {
                datapath.run(&forged.acking(u32::from(guess) << 16 | 0x77).build(&[]));
            }
        }
        let stats = datapath.stats();
        assert_eq!(
            stats.get(Stat::CtPromoted).packets,
            u64::from(PROVEN),
            "no forged flow was promoted"
        );
        for flow in &pinned {
            assert_eq!(proven(datapath, flow), Some(true), "{flow:?} survives");
        }
    });
}

#[test]
fn past_the_new_flow_limit_flows_are_forwarded_untracked() {
    lb_tests::require_root!();
    const LIMIT: u32 = 5;
    let options = Options {
        new_flow_limit: LIMIT,
        ..Options::default()
    };
    let lab = FibLab::new();
    Datapath::stay_on_one_cpu();
    lab.with_datapath_loaded(Datapath::TEST_LIMITS, &options, |datapath, ids| {
        Datapath::stay_on_one_cpu();
        datapath.set_ingress(ids.from_client);
        const SENT: u64 = 20;
        let mut untracked = 0;
        for port in 0..SENT as u16 {
            let (out, delta) = datapath.run_counted(&tcp(43_000 + port).build(&[]));
            assert_eq!(out.action, XDP_REDIRECT, "forwarded: {:?}", delta.moved());
            untracked += delta.packets(Stat::CtFloodUntracked);
        }
        // LIMIT tracked per one-second window; twenty test runs take milliseconds, so
        // they span at most two windows.
        let limit = u64::from(LIMIT);
        assert!(
            (SENT - 2 * limit..=SENT - limit).contains(&untracked),
            "{untracked} of {SENT} untracked"
        );
        let flow = key(ip(CLIENT), 43_000, ip(VIP), 80, IPPROTO_TCP);
        assert_eq!(proven(datapath, &flow), Some(false), "the first is tracked");
    });
}

#[test]
fn frames_for_another_mac_are_passed_untouched() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        datapath
            .balancer
            .set_local_macs(&[(ids.from_client, LB_MAC)], &[ids.from_client])
            .expect("record the MAC");
        let to_us = tcp(44_000).build(&[]);
        let (out, delta) = datapath.run_counted(&to_us);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());

        for mac in [
            [0x02, 0, 0, 0, 0, 0x99],
            [0xff; 6],
            [0x01, 0, 0x5e, 0, 0, 1],
        ] {
            let mut other = tcp(44_001).build(&[]);
            other[..6].copy_from_slice(&mac);
            let (out, delta) = datapath.run_counted(&other);
            assert_eq!(out.action, XDP_PASS, "{mac:02x?}");
            assert_eq!(out.packet, other, "untouched");
            assert_eq!(delta.packets(Stat::PassOtherHost), 1, "{:?}", delta.moved());
            assert_eq!(delta.packets(Stat::CtCreated), 0, "no flow");
        }
        // Nor is a later fragment to the VIP.
        let datagram = Spec::new(Family::V4, Transport::Udp)
            .between(ip(CLIENT), ip(VIP))
            .ports(44_002, 53)
            .build(&[0x55; 1200]);
        let [_, mut later] = split(&datagram, 600, 0x4242);
        later[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x97]);
        let (out, delta) = datapath.run_counted(&later);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.packet, later, "untouched");
        assert_eq!(delta.packets(Stat::PassOtherHost), 1, "{:?}", delta.moved());
        // A backend's reply to another MAC is not translated either.
        datapath.set_ingress(ids.from_backends);
        datapath
            .balancer
            .set_local_macs(&[(ids.from_backends, LB_MAC)], &[ids.from_backends])
            .expect("record the MAC");
        let mut reply = reply_from(ip(BACKENDS[0]), 44_000, Transport::Tcp).build(&[]);
        reply[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x98]);
        let (out, delta) = datapath.run_counted(&reply);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(delta.packets(Stat::PassOtherHost), 1, "{:?}", delta.moved());
    });
}

/// A new flow from `port`, which must be forwarded and tracked; the unproven flows it
/// evicted to make room.
fn open_tracked(datapath: &mut Datapath, port: u16) -> u64 {
    let (out, delta) = datapath.run_counted(&tcp(port).build(&[]));
    assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
    assert_eq!(
        delta.packets(Stat::CtCreated),
        1,
        "port {port}: {:?}",
        delta.moved()
    );
    delta.packets(Stat::CtUnprovenEvicted)
}

/// A full unproven table makes room for a new flow by deleting the oldest flow its CPU
/// tracked that is still there (first in, first out); a CPU whose own flows are all gone
/// takes another CPU's oldest; proven flows are never the ones deleted.
#[test]
fn a_full_unproven_table_makes_room_oldest_first() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    let limits = Limits {
        conntrack_capacity: 4096,
        ..Limits::default()
    };
    let capacity = limits.unproven_capacity();
    lab.with_datapath_loaded(limits, &Options::default(), |datapath, ids| {
        Datapath::run_on_cpu(0);
        let proven_port = 40_000;
        open_and_prove(datapath, ids, proven_port);
        let proven_flow = key(ip(CLIENT), proven_port, ip(VIP), 80, IPPROTO_TCP);
        let flow = |port: u16| key(ip(CLIENT), port, ip(VIP), 80, IPPROTO_TCP);
        let last = u16::try_from(capacity).expect("a small table");
        for port in 1..=last {
            assert_eq!(
                open_tracked(datapath, port),
                0,
                "port {port}: the table has room"
            );
        }
        for (port, oldest) in [(last + 1, 1), (last + 2, 2)] {
            assert_eq!(
                open_tracked(datapath, port),
                1,
                "port {port}: the table is full"
            );
            assert_eq!(
                proven(datapath, &flow(oldest)),
                None,
                "the oldest made room"
            );
            assert_eq!(proven(datapath, &flow(oldest + 1)), Some(false));
            assert_eq!(proven(datapath, &flow(port)), Some(false));
        }
        assert_eq!(
            proven(datapath, &proven_flow),
            Some(true),
            "a proven flow stays"
        );

        // Another CPU, which tracked nothing: it takes CPU 0's oldest.
        // SAFETY: no preconditions (not the affinity-bound count: this thread is on CPU 0).
        if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } < 2 {
            lb_tests::loud("one CPU: the eviction from another CPU's ring is not exercised");
            return;
        }
        Datapath::run_on_cpu(1);
        assert_eq!(open_tracked(datapath, last + 3), 1, "another CPU's oldest");
        assert_eq!(proven(datapath, &flow(3)), None, "CPU 0's oldest made room");
        assert_eq!(proven(datapath, &flow(last + 3)), Some(false));
    });
}

/// An unproven table filled by two CPUs, neither of whose rings has wrapped: each CPU
/// still makes room for every new flow, by its own oldest, one after another.
#[test]
fn an_unproven_table_filled_from_two_cpus_keeps_tracking_on_both() {
    lb_tests::require_root!();
    // SAFETY: no preconditions (the online CPUs, whatever this thread's affinity).
    if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } < 2 {
        lb_tests::loud("one CPU: filling the unproven table from two CPUs is not exercised");
        return;
    }
    let lab = FibLab::new();
    let limits = Limits {
        conntrack_capacity: 4096,
        ..Limits::default()
    };
    let half = u16::try_from(limits.unproven_capacity() / 2).expect("a small table");
    lab.with_datapath_loaded(limits, &Options::default(), |datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let flow = |port: u16| key(ip(CLIENT), port, ip(VIP), 80, IPPROTO_TCP);
        // Half the table from each CPU: full, and neither ring has wrapped.
        for (cpu, first) in [(0, 1), (1, 1 + half)] {
            Datapath::run_on_cpu(cpu);
            for port in first..first + half {
                assert_eq!(
                    open_tracked(datapath, port),
                    0,
                    "port {port}: the table has room"
                );
            }
        }
        // A hundred new flows on each CPU: each evicts that CPU's oldest.
        for (cpu, oldest) in [(0, 1), (1, 1 + half)] {
            Datapath::run_on_cpu(cpu);
            let first = 2 * half + 1 + cpu as u16 * 100;
            for port in first..first + 100 {
                assert_eq!(
                    open_tracked(datapath, port),
                    1,
                    "CPU {cpu}, port {port}: full"
                );
            }
            assert_eq!(proven(datapath, &flow(oldest)), None, "CPU {cpu}'s oldest");
            assert_eq!(proven(datapath, &flow(oldest + 99)), None, "its 100th");
            assert_eq!(
                proven(datapath, &flow(oldest + 100)),
                Some(false),
                "its 101st"
            );
        }
    });
}
