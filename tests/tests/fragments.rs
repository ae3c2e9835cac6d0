//! Fragmented UDP through VIPs (issue 27): golden packets through the real program under
//! BPF_PROG_TEST_RUN in a FibLab. A datagram's first fragment is balanced like any
//! packet; its later fragments, which carry no ports, follow it to the same backend (NAT:
//! the address rewritten, the IPv4 header checksum right, and the fragments put together
//! again give a UDP datagram whose checksum verifies with the backend's address and port;
//! DSR: each encapsulated to the same backend), or leave a backend's reply from the VIP.
//! A later fragment with no first fragment seen is dropped (`drop_fragment_no_first`).

use std::net::IpAddr;

use etherparse::{
    Icmpv4Type, Icmpv6Type, Ipv4HeaderSlice, Ipv6HeaderSlice, PacketBuilder,
    icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode,
};
use lb_common::{
    consts::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    stats::Stat,
};
use lb_tests::{
    fiblab::{BACKEND_MACS, FibLab, add_dsr_vip, dsr_options},
    fragments::{FragmentWire, inspect, reassemble, split},
    packets::{Family, Spec, Transport},
    testrun::Datapath,
    verify::verify_icmp,
};
use lb_userspace::model::{
    limits::{Limits, Options},
    mode::Mode,
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// (family, client, NAT VIP, backends) of the FibLab.
const CASES: [(Family, &str, &str, [&str; 2]); 2] = [
    (
        Family::V4,
        "198.18.0.1",
        "198.18.1.1",
        ["198.18.2.2", "198.18.2.3"],
    ),
    (
        Family::V6,
        "fd00::1",
        "fd00:1::1",
        ["fd00:2::2", "fd00:2::3"],
    ),
];

/// A UDP datagram of `len` payload bytes (a pattern), in two fragments: 808 bytes of IP
/// payload in the first.
fn datagram(
    family: Family,
    src: &str,
    dst: &str,
    ports: (u16, u16),
    len: usize,
    id: u32,
) -> (Vec<u8>, [Vec<u8>; 2]) {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let whole = Spec::new(family, Transport::Udp)
        .between(ip(src), ip(dst))
        .ports(ports.0, ports.1)
        .build(&payload);
    (payload, split(&whole, 808, id))
}

fn fragment_out(frame: &[u8], case: &str) -> FragmentWire {
    inspect(frame).unwrap_or_else(|| panic!("{case}: the output is no IP fragment"))
}

#[test]
fn nat_fragments_follow_their_first_to_one_backend_with_valid_checksums() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        for (family, client, vip, backends) in CASES {
            let mut seen = Vec::new();
            for flow in 0..12u16 {
                let case = format!("{family:?} flow {flow}");
                let port = 42_000 + flow;
                let (payload, [first, second]) = datagram(
                    family,
                    client,
                    vip,
                    (port, 53),
                    1200,
                    0x1234 + u32::from(flow),
                );
                let (out1, delta) = datapath.run_counted(&first);
                assert_eq!(out1.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
                assert_eq!(delta.packets(Stat::ForwardNew), 1, "{case}");
                let (out2, delta) = datapath.run_counted(&second);
                assert_eq!(out2.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
                assert_eq!(delta.packets(Stat::ForwardFragment), 1, "{case}");
                let wires = [
                    fragment_out(&out1.packet, &case),
                    fragment_out(&out2.packet, &case),
                ];
                assert_eq!(wires[0].dst, wires[1].dst, "{case}: one backend");
                assert!(
                    backends.map(ip).contains(&wires[0].dst),
                    "{case}: {}",
                    wires[0].dst
                );
                for wire in &wires {
                    assert_eq!(wire.ttl, 63, "{case}: one hop");
                    assert_eq!(wire.src_mac, ids.backend_side_mac, "{case}");
                    assert!(BACKEND_MACS.contains(&wire.dst_mac), "{case}");
                    assert_eq!(wire.src, ip(client), "{case}: client kept");
                }
                let datagram = reassemble(&wires);
                assert!(
                    datagram.checksum_ok,
                    "{case}: UDP checksum of the whole datagram"
                );
                assert_eq!(
                    (datagram.src_port, datagram.dst_port),
                    (port, 8080),
                    "{case}"
                );
                assert_eq!(datagram.payload, payload, "{case}");
                seen.push(wires[0].dst);
            }
            assert!(
                backends.iter().all(|b| seen.contains(&ip(b))),
                "{family:?}: 12 datagrams all went to one backend: {seen:?}"
            );
        }
    });
}

