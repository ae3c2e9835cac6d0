//! Golden packets for the backends' decap program (`lb_decap`, its own object): outer
//! headers stripped for IPIP, IPv6-in-IPv6 and IPv4-in-IPv6, the inner packet byte for
//! byte as the lb sent it; everything else passed exactly as it came, each with its
//! counter. The real object under BPF_PROG_TEST_RUN; outputs re-parsed with etherparse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{
    consts::{XDP_DROP, XDP_PASS},
    decap::{
        DECAP_PINNED_MAPS, DecapStat, MAP_DECAP_CONFIG, MAP_DECAP_LOCAL, MAP_DECAP_SOURCES,
        MAP_DECAP_STATS,
    },
};
use lb_tests::{
    packets::{Family, LB_V4, LB_V6, Spec, Transport},
    tunnel::{BACKEND_MAC, BACKEND_V4, BACKEND_V6, Outer, encapsulate, inner, set_ecn},
    verify::verify,
};
use lb_userspace::datapath::decap::{
    DECAP_OBJECT, Decap, DecapSnapshot, SourcePrefix, read_pinned_counters,
};

const LB_MAC: [u8; 6] = lb_tests::packets::LB_MAC;

/// The decap program loaded, accepting tunnels to the backend's two addresses.
struct Backend {
    decap: Decap,
}

impl Backend {
    fn new() -> Self {
        let mut decap = Decap::load(DECAP_OBJECT).expect("the verifier accepts lb_decap");
        for addr in [
            IpAddr::V4(Ipv4Addr::from(BACKEND_V4)),
            IpAddr::V6(Ipv6Addr::from(BACKEND_V6)),
        ] {
            decap.add_local(addr).expect("add a local address");
        }
        Self { decap }
    }

    /// Runs the program once: its verdict, the packet it left, and the one counter that
    /// moved (a panic if none or several did).
    fn run(&mut self, packet: &[u8]) -> (u32, Vec<u8>, DecapStat) {
        let before = self.counters();
        let (action, out) = test_run(&mut self.decap, packet);
        let after = self.counters();
        let moved: Vec<(DecapStat, u64, u64)> = DecapStat::ALL
            .iter()
            .map(|&s| {
                (
                    s,
                    after.get(s).packets - before.get(s).packets,
                    after.get(s).bytes - before.get(s).bytes,
                )
            })
            .filter(|&(_, packets, _)| packets > 0)
            .collect();
        assert!(
            matches!(moved[..], [(_, 1, _)]),
            "exactly one counter moves by one packet per run: {moved:?}"
        );
        let (stat, _, bytes) = moved[0];
        assert_eq!(
            bytes,
            packet.len() as u64,
            "{stat:?} counts the frame's bytes"
        );
        (action, out, stat)
    }

    fn counters(&self) -> DecapSnapshot {
        self.decap.counters().expect("read DECAP_STATS")
    }

    /// Asserts the packet leaves untouched with `stat`.
    fn assert_untouched(&mut self, packet: &[u8], stat: DecapStat) {
        let (action, out, moved) = self.run(packet);
        assert_eq!(moved, stat, "counter");
        assert_eq!(action, XDP_PASS, "passed ({stat:?})");
        assert_eq!(out, packet, "passed untouched ({stat:?})");
    }

    /// Asserts the outer header is gone: same MACs, the inner family's ethertype, and the
    /// inner packet (plus any trailing bytes) unchanged byte for byte.
    fn assert_decapsulated(&mut self, packet: &[u8], outer: Outer, stat: DecapStat) -> Vec<u8> {
        let (action, out, moved) = self.run(packet);
        assert_eq!(moved, stat, "counter");
        assert_eq!(action, XDP_PASS, "decapsulated packets go to the stack");
        assert_eq!(
            out.len(),
            packet.len() - outer.len(),
            "outer header removed"
        );
        assert_eq!(out[..12], packet[..12], "MAC addresses kept");
        let inner = &packet[14 + outer.len()..];
        let ether_type = if inner[0] >> 4 == 4 {
            [0x08, 0x00]
        } else {
            [0x86, 0xdd]
        };
        assert_eq!(out[12..14], ether_type, "ethertype of the inner family");
        assert_eq!(&out[14..], inner, "inner packet byte for byte");
        out
    }
}

/// Runs `decap`'s program once on `packet`: its verdict and the packet it left.
fn test_run(decap: &mut Decap, packet: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; packet.len() + 64];
    let result = decap
        .program()
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes: {e}", packet.len()));
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn v4(octets: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(octets))
}

