//! Golden packets for a VIP's policies of issue 27: `--on-down` (what the tracked flows of a
//! backend marked down do) and `--allow-source` (which clients may open flows). The real
//! program under BPF_PROG_TEST_RUN in a FibLab, its maps written by the balancer as the
//! daemon writes them.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    consts::{IPPROTO_TCP, XDP_DROP, XDP_REDIRECT},
    stats::Stat,
};
use lb_tests::{
    fiblab::FibLab,
    packets::{Family, Spec, Transport},
    testrun::Datapath,
    testrun::flow_key as key,
    verify::verify,
};
use lb_userspace::model::{
    policy::OnDown,
    prefix::Prefix,
    state::{Change, Proto, Service},
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn service(vip: &str, port: u16, proto: Proto) -> Service {
    Service {
        addr: SocketAddr::new(ip(vip), port),
        proto,
    }
}

fn set_sources(datapath: &mut Datapath, service: Service, prefixes: &[&str]) {
    let sources: Vec<Prefix> = prefixes
        .iter()
        .map(|p| p.parse().expect("prefix"))
        .collect();
    datapath
        .balancer
        .apply(&Change::SetSources { service, sources })
        .expect("valid prefixes");
}

const CLIENT: &str = "198.18.0.1";
const VIP: &str = "198.18.1.1";

/// A TCP connection and a UDP flow whose backends go down: under keep-tcp (the default)
/// the TCP flow stays (counted once), the UDP flow moves; under move both move.
#[test]
fn a_down_backend_keeps_tcp_flows_under_keep_tcp_and_loses_them_under_move() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let tcp = Spec::new(Family::V4, Transport::Tcp)
            .between(ip(CLIENT), ip(VIP))
            .ports(41_101, 80);
        let udp = Spec::new(Family::V4, Transport::Udp)
            .between(ip(CLIENT), ip(VIP))
            .ports(41_101, 53)
            .build(b"statsd");
        let tcp_backend = verify(&datapath.run(&tcp.build(&[])).packet).dst;
        datapath.run(&tcp.ack().build(&[]));
        let udp_backend = verify(&datapath.run(&udp).packet).dst;
        let (tcp_vip, udp_vip) = (service(VIP, 80, Proto::Tcp), service(VIP, 53, Proto::Udp));
        let on_down = |datapath: &Datapath, service: &Service| {
            datapath.balancer.state().vips[service].on_down
        };
        assert_eq!(on_down(datapath, &tcp_vip), OnDown::KeepTcp, "the default");
        let down = BTreeSet::from([
            (tcp_vip, SocketAddr::new(tcp_backend, 8080)),
            (udp_vip, SocketAddr::new(udp_backend, 8080)),
        ]);
        datapath.balancer.set_down(down).expect("mark down");

        // keep-tcp: the connection stays where it is, counted once as kept.
        let data = tcp.ack().build(b"more");
        let (out, delta) = datapath.run_counted(&data);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
        assert_eq!(
            verify(&out.packet).dst,
            tcp_backend,
            "kept on the down backend"
        );
        assert_eq!(delta.packets(Stat::CtKeptOnDown), 1, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::ForwardEstablished), 1);
        assert_eq!(delta.packets(Stat::CtRebalanced), 0);
        let (out, delta) = datapath.run_counted(&data);
        assert_eq!(verify(&out.packet).dst, tcp_backend);
        assert_eq!(delta.packets(Stat::CtKeptOnDown), 0, "a flow counts once");
        // ...but a datagram flow moves off it at once.
        let (out, delta) = datapath.run_counted(&udp);
        assert_eq!(delta.packets(Stat::CtRebalanced), 1, "{:?}", delta.moved());
        assert_ne!(verify(&out.packet).dst, udp_backend, "UDP moves");
        // A new connection never goes to the down backend.
        for port in 41_200..41_220 {
            let syn = tcp.ports(port, 80).build(&[]);
            assert_ne!(verify(&datapath.run(&syn).packet).dst, tcp_backend);
        }

        // move: the same connection moves at its next packet.
        datapath
            .balancer
            .apply(&Change::SetOnDown {
                service: tcp_vip,
                on_down: OnDown::Move,
            })
            .expect("valid");
        let (out, delta) = datapath.run_counted(&data);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::CtRebalanced), 1, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::CtKeptOnDown), 0);
        assert_ne!(
            verify(&out.packet).dst,
            tcp_backend,
            "moved off the down backend"
        );
    });
}

