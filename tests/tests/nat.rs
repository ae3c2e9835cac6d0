//! Golden packets for cluster-IP load balancing: the real program under BPF_PROG_TEST_RUN,
//! run inside a namespace whose routes and (permanent) neighbours `bpf_fib_lookup` reads.
//! Every forwarded packet is re-parsed and its checksums recomputed from scratch.

use std::net::{IpAddr, SocketAddr};

use lb_common::{
    consts::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    stats::Stat,
};
use lb_tests::{
    fiblab::{BACKEND_MACS, CLIENT_MAC, FibLab},
    packets::{Family, Spec, Transport},
    testrun::Datapath,
    verify::verify,
};
use lb_userspace::{
    datapath::conntrack,
    model::state::{Proto, Service},
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn sock(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

fn client_and_vip(family: Family) -> (IpAddr, IpAddr) {
    match family {
        Family::V6 => (ip("fd00::1"), ip("fd00:1::1")),
        _ => (ip("198.18.0.1"), ip("198.18.1.1")),
    }
}

fn vip_port(transport: Transport) -> u16 {
    match transport {
        Transport::Tcp => 80,
        Transport::Udp => 53,
    }
}

#[test]
fn new_established_and_reply_packets_are_translated_with_valid_checksums() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        for (family, client_port) in [
            (Family::V4, 40_001),
            (Family::V4Options, 40_002),
            (Family::V6, 40_003),
        ] {
            for transport in [Transport::Tcp, Transport::Udp] {
                let (client, vip) = client_and_vip(family);
                let port = vip_port(transport);
                let request = Spec::new(family, transport)
                    .between(client, vip)
                    .ports(client_port, port);
                let case = format!("{family:?}/{transport:?}");

                // New flow: DNAT to a backend, routed out of the backend side.
                datapath.set_ingress(ids.from_client);
                let (first, delta) =
                    datapath.run_counted(&request.build(b"GET / HTTP/1.0\r\n\r\n"));
                assert_eq!(first.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
                assert_eq!(delta.packets(Stat::ForwardNew), 1, "{case}");
                let out = verify(&first.packet);
                let backend = out.dst;
                assert!(
                    ["198.18.2.2", "198.18.2.3", "fd00:2::2", "fd00:2::3"]
                        .map(ip)
                        .contains(&backend),
                    "{case}: went to {backend}"
                );
                assert_eq!(
                    (out.src, out.src_port),
                    (client, client_port),
                    "{case}: client kept"
                );
                assert_eq!(out.dst_port, 8080, "{case}");
                assert_eq!(out.ttl, 63, "{case}: one hop");
                assert_eq!(out.src_mac, ids.backend_side_mac, "{case}");
                assert!(BACKEND_MACS.contains(&out.dst_mac), "{case}");
                assert_eq!(out.payload, b"GET / HTTP/1.0\r\n\r\n", "{case}");

                // Established: same backend, from conntrack.
                let (again, delta) = datapath.run_counted(&request.ack().build(b"more"));
                assert_eq!(again.action, XDP_REDIRECT, "{case}");
                assert_eq!(
                    delta.packets(Stat::ForwardEstablished),
                    1,
                    "{case}: {:?}",
                    delta.moved()
                );
                assert_eq!(verify(&again.packet).dst, backend, "{case}: flow stays put");

                // Reply: SNAT back to the VIP, routed to the client.
                datapath.set_ingress(ids.from_backends);
                let reply = Spec::new(family, transport)
                    .between(backend, client)
                    .ports(8080, client_port)
                    .ack();
                let (back, delta) = datapath.run_counted(&reply.build(b"200 OK"));
                assert_eq!(back.action, XDP_REDIRECT, "{case}: {:?}", delta.moved());
                assert_eq!(delta.packets(Stat::ForwardReply), 1, "{case}");
                let out = verify(&back.packet);
                assert_eq!(
                    (out.src, out.src_port),
                    (vip, port),
                    "{case}: the client sees the VIP"
                );
                assert_eq!((out.dst, out.dst_port), (client, client_port), "{case}");
                assert_eq!(out.dst_mac, CLIENT_MAC, "{case}");
                assert_eq!(out.src_mac, ids.client_side_mac, "{case}");
                assert_eq!(out.payload, b"200 OK", "{case}");
            }
        }
    });
}

