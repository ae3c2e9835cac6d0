//! How a VIP's packets reach its backends: destination NAT (replies cross the lb), or
//! direct server return (the backend holds the VIP and replies to the client itself).

use std::{fmt, net::IpAddr, str::FromStr};

use lb_common::encap::{EncapSource, MODE_DSR_IPIP, MODE_DSR_L2, MODE_NAT};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Destination NAT to the backend; replies come back through the lb, which gives them
    /// the VIP's address. The backend needs nothing but a route back through the lb.
    #[default]
    Nat,
    /// The packet encapsulated untouched (IPIP, IPv6-in-IPv6, IPv4-in-IPv6) toward the
    /// backend, which decapsulates it (`lb decap attach`) and holds the VIP on `lo`.
    DsrIpip,
    /// The packet sent untouched to the backend's MAC: the backend shares the lb's link
    /// and holds the VIP on `lo` without answering ARP / ND for it.
    DsrL2,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Nat, Mode::DsrIpip, Mode::DsrL2];

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::DsrIpip => "dsr-ipip",
            Mode::DsrL2 => "dsr-l2",
        }
    }

    /// The datapath's `MODE_*` value.
    pub(crate) const fn number(self) -> u8 {
        match self {
            Mode::Nat => MODE_NAT,
            Mode::DsrIpip => MODE_DSR_IPIP,
            Mode::DsrL2 => MODE_DSR_L2,
        }
    }

    pub(crate) const fn from_number(number: u8) -> Option<Self> {
        match number {
            MODE_NAT => Some(Mode::Nat),
            MODE_DSR_IPIP => Some(Mode::DsrIpip),
            MODE_DSR_L2 => Some(Mode::DsrL2),
            _ => None,
        }
    }

    /// Whether the backends reply to clients directly (the lb sees one direction).
    pub const fn is_dsr(self) -> bool {
        !matches!(self, Mode::Nat)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name() == s)
            .ok_or_else(|| format!("unknown mode {s:?} (nat, dsr-ipip or dsr-l2)"))
    }
}

/// An address prefix, `ADDRESS/LENGTH`: where dsr-ipip takes its outer sources from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/LENGTH"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|len| *len <= max)
            .ok_or_else(|| format!("{len:?} is not a prefix length (0..={max})"))?;
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
            return Err(format!("{addr} cannot be a source address"));
        }
        Ok(Prefix { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Prefix {
    /// The datapath's outer sources: the prefix's address with its host bits (at most the
    /// last 32) left to each flow.
    pub fn encap_source(self) -> EncapSource {
        let (addr, family) = match self.addr {
            IpAddr::V4(v4) => (lb_common::service::addr_from_v4(v4.octets()), 4),
            IpAddr::V6(v6) => (v6.octets(), 6),
        };
        let bits = if family == 4 { 32 } else { 128 };
        let host_bits = (bits - u32::from(self.len)).min(32) as u8;
        EncapSource {
            // Host bits are filled per flow over whatever the address had there.
            addr,
            host_bits,
            _pad: [0; 7],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_leave_at_most_32_bits_to_flows() {
        let v4: Prefix = "198.19.7.0/24".parse().expect("prefix");
        assert_eq!(v4.encap_source().host_bits, 8);
        assert_eq!(v4.encap_source().addr[..4], [198, 19, 7, 0]);
        let single: Prefix = "198.18.0.1/32".parse().expect("prefix");
        assert_eq!(single.encap_source().host_bits, 0);
        let v6: Prefix = "fd00:99::/64".parse().expect("prefix");
        assert_eq!(v6.encap_source().host_bits, 32);
        for bad in [
            "198.18.0.1",
            "198.18.0.0/33",
            "fd00::/129",
            "x/8",
            "0.0.0.0/8",
            "::1/128",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names_and_numbers_round_trip() {
        for mode in Mode::ALL {
            assert_eq!(mode.name().parse::<Mode>(), Ok(mode));
            assert_eq!(Mode::from_number(mode.number()), Some(mode));
        }
        assert!("dsr".parse::<Mode>().is_err());
        assert_eq!(Mode::from_number(9), None);
    }
}
