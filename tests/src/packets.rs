//! Golden packet builders (etherparse) and the header boundaries of a built packet.

use std::net::IpAddr;

use etherparse::{IpHeaders, Ipv4Header, Ipv4Options, PacketBuilder, VlanId};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_V4: [u8; 4] = [198, 18, 0, 1];
pub const LB_V4: [u8; 4] = [198, 18, 0, 2];
pub const CLIENT_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const LB_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    /// IPv4 with 8 bytes of options (NOP padding and end of list).
    V4Options,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// A packet description; `build` turns it into bytes with valid checksums.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub family: Family,
    pub transport: Transport,
    pub vlan: bool,
    pub src_port: u16,
    pub dst_port: u16,
    /// Source and destination (default: client → lb host); must match `family`.
    pub addrs: Option<(IpAddr, IpAddr)>,
    pub ttl: u8,
    /// TCP: SYN (a new connection) rather than a bare ACK.
    pub syn: bool,
    /// TCP, with ACK: FIN set too.
    pub fin: bool,
    /// TCP, with ACK: RST set too.
    pub rst: bool,
    /// TCP, with ACK: the acknowledgment number.
    pub ack_number: u32,
}

impl Spec {
    pub const fn new(family: Family, transport: Transport) -> Self {
        Self {
            family,
            transport,
            vlan: false,
            src_port: 40_000,
            dst_port: 80,
            addrs: None,
            ttl: 64,
            syn: true,
            fin: false,
            rst: false,
            ack_number: 7,
        }
    }

    /// A bare ACK acknowledging `number`.
    #[must_use]
    pub const fn acking(mut self, number: u32) -> Self {
        self.syn = false;
        self.ack_number = number;
        self
    }

    /// An ACK with FIN.
    #[must_use]
    pub const fn fin(mut self) -> Self {
        self.syn = false;
        self.fin = true;
        self
    }

    /// An ACK with RST.
    #[must_use]
    pub const fn rst(mut self) -> Self {
        self.syn = false;
        self.rst = true;
        self
    }

    #[must_use]
    pub const fn between(mut self, src: IpAddr, dst: IpAddr) -> Self {
        self.addrs = Some((src, dst));
        self
    }

    #[must_use]
    pub const fn ports(mut self, src: u16, dst: u16) -> Self {
        self.src_port = src;
        self.dst_port = dst;
        self
    }

    #[must_use]
    pub const fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    #[must_use]
    pub const fn ack(mut self) -> Self {
        self.syn = false;
        self
    }

    fn v4(&self) -> ([u8; 4], [u8; 4]) {
        match self.addrs {
            Some((IpAddr::V4(s), IpAddr::V4(d))) => (s.octets(), d.octets()),
            _ => (CLIENT_V4, LB_V4),
        }
    }

    fn v6(&self) -> ([u8; 16], [u8; 16]) {
        match self.addrs {
            Some((IpAddr::V6(s), IpAddr::V6(d))) => (s.octets(), d.octets()),
            _ => (CLIENT_V6, LB_V6),
        }
    }

    #[must_use]
    pub const fn with_vlan(mut self) -> Self {
        self.vlan = true;
        self
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
        let vlan_id = VlanId::try_new(100).expect("valid VLAN id");
        macro_rules! finish {
            ($ip:expr) => {{
                let mut out = Vec::new();
                match self.transport {
                    Transport::Tcp if self.syn => $ip
                        .tcp(self.src_port, self.dst_port, 1, 64_000)
                        .syn()
                        .write(&mut out, payload),
                    Transport::Tcp => {
                        let tcp = $ip
                            .tcp(self.src_port, self.dst_port, 1, 64_000)
                            .ack(self.ack_number);
                        let tcp = if self.fin { tcp.fin() } else { tcp };
                        let tcp = if self.rst { tcp.rst() } else { tcp };
                        tcp.write(&mut out, payload)
                    }
                    Transport::Udp => $ip
                        .udp(self.src_port, self.dst_port)
                        .write(&mut out, payload),
                }
                .expect("build packet");
                out
            }};
        }
        let ((s4, d4), (s6, d6), ttl) = (self.v4(), self.v6(), self.ttl);
        match (self.family, self.vlan) {
            (Family::V4, false) => finish!(eth.ipv4(s4, d4, ttl)),
            (Family::V4, true) => finish!(eth.single_vlan(vlan_id).ipv4(s4, d4, ttl)),
            (Family::V6, false) => finish!(eth.ipv6(s6, d6, ttl)),
            (Family::V6, true) => finish!(eth.single_vlan(vlan_id).ipv6(s6, d6, ttl)),
            (Family::V4Options, vlan) => {
                let ip = ipv4_with_options(s4, d4, ttl);
                if vlan {
                    finish!(eth.single_vlan(vlan_id).ip(ip))
                } else {
                    finish!(eth.ip(ip))
                }
            }
        }
    }

    /// Offsets where a header ends: Ethernet, VLAN tag (if any), IP, L4.
    pub fn boundaries(&self) -> Vec<(usize, Layer)> {
        let mut at = 14;
        let mut out = vec![(at, Layer::Ethernet)];
        if self.vlan {
            at += 4;
            out.push((at, Layer::Vlan));
        }
        let (ip_len, ip_layer) = match self.family {
            Family::V4 => (20, Layer::Ipv4),
            Family::V4Options => (28, Layer::Ipv4),
            Family::V6 => (40, Layer::Ipv6),
        };
        at += ip_len;
        out.push((at, ip_layer));
        let (l4_len, l4_layer) = match self.transport {
            Transport::Tcp => (20, Layer::Tcp),
            Transport::Udp => (8, Layer::Udp),
        };
        at += l4_len;
        out.push((at, l4_layer));
        out
    }
}

/// A protocol layer, for truncation tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Ethernet,
    Vlan,
    Ipv4,
    Ipv6,
    Tcp,
    Udp,
}

fn ipv4_with_options(src: [u8; 4], dst: [u8; 4], ttl: u8) -> IpHeaders {
    let mut header =
        Ipv4Header::new(0, ttl, etherparse::IpNumber::TCP, src, dst).expect("valid IPv4 header");
    // NOP x7 then End of Option List: 8 bytes, IHL 7.
    header.options =
        Ipv4Options::try_from(&[1u8, 1, 1, 1, 1, 1, 1, 0][..]).expect("8 option bytes");
    IpHeaders::Ipv4(header, Default::default())
}

/// Every combination the parser must handle.
pub fn all_specs() -> Vec<Spec> {
    let mut specs = Vec::new();
    for family in [Family::V4, Family::V4Options, Family::V6] {
        for transport in [Transport::Tcp, Transport::Udp] {
            specs.push(Spec::new(family, transport));
            specs.push(Spec::new(family, transport).with_vlan());
        }
    }
    specs
}
