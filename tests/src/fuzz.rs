//! Packet fuzzing through BPF_PROG_TEST_RUN: golden packets mutated (truncation, random
//! bytes in every header, so bad IHL and data offsets, options, fragment bits, extension
//! headers, VLAN tags and wrong checksums all come up), each run through the real
//! program, each result checked against what the design allows.

use std::{
    net::{IpAddr, SocketAddr},
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
};

use lb_common::{
    consts::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    stats::{Stat, StatKind},
};

use lb_userspace::model::{
    limits::{Limits, Options},
    mode::Mode,
    prefix::Prefix,
    state::{Change, Proto, Service},
};

use crate::{
    fiblab::{self, DSR_SOURCE_V4, DSR_SOURCE_V6, Ids},
    fragments::{self, split},
    packets::{Family, Spec, Transport},
    testrun::{CounterDelta, Datapath},
    verify::{BadChecksum, describe, inspect, inspect_icmp},
};

/// xorshift64*: small, deterministic, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Which side a packet arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backends,
}

/// The services [`crate::fiblab::configure`] and [`configure_dsr`] set up.
const VIPS: [(&str, u16); 20] = [
    ("198.18.1.1", 80),
    ("198.18.1.1", 53),
    ("fd00:1::1", 80),
    ("fd00:1::1", 53),
    ("198.18.1.2", 80),
    ("198.18.1.3", 80),
    ("198.18.1.20", 80),
    ("198.18.1.20", 53),
    ("fd00:1::20", 80),
    ("fd00:1::20", 53),
    ("198.18.1.21", 80),
    ("198.18.1.21", 53),
    ("198.18.1.22", 80),
    ("198.18.1.22", 53),
    ("198.18.1.23", 80),
    ("198.18.1.23", 53),
    ("fd00:1::23", 80),
    ("fd00:1::23", 53),
    ("198.18.1.24", QUIC_PORT),
    ("fd00:1::24", QUIC_PORT),
];

/// QUIC VIPs of the fuzz lab (NAT, UDP): (VIP, backends, each backend's server id), under
/// [`QUIC_CONFIG`].
const QUIC_VIPS: [(&str, [&str; 2]); 2] = [
    ("198.18.1.24", ["198.18.2.2", "198.18.2.3"]),
    ("fd00:1::24", ["fd00:2::2", "fd00:2::3"]),
];
const QUIC_PORT: u16 = 443;
/// The QUIC backends' port: their 8080/udp serves the lab's udp/53 VIPs (an endpoint
/// serves one VIP).
const QUIC_BACKEND_PORT: u16 = 4433;
const QUIC_CONFIG: &str = "config=1,server-id-len=2,nonce-len=6";
const QUIC_SERVER_IDS: [[u8; 2]; 2] = [[0x0a, 0x01], [0x0b, 0x02]];

/// DSR VIPs of the fuzz lab (on top of the NAT ones): (VIP, mode, backends).
const DSR_VIPS: [(&str, Mode, [&str; 2]); 6] = [
    ("198.18.1.20", Mode::DsrIpip, ["198.18.2.2", "198.18.2.3"]),
    ("fd00:1::20", Mode::DsrIpip, ["fd00:2::2", "fd00:2::3"]),
    ("198.18.1.21", Mode::DsrIpip, ["fd00:2::2", "fd00:2::3"]),
    ("198.18.1.22", Mode::DsrL2, ["198.18.2.2", "198.18.2.3"]),
    ("198.18.1.23", Mode::DsrGue, ["198.18.2.2", "198.18.2.3"]),
    ("fd00:1::23", Mode::DsrGue, ["fd00:2::2", "fd00:2::3"]),
];

/// Limits and options the fuzz lab loads the datapath with: room for the NAT and DSR
/// VIPs, and dsr-ipip's outer sources.
pub fn lab_setup() -> (Limits, Options) {
    (
        Limits {
            max_vips: 32,
            ..Datapath::TEST_LIMITS
        },
        fiblab::dsr_options(),
    )
}

/// Adds the DSR VIPs (TCP 80 and UDP 53, each with its two backends on the same port).
pub fn configure_dsr(datapath: &mut Datapath) {
    for (vip, mode, backends) in DSR_VIPS {
        fiblab::add_dsr_vip(datapath, ip(vip), mode, &backends.map(ip));
    }
}

/// Adds the QUIC VIPs, each backend with its server id.
pub fn configure_quic(datapath: &mut Datapath) {
    let config: quic_lb::Config = QUIC_CONFIG.parse().expect("the lab's QUIC config");
    for (vip, backends) in QUIC_VIPS {
        let service = Service {
            addr: SocketAddr::new(ip(vip), QUIC_PORT),
            proto: Proto::Udp,
        };
        let mut changes = vec![
            Change::AddVip(service),
            Change::SetQuic {
                service,
                configs: vec![config.clone()],
            },
        ];
        for (backend, id) in backends.iter().zip(QUIC_SERVER_IDS) {
            changes.push(Change::AddBackend {
                service,
                backend: SocketAddr::new(ip(backend), QUIC_BACKEND_PORT),
                weight: 100,
                server_id: Some(quic_lb::ServerId::new(&id).expect("a server id")),
            });
        }
        for change in &changes {
            datapath.balancer.apply(change).expect("a QUIC VIP");
        }
    }
}

