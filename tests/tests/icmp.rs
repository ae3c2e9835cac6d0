//! Golden packets for ICMP: errors about a tracked flow translated in both directions,
//! too-big packets answered with frag-needed / packet-too-big, echo requests to a VIP
//! answered, and a route through an interface lb is not attached to. The real programs
//! (`lb` and the tail-called `lb_icmp`, `lb_too_big`) under BPF_PROG_TEST_RUN in a FibLab;
//! every output is re-parsed and its checksums recomputed, quoted headers included.

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    Icmpv4Type, Icmpv6Type, Ipv4Header, PacketBuilder, icmpv4::DestUnreachableHeader,
    icmpv6::DestUnreachableCode,
};
use lb_common::{
    consts::{XDP_PASS, XDP_REDIRECT},
    stats::Stat,
};
use lb_tests::{
    fiblab::{CLIENT_MAC, FibLab},
    packets::{Family, Spec, Transport},
    verify::{verify, verify_icmp},
};
use lb_userspace::model::state::{Proto, Service};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

const ROUTER_MAC: [u8; 6] = [0x02, 0x18, 0, 0, 0, 0xfe];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// An Ethernet header to put in front of a quoted IP packet for `verify`.
const ETHERNET: [u8; 14] = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0x08, 0x00];
const ETHERNET_V6: [u8; 14] = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0x86, 0xdd];

/// The IP packet inside an Ethernet frame built by `Spec`.
fn ip_packet(frame: &[u8]) -> Vec<u8> {
    frame[14..].to_vec()
}

/// Verifies a whole quoted packet as if it were on the wire.
fn quoted(family: Family, bytes: &[u8]) -> lb_tests::verify::Wire {
    let ethernet = if matches!(family, Family::V6) {
        ETHERNET_V6
    } else {
        ETHERNET
    };
    verify(&[&ethernet[..], bytes].concat())
}

/// An ICMP error from `src` to `dst` quoting `inner`.
fn icmp_error(family: Family, src: IpAddr, dst: IpAddr, inner: &[u8], mtu: u16) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC);
    let mut out = Vec::new();
    match (family, src, dst) {
        (Family::V6, IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .icmpv6(Icmpv6Type::PacketTooBig {
                mtu: u32::from(mtu),
            })
            .write(&mut out, inner),
        (_, IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
            ))
            .write(&mut out, inner),
        _ => panic!("mixed families"),
    }
    .expect("build ICMP");
    out
}

/// Port unreachable from `src` to `dst` quoting `inner`.
fn port_unreachable(family: Family, src: IpAddr, dst: IpAddr, inner: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC);
    let mut out = Vec::new();
    match (family, src, dst) {
        (Family::V6, IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .icmpv6(Icmpv6Type::DestinationUnreachable(
                DestUnreachableCode::Port,
            ))
            .write(&mut out, inner),
        (_, IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::Port,
            ))
            .write(&mut out, inner),
        _ => panic!("mixed families"),
    }
    .expect("build ICMP");
    out
}

fn addresses(family: Family) -> (IpAddr, IpAddr, IpAddr) {
    match family {
        Family::V6 => (ip("fd00::1"), ip("fd00:1::1"), ip("fd00::fe")),
        _ => (ip("198.18.0.1"), ip("198.18.1.1"), ip("198.18.0.254")),
    }
}