#[test]
fn ipv4_udp_without_checksum_stays_without_checksum() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let mut packet = Spec::new(Family::V4, Transport::Udp)
            .between(ip("198.18.0.1"), ip("198.18.1.1"))
            .ports(5000, 53)
            .build(b"query");
        let check_at = 14 + 20 + 6;
        packet[check_at..check_at + 2].copy_from_slice(&[0, 0]);
        let verdict = datapath.run(&packet);
        assert_eq!(verdict.action, XDP_REDIRECT);
        assert_eq!(&verdict.packet[check_at..check_at + 2], &[0, 0]);
        assert_eq!(verify(&verdict.packet).dst_port, 8080);
    });
}

#[test]
fn flows_spread_over_backends_and_a_conntrack_miss_lands_where_maglev_says() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    let first_choice: Vec<IpAddr> = lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        (0..200)
            .map(|i| {
                let syn = Spec::new(Family::V4, Transport::Tcp)
                    .between(ip("198.18.0.1"), ip("198.18.1.1"))
                    .ports(20_000 + i, 80);
                verify(&datapath.run(&syn.build(&[])).packet).dst
            })
            .collect()
    });
    let to_first = first_choice
        .iter()
        .filter(|b| **b == ip("198.18.2.2"))
        .count();
    assert!(
        (60..=140).contains(&to_first),
        "{to_first} of 200 flows went to one of two backends"
    );
    // A fresh datapath (as after a restart, or on another lb) has no conntrack: mid-flow
    // ACKs must still reach the backend the SYN reached.
    let second_choice: Vec<IpAddr> = lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        (0..200)
            .map(|i| {
                let ack = Spec::new(Family::V4, Transport::Tcp)
                    .between(ip("198.18.0.1"), ip("198.18.1.1"))
                    .ports(20_000 + i, 80)
                    .ack();
                verify(&datapath.run(&ack.build(b"x")).packet).dst
            })
            .collect()
    });
    assert_eq!(first_choice, second_choice);
}

#[test]
fn drained_backends_keep_tracked_flows_but_a_syn_on_a_reused_tuple_is_balanced_afresh() {
    lb_tests::require_root!();
    use lb_userspace::model::state::Change;
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let flow = Spec::new(Family::V4, Transport::Tcp)
            .between(ip("198.18.0.1"), ip("198.18.1.1"))
            .ports(41_000, 80);
        let first = verify(&datapath.run(&flow.build(&[])).packet).dst;
        let service = Service {
            addr: sock("198.18.1.1:80"),
            proto: Proto::Tcp,
        };
        datapath
            .balancer
            .apply(&Change::DrainBackend {
                service,
                backend: SocketAddr::new(first, 8080),
            })
            .expect("drain");

        // The tracked connection goes on to its draining backend.
        let (ack, delta) = datapath.run_counted(&flow.ack().build(b"x"));
        assert_eq!(delta.packets(Stat::ForwardEstablished), 1);
        assert_eq!(verify(&ack.packet).dst, first, "established flow kept");

        // The client reuses the port for a new connection: a SYN is a new flow.
        let (syn, delta) = datapath.run_counted(&flow.build(&[]));
        assert_eq!(delta.packets(Stat::ForwardNew), 1, "{:?}", delta.moved());
        let second = verify(&syn.packet).dst;
        assert_ne!(second, first, "no new connection to a draining backend");
        let (ack, _) = datapath.run_counted(&flow.ack().build(b"y"));
        assert_eq!(
            verify(&ack.packet).dst,
            second,
            "conntrack now follows the new connection"
        );
    });
}

