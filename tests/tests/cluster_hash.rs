//! The same choice on every lb node, with the real program: datapaths loaded apart (as on
//! three nodes) with the same backends and `--hash-seed` send every untracked flow to the
//! same backend, whatever order the backends were added in and whatever ids they got; a
//! node with another seed sends most flows elsewhere. The packets are mid-flow ACKs that no
//! node has tracked: what a node sees after ECMP moved a connection to it.

use std::net::{IpAddr, SocketAddr};

use etherparse::Ipv4HeaderSlice;
use lb_common::consts::XDP_REDIRECT;
use lb_tests::{
    fiblab::{FibLab, dsr_options},
    packets::{Family, Spec, Transport},
    testrun::Datapath,
};
use lb_userspace::model::{
    cluster::Seed,
    limits::{Limits, Options},
    mode::Mode,
    state::{Change, Proto, Service},
};

const VIP: &str = "198.18.1.30";
const CLIENT: &str = "198.18.0.1";
const FLOWS: u16 = 400;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn service() -> Service {
    Service {
        addr: SocketAddr::new(ip(VIP), 80),
        proto: Proto::Tcp,
    }
}

/// Eight routed backends (behind the lab's first backend), so a flow has 8 places to go.
fn backends() -> Vec<SocketAddr> {
    (1..=8)
        .map(|i| SocketAddr::new(ip(&format!("198.18.60.{i}")), 80))
        .collect()
}

/// One node: a datapath with `seed`, the VIP's backends added in `order` after a backend
/// that came and went (so ids differ between nodes); which backend each flow went to, and
/// the VIP's table fingerprint.
fn node(lab: &FibLab, seed: &str, order: &[SocketAddr]) -> (Vec<IpAddr>, u64) {
    let options = Options {
        hash_seed: seed.parse::<Seed>().expect("seed").words(),
        ..dsr_options()
    };
    let limits = Limits {
        max_vips: 16,
        ..Datapath::TEST_LIMITS
    };
    lab.with_datapath_loaded(limits, &options, |datapath, ids| {
        datapath.set_ingress(ids.from_client);
        let service = service();
        let passing = SocketAddr::new(ip("198.18.60.99"), 80);
        let mut changes = vec![
            Change::AddVip(service),
            Change::SetMode {
                service,
                mode: Mode::DsrIpip,
            },
            Change::AddBackend {
                server_id: None,
                service,
                backend: passing,
                weight: 100,
            },
            Change::DelBackend {
                service,
                backend: passing,
            },
        ];
        changes.extend(order.iter().map(|backend| Change::AddBackend {
            server_id: None,
            service,
            backend: *backend,
            weight: 100,
        }));
        for change in &changes {
            datapath
                .balancer
                .apply(change)
                .expect("the VIP and its backends");
        }
        let chosen = (0..FLOWS)
            .map(|i| {
                let packet = Spec::new(Family::V4, Transport::Tcp)
                    .between(ip(CLIENT), ip(VIP))
                    .ports(30_000 + i, 80)
                    .ack()
                    .build(b"mid-flow");
                let verdict = datapath.run(&packet);
                assert_eq!(verdict.action, XDP_REDIRECT, "flow {i} was not sent on");
                let outer = Ipv4HeaderSlice::from_slice(&verdict.packet[14..])
                    .expect("an encapsulated packet");
                IpAddr::V4(outer.destination_addr())
            })
            .collect();
        let fingerprint = datapath
            .balancer
            .fingerprint(&service)
            .expect("the VIP has a table");
        (chosen, fingerprint)
    })
}

#[test]
fn nodes_with_one_seed_pick_one_backend_per_flow_and_show_one_fingerprint() {
    lb_tests::require_root!();
    let lab = FibLab::new();
    lab.route_via_backend("198.18.60.0/24", "198.18.2.2");
    let forward = backends();
    let mut reverse = forward.clone();
    reverse.reverse();
    let seed = "5eed0123456789ab";
    let (a, print_a) = node(&lab, seed, &forward);
    let (b, print_b) = node(&lab, seed, &reverse);
    let (c, print_c) = node(&lab, "0000000000000001", &forward);

    let used: std::collections::BTreeSet<_> = a.iter().collect();
    assert!(used.len() >= 6, "{FLOWS} flows reached only {used:?}");
    let disagree = |x: &[IpAddr], y: &[IpAddr]| x.iter().zip(y).filter(|(p, q)| p != q).count();
    assert_eq!(disagree(&a, &b), 0, "two nodes with one seed split flows");
    assert_eq!(
        print_a, print_b,
        "the same table must show the same fingerprint"
    );
    // Another seed is another table and another flow hash: about 7 flows in 8 move.
    let moved = disagree(&a, &c);
    assert!(
        moved > usize::from(FLOWS) / 2,
        "another seed moved only {moved} of {FLOWS} flows"
    );
    assert_ne!(
        print_a, print_c,
        "another seed must show another fingerprint"
    );
}