#[test]
fn too_big_errors_for_the_vip_reach_the_flows_backend() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        for (family, port) in [(Family::V4, 42_001), (Family::V6, 42_011)] {
            let (client, vip, router) = addresses(family);
            datapath.set_ingress(ids.from_client);
            let syn = Spec::new(family, Transport::Tcp)
                .between(client, vip)
                .ports(port, 80);
            let backend = verify(&datapath.run(&syn.build(&[])).packet).dst;

            // The reply as it left the lb (VIP → client), quoted by a router that could
            // not send it on.
            let reply = Spec::new(family, Transport::Tcp)
                .between(vip, client)
                .ports(80, port)
                .ack()
                .build(&[7u8; 64]);
            let error = icmp_error(family, router, vip, &ip_packet(&reply), 1280);
            let (out, delta) = datapath.run_counted(&error);
            assert_eq!(out.action, XDP_PASS, "{family:?}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardIcmpToBackend), 1, "{family:?}");
            let icmp = verify_icmp(&out.packet);
            assert_eq!(
                (icmp.src, icmp.dst),
                (router, backend),
                "{family:?}: to the backend"
            );
            let inner = quoted(family, &icmp.quoted);
            assert_eq!(
                (inner.src, inner.src_port, inner.dst, inner.dst_port),
                (backend, 8080, client, port),
                "{family:?}: quotes what the backend sent"
            );
        }
    });
}

#[test]
fn errors_about_a_flow_from_the_backend_side_reach_the_client_about_the_vip() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        for (family, port) in [(Family::V4, 42_002), (Family::V6, 42_012)] {
            let (client, vip, _) = addresses(family);
            datapath.set_ingress(ids.from_client);
            let query = Spec::new(family, Transport::Udp)
                .between(client, vip)
                .ports(port, 53)
                .build(b"query");
            let delivered = datapath.run(&query);
            let backend = verify(&delivered.packet).dst;

            datapath.set_ingress(ids.from_backends);
            let error = port_unreachable(family, backend, client, &ip_packet(&delivered.packet));
            let (out, delta) = datapath.run_counted(&error);
            assert_eq!(out.action, XDP_PASS, "{family:?}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardIcmpToClient), 1, "{family:?}");
            let icmp = verify_icmp(&out.packet);
            assert_eq!(
                (icmp.src, icmp.dst),
                (vip, client),
                "{family:?}: from the VIP"
            );
            let inner = quoted(family, &icmp.quoted);
            assert_eq!(
                (inner.src, inner.src_port, inner.dst, inner.dst_port),
                (client, port, vip, 53),
                "{family:?}: quotes what the client sent"
            );

            // A router behind the backend says the client's packet was too big: the client
            // hears it about the VIP (the router keeps its own address).
            let router = if matches!(family, Family::V6) {
                ip("fd00:2::fe")
            } else {
                ip("198.18.2.254")
            };
            let error = icmp_error(family, router, client, &ip_packet(&delivered.packet), 1280);
            let (out, delta) = datapath.run_counted(&error);
            assert_eq!(out.action, XDP_PASS, "{family:?}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardIcmpToClient), 1, "{family:?}");
            let icmp = verify_icmp(&out.packet);
            assert_eq!((icmp.src, icmp.dst), (router, client), "{family:?}");
            let inner = quoted(family, &icmp.quoted);
            assert_eq!(
                (inner.dst, inner.dst_port),
                (vip, 53),
                "{family:?}: about the VIP"
            );

            // Another backend's address is as secret as this one's: an error it sends about
            // this flow (it may route for the backend) also reaches the client from the VIP.
            datapath.set_ingress(ids.from_client);
            let other_backend = (1..64u16)
                .map(|n| {
                    let probe = Spec::new(family, Transport::Udp)
                        .between(client, vip)
                        .ports(port + n, 53)
                        .build(b"query");
                    verify(&datapath.run(&probe).packet).dst
                })
                .find(|dst| *dst != backend)
                .expect("a flow on another backend");
            datapath.set_ingress(ids.from_backends);
            let error =
                port_unreachable(family, other_backend, client, &ip_packet(&delivered.packet));
            let (out, delta) = datapath.run_counted(&error);
            assert_eq!(delta.packets(Stat::ForwardIcmpToClient), 1, "{family:?}");
            let icmp = verify_icmp(&out.packet);
            assert_eq!(
                (icmp.src, icmp.dst),
                (vip, client),
                "{family:?}: another backend's error comes from the VIP"
            );

            // The same error about a port no VIP uses stays as it is.
            let other = Spec::new(family, Transport::Udp)
                .between(client, backend)
                .ports(port, 9999)
                .build(b"direct");
            let error = port_unreachable(family, backend, client, &ip_packet(&other));
            let (out, delta) = datapath.run_counted(&error);
            assert_eq!(out.action, XDP_PASS);
            assert_eq!(delta.packets(Stat::PassNotVip), 1, "{:?}", delta.moved());
            assert_eq!(out.packet, error, "{family:?}: untouched");
        }
    });
}

