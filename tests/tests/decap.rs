//! Golden packets for the backends' decap program (`lb_decap`, its own object): outer
//! headers stripped for IPIP, IPv6-in-IPv6 and IPv4-in-IPv6, the inner packet byte for
//! byte as the lb sent it; everything else passed exactly as it came, each with its
//! counter. The real object under BPF_PROG_TEST_RUN; outputs re-parsed with etherparse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{
    consts::{XDP_DROP, XDP_PASS},
    decap::{
        DECAP_PINNED_MAPS, DecapStat, MAP_DECAP_CONFIG, MAP_DECAP_JUMPS, MAP_DECAP_LOCAL,
        MAP_DECAP_RECENT, MAP_DECAP_SOURCES, MAP_DECAP_STATS,
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
    let mut fragment = good;
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
            MAP_DECAP_JUMPS,
            MAP_DECAP_LOCAL,
            MAP_DECAP_RECENT,
            "DECAP_SCRATCH",
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
        lb_tests::cleanup::remove_dir_all(&self.0);
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

/// Seeds for the fuzzer: every tunnel kind, TCP and UDP, with and without a VLAN tag.
fn fuzz_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (family, outer) in [
        (Family::V4, Outer::V4),
        (Family::V4Options, Outer::V4_OPTIONS),
        (Family::V6, Outer::V6),
        (Family::V4, Outer::V6),
    ] {
        for transport in [Transport::Tcp, Transport::Udp] {
            let frame = encapsulate(outer, &client_packet(family, transport));
            seeds.push(tagged(&frame, &[[0x81, 0x00]]));
            seeds.push(frame);
        }
    }
    seeds
}

fn l2_len(frame: &[u8]) -> usize {
    match frame[12..14] {
        [0x81, 0x00] | [0x88, 0xa8] => 18,
        _ => 14,
    }
}

/// What the design allows for one mutated frame: passed untouched, dropped only for a
/// congestion mark that cannot be carried, or decapsulated: the outer header (one that
/// etherparse reads as a tunnel with a right checksum) gone, the Ethernet header before
/// it kept, and the inner packet unchanged but for a carried CE mark.
fn check_fuzzed(input: &[u8], action: u32, out: &[u8], stat: DecapStat) -> Result<(), String> {
    use etherparse::{IpNumber, Ipv4Header, Ipv6Header};
    match stat {
        DecapStat::DropCeNotEct if action == XDP_DROP => return Ok(()),
        DecapStat::DecapV4InV4 | DecapStat::DecapV6InV6 | DecapStat::DecapV4InV6 => {}
        _ if action == XDP_PASS && out == input => return Ok(()),
        _ => {
            return Err(format!(
                "{stat:?}: verdict {action}, changed: {}",
                out != input
            ));
        }
    }
    if action != XDP_PASS {
        return Err(format!("decapsulated with verdict {action}"));
    }
    let l2 = l2_len(input);
    let outer_len = input
        .len()
        .checked_sub(out.len())
        .ok_or("the packet grew")?;
    let (outer_ok, outer_ecn) = match input[l2] >> 4 {
        4 => match Ipv4Header::from_slice(&input[l2..]) {
            Ok((ip, _)) => (
                ip.header_len() == outer_len
                    && ip.protocol == IpNumber::IPV4
                    && raw_checksum_ok(&input[l2..l2 + outer_len]),
                input[l2 + 1] & 3,
            ),
            Err(_) => (false, 0),
        },
        6 => match Ipv6Header::from_slice(&input[l2..]) {
            Ok((ip, _)) => (
                outer_len == 40 && matches!(ip.next_header, IpNumber::IPV4 | IpNumber::IPV6),
                (input[l2 + 1] >> 4) & 3,
            ),
            Err(_) => (false, 0),
        },
        _ => (false, 0),
    };
    if !outer_ok {
        return Err(format!(
            "{stat:?}: {outer_len} bytes removed that are no tunnel header"
        ));
    }
    if out[..l2 - 2] != input[..l2 - 2] {
        return Err("the Ethernet header changed".into());
    }
    let inner_in = &input[l2 + outer_len..];
    let inner_out = &out[l2..];
    let ether_type: [u8; 2] = if inner_in[0] >> 4 == 4 {
        [0x08, 0x00]
    } else {
        [0x86, 0xdd]
    };
    if out[l2 - 2..l2] != ether_type {
        return Err("wrong ethertype".into());
    }
    let inner_ok = match inner_out[0] >> 4 {
        4 => Ipv4Header::from_slice(inner_out).is_ok_and(|(ip, _)| {
            usize::from(ip.total_len)
                == input.len().min(l2 + outer_ip_len(input, l2)) - l2 - outer_len
        }),
        6 => Ipv6Header::from_slice(inner_out).is_ok_and(|(ip, _)| {
            40 + usize::from(ip.payload_length)
                == input.len().min(l2 + outer_ip_len(input, l2)) - l2 - outer_len
        }),
        _ => false,
    };
    if !inner_ok {
        return Err(format!(
            "{stat:?}: the inner header does not parse or its length is not the outer payload's"
        ));
    }
    if inner_out == inner_in {
        return Ok(());
    }
    // Only a carried CE mark may differ: the ECN bits, and the IPv4 header checksum,
    // updated incrementally (RFC 1624): the header's one's complement sum is unchanged, so
    // a checksum that was wrong stays wrong rather than being fixed up.
    let changed = |i: usize| inner_in[i] != inner_out[i];
    let v4 = inner_in[0] >> 4 == 4;
    let (ecn_in, ecn_out) = if v4 {
        (inner_in[1] & 3, inner_out[1] & 3)
    } else {
        ((inner_in[1] >> 4) & 3, (inner_out[1] >> 4) & 3)
    };
    let header_len = if v4 {
        usize::from(inner_in[0] & 0x0f) * 4
    } else {
        40
    };
    let only_ecn_and_checksum = (0..inner_in.len())
        .filter(|&i| changed(i))
        .all(|i| i == 1 || (v4 && (i == 10 || i == 11)));
    let mask = if v4 { 0xfc } else { 0xcf };
    let sum_kept = !v4 || ones_sum(&inner_in[..header_len]) == ones_sum(&inner_out[..header_len]);
    if outer_ecn != 3
        || ecn_in == 0
        || ecn_out != 3
        || inner_in[1] & mask != inner_out[1] & mask
        || !only_ecn_and_checksum
        || !sum_kept
    {
        return Err(format!(
            "the inner packet changed (outer ECN {outer_ecn}): {inner_in:02x?} -> {inner_out:02x?}"
        ));
    }
    Ok(())
}

