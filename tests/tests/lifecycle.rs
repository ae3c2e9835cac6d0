//! Golden packets for the flow lifecycle: one conntrack entry per flow, the reply rule,
//! TCP states, idle expiry, down backends losing their flows, packets from backends that
//! must not leak their address. The real program under BPF_PROG_TEST_RUN in a FibLab;
//! every forwarded packet is re-parsed and its checksums recomputed.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    consts::{IPPROTO_TCP, IPPROTO_UDP, XDP_DROP, XDP_PASS, XDP_REDIRECT},
    flow::{
        CT_CLOSED, CT_CLOSING, CT_DATAGRAM, CT_ESTABLISHED, CT_FLAG_FIN_BACKEND,
        CT_FLAG_FIN_CLIENT, CT_OPENING, Conn, FlowKey,
    },
    stats::Stat,
};
use lb_tests::{
    fiblab::FibLab,
    packets::{Family, Spec, Transport},
    testrun::Datapath,
    testrun::flow_key as key,
    verify::verify,
};
use lb_userspace::model::state::{Proto, Service};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

const CLIENT: &str = "198.18.0.1";
const VIP: &str = "198.18.1.1";

fn entry(datapath: &Datapath, flow: &FlowKey) -> Option<Conn> {
    datapath
        .balancer
        .maps()
        .conntrack_entry(flow)
        .expect("read conntrack")
}

#[test]
fn a_reply_is_translated_after_its_entry_is_gone_but_another_port_is_not() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        for (family, client, vip) in [
            (Family::V4, ip(CLIENT), ip(VIP)),
            (Family::V6, ip("fd00::1"), ip("fd00:1::1")),
        ] {
            datapath.set_ingress(ids.from_client);
            let syn = Spec::new(family, Transport::Tcp)
                .between(client, vip)
                .ports(41_001, 80);
            let first = datapath.run(&syn.build(&[]));
            assert_eq!(first.action, XDP_REDIRECT);
            let backend = verify(&first.packet).dst;
            let flow = key(client, 41_001, vip, 80, IPPROTO_TCP);
            assert!(entry(datapath, &flow).is_some(), "{family:?}: tracked");
            datapath
                .balancer
                .maps_mut()
                .remove_conntrack_entry(&flow)
                .expect("remove the entry");

            datapath.set_ingress(ids.from_backends);
            let reply = Spec::new(family, Transport::Tcp)
                .between(backend, client)
                .ports(8080, 41_001)
                .ack()
                .build(b"late reply");
            let (out, delta) = datapath.run_counted(&reply);
            assert_eq!(out.action, XDP_REDIRECT, "{family:?}: {:?}", delta.moved());
            assert_eq!(delta.packets(Stat::ForwardReply), 1);
            let wire = verify(&out.packet);
            assert_eq!(
                (wire.src, wire.src_port),
                (vip, 80),
                "{family:?}: from the VIP"
            );
            assert!(entry(datapath, &flow).is_none(), "a reply creates no entry");

            // The same backend address on a port no VIP uses: not a reply, untouched.
            let ssh = Spec::new(family, Transport::Tcp)
                .between(backend, client)
                .ports(22, 41_001)
                .ack()
                .build(b"ssh");
            let (out, delta) = datapath.run_counted(&ssh);
            assert_eq!(out.action, XDP_PASS);
            assert_eq!(delta.packets(Stat::PassNotVip), 1, "{:?}", delta.moved());
            assert_eq!(out.packet, ssh, "{family:?}: byte for byte");
        }
    });
}

#[test]
fn a_rst_creates_no_entry() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let rst = Spec::new(Family::V4, Transport::Tcp)
            .between(ip(CLIENT), ip(VIP))
            .ports(41_002, 80)
            .rst()
            .build(&[]);
        let (out, delta) = datapath.run_counted(&rst);
        assert_eq!(out.action, XDP_REDIRECT, "forwarded: {:?}", delta.moved());
        assert_eq!(delta.packets(Stat::CtRstUntracked), 1);
        assert_eq!(delta.packets(Stat::CtCreated), 0);
        let flow = key(ip(CLIENT), 41_002, ip(VIP), 80, IPPROTO_TCP);
        assert!(entry(datapath, &flow).is_none());
    });
}