/// The staleness bound of the next-hop slots (docs/ARCHITECTURE.md): a neighbour change
/// reaches established flows within `NEXTHOP_TTL_NS` (1 s), toward the backend (its own
/// slot) and toward the client (the destination-hashed slots).
#[test]
fn next_hops_are_cached_for_a_second_then_looked_up_again() {
    lb_tests::require_root!();
    const MOVED: [u8; 6] = [0x02, 0x18, 0, 0, 9, 9];
    const CLIENT_MOVED: [u8; 6] = [0x02, 0x18, 0, 0, 9, 8];
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        // The slots are per CPU: every run on the same one.
        Datapath::stay_on_one_cpu();
        datapath.set_ingress(ids.from_client);
        let flow = Spec::new(Family::V4, Transport::Tcp)
            .between(ip("198.18.0.1"), ip("198.18.1.1"))
            .ports(42_000, 80);
        let first = verify(&datapath.run(&flow.build(&[])).packet);
        let backend = first.dst;
        assert!(BACKEND_MACS.contains(&first.dst_mac));
        let reply = Spec::new(Family::V4, Transport::Tcp)
            .between(backend, ip("198.18.0.1"))
            .ports(8080, 42_000)
            .ack();
        let reply_at = |datapath: &mut Datapath, payload: &[u8]| {
            datapath.set_ingress(ids.from_backends);
            let sent = verify(&datapath.run(&reply.build(payload)).packet);
            datapath.set_ingress(ids.from_client);
            sent
        };
        assert_eq!(reply_at(datapath, b"a").dst_mac, CLIENT_MAC);
        lab.set_backend_neighbour(&backend.to_string(), MOVED);
        lab.set_client_neighbour("198.18.0.1", CLIENT_MOVED);
        let cached = verify(&datapath.run(&flow.ack().build(b"x")).packet);
        assert_eq!(
            cached.dst_mac, first.dst_mac,
            "within a second: the backend's slot"
        );
        assert_eq!(
            reply_at(datapath, b"b").dst_mac,
            CLIENT_MAC,
            "within a second: the client's slot"
        );
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let fresh = verify(&datapath.run(&flow.ack().build(b"y")).packet);
        assert_eq!(
            fresh.dst_mac, MOVED,
            "after a second: the backend's new MAC"
        );
        assert_eq!(
            reply_at(datapath, b"c").dst_mac,
            CLIENT_MOVED,
            "after a second: the client's new MAC"
        );
    });
}

