//! Golden packets through the real XDP program with BPF_PROG_TEST_RUN (needs root).

use std::net::IpAddr;

use lb_common::{
    consts::{XDP_PASS as PASS, XDP_REDIRECT},
    stats::Stat,
};
use lb_tests::{
    fiblab::FibLab,
    packets::{Family, Layer, Spec, Transport, all_specs},
    testrun::Datapath,
};

fn malformed_reason(layer: Layer) -> Stat {
    match layer {
        Layer::Ethernet => Stat::MalformedEthernet,
        Layer::Vlan => Stat::MalformedVlan,
        Layer::Ipv4 => Stat::MalformedIpv4,
        Layer::Ipv6 => Stat::MalformedIpv6,
        Layer::Tcp => Stat::MalformedTcp,
        Layer::Udp => Stat::MalformedUdp,
    }
}

#[test]
fn non_vip_traffic_passes_byte_for_byte() {
    lb_tests::require_root!();
    let mut datapath = Datapath::load();
    for spec in all_specs() {
        let packet = spec.build(b"hello, not a VIP");
        let (verdict, delta) = datapath.run_counted(&packet);
        assert_eq!(verdict.action, PASS, "{spec:?}");
        assert_eq!(
            verdict.packet, packet,
            "{spec:?}: a passed packet must be untouched"
        );
        assert_eq!(
            delta.packets(Stat::Pass),
            1,
            "{spec:?}: {:?}",
            delta.moved()
        );
        // A tagged frame is the kernel's (its VLAN interface's) before any VIP lookup.
        let reason = if spec.vlan {
            Stat::PassVlanTagged
        } else {
            Stat::PassNotVip
        };
        assert_eq!(delta.packets(reason), 1, "{spec:?}: {:?}", delta.moved());
        let (l3, l4) = match (spec.family, spec.transport) {
            (Family::V6, Transport::Tcp) => (Stat::Ipv6, Stat::Tcp),
            (Family::V6, Transport::Udp) => (Stat::Ipv6, Stat::Udp),
            (_, Transport::Tcp) => (Stat::Ipv4, Stat::Tcp),
            (_, Transport::Udp) => (Stat::Ipv4, Stat::Udp),
        };
        assert_eq!(delta.packets(l3), 1, "{spec:?}: {:?}", delta.moved());
        assert_eq!(delta.packets(l4), 1, "{spec:?}: {:?}", delta.moved());
    }
}

/// Cuts every packet at and inside each header; the kernel's test-run needs at least an
/// Ethernet header (14 bytes), so shorter frames are not reachable here.
#[test]
fn truncated_headers_are_counted_as_malformed_and_passed() {
    lb_tests::require_root!();
    let mut datapath = Datapath::load();
    let mut cases = 0;
    for spec in all_specs() {
        let packet = spec.build(&[]);
        let boundaries = spec.boundaries();
        for window in boundaries.windows(2) {
            let (start, _) = window[0];
            let (end, layer) = window[1];
            // At the start of the layer, one byte in, and one byte short of complete.
            for cut in [start, start + 1, end - 1] {
                let truncated = &packet[..cut];
                let (verdict, delta) = datapath.run_counted(truncated);
                assert_eq!(verdict.action, PASS, "{spec:?} cut at {cut}");
                assert_eq!(verdict.packet, truncated, "{spec:?} cut at {cut}");
                let reason = malformed_reason(layer);
                assert_eq!(
                    delta.packets(reason),
                    1,
                    "{spec:?} cut at {cut}: expected {}, counters moved: {:?}",
                    reason.name(),
                    delta.moved()
                );
                assert_eq!(delta.packets(Stat::Pass), 1);
                cases += 1;
            }
        }
    }
    assert!(cases >= 60, "only {cases} truncation cases ran");
}