#[test]
fn a_connection_opens_and_fins_in_both_directions_close_it() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        let request = Spec::new(Family::V4, Transport::Tcp)
            .between(ip(CLIENT), ip(VIP))
            .ports(41_003, 80);
        let flow = key(ip(CLIENT), 41_003, ip(VIP), 80, IPPROTO_TCP);
        // The state and the FIN bits (admission's bits are tests/admission.rs's).
        let state = |datapath: &Datapath| {
            entry(datapath, &flow).map(|c| {
                (
                    c.state,
                    c.flags & (CT_FLAG_FIN_CLIENT | CT_FLAG_FIN_BACKEND),
                )
            })
        };

        datapath.set_ingress(ids.from_client);
        let backend = verify(&datapath.run(&request.build(&[])).packet).dst;
        assert_eq!(state(datapath), Some((CT_OPENING, 0)), "after the SYN");
        datapath.run(&request.ack().build(&[]));
        assert_eq!(state(datapath), Some((CT_ESTABLISHED, 0)), "after the ACK");
        datapath.run(&request.fin().build(&[]));
        assert_eq!(
            state(datapath).map(|s| s.0),
            Some(CT_CLOSING),
            "after the client's FIN"
        );

        datapath.set_ingress(ids.from_backends);
        let fin_back = Spec::new(Family::V4, Transport::Tcp)
            .between(backend, ip(CLIENT))
            .ports(8080, 41_003)
            .fin()
            .build(&[]);
        let out = datapath.run(&fin_back);
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(verify(&out.packet).src, ip(VIP));
        assert_eq!(
            state(datapath).map(|s| s.0),
            Some(CT_CLOSED),
            "after both FINs"
        );
    });
}

#[test]
fn an_idle_udp_entry_expires_and_is_replaced() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let query = Spec::new(Family::V4, Transport::Udp)
            .between(ip(CLIENT), ip(VIP))
            .ports(41_004, 53)
            .build(b"q");
        datapath.run(&query);
        let flow = key(ip(CLIENT), 41_004, ip(VIP), 53, IPPROTO_UDP);
        let fresh = entry(datapath, &flow).expect("tracked");
        assert_eq!(fresh.state, CT_DATAGRAM);

        // Idle for the UDP timeout and a second more.
        let idle_ns = (lb_common::flow::Timeout::Udp.default_secs() + 1) * 1_000_000_000;
        let aged = Conn {
            last_seen_ns: fresh.last_seen_ns.saturating_sub(idle_ns),
            ..fresh
        };
        datapath
            .balancer
            .maps_mut()
            .set_conntrack_entry(&flow, &aged)
            .expect("age the entry");
        let (out, delta) = datapath.run_counted(&query);
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(delta.packets(Stat::CtExpired), 1, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::ForwardNew), 1);
        let renewed = entry(datapath, &flow).expect("tracked again");
        assert!(renewed.last_seen_ns > aged.last_seen_ns);
    });
}

#[test]
fn a_down_backend_loses_its_flows_and_a_stale_generation_is_not_followed() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let datagram = Spec::new(Family::V4, Transport::Udp)
            .between(ip(CLIENT), ip(VIP))
            .ports(41_005, 53)
            .build(b"statsd");
        let first = verify(&datapath.run(&datagram).packet).dst;
        let service = Service {
            addr: SocketAddr::new(ip(VIP), 53),
            proto: Proto::Udp,
        };
        let down = BTreeSet::from([(service, SocketAddr::new(first, 8080))]);
        datapath.balancer.set_down(down).expect("mark down");
        let (out, delta) = datapath.run_counted(&datagram);
        assert_eq!(delta.packets(Stat::CtRebalanced), 1, "{:?}", delta.moved());
        let second = verify(&out.packet).dst;
        assert_ne!(second, first, "moved off the down backend at once");

        // An entry whose generation no longer matches its backend id is not followed.
        let flow = key(ip(CLIENT), 41_005, ip(VIP), 53, IPPROTO_UDP);
        let tracked = entry(datapath, &flow).expect("tracked");
        let stale = Conn {
            generation: tracked.generation.wrapping_add(1000),
            ..tracked
        };
        datapath
            .balancer
            .maps_mut()
            .set_conntrack_entry(&flow, &stale)
            .expect("write a stale entry");
        let (_, delta) = datapath.run_counted(&datagram);
        assert_eq!(delta.packets(Stat::CtRebalanced), 1, "{:?}", delta.moved());
        let fixed = entry(datapath, &flow).expect("tracked");
        assert_eq!(fixed.generation, tracked.generation, "re-pinned afresh");
    });
}

