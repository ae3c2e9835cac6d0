//! `lb capture`'s datapath side under BPF_PROG_TEST_RUN in a FibLab: `lb_capture` decides
//! every packet exactly as `lb` does, and its records hold the packet as received, as
//! sent, and what was decided; the filter keeps only what it names; drops are counted on
//! their VIP (VIP_DROPS).

use std::net::IpAddr;

use lb_common::{
    capture::{
        CAPTURE_CT_NONE, CAPTURE_CT_UNPROVEN, CAPTURE_NONE, CAPTURE_SNAPLEN_MAX, CaptureFilter,
    },
    consts::{FAMILY_V4, XDP_DROP, XDP_REDIRECT},
    flow::CT_OPENING,
    service::addr_from_v4,
    stats::{DROP_REASONS, Stat},
};
use lb_tests::{
    fiblab::{FibLab, Ids},
    packets::{Family, Spec, Transport},
    testrun::{CaptureRecord, Datapath},
    verify::verify,
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

const CLIENT: &str = "198.18.0.1";
const VIP: &str = "198.18.1.1";
/// The lab's VIP without backends: its SYNs are dropped (drop_no_backend).
const EMPTY_VIP: &str = "198.18.1.2";

/// Every packet kept, whole.
fn keep_all() -> CaptureFilter {
    CaptureFilter {
        sample: 1,
        snaplen: CAPTURE_SNAPLEN_MAX,
        ..CaptureFilter::default()
    }
}

/// A client's connection through the VIP and a backend's reply, a SYN to the VIP without
/// backends, a UDP datagram to the VIP's port 53 and a packet for no VIP, each with the
/// interface it arrives on.
fn traffic(ids: &Ids) -> Vec<(Vec<u8>, u32)> {
    let tcp = Spec::new(Family::V4, Transport::Tcp)
        .between(ip(CLIENT), ip(VIP))
        .ports(41_001, 80);
    let to_empty = Spec::new(Family::V4, Transport::Tcp)
        .between(ip(CLIENT), ip(EMPTY_VIP))
        .ports(41_002, 80)
        .build(&[]);
    let udp = Spec::new(Family::V4, Transport::Udp)
        .between(ip(CLIENT), ip(VIP))
        .ports(41_003, 53)
        .build(b"query");
    let other = Spec::new(Family::V4, Transport::Udp)
        .between(ip(CLIENT), ip("198.18.9.9"))
        .ports(41_004, 53)
        .build(b"not ours");
    vec![
        (tcp.build(&[]), ids.from_client),
        (tcp.ack().build(b"GET /"), ids.from_client),
        (to_empty, ids.from_client),
        (udp, ids.from_client),
        (other, ids.from_client),
    ]
}

/// Runs `packets` through program `name`: each verdict's action and bytes.
fn run_all(datapath: &mut Datapath, name: &str, packets: &[(Vec<u8>, u32)]) -> Vec<(u32, Vec<u8>)> {
    packets
        .iter()
        .map(|(packet, ingress)| {
            datapath.set_ingress(*ingress);
            let (verdict, _) = datapath.run_program(name, packet, 1);
            (verdict.action, verdict.packet)
        })
        .collect()
}

fn reason(record: &CaptureRecord) -> &'static str {
    Stat::ALL
        .get(record.header.reason as usize)
        .map_or("none", |stat| stat.name())
}

#[test]
fn lb_capture_decides_as_lb_does_and_records_each_packet_both_ways() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    let by_lb = lab.with_datapath(|datapath, ids| run_all(datapath, "lb", &traffic(ids)));
    let (packets, by_capture, records, counts, drops) = lab.with_datapath(|datapath, ids| {
        let packets = traffic(ids);
        datapath.start_capture(&keep_all());
        let decided = run_all(datapath, "lb_capture", &packets);
        let records = datapath.capture_records();
        let drops: Vec<(u32, u64)> = (0..Datapath::TEST_LIMITS.max_vips)
            .map(|id| {
                let by_reason = datapath.balancer.maps().vip_drops(id).expect("VIP_DROPS");
                (id, by_reason.iter().sum())
            })
            .filter(|(_, total)| *total > 0)
            .collect();
        (packets, decided, records, datapath.capture_counts(), drops)
    });
    assert_eq!(
        by_capture, by_lb,
        "lb_capture must decide and rewrite as lb does"
    );
    assert_eq!(records.len(), packets.len(), "one record per packet");
    assert_eq!((counts.matched, counts.written, counts.lost), (5, 5, 0));
    for ((record, (packet, ingress)), (action, out)) in records.iter().zip(&packets).zip(&by_lb) {
        let header = &record.header;
        assert_eq!(&record.received, packet, "received as it came in");
        assert_eq!(header.received_len as usize, packet.len());
        assert_eq!(header.ifindex, *ingress);
        assert_eq!(header.action, *action);
        if *action == XDP_DROP {
            assert!(record.sent.is_empty() && header.sent_len == 0, "{header:?}");
        } else {
            // Sent on, or passed to the kernel (as it left lb, changed or not).
            assert_eq!(&record.sent, out, "sent as it went out");
            assert_eq!(header.sent_len as usize, out.len());
        }
    }
    let [syn, ack, dropped, udp, other] = &records[..] else {
        unreachable!("five records, checked above");
    };
    assert_eq!(syn.header.action, XDP_REDIRECT);
    assert_eq!(reason(syn), "fwd_new_flow");
    assert_eq!(
        (syn.header.ct_table, syn.header.ct_state),
        (CAPTURE_CT_UNPROVEN, CT_OPENING),
        "a SYN's flow is tracked as unproven"
    );
    let backend = verify(&by_lb[0].1).dst;
    assert!(
        [ip("198.18.2.2"), ip("198.18.2.3")].contains(&backend),
        "to a backend: {backend}"
    );
    assert_eq!(reason(ack), "fwd_established");
    assert_eq!(ack.header.backend_id, syn.header.backend_id);
    assert_eq!(ack.header.vip_id, syn.header.vip_id);
    assert_ne!(syn.header.backend_id, CAPTURE_NONE);
    assert_eq!(dropped.header.action, XDP_DROP);
    assert_eq!(
        reason(dropped),
        Stat::DropNoBackend.name(),
        "a drop says why"
    );
    assert_eq!(dropped.header.ct_table, CAPTURE_CT_NONE);
    assert_ne!(dropped.header.vip_id, syn.header.vip_id, "another VIP");
    assert_ne!(
        udp.header.vip_id, syn.header.vip_id,
        "udp/53 is its own VIP"
    );
    assert_eq!(other.header.vip_id, CAPTURE_NONE, "no VIP's: {other:?}");
    assert_eq!(reason(other), "pass_not_vip");
    // The drop counted on its VIP, under its reason, and nothing else on any VIP.
    assert_eq!(drops, vec![(dropped.header.vip_id, 1)]);
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        datapath.run(&packets[2].0);
        let vip = dropped.header.vip_id;
        let by_reason = datapath.balancer.maps().vip_drops(vip).expect("VIP_DROPS");
        let slot = Stat::DropNoBackend.drop_slot() as usize;
        assert_eq!(DROP_REASONS[slot], Stat::DropNoBackend);
        assert_eq!(by_reason[slot], 1, "counted by lb too, under its reason");
    });
}

