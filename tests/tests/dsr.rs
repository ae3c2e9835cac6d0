//! Golden packets for direct server return: the real program under BPF_PROG_TEST_RUN in a
//! FibLab. dsr-ipip output is checked field by field in its outer header (recomputed
//! checksum, source inside the configured prefix) with the inner packet byte-for-byte the
//! client's; dsr-l2 output differs from the input in its MACs only. Packets that no longer
//! fit with the outer header are answered with frag-needed / packet-too-big.

use std::net::IpAddr;

use etherparse::{
    Icmpv4Type, Icmpv6Type, Ipv4HeaderSlice, Ipv6HeaderSlice, PacketBuilder,
    icmpv4::DestUnreachableHeader,
};
use lb_common::{
    consts::{XDP_DROP, XDP_REDIRECT},
    stats::Stat,
};
use lb_tests::{
    fiblab::{
        BACKEND_MACS, CLIENT_V4, DSR_SOURCE_V4, DSR_SOURCE_V6, FibLab, Ids, add_dsr_vip, client_of,
        dsr_options, family_of,
    },
    packets::{Family, Spec, Transport},
    testrun::Datapath,
    verify::verify_icmp,
};
use lb_userspace::model::{
    decap::Prefix,
    limits::{Limits, Options},
    mode::Mode,
    state::{Change, Proto, Service},
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// Backends of the FibLab, on the lb's backend link (neighbours pinned).
const BACKENDS_V4: [&str; 2] = ["198.18.2.2", "198.18.2.3"];
const BACKENDS_V6: [&str; 2] = ["fd00:2::2", "fd00:2::3"];

/// The DSR VIPs of these tests: (VIP, mode, backend addresses).
const VIPS: [(&str, Mode, [&str; 2]); 5] = [
    ("198.18.1.20", Mode::DsrIpip, BACKENDS_V4),
    ("fd00:1::20", Mode::DsrIpip, BACKENDS_V6),
    ("198.18.1.21", Mode::DsrIpip, BACKENDS_V6),
    ("198.18.1.22", Mode::DsrL2, BACKENDS_V4),
    ("fd00:1::22", Mode::DsrL2, BACKENDS_V6),
];

fn add_dsr_vips(datapath: &mut Datapath) {
    for (vip, mode, backends) in VIPS {
        add_dsr_vip(datapath, ip(vip), mode, &backends.map(ip));
    }
}

fn with_dsr<T: Send>(lab: &FibLab, test: impl FnOnce(&mut Datapath, &Ids) -> T + Send) -> T {
    // The lab's NAT VIPs and these.
    let limits = Limits {
        max_vips: 32,
        ..Datapath::TEST_LIMITS
    };
    lab.with_datapath_loaded(limits, &dsr_options(), |datapath, ids| {
        add_dsr_vips(datapath);
        datapath.set_ingress(ids.from_client);
        test(datapath, ids)
    })
}

/// The outer header of a dsr-ipip frame, as parsed from the wire.
#[derive(Debug)]
struct Outer {
    src: IpAddr,
    dst: IpAddr,
    /// TOS / traffic class.
    tos: u8,
    ttl: u8,
    protocol: u8,
    dont_fragment: bool,
    flow_label: u32,
    /// The bytes after the outer header.
    inner: Vec<u8>,
}

/// Parses the outer header after the Ethernet header, checking its EtherType, lengths and
/// (IPv4) a checksum recomputed from scratch.
fn outer(frame: &[u8]) -> Outer {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let ip = &frame[14..];
    match ethertype {
        0x0800 => {
            let header = Ipv4HeaderSlice::from_slice(ip).expect("outer IPv4 header");
            let owned = header.to_header();
            assert_eq!(header.ihl(), 5, "no options");
            assert_eq!(
                owned.header_checksum,
                owned.calc_header_checksum(),
                "outer IPv4 header checksum"
            );
            assert_eq!(
                usize::from(header.total_len()),
                ip.len(),
                "outer total length"
            );
            assert!(!header.more_fragments() && header.fragments_offset().value() == 0);
            Outer {
                src: IpAddr::from(header.source()),
                dst: IpAddr::from(header.destination()),
                tos: (header.dcp().value() << 2) | header.ecn().value(),
                ttl: header.ttl(),
                protocol: header.protocol().0,
                dont_fragment: header.dont_fragment(),
                flow_label: 0,
                inner: ip[20..].to_vec(),
            }
        }
        0x86dd => {
            let header = Ipv6HeaderSlice::from_slice(ip).expect("outer IPv6 header");
            assert_eq!(
                usize::from(header.payload_length()) + 40,
                ip.len(),
                "outer payload length"
            );
            Outer {
                src: IpAddr::from(header.source()),
                dst: IpAddr::from(header.destination()),
                tos: header.traffic_class(),
                ttl: header.hop_limit(),
                protocol: header.next_header().0,
                dont_fragment: true,
                flow_label: header.flow_label().value(),
                inner: ip[40..].to_vec(),
            }
        }
        other => panic!("EtherType {other:#06x} is no IP"),
    }
}

fn in_prefix(addr: IpAddr, prefix: &str) -> bool {
    let prefix: Prefix = prefix.parse().expect("prefix");
    match (addr, prefix.addr) {
        (IpAddr::V4(a), IpAddr::V4(p)) => {
            let mask = u32::MAX << (32 - prefix.len);
            u32::from(a) & mask == u32::from(p) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(p)) => {
            let mask = u128::MAX << (128 - prefix.len);
            u128::from(a) & mask == u128::from(p) & mask
        }
        _ => false,
    }
}

#[test]
fn dsr_ipip_encapsulates_the_packet_untouched_toward_its_backend() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    with_dsr(&lab, |datapath, ids| {
        let mut sources = std::collections::BTreeSet::new();
        for (vip, _, backends) in VIPS.iter().filter(|v| v.1 == Mode::DsrIpip) {
            let vip = ip(vip);
            let backends = backends.map(ip);
            for (transport, port) in [(Transport::Tcp, 80), (Transport::Udp, 53)] {
                for client_port in [41_001u16, 41_002, 41_003] {
                    let case = format!("{vip}:{port} {transport:?} from port {client_port}");
                    let request = Spec::new(family_of(vip), transport)
                        .between(client_of(vip), vip)
                        .ports(client_port, port);
                    let first = request.build(b"GET / HTTP/1.0\r\n\r\n");
                    let (out, delta) = datapath.run_counted(&first);
                    assert_eq!(out.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
                    assert_eq!(delta.packets(Stat::ForwardNew), 1, "{case}");
                    assert_eq!(delta.packets(Stat::DsrIpipEncapsulated), 1, "{case}");
                    let wire = outer(&out.packet);
                    assert!(backends.contains(&wire.dst), "{case}: went to {}", wire.dst);
                    let source_prefix = if wire.dst.is_ipv4() {
                        DSR_SOURCE_V4
                    } else {
                        DSR_SOURCE_V6
                    };
                    assert!(
                        in_prefix(wire.src, source_prefix),
                        "{case}: outer source {} outside {source_prefix}",
                        wire.src
                    );
                    sources.insert(wire.src);
                    let protocol = if vip.is_ipv4() { 4 } else { 41 };
                    assert_eq!(wire.protocol, protocol, "{case}");
                    assert_eq!(wire.ttl, 64, "{case}");
                    assert_eq!(wire.tos, 0, "{case}: the inner TOS");
                    assert!(wire.dont_fragment, "{case}: DF as the inner packet's");
                    assert_eq!(wire.inner, first[14..], "{case}: inner byte-for-byte");
                    assert_eq!(&out.packet[6..12], &ids.backend_side_mac, "{case}");
                    assert!(
                        BACKEND_MACS.iter().any(|mac| out.packet[..6] == mac[..]),
                        "{case}: to a backend's MAC"
                    );

                    // Established: the same backend and outer source, from conntrack.
                    let next = request.ack().build(b"more");
                    let (again, delta) = datapath.run_counted(&next);
                    assert_eq!(again.action, XDP_REDIRECT, "{case}");
                    assert_eq!(
                        delta.packets(Stat::ForwardEstablished),
                        1,
                        "{case}: {:?}",
                        delta.moved()
                    );
                    let wire_again = outer(&again.packet);
                    assert_eq!((wire_again.dst, wire_again.src), (wire.dst, wire.src));
                    assert_eq!(wire_again.flow_label, wire.flow_label, "{case}");
                    assert_eq!(wire_again.inner, next[14..], "{case}");
                }
            }
        }
        assert!(sources.len() > 6, "flows share outer sources: {sources:?}");
    });
}

#[test]
fn dsr_ipip_copies_tos_and_ecn_into_the_outer_header() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    with_dsr(&lab, |datapath, _| {
        for vip in ["198.18.1.20", "fd00:1::20", "198.18.1.21"] {
            let vip = ip(vip);
            let mut packet = Spec::new(family_of(vip), Transport::Udp)
                .between(client_of(vip), vip)
                .ports(41_100, 53)
                .build(b"query");
            // DSCP 46 (EF) with ECN CE, written into the inner header.
            let tos = (46 << 2) | 3;
            if vip.is_ipv4() {
                packet[15] = tos;
                packet[24..26].copy_from_slice(&[0, 0]);
                let header = Ipv4HeaderSlice::from_slice(&packet[14..])
                    .expect("header")
                    .to_header();
                packet[24..26].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
            } else {
                packet[14] = 0x60 | (tos >> 4);
                packet[15] = (tos << 4) | (packet[15] & 0x0f);
            }
            let out = datapath.run(&packet);
            assert_eq!(out.action, XDP_REDIRECT, "{vip}");
            let wire = outer(&out.packet);
            assert_eq!(wire.tos, tos, "{vip}");
            assert_eq!(wire.inner, packet[14..], "{vip}: inner unchanged");
        }
    });
}

