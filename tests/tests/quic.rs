//! Golden packets for QUIC VIPs (connection-ID routing, draft-ietf-quic-load-balancers,
//! plaintext configs): the real program under BPF_PROG_TEST_RUN in a FibLab, its VIP and
//! backends set by the daemon's own map writer. Connection IDs are made by the `quic-lb`
//! crate (the servers' side), so the datapath is checked against the encoder servers run.
//! Every forwarded packet is re-parsed and its checksums recomputed.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use lb_common::{consts::XDP_REDIRECT, stats::Stat};
use lb_tests::{
    fiblab::FibLab,
    packets::{Family, Spec, Transport},
    testrun::{CounterDelta, Datapath},
    verify::verify,
};
use lb_userspace::model::state::{Change, Proto, Service};
use quic_lb::{Config, ServerId};

const PORT: u16 = 443;
const BACKEND_PORT: u16 = 4433;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// The lab's client, VIP and two backends (their neighbours are pinned) of a family.
fn addresses(family: Family) -> (IpAddr, IpAddr, [IpAddr; 2]) {
    match family {
        Family::V6 => (
            ip("fd00::1"),
            ip("fd00:1::1"),
            [ip("fd00:2::2"), ip("fd00:2::3")],
        ),
        _ => (
            ip("198.18.0.1"),
            ip("198.18.1.1"),
            [ip("198.18.2.2"), ip("198.18.2.3")],
        ),
    }
}

fn service(vip: IpAddr) -> Service {
    Service {
        addr: SocketAddr::new(vip, PORT),
        proto: Proto::Udp,
    }
}

fn config(text: &str) -> Config {
    text.parse().expect("a QUIC-LB config")
}

/// A server id of `len` bytes, distinct per `which`.
fn server_id(len: usize, which: u8) -> ServerId {
    let bytes: Vec<u8> = (0..len).map(|i| (0x11 * (which + 1)) ^ i as u8).collect();
    ServerId::new(&bytes).expect("a server id")
}

/// The QUIC VIP of `family` with `configs`, its two backends given `ids`.
fn quic_vip(datapath: &mut Datapath, family: Family, configs: &[Config], ids: &[ServerId; 2]) {
    let (_, vip, backends) = addresses(family);
    let service = service(vip);
    let mut changes = vec![
        Change::AddVip(service),
        Change::SetQuic {
            service,
            configs: configs.to_vec(),
        },
    ];
    for (backend, id) in backends.iter().zip(ids) {
        changes.push(Change::AddBackend {
            service,
            backend: SocketAddr::new(*backend, BACKEND_PORT),
            weight: 100,
            server_id: Some(*id),
        });
    }
    for change in &changes {
        datapath.balancer.apply(change).expect("a QUIC VIP");
    }
}

fn drop_vip(datapath: &mut Datapath, family: Family) {
    let (_, vip, _) = addresses(family);
    datapath
        .balancer
        .apply(&Change::DelVip(service(vip)))
        .expect("delete the VIP");
}

/// A connection ID of `config` for `id` (nonce bytes from `seed`).
fn cid(config: &Config, id: &ServerId, seed: u8) -> Vec<u8> {
    let nonce: Vec<u8> = (0..config.nonce_len())
        .map(|i| seed.wrapping_mul(31) ^ i as u8)
        .collect();
    quic_lb::encode(config, id, &nonce, true)
        .expect("encode")
        .as_bytes()
        .to_vec()
}

/// A 1-RTT packet: the short header, the ID, a packet number and sealed bytes (at least
/// the 16-byte tag).
fn short_header(dcid: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x40 | 0x01];
    packet.extend_from_slice(dcid);
    packet.extend_from_slice(&[0x5a; 24]);
    packet
}

/// A long-header packet of `version` with packet-type bits `kind`.
fn long_header(version: u32, kind: u8, dcid: &[u8]) -> Vec<u8> {
    let mut packet = vec![0xc0 | (kind << 4)];
    packet.extend_from_slice(&version.to_be_bytes());
    packet.push(dcid.len() as u8);
    packet.extend_from_slice(dcid);
    packet.push(8);
    packet.extend_from_slice(&[0x77; 8]);
    packet.extend_from_slice(&[0x40, 40]);
    packet.extend_from_slice(&[0x33; 40]);
    packet
}