/// The client's packet as the lb received it, to the VIP.
fn client_packet(family: Family, transport: Transport) -> Vec<u8> {
    let spec = match family {
        Family::V6 => Spec::new(family, transport).between(
            "fd00::1".parse().expect("address"),
            "fd00::80".parse().expect("address"),
        ),
        _ => Spec::new(family, transport).between(
            "198.18.0.1".parse().expect("address"),
            "198.18.0.80".parse().expect("address"),
        ),
    };
    inner(&spec.ports(40_000, 80), b"GET / HTTP/1.1\r\n\r\n")
}

#[test]
fn ipip_ipv6_in_ipv6_and_ipv4_in_ipv6_are_stripped_for_tcp_and_udp() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    let cases = [
        (Family::V4, Outer::V4, DecapStat::DecapV4InV4),
        (Family::V4, Outer::V4_OPTIONS, DecapStat::DecapV4InV4),
        (Family::V4Options, Outer::V4, DecapStat::DecapV4InV4),
        (Family::V6, Outer::V6, DecapStat::DecapV6InV6),
        (Family::V4, Outer::V6, DecapStat::DecapV4InV6),
        (Family::V4Options, Outer::V6, DecapStat::DecapV4InV6),
    ];
    for (family, outer, stat) in cases {
        for transport in [Transport::Tcp, Transport::Udp] {
            let inner = client_packet(family, transport);
            let frame = encapsulate(outer, &inner);
            let out = backend.assert_decapsulated(&frame, outer, stat);
            let wire = verify(&out);
            assert_eq!(wire.dst_mac, BACKEND_MAC);
            assert_eq!(wire.src_mac, LB_MAC);
            assert_eq!((wire.src_port, wire.dst_port), (40_000, 80));
            assert_eq!(wire.payload, b"GET / HTTP/1.1\r\n\r\n");
        }
    }
}

#[test]
fn ethernet_padding_after_the_tunnel_stays_behind_the_inner_packet() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    let mut frame = encapsulate(Outer::V4, &client_packet(Family::V4, Transport::Udp));
    frame.extend_from_slice(&[0; 6]);
    backend.assert_decapsulated(&frame, Outer::V4, DecapStat::DecapV4InV4);
}

#[test]
fn traffic_that_is_not_a_tunnel_is_passed_untouched() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    for family in [Family::V4, Family::V4Options, Family::V6] {
        for transport in [Transport::Tcp, Transport::Udp] {
            let spec = Spec::new(family, transport);
            backend.assert_untouched(&spec.build(b"x"), DecapStat::PassNotEncapsulated);
        }
    }
    // Another ethertype (ARP) in front of what would be a tunnel. (Frames shorter than
    // an Ethernet header never reach XDP: test-run refuses them too.)
    let mut arp = encapsulate(Outer::V4, &client_packet(Family::V4, Transport::Udp));
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    backend.assert_untouched(&arp, DecapStat::PassNotEncapsulated);
}

/// `frame` with VLAN tags (TPID, VLAN 100) inserted after the MAC addresses.
fn tagged(frame: &[u8], tpids: &[[u8; 2]]) -> Vec<u8> {
    let tags: Vec<u8> = tpids
        .iter()
        .flat_map(|tpid| [tpid[0], tpid[1], 0x00, 0x64])
        .collect();
    [&frame[..12], &tags[..], &frame[12..]].concat()
}

#[test]
fn one_vlan_tag_is_kept_in_front_of_the_inner_packet() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    for tpid in [[0x81, 0x00], [0x88, 0xa8]] {
        for (family, outer, stat) in [
            (Family::V4, Outer::V4_OPTIONS, DecapStat::DecapV4InV4),
            (Family::V6, Outer::V6, DecapStat::DecapV6InV6),
            (Family::V4, Outer::V6, DecapStat::DecapV4InV6),
        ] {
            let inner = client_packet(family, Transport::Tcp);
            let frame = tagged(&encapsulate(outer, &inner), &[tpid]);
            let (action, out, moved) = backend.run(&frame);
            assert_eq!((action, moved), (XDP_PASS, stat), "{tpid:x?} {outer:?}");
            assert_eq!(out[..16], frame[..16], "MACs and the tag kept");
            let ether_type: [u8; 2] = if matches!(family, Family::V6) {
                [0x86, 0xdd]
            } else {
                [0x08, 0x00]
            };
            assert_eq!(out[16..18], ether_type, "inner ethertype after the tag");
            assert_eq!(&out[18..], &inner[..], "inner packet byte for byte");
            let wire = verify(&out);
            assert_eq!((wire.src_port, wire.dst_port), (40_000, 80));
        }
    }
}

