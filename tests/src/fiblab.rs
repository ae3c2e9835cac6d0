//! The lab the golden packets and the datapath benchmark run in: client — lb — backends,
//! with the lb's neighbours pinned so `bpf_fib_lookup` succeeds, and the test services.

use std::net::{IpAddr, SocketAddr};

use lb_userspace::model::{
    limits::{Limits, Options},
    mode::{self, Mode},
    prefix::Prefix,
    state::{Change, Proto, Service},
};

use crate::{
    netns::{Link, NetNs},
    testrun::Datapath,
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn sock(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

pub const CLIENT_MAC: [u8; 6] = [0x02, 0x18, 0, 0, 0, 0x01];
/// The lab's client, on the lb's front link.
pub const CLIENT_V4: &str = "198.18.0.1";
pub const CLIENT_V6: &str = "fd00::1";

/// The lab's client of `vip`'s family.
pub fn client_of(vip: IpAddr) -> IpAddr {
    if vip.is_ipv4() {
        ip(CLIENT_V4)
    } else {
        ip(CLIENT_V6)
    }
}

/// `vip`'s family, as the packet builder names it.
pub fn family_of(vip: IpAddr) -> crate::packets::Family {
    if vip.is_ipv4() {
        crate::packets::Family::V4
    } else {
        crate::packets::Family::V6
    }
}
pub const BACKEND_MACS: [[u8; 6]; 2] = [[0x02, 0x18, 0, 0, 2, 2], [0x02, 0x18, 0, 0, 2, 3]];

/// client — lb — backends, with the lb's neighbours pinned so FIB lookups succeed.
pub struct FibLab {
    _client: NetNs,
    lb: NetNs,
    _backends: NetNs,
    to_client: String,
    to_backends: String,
}

/// A permanent neighbour entry, so `bpf_fib_lookup` resolves `addr` without ARP/ND.
fn pin_neighbour(ns: &NetNs, addr: &str, mac: [u8; 6], dev: &str) {
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    ns.ip(&[
        "neigh",
        "replace",
        addr,
        "lladdr",
        &mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

impl Default for FibLab {
    fn default() -> Self {
        Self::new()
    }
}

impl FibLab {
    pub fn new() -> Self {
        let client = NetNs::new("client");
        let lb = NetNs::new("lb");
        let backends = NetNs::new("backends");
        let front = Link::veth(&client, "198.18.0.1/24", &lb, "198.18.0.2/24");
        let back = Link::veth(&lb, "198.18.2.1/24", &backends, "198.18.2.2/24");
        lb.ip(&["-6", "addr", "add", "fd00::2/64", "dev", &front.b, "nodad"]);
        lb.ip(&["-6", "addr", "add", "fd00:2::1/64", "dev", &back.a, "nodad"]);
        lb.enable_forwarding();
        let neighbours = [
            ("198.18.0.1", CLIENT_MAC, &front.b),
            ("fd00::1", CLIENT_MAC, &front.b),
            ("198.18.2.2", BACKEND_MACS[0], &back.a),
            ("198.18.2.3", BACKEND_MACS[1], &back.a),
            ("fd00:2::2", BACKEND_MACS[0], &back.a),
            ("fd00:2::3", BACKEND_MACS[1], &back.a),
        ];
        for (addr, lladdr, dev) in neighbours {
            pin_neighbour(&lb, addr, lladdr, dev);
        }
        // More clients behind the client's address (the benchmark's many flows).
        lb.ip(&["route", "add", "198.18.100.0/24", "via", "198.18.0.1"]);
        lb.ip(&["-6", "route", "add", "fd00::100:0/112", "via", "fd00::1"]);
        // And a /64 of them, for replies toward 100,000 distinct client addresses.
        lb.ip(&["-6", "route", "add", "fd00:0:0:1::/64", "via", "fd00::1"]);
        Self {
            _client: client,
            lb,
            _backends: backends,
            to_client: front.b,
            to_backends: back.a,
        }
    }

    /// Routes to both backends (IPv4 and IPv6) with a smaller MTU on the lb. IPv4 forwarding
    /// uses a route's MTU only when it is locked (else the device's).
    pub fn set_backend_mtu(&self, v4_mtu: u32, v6_mtu: u32) {
        for (family, addr, mtu) in [
            ("-4", "198.18.2.2/32", v4_mtu),
            ("-4", "198.18.2.3/32", v4_mtu),
            ("-6", "fd00:2::2/128", v6_mtu),
            ("-6", "fd00:2::3/128", v6_mtu),
        ] {
            self.lb.ip(&[
                family,
                "route",
                "replace",
                addr,
                "dev",
                &self.to_backends,
                "mtu",
                "lock",
                &mtu.to_string(),
            ]);
        }
    }

    /// A link from the lb that the datapath is not attached to, with 198.18.3.2 (a
    /// neighbour with a permanent entry) behind it.
    pub fn add_unattached_link(&self) {
        self.lb
            .ip(&["link", "add", "ua0", "type", "veth", "peer", "name", "ua1"]);
        for dev in ["ua0", "ua1"] {
            self.lb.ip(&["link", "set", dev, "up"]);
        }
        self.lb.ip(&["addr", "add", "198.18.3.1/24", "dev", "ua0"]);
        pin_neighbour(&self.lb, "198.18.3.2", BACKEND_MACS[0], "ua0");
    }

    /// A route to `prefix` through 198.18.3.2, behind the link of
    /// [`FibLab::add_unattached_link`].
    pub fn route_via_unattached(&self, prefix: &str) {
        self.lb.ip(&["route", "add", prefix, "via", "198.18.3.2"]);
    }

    /// Points the lb's (permanent) neighbour entry for a backend at another MAC.
    /// A route in the lb's namespace to `prefix` through `gateway` on the backend link.
    pub fn route_via_backend(&self, prefix: &str, gateway: &str) {
        self.lb.ip(&["route", "add", prefix, "via", gateway]);
    }

    pub fn set_backend_neighbour(&self, addr: &str, mac: [u8; 6]) {
        pin_neighbour(&self.lb, addr, mac, &self.to_backends);
    }

    /// Points the lb's (permanent) neighbour entry for the client (and the clients routed
    /// through it) at another MAC.
    pub fn set_client_neighbour(&self, addr: &str, mac: [u8; 6]) {
        pin_neighbour(&self.lb, addr, mac, &self.to_client);
    }

    /// Loads the datapath inside the lb namespace with the test services configured.
    pub fn with_datapath<T: Send>(&self, test: impl FnOnce(&mut Datapath, &Ids) -> T + Send) -> T {
        self.with_datapath_sized(Datapath::TEST_LIMITS, test)
    }

    /// As [`FibLab::with_datapath`], with maps of the given sizes.
    pub fn with_datapath_sized<T: Send>(
        &self,
        limits: Limits,
        test: impl FnOnce(&mut Datapath, &Ids) -> T + Send,
    ) -> T {
        self.with_datapath_loaded(limits, &Options::default(), test)
    }

    /// As [`Self::with_datapath_sized`], loaded with `options`.
    pub fn with_datapath_loaded<T: Send>(
        &self,
        limits: Limits,
        options: &Options,
        test: impl FnOnce(&mut Datapath, &Ids) -> T + Send,
    ) -> T {
        let ids = Ids {
            from_client: self.lb.ifindex(&self.to_client),
            from_backends: self.lb.ifindex(&self.to_backends),
            backend_side_mac: self.lb.mac(&self.to_backends),
            client_side_mac: self.lb.mac(&self.to_client),
        };
        self.lb.enter(|| {
            // The caches are per CPU: a thread moved between runs would find them empty
            // (seen on a loaded machine, as a flow-cache test's missing hit).
            Datapath::stay_on_one_cpu();
            let mut datapath = Datapath::load_with_options(limits, options);
            configure(&mut datapath, &ids);
            test(&mut datapath, &ids)
        })
    }
}

pub struct Ids {
    pub from_client: u32,
    pub from_backends: u32,
    pub backend_side_mac: [u8; 6],
    pub client_side_mac: [u8; 6],
}

/// VIPs 198.18.1.1 and fd00:1::1 (tcp/80, udp/53), two backends each; 198.18.1.2:80 with
/// no backend; 198.18.1.3:80 with a backend that has no neighbour entry.
pub fn configure(datapath: &mut Datapath, ids: &Ids) {
    let balancer = &mut datapath.balancer;
    for (vip, backends) in [
        ("198.18.1.1", ["198.18.2.2", "198.18.2.3"]),
        ("fd00:1::1", ["fd00:2::2", "fd00:2::3"]),
    ] {
        for (port, proto) in [(80, Proto::Tcp), (53, Proto::Udp)] {
            let service = Service {
                addr: SocketAddr::new(ip(vip), port),
                proto,
            };
            balancer.add_vip(service).expect("add VIP");
            for backend in backends {
                balancer
                    .add_backend(service, SocketAddr::new(ip(backend), 8080), 100)
                    .expect("add backend");
            }
        }
    }
    let empty = Service {
        addr: sock("198.18.1.2:80"),
        proto: Proto::Tcp,
    };
    balancer.add_vip(empty).expect("VIP without backends");
    let unresolved = Service {
        addr: sock("198.18.1.3:80"),
        proto: Proto::Tcp,
    };
    balancer.add_vip(unresolved).expect("VIP");
    balancer
        .add_backend(unresolved, sock("198.18.2.9:8080"), 100)
        .expect("backend without a neighbour entry");
    for ifindex in [ids.from_client, ids.from_backends] {
        balancer.add_tx_port(ifindex).expect("tx port");
    }
}

/// Outer sources of dsr-ipip in the test-run labs (a source per flow from each).
pub const DSR_SOURCE_V4: &str = "198.19.7.0/24";
pub const DSR_SOURCE_V6: &str = "fd00:99::/64";

/// Load options with [`DSR_SOURCE_V4`] and [`DSR_SOURCE_V6`] as dsr-ipip's outer sources.
pub fn dsr_options() -> Options {
    let source = |text: &str| mode::encap_source(text.parse::<Prefix>().expect("prefix"));
    Options {
        encap_v4: Some(source(DSR_SOURCE_V4)),
        encap_v6: Some(source(DSR_SOURCE_V6)),
        ..Options::default()
    }
}

/// Adds a DSR VIP in `mode` on TCP 80 and UDP 53, each with `backends` on the same port
/// (DSR does not rewrite ports), the way the daemon would.
pub fn add_dsr_vip(datapath: &mut Datapath, vip: IpAddr, mode: Mode, backends: &[IpAddr]) {
    for (port, proto) in [(80, Proto::Tcp), (53, Proto::Udp)] {
        let service = Service {
            addr: SocketAddr::new(vip, port),
            proto,
        };
        let mut changes = vec![Change::AddVip(service), Change::SetMode { service, mode }];
        changes.extend(backends.iter().map(|backend| Change::AddBackend {
            server_id: None,
            service,
            backend: SocketAddr::new(*backend, port),
            weight: 100,
        }));
        for change in &changes {
            datapath.balancer.apply(change).expect("a DSR VIP");
        }
    }
}

/// A dsr-gue VIP on tcp/80 and udp/53 with `backends`, each service in one change (the
/// way a config file or a restart applies them): one table, no earlier one.
pub fn add_gue_vip(datapath: &mut Datapath, vip: IpAddr, backends: &[IpAddr]) {
    for (port, proto) in [(80, Proto::Tcp), (53, Proto::Udp)] {
        let service = Service {
            addr: SocketAddr::new(vip, port),
            proto,
        };
        let mut changes = vec![
            Change::AddVip(service),
            Change::SetMode {
                service,
                mode: Mode::DsrGue,
            },
        ];
        changes.extend(backends.iter().map(|backend| Change::AddBackend {
            server_id: None,
            service,
            backend: SocketAddr::new(*backend, port),
            weight: 100,
        }));
        datapath
            .balancer
            .apply_all(&changes)
            .expect("a dsr-gue VIP");
    }
}
