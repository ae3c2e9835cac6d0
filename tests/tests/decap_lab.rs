//! The decap program attached for real: a backend namespace whose kernel has no tunnel
//! modules answers a UDP request that arrived inside IPIP, IPv6-in-IPv6 and
//! IPv4-in-IPv6 (sent through raw sockets of protocol 4 and 41, which add the outer
//! header), and does not answer the same packets without the program.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use aya::programs::xdp::XdpMode;
use etherparse::PacketBuilder;
use lb_common::decap::DecapStat;
use lb_tests::{
    netns::{Link, NetNs},
    tunnel::send_raw,
};
use lb_userspace::datapath::decap::{DECAP_OBJECT, Decap};

const SENDER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 1);
const BACKEND_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 2);
const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 6, 80);
const SENDER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 5, 1);
const BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 5, 2);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 6, 0x80);
const SERVICE_PORT: u16 = 7;
const CLIENT_PORT: u16 = 40_000;

/// A sender and a backend on one veth; the backend holds the VIPs on `lo` and echoes UDP.
struct Lab {
    sender: NetNs,
    backend: NetNs,
    link: Link,
}

impl Lab {
    fn new() -> Self {
        let sender = NetNs::new("dsend");
        let backend = NetNs::new("dback");
        let link = Link::veth(&sender, "198.18.5.1/24", &backend, "198.18.5.2/24");
        for (ns, addr, dev) in [
            (&sender, "fd00::5:1/112", &link.a),
            (&backend, "fd00::5:2/112", &link.b),
        ] {
            ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
        }
        backend.ip(&["addr", "add", "198.18.6.80/32", "dev", "lo"]);
        backend.ip(&["-6", "addr", "add", "fd00::6:80/128", "dev", "lo", "nodad"]);
        sender.ip(&["route", "add", "198.18.6.80/32", "via", "198.18.5.2"]);
        sender.ip(&["-6", "route", "add", "fd00::6:80/128", "via", "fd00::5:2"]);
        for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
            let socket = backend.enter(|| {
                UdpSocket::bind(SocketAddr::new(vip, SERVICE_PORT)).expect("bind the echo server")
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    // A lost echo is the client's test failure, seen there.
                    socket.send_to(&buf[..n], from).unwrap_or_default();
                }
            });
        }
        Self {
            sender,
            backend,
            link,
        }
    }

    /// Sends `inner` (a UDP request from the sender's address to a VIP) inside a tunnel to
    /// `outer_dst`, and returns the echo, if one came back within half a second.
    fn request(&self, outer_dst: IpAddr, inner: &[u8], reply_to: SocketAddr) -> Option<Vec<u8>> {
        self.sender.enter(|| {
            let receiver = UdpSocket::bind(reply_to).expect("bind the client socket");
            receiver
                .set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            let protocol = if inner[0] >> 4 == 4 {
                libc::IPPROTO_IPIP
            } else {
                libc::IPPROTO_IPV6
            };
            send_raw(outer_dst, protocol, inner);
            let mut buf = [0u8; 2048];
            let (n, from) = receiver.recv_from(&mut buf).ok()?;
            assert_eq!(from.port(), SERVICE_PORT, "the echo comes from the service");
            assert!(
                from.ip() == IpAddr::V4(VIP_V4) || from.ip() == IpAddr::V6(VIP_V6),
                "the reply comes from the VIP, straight back (not tunnelled): {from}"
            );
            Some(buf[..n].to_vec())
        })
    }
}

fn udp_v4(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(SENDER_V4.octets(), VIP_V4.octets(), 64)
        .udp(CLIENT_PORT, SERVICE_PORT)
        .write(&mut out, payload)
        .expect("build");
    out
}

fn udp_v6(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(SENDER_V6.octets(), VIP_V6.octets(), 64)
        .udp(CLIENT_PORT, SERVICE_PORT)
        .write(&mut out, payload)
        .expect("build");
    out
}

#[test]
fn a_backend_without_tunnel_modules_answers_tunnelled_requests_through_lb_decap() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let reply_v4 = SocketAddr::new(IpAddr::V4(SENDER_V4), CLIENT_PORT);
    let reply_v6 = SocketAddr::new(IpAddr::V6(SENDER_V6), CLIENT_PORT);
    let cases = [
        (
            IpAddr::V4(BACKEND_V4),
            udp_v4(b"ipip"),
            reply_v4,
            DecapStat::DecapV4InV4,
        ),
        (
            IpAddr::V6(BACKEND_V6),
            udp_v6(b"ip6ip6"),
            reply_v6,
            DecapStat::DecapV6InV6,
        ),
        (
            IpAddr::V6(BACKEND_V6),
            udp_v4(b"ipip6"),
            reply_v4,
            DecapStat::DecapV4InV6,
        ),
    ];
    // Without the program the backend's stack has nothing that decapsulates.
    for (outer_dst, inner, reply_to, _) in &cases {
        assert_eq!(
            lab.request(*outer_dst, inner, *reply_to),
            None,
            "no answer to a tunnel to {outer_dst} without lb_decap"
        );
    }
    let iface = lab.link.b.clone();
    let decap = lab.backend.enter(|| {
        let mut decap = Decap::load(DECAP_OBJECT).expect("load lb_decap");
        decap
            .add_local(IpAddr::V4(BACKEND_V4))
            .expect("add an address");
        decap
            .add_local(IpAddr::V6(BACKEND_V6))
            .expect("add an address");
        decap
            .program()
            .attach(&iface, XdpMode::Driver)
            .expect("attach lb_decap natively to the veth");
        decap
    });
    assert!(lab.backend.has_xdp(), "lb_decap attached");
    for (outer_dst, inner, reply_to, stat) in &cases {
        let before = decap.counters().expect("counters").get(*stat).packets;
        let payload = &inner[inner.len() - 4..];
        let echo = lab
            .request(*outer_dst, inner, *reply_to)
            .unwrap_or_else(|| panic!("an answer to the {stat:?} tunnel to {outer_dst}"));
        assert!(echo.ends_with(payload), "the echo of the request");
        let after = decap.counters().expect("counters").get(*stat).packets;
        assert!(after > before, "{stat:?} counted");
    }
    // Dropping the program detaches it; the namespaces go with the lab.
    drop(decap);
    assert!(!lab.backend.has_xdp(), "nothing left attached");
}
