//! Golden packets for the second chance on a backend: `lb_decap` (which hands dsr-gue to
//! `lb_decap_gue`) under BPF_PROG_TEST_RUN, inside a namespace of the test's own with a
//! link toward a peer backend, so the FIB and the socket lookup are real. Each choice of
//! the rule is shown: a SYN, a packet of a local connection, a UDP flow taken recently
//! and the last hop are taken apart and delivered; anything else goes on to the next hop
//! (rewritten, redirected), or to the stack when that hop's neighbour is unknown, or is taken
//! when no route leads there; malformed GUE passes untouched.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
};

use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};
use lb_common::{
    consts::{XDP_PASS, XDP_REDIRECT},
    decap::DecapStat,
    gue::DEFAULT_GUE_PORT,
};
use lb_tests::{
    netns::{Link, NetNs},
    packets::{Family, Spec, Transport},
    tunnel::{BACKEND_V4, BACKEND_V6, Outer, encapsulate_gue, inner},
};
use lb_userspace::datapath::decap::{DECAP_OBJECT, Decap};

const CLIENT: &str = "198.18.0.1";
const VIP: &str = "198.18.0.80";
const CLIENT_V6: &str = "fd00::1";
const VIP_V6: &str = "fd00::80";
/// The peer backend on the link (neighbour pinned), one with no neighbour entry, and one
/// with no route at all.
const PEER: &str = "198.18.5.11";
const PEER_V6: &str = "fd00:5::11";
const PEER_MAC: [u8; 6] = [0x02, 0x18, 0, 0, 5, 0x11];
const UNRESOLVED: &str = "198.18.5.12";
const UNROUTED: &str = "198.19.99.1";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// A backend namespace: its link toward the peer (198.18.5.10/24, fd00:5::10/64), the
/// client and VIP addresses on lo for real sockets, and the decap program loaded there.
struct Lab {
    ns: NetNs,
    _peer: NetNs,
    dev: String,
}

impl Lab {
    /// `forwarding`: the backend routes (then the FIB answers for its next hops).
    fn new(forwarding: bool) -> Self {
        let ns = NetNs::new("gue");
        if forwarding {
            ns.enable_forwarding();
        }
        let peer = NetNs::new("gue-peer");
        let link = Link::veth(&ns, "198.18.5.10/24", &peer, "198.18.5.11/24");
        ns.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:5::10/64",
            "dev",
            &link.a,
            "nodad",
        ]);
        let mac = PEER_MAC.map(|b| format!("{b:02x}")).join(":");
        for peer_addr in [PEER, PEER_V6] {
            ns.ip(&[
                "neigh",
                "replace",
                peer_addr,
                "lladdr",
                &mac,
                "dev",
                &link.a,
                "nud",
                "permanent",
            ]);
        }
        for addr in [CLIENT, VIP] {
            ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        }
        Self {
            dev: link.a,
            ns,
            _peer: peer,
        }
    }

    /// Runs `test` in the backend's namespace with the program loaded and accepting
    /// tunnels to the backend's addresses, dsr-gue on the default port.
    fn run<T: Send>(&self, test: impl FnOnce(&mut Backend) -> T + Send) -> T {
        let ifindex = self.ns.ifindex(&self.dev);
        let mac = self.ns.mac(&self.dev);
        self.ns.enter(|| {
            let mut decap = Decap::load(DECAP_OBJECT).expect("the verifier accepts lb_decap");
            for addr in [IpAddr::from(BACKEND_V4), IpAddr::from(BACKEND_V6)] {
                decap.add_local(addr).expect("add a local address");
            }
            decap.set_gue_port(DEFAULT_GUE_PORT).expect("GUE port");
            test(&mut Backend {
                decap,
                ifindex,
                mac,
            })
        })
    }
}

struct Backend {
    decap: Decap,
    ifindex: u32,
    /// The link's MAC: the source of a forwarded frame.
    mac: [u8; 6],
}