/// The backend a QUIC VIP's packet must reach when the datapath says it went by its
/// connection ID: the lab's backend whose server id the ID carries (plaintext: bytes 1
/// and 2 of the ID, which starts after 1 byte of short header or 6 of long header).
fn quic_server(input: &[u8]) -> Option<IpAddr> {
    let (l3, _) = l3_offset(input)?;
    let v4 = input.get(l3)? >> 4 == 4;
    let l4 = if v4 {
        l3 + usize::from(input[l3] & 0x0f) * 4
    } else {
        l3 + 40
    };
    let quic = input.get(l4 + 8..)?;
    let id_at = if quic.first()? & 0x80 != 0 { 6 } else { 1 };
    let server_id = quic.get(id_at + 1..id_at + 3)?;
    let which = QUIC_SERVER_IDS.iter().position(|id| id == server_id)?;
    let (_, backends) = QUIC_VIPS[usize::from(!v4)];
    Some(ip(backends[which]))
}

const BACKENDS: [&str; 5] = [
    "198.18.2.2",
    "198.18.2.3",
    "fd00:2::2",
    "fd00:2::3",
    "198.18.2.9",
];

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// Golden packets: client → VIP (SYN, ACK with data), client → lb host, backend → client,
/// over IPv4, IPv4 with options and IPv6, TCP and UDP, with and without a VLAN tag; and
/// ICMP: echo requests to a VIP, errors sent to a VIP about its replies, a backend's port
/// unreachable about a client's datagram.
pub fn seeds() -> Vec<(Side, Vec<u8>)> {
    let mut seeds = transport_seeds();
    seeds.extend(icmp_seeds());
    seeds.extend(dsr_seeds());
    seeds.extend(fragment_seeds());
    seeds.extend(quic_seeds());
    seeds
}

/// QUIC packets to the QUIC VIPs: a short header and a Handshake whose IDs name each
/// backend, and an Initial (the client's ID), over IPv4 and IPv6.
fn quic_seeds() -> Vec<(Side, Vec<u8>)> {
    let config: quic_lb::Config = QUIC_CONFIG.parse().expect("the lab's QUIC config");
    let mut seeds = Vec::new();
    for (vip, _) in QUIC_VIPS {
        let vip = ip(vip);
        let (family, client) = if vip.is_ipv4() {
            (Family::V4, ip("198.18.0.1"))
        } else {
            (Family::V6, ip("fd00::1"))
        };
        let request = Spec::new(family, Transport::Udp)
            .between(client, vip)
            .ports(40_200, QUIC_PORT);
        for id in QUIC_SERVER_IDS {
            let id = quic_lb::ServerId::new(&id).expect("a server id");
            let cid = quic_lb::encode(&config, &id, &[7; 6], true).expect("an ID");
            let cid = cid.as_bytes();
            let mut short = vec![0x41];
            short.extend_from_slice(cid);
            short.extend_from_slice(&[0x5a; 24]);
            seeds.push((Side::Client, request.build(&short)));
            for first in [0xe0, 0xc0] {
                // Handshake, then Initial, of QUIC v1.
                let mut long = vec![first, 0, 0, 0, 1, cid.len() as u8];
                long.extend_from_slice(cid);
                long.extend_from_slice(&[0, 0x40, 24]);
                long.extend_from_slice(&[0x33; 24]);
                seeds.push((Side::Client, request.build(&long)));
            }
        }
    }
    seeds
}

/// Fragmented UDP datagrams, IPv4 and IPv6, each first fragment before its second (so
/// mutations of a second fragment meet a recorded first, or do not): client → NAT VIP,
/// client → dsr-ipip VIP, and a backend's reply.
fn fragment_seeds() -> Vec<(Side, Vec<u8>)> {
    let mut seeds = Vec::new();
    let cases = [
        (
            Family::V4,
            "198.18.0.1",
            "198.18.1.1",
            "198.18.1.20",
            "198.18.2.2",
        ),
        (
            Family::V6,
            "fd00::1",
            "fd00:1::1",
            "fd00:1::20",
            "fd00:2::2",
        ),
    ];
    for (id, (family, client, nat_vip, dsr_vip, backend)) in (0x2000..).zip(cases) {
        let udp = |src: &str, dst: &str, ports: (u16, u16)| {
            Spec::new(family, Transport::Udp)
                .between(ip(src), ip(dst))
                .ports(ports.0, ports.1)
                .build(&[0x5a; 300])
        };
        for (side, frame) in [
            (Side::Client, udp(client, nat_vip, (40_200, 53))),
            (Side::Client, udp(client, dsr_vip, (40_201, 53))),
            (Side::Backends, udp(backend, client, (8080, 40_200))),
        ] {
            seeds.extend(split(&frame, 160, id).map(|f| (side, f)));
        }
    }
    seeds
}

/// Client → DSR VIP packets (SYN, ACK with data; TCP and UDP; with and without a VLAN
/// tag), and frag-needed / packet-too-big sent to a DSR VIP about its backend's reply.
fn dsr_seeds() -> Vec<(Side, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (vip, _, _) in DSR_VIPS {
        let vip = ip(vip);
        let (family, client) = if vip.is_ipv4() {
            (Family::V4, ip("198.18.0.1"))
        } else {
            (Family::V6, ip("fd00::1"))
        };
        for transport in [Transport::Tcp, Transport::Udp] {
            for vlan in [false, true] {
                seeds.extend(opening_and_data(
                    family, transport, vlan, client, vip, 40_100,
                ));
            }
        }
    }
    seeds
}

