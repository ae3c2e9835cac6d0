//! An address prefix (`198.18.0.0/24`, `fd00::/64`): the source prefixes `lb decap`
//! accepts tunnels from, and the prefix dsr-ipip takes its outer sources from.

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{text}` is not a prefix: {reason}")]
pub struct PrefixError {
    pub text: String,
    pub reason: String,
}

/// An address prefix, `198.18.0.0/24` or `fd00::/64`; a bare address is a host prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// 32 for IPv4, 128 for IPv6.
    pub const fn max_len(addr: IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// The prefix with its host bits cleared.
    fn network(addr: IpAddr, len: u8) -> IpAddr {
        match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::from((u32::from(v4) & mask).to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::from((u128::from(v6) & mask).to_be_bytes())
            }
        }
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| PrefixError {
            text: text.to_owned(),
            reason,
        };
        let (addr_text, len_text) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            error(format!(
                "`{addr_text}` is not an IP address (e.g. 198.18.0.0/24 or fd00::/64)"
            ))
        })?;
        let max = Self::max_len(addr);
        let len = match len_text {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(|| error(format!("the length must be 0 to {max}")))?,
        };
        let network = Self::network(addr, len);
        if network != addr {
            return Err(error(format!(
                "host bits are set (the prefix is {network}/{len})"
            )));
        }
        Ok(Self { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl TryFrom<String> for Prefix {
    type Error = PrefixError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Prefix> for String {
    fn from(prefix: Prefix) -> Self {
        prefix.to_string()
    }
}