impl Backend {
    /// Runs the program once, arriving on the link: its verdict, the frame it left, and
    /// the one counter that moved.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>, DecapStat) {
        let before = self.decap.counters().expect("counters");
        let mut out = vec![0u8; frame.len() + 64];
        let xdp_md: Vec<u8> = [0, frame.len() as u32, 0, self.ifindex, 0, 0]
            .iter()
            .flat_map(|field| field.to_ne_bytes())
            .collect();
        let result = self
            .decap
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&xdp_md),
                repeat: 1,
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        out.truncate(result.data_size_out as usize);
        let after = self.decap.counters().expect("counters");
        let moved: Vec<DecapStat> = DecapStat::ALL
            .iter()
            .copied()
            .filter(|&s| after.get(s).packets != before.get(s).packets)
            .collect();
        assert_eq!(moved.len(), 1, "one counter per packet: {moved:?}");
        (result.return_value, out, moved[0])
    }

    /// Asserts the frame is taken here: decapsulated (MACs kept, the inner packet byte for
    /// byte) and counted as `stat`.
    fn assert_taken(&mut self, frame: &[u8], inner_packet: &[u8], stat: DecapStat) {
        let (action, out, moved) = self.run(frame);
        assert_eq!((action, moved), (XDP_PASS, stat), "taken here");
        assert_eq!(out[..12], frame[..12], "MACs kept");
        assert_eq!(&out[14..], inner_packet, "the inner packet, untouched");
    }
}

/// A TCP segment client → VIP from `port` (a SYN, or an ACK), as an IP packet.
fn segment(port: u16, syn: bool) -> Vec<u8> {
    segment_from(ip(CLIENT), port, syn)
}

fn segment_from(client: IpAddr, port: u16, syn: bool) -> Vec<u8> {
    let spec = Spec::new(Family::V4, Transport::Tcp)
        .between(client, ip(VIP))
        .ports(port, 80);
    let spec = if syn { spec } else { spec.ack() };
    inner(&spec, b"")
}

fn datagram(port: u16) -> Vec<u8> {
    let spec = Spec::new(Family::V4, Transport::Udp)
        .between(ip(CLIENT), ip(VIP))
        .ports(port, 53);
    inner(&spec, b"question")
}

/// `inner_packet` to this backend over IPv4 with `hops`, `next`.
fn to_backend(inner_packet: &[u8], hops: &[&str], next: u8) -> Vec<u8> {
    let hops: Vec<IpAddr> = hops.iter().map(|h| ip(h)).collect();
    encapsulate_gue(Outer::V4, inner_packet, DEFAULT_GUE_PORT, &hops, next)
}

const HERE: &str = "198.18.1.10";

/// Checks a frame sent on toward `to`: new MACs, the outer header rewritten (this host as
/// source, one hop off the TTL, checksum right, UDP checksum 0, `next` moved on) and the
/// rest byte for byte.
fn assert_forwarded(sent: &[u8], out: &[u8], to: &str, mac: [u8; 6], next: u8) {
    assert_eq!(out.len(), sent.len(), "same length");
    assert_eq!(out[..6], PEER_MAC, "to the next hop's MAC");
    assert_eq!(out[6..12], mac, "from the link's MAC");
    let (src, dst, ttl, udp_at) = if out[12..14] == [0x08, 0x00] {
        let header = Ipv4HeaderSlice::from_slice(&out[14..]).expect("IPv4");
        let owned = header.to_header();
        assert_eq!(
            owned.header_checksum,
            owned.calc_header_checksum(),
            "checksum"
        );
        (
            IpAddr::from(header.source()),
            IpAddr::from(header.destination()),
            header.ttl(),
            34,
        )
    } else {
        let header = Ipv6HeaderSlice::from_slice(&out[14..]).expect("IPv6");
        (
            IpAddr::from(header.source()),
            IpAddr::from(header.destination()),
            header.hop_limit(),
            54,
        )
    };
    let here = if to.contains(':') {
        IpAddr::from(BACKEND_V6)
    } else {
        ip(HERE)
    };
    assert_eq!(
        (src, dst, ttl),
        (here, ip(to), 63),
        "outer addresses and TTL"
    );
    assert_eq!(out[udp_at + 6..udp_at + 8], [0, 0], "UDP checksum 0");
    assert_eq!(out[udp_at + 15], next, "next hop moved on");
    let list_end = udp_at + 16;
    assert_eq!(
        out[list_end..],
        sent[list_end..],
        "hop list and inner packet kept"
    );
}