#[test]
fn the_filter_keeps_only_what_it_names() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    let kept = |filter: CaptureFilter| {
        lab.with_datapath(|datapath, ids| {
            datapath.start_capture(&filter);
            run_all(datapath, "lb_capture", &traffic(ids));
            datapath
                .capture_records()
                .iter()
                .map(|record| reason(record))
                .collect::<Vec<_>>()
        })
    };
    let vip = CaptureFilter {
        vip: addr_from_v4([198, 18, 1, 1]),
        vip_port: 80,
        vip_family: FAMILY_V4,
        ..keep_all()
    };
    assert_eq!(
        kept(vip),
        ["fwd_new_flow", "fwd_established"],
        "the VIP's port 80 only"
    );
    let drops = CaptureFilter {
        drops_only: 1,
        ..keep_all()
    };
    assert_eq!(kept(drops), [Stat::DropNoBackend.name()]);
    let backend = CaptureFilter {
        backend: addr_from_v4([198, 18, 2, 9]),
        backend_port: 8080,
        backend_family: FAMILY_V4,
        ..keep_all()
    };
    assert!(kept(backend).is_empty(), "a backend none of them went to");
    let mut client = CaptureFilter {
        client: addr_from_v4([198, 18, 0, 0]),
        client_family: FAMILY_V4,
        ..keep_all()
    };
    client.client_mask[..2].copy_from_slice(&[255, 255]);
    // Four: the packet for no VIP has no client of a VIP (lb reads no further than its
    // addresses' classes).
    assert_eq!(
        kept(client),
        [
            "fwd_new_flow",
            "fwd_established",
            "drop_no_backend",
            "fwd_new_flow"
        ],
        "198.18.0.0/16 holds the client"
    );
    client.client = addr_from_v4([198, 19, 0, 0]);
    assert!(kept(client).is_empty(), "198.19.0.0/16 does not");
}

#[test]
fn sampling_keeps_one_in_n_and_snaplen_cuts_each_copy() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let flow = Spec::new(Family::V4, Transport::Udp)
            .between(ip(CLIENT), ip(VIP))
            .ports(41_010, 53);
        let datagram = flow.build(&[0x5a; 200]);
        datapath.start_capture(&CaptureFilter {
            sample: 3,
            snaplen: 64,
            ..keep_all()
        });
        for _ in 0..30 {
            datapath.run_program("lb_capture", &datagram, 1);
        }
        let records = datapath.capture_records();
        // One CPU (the lab's thread stays on one): exactly every third.
        assert_eq!(records.len(), 10);
        let counts = datapath.capture_counts();
        assert_eq!((counts.matched, counts.written), (30, 10));
        for record in &records {
            assert_eq!(record.received.len(), 64);
            assert_eq!(record.received[..], datagram[..64]);
            assert_eq!(record.header.received_len as usize, datagram.len());
            assert_eq!(record.sent.len(), 64, "{:?}", record.header);
            assert!(record.header.sent_len as usize >= datagram.len());
        }
    });
}

#[test]
fn a_full_ring_counts_the_records_it_had_no_room_for() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let datagram = Spec::new(Family::V4, Transport::Udp)
            .between(ip(CLIENT), ip(VIP))
            .ports(41_020, 53)
            .build(&[0x5a; 1400]);
        datapath.start_capture(&keep_all());
        // About 2.9 KB a record (both copies whole): a 4 MiB ring holds some 1,400.
        let sent = 2_000;
        for _ in 0..sent {
            datapath.run_program("lb_capture", &datagram, 1);
        }
        let counts = datapath.capture_counts();
        let records = datapath.capture_records();
        assert_eq!(counts.matched, sent);
        assert_eq!(counts.written, records.len() as u64);
        assert!(counts.lost > 0, "the ring was full: {counts:?}");
        assert_eq!(counts.written + counts.lost, sent, "{counts:?}");
        // With room again, records are written again.
        datapath.run_program("lb_capture", &datagram, 1);
        assert_eq!(datapath.capture_records().len(), 1);
    });
}