#[test]
fn a_full_conntrack_table_evicts_the_stalest_flows_and_keeps_balancing() {
    lb_tests::require_root!();
    use lb_userspace::model::limits::Limits;
    const CAPACITY: u32 = 1024;
    const FLOWS: u16 = 4_000;
    let lab = FibLab::new();
    let limits = Limits {
        conntrack_capacity: CAPACITY,
        ..Datapath::TEST_LIMITS
    };
    lab.with_datapath_sized(limits, |datapath, ids| {
        // The LRU hands out free entries from per-CPU lists in batches of 128: a thread
        // that moves between CPUs mid-fill leaves older entries in another CPU's batch.
        Datapath::stay_on_one_cpu();
        datapath.set_ingress(ids.from_client);
        let flow = |port: u16| {
            Spec::new(Family::V4, Transport::Tcp)
                .between(ip("198.18.0.1"), ip("198.18.1.1"))
                .ports(port, 80)
        };
        let mut first = Vec::new();
        for n in 0..FLOWS {
            let (verdict, delta) = datapath.run_counted(&flow(10_000 + n).build(&[]));
            assert_eq!(
                delta.packets(Stat::ForwardNew),
                1,
                "flow {n} balanced: {:?}",
                delta.moved()
            );
            assert_eq!(delta.packets(Stat::CtCreated), 1, "flow {n} got an entry");
            first.push(verify(&verdict.packet).dst);
        }
        let entries = datapath.balancer.maps().conntrack_entries().expect("count");
        assert!(
            entries <= u64::from(CAPACITY),
            "{entries} entries in a {CAPACITY}-entry table"
        );
        // The eviction figure `lb stats` and /metrics report, from the datapath's counter.
        let created = datapath.stats().get(Stat::CtCreated).packets;
        assert_eq!(created, u64::from(FLOWS));
        let evicted = conntrack::evictions(created, entries, 0, 0);
        assert!(
            evicted >= u64::from(FLOWS - CAPACITY as u16),
            "{evicted} evicted"
        );
        // The most recent flows are still tracked and keep their backend.
        for n in FLOWS - 200..FLOWS {
            let (verdict, delta) = datapath.run_counted(&flow(10_000 + n).ack().build(b"x"));
            assert_eq!(
                delta.packets(Stat::ForwardEstablished),
                1,
                "recent flow {n} tracked"
            );
            assert_eq!(delta.packets(Stat::CtMissMidFlow), 0);
            assert_eq!(verify(&verdict.packet).dst, first[n as usize]);
        }
        // The oldest were evicted (the kernel's LRU is approximate: per-CPU free lists let a
        // few old entries outlive newer ones): an evicted flow's next segment is counted as
        // found untracked and balanced again, and Maglev sends it where it was.
        let mut old_evicted = 0;
        for n in 0..200 {
            let (verdict, delta) = datapath.run_counted(&flow(10_000 + n).ack().build(b"x"));
            let missed = delta.packets(Stat::CtMissMidFlow);
            assert_eq!(
                delta.packets(Stat::ForwardNew),
                missed,
                "old flow {n}: {:?}",
                delta.moved()
            );
            assert_eq!(delta.packets(Stat::ForwardEstablished), 1 - missed);
            assert_eq!(
                verify(&verdict.packet).dst,
                first[n as usize],
                "same backend"
            );
            old_evicted += missed;
        }
        assert!(
            old_evicted >= 180,
            "only {old_evicted} of the 200 oldest flows were evicted"
        );
        // A SYN reusing a tracked 5-tuple replaces its entry: not a creation, so not taken
        // for an eviction later.
        let (_, delta) = datapath.run_counted(&flow(10_000 + FLOWS - 1).build(&[]));
        assert_eq!(
            (
                delta.packets(Stat::CtReplaced),
                delta.packets(Stat::CtCreated)
            ),
            (1, 0)
        );
        eprintln!(
            "{FLOWS} flows through a {CAPACITY}-entry conntrack: {entries} tracked, {evicted} \
             evicted; {old_evicted} of the 200 oldest evicted"
        );
    });
}