#[test]
fn a_syn_opens_its_connection_on_the_first_hop() {
    lb_tests::require_root!();
    let lab = Lab::new(true);
    lab.run(|backend| {
        let syn = segment(45_001, true);
        backend.assert_taken(
            &to_backend(&syn, &[HERE, PEER], 1),
            &syn,
            DecapStat::GueTakenSyn,
        );
    });
}

/// A segment of a connection this host has a socket for is taken; the same segment of a
/// connection it does not have goes on (the listener on the port proves nothing), and so
/// does the last hop's packet not: the last hop takes whatever reaches it.
#[test]
fn a_local_connection_keeps_its_packets_and_others_go_on() {
    lb_tests::require_root!();
    let lab = Lab::new(true);
    lab.run(|backend| {
        let vip = SocketAddr::new(ip(VIP), 80);
        let listener = TcpListener::bind(vip).expect("listen");
        // A connection to a local address comes from it: the client here is the VIP.
        let mut stream = TcpStream::connect(vip).expect("connect");
        let client = stream.local_addr().expect("client address");
        let (mut accepted, _) = listener.accept().expect("accept");
        stream.write_all(b"x").expect("write");
        let mut byte = [0u8; 1];
        accepted.read_exact(&mut byte).expect("read");

        let ours = segment_from(client.ip(), client.port(), false);
        backend.assert_taken(
            &to_backend(&ours, &[HERE, PEER], 1),
            &ours,
            DecapStat::GueTakenSocket,
        );

        let theirs = segment_from(client.ip(), client.port() ^ 1, false);
        let frame = to_backend(&theirs, &[HERE, PEER], 1);
        let (action, out, stat) = backend.run(&frame);
        assert_eq!(
            (action, stat),
            (XDP_REDIRECT, DecapStat::GueForwarded),
            "sent on"
        );
        assert_forwarded(&frame, &out, PEER, backend.mac, 2);

        let last = to_backend(&theirs, &[PEER, HERE], 2);
        backend.assert_taken(&last, &theirs, DecapStat::GueTakenLastHop);
        drop((accepted, stream, listener));
    });
}

/// UDP: a flow this host does not know goes on; as the last hop it takes the flow and
/// remembers it; from then on it takes the flow's datagrams wherever it is in the list.
#[test]
fn a_udp_flow_stays_where_it_was_last_taken() {
    lb_tests::require_root!();
    let lab = Lab::new(true);
    lab.run(|backend| {
        let question = datagram(46_001);
        let frame = to_backend(&question, &[HERE, PEER], 1);
        let (action, _, stat) = backend.run(&frame);
        assert_eq!(
            (action, stat),
            (XDP_REDIRECT, DecapStat::GueForwarded),
            "unknown: on"
        );
        backend.assert_taken(
            &to_backend(&question, &[PEER, HERE], 2),
            &question,
            DecapStat::GueTakenLastHop,
        );
        backend.assert_taken(&frame, &question, DecapStat::GueTakenRecentUdp);
        let other = datagram(46_002);
        let (_, _, stat) = backend.run(&to_backend(&other, &[HERE, PEER], 1));
        assert_eq!(stat, DecapStat::GueForwarded, "another flow still goes on");
    });
}

/// IPv6 outer headers are rewritten the same way.
#[test]
fn ipv6_tunnels_go_on_to_an_ipv6_hop() {
    lb_tests::require_root!();
    let lab = Lab::new(true);
    lab.run(|backend| {
        let spec = Spec::new(Family::V6, Transport::Tcp)
            .between(ip(CLIENT_V6), ip(VIP_V6))
            .ports(47_001, 80)
            .ack();
        let packet = inner(&spec, b"");
        let hops = [IpAddr::from(BACKEND_V6), ip(PEER_V6)];
        let frame = encapsulate_gue(Outer::V6, &packet, DEFAULT_GUE_PORT, &hops, 1);
        let (action, out, stat) = backend.run(&frame);
        assert_eq!((action, stat), (XDP_REDIRECT, DecapStat::GueForwarded));
        assert_forwarded(&frame, &out, PEER_V6, backend.mac, 2);
    });
}