/// A client's opening packet (empty) and a data packet of the same flow to `vip`'s port
/// for `transport` (TCP 80, UDP 53), tagged or not.
fn opening_and_data(
    family: Family,
    transport: Transport,
    vlan: bool,
    client: IpAddr,
    vip: IpAddr,
    client_port: u16,
) -> [(Side, Vec<u8>); 2] {
    let port = if transport == Transport::Tcp { 80 } else { 53 };
    let spec = Spec::new(family, transport);
    let request = if vlan { spec.with_vlan() } else { spec }
        .between(client, vip)
        .ports(client_port, port);
    [
        (Side::Client, request.build(&[])),
        (Side::Client, request.ack().build(b"GET / HTTP/1.0\r\n\r\n")),
    ]
}

fn transport_seeds() -> Vec<(Side, Vec<u8>)> {
    let mut seeds = Vec::new();
    for family in [Family::V4, Family::V4Options, Family::V6] {
        let v6 = family == Family::V6;
        let (client, vip, backend) = if v6 {
            (ip("fd00::1"), ip("fd00:1::1"), ip("fd00:2::2"))
        } else {
            (ip("198.18.0.1"), ip("198.18.1.1"), ip("198.18.2.2"))
        };
        for transport in [Transport::Tcp, Transport::Udp] {
            for vlan in [false, true] {
                let tag = |s: Spec| if vlan { s.with_vlan() } else { s };
                seeds.extend(opening_and_data(
                    family, transport, vlan, client, vip, 40_000,
                ));
                seeds.push((Side::Client, tag(Spec::new(family, transport)).build(b"x")));
                let reply = tag(Spec::new(family, transport))
                    .between(backend, client)
                    .ports(8080, 40_000)
                    .ack();
                seeds.push((Side::Backends, reply.build(b"200 OK")));
            }
        }
    }
    seeds
}

/// ICMP seeds, both families: an echo request to the VIP, frag-needed / packet-too-big
/// sent to the VIP about its reply, and a backend's port unreachable about a datagram.
fn icmp_seeds() -> Vec<(Side, Vec<u8>)> {
    use etherparse::{
        Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4::DestUnreachableHeader,
        icmpv6::DestUnreachableCode,
    };
    let mut seeds = Vec::new();
    for v6 in [false, true] {
        let (family, client, vip, backend, router) = if v6 {
            (
                Family::V6,
                ip("fd00::1"),
                ip("fd00:1::1"),
                ip("fd00:2::2"),
                ip("fd00::fe"),
            )
        } else {
            (
                Family::V4,
                ip("198.18.0.1"),
                ip("198.18.1.1"),
                ip("198.18.2.2"),
                ip("198.18.0.254"),
            )
        };
        let ip_packet = |frame: Vec<u8>| frame[14..].to_vec();
        let reply = ip_packet(
            Spec::new(family, Transport::Tcp)
                .between(vip, client)
                .ports(80, 40_000)
                .ack()
                .build(&[7; 32]),
        );
        let delivered = ip_packet(
            Spec::new(family, Transport::Udp)
                .between(client, backend)
                .ports(40_000, 8080)
                .build(b"query"),
        );
        let eth = || PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let (mut echo, mut too_big, mut unreachable) = (Vec::new(), Vec::new(), Vec::new());
        let built = match (client, vip, backend, router) {
            (IpAddr::V4(c), IpAddr::V4(v), IpAddr::V4(b), IpAddr::V4(r)) => {
                let (c, v, b, r) = (c.octets(), v.octets(), b.octets(), r.octets());
                let unreach = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
                let frag = Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
                );
                eth()
                    .ipv4(c, v, 64)
                    .icmpv4_echo_request(1, 1)
                    .write(&mut echo, b"ping")
                    .and_then(|()| {
                        eth()
                            .ipv4(r, v, 64)
                            .icmpv4(frag)
                            .write(&mut too_big, &reply)
                    })
                    .and_then(|()| {
                        eth()
                            .ipv4(b, c, 64)
                            .icmpv4(unreach)
                            .write(&mut unreachable, &delivered)
                    })
            }
            (IpAddr::V6(c), IpAddr::V6(v), IpAddr::V6(b), IpAddr::V6(r)) => {
                let (c, v, b, r) = (c.octets(), v.octets(), b.octets(), r.octets());
                let unreach = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
                let big = Icmpv6Type::PacketTooBig { mtu: 1280 };
                eth()
                    .ipv6(c, v, 64)
                    .icmpv6_echo_request(1, 1)
                    .write(&mut echo, b"ping")
                    .and_then(|()| eth().ipv6(r, v, 64).icmpv6(big).write(&mut too_big, &reply))
                    .and_then(|()| {
                        eth()
                            .ipv6(b, c, 64)
                            .icmpv6(unreach)
                            .write(&mut unreachable, &delivered)
                    })
            }
            _ => panic!("one family per seed"),
        };
        built.expect("build the ICMP seeds");
        seeds.push((Side::Client, echo));
        seeds.push((Side::Client, too_big));
        seeds.push((Side::Backends, unreachable));
    }
    seeds
}