/// Each case is a well-sized packet whose header fields contradict themselves.
#[test]
fn inconsistent_headers_are_counted_as_malformed_and_passed() {
    lb_tests::require_root!();
    let v4_tcp = Spec::new(Family::V4, Transport::Tcp).build(b"payload");
    let v4_udp = Spec::new(Family::V4, Transport::Udp).build(b"payload");
    let v6_tcp = Spec::new(Family::V6, Transport::Tcp).build(b"payload");
    let patch = |packet: &[u8], at: usize, byte: u8| {
        let mut p = packet.to_vec();
        p[at] = byte;
        p
    };
    let cases: [(&str, Vec<u8>, Stat); 7] = [
        ("IPv4 IHL 4", patch(&v4_tcp, 14, 0x44), Stat::MalformedIpv4),
        (
            "IPv4 version 6",
            patch(&v4_tcp, 14, 0x65),
            Stat::MalformedIpv4,
        ),
        (
            "IPv4 total length below header",
            patch(&patch(&v4_tcp, 16, 0), 17, 10),
            Stat::MalformedIpv4,
        ),
        (
            "IPv4 IHL past the end",
            patch(&v4_udp[..14 + 20 + 8], 14, 0x4f),
            Stat::MalformedIpv4,
        ),
        (
            "TCP data offset 4",
            patch(&v4_tcp, 14 + 20 + 12, 0x40),
            Stat::MalformedTcp,
        ),
        (
            "UDP length 7",
            patch(&patch(&v4_udp, 14 + 20 + 4, 0), 14 + 20 + 5, 7),
            Stat::MalformedUdp,
        ),
        (
            "IPv6 version 4",
            patch(&v6_tcp, 14, 0x40),
            Stat::MalformedIpv6,
        ),
    ];
    let mut datapath = Datapath::load();
    for (name, packet, reason) in cases {
        let (verdict, delta) = datapath.run_counted(&packet);
        assert_eq!(verdict.action, PASS, "{name}");
        assert_eq!(verdict.packet, packet, "{name}");
        assert_eq!(delta.packets(reason), 1, "{name}: {:?}", delta.moved());
    }
}

#[test]
fn non_ip_frames_pass_untouched() {
    lb_tests::require_root!();
    let mut arp = Spec::new(Family::V4, Transport::Udp).build(&[0; 28]);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut datapath = Datapath::load();
    let (verdict, delta) = datapath.run_counted(&arp);
    assert_eq!(verdict.action, PASS);
    assert_eq!(verdict.packet, arp);
    assert_eq!(delta.packets(Stat::PassNotIp), 1, "{:?}", delta.moved());
    assert_eq!(delta.packets(Stat::OtherL3), 1, "{:?}", delta.moved());
}

/// lb does not forward VLAN-tagged frames (the FIB would be asked about the physical
/// interface and the frame would leave with the ingress tag): a tagged packet to a VIP,
/// or a backend's tagged reply, is passed untouched to the kernel's VLAN interface and
/// counted as `pass_vlan_tagged`; the same packets untagged are forwarded.
#[test]
fn vlan_tagged_frames_to_a_vip_pass_untouched() {
    lb_tests::require_root!();
    let ip = |text: &str| text.parse::<IpAddr>().expect("address");
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        let cases = [
            (
                "SYN to a VIP",
                ids.from_client,
                Spec::new(Family::V4, Transport::Tcp)
                    .between(ip("198.18.0.1"), ip("198.18.1.1"))
                    .ports(41_000, 80),
            ),
            (
                "IPv6 datagram to a VIP",
                ids.from_client,
                Spec::new(Family::V6, Transport::Udp)
                    .between(ip("fd00::1"), ip("fd00:1::1"))
                    .ports(41_001, 53),
            ),
            (
                "reply of a backend",
                ids.from_backends,
                Spec::new(Family::V4, Transport::Tcp)
                    .between(ip("198.18.2.2"), ip("198.18.0.1"))
                    .ports(8080, 41_002)
                    .ack(),
            ),
        ];
        for (name, ingress, spec) in cases {
            datapath.set_ingress(ingress);
            let untagged = spec.build(&[]);
            let (verdict, _) = datapath.run_counted(&untagged);
            assert_eq!(verdict.action, XDP_REDIRECT, "{name}: forwarded untagged");
            let tagged = spec.with_vlan().build(&[]);
            let (verdict, delta) = datapath.run_counted(&tagged);
            assert_eq!(verdict.action, PASS, "{name}: {:?}", delta.moved());
            assert_eq!(verdict.packet, tagged, "{name}: passed byte for byte");
            assert_eq!(
                delta.packets(Stat::PassVlanTagged),
                1,
                "{name}: {:?}",
                delta.moved()
            );
            assert_eq!(delta.packets(Stat::Pass), 1, "{name}");
            assert_eq!(delta.packets(Stat::ForwardNew), 0, "{name}");
        }
    });
}