/// The one's complement sum of 16-bit words, folded (0 and 0xffff are one value: 0xffff).
fn ones_sum(bytes: &[u8]) -> u16 {
    let sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = ((sum & 0xffff) + (sum >> 16)) as u16;
    if sum == 0 { 0xffff } else { sum }
}

/// The one's complement sum of an IPv4 header, as on the wire, is all ones.
fn raw_checksum_ok(header: &[u8]) -> bool {
    ones_sum(header) == 0xffff
}

/// The IP length the outer header at `l2` states.
fn outer_ip_len(frame: &[u8], l2: usize) -> usize {
    if frame[l2] >> 4 == 4 {
        usize::from(u16::from_be_bytes([frame[l2 + 2], frame[l2 + 3]]))
    } else {
        40 + usize::from(u16::from_be_bytes([frame[l2 + 4], frame[l2 + 5]]))
    }
}

/// Whether a reference reading (etherparse) finds a well-formed tunnel to the backend, one
/// the program must decapsulate: outer checksum right, not a fragment, an inner header of
/// the family the outer protocol names, and lengths that agree and fit the frame.
fn must_decapsulate(frame: &[u8]) -> bool {
    use etherparse::{IpNumber, Ipv4Header, Ipv6Header};
    if frame.len() < 14 || ![[0x08, 0x00], [0x86, 0xdd]].contains(&[frame[12], frame[13]]) {
        return false;
    }
    let ip = &frame[14..];
    let (inner, proto, outer_total, local) = match (frame[12], ip.first().map(|b| b >> 4)) {
        (0x08, Some(4)) => match Ipv4Header::from_slice(ip) {
            Ok((h, _)) => {
                // From the raw bytes: etherparse drops the reserved flag bit, so its
                // recomputed checksum can agree with a header that does not verify.
                if !raw_checksum_ok(&ip[..h.header_len()])
                    || h.more_fragments
                    || h.fragment_offset.value() != 0
                {
                    return false;
                }
                (
                    &ip[h.header_len()..],
                    h.protocol,
                    usize::from(h.total_len),
                    h.destination == BACKEND_V4,
                )
            }
            Err(_) => return false,
        },
        (0x86, Some(6)) => match Ipv6Header::from_slice(ip) {
            Ok((h, _)) => (
                &ip[40..],
                h.next_header,
                40 + usize::from(h.payload_length),
                h.destination == BACKEND_V6,
            ),
            Err(_) => return false,
        },
        _ => return false,
    };
    let outer_header = ip.len() - inner.len();
    if !local || outer_total > ip.len() || outer_total < outer_header {
        return false;
    }
    let carried = outer_total - outer_header;
    match proto {
        IpNumber::IPV4 => {
            Ipv4Header::from_slice(inner).is_ok_and(|(h, _)| usize::from(h.total_len) == carried)
        }
        IpNumber::IPV6 => Ipv6Header::from_slice(inner)
            .is_ok_and(|(h, _)| 40 + usize::from(h.payload_length) == carried),
        _ => false,
    }
}

#[test]
fn mutated_tunnels_are_decapsulated_exactly_or_passed_untouched() {
    lb_tests::require_root!();
    let count: u64 = std::env::var("LB_FUZZ_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let seed = 0x6465_6361_7066_7a31;
    let mut backend = Backend::new();
    let seeds = fuzz_seeds();
    let mut rng = lb_tests::fuzz::Rng::new(seed);
    let mut seen = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for n in 0..count {
        let golden = &seeds[rng.below(seeds.len())];
        let packet = lb_tests::fuzz::mutate(&mut rng, golden);
        let (action, out, stat) = backend.run(&packet);
        *seen.entry(stat.name()).or_insert(0u64) += 1;
        let decapsulated = matches!(
            stat,
            DecapStat::DecapV4InV4
                | DecapStat::DecapV6InV6
                | DecapStat::DecapV4InV6
                | DecapStat::DropCeNotEct
        );
        if must_decapsulate(&packet) && !decapsulated {
            failures.push(format!(
                "#{n} a well-formed tunnel was {stat:?}\n  input {packet:02x?}"
            ));
        }
        if let Err(error) = check_fuzzed(&packet, action, &out, stat) {
            failures.push(format!("#{n} {error}\n  input {packet:02x?}"));
            if failures.len() >= 10 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed:#x}:\n{}",
        failures.join("\n")
    );
    for stat in [
        DecapStat::DecapV4InV4,
        DecapStat::DecapV6InV6,
        DecapStat::DecapV4InV6,
        DecapStat::PassNotEncapsulated,
        DecapStat::PassNotLocal,
        DecapStat::Malformed,
    ] {
        assert!(
            seen.contains_key(stat.name()) || count < 1_000,
            "{} never came up in {count} packets: {seen:?}",
            stat.name()
        );
    }
    lb_tests::loud(&format!("decap fuzz: {count} packets, {seen:?}"));
}