/// One to four mutations of `packet`: truncations, random bytes, single-bit flips, mostly
/// in the headers (the first 96 bytes).
pub fn mutate(rng: &mut Rng, packet: &[u8]) -> Vec<u8> {
    let mut out = packet.to_vec();
    for _ in 0..=rng.below(4) {
        let headers = out.len().min(96);
        match rng.below(5) {
            // The kernel refuses test-run frames below 14 bytes.
            0 => out.truncate(14 + rng.below(out.len().saturating_sub(13))),
            1 => {
                let at = rng.below(headers);
                out[at] = rng.next_u64() as u8;
            }
            2 => {
                let at = rng.below(headers);
                out[at] ^= 1 << rng.below(8);
            }
            // The QUIC header and connection ID of a datagram (or what lies there): its
            // form and type bits, version, ID length, config bits and server id.
            4 => {
                let at = (42 + rng.below(28)).min(out.len() - 1);
                out[at] = match rng.below(4) {
                    0 => [0x40, 0xc0, 0xe0, 0xf0, 0xff, 0x00][rng.below(6)],
                    1 => out[at] ^ 0xe0,
                    _ => rng.next_u64() as u8,
                };
            }
            _ => {
                let at = rng.below(out.len());
                out[at] = rng.next_u64() as u8;
            }
        }
    }
    out
}

fn moved(delta: &CounterDelta, kind: StatKind) -> Vec<Stat> {
    Stat::ALL
        .iter()
        .copied()
        .filter(|s| s.kind() == kind)
        .flat_map(|s| std::iter::repeat_n(s, delta.packets(s) as usize))
        .collect()
}

/// Runs `packet` and checks every property; the reason it broke one.
pub fn check(
    datapath: &mut Datapath,
    ids: &Ids,
    side: Side,
    packet: &[u8],
) -> Result<Stat, String> {
    datapath.set_ingress(match side {
        Side::Client => ids.from_client,
        Side::Backends => ids.from_backends,
    });
    let (verdict, delta) = datapath.run_counted(packet);
    let verdicts = moved(&delta, StatKind::Verdict);
    let reasons = moved(&delta, StatKind::Reason);
    let [reason] = reasons[..] else {
        return Err(format!("counted under {reasons:?}, not exactly one reason"));
    };
    if verdicts.len() != 1 || verdicts[0] != Stat::for_action(verdict.action) {
        return Err(format!(
            "verdict {} counted as {verdicts:?}",
            verdict.action
        ));
    }
    // The kernel sends these on after the rewrite: it resolves the neighbour, fragments,
    // or sends them out of an interface lb is not attached to.
    let rewritten_then_passed = matches!(
        reason,
        Stat::PassNoNeighbour | Stat::PassFragmentationNeeded | Stat::PassEgressNotAttached
    );
    let icmp_out = matches!(
        reason,
        Stat::IcmpEchoReply
            | Stat::IcmpTooBigSent
            | Stat::ForwardIcmpToBackend
            | Stat::ForwardIcmpToClient
    );
    let name = reason.name();
    let quic = moved(&delta, StatKind::Quic);
    let looked = quic.iter().filter(|&&s| s != Stat::QuicRepinned).count();
    if looked > 1 || quic.len() > looked + 1 {
        return Err(format!(
            "QUIC cases {quic:?} ({name}): at most one, and one re-pin"
        ));
    }
    // Where a packet went by its ID is checked when it went somewhere: a route that ends
    // here (a mutated source address, say) passes it to the kernel untouched.
    let sent = matches!(verdict.action, XDP_TX | XDP_REDIRECT) || rewritten_then_passed;
    if sent && quic.contains(&Stat::QuicByServerId) {
        let named = quic_server(packet);
        let reached = quietly(|| inspect(&verdict.packet))
            .ok()
            .map(|(wire, _)| wire.dst);
        if named.is_none() || named != reached {
            return Err(format!(
                "by server id ({name}) to {reached:?}, but the ID names {named:?}"
            ));
        }
    }
    let encapsulated = delta.packets(Stat::DsrIpipEncapsulated);
    let gue = delta.packets(Stat::DsrGueEncapsulated);
    let l2 = delta.packets(Stat::DsrL2Forwarded);
    if encapsulated + gue + l2 > 0 {
        if encapsulated + gue + l2 != 1 || !matches!(verdict.action, XDP_TX | XDP_REDIRECT) {
            return Err(format!(
                "DSR counters {encapsulated} + {gue} + {l2} with verdict {} ({name})",
                verdict.action
            ));
        }
        let checked = if encapsulated + gue == 1 {
            check_encapsulated(packet, &verdict.packet, gue == 1)
        } else {
            check_macs_only(packet, &verdict.packet)
        };
        checked.map_err(|why| format!("sent by DSR ({name}) {why}"))?;
        return Ok(reason);
    }
    if icmp_out {
        // Parsed whatever its checksums: where it goes is checked below in every case.
        let (wire, bad) = quietly(|| inspect_icmp(&verdict.packet))
            .map_err(|why| format!("answered ({name}) but malformed: {why}"))?;
        excuse_checksums(&bad, &verdict.packet, || {
            quietly(|| inspect_icmp(packet)).map(|(_, bad)| bad)
        })
        .map_err(|why| format!("answered ({name}) with a {why}"))?;
        icmp_destination(reason, packet, wire.src, wire.dst)
            .map_err(|why| format!("answered ({name}) {why}"))?;
        return Ok(reason);
    }
    if matches!(verdict.action, XDP_TX | XDP_REDIRECT)
        || (verdict.action == XDP_PASS && rewritten_then_passed)
    {
        if let Some(wire) = fragments::inspect(&verdict.packet) {
            return check_fragment(&wire, &verdict.packet)
                .map(|()| reason)
                .map_err(|why| format!("forwarded a fragment ({name}) {why}"));
        }
    }
    match verdict.action {
        XDP_PASS if !rewritten_then_passed => {
            if verdict.packet != packet {
                return Err(format!("passed ({name}) but changed"));
            }
            Ok(reason)
        }
        XDP_PASS | XDP_TX | XDP_REDIRECT => {
            // Parsed whatever its checksums: where it goes is checked below in every case.
            let (wire, bad) = quietly(|| inspect(&verdict.packet))
                .map_err(|why| format!("forwarded ({name}) but malformed: {why}"))?;
            excuse_checksums(&bad, &verdict.packet, || {
                quietly(|| inspect(packet)).map(|(_, bad)| bad)
            })
            .map_err(|why| format!("forwarded ({name}) with a {why}"))?;
            let to_backend = BACKENDS.iter().any(|b| ip(b) == wire.dst)
                && [8080, QUIC_BACKEND_PORT].contains(&wire.dst_port);
            let from_vip = VIPS
                .iter()
                .any(|(v, p)| ip(v) == wire.src && *p == wire.src_port);
            if !(to_backend || from_vip) {
                return Err(format!(
                    "forwarded ({name}) to {}:{} from {}:{}: neither a backend nor a VIP reply",
                    wire.dst, wire.dst_port, wire.src, wire.src_port
                ));
            }
            Ok(reason)
        }
        XDP_DROP if name.starts_with("drop_") => Ok(reason),
        other => Err(format!("verdict {other} with reason {name}")),
    }
}

