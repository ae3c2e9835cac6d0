//! The standard lab: `client` — `lb` — `b1..bN`, IPv4 and IPv6 on every link.
//!
//! ```text
//! client 198.18.0.1 / fd00::1  ──  198.18.0.2 / fd00::2  lb  198.18.1x.1 / fd00:1x::1  ──  bx
//!                                                           198.18.1x.2 / fd00:1x::2 (x = 1..N)
//! ```
//! The VIPs (198.18.1.1, fd00:1::1) are on no interface: the client routes everything via
//! the lb, and only lb's XDP program answers for them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netns::{Link, NetNs};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);

pub struct Backend {
    /// `backend-<n>`, what its servers answer with.
    pub name: String,
    pub ns: NetNs,
    /// Its end of the link to the lb.
    pub dev: String,
    /// The lb's address on that link: the backend's IPv4 default route.
    pub gateway_v4: Ipv4Addr,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Backend {
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { self.v6.into() } else { self.v4.into() }
    }
}

pub struct Lab {
    pub client: NetNs,
    /// The client's interface toward the lb.
    pub client_dev: String,
    pub lb: NetNs,
    pub backends: Vec<Backend>,
    /// The lb's interfaces: toward the client first, then one per backend.
    pub lb_ifaces: Vec<String>,
}

/// veth leaves checksums partial (XDP cannot finish them) and needs NAPI to receive
/// redirected frames.
pub(crate) fn offload_off_and_napi_on(ns: &NetNs, dev: &str) {
    let output = ns
        .command("ethtool")
        .args(["-K", dev, "tx", "off", "gro", "on"])
        .output()
        .expect("run ethtool (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "ethtool -K {dev} failed in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(crate) fn add_v6(ns: &NetNs, addr: &str, dev: &str) {
    ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
}

impl Lab {
    /// Builds the lab with `backends` backends; namespace names start with `prefix`.
    pub fn new(prefix: &str, backends: usize) -> Self {
        Self::build(prefix, backends, true)
    }

    /// The same lab on veth pairs as the kernel creates them: checksum offload on, GRO
    /// (and so NAPI) off, as a VM's or a container's veth is unless someone tunes it.
    pub fn untuned(prefix: &str, backends: usize) -> Self {
        Self::build(prefix, backends, false)
    }

    fn build(prefix: &str, backends: usize, tuned: bool) -> Self {
        let tune = |ns: &NetNs, dev: &str| {
            if tuned {
                offload_off_and_napi_on(ns, dev);
            }
        };
        let client = NetNs::with_prefix(prefix, "client");
        let lb = NetNs::with_prefix(prefix, "lb");
        let front = Link::veth(&client, "198.18.0.1/24", &lb, "198.18.0.2/24");
        add_v6(&client, "fd00::1/64", &front.a);
        add_v6(&lb, "fd00::2/64", &front.b);
        client.ip(&["route", "add", "default", "via", "198.18.0.2"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd00::2"]);
        tune(&client, &front.a);
        tune(&lb, &front.b);
        lb.enable_forwarding();
        let mut lb_ifaces = vec![front.b.clone()];
        let mut list = Vec::new();
        for n in 1..=backends {
            let net = 10 + n;
            let ns = NetNs::with_prefix(prefix, &format!("b{n}"));
            let link = Link::veth(
                &lb,
                &format!("198.18.{net}.1/24"),
                &ns,
                &format!("198.18.{net}.2/24"),
            );
            add_v6(&lb, &format!("fd00:{net}::1/64"), &link.a);
            add_v6(&ns, &format!("fd00:{net}::2/64"), &link.b);
            ns.ip(&["route", "add", "default", "via", &format!("198.18.{net}.1")]);
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:{net}::1"),
            ]);
            tune(&ns, &link.b);
            tune(&lb, &link.a);
            lb_ifaces.push(link.a);
            list.push(Backend {
                name: format!("backend-{n}"),
                ns,
                dev: link.b,
                gateway_v4: Ipv4Addr::new(198, 18, net as u8, 1),
                v4: Ipv4Addr::new(198, 18, net as u8, 2),
                v6: format!("fd00:{net}::2").parse().expect("valid IPv6"),
            });
        }
        Self {
            client,
            client_dev: front.a,
            lb,
            backends: list,
            lb_ifaces,
        }
    }

    pub fn vip(&self, v6: bool) -> IpAddr {
        if v6 { VIP_V6.into() } else { VIP_V4.into() }
    }

    /// The client's address in the family of `vip`.
    pub fn client_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            CLIENT_V6.into()
        } else {
            CLIENT_V4.into()
        }
    }
}