#[test]
fn policies_for_what_cannot_be_balanced() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let to = |dst: &str, transport, port| {
            Spec::new(Family::V4, transport)
                .between(ip("198.18.0.1"), ip(dst))
                .ports(40_000, port)
        };
        // A later fragment (offset 128 bytes) whose first fragment was never seen.
        let mut fragment = to("198.18.1.1", Transport::Tcp, 80).build(b"part");
        fragment[14 + 6] |= 0x20; // more fragments
        fragment[14 + 7] = 0x10; // offset 16 × 8
        let fix_ip_checksum = |p: &mut Vec<u8>| {
            p[24..26].copy_from_slice(&[0, 0]);
            let sum = p[14..34]
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum::<u32>();
            let folded = (sum & 0xffff) + (sum >> 16);
            p[24..26].copy_from_slice(&(!(folded as u16)).to_be_bytes());
        };
        fix_ip_checksum(&mut fragment);
        let mut host_fragment = to("198.18.0.2", Transport::Tcp, 80).build(b"part");
        host_fragment[14 + 6] |= 0x20;
        fix_ip_checksum(&mut host_fragment);

        let mut v6_extension = Spec::new(Family::V6, Transport::Udp)
            .between(ip("fd00::1"), ip("fd00:1::1"))
            .ports(40_000, 53)
            .build(b"q");
        v6_extension[14 + 6] = 60; // next header: destination options
        let mut icmp_to_vip = to("198.18.1.1", Transport::Udp, 53).build(&[8, 0, 0, 0, 0, 0, 0, 0]);
        icmp_to_vip[14 + 9] = 1; // protocol: ICMP
        fix_ip_checksum(&mut icmp_to_vip);
        // ICMP fragments are not balanced: only TCP/UDP datagrams follow their first.
        let mut icmp_fragment = icmp_to_vip.clone();
        icmp_fragment[14 + 6] |= 0x20;
        fix_ip_checksum(&mut icmp_fragment);

        let untouched: [(&str, Vec<u8>, u32, Stat); 10] = [
            (
                "IPv6 extension header to a VIP address",
                v6_extension,
                XDP_DROP,
                Stat::DropIpv6ExtensionHeader,
            ),
            (
                "ICMP to a VIP address",
                icmp_to_vip,
                XDP_PASS,
                Stat::PassIcmpToVip,
            ),
            (
                "TTL 1 to a VIP",
                to("198.18.1.1", Transport::Tcp, 80).ttl(1).build(&[]),
                XDP_PASS,
                Stat::PassTtlExceeded,
            ),
            (
                "later fragment to a VIP address, its first never seen",
                fragment,
                XDP_DROP,
                Stat::DropFragmentNoFirst,
            ),
            (
                "ICMP fragment to a VIP address",
                icmp_fragment,
                XDP_DROP,
                Stat::DropFragment,
            ),
            (
                "fragment to the host",
                host_fragment,
                XDP_PASS,
                Stat::PassNotVip,
            ),
            (
                "VIP without backends",
                to("198.18.1.2", Transport::Tcp, 80).build(&[]),
                XDP_DROP,
                Stat::DropNoBackend,
            ),
            (
                "other port on a VIP address",
                to("198.18.1.1", Transport::Tcp, 81).build(&[]),
                XDP_PASS,
                Stat::PassVipOtherPort,
            ),
            (
                "other protocol on a VIP port",
                to("198.18.1.1", Transport::Udp, 80).build(&[]),
                XDP_PASS,
                Stat::PassVipOtherPort,
            ),
            (
                "reply from an address that is no tracked backend",
                Spec::new(Family::V4, Transport::Tcp)
                    .between(ip("198.18.2.7"), ip("198.18.0.1"))
                    .ports(8080, 40_000)
                    .ack()
                    .build(b"spoofed"),
                XDP_PASS,
                Stat::PassNotVip,
            ),
        ];
        for (case, packet, action, reason) in untouched {
            let (verdict, delta) = datapath.run_counted(&packet);
            assert_eq!(verdict.action, action, "{case}: {:?}", delta.moved());
            assert_eq!(verdict.packet, packet, "{case}: not rewritten");
            assert_eq!(delta.packets(reason), 1, "{case}: {:?}", delta.moved());
        }

        // An unresolved neighbour: rewritten, then handed to the kernel to resolve it.
        let packet = to("198.18.1.3", Transport::Tcp, 80).build(&[]);
        let (verdict, delta) = datapath.run_counted(&packet);
        assert_eq!(verdict.action, XDP_PASS);
        assert_eq!(
            delta.packets(Stat::PassNoNeighbour),
            1,
            "{:?}",
            delta.moved()
        );
        let out = verify(&verdict.packet);
        assert_eq!((out.dst, out.dst_port), (ip("198.18.2.9"), 8080));
    });
}