/// A forwarded fragment: a right IPv4 header checksum (or 0xffff for zero), and toward a
/// backend address or from a VIP address; a first fragment's ports (when its UDP/TCP
/// header is there) say a backend's port 8080 or the VIP's.
fn check_fragment(wire: &fragments::FragmentWire, frame: &[u8]) -> Result<(), String> {
    if !wire.header_checksum_ok && !ipv4_header_sums_to_zero(frame) {
        return Err("with a wrong IPv4 header checksum".to_owned());
    }
    let to_backend = BACKENDS.iter().any(|b| ip(b) == wire.dst);
    let from_vip = VIPS.iter().any(|(v, _)| ip(v) == wire.src);
    if !(to_backend || from_vip) {
        return Err(format!(
            "to {} from {}: neither a backend nor a VIP reply",
            wire.dst, wire.src
        ));
    }
    if wire.offset == 0
        && let Some(ports) = wire.payload.get(..4)
    {
        let (src_port, dst_port) = (
            u16::from_be_bytes([ports[0], ports[1]]),
            u16::from_be_bytes([ports[2], ports[3]]),
        );
        let from_vip_port = VIPS
            .iter()
            .any(|(v, p)| ip(v) == wire.src && *p == src_port);
        if !((to_backend && dst_port == 8080) || from_vip_port) {
            return Err(format!(
                "to {}:{dst_port} from {}:{src_port}: neither a backend nor a VIP reply",
                wire.dst, wire.src
            ));
        }
    }
    Ok(())
}

/// Where the IP header of a frame starts (after one optional VLAN tag), and the EtherType
/// offset.
fn l3_offset(frame: &[u8]) -> Option<(usize, usize)> {
    match frame.get(12..14)? {
        [0x81, 0x00] | [0x88, 0xa8] => Some((18, 16)),
        _ => Some((14, 12)),
    }
}

fn dsr_backends() -> Vec<IpAddr> {
    DSR_VIPS
        .iter()
        .flat_map(|(_, _, backends)| backends.map(ip))
        .collect()
}