#[test]
fn a_later_fragment_before_its_first_is_dropped_and_counted() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        for (family, client, vip, _) in CASES {
            let case = format!("{family:?}");
            let (_, [first, second]) = datagram(family, client, vip, (42_100, 53), 1200, 0x77);
            let (out, delta) = datapath.run_counted(&second);
            assert_eq!(out.action, XDP_DROP, "{case}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::DropFragmentNoFirst), 1, "{case}");
            // Its first fragment is balanced, and a retransmitted second follows it.
            let (out, delta) = datapath.run_counted(&first);
            assert_eq!(out.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
            let (out, delta) = datapath.run_counted(&second);
            assert_eq!(out.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardFragment), 1, "{case}");
            // Another identification is another datagram.
            let (_, [_, other]) = datagram(family, client, vip, (42_100, 53), 1200, 0x78);
            let (out, delta) = datapath.run_counted(&other);
            assert_eq!(out.action, XDP_DROP, "{case}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::DropFragmentNoFirst), 1, "{case}");
        }
    });
}

#[test]
fn a_backends_fragmented_reply_leaves_from_the_vip_in_every_fragment() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        for (family, client, vip, backends) in CASES {
            let case = format!("{family:?}");
            datapath.set_ingress(ids.from_backends);
            let (payload, [first, second]) =
                datagram(family, backends[0], client, (8080, 42_200), 2000, 0x4321);
            // A later fragment alone would leave with the backend's address: dropped.
            let (out, delta) = datapath.run_counted(&second);
            assert_eq!(out.action, XDP_DROP, "{case}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::DropFragmentNoFirst), 1, "{case}");
            let (out1, delta) = datapath.run_counted(&first);
            assert_eq!(out1.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardReply), 1, "{case}");
            let (out2, delta) = datapath.run_counted(&second);
            assert_eq!(out2.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardFragment), 1, "{case}");
            let wires = [
                fragment_out(&out1.packet, &case),
                fragment_out(&out2.packet, &case),
            ];
            for wire in &wires {
                assert_eq!(wire.src, ip(vip), "{case}: the client sees the VIP");
                assert_eq!(wire.dst, ip(client), "{case}");
                assert_eq!(wire.src_mac, ids.client_side_mac, "{case}");
            }
            let datagram = reassemble(&wires);
            assert!(
                datagram.checksum_ok,
                "{case}: UDP checksum of the whole datagram"
            );
            assert_eq!(
                (datagram.src_port, datagram.dst_port),
                (53, 42_200),
                "{case}"
            );
            assert_eq!(datagram.payload, payload, "{case}");
        }
    });
}

/// The outer destination of a dsr-ipip frame and what it carries.
fn outer(frame: &[u8]) -> (IpAddr, Vec<u8>) {
    if u16::from_be_bytes([frame[12], frame[13]]) == 0x0800 {
        let h = Ipv4HeaderSlice::from_slice(&frame[14..]).expect("outer IPv4");
        (IpAddr::from(h.destination()), frame[34..].to_vec())
    } else {
        let h = Ipv6HeaderSlice::from_slice(&frame[14..]).expect("outer IPv6");
        (IpAddr::from(h.destination()), frame[54..].to_vec())
    }
}

#[test]
fn dsr_fragments_are_each_encapsulated_to_the_first_ones_backend() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    let limits = Limits {
        max_vips: 32,
        ..Datapath::TEST_LIMITS
    };
    lab.with_datapath_loaded(limits, &dsr_options(), |datapath, ids| {
        let dsr = [
            (
                Family::V4,
                "198.18.0.1",
                "198.18.1.20",
                ["198.18.2.2", "198.18.2.3"],
            ),
            (
                Family::V6,
                "fd00::1",
                "fd00:1::20",
                ["fd00:2::2", "fd00:2::3"],
            ),
        ];
        for (_, _, vip, backends) in dsr {
            add_dsr_vip(datapath, ip(vip), Mode::DsrIpip, &backends.map(ip));
        }
        datapath.set_ingress(ids.from_client);
        for (family, client, vip, backends) in dsr {
            let mut seen = Vec::new();
            for flow in 0..8u16 {
                let case = format!("{family:?} flow {flow}");
                let (_, [first, second]) = datagram(
                    family,
                    client,
                    vip,
                    (42_300 + flow, 53),
                    1000,
                    0x900 + u32::from(flow),
                );
                let mut to = Vec::new();
                for (fragment, reason) in
                    [(&first, Stat::ForwardNew), (&second, Stat::ForwardFragment)]
                {
                    let (out, delta) = datapath.run_counted(fragment);
                    assert_eq!(out.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
                    assert_eq!(delta.packets(reason), 1, "{case}: {:?}", delta.moved());
                    assert_eq!(delta.packets(Stat::DsrIpipEncapsulated), 1, "{case}");
                    let (dst, inner) = outer(&out.packet);
                    assert_eq!(inner, fragment[14..], "{case}: the fragment untouched");
                    to.push(dst);
                }
                assert_eq!(to[0], to[1], "{case}: one backend");
                assert!(backends.map(ip).contains(&to[0]), "{case}");
                seen.push(to[0]);
            }
            assert!(
                backends.iter().all(|b| seen.contains(&ip(b))),
                "{family:?}: all datagrams to one backend: {seen:?}"
            );
        }
    });
}