#[test]
fn invalid_services_are_refused_before_any_map_changes() {
    lb_tests::require_root!();
    use lb_userspace::{control::map_sync::MapSyncError::Invalid, model::state::ChangeError as E};
    let mut datapath = Datapath::load();
    let balancer = &mut datapath.balancer;
    let vip = Service {
        addr: sock("198.18.1.1:80"),
        proto: Proto::Tcp,
    };
    balancer.add_vip(vip).expect("first VIP");
    balancer
        .add_backend(vip, sock("198.18.2.2:8080"), 100)
        .expect("backend");
    let unknown = Service {
        addr: sock("198.18.1.9:80"),
        proto: Proto::Tcp,
    };
    let refused = [
        (
            "duplicate VIP",
            balancer
                .add_vip(vip)
                .map_err(|e| matches!(e, Invalid(E::DuplicateVip(_)))),
        ),
        (
            "VIP port 0",
            balancer
                .add_vip(Service {
                    addr: sock("198.18.1.5:0"),
                    proto: Proto::Udp,
                })
                .map_err(|e| matches!(e, Invalid(E::PortZero(_)))),
        ),
        (
            "loopback VIP",
            balancer
                .add_vip(Service {
                    addr: sock("127.0.0.1:80"),
                    proto: Proto::Tcp,
                })
                .map_err(|e| matches!(e, Invalid(E::UnusableAddress(_)))),
        ),
        (
            "duplicate backend",
            balancer
                .add_backend(vip, sock("198.18.2.2:8080"), 5)
                .map_err(|e| matches!(e, Invalid(E::DuplicateBackend { .. }))),
        ),
        (
            "IPv6 backend on an IPv4 VIP",
            balancer
                .add_backend(vip, sock("[fd00:2::2]:8080"), 5)
                .map_err(|e| matches!(e, Invalid(E::FamilyMismatch { .. }))),
        ),
        (
            "weight 0",
            balancer
                .add_backend(vip, sock("198.18.2.3:8080"), 0)
                .map_err(|e| matches!(e, Invalid(E::WeightOutOfRange(0)))),
        ),
        (
            "weight 65536",
            balancer
                .add_backend(vip, sock("198.18.2.3:8080"), 65_536)
                .map_err(|e| matches!(e, Invalid(E::WeightOutOfRange(65_536)))),
        ),
        (
            "unknown VIP",
            balancer
                .add_backend(unknown, sock("198.18.2.3:8080"), 5)
                .map_err(|e| matches!(e, Invalid(E::UnknownVip(_)))),
        ),
    ];
    for (case, result) in refused {
        assert_eq!(
            result,
            Err(true),
            "{case} must be refused with its own error"
        );
    }
    // The refusals left the VIP with its one backend: a SYN still selects it (and then fails
    // to route, since this datapath runs outside a lab namespace) instead of finding no
    // backend.
    let syn = Spec::new(Family::V4, Transport::Tcp)
        .between(ip("198.18.0.1"), ip("198.18.1.1"))
        .ports(40_000, 80)
        .build(&[]);
    let (_, delta) = datapath.run_counted(&syn);
    assert_eq!(
        delta.packets(Stat::ForwardNew),
        0,
        "no FIB here, so no forward: {:?}",
        delta.moved()
    );
    // Outside a namespace the FIB says forwarding is disabled on the (absent) ingress.
    assert_eq!(
        delta.packets(Stat::DropFibFailure) + delta.packets(Stat::DropForwardingDisabled),
        1,
        "selected a backend and tried to route: {:?}",
        delta.moved()
    );
}

/// What a sender that leaves its TCP checksum to the NIC (CHECKSUM_PARTIAL) writes in the
/// field: the folded sum of the pseudo-header, not complemented.
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, tcp_len: usize) -> u16 {
    let bytes = |addr: IpAddr| match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut words: Vec<u8> = bytes(src);
    words.extend(bytes(dst));
    let mut sum: u32 = words
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    sum += 6 + tcp_len as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn a_syn_whose_checksum_was_left_to_an_offload_is_counted() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        for (family, ip_header, client_port) in [(Family::V4, 20, 41_001), (Family::V6, 40, 41_002)]
        {
            let (client, vip) = client_and_vip(family);
            let syn = Spec::new(family, Transport::Tcp)
                .between(client, vip)
                .ports(client_port, 80)
                .build(b"");
            let (full, delta) = datapath.run_counted(&syn);
            assert_eq!(full.action, XDP_REDIRECT, "{family:?}");
            assert_eq!(
                delta.packets(Stat::SynChecksumPartial),
                0,
                "{family:?}: a full checksum"
            );
            let mut partial = syn.clone();
            let tcp = 14 + ip_header;
            let sum = pseudo_header_sum(client, vip, partial.len() - tcp);
            partial[tcp + 16..tcp + 18].copy_from_slice(&sum.to_be_bytes());
            let (forwarded, delta) = datapath.run_counted(&partial);
            assert_eq!(
                forwarded.action, XDP_REDIRECT,
                "{family:?}: forwarded all the same"
            );
            assert_eq!(
                delta.packets(Stat::SynChecksumPartial),
                1,
                "{family:?}: {:?}",
                delta.moved()
            );
        }
    });
}