const HANDSHAKE_V1: (u32, u8) = (1, 2);
const HANDSHAKE_V2: (u32, u8) = (0x6b33_43cf, 3);
const INITIAL_V1: (u32, u8) = (1, 0);
const ZERO_RTT_V1: (u32, u8) = (1, 1);
const INITIAL_V2: (u32, u8) = (0x6b33_43cf, 1);

/// Sends `payload` from `client_port` to the VIP of `family`: the backend it reached and
/// the counters that moved.
fn send(
    datapath: &mut Datapath,
    family: Family,
    client_port: u16,
    payload: &[u8],
) -> (IpAddr, CounterDelta) {
    let (client, vip, _) = addresses(family);
    let packet = Spec::new(family, Transport::Udp)
        .between(client, vip)
        .ports(client_port, PORT)
        .build(payload);
    let (out, delta) = datapath.run_counted(&packet);
    assert_eq!(out.action, XDP_REDIRECT, "forwarded: {:?}", delta.moved());
    let wire = verify(&out.packet);
    assert_eq!(wire.dst_port, BACKEND_PORT, "to the backend's port");
    assert_eq!(wire.payload, payload, "the QUIC packet is untouched");
    (wire.dst, delta)
}

/// The counters of a packet that looked for its backend by its connection ID: one each.
const LOOKED: [Stat; 5] = [
    Stat::QuicByServerId,
    Stat::QuicLongHeader,
    Stat::QuicUnknownConfig,
    Stat::QuicUnknownServerId,
    Stat::QuicTruncated,
];

/// The one QUIC counter a packet moved.
fn quic_case(delta: &CounterDelta) -> Stat {
    let moved: Vec<Stat> = LOOKED
        .into_iter()
        .filter(|&s| delta.packets(s) > 0)
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "one QUIC case per packet: {:?}",
        delta.moved()
    );
    moved[0]
}

/// The port of the client's next packet: a new 5-tuple every time (a client that moved).
struct Ports(u16);

impl Ports {
    fn next(&mut self) -> u16 {
        self.0 += 1;
        self.0
    }
}

#[test]
fn every_id_length_reaches_its_server_from_any_port() {
    lb_tests::require_root!();
    FibLab::new().with_datapath(|datapath, _| {
        let mut ports = Ports(20_000);
        for family in [Family::V4, Family::V6] {
            let (_, _, backends) = addresses(family);
            // Every server-id length, each with the shortest and the longest nonce: IDs of
            // every length the draft allows, 6 to 20 bytes.
            for server_id_len in 1..=15usize {
                for nonce_len in [4, 19 - server_id_len] {
                    let text =
                        format!("config=2,server-id-len={server_id_len},nonce-len={nonce_len}");
                    let config = config(&text);
                    let ids = [server_id(server_id_len, 0), server_id(server_id_len, 1)];
                    quic_vip(datapath, family, std::slice::from_ref(&config), &ids);
                    for (which, id) in ids.iter().enumerate() {
                        for seed in 0..2u8 {
                            let dcid = cid(&config, id, seed);
                            for payload in [
                                short_header(&dcid),
                                long_header(HANDSHAKE_V1.0, HANDSHAKE_V1.1, &dcid),
                                long_header(HANDSHAKE_V2.0, HANDSHAKE_V2.1, &dcid),
                            ] {
                                let port = ports.next();
                                let (to, delta) = send(datapath, family, port, &payload);
                                let case = format!("{family:?} {text} seed {seed}");
                                assert_eq!(to, backends[which], "{case}: by its server id");
                                assert_eq!(quic_case(&delta), Stat::QuicByServerId, "{case}");
                            }
                        }
                    }
                    drop_vip(datapath, family);
                }
            }
        }
    });
}

#[test]
fn ids_the_client_chose_go_by_maglev() {
    lb_tests::require_root!();
    FibLab::new().with_datapath(|datapath, _| {
        let config = config("config=0,server-id-len=2,nonce-len=6");
        let ids = [server_id(2, 0), server_id(2, 1)];
        for family in [Family::V4, Family::V6] {
            let (_, _, backends) = addresses(family);
            quic_vip(datapath, family, std::slice::from_ref(&config), &ids);
            // The ID names the second backend; Initial and 0-RTT packets carry the client's
            // choice, so Maglev spreads them over both.
            let dcid = cid(&config, &ids[1], 9);
            for kind in [INITIAL_V1, ZERO_RTT_V1, INITIAL_V2] {
                let mut reached = BTreeSet::new();
                for port in 30_000..30_032 {
                    let payload = long_header(kind.0, kind.1, &dcid);
                    let (to, delta) = send(datapath, family, port, &payload);
                    assert_eq!(quic_case(&delta), Stat::QuicLongHeader, "{kind:?}");
                    reached.insert(to);
                }
                assert_eq!(
                    reached,
                    BTreeSet::from(backends),
                    "{family:?} {kind:?}: by Maglev, not by the ID"
                );
            }
            drop_vip(datapath, family);
        }
    });
}