#[test]
fn two_vlan_tags_are_passed_untouched() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    let frame = encapsulate(Outer::V4, &client_packet(Family::V4, Transport::Tcp));
    let qinq = tagged(&frame, &[[0x88, 0xa8], [0x81, 0x00]]);
    backend.assert_untouched(&qinq, DecapStat::PassNotEncapsulated);
}

#[test]
fn ipv6_extension_headers_before_the_inner_packet_are_passed_untouched() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    let inner = client_packet(Family::V6, Transport::Udp);
    let mut frame = encapsulate(Outer::V6, &inner);
    // A destination options header (8 bytes of padding) whose next header is 41.
    let options = [41u8, 0, 1, 4, 0, 0, 0, 0];
    frame[14 + 6] = 60;
    let payload_len = u16::try_from(inner.len() + options.len()).expect("fits");
    frame[14 + 4..14 + 6].copy_from_slice(&payload_len.to_be_bytes());
    frame.splice(14 + 40..14 + 40, options);
    backend.assert_untouched(&frame, DecapStat::PassNotEncapsulated);
}

#[test]
fn tunnels_to_another_host_are_passed_untouched() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    let elsewhere_v4 = Outer::V4 {
        src: LB_V4,
        dst: [198, 18, 1, 11],
        options: false,
    };
    let mut elsewhere_v6 = BACKEND_V6;
    elsewhere_v6[15] = 0x11;
    let elsewhere_v6 = Outer::V6 {
        src: LB_V6,
        dst: elsewhere_v6,
    };
    for (family, outer) in [
        (Family::V4, elsewhere_v4),
        (Family::V6, elsewhere_v6),
        (Family::V4, elsewhere_v6),
    ] {
        let frame = encapsulate(outer, &client_packet(family, Transport::Tcp));
        backend.assert_untouched(&frame, DecapStat::PassNotLocal);
    }
    // Removing an address stops decapsulation for it.
    backend
        .decap
        .remove_local(v4(BACKEND_V4))
        .expect("remove the address");
    let frame = encapsulate(Outer::V4, &client_packet(Family::V4, Transport::Tcp));
    backend.assert_untouched(&frame, DecapStat::PassNotLocal);
}

#[test]
fn a_source_filter_passes_tunnels_from_outside_its_prefixes_untouched() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    let prefixes = [
        SourcePrefix {
            addr: v4([198, 18, 0, 0]),
            len: 24,
        },
        SourcePrefix {
            addr: "fd00::".parse().expect("address"),
            len: 112,
        },
    ];
    backend.decap.set_sources(&prefixes).expect("set sources");
    let inner4 = client_packet(Family::V4, Transport::Tcp);
    let inner6 = client_packet(Family::V6, Transport::Udp);
    // From the lb (inside the prefixes): decapsulated.
    backend.assert_decapsulated(
        &encapsulate(Outer::V4, &inner4),
        Outer::V4,
        DecapStat::DecapV4InV4,
    );
    backend.assert_decapsulated(
        &encapsulate(Outer::V6, &inner6),
        Outer::V6,
        DecapStat::DecapV6InV6,
    );
    // From outside them: untouched.
    let stranger_v4 = Outer::V4 {
        src: [198, 18, 9, 2],
        dst: BACKEND_V4,
        options: false,
    };
    let mut stranger_v6 = LB_V6;
    stranger_v6[13] = 9;
    let stranger_v6 = Outer::V6 {
        src: stranger_v6,
        dst: BACKEND_V6,
    };
    let from_strangers = [
        encapsulate(stranger_v4, &inner4),
        encapsulate(stranger_v6, &inner6),
        encapsulate(stranger_v6, &inner4),
    ];
    for frame in &from_strangers {
        backend.assert_untouched(frame, DecapStat::PassNotAllowedSource);
    }
    // An IPv4 prefix does not admit IPv6 sources and the other way round.
    backend
        .decap
        .set_sources(&prefixes[..1])
        .expect("set sources");
    backend.assert_untouched(
        &encapsulate(Outer::V6, &inner6),
        DecapStat::PassNotAllowedSource,
    );
    // No prefixes: any source again.
    backend.decap.set_sources(&[]).expect("clear sources");
    backend.assert_decapsulated(&from_strangers[0], stranger_v4, DecapStat::DecapV4InV4);
    backend.assert_decapsulated(&from_strangers[1], stranger_v6, DecapStat::DecapV6InV6);
    backend.assert_decapsulated(&from_strangers[2], stranger_v6, DecapStat::DecapV4InV6);
}

