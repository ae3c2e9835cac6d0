//! Health probes through the tunnel (dsr-ipip, dsr-gue): the probe of a TCP check is a SYN
//! from the lb's address to the VIP, sent inside the tunnel its VIP's traffic takes, so
//! that a SYN-ACK proves the backend's decapsulation, the VIP on its `lo` and the service
//! listening on the VIP (as Katran's health-check forwarding). A RST answer, or none, fails.
//! Pure: the packets are built and the answer is recognised here; `datapath::tunnel_probe`
//! sends and receives.

use std::net::{IpAddr, SocketAddr};

use lb_common::gue::{GUE_PROTO_IPV4, GUE_PROTO_IPV6, HOPS_MAGIC, hlen_words};

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const IPPROTO_TCP: u8 = 6;

/// One probe: from `local` (the lb's address toward the backend, a port of the probe's
/// own) to the VIP, with its initial sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub local: SocketAddr,
    pub vip: SocketAddr,
    pub seq: u32,
}

/// What a TCP segment received from the VIP says about a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not an answer to this probe.
    Other,
    /// SYN-ACK acknowledging the SYN: the service listens on the VIP.
    Accepted,
    /// RST: nothing listens on the VIP's port.
    Refused,
}

impl Probe {
    /// The SYN, as an IP packet (the inner packet of the tunnel).
    pub fn syn(&self) -> Vec<u8> {
        self.segment(self.seq, 0, TCP_SYN)
    }

    /// The RST that closes the backend's half-open connection after its SYN-ACK.
    pub fn rst(&self) -> Vec<u8> {
        self.segment(self.seq.wrapping_add(1), 0, TCP_RST)
    }

    /// Reads a TCP segment (`tcp`: its header on) that arrived from `from`.
    pub fn answer(&self, from: IpAddr, tcp: &[u8]) -> Answer {
        let Some(header) = tcp.get(..20) else {
            return Answer::Other;
        };
        let sport = u16::from_be_bytes([header[0], header[1]]);
        let dport = u16::from_be_bytes([header[2], header[3]]);
        if from != self.vip.ip() || sport != self.vip.port() || dport != self.local.port() {
            return Answer::Other;
        }
        let ack = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let flags = header[13];
        if flags & TCP_RST != 0 {
            return Answer::Refused;
        }
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && ack == self.seq.wrapping_add(1) {
            return Answer::Accepted;
        }
        Answer::Other
    }

    /// A TCP segment from `local` to the VIP with no payload, in its IP header.
    fn segment(&self, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
        let mut tcp = [0u8; 20];
        tcp[..2].copy_from_slice(&self.local.port().to_be_bytes());
        tcp[2..4].copy_from_slice(&self.vip.port().to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&ack.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&65_535u16.to_be_bytes());
        let mut sum = pseudo_header_sum(self.local.ip(), self.vip.ip(), 20);
        sum += words(&tcp);
        tcp[16..18].copy_from_slice(&fold(sum).to_be_bytes());
        let mut packet = match (self.local.ip(), self.vip.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&40u16.to_be_bytes());
                ip[6] = 0x40;
                ip[8] = 64;
                ip[9] = IPPROTO_TCP;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                let sum = fold(words(&ip));
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                ip.to_vec()
            }
            (src, dst) => {
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&20u16.to_be_bytes());
                ip[6] = IPPROTO_TCP;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&v6_octets(src));
                ip[24..40].copy_from_slice(&v6_octets(dst));
                ip.to_vec()
            }
        };
        packet.extend_from_slice(&tcp);
        packet
    }
}

/// dsr-gue's UDP payload for `inner`: the GUE header and a hop list of one hop, `backend`
/// (the outer family's address), as the lb sends a flow with no second hop.
pub fn gue_payload(backend: IpAddr, inner: &[u8]) -> Vec<u8> {
    let (family, hop) = match backend {
        IpAddr::V4(v4) => (lb_common::consts::FAMILY_V4, v4.octets().to_vec()),
        IpAddr::V6(v6) => (lb_common::consts::FAMILY_V6, v6.octets().to_vec()),
    };
    let proto = if inner.first().map(|b| b >> 4) == Some(4) {
        GUE_PROTO_IPV4
    } else {
        GUE_PROTO_IPV6
    };
    let hlen = hlen_words(1, family) as u8;
    let mut payload = vec![hlen, proto, 0, 0, HOPS_MAGIC[0], HOPS_MAGIC[1], 1, 1];
    payload.extend_from_slice(&hop);
    payload.extend_from_slice(inner);
    payload
}

fn v6_octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
    }
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, len: u32) -> u32 {
    let mut sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => words(&s.octets()) + words(&d.octets()),
        (s, d) => words(&v6_octets(s)) + words(&v6_octets(d)),
    };
    sum += u32::from(IPPROTO_TCP) + len;
    sum
}

fn words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(local: &str, vip: &str) -> Probe {
        Probe {
            local: local.parse().expect("local"),
            vip: vip.parse().expect("vip"),
            seq: 0x1234_5678,
        }
    }

    /// The checksums verify: the IPv4 header sums to all ones, and so does the TCP segment
    /// with its pseudo-header.
    #[test]
    fn the_syn_carries_valid_checksums() {
        for p in [
            probe("198.18.0.1:40000", "198.18.1.1:80"),
            probe("[fd00::1]:40000", "[fd00:1::1]:80"),
        ] {
            let syn = p.syn();
            let ip_len = if p.vip.is_ipv4() { 20 } else { 40 };
            if p.vip.is_ipv4() {
                assert_eq!(fold(words(&syn[..20])), 0, "IPv4 header checksum");
            }
            let tcp = &syn[ip_len..];
            assert_eq!(tcp[13], TCP_SYN);
            let sum = pseudo_header_sum(p.local.ip(), p.vip.ip(), 20) + words(tcp);
            assert_eq!(fold(sum), 0, "TCP checksum of {p:?}");
        }
    }

    #[test]
    fn only_the_probes_own_syn_ack_or_rst_counts() {
        let p = probe("198.18.0.1:40000", "198.18.1.1:80");
        let mut answer = [0u8; 20];
        answer[..2].copy_from_slice(&80u16.to_be_bytes());
        answer[2..4].copy_from_slice(&40000u16.to_be_bytes());
        answer[8..12].copy_from_slice(&0x1234_5679u32.to_be_bytes());
        answer[13] = TCP_SYN | TCP_ACK;
        let vip = p.vip.ip();
        assert_eq!(p.answer(vip, &answer), Answer::Accepted);
        assert_eq!(
            p.answer("198.18.1.2".parse().expect("ip"), &answer),
            Answer::Other
        );
        let mut wrong_ack = answer;
        wrong_ack[11] = 0;
        assert_eq!(p.answer(vip, &wrong_ack), Answer::Other);
        let mut rst = answer;
        rst[13] = TCP_RST | TCP_ACK;
        assert_eq!(p.answer(vip, &rst), Answer::Refused);
        assert_eq!(p.answer(vip, &answer[..10]), Answer::Other);
    }

    #[test]
    fn the_gue_payload_lists_the_backend_alone() {
        let inner = probe("198.18.0.1:40000", "198.18.1.1:80").syn();
        let payload = gue_payload("198.18.2.2".parse().expect("ip"), &inner);
        assert_eq!(payload[..8], [2, GUE_PROTO_IPV4, 0, 0, b'l', b'b', 1, 1]);
        assert_eq!(payload[8..12], [198, 18, 2, 2]);
        assert_eq!(payload[12..], inner[..]);
    }
}
