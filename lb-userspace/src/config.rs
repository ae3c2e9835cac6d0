//! The declarative configuration file (TOML): VIPs and their backends.
//!
//! ```toml
//! [[vip]]
//! address = "198.18.1.1:80"      # IPv6: "[fd00::1]:80"
//! proto = "tcp"                  # default tcp
//! backends = [
//!   { address = "198.18.2.2:8080", weight = 100 },   # weight 1..=65535, default 100
//! ]
//! ```

use std::{net::SocketAddr, path::Path};

use anyhow::Context as _;
use serde::Deserialize;

use crate::balancer::{Balancer, BalancerError, DEFAULT_WEIGHT, Proto, Service};

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, rename = "vip")]
    pub vips: Vec<VipConfig>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub proto: Proto,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: SocketAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

const fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl Config {
    /// Parses TOML; errors carry the line and column.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid configuration file {}", path.display()))
    }

    /// Applies every VIP and backend, stopping at the first one the balancer refuses.
    pub fn apply(&self, balancer: &mut Balancer) -> Result<(), BalancerError> {
        for vip in &self.vips {
            let service = Service {
                addr: vip.address,
                proto: vip.proto,
            };
            balancer.add_vip(service)?;
            for backend in &vip.backends {
                balancer.add_backend(service, backend.address, backend.weight)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vips_with_defaults() {
        let config = Config::parse(
            r#"
            [[vip]]
            address = "198.18.1.1:80"
            backends = [{ address = "198.18.2.2:8080" }, { address = "198.18.2.3:8080", weight = 7 }]

            [[vip]]
            address = "[fd00::1]:53"
            proto = "udp"
            "#,
        )
        .expect("valid config");
        assert_eq!(config.vips.len(), 2);
        assert_eq!(config.vips[0].proto, Proto::Tcp);
        assert_eq!(config.vips[0].backends[0].weight, DEFAULT_WEIGHT);
        assert_eq!(config.vips[0].backends[1].weight, 7);
        assert_eq!(config.vips[1].proto, Proto::Udp);
        assert!(config.vips[1].address.is_ipv6());
    }

    #[test]
    fn errors_name_the_line() {
        let error = Config::parse("[[vip]]\naddress = \"198.18.1.1\"\n").expect_err("no port");
        let text = error.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(Config::parse("[[vip]]\naddress = \"198.18.1.1:80\"\nproto = \"sctp\"\n").is_err());
        assert!(Config::parse("[[vip]]\naddress = \"198.18.1.1:80\"\ncolour = 1\n").is_err());
    }
}