/// A dsr-ipip (or, `gue`, dsr-gue) output: the input's L2 header (tag included) with the
/// outer family's EtherType, a well-formed outer header toward a DSR backend from the outer
/// source prefix (dsr-gue: then UDP to the GUE port, GUE and a hop list of DSR backends
/// starting with the destination), and behind it the input's IP packet byte for byte.
fn check_encapsulated(input: &[u8], output: &[u8], gue: bool) -> Result<(), String> {
    let (l3_in, _) = l3_offset(input).ok_or("from an input with no Ethernet header")?;
    let (l3, ethertype_at) = l3_offset(output).ok_or("with no Ethernet header")?;
    if l3 != l3_in || output.get(12..ethertype_at) != input.get(12..ethertype_at) {
        return Err("with another VLAN tag than the input's".to_owned());
    }
    let inner_in = input.get(l3_in..).ok_or("from an input cut short")?;
    let version = inner_in.first().map(|b| b >> 4);
    let (outer_len, src, dst, protocol, total) = match output.get(ethertype_at..ethertype_at + 2) {
        Some([0x08, 0x00]) => {
            let header: [u8; 20] = output
                .get(l3..l3 + 20)
                .and_then(|h| h.try_into().ok())
                .ok_or("with its outer IPv4 header cut short")?;
            if header[0] != 0x45 || header[8] != 64 {
                return Err(format!(
                    "with outer IPv4 version/IHL {:#x}, TTL {}",
                    header[0], header[8]
                ));
            }
            let mut sum: u32 = header
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            if sum != 0xffff {
                return Err("with a wrong outer IPv4 header checksum".to_owned());
            }
            let src: [u8; 4] = header[12..16].try_into().map_err(|_| "source")?;
            let dst: [u8; 4] = header[16..20].try_into().map_err(|_| "destination")?;
            let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
            (20, IpAddr::from(src), IpAddr::from(dst), header[9], total)
        }
        Some([0x86, 0xdd]) => {
            let header = output
                .get(l3..l3 + 40)
                .ok_or("with its outer IPv6 header cut short")?;
            if header[0] >> 4 != 6 || header[7] != 64 {
                return Err("with a bad outer IPv6 version or hop limit".to_owned());
            }
            let src: [u8; 16] = header[8..24].try_into().map_err(|_| "source")?;
            let dst: [u8; 16] = header[24..40].try_into().map_err(|_| "destination")?;
            let payload = usize::from(u16::from_be_bytes([header[4], header[5]]));
            (
                40,
                IpAddr::from(src),
                IpAddr::from(dst),
                header[6],
                payload + 40,
            )
        }
        other => return Err(format!("with EtherType {other:02x?}")),
    };
    let expected_protocol = match version {
        _ if gue => 17,
        Some(4) => 4,
        _ => 41,
    };
    if protocol != expected_protocol {
        return Err(format!(
            "with outer protocol {protocol} around IP version {version:?}"
        ));
    }
    if !dsr_backends().contains(&dst) {
        return Err(format!("to {dst}, not a DSR backend"));
    }
    let source_prefix = if dst.is_ipv4() {
        DSR_SOURCE_V4
    } else {
        DSR_SOURCE_V6
    };
    let prefix: Prefix = source_prefix.parse().map_err(|_| "prefix")?;
    let inside = match (src, prefix.addr) {
        (IpAddr::V4(a), IpAddr::V4(p)) => (u32::from(a) ^ u32::from(p)) >> (32 - prefix.len) == 0,
        (IpAddr::V6(a), IpAddr::V6(p)) => {
            (u128::from(a) ^ u128::from(p)) >> (128 - prefix.len) == 0
        }
        _ => false,
    };
    if !inside {
        return Err(format!("from {src}, outside {source_prefix}"));
    }
    let outer_len = if gue {
        outer_len
            + check_gue(
                output.get(l3 + outer_len..).ok_or("with no UDP")?,
                dst,
                version,
            )?
    } else {
        outer_len
    };
    let inner_out = output.get(l3 + outer_len..).ok_or("with no inner packet")?;
    if inner_out != inner_in {
        return Err("with an inner packet that is not the input's".to_owned());
    }
    // The outer length covers the inner packet as its own header says (the frame may
    // carry trailing bytes after it).
    let inner_len = total
        .checked_sub(outer_len)
        .ok_or("with an outer length too short")?;
    if inner_len > inner_in.len() || inner_len < 20 {
        return Err(format!(
            "with an outer length {total} for {} inner bytes",
            inner_in.len()
        ));
    }
    Ok(())
}

/// dsr-gue's UDP, GUE header and hop list at the start of `udp`: to the GUE port, Hlen
/// covering the list, every hop a DSR backend of the destination's family and the first
/// the destination, `next` 1. Returns their length.
fn check_gue(udp: &[u8], dst: IpAddr, version: Option<u8>) -> Result<usize, String> {
    let fixed = udp.get(..16).ok_or("with UDP and GUE cut short")?;
    if u16::from_be_bytes([fixed[2], fixed[3]]) != lb_common::gue::DEFAULT_GUE_PORT
        || fixed[6..8] != [0, 0]
    {
        return Err("with UDP not to the GUE port or with a checksum".to_owned());
    }
    let hlen = usize::from(fixed[8] & 0x1f) * 4;
    let proto = if version == Some(4) { 4 } else { 41 };
    if fixed[8] & 0xe0 != 0 || fixed[9] != proto || fixed[10..12] != [0, 0] {
        return Err(format!("with GUE header {:02x?}", &fixed[8..12]));
    }
    let hop_len = if dst.is_ipv4() { 4 } else { 16 };
    let count = usize::from(fixed[14]);
    if fixed[12..14] != *b"lb" || fixed[15] != 1 || count == 0 || hlen != 4 + count * hop_len {
        return Err(format!(
            "with hop list header {:02x?}, Hlen {hlen}",
            &fixed[12..16]
        ));
    }
    let list = udp
        .get(16..12 + hlen)
        .ok_or("with its hop list cut short")?;
    let hops: Vec<IpAddr> = list
        .chunks(hop_len)
        .map(|a| match <[u8; 4]>::try_from(a) {
            Ok(v4) => IpAddr::from(v4),
            Err(_) => IpAddr::from(<[u8; 16]>::try_from(a).unwrap_or_default()),
        })
        .collect();
    if hops.first() != Some(&dst) || !hops.iter().all(|h| dsr_backends().contains(h)) {
        return Err(format!("with hops {hops:?} toward {dst}"));
    }
    Ok(8 + 4 + hlen)
}

