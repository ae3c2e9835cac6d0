//! Golden packets for dsr-gue on the balancer: the real program (and `lb_encap_gue`, which
//! it tail-calls) under BPF_PROG_TEST_RUN in a FibLab. The output is parsed field by field:
//! outer IPv4 / IPv6 (checksum recomputed), UDP to the GUE port with a per-flow source
//! port and a zero checksum, the GUE header, the hop list, and the client's packet byte
//! for byte. The hop lists are checked against the tables each change made: no hop after
//! the first while nothing changed, the earlier backend after the current one when a flow's
//! slot moved, several earlier ones newest first, and the tracked backend first.

use std::net::IpAddr;

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};
use lb_common::{
    consts::{ABLATE_CONNTRACK, XDP_REDIRECT},
    gue::{DEFAULT_GUE_PORT, GUE_PROTO_IPV4, GUE_PROTO_IPV6, HOPS_MAGIC},
    stats::Stat,
};
use lb_tests::{
    fiblab::{FibLab, add_gue_vip, client_of, dsr_options, family_of},
    packets::{Family, Spec, Transport},
    testrun::Datapath,
};
use lb_userspace::model::{
    limits::{Limits, Options},
    state::{Change, Proto, Service},
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

const BACKENDS_V4: [&str; 2] = ["198.18.2.2", "198.18.2.3"];
const BACKENDS_V6: [&str; 2] = ["fd00:2::2", "fd00:2::3"];
/// Backends added by the tests' changes, on the same link (neighbours pinned here).
const JOINERS_V4: [&str; 2] = ["198.18.2.4", "198.18.2.5"];
const JOINER_MACS: [[u8; 6]; 2] = [[0x02, 0x18, 0, 0, 2, 4], [0x02, 0x18, 0, 0, 2, 5]];

/// A dsr-gue frame as parsed from the wire.
#[derive(Debug)]
struct GueFrame {
    dst: IpAddr,
    source_port: u16,
    hops: Vec<IpAddr>,
    next: u8,
    inner: Vec<u8>,
}

/// Parses and checks everything after the Ethernet header of a dsr-gue frame.
fn gue(frame: &[u8]) -> GueFrame {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let ip = &frame[14..];
    let (dst, payload, hop_len) = match ethertype {
        0x0800 => {
            let header = Ipv4HeaderSlice::from_slice(ip).expect("outer IPv4 header");
            let owned = header.to_header();
            assert_eq!(header.ihl(), 5, "no options");
            assert_eq!(
                owned.header_checksum,
                owned.calc_header_checksum(),
                "checksum"
            );
            assert_eq!(usize::from(header.total_len()), ip.len(), "total length");
            assert_eq!(header.protocol().0, 17, "UDP");
            (IpAddr::from(header.destination()), &ip[20..], 4)
        }
        0x86dd => {
            let header = Ipv6HeaderSlice::from_slice(ip).expect("outer IPv6 header");
            assert_eq!(
                usize::from(header.payload_length()) + 40,
                ip.len(),
                "length"
            );
            assert_eq!(header.next_header().0, 17, "UDP");
            (IpAddr::from(header.destination()), &ip[40..], 16)
        }
        other => panic!("EtherType {other:#06x} is no IP"),
    };
    let udp = &payload[..8];
    assert_eq!(
        u16::from_be_bytes([udp[2], udp[3]]),
        DEFAULT_GUE_PORT,
        "to the GUE port"
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        payload.len(),
        "UDP length"
    );
    assert_eq!(
        udp[6..8],
        [0, 0],
        "no UDP checksum (the inner packet has its own)"
    );
    let gue = &payload[8..];
    assert_eq!(gue[0] & 0xe0, 0, "GUE version 0, no control bit");
    let hlen = usize::from(gue[0] & 0x1f) * 4;
    assert_eq!(gue[2..4], [0, 0], "no GUE flags");
    let list = &gue[4..4 + hlen];
    assert_eq!(list[..2], HOPS_MAGIC, "lb's hop list");
    let (count, next) = (usize::from(list[2]), list[3]);
    assert_eq!(
        hlen,
        4 + count * hop_len,
        "Hlen covers the hop list exactly"
    );
    let hops = list[4..]
        .chunks(hop_len)
        .map(|a| match hop_len {
            4 => IpAddr::from(<[u8; 4]>::try_from(a).expect("4 bytes")),
            _ => IpAddr::from(<[u8; 16]>::try_from(a).expect("16 bytes")),
        })
        .collect();
    let inner = gue[4 + hlen..].to_vec();
    let proto = if inner[0] >> 4 == 4 {
        GUE_PROTO_IPV4
    } else {
        GUE_PROTO_IPV6
    };
    assert_eq!(gue[1], proto, "GUE protocol of the inner packet");
    GueFrame {
        dst,
        source_port: u16::from_be_bytes([udp[0], udp[1]]),
        hops,
        next,
        inner,
    }
}

fn limits() -> Limits {
    Limits {
        max_vips: 32,
        ..Datapath::TEST_LIMITS
    }
}

/// One hop while nothing changed: the packet untouched behind outer IP, UDP and GUE,
/// toward its backend, with a source port of the dynamic range that stays with the flow.
#[test]
fn dsr_gue_sends_the_packet_untouched_in_udp_and_gue_with_its_hop_list() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    let vips = [
        ("198.18.1.30", BACKENDS_V4),
        ("fd00:1::30", BACKENDS_V6),
        ("198.18.1.31", BACKENDS_V6),
    ];
    lab.with_datapath_loaded(limits(), &dsr_options(), |datapath, ids| {
        for (vip, backends) in vips {
            add_gue_vip(datapath, ip(vip), &backends.map(ip));
        }
        datapath.set_ingress(ids.from_client);
        for (vip, backends) in vips {
            let (vip, backends) = (ip(vip), backends.map(ip));
            for (transport, port) in [(Transport::Tcp, 80), (Transport::Udp, 53)] {
                for client_port in [42_001u16, 42_002, 42_003] {
                    let case = format!("{vip}:{port} {transport:?} from port {client_port}");
                    let request = Spec::new(family_of(vip), transport)
                        .between(client_of(vip), vip)
                        .ports(client_port, port)
                        .build(b"GET / HTTP/1.0\r\n\r\n");
                    let (out, delta) = datapath.run_counted(&request);
                    assert_eq!(out.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
                    assert_eq!(delta.packets(Stat::ForwardNew), 1, "{case}");
                    assert_eq!(delta.packets(Stat::DsrGueEncapsulated), 1, "{case}");
                    assert_eq!(delta.packets(Stat::GueSecondHop), 0, "{case}");
                    let frame = gue(&out.packet);
                    assert!(backends.contains(&frame.dst), "{case}: to {}", frame.dst);
                    assert_eq!(frame.hops, [frame.dst], "{case}: one hop, the destination");
                    assert_eq!(frame.next, 1, "{case}");
                    assert!(frame.source_port >= 0xc000, "{case}: {}", frame.source_port);
                    assert_eq!(frame.inner, request[14..], "{case}: inner packet untouched");
                    let (again, _) = datapath.run_counted(&request);
                    assert_eq!(
                        gue(&again.packet).source_port,
                        frame.source_port,
                        "{case}: the source port is the flow's"
                    );
                }
            }
        }
    });
}

/// The hop list of each flow of `ports`, as the datapath sends it a SYN (balanced afresh
/// even when tracked) or an ACK.
fn hop_lists(datapath: &mut Datapath, vip: IpAddr, ports: &[u16], syn: bool) -> Vec<Vec<IpAddr>> {
    ports
        .iter()
        .map(|&client_port| {
            let spec = Spec::new(Family::V4, Transport::Tcp)
                .between(client_of(vip), vip)
                .ports(client_port, 80);
            let spec = if syn { spec } else { spec.ack() };
            let request = spec.build(b"x");
            let (out, delta) = datapath.run_counted(&request);
            assert_eq!(
                out.action,
                XDP_REDIRECT,
                "port {client_port}: {:?}",
                delta.moved()
            );
            let frame = gue(&out.packet);
            assert_eq!(
                frame.dst, frame.hops[0],
                "the list starts with the destination"
            );
            let second = u64::from(frame.hops.len() > 1);
            assert_eq!(
                delta.packets(Stat::GueSecondHop),
                second,
                "port {client_port}"
            );
            frame.hops
        })
        .collect()
}

fn add_backend(datapath: &mut Datapath, vip: IpAddr, backend: &str) {
    let service = Service {
        addr: std::net::SocketAddr::new(vip, 80),
        proto: Proto::Tcp,
    };
    datapath
        .balancer
        .apply(&Change::AddBackend {
            server_id: None,
            service,
            backend: std::net::SocketAddr::new(ip(backend), 80),
            weight: 100,
        })
        .expect("add a backend");
}

/// Untracked flows (no conntrack: every packet takes the table): after a change, a flow
/// whose slot moved lists its earlier backend after the current one; after a second,
/// the earlier backends of both tables, newest first, each once; a flow that never moved
/// keeps one hop.
#[test]
fn each_change_puts_the_backends_a_flow_had_after_its_current_one() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    for (joiner, mac) in JOINERS_V4.iter().zip(JOINER_MACS) {
        lab.set_backend_neighbour(joiner, mac);
    }
    let options = Options {
        ablate: ABLATE_CONNTRACK,
        ..dsr_options()
    };
    lab.with_datapath_loaded(limits(), &options, |datapath, ids| {
        let vip = ip("198.18.1.32");
        add_gue_vip(datapath, vip, &BACKENDS_V4.map(ip));
        datapath.set_ingress(ids.from_client);
        let ports: Vec<u16> = (43_000..43_300).collect();
        let first = hop_lists(datapath, vip, &ports, false);
        assert!(
            first.iter().all(|h| h.len() == 1),
            "no change yet: one hop each"
        );
        add_backend(datapath, vip, JOINERS_V4[0]);
        let second = hop_lists(datapath, vip, &ports, false);
        add_backend(datapath, vip, JOINERS_V4[1]);
        let third = hop_lists(datapath, vip, &ports, false);
        let (mut moved_once, mut moved_twice) = (0, 0);
        for (i, port) in ports.iter().enumerate() {
            let (t0, t1, t2) = (first[i][0], second[i][0], third[i][0]);
            let mut want = vec![t1];
            if t0 != t1 {
                want.push(t0);
                moved_once += 1;
            }
            assert_eq!(second[i], want, "port {port} after one change");
            let mut want = vec![t2];
            for earlier in [t1, t0] {
                if !want.contains(&earlier) {
                    want.push(earlier);
                }
            }
            if want.len() == 3 {
                moved_twice += 1;
            }
            assert_eq!(third[i], want, "port {port} after two changes");
        }
        assert!(moved_once > 0, "no flow moved to the third backend");
        assert!(moved_twice > 0, "no flow moved in both changes");
    });
}