/// SYNs from inside a VIP's prefixes are forwarded, from outside dropped and counted; a
/// VIP without prefixes (the same address on UDP) takes anyone; IPv4 and IPv6.
#[test]
fn only_clients_inside_a_vips_source_prefixes_open_flows() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        for (family, vip, inside, outside, prefixes) in [
            (
                Family::V4,
                VIP,
                "198.18.0.1",
                "198.18.100.5",
                ["198.18.0.0/30", "198.18.100.8/29"],
            ),
            (
                Family::V6,
                "fd00:1::1",
                "fd00::1",
                "fd00::100:5",
                ["fd00::/126", "fd00::100:8/125"],
            ),
        ] {
            set_sources(datapath, service(vip, 80, Proto::Tcp), &prefixes);
            let syn = |client: &str, port: u16| {
                Spec::new(family, Transport::Tcp)
                    .between(ip(client), ip(vip))
                    .ports(port, 80)
                    .build(&[])
            };
            let (out, delta) = datapath.run_counted(&syn(inside, 42_001));
            assert_eq!(out.action, XDP_REDIRECT, "{family:?}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardNew), 1);

            let refused = syn(outside, 42_002);
            let (out, delta) = datapath.run_counted(&refused);
            assert_eq!(out.action, XDP_DROP, "{family:?}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::DropSourceNotAllowed), 1, "{family:?}");
            assert_eq!(delta.packets(Stat::CtCreated), 0, "nothing tracked");
            let flow = key(ip(outside), 42_002, ip(vip), 80, IPPROTO_TCP);
            let tracked = datapath.balancer.maps().conntrack_entry(&flow);
            assert!(matches!(tracked, Ok(None)), "{family:?}: {tracked:?}");
            // Nor does a segment that is not a SYN get through by looking mid-flow.
            let sneaky = Spec::new(family, Transport::Tcp)
                .between(ip(outside), ip(vip))
                .ports(42_003, 80)
                .ack()
                .build(b"x");
            assert_eq!(datapath.run(&sneaky).action, XDP_DROP, "{family:?}");

            // The same address on UDP has no prefixes: anyone.
            let query = Spec::new(family, Transport::Udp)
                .between(ip(outside), ip(vip))
                .ports(42_004, 53)
                .build(b"q");
            let (out, delta) = datapath.run_counted(&query);
            assert_eq!(out.action, XDP_REDIRECT, "{family:?}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::DropSourceNotAllowed), 0);

            // No prefixes any more: the outside client gets in.
            set_sources(datapath, service(vip, 80, Proto::Tcp), &[]);
            let (out, delta) = datapath.run_counted(&refused);
            assert_eq!(out.action, XDP_REDIRECT, "{family:?}: {:?}", delta.moved());
        }
    });
}

/// A connection opened while its client was allowed keeps flowing after the prefixes
/// change to exclude it (tracked flows are never asked); its next new connection is refused.
#[test]
fn an_established_flow_outlives_its_clients_removal_from_the_prefixes() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let vip = service(VIP, 80, Proto::Tcp);
        set_sources(datapath, vip, &["198.18.0.0/24"]);
        let connection = Spec::new(Family::V4, Transport::Tcp)
            .between(ip(CLIENT), ip(VIP))
            .ports(42_101, 80);
        let backend = verify(&datapath.run(&connection.build(&[])).packet).dst;
        datapath.run(&connection.ack().build(&[]));

        set_sources(datapath, vip, &["198.18.100.0/24"]);
        let (out, delta) = datapath.run_counted(&connection.ack().build(b"still here"));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::ForwardEstablished), 1);
        assert_eq!(verify(&out.packet).dst, backend);

        let another = connection.ports(42_102, 80).build(&[]);
        let (out, delta) = datapath.run_counted(&another);
        assert_eq!(out.action, XDP_DROP, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::DropSourceNotAllowed), 1);
    });
}