#[test]
fn configs_rotate_and_unknown_configs_go_by_maglev() {
    lb_tests::require_root!();
    FibLab::new().with_datapath(|datapath, _| {
        let family = Family::V4;
        let (_, vip, backends) = addresses(family);
        let old = config("config=0,server-id-len=3,nonce-len=8");
        let new = config("config=3,server-id-len=3,nonce-len=5");
        let other = config("config=5,server-id-len=3,nonce-len=8");
        let unroutable = [0xe0 | 0x1f, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let ids = [server_id(3, 0), server_id(3, 1)];
        quic_vip(datapath, family, &[new.clone(), old.clone()], &ids);
        let mut ports = Ports(40_000);
        // During the rotation both configs route.
        for config in [&old, &new] {
            for (which, id) in ids.iter().enumerate() {
                let payload = short_header(&cid(config, id, 1));
                let (to, delta) = send(datapath, family, ports.next(), &payload);
                assert_eq!(to, backends[which], "{config}");
                assert_eq!(quic_case(&delta), Stat::QuicByServerId, "{config}");
            }
        }
        // A config the VIP does not have, and the unroutable config 7: Maglev.
        for dcid in [cid(&other, &ids[1], 1), unroutable.to_vec()] {
            let (_, delta) = send(datapath, family, ports.next(), &short_header(&dcid));
            assert_eq!(quic_case(&delta), Stat::QuicUnknownConfig, "{dcid:02x?}");
        }
        // The rotation ends: only the new config routes.
        datapath
            .balancer
            .apply(&Change::SetQuic {
                service: service(vip),
                configs: vec![new.clone()],
            })
            .expect("the old config retired");
        let (_, delta) = send(
            datapath,
            family,
            ports.next(),
            &short_header(&cid(&old, &ids[1], 2)),
        );
        assert_eq!(quic_case(&delta), Stat::QuicUnknownConfig, "retired config");
        let (to, delta) = send(
            datapath,
            family,
            ports.next(),
            &short_header(&cid(&new, &ids[1], 2)),
        );
        assert_eq!((to, quic_case(&delta)), (backends[1], Stat::QuicByServerId));
    });
}

#[test]
fn a_server_id_of_no_serving_backend_goes_by_maglev_and_a_drained_one_keeps_its_own() {
    lb_tests::require_root!();
    FibLab::new().with_datapath(|datapath, _| {
        let family = Family::V4;
        let (_, vip, backends) = addresses(family);
        let service = service(vip);
        let config = config("config=1,server-id-len=2,nonce-len=6");
        let ids = [server_id(2, 0), server_id(2, 1)];
        quic_vip(datapath, family, std::slice::from_ref(&config), &ids);
        let mut ports = Ports(50_000);
        let to_second = |datapath: &mut Datapath, ports: &mut Ports| {
            let payload = short_header(&cid(&config, &ids[1], 3));
            send(datapath, family, ports.next(), &payload)
        };
        // A server id no backend has.
        let stranger = cid(&config, &server_id(2, 7), 3);
        let (_, delta) = send(datapath, family, ports.next(), &short_header(&stranger));
        assert_eq!(quic_case(&delta), Stat::QuicUnknownServerId);

        // Drained: no new flows by Maglev, but its connections keep reaching it.
        let second = SocketAddr::new(backends[1], BACKEND_PORT);
        datapath
            .balancer
            .apply(&Change::DrainBackend {
                service,
                backend: second,
            })
            .expect("drain");
        for _ in 0..8 {
            let (to, delta) = to_second(datapath, &mut ports);
            assert_eq!((to, quic_case(&delta)), (backends[1], Stat::QuicByServerId));
        }
        // Down: its connections have nowhere to go; Maglev picks a live backend.
        let down = BTreeSet::from([(service, second)]);
        datapath.balancer.set_down(down).expect("mark down");
        let (to, delta) = to_second(datapath, &mut ports);
        assert_eq!(
            (to, quic_case(&delta)),
            (backends[0], Stat::QuicUnknownServerId)
        );
        datapath.balancer.set_down(BTreeSet::new()).expect("up");
        // Deleted: the same.
        datapath
            .balancer
            .apply(&Change::DelBackend {
                service,
                backend: second,
            })
            .expect("delete");
        let (to, delta) = to_second(datapath, &mut ports);
        assert_eq!(
            (to, quic_case(&delta)),
            (backends[0], Stat::QuicUnknownServerId)
        );
    });
}

#[test]
fn a_tracked_5_tuple_follows_the_connection_id_it_carries_now() {
    lb_tests::require_root!();
    FibLab::new().with_datapath(|datapath, _| {
        let family = Family::V6;
        let (_, _, backends) = addresses(family);
        let config = config("config=4,server-id-len=4,nonce-len=8");
        let ids = [server_id(4, 0), server_id(4, 1)];
        quic_vip(datapath, family, std::slice::from_ref(&config), &ids);
        let port = 60_000;
        for round in 0..3u8 {
            for (which, id) in ids.iter().enumerate() {
                let payload = short_header(&cid(&config, id, round));
                let (to, delta) = send(datapath, family, port, &payload);
                assert_eq!(to, backends[which], "round {round}");
                assert_eq!(quic_case(&delta), Stat::QuicByServerId);
                // The first packet opens the flow; every switch after it re-pins it.
                let repinned = u64::from(round > 0 || which > 0);
                assert_eq!(delta.packets(Stat::QuicRepinned), repinned, "round {round}");
            }
        }
        // Packets of the flow that stay on its backend are established, never cached.
        let payload = short_header(&cid(&config, &ids[1], 9));
        let (_, delta) = send(datapath, family, port, &payload);
        assert_eq!(delta.packets(Stat::ForwardEstablished), 1);
        assert_eq!(delta.packets(Stat::FlowCacheHit), 0, "{:?}", delta.moved());
    });
}

#[test]
fn truncated_and_garbage_datagrams_go_by_maglev() {
    lb_tests::require_root!();
    FibLab::new().with_datapath(|datapath, _| {
        let family = Family::V4;
        let config = config("config=0,server-id-len=8,nonce-len=8");
        let ids = [server_id(8, 0), server_id(8, 1)];
        quic_vip(datapath, family, std::slice::from_ref(&config), &ids);
        let dcid = cid(&config, &ids[1], 5);
        let mut ports = Ports(10_000);
        let short = short_header(&dcid);
        let handshake = long_header(HANDSHAKE_V1.0, HANDSHAKE_V1.1, &dcid);
        // A Handshake whose ID (8 bytes) is too short for its config's 8-byte server id.
        let too_short_id = long_header(HANDSHAKE_V1.0, HANDSHAKE_V1.1, &dcid[..8]);
        for (what, payload) in [
            ("an empty datagram", Vec::new()),
            ("a short header cut inside its ID", short[..12].to_vec()),
            ("a long header cut in its version", handshake[..4].to_vec()),
            ("a Handshake cut inside its ID", handshake[..16].to_vec()),
            ("an ID shorter than its server id", too_short_id),
        ] {
            let (_, delta) = send(datapath, family, ports.next(), &payload);
            assert_eq!(quic_case(&delta), Stat::QuicTruncated, "{what}");
        }
        // Garbage: whatever the bytes, one case, and forwarded.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200usize {
            let payload: Vec<u8> = (0..len % 64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let (_, delta) = send(datapath, family, ports.next(), &payload);
            quic_case(&delta);
        }
    });
}

#[test]
fn a_udp_vip_without_quic_reads_no_connection_id() {
    lb_tests::require_root!();
    FibLab::new().with_datapath(|datapath, _| {
        // The lab's own udp/53 VIP: no QUIC config.
        let (client, vip, _) = addresses(Family::V4);
        let config = config("config=0,server-id-len=2,nonce-len=6");
        let dcid = cid(&config, &server_id(2, 1), 1);
        let packet = Spec::new(Family::V4, Transport::Udp)
            .between(client, vip)
            .ports(7_000, 53)
            .build(&short_header(&dcid));
        let (out, delta) = datapath.run_counted(&packet);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", delta.moved());
        let quic: u64 = LOOKED.into_iter().map(|s| delta.packets(s)).sum();
        assert_eq!(quic, 0, "{:?}", delta.moved());
    });
}