#[test]
fn packets_too_big_for_the_next_hop_are_answered() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.set_backend_mtu(1400, 1280);
    lab.with_datapath(|datapath, ids| {
        for (family, port, mtu) in [(Family::V4, 42_003, 1400u16), (Family::V6, 42_013, 1280)] {
            let (client, vip, _) = addresses(family);
            datapath.set_ingress(ids.from_client);
            let request = Spec::new(family, Transport::Tcp)
                .between(client, vip)
                .ports(port, 80);
            datapath.run(&request.build(&[]));
            let fits = datapath.run(&request.ack().build(&[1u8; 1000]));
            assert_eq!(fits.action, XDP_REDIRECT, "{family:?}: under the MTU");

            let big = request.ack().build(&[2u8; 1400]);
            let (out, delta) = datapath.run_counted(&big);
            // Back out of the ingress interface, through the devmap.
            assert_eq!(out.action, XDP_REDIRECT, "{family:?}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::IcmpTooBigSent), 1);
            let icmp = verify_icmp(&out.packet);
            assert_eq!((icmp.src, icmp.dst), (vip, client), "{family:?}");
            assert_eq!((icmp.dst_mac, icmp.src_mac), (CLIENT_MAC_OF_SPEC, LB_MAC));
            let advertised = match family {
                Family::V6 => u32::from_be_bytes([
                    icmp.header[4],
                    icmp.header[5],
                    icmp.header[6],
                    icmp.header[7],
                ]),
                _ => u32::from(u16::from_be_bytes([icmp.header[6], icmp.header[7]])),
            };
            assert_eq!(advertised, u32::from(mtu), "{family:?}: the route's MTU");
            let original = ip_packet(&big);
            assert!(
                original.starts_with(&icmp.quoted),
                "{family:?}: quotes the start of the packet"
            );
        }
    });
}

/// The source MAC `Spec` builds with (its client).
const CLIENT_MAC_OF_SPEC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

#[test]
fn echo_requests_to_a_vip_are_answered_from_it() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        for family in [Family::V4, Family::V6] {
            let (client, vip, _) = addresses(family);
            let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
            let mut request = Vec::new();
            match (client, vip) {
                (IpAddr::V4(c), IpAddr::V4(v)) => eth
                    .ipv4(c.octets(), v.octets(), 64)
                    .icmpv4_echo_request(7, 1)
                    .write(&mut request, b"ping"),
                (IpAddr::V6(c), IpAddr::V6(v)) => eth
                    .ipv6(c.octets(), v.octets(), 64)
                    .icmpv6_echo_request(7, 1)
                    .write(&mut request, b"ping"),
                _ => panic!("mixed families"),
            }
            .expect("build echo");
            let (out, delta) = datapath.run_counted(&request);
            assert_eq!(out.action, XDP_REDIRECT, "{family:?}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::IcmpEchoReply), 1);
            let reply = verify_icmp(&out.packet);
            assert_eq!((reply.src, reply.dst), (vip, client), "{family:?}");
            assert_eq!(reply.dst_mac, CLIENT_MAC, "{family:?}: back to the sender");
            let echo_reply = if matches!(family, Family::V6) { 129 } else { 0 };
            assert_eq!(reply.header[0], echo_reply, "{family:?}");
            assert_eq!(reply.quoted, b"ping");

            // An IP length that ends inside the 8-byte ICMP header: no message at all, as
            // the kernel also judges; dropped and counted, never answered.
            let mut short = request.clone();
            let l3 = 14;
            if family == Family::V6 {
                short[l3 + 4..l3 + 6].copy_from_slice(&4u16.to_be_bytes())
            } else {
                // A valid header but for the length: its checksum is recomputed, so
                // only the length can be what is refused.
                let mut header = Ipv4Header::from_slice(&short[l3..]).expect("IPv4 header").0;
                header.total_len = 24;
                header.header_checksum = header.calc_header_checksum();
                short[l3..l3 + 20].copy_from_slice(&header.to_bytes());
            }
            let (out, delta) = datapath.run_counted(&short);
            let malformed = if matches!(family, Family::V6) {
                Stat::MalformedIpv6
            } else {
                Stat::MalformedIpv4
            };
            assert_eq!(
                delta.packets(malformed),
                1,
                "{family:?}: {:?}",
                delta.moved()
            );
            assert_eq!(delta.packets(Stat::IcmpEchoReply), 0, "{family:?}");
            assert_ne!(out.action, XDP_REDIRECT, "{family:?}: not answered");
        }
    });
}

