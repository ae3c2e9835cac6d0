//! Golden packets for the flow cache (the established fast path): a proven flow's packets
//! (NAT, dsr-ipip, dsr-l2) are sent from the per-CPU cache exactly as the slow path sends
//! them, and
//! nothing the slow path would decide otherwise takes it: lifecycle flags, frames for
//! another MAC or with a VLAN tag, a deleted backend, unproven flows. The real program
//! under BPF_PROG_TEST_RUN in a FibLab; forwarded packets are re-parsed and checked.

use std::net::{IpAddr, SocketAddr};

use lb_common::{
    consts::{XDP_PASS, XDP_REDIRECT},
    flow::PROVEN_AFTER_PACKETS,
    stats::Stat,
};
use lb_tests::{
    fiblab::{FibLab, add_dsr_vip, dsr_options},
    packets::{Family, LB_MAC, Spec, Transport},
    testrun::Datapath,
    verify::verify,
};
use lb_userspace::model::{
    limits::Limits,
    mode::Mode,
    state::{Change, Proto, Service},
};

const CLIENT: &str = "198.18.0.1";
const VIP: &str = "198.18.1.1";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// A bare ACK of a connection lb has not seen open (proven after a few packets).
fn ack(port: u16) -> Spec {
    Spec::new(Family::V4, Transport::Tcp)
        .between(ip(CLIENT), ip(VIP))
        .ports(port, 80)
        .ack()
}

/// Sends `frame` until its flow is proven and the slow path has filled its slot: the
/// packet that promotes it is unproven when looked up, the next one fills.
fn prove_and_fill(datapath: &mut Datapath, frame: &[u8]) {
    for _ in 0..=PROVEN_AFTER_PACKETS {
        let (out, delta) = datapath.run_counted(frame);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::FlowCacheHit), 0, "unproven: slow path");
    }
}

#[test]
fn a_proven_nat_flow_is_sent_from_the_cache_as_the_slow_path_sends_it() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let frame = ack(43_000).build(b"cached");
        prove_and_fill(datapath, &frame);
        let (slow, _) = datapath.run_counted(&frame);
        for _ in 0..3 {
            let (fast, delta) = datapath.run_counted(&frame);
            assert_eq!(fast.action, XDP_REDIRECT, "{:?}", delta.moved());
            assert_eq!(delta.packets(Stat::FlowCacheHit), 1, "{:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardEstablished), 1);
            assert_eq!(delta.packets(Stat::Redirect), 1);
            assert_eq!(delta.packets(Stat::Tcp), 1, "protocols counted once");
            verify(&fast.packet);
            assert_eq!(
                fast.packet, slow.packet,
                "the same bytes as the slow path's"
            );
        }
        // A NAT datagram flow, proven once its backend answered and its client sent
        // again: the packet that proves it fills its slot's way, the next one hits.
        let udp = Spec::new(Family::V4, Transport::Udp)
            .between(ip(CLIENT), ip(VIP))
            .ports(43_001, 53)
            .build(b"datagram");
        let (out, _) = datapath.run_counted(&udp);
        let backend = verify(&out.packet).dst;
        datapath.set_ingress(ids.from_backends);
        let answer = Spec::new(Family::V4, Transport::Udp)
            .between(backend, ip(CLIENT))
            .ports(8080, 43_001)
            .build(b"answer");
        assert_eq!(datapath.run(&answer).action, XDP_REDIRECT, "the answer");
        datapath.set_ingress(ids.from_client);
        for _ in 0..2 {
            let (_, delta) = datapath.run_counted(&udp);
            assert_eq!(delta.packets(Stat::FlowCacheHit), 0, "{:?}", delta.moved());
        }
        let (out, delta) = datapath.run_counted(&udp);
        assert_eq!(delta.packets(Stat::FlowCacheHit), 1, "{:?}", delta.moved());
        assert_eq!(verify(&out.packet).dst, backend, "the flow's backend");
    });
}