#[test]
fn dsr_l2_changes_only_the_macs() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    with_dsr(&lab, |datapath, ids| {
        for (vip, _, _) in VIPS.iter().filter(|v| v.1 == Mode::DsrL2) {
            let vip = ip(vip);
            for (transport, port) in [(Transport::Tcp, 80), (Transport::Udp, 53)] {
                let case = format!("{vip}:{port} {transport:?}");
                let request = Spec::new(family_of(vip), transport)
                    .between(client_of(vip), vip)
                    .ports(41_200, port);
                for (packet, reason) in [
                    (request.build(b"hello"), Stat::ForwardNew),
                    (request.ack().build(b"again"), Stat::ForwardEstablished),
                ] {
                    let (out, delta) = datapath.run_counted(&packet);
                    assert_eq!(out.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
                    assert_eq!(delta.packets(reason), 1, "{case}: {:?}", delta.moved());
                    assert_eq!(delta.packets(Stat::DsrL2Forwarded), 1, "{case}");
                    assert_eq!(out.packet.len(), packet.len(), "{case}");
                    assert_eq!(out.packet[12..], packet[12..], "{case}: only the MACs");
                    assert_eq!(&out.packet[6..12], &ids.backend_side_mac, "{case}");
                    assert!(
                        BACKEND_MACS.iter().any(|mac| out.packet[..6] == mac[..]),
                        "{case}: to a backend's MAC"
                    );
                }
            }
        }
    });
}