/// A backend that does not route (the usual case) gets no FIB answer: the packet goes
/// back to the neighbour it came from, rewritten toward its next hop, for that neighbour
/// (an lb node or a router) to route.
#[test]
fn a_host_that_does_not_route_sends_it_back_to_route() {
    lb_tests::require_root!();
    let lab = Lab::new(false);
    lab.run(|backend| {
        let packet = segment(50_001, false);
        let frame = to_backend(&packet, &[HERE, PEER], 1);
        let (action, out, stat) = backend.run(&frame);
        assert_eq!(
            (action, stat),
            (XDP_REDIRECT, DecapStat::GueSentBackToRoute)
        );
        assert_eq!(out[..6], frame[6..12], "to the sender's MAC");
        assert_eq!(out[6..12], frame[..6], "from the MAC it was sent to");
        // The rest as a forwarded frame's (`assert_forwarded` checks the MACs it is told).
        let own_mac: [u8; 6] = frame[..6].try_into().expect("MAC");
        let mut rewritten = out;
        rewritten[..6].copy_from_slice(&PEER_MAC);
        assert_forwarded(&frame, &rewritten, PEER, own_mac, 2);
    });
}

/// A next hop whose neighbour is unknown: rewritten and handed to the stack to forward;
/// one with no route: taken here, untouched but for the decapsulation.
#[test]
fn an_unresolved_hop_goes_through_the_stack_and_an_unroutable_one_is_taken() {
    lb_tests::require_root!();
    let lab = Lab::new(true);
    lab.run(|backend| {
        let packet = segment(48_001, false);
        let frame = to_backend(&packet, &[HERE, UNRESOLVED], 1);
        let (action, out, stat) = backend.run(&frame);
        assert_eq!((action, stat), (XDP_PASS, DecapStat::GueForwardedToStack));
        let header = Ipv4HeaderSlice::from_slice(&out[14..]).expect("IPv4");
        assert_eq!(IpAddr::from(header.destination()), ip(UNRESOLVED));
        backend.assert_taken(
            &to_backend(&packet, &[HERE, UNROUTED], 1),
            &packet,
            DecapStat::GueTakenUnforwardable,
        );
    });
}

/// GUE lb did not write passes untouched: a wrong magic, a list that contradicts Hlen or
/// itself, a GUE version or flag lb never sets, a UDP length that is not the packet's;
/// UDP to another port is no tunnel at all.
#[test]
fn malformed_gue_passes_untouched() {
    lb_tests::require_root!();
    let lab = Lab::new(true);
    lab.run(|backend| {
        let packet = segment(49_001, false);
        let good = to_backend(&packet, &[HERE, PEER], 1);
        // Offsets in the frame: UDP at 34, GUE at 42, the list at 46.
        let cases: [(&str, usize, u8); 7] = [
            ("magic", 46, b'x'),
            ("count 0", 48, 0),
            ("next past count", 49, 3),
            ("next 0", 49, 0),
            ("Hlen", 42, 4),
            ("version", 42, 0x42),
            ("flags", 44, 1),
        ];
        for (what, at, value) in cases {
            let mut bad = good.clone();
            bad[at] = value;
            let (action, out, stat) = backend.run(&bad);
            assert_eq!((action, stat), (XDP_PASS, DecapStat::Malformed), "{what}");
            assert_eq!(out, bad, "{what}: untouched");
        }
        let mut long = good.clone();
        long[38..40].copy_from_slice(&(u16::from_be_bytes([good[38], good[39]]) + 1).to_be_bytes());
        let (_, out, stat) = backend.run(&long);
        assert_eq!((stat, out), (DecapStat::Malformed, long), "UDP length");
        let mut other_port = good;
        other_port[36..38].copy_from_slice(&(DEFAULT_GUE_PORT + 1).to_be_bytes());
        let (action, out, stat) = backend.run(&other_port);
        assert_eq!((action, stat), (XDP_PASS, DecapStat::PassNotEncapsulated));
        assert_eq!(out, other_port);
    });
}