/// An ICMP error from `from` to `to` quoting the first `quote` bytes of `frame`'s IP packet.
fn icmp_error(from: &str, to: &str, frame: &[u8], quote: usize) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x0e], [0x02, 0, 0, 0, 0, 0x02]);
    let quoted = &frame[14..14 + quote];
    let mut out = Vec::new();
    match (ip(from), ip(to)) {
        (IpAddr::V4(f), IpAddr::V4(t)) => eth
            .ipv4(f.octets(), t.octets(), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ))
            .write(&mut out, quoted),
        (IpAddr::V6(f), IpAddr::V6(t)) => eth
            .ipv6(f.octets(), t.octets(), 64)
            .icmpv6(Icmpv6Type::DestinationUnreachable(
                DestUnreachableCode::Port,
            ))
            .write(&mut out, quoted),
        _ => panic!("mixed families"),
    }
    .expect("build the ICMP error");
    out
}

#[test]
fn icmp_errors_quoting_fragments_are_translated_only_with_ports() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        for ((family, client, vip, backends), router) in
            CASES.into_iter().zip(["198.18.0.254", "fd00::fe"])
        {
            let case = format!("{family:?}");
            let header = if family == Family::V4 { 20 } else { 48 };
            // A reply the VIP sent in two fragments; a router on the client's side
            // complains about each.
            let (_, [first, second]) = datagram(family, vip, client, (53, 42_400), 1200, 0x55);
            datapath.set_ingress(ids.from_client);
            let (out, delta) = datapath.run_counted(&icmp_error(router, vip, &first, header + 8));
            assert_eq!(out.action, XDP_PASS, "{case}: {:?}", delta.moved());
            assert_eq!(
                delta.packets(Stat::ForwardIcmpToBackend),
                1,
                "{case}: first fragment quoted"
            );
            let wire = verify_icmp(&out.packet);
            assert!(backends.map(ip).contains(&wire.dst), "{case}: {}", wire.dst);
            let later = icmp_error(router, vip, &second, header + 8);
            let (out, delta) = datapath.run_counted(&later);
            assert_eq!(out.action, XDP_PASS, "{case}: {:?}", delta.moved());
            assert_eq!(
                delta.packets(Stat::PassIcmpToVip),
                1,
                "{case}: later fragment quoted"
            );
            assert_eq!(out.packet, later, "{case}: untouched");

            // What the lb sent a backend, in two fragments; the backend complains.
            let (_, [first, second]) =
                datagram(family, client, backends[0], (42_401, 8080), 1200, 0x56);
            datapath.set_ingress(ids.from_backends);
            let (out, delta) =
                datapath.run_counted(&icmp_error(backends[0], client, &first, header + 8));
            assert_eq!(out.action, XDP_PASS, "{case}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardIcmpToClient), 1, "{case}");
            let wire = verify_icmp(&out.packet);
            assert_eq!(wire.src, ip(vip), "{case}: from the VIP");
            let (out, delta) =
                datapath.run_counted(&icmp_error(backends[0], client, &second, header + 8));
            assert_eq!(out.action, XDP_DROP, "{case}: {:?}", delta.moved());
            assert_eq!(
                delta.packets(Stat::DropBackendFragment),
                1,
                "{case}: no backend address leaks"
            );
        }
    });
}

#[test]
fn the_program_with_fragments_loads_with_the_datapath_log_on() {
    lb_tests::require_root!();
    // The verifier walks every logging branch too: the costliest load.
    let options = Options {
        log: true,
        ..dsr_options()
    };
    for options in [options, dsr_options()] {
        let mut datapath = Datapath::load_with_options(Datapath::TEST_LIMITS, &options);
        let counts: Vec<String> = ["lb", "lb_fragment", "lb_icmp", "lb_encap", "lb_too_big"]
            .iter()
            .map(|name| format!("{name} {:?}", datapath.verified_instructions(name)))
            .collect();
        lb_tests::loud(&format!(
            "verifier, datapath log {}: instructions processed: {}",
            if options.log { "on" } else { "off" },
            counts.join(", ")
        ));
    }
}