#[test]
fn lifecycle_flags_other_macs_and_vlan_tags_never_take_the_cache() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        datapath
            .balancer
            .set_local_macs(&[(ids.from_client, LB_MAC)], &[ids.from_client])
            .expect("record the MAC");
        let frame = ack(43_100).build(&[]);
        prove_and_fill(datapath, &frame);
        let (_, delta) = datapath.run_counted(&frame);
        assert_eq!(delta.packets(Stat::FlowCacheHit), 1, "the flow is cached");

        // Another MAC: the kernel's, as on the slow path.
        let mut other_mac = frame.clone();
        other_mac[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        let (out, delta) = datapath.run_counted(&other_mac);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(delta.packets(Stat::PassOtherHost), 1, "{:?}", delta.moved());
        // A VLAN tag: the kernel's.
        let tagged = ack(43_100).with_vlan().build(&[]);
        let (out, delta) = datapath.run_counted(&tagged);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(
            delta.packets(Stat::PassVlanTagged),
            1,
            "{:?}",
            delta.moved()
        );
        // A FIN moves the lifecycle: the slow path (and the entry closes).
        let (out, delta) = datapath.run_counted(&ack(43_100).fin().build(&[]));
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(delta.packets(Stat::FlowCacheHit), 0, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::ForwardEstablished), 1);
        // A SYN reusing the port: balanced afresh by the slow path.
        let syn = Spec::new(Family::V4, Transport::Tcp)
            .between(ip(CLIENT), ip(VIP))
            .ports(43_100, 80)
            .build(&[]);
        let (_, delta) = datapath.run_counted(&syn);
        assert_eq!(delta.packets(Stat::FlowCacheHit), 0, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::ForwardNew), 1);
    });
}

#[test]
fn a_deleted_backend_stops_the_cache_at_once() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let frame = ack(43_200).build(&[]);
        prove_and_fill(datapath, &frame);
        let (out, delta) = datapath.run_counted(&frame);
        assert_eq!(delta.packets(Stat::FlowCacheHit), 1, "{:?}", delta.moved());
        let backend = verify(&out.packet).dst;
        datapath
            .balancer
            .apply(&Change::DelBackend {
                service: Service {
                    addr: SocketAddr::new(ip(VIP), 80),
                    proto: Proto::Tcp,
                },
                backend: SocketAddr::new(backend, 8080),
            })
            .expect("delete the flow's backend");
        let (out, delta) = datapath.run_counted(&frame);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::FlowCacheHit), 0, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::CtRebalanced), 1, "{:?}", delta.moved());
        assert_ne!(verify(&out.packet).dst, backend, "another backend");
    });
}

#[test]
fn a_proven_dsr_flow_is_sent_from_the_cache_as_lb_encap_sends_it() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    let options = dsr_options();
    // Room for two DSR VIPs (TCP and UDP each) beside the lab's.
    let limits = Limits {
        max_vips: 16,
        ..Datapath::TEST_LIMITS
    };
    lab.with_datapath_loaded(limits, &options, |datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let backends = [ip("198.18.2.2")];
        let cases = [
            ("198.18.1.21", Mode::DsrIpip, Stat::DsrIpipEncapsulated),
            ("198.18.1.22", Mode::DsrL2, Stat::DsrL2Forwarded),
        ];
        for (vip, mode, sent) in cases {
            add_dsr_vip(datapath, ip(vip), mode, &backends);
            let flow = |payload: &[u8]| {
                Spec::new(Family::V4, Transport::Tcp)
                    .between(ip(CLIENT), ip(vip))
                    .ports(43_300, 80)
                    .ack()
                    .build(payload)
            };
            let frame = flow(b"dsr");
            prove_and_fill(datapath, &frame);
            let (slow, _) = datapath.run_counted(&frame);
            for _ in 0..3 {
                let (fast, delta) = datapath.run_counted(&frame);
                assert_eq!(fast.action, XDP_REDIRECT, "{mode:?}: {:?}", delta.moved());
                assert_eq!(
                    delta.packets(Stat::FlowCacheHit),
                    1,
                    "{mode:?}: {:?}",
                    delta.moved()
                );
                assert_eq!(delta.packets(Stat::ForwardEstablished), 1);
                assert_eq!(delta.packets(sent), 1, "{mode:?}: {:?}", delta.moved());
                assert_eq!(
                    fast.packet, slow.packet,
                    "{mode:?}: the same bytes as lb_encap's"
                );
            }
            // Too big once encapsulated (the link's MTU is 1500): the slow path answers it,
            // as it would without the cache.
            let big = flow(&[0u8; 1450]);
            let (out, delta) = datapath.run_counted(&big);
            if mode == Mode::DsrIpip {
                assert_eq!(delta.packets(Stat::FlowCacheHit), 0, "{:?}", delta.moved());
                assert_eq!(
                    delta.packets(Stat::IcmpTooBigSent),
                    1,
                    "{:?}",
                    delta.moved()
                );
            } else {
                // Unencapsulated it fits: still the cache's.
                assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
                assert_eq!(delta.packets(Stat::FlowCacheHit), 1, "{:?}", delta.moved());
                assert_eq!(delta.packets(sent), 1, "{:?}", delta.moved());
            }
        }
    });
}