#[test]
fn truncated_tunnels_are_malformed_and_passed_untouched() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    for (family, outer) in [
        (Family::V4, Outer::V4),
        (Family::V4, Outer::V4_OPTIONS),
        (Family::V6, Outer::V6),
        (Family::V4, Outer::V6),
    ] {
        let frame = encapsulate(outer, &client_packet(family, Transport::Tcp));
        let inner_at = 14 + outer.len();
        let inner_header = if matches!(family, Family::V6) { 40 } else { 20 };
        // Cut after the Ethernet header, inside the outer header (after its protocol
        // field for IPv4), right after it, inside the inner header, and one byte short of
        // the outer IP length.
        let cuts = [
            14,
            14 + 12,
            inner_at - 1,
            inner_at,
            inner_at + inner_header / 2,
            frame.len() - 1,
        ];
        for cut in cuts {
            let (action, out, stat) = backend.run(&frame[..cut]);
            assert_eq!(
                (action, stat),
                (XDP_PASS, DecapStat::Malformed),
                "{outer:?} cut at {cut}"
            );
            assert_eq!(out, &frame[..cut], "untouched: {outer:?} cut at {cut}");
        }
    }
}

#[test]
fn inconsistent_lengths_and_versions_are_malformed() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    let inner = client_packet(Family::V4, Transport::Udp);
    let good = encapsulate(Outer::V4, &inner);
    let with_checksum = |mut frame: Vec<u8>| {
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = frame[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        frame
    };
    let mut cases = Vec::new();
    // The outer length claims 8 bytes more than the inner packet (frame padded to match).
    let mut longer = good.clone();
    let total = u16::from_be_bytes([longer[16], longer[17]]) + 8;
    longer[16..18].copy_from_slice(&total.to_be_bytes());
    longer.extend_from_slice(&[0; 8]);
    cases.push(("outer length > inner length", with_checksum(longer)));
    // The inner length claims more than the outer carries.
    let mut inner_longer = good.clone();
    let total = u16::from_be_bytes([inner_longer[36], inner_longer[37]]) + 4;
    inner_longer[36..38].copy_from_slice(&total.to_be_bytes());
    cases.push(("inner length > outer length", inner_longer));
    // IHL below 5.
    let mut short_ihl = good.clone();
    short_ihl[14] = 0x44;
    cases.push(("outer IHL 4", with_checksum(short_ihl)));
    // Protocol 4 but an IPv6 packet inside.
    let mut wrong_version = good.clone();
    wrong_version[34] = 0x65;
    cases.push(("inner version 6 under protocol 4", wrong_version));
    // An outer fragment.
    let mut fragment = good.clone();
    fragment[20] = 0x20;
    cases.push(("outer more-fragments", with_checksum(fragment)));
    for (what, frame) in cases {
        let (action, out, stat) = backend.run(&frame);
        assert_eq!((action, stat), (XDP_PASS, DecapStat::Malformed), "{what}");
        assert_eq!(out, frame, "untouched: {what}");
    }
    // IPv6 payload length beyond the frame.
    let mut v6 = encapsulate(Outer::V6, &client_packet(Family::V6, Transport::Udp));
    let len = u16::from_be_bytes([v6[18], v6[19]]) + 1;
    v6[18..20].copy_from_slice(&len.to_be_bytes());
    backend.assert_untouched(&v6, DecapStat::Malformed);
}

#[test]
fn a_bad_outer_ipv4_checksum_is_malformed() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    for outer in [Outer::V4, Outer::V4_OPTIONS] {
        let mut frame = encapsulate(outer, &client_packet(Family::V4, Transport::Tcp));
        frame[24] ^= 0x01;
        backend.assert_untouched(&frame, DecapStat::Malformed);
    }
}

const NOT_ECT: u8 = 0;
const ECT_0: u8 = 2;
const ECT_1: u8 = 1;
const CE: u8 = 3;

/// A tunnel whose outer and inner headers carry the given ECN fields.
fn with_ecn(outer: Outer, family: Family, outer_ecn: u8, inner_ecn: u8) -> Vec<u8> {
    let mut inner = client_packet(family, Transport::Tcp);
    set_ecn(&mut inner, inner_ecn);
    let mut frame = encapsulate(outer, &inner);
    set_ecn(&mut frame[14..], outer_ecn);
    frame
}

fn ecn_of(ip: &[u8]) -> u8 {
    if ip[0] >> 4 == 4 {
        ip[1] & 0b11
    } else {
        (ip[1] >> 4) & 0b11
    }
}