/// A dsr-l2 output: the input with new MACs, nothing else.
fn check_macs_only(input: &[u8], output: &[u8]) -> Result<(), String> {
    if output.len() != input.len() || output.get(12..) != input.get(12..) {
        return Err("changed more than the MACs".to_owned());
    }
    Ok(())
}

/// Whether each wrong checksum of an output frame is excused; the first that is not.
///
/// Checksums are updated, not verified (as in every NAT): a wrong TCP/UDP or ICMP checksum
/// in stays wrong out, and the receiver drops it; so one is excused when `input_bad` (the
/// input's own wrong checksums, or why it does not parse) says the input's was wrong too.
/// An IPv4 header checksum of 0xffff where etherparse computes 0x0000 (the same one's
/// complement zero) is excused. Anything else must come out right.
fn excuse_checksums(
    bad: &[BadChecksum],
    frame: &[u8],
    input_bad: impl FnOnce() -> Result<Vec<BadChecksum>, String>,
) -> Result<(), String> {
    if bad.is_empty() {
        return Ok(());
    }
    let input_bad = input_bad();
    for &checksum in bad {
        let excused = match checksum {
            BadChecksum::Ipv4Header => ipv4_header_sums_to_zero(frame),
            BadChecksum::L4 => input_bad.as_ref().is_ok_and(|b| b.contains(&checksum)),
            // An ICMP input etherparse cannot parse cannot be told right: its checksum
            // covers everything it quotes, and an update keeps whatever it was.
            BadChecksum::Icmp => input_bad.as_ref().map_or(true, |b| b.contains(&checksum)),
        };
        if !excused {
            return Err(format!(
                "{} that the input did not have ({input_bad:?})",
                describe(&[checksum])
            ));
        }
    }
    Ok(())
}

/// Where an ICMP message the datapath sent may go, given the packet that caused it: an
/// answer (echo reply, too-big) goes back to the sender; an error about a flow goes to the
/// flow's backend, or to its client; no backend address ever leaves toward a client.
fn icmp_destination(reason: Stat, input: &[u8], src: IpAddr, dst: IpAddr) -> Result<(), String> {
    let (in_src, in_dst) = outer_addresses(input).ok_or("about an input with no IP header")?;
    let is_backend = |a: IpAddr| BACKENDS.iter().any(|b| ip(b) == a);
    let is_vip = |a: IpAddr| VIPS.iter().any(|(v, _)| ip(v) == a);
    let fine = match reason {
        Stat::IcmpEchoReply => is_vip(in_dst) && (src, dst) == (in_dst, in_src),
        Stat::IcmpTooBigSent => dst == in_src && !is_backend(src),
        Stat::ForwardIcmpToBackend => is_backend(dst) && src == in_src,
        Stat::ForwardIcmpToClient => {
            dst == in_dst && !is_backend(src) && (!is_backend(in_src) || is_vip(src))
        }
        _ => false,
    };
    if fine {
        Ok(())
    } else {
        Err(format!(
            "from {src} to {dst}, about a packet from {in_src} to {in_dst}"
        ))
    }
}

/// The outer IP source and destination of an Ethernet frame (with or without one VLAN tag),
/// read at their fixed offsets.
fn outer_addresses(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let (ethertype, l3) = match frame.get(12..14)? {
        [0x81, 0x00] | [0x88, 0xa8] => (frame.get(16..18)?, 18),
        ethertype => (ethertype, 14),
    };
    match ethertype {
        [0x08, 0x00] => {
            let src: [u8; 4] = frame.get(l3 + 12..l3 + 16)?.try_into().ok()?;
            let dst: [u8; 4] = frame.get(l3 + 16..l3 + 20)?.try_into().ok()?;
            Some((src.into(), dst.into()))
        }
        [0x86, 0xdd] => {
            let src: [u8; 16] = frame.get(l3 + 8..l3 + 24)?.try_into().ok()?;
            let dst: [u8; 16] = frame.get(l3 + 24..l3 + 40)?.try_into().ok()?;
            Some((src.into(), dst.into()))
        }
        _ => None,
    }
}

/// Whether the IPv4 header of an Ethernet frame sums to one's complement zero.
fn ipv4_header_sums_to_zero(frame: &[u8]) -> bool {
    let l3 = match frame.get(12..14) {
        Some([0x81, 0x00] | [0x88, 0xa8]) => 18,
        _ => 14,
    };
    let Some(&first) = frame.get(l3) else {
        return false;
    };
    let Some(header) = frame.get(l3..l3 + usize::from(first & 0x0f) * 4) else {
        return false;
    };
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Runs a verifier that panics on a bad packet; its panic message as the error, unprinted.
fn quietly<T>(verify: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(verify)).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    });
    std::panic::set_hook(hook);
    result
}

/// Saved failing inputs to replay: `<side byte><packet>` files in `dir`, by name. An error
/// when `dir` cannot be read (a missing folder would otherwise replay nothing and pass) or
/// when a file in it cannot be read or is empty.
pub fn regressions(dir: &Path) -> Result<Vec<(String, Side, Vec<u8>)>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the regressions folder {}: {e}", dir.display()))?;
    let mut saved = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("listing {}: {e}", dir.display()))?;
        let path = entry.path();
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some((&side, packet)) = bytes.split_first() else {
            return Err(format!("{}: empty, not a saved input", path.display()));
        };
        let side = match side {
            0 => Side::Client,
            1 => Side::Backends,
            other => return Err(format!("{}: side byte {other}, not 0 or 1", path.display())),
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        saved.push((name, side, packet.to_vec()));
    }
    saved.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(saved)
}

