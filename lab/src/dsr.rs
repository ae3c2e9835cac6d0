//! The direct-server-return lab: the lb on a link of its own behind a router, as DSR is
//! deployed, and backends whose default route goes through the router, never the lb.
//!
//! ```text
//! routed (dsr-ipip):
//!   client 198.18.40.1 ── .254 router .254 ── 198.18.41.1 lb
//!                                 .254 ── 198.18.5x.1 bx   (one link per backend)
//! shared link (dsr-l2):
//!   client 198.18.40.1 ── .254 router ── bridge 198.18.41.0/24: router .254, lb .1, bx .1x
//! ```
//! IPv6 follows the same plan in fd00:40::/64, fd00:41::/64 and fd00:5x::/64. The router
//! sends the VIPs (198.18.48.0/24, fd00:48::/64) to the lb; the lb's own default route is
//! the router. Backends hold the VIPs themselves (`lb decap attach` puts them on `lo`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    netns::{Link, NetNs},
    topology::{Backend, add_v6, offload_off_and_napi_on},
};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 40, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x40, 0, 0, 0, 0, 0, 1);
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 41, 1);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x41, 0, 0, 0, 0, 0, 1);
/// A VIP served by IPv4 backends.
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 48, 1);
/// A VIP served by IPv6 backends.
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x48, 0, 0, 0, 0, 0, 1);
/// An IPv4 VIP served by IPv6 backends (IPv4-in-IPv6).
pub const VIP_V4_OVER_V6: Ipv4Addr = Ipv4Addr::new(198, 18, 48, 2);

/// Where the backends are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wiring {
    /// Each backend on its own link to the router (dsr-ipip).
    Routed,
    /// The router, the lb and the backends on one bridge, the lb's link (dsr-l2).
    SharedLink,
}

pub struct DsrLab {
    pub client: NetNs,
    pub router: NetNs,
    pub lb: NetNs,
    /// The lb's one interface (toward the router).
    pub lb_iface: String,
    /// The router's interface toward the lb (a bridge port with the shared-link wiring).
    pub router_to_lb: String,
    pub backends: Vec<Backend>,
}

impl DsrLab {
    pub fn new(prefix: &str, wiring: Wiring, backends: usize) -> Self {
        let client = NetNs::with_prefix(prefix, "client");
        let router = NetNs::with_prefix(prefix, "router");
        let lb = NetNs::with_prefix(prefix, "lb");
        router.enable_forwarding();
        lb.enable_forwarding();
        // Replies leave the backends from the VIP, toward a router whose route to the VIP
        // points at the lb: strict reverse-path filtering would drop every one.
        for key in ["all", "default"] {
            router.sysctl(&format!("net/ipv4/conf/{key}/rp_filter"), "0");
        }

        let front = Link::veth(&client, "198.18.40.1/24", &router, "198.18.40.254/24");
        add_v6(&client, "fd00:40::1/64", &front.a);
        add_v6(&router, "fd00:40::fe/64", &front.b);
        client.ip(&["route", "add", "default", "via", "198.18.40.254"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd00:40::fe"]);
        // The client's checksums complete (the lb carries its packets on untouched).
        offload_off_and_napi_on(&client, &front.a);

        let to_lb = Link::veth_bare(&router, &lb);
        lb.ip(&["addr", "add", "198.18.41.1/24", "dev", &to_lb.b]);
        add_v6(&lb, "fd00:41::1/64", &to_lb.b);
        lb.ip(&["route", "add", "default", "via", "198.18.41.254"]);
        lb.ip(&["-6", "route", "add", "default", "via", "fd00:41::fe"]);
        // The router's end receives the lb's XDP_TX frames: it needs NAPI.
        offload_off_and_napi_on(&router, &to_lb.a);
        offload_off_and_napi_on(&lb, &to_lb.b);
        let lb_link = match wiring {
            Wiring::Routed => to_lb.a.clone(),
            Wiring::SharedLink => {
                router.ip(&["link", "add", "br0", "type", "bridge"]);
                router.ip(&["link", "set", &to_lb.a, "master", "br0"]);
                router.ip(&["link", "set", "br0", "up"]);
                "br0".to_owned()
            }
        };
        router.ip(&["addr", "add", "198.18.41.254/24", "dev", &lb_link]);
        add_v6(&router, "fd00:41::fe/64", &lb_link);
        router.ip(&["route", "add", "198.18.48.0/24", "via", "198.18.41.1"]);
        router.ip(&["-6", "route", "add", "fd00:48::/64", "via", "fd00:41::1"]);

        let mut list = Vec::new();
        for n in 1..=backends {
            let ns = NetNs::with_prefix(prefix, &format!("b{n}"));
            let (dev, v4, v6, gateway_v4, gateway_v6) = match wiring {
                Wiring::Routed => {
                    let net = 50 + n;
                    let link = Link::veth(
                        &router,
                        &format!("198.18.{net}.254/24"),
                        &ns,
                        &format!("198.18.{net}.1/24"),
                    );
                    add_v6(&router, &format!("fd00:{net}::fe/64"), &link.a);
                    add_v6(&ns, &format!("fd00:{net}::1/64"), &link.b);
                    offload_off_and_napi_on(&router, &link.a);
                    (
                        link.b,
                        Ipv4Addr::new(198, 18, net as u8, 1),
                        format!("fd00:{net}::1").parse().expect("IPv6"),
                        Ipv4Addr::new(198, 18, net as u8, 254),
                        format!("fd00:{net}::fe"),
                    )
                }
                Wiring::SharedLink => {
                    let host = 10 + n;
                    let link = Link::veth_bare(&router, &ns);
                    router.ip(&["link", "set", &link.a, "master", "br0"]);
                    ns.ip(&[
                        "addr",
                        "add",
                        &format!("198.18.41.{host}/24"),
                        "dev",
                        &link.b,
                    ]);
                    add_v6(&ns, &format!("fd00:41::{host}/64"), &link.b);
                    offload_off_and_napi_on(&router, &link.a);
                    (
                        link.b,
                        Ipv4Addr::new(198, 18, 41, host as u8),
                        format!("fd00:41::{host}").parse().expect("IPv6"),
                        Ipv4Addr::new(198, 18, 41, 254),
                        "fd00:41::fe".to_owned(),
                    )
                }
            };
            ns.ip(&["route", "add", "default", "via", &gateway_v4.to_string()]);
            ns.ip(&["-6", "route", "add", "default", "via", &gateway_v6]);
            offload_off_and_napi_on(&ns, &dev);
            list.push(Backend {
                name: format!("backend-{n}"),
                ns,
                dev,
                gateway_v4,
                v4,
                v6,
            });
        }
        Self {
            client,
            router,
            lb,
            lb_iface: to_lb.b,
            router_to_lb: to_lb.a,
            backends: list,
        }
    }

    /// The client's address in the family of `vip`.
    pub fn client_addr(vip: IpAddr) -> IpAddr {
        if vip.is_ipv4() {
            CLIENT_V4.into()
        } else {
            CLIENT_V6.into()
        }
    }
}