#[test]
fn dsr_l2_does_not_send_to_a_backend_behind_a_gateway() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.route_via_backend("198.18.50.0/24", "198.18.2.2");
    with_dsr(&lab, |datapath, _| {
        let service = Service {
            addr: "198.18.1.23:80".parse().expect("VIP"),
            proto: Proto::Tcp,
        };
        for change in [
            Change::AddVip(service),
            Change::SetMode {
                service,
                mode: Mode::DsrL2,
            },
            Change::AddBackend {
                server_id: None,
                service,
                backend: "198.18.50.5:80".parse().expect("backend"),
                weight: 1,
            },
        ] {
            datapath.balancer.apply(&change).expect("VIP");
        }
        let packet = Spec::new(Family::V4, Transport::Tcp)
            .between(ip(CLIENT_V4), service.addr.ip())
            .ports(41_300, 80)
            .build(&[]);
        let (out, delta) = datapath.run_counted(&packet);
        assert_eq!(out.action, XDP_DROP, "{:?}", delta.moved());
        assert_eq!(
            delta.packets(Stat::DropDsrNotOnLink),
            1,
            "{:?}",
            delta.moved()
        );
    });
}

#[test]
fn packets_too_big_once_encapsulated_are_answered_with_the_inner_mtu() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.set_backend_mtu(1500, 1500);
    with_dsr(&lab, |datapath, _| {
        // (VIP, the MTU the answer must name: the route's less the outer header)
        for (vip, mtu) in [
            ("198.18.1.20", 1480u32),
            ("fd00:1::20", 1460),
            ("198.18.1.21", 1460),
        ] {
            let vip = ip(vip);
            let client = client_of(vip);
            let request = Spec::new(family_of(vip), Transport::Tcp)
                .between(client, vip)
                .ports(41_400, 80);
            let header = if vip.is_ipv4() { 20 + 20 } else { 40 + 20 };
            let fits = request.build(&vec![1u8; mtu as usize - header]);
            let (out, delta) = datapath.run_counted(&fits);
            assert_eq!(out.action, XDP_REDIRECT, "{vip}: fits: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::DsrIpipEncapsulated), 1, "{vip}");

            let big = request.ack().build(&vec![2u8; mtu as usize - header + 1]);
            let (out, delta) = datapath.run_counted(&big);
            assert_eq!(out.action, XDP_REDIRECT, "{vip}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::IcmpTooBigSent), 1, "{vip}");
            assert_eq!(delta.packets(Stat::DsrTooBig), 1, "{vip}");
            let icmp = verify_icmp(&out.packet);
            assert_eq!((icmp.src, icmp.dst), (vip, client), "{vip}: from the VIP");
            let advertised = if vip.is_ipv4() {
                assert_eq!(icmp.header[..2], [3, 4], "{vip}: frag-needed");
                u32::from(u16::from_be_bytes([icmp.header[6], icmp.header[7]]))
            } else {
                assert_eq!(icmp.header[..2], [2, 0], "{vip}: packet-too-big");
                u32::from_be_bytes([
                    icmp.header[4],
                    icmp.header[5],
                    icmp.header[6],
                    icmp.header[7],
                ])
            };
            assert_eq!(advertised, mtu, "{vip}: the MTU inside the tunnel");
            assert!(
                big[14..].starts_with(&icmp.quoted),
                "{vip}: quotes the packet"
            );
        }
        // dsr-l2 adds nothing: a packet of the route's MTU goes out as it is.
        let vip = ip("198.18.1.22");
        let full = Spec::new(Family::V4, Transport::Tcp)
            .between(ip(CLIENT_V4), vip)
            .ports(41_401, 80)
            .build(&vec![3u8; 1500 - 40]);
        let (out, delta) = datapath.run_counted(&full);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::DsrL2Forwarded), 1);
    });
}

