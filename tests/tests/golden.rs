//! Golden packets through the real XDP program with BPF_PROG_TEST_RUN (needs root).

use std::net::IpAddr;

use lb_common::{
    consts::{ABLATE_IPV4_CHECKSUM, XDP_PASS as PASS, XDP_REDIRECT},
    stats::{Stat, StatKind},
};
use lb_tests::{
    fiblab::FibLab,
    packets::{Family, Layer, Spec, Transport, all_specs},
    testrun::{CounterDelta, Datapath},
};
use lb_userspace::model::limits::Options;

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

/// Sets the IPv4 header checksum of a frame (untagged, IPv4 at byte 14) to the one its own
/// IHL covers, as far as the frame holds the header: a patched case must be refused by the
/// field check it names, not by the checksum check that runs after the field checks.
fn with_ipv4_checksum(mut packet: Vec<u8>) -> Vec<u8> {
    const L3: usize = 14;
    let header_len = usize::from(packet[L3] & 0x0f) * 4;
    let end = (L3 + header_len).min(packet.len());
    packet[L3 + 10..L3 + 12].fill(0);
    let sum = etherparse::checksum::Sum16BitWords::new()
        .add_slice(&packet[L3..end])
        .ones_complement();
    // The sum is of words as they lie in memory (as etherparse's own header does it).
    packet[L3 + 10..L3 + 12].copy_from_slice(&sum.to_be().to_be_bytes());
    packet
}

/// The reason counters (`StatKind::Reason`) that moved: exactly one per packet.
fn reasons_moved(delta: &CounterDelta) -> Vec<&'static str> {
    Stat::ALL
        .iter()
        .filter(|s| s.kind() == StatKind::Reason && delta.packets(**s) > 0)
        .map(|s| s.name())
        .collect()
}

/// Each case is a well-sized packet whose header fields contradict themselves. The IPv4
/// cases carry a header checksum that is right for the header as patched, and each case
/// runs twice: through the datapath as loaded by the daemon, and through one loaded without
/// its IPv4 checksum check (`ABLATE_IPV4_CHECKSUM`). The second run refuses the packet only
/// if the field check the case names does: a case that only the checksum caught fails here.
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
    // The checksum helper gives a well-formed header back its own checksum.
    assert_eq!(with_ipv4_checksum(v4_tcp.clone()), v4_tcp);
    assert_eq!(with_ipv4_checksum(v4_udp.clone()), v4_udp);
    // The TCP header's data offset (4 words: below its minimum of 5).
    let tcp_doff_4 = |packet: &[u8]| patch(packet, 14 + 20 + 12, 0x40);
    let cases: [(&str, Vec<u8>, Stat); 7] = [
        (
            "IPv4 IHL 4",
            with_ipv4_checksum(patch(&v4_tcp, 14, 0x44)),
            Stat::MalformedIpv4,
        ),
        (
            "IPv4 version 6",
            with_ipv4_checksum(patch(&v4_tcp, 14, 0x65)),
            Stat::MalformedIpv4,
        ),
        // The TCP header behind is broken too: the later check that the IP length holds
        // the TCP header would refuse the packet as well, and parsing TCP would count it
        // malformed_tcp, so only the total-length check counts it malformed_ipv4.
        (
            "IPv4 total length below header",
            with_ipv4_checksum(tcp_doff_4(&patch(&patch(&v4_tcp, 16, 0), 17, 10))),
            Stat::MalformedIpv4,
        ),
        (
            "IPv4 IHL past the end",
            with_ipv4_checksum(patch(&v4_udp[..14 + 20 + 8], 14, 0x4f)),
            Stat::MalformedIpv4,
        ),
        ("TCP data offset 4", tcp_doff_4(&v4_tcp), Stat::MalformedTcp),
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
    let without_checksum = Options {
        ablate: ABLATE_IPV4_CHECKSUM,
        ..Options::default()
    };
    let mut datapaths = [
        ("as loaded", Datapath::load()),
        (
            "without the IPv4 checksum check",
            Datapath::load_with_options(Datapath::TEST_LIMITS, &without_checksum),
        ),
    ];
    // The second datapath really skips the checksum: a packet wrong only in its checksum
    // is refused by the first and passed as not for a VIP by the second.
    let bad_checksum = patch(&v4_tcp, 14 + 10, v4_tcp[14 + 10] ^ 0xff);
    for ((loaded, datapath), reason) in datapaths
        .iter_mut()
        .zip([Stat::MalformedIpv4, Stat::PassNotVip])
    {
        let (_, delta) = datapath.run_counted(&bad_checksum);
        assert_eq!(
            reasons_moved(&delta),
            [reason.name()],
            "a bad checksum, {loaded}"
        );
    }
    // Every case runs before any assertion, so one run names all cases that fail.
    let mut failures = Vec::new();
    for (name, packet, reason) in &cases {
        for (loaded, datapath) in &mut datapaths {
            let (verdict, delta) = datapath.run_counted(packet);
            let reasons = reasons_moved(&delta);
            if verdict.action != PASS
                || verdict.packet != *packet
                || delta.packets(Stat::Pass) != 1
                || reasons != [reason.name()]
            {
                failures.push(format!(
                    "{name} ({loaded}): expected xdp_pass untouched and {}, got action {} \
                     (packet {}), reasons {reasons:?}, counters {:?}",
                    reason.name(),
                    verdict.action,
                    if verdict.packet == *packet {
                        "untouched"
                    } else {
                        "changed"
                    },
                    delta.moved()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