/// Established traffic is matched by its conntrack entry before any VIP lookup: a flow of
/// a deleted VIP must stop there (its backends are retired with it), and once no VIP is
/// left on the address its bucket is cleared, so the packet costs no lookup at all.
#[test]
fn a_tracked_flow_of_a_deleted_vip_is_no_longer_forwarded() {
    lb_tests::require_root!();
    use lb_userspace::model::state::Change;
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let flow = Spec::new(Family::V4, Transport::Tcp)
            .between(ip(CLIENT), ip(VIP))
            .ports(41_007, 80);
        datapath.run(&flow.build(&[]));
        let (_, delta) = datapath.run_counted(&flow.ack().build(b"x"));
        assert_eq!(
            delta.packets(Stat::ForwardEstablished),
            1,
            "{:?}",
            delta.moved()
        );
        let tcp = Service {
            addr: SocketAddr::new(ip(VIP), 80),
            proto: Proto::Tcp,
        };
        datapath
            .balancer
            .apply(&Change::DelVip(tcp))
            .expect("delete the TCP VIP");
        let flow_key = key(ip(CLIENT), 41_007, ip(VIP), 80, IPPROTO_TCP);
        assert!(
            entry(datapath, &flow_key).is_some(),
            "the entry outlives its VIP"
        );
        // The UDP VIP still has the address: the entry is found, its backend is retired,
        // the VIP lookup misses.
        let (out, delta) = datapath.run_counted(&flow.ack().build(b"y"));
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(
            delta.packets(Stat::PassVipOtherPort),
            1,
            "{:?}",
            delta.moved()
        );
        // No VIP left on the address: its bucket is clear.
        let udp = Service {
            addr: SocketAddr::new(ip(VIP), 53),
            proto: Proto::Udp,
        };
        datapath
            .balancer
            .apply(&Change::DelVip(udp))
            .expect("delete the UDP VIP");
        let (out, delta) = datapath.run_counted(&flow.ack().build(b"z"));
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(delta.packets(Stat::PassNotVip), 1, "{:?}", delta.moved());
        // Added back: balanced again (its bucket is set before the VIP entry is written).
        datapath
            .balancer
            .apply(&Change::AddVip(tcp))
            .expect("add the TCP VIP back");
        datapath
            .balancer
            .apply(&Change::AddBackend {
                server_id: None,
                service: tcp,
                backend: SocketAddr::new(ip("198.18.2.2"), 8080),
                weight: 1,
            })
            .expect("add a backend");
        let (out, delta) = datapath.run_counted(&flow.ack().build(b"w"));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
        assert_eq!(verify(&out.packet).dst, ip("198.18.2.2"));
    });
}

#[test]
fn a_later_fragment_from_a_backend_without_its_first_never_leaves_with_its_address() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.with_datapath(|datapath, ids| {
        datapath.set_ingress(ids.from_backends);
        let mut fragment = Spec::new(Family::V4, Transport::Udp)
            .between(ip("198.18.2.2"), ip(CLIENT))
            .ports(8080, 41_006)
            .build(&[0u8; 64]);
        // More fragments, offset 64 bytes (a later fragment whose first was never seen:
        // no ports, so no way to tell which VIP it would leave from), and the IPv4 header
        // checksum made right again.
        let ip_at = 14;
        fragment[ip_at + 6] = 0x20;
        fragment[ip_at + 7] = 8;
        fragment[ip_at + 10] = 0;
        fragment[ip_at + 11] = 0;
        let sum = (0..20)
            .step_by(2)
            .map(|i| {
                u32::from(u16::from_be_bytes([
                    fragment[ip_at + i],
                    fragment[ip_at + i + 1],
                ]))
            })
            .sum::<u32>();
        let folded = (sum & 0xffff) + (sum >> 16);
        let check = !((folded & 0xffff) + (folded >> 16)) as u16;
        fragment[ip_at + 10..ip_at + 12].copy_from_slice(&check.to_be_bytes());
        let (out, delta) = datapath.run_counted(&fragment);
        assert_eq!(out.action, XDP_DROP, "{:?}", delta.moved());
        assert_eq!(delta.packets(Stat::DropFragmentNoFirst), 1);
    });
}