#[test]
fn dsr_backends_take_no_reply_translation() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    with_dsr(&lab, |datapath, ids| {
        // A packet from a DSR-only backend endpoint is no reply of the lb's: not rewritten.
        datapath.set_ingress(ids.from_backends);
        let vip = ip("198.18.1.22");
        let from_backend = Spec::new(Family::V4, Transport::Tcp)
            .between(ip("198.18.2.2"), ip(CLIENT_V4))
            .ports(80, 41_500)
            .ack()
            .build(b"reply");
        let (out, delta) = datapath.run_counted(&from_backend);
        assert_eq!(delta.packets(Stat::ForwardReply), 0, "{:?}", delta.moved());
        assert_ne!(
            out.packet[26..30],
            [198, 18, 1, 22],
            "source not set to {vip}"
        );
    });
}

/// An ICMP error from a router on the clients' side to `vip`, about a reply the backend
/// sent from the VIP: frag-needed (IPv4) or packet-too-big (IPv6) quoting `quoted`.
fn error_about_reply(vip: IpAddr, router: IpAddr, quoted: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x0e], [0x02, 0, 0, 0, 0, 0x02]);
    let mut out = Vec::new();
    match (router, vip) {
        (IpAddr::V4(r), IpAddr::V4(v)) => eth
            .ipv4(r.octets(), v.octets(), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ))
            .write(&mut out, quoted),
        (IpAddr::V6(r), IpAddr::V6(v)) => eth
            .ipv6(r.octets(), v.octets(), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1400 })
            .write(&mut out, quoted),
        _ => panic!("mixed families"),
    }
    .expect("build the ICMP error");
    out
}