/// A route out through an interface lb is not attached to: XDP cannot send there, so the
/// packet is passed to the kernel to forward, but rewritten first (checksums patched,
/// MACs and TTL left for the kernel): a client's packet reaches its backend, and a reply
/// leaves from its VIP, never with the backend's address.
#[test]
fn an_egress_lb_is_not_attached_to_gets_the_packet_rewritten_then_passed() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.add_unattached_link();
    // A client behind the unattached link too (198.18.3.2 is its neighbour there).
    lab.route_via_unattached("198.18.103.0/24");
    lab.with_datapath(|datapath, ids| {
        let service = Service {
            addr: "198.18.1.5:80".parse().expect("address"),
            proto: Proto::Tcp,
        };
        datapath.balancer.add_vip(service).expect("VIP");
        datapath
            .balancer
            .add_backend(service, SocketAddr::new(ip("198.18.3.2"), 8080), 100)
            .expect("backend behind the unattached link");
        datapath.set_ingress(ids.from_client);
        let syn = Spec::new(Family::V4, Transport::Tcp)
            .between(ip("198.18.0.1"), ip("198.18.1.5"))
            .ports(42_004, 80)
            .build(&[]);
        let (out, delta) = datapath.run_counted(&syn);
        assert_eq!(out.action, XDP_PASS, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::PassEgressNotAttached), 1);
        let sent = verify(&out.packet);
        let came = verify(&syn);
        assert_eq!(
            (sent.src, sent.src_port, sent.dst, sent.dst_port),
            (ip("198.18.0.1"), 42_004, ip("198.18.3.2"), 8080),
            "destination NAT to the backend before the kernel forwards it"
        );
        assert_eq!(
            (sent.src_mac, sent.dst_mac, sent.ttl),
            (came.src_mac, came.dst_mac, came.ttl),
            "MACs and TTL are the kernel's to set"
        );

        // A reply of a backend (198.18.2.2:8080 serves 198.18.1.1:80) to a client whose
        // route leaves through the unattached link.
        datapath.set_ingress(ids.from_backends);
        let reply = Spec::new(Family::V4, Transport::Tcp)
            .between(ip("198.18.2.2"), ip("198.18.103.7"))
            .ports(8080, 40_000)
            .ack()
            .build(b"200 OK");
        let (out, delta) = datapath.run_counted(&reply);
        assert_eq!(out.action, XDP_PASS, "{:?}", delta.moved());
        assert_eq!(
            delta.packets(Stat::PassEgressNotAttached),
            1,
            "{:?}",
            delta.moved()
        );
        let sent = verify(&out.packet);
        assert_eq!(
            (sent.src, sent.src_port),
            (ip("198.18.1.1"), 80),
            "the reply leaves from its VIP, not the backend's address"
        );
        assert_eq!((sent.dst, sent.dst_port), (ip("198.18.103.7"), 40_000));
        assert_eq!(sent.payload, b"200 OK");
    });
}