/// A tracked flow goes to its tracked backend, with the table's new choice after it: the
/// backend it was tracked to keeps it, and a node that lost the entry would send it the
/// other way round.
#[test]
fn a_tracked_flow_lists_its_backend_first_and_the_tables_choice_next() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.set_backend_neighbour(JOINERS_V4[0], JOINER_MACS[0]);
    lab.with_datapath_loaded(limits(), &dsr_options(), |datapath, ids| {
        let vip = ip("198.18.1.33");
        add_gue_vip(datapath, vip, &BACKENDS_V4.map(ip));
        datapath.set_ingress(ids.from_client);
        let ports: Vec<u16> = (44_000..44_200).collect();
        let tracked = hop_lists(datapath, vip, &ports, true);
        add_backend(datapath, vip, JOINERS_V4[0]);
        let after = hop_lists(datapath, vip, &ports, false);
        let joiner = ip(JOINERS_V4[0]);
        let mut moved = 0;
        for (i, port) in ports.iter().enumerate() {
            let own = tracked[i][0];
            assert_eq!(after[i][0], own, "port {port}: its tracked backend first");
            assert!(after[i].len() <= 2, "port {port}: {:?}", after[i]);
            if after[i].len() == 2 {
                // The table's choice now (the joiner, or another backend Maglev moved the
                // slot to).
                assert_ne!(after[i][1], own, "port {port}");
                moved += usize::from(after[i][1] == joiner);
            }
        }
        assert!(moved > 0, "no tracked flow's slot moved to the joiner");
    });
}