#[test]
fn a_congestion_mark_on_the_outer_header_is_carried_into_the_inner_one() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    for (family, outer, stat) in [
        (Family::V4, Outer::V4, DecapStat::DecapV4InV4),
        (Family::V4Options, Outer::V4_OPTIONS, DecapStat::DecapV4InV4),
        (Family::V6, Outer::V6, DecapStat::DecapV6InV6),
        (Family::V4, Outer::V6, DecapStat::DecapV4InV6),
    ] {
        for inner_ecn in [ECT_0, ECT_1, CE] {
            let frame = with_ecn(outer, family, CE, inner_ecn);
            let (action, out, moved) = backend.run(&frame);
            assert_eq!(
                (action, moved),
                (XDP_PASS, stat),
                "{outer:?} inner {inner_ecn}"
            );
            assert_eq!(
                ecn_of(&out[14..]),
                CE,
                "CE carried in: {outer:?} inner {inner_ecn}"
            );
            // Re-parsed with the IPv4 header checksum recomputed from scratch.
            verify(&out);
            // Nothing else changed: the inner packet as sent, with CE set.
            let mut expected = frame[14 + outer.len()..].to_vec();
            set_ecn(&mut expected, CE);
            assert_eq!(&out[14..], &expected[..], "only the ECN field changes");
        }
        // No mark outside: the inner ECN field stays as it was, whatever the outer one.
        for (outer_ecn, inner_ecn) in [
            (ECT_1, ECT_0),
            (ECT_0, ECT_1),
            (NOT_ECT, ECT_0),
            (ECT_0, NOT_ECT),
        ] {
            let frame = with_ecn(outer, family, outer_ecn, inner_ecn);
            backend.assert_decapsulated(&frame, outer, stat);
        }
    }
}

#[test]
fn a_congestion_mark_over_a_packet_that_is_not_ecn_capable_is_dropped() {
    lb_tests::require_root!();
    let mut backend = Backend::new();
    for (family, outer) in [
        (Family::V4, Outer::V4),
        (Family::V6, Outer::V6),
        (Family::V4, Outer::V6),
    ] {
        let frame = with_ecn(outer, family, CE, NOT_ECT);
        let (action, _, stat) = backend.run(&frame);
        assert_eq!(
            (action, stat),
            (XDP_DROP, DecapStat::DropCeNotEct),
            "{outer:?}"
        );
    }
}

#[test]
fn the_decap_object_loads_through_the_verifier_with_only_its_own_maps() {
    lb_tests::require_root!();
    drop(Backend::new());
    let ebpf = aya::Ebpf::load(DECAP_OBJECT).expect("parse the decap object");
    let mut names: Vec<&str> = ebpf.maps().map(|(name, _)| name).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            MAP_DECAP_CONFIG,
            MAP_DECAP_LOCAL,
            MAP_DECAP_SOURCES,
            MAP_DECAP_STATS
        ],
        "no balancer maps in the backends' object"
    );
}

/// A pin directory on bpffs for one test, removed on drop.
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pinned_maps_outlive_the_loader_and_their_counters_read_from_the_pins() {
    lb_tests::require_root!();
    let pins = Pins(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/lbt-decap-{}",
        std::process::id()
    )));
    let frame = encapsulate(Outer::V4, &client_packet(Family::V4, Transport::Udp));
    {
        let mut decap = Decap::load_pinned(DECAP_OBJECT, &pins.0).expect("load, pinned");
        decap.add_local(v4(BACKEND_V4)).expect("add an address");
        let (action, out) = test_run(&mut decap, &frame);
        assert_eq!(
            (action, out.len()),
            (XDP_PASS, frame.len() - 20),
            "decapsulated"
        );
    }
    for name in DECAP_PINNED_MAPS {
        assert!(pins.0.join(name).exists(), "{name} pinned");
    }
    let counters = read_pinned_counters(&pins.0).expect("counters from the pins");
    assert_eq!(counters.get(DecapStat::DecapV4InV4).packets, 1);
    // A second load adopts the pinned maps: the address is still there, the counter goes on.
    let mut decap = Decap::load_pinned(DECAP_OBJECT, &pins.0).expect("load again, pinned");
    let (action, out) = test_run(&mut decap, &frame);
    assert_eq!(
        (action, out.len()),
        (XDP_PASS, frame.len() - 20),
        "still decapsulated"
    );
    let counters = read_pinned_counters(&pins.0).expect("counters from the pins");
    assert_eq!(counters.get(DecapStat::DecapV4InV4).packets, 2);
}
