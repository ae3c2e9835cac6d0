//! How a VIP's packets reach its backends: destination NAT (replies cross the lb), or
//! direct server return (the backend holds the VIP and replies to the client itself).

use std::{fmt, net::IpAddr, str::FromStr};

use lb_common::{
    encap::{EncapSource, MODE_DSR_IPIP, MODE_DSR_L2, MODE_NAT},
    gue::MODE_DSR_GUE,
};

use crate::model::prefix::Prefix;
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
    /// As dsr-ipip, inside UDP and GUE with the flow's hop list: a backend without the
    /// flow's connection hands it on to the backend an earlier Maglev table chose (the
    /// second chance), so a backend change does not break connections that ECMP moves
    /// between lb nodes. Backends run `lb decap attach` (same GUE port).
    DsrGue,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Nat, Mode::DsrIpip, Mode::DsrL2, Mode::DsrGue];

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::DsrIpip => "dsr-ipip",
            Mode::DsrL2 => "dsr-l2",
            Mode::DsrGue => "dsr-gue",
        }
    }

    /// The datapath's `MODE_*` value.
    pub(crate) const fn number(self) -> u8 {
        match self {
            Mode::Nat => MODE_NAT,
            Mode::DsrIpip => MODE_DSR_IPIP,
            Mode::DsrL2 => MODE_DSR_L2,
            Mode::DsrGue => MODE_DSR_GUE,
        }
    }

    pub(crate) const fn from_number(number: u8) -> Option<Self> {
        match number {
            MODE_NAT => Some(Mode::Nat),
            MODE_DSR_IPIP => Some(Mode::DsrIpip),
            MODE_DSR_L2 => Some(Mode::DsrL2),
            MODE_DSR_GUE => Some(Mode::DsrGue),
            _ => None,
        }
    }

    /// Whether the backends reply to clients directly (the lb sees one direction).
    pub const fn is_dsr(self) -> bool {
        !matches!(self, Mode::Nat)
    }

    /// Whether packets travel in an outer header from the lb's encap source (dsr-ipip,
    /// dsr-gue), so a backend may be anywhere routable and of either family for an IPv4 VIP.
    pub const fn encapsulates(self) -> bool {
        matches!(self, Mode::DsrIpip | Mode::DsrGue)
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
            .ok_or_else(|| {
                if s.starts_with("dsr") {
                    format!(
                        "`{s}` is not a mode: direct server return is dsr-ipip (encapsulated, \
                         backends anywhere routable, with `lb decap attach`), dsr-gue (as \
                         dsr-ipip, with a second chance) or dsr-l2 (backends on the lb's \
                         own link)"
                    )
                } else {
                    format!("`{s}` is not a mode: nat, dsr-ipip, dsr-gue or dsr-l2")
                }
            })
    }
}

/// The datapath's outer sources for dsr-ipip from a prefix: its address with its host
/// bits (at most the last 32) left to each flow, so that backends' receive-side scaling
/// spreads flows.
pub fn encap_source(prefix: Prefix) -> EncapSource {
    let (addr, bits) = match prefix.addr {
        IpAddr::V4(v4) => (lb_common::service::addr_from_v4(v4.octets()), 32),
        IpAddr::V6(v6) => (v6.octets(), 128),
    };
    EncapSource {
        addr,
        host_bits: (bits - u32::from(prefix.len)).min(32) as u8,
        _pad: [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_leave_at_most_32_bits_to_flows() {
        let source = |text: &str| encap_source(text.parse().expect("prefix"));
        assert_eq!(source("198.19.7.0/24").host_bits, 8);
        assert_eq!(source("198.19.7.0/24").addr[..4], [198, 19, 7, 0]);
        assert_eq!(source("198.18.0.1/32").host_bits, 0);
        assert_eq!(source("fd00:99::/64").host_bits, 32);
        assert_eq!(source("fd00:99::1").host_bits, 0);
    }

    #[test]
    fn names_and_numbers_round_trip() {
        for mode in Mode::ALL {
            assert_eq!(mode.name().parse::<Mode>(), Ok(mode));
            assert_eq!(Mode::from_number(mode.number()), Some(mode));
        }
        "dsr".parse::<Mode>().unwrap_err();
        assert_eq!(Mode::from_number(9), None);
    }
}
