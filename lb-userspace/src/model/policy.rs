//! A VIP's policies for unusual traffic (issue 27): what happens to the tracked flows of a
//! backend its health check marks down (`--on-down`), and which clients may open flows to
//! it (`--allow-source`). Pure data and validation.

use std::{collections::BTreeSet, fmt, net::SocketAddr, str::FromStr};

use lb_common::consts::{BACKEND_FLAG_KEEP_TCP_ON_DOWN, MAX_SOURCE_RANGES_PER_VIP};
use serde::{Deserialize, Serialize};

use crate::model::prefix::Prefix;

/// What a down backend's tracked flows do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDown {
    /// Tracked TCP flows stay on the down backend; UDP flows and new flows move. A check
    /// that fails falsely (an overloaded checker, a lost probe) breaks no connection; a
    /// backend that is really dead loses nothing it still had (see docs/ARCHITECTURE.md).
    #[default]
    KeepTcp,
    /// Every tracked flow moves to a live backend at its next packet (a TCP one is then
    /// answered by a RST there).
    Move,
}

impl OnDown {
    pub const ALL: [OnDown; 2] = [OnDown::KeepTcp, OnDown::Move];

    pub const fn name(self) -> &'static str {
        match self {
            OnDown::KeepTcp => "keep-tcp",
            OnDown::Move => "move",
        }
    }

    /// The `BACKEND_FLAG_*` bits each of the VIP's BACKENDS entries carries.
    pub(crate) const fn backend_flags(self) -> u8 {
        match self {
            OnDown::KeepTcp => BACKEND_FLAG_KEEP_TCP_ON_DOWN,
            OnDown::Move => 0,
        }
    }

    /// Read back from a BACKENDS entry (adoption).
    pub(crate) const fn from_backend_flags(flags: u8) -> Self {
        if flags & BACKEND_FLAG_KEEP_TCP_ON_DOWN != 0 {
            OnDown::KeepTcp
        } else {
            OnDown::Move
        }
    }
}

impl fmt::Display for OnDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OnDown {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OnDown::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| format!("unknown on-down policy {s:?} (move or keep-tcp)"))
    }
}

/// Most `--allow-source` prefixes of one VIP.
pub const MAX_SOURCES: usize = MAX_SOURCE_RANGES_PER_VIP as usize;

/// Why a VIP's source prefixes are refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourcesError {
    #[error(
        "source prefix {prefix} is {prefix_family} but VIP {vip} is {vip_family}: a VIP's clients are of its own family"
    )]
    Family {
        prefix: Prefix,
        vip: SocketAddr,
        prefix_family: &'static str,
        vip_family: &'static str,
    },
    #[error("source prefix {0} is given twice")]
    Duplicate(Prefix),
    #[error("{given} source prefixes: a VIP takes at most {MAX_SOURCES}")]
    TooMany { given: usize },
}

const fn family(ipv4: bool) -> &'static str {
    if ipv4 { "IPv4" } else { "IPv6" }
}

/// The source prefixes of VIP `vip`, checked: of its family, each once, at most
/// [`MAX_SOURCES`]. (Host bits set are refused when a prefix is parsed.)
pub fn check_sources(vip: SocketAddr, given: &[Prefix]) -> Result<BTreeSet<Prefix>, SourcesError> {
    if given.len() > MAX_SOURCES {
        return Err(SourcesError::TooMany { given: given.len() });
    }
    let mut sources = BTreeSet::new();
    for prefix in given {
        if prefix.addr.is_ipv4() != vip.is_ipv4() {
            return Err(SourcesError::Family {
                prefix: *prefix,
                vip,
                prefix_family: family(prefix.addr.is_ipv4()),
                vip_family: family(vip.is_ipv4()),
            });
        }
        if !sources.insert(*prefix) {
            return Err(SourcesError::Duplicate(*prefix));
        }
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(texts: &[&str]) -> Vec<Prefix> {
        texts.iter().map(|t| t.parse().expect("prefix")).collect()
    }

    #[test]
    fn names_round_trip_and_keep_tcp_is_the_default() {
        for on_down in OnDown::ALL {
            assert_eq!(on_down.name().parse::<OnDown>(), Ok(on_down));
            assert_eq!(OnDown::from_backend_flags(on_down.backend_flags()), on_down);
        }
        assert_eq!(OnDown::default(), OnDown::KeepTcp);
        "keep".parse::<OnDown>().unwrap_err();
    }

    #[test]
    fn sources_are_of_the_vips_family_unique_and_few() {
        let v4: SocketAddr = "198.18.1.1:80".parse().expect("addr");
        let v6: SocketAddr = "[fd00:1::1]:80".parse().expect("addr");
        assert_eq!(
            check_sources(v4, &prefixes(&["198.18.0.0/24", "198.19.0.7"]))
                .expect("valid")
                .len(),
            2
        );
        let error = check_sources(v4, &prefixes(&["fd00::/64"])).expect_err("family");
        assert!(error.to_string().contains("is IPv6 but VIP"), "{error}");
        let error = check_sources(v6, &prefixes(&["198.18.0.0/24"])).expect_err("family");
        assert!(error.to_string().contains("is IPv4 but VIP"), "{error}");
        let error =
            check_sources(v4, &prefixes(&["198.18.0.0/24", "198.18.0.0/24"])).expect_err("twice");
        assert!(error.to_string().contains("given twice"), "{error}");
        let many: Vec<Prefix> = (0..=MAX_SOURCES)
            .map(|i| format!("198.18.{i}.0/24").parse().expect("prefix"))
            .collect();
        let error = check_sources(v4, &many).expect_err("too many");
        assert!(error.to_string().contains("at most 64"), "{error}");
        check_sources(v4, &many[..MAX_SOURCES]).unwrap();
    }
}