#[test]
fn icmp_errors_about_replies_reach_the_flows_dsr_backend_untouched() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    with_dsr(&lab, |datapath, _| {
        for (vip, router) in [("198.18.1.20", "198.18.0.254"), ("fd00:1::20", "fd00::fe")] {
            let vip = ip(vip);
            let client = client_of(vip);
            let request = Spec::new(family_of(vip), Transport::Tcp)
                .between(client, vip)
                .ports(41_600, 80);
            let first = datapath.run(&request.build(&[]));
            let backend = outer(&first.packet).dst;
            // What the backend sent the client, from the VIP (its first 8 bytes of TCP).
            let reply = Spec::new(family_of(vip), Transport::Tcp)
                .between(vip, client)
                .ports(80, 41_600)
                .ack()
                .build(&[7u8; 100]);
            let header = if vip.is_ipv4() { 20 } else { 40 };
            let error = error_about_reply(vip, ip(router), &reply[14..14 + header + 8]);
            let (out, delta) = datapath.run_counted(&error);
            assert_eq!(out.action, XDP_REDIRECT, "{vip}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardIcmpToBackend), 1, "{vip}");
            assert_eq!(delta.packets(Stat::DsrIpipEncapsulated), 1, "{vip}");
            let wire = outer(&out.packet);
            assert_eq!(wire.dst, backend, "{vip}: the flow's backend");
            assert_eq!(wire.inner, error[14..], "{vip}: the error untouched");
        }
    });
}

#[test]
fn dsr_ipip_without_an_outer_source_of_the_backends_family_drops_and_says_why() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    let limits = Limits {
        max_vips: 32,
        ..Datapath::TEST_LIMITS
    };
    // An IPv4 source only: the lb has no IPv6 address to send IPv6 tunnels from.
    let options = Options {
        encap_v6: None,
        ..dsr_options()
    };
    lab.with_datapath_loaded(limits, &options, |datapath, ids| {
        add_dsr_vips(datapath);
        datapath.set_ingress(ids.from_client);
        for (vip, expected) in [
            ("fd00:1::20", Stat::DropDsrUnsupported),
            ("198.18.1.21", Stat::DropDsrUnsupported),
            ("198.18.1.20", Stat::DsrIpipEncapsulated),
        ] {
            let vip = ip(vip);
            let packet = Spec::new(family_of(vip), Transport::Tcp)
                .between(client_of(vip), vip)
                .ports(41_700, 80)
                .build(&[]);
            let (out, delta) = datapath.run_counted(&packet);
            assert_eq!(delta.packets(expected), 1, "{vip}: {:?}", delta.moved());
            if expected == Stat::DropDsrUnsupported {
                assert_eq!(out.action, XDP_DROP, "{vip}");
            }
        }
    });
}