/// Keeps a failing input as a regression golden packet.
pub fn save(dir: &Path, name: &str, side: Side, packet: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut bytes = vec![u8::from(side == Side::Backends)];
    bytes.extend_from_slice(packet);
    std::fs::write(dir.join(name), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DSR output checks accept an encapsulation done right and refuse each way of
    /// getting it wrong (a checker that accepted anything would prove nothing).
    #[test]
    fn dsr_output_checks_refuse_what_is_wrong() {
        use crate::tunnel::{Outer, encapsulate};
        let input = Spec::new(Family::V4, Transport::Tcp)
            .between(ip("198.18.0.1"), ip("198.18.1.20"))
            .ports(40_100, 80)
            .build(b"data");
        let good = encapsulate(
            Outer::V4 {
                src: [198, 19, 7, 9],
                dst: [198, 18, 2, 2],
                options: false,
            },
            &input[14..],
        );
        assert_eq!(check_encapsulated(&input, &good, false), Ok(()));
        let outside = encapsulate(
            Outer::V4 {
                src: [198, 19, 8, 9],
                dst: [198, 18, 2, 2],
                options: false,
            },
            &input[14..],
        );
        let not_a_backend = encapsulate(
            Outer::V4 {
                src: [198, 19, 7, 9],
                dst: [198, 18, 2, 9],
                options: false,
            },
            &input[14..],
        );
        let mut changed_inner = good.clone();
        *changed_inner.last_mut().expect("payload") ^= 1;
        let mut bad_checksum = good;
        bad_checksum[14 + 10] ^= 1;
        for (name, wrong) in [
            ("source outside the prefix", outside),
            ("not a DSR backend", not_a_backend),
            ("inner packet changed", changed_inner),
            ("outer checksum", bad_checksum),
        ] {
            assert!(
                check_encapsulated(&input, &wrong, false).is_err(),
                "{name} accepted"
            );
        }
        let mut macs = input.clone();
        macs[..12].fill(7);
        assert_eq!(check_macs_only(&input, &macs), Ok(()));
        let mut more = macs.clone();
        *more.last_mut().expect("payload") ^= 1;
        assert!(check_macs_only(&input, &more).is_err());
    }

    #[test]
    fn mutations_are_deterministic_and_stay_testable() {
        let seed = &seeds()[0].1;
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let (x, y) = (mutate(&mut a, seed), mutate(&mut b, seed));
            assert_eq!(x, y);
            assert!(x.len() >= 14 && x.len() <= seed.len());
        }
    }

    #[test]
    fn the_checked_in_regressions_are_all_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
        let saved = regressions(&dir).expect("tests/regressions is in the repository");
        let files = std::fs::read_dir(&dir).expect("list").count();
        assert!(files > 0, "tests/regressions is empty");
        assert_eq!(saved.len(), files, "every file is replayed");
    }

    #[test]
    fn a_missing_or_bad_regressions_folder_is_an_error() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let missing = dir.path().join("missing");
        assert!(regressions(&missing).is_err(), "a missing folder passes");
        std::fs::write(dir.path().join("empty.bin"), b"").expect("write");
        assert!(regressions(dir.path()).is_err(), "an empty file passes");
    }

    #[test]
    fn a_failed_save_is_an_error_and_a_saved_input_replays() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").expect("write");
        assert!(save(&file, "x.bin", Side::Client, &[1, 2, 3]).is_err());
        save(dir.path(), "y.bin", Side::Backends, &[4, 5]).expect("save");
        std::fs::remove_file(&file).expect("remove");
        let saved = regressions(dir.path()).expect("replay");
        assert_eq!(
            saved,
            vec![("y.bin".to_owned(), Side::Backends, vec![4, 5])]
        );
    }

    #[test]
    fn icmp_answers_must_go_back_and_errors_never_show_a_backend() {
        let echo = |src: &str, dst: &str| {
            let mut frame = vec![0u8; 14 + 20];
            frame[12..14].copy_from_slice(&[0x08, 0x00]);
            let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
                panic!("IPv4");
            };
            frame[26..30].copy_from_slice(&s.octets());
            frame[30..34].copy_from_slice(&d.octets());
            frame
        };
        let request = echo("198.18.0.1", "198.18.1.1");
        let (client, vip) = (ip("198.18.0.1"), ip("198.18.1.1"));
        let ok = |reason, src, dst| icmp_destination(reason, &request, src, dst).is_ok();
        assert!(ok(Stat::IcmpEchoReply, vip, client));
        assert!(!ok(Stat::IcmpEchoReply, vip, ip("198.18.2.2")));
        assert!(!ok(Stat::IcmpEchoReply, client, vip));
        let from_backend = echo("198.18.2.2", "198.18.0.1");
        let to_client =
            |src| icmp_destination(Stat::ForwardIcmpToClient, &from_backend, src, client);
        to_client(vip).unwrap();
        assert!(to_client(ip("198.18.2.2")).is_err(), "the backend leaked");
    }
}
