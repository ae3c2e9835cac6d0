//! `lb decap attach|status|detach` through the real binary, on a backend namespace that
//! starts from settings of its own (arp_ignore 2 and arp_announce 1 on all, strict
//! rp_filter on all, a VIP already on lo): after attach a tunnelled request to a VIP is
//! answered, the program stays attached after the command exits, and status shows the
//! counters growing; attach again updates the VIPs and source prefixes in place; detach
//! leaves addresses, sysctls and XDP exactly as they were; bad input changes nothing.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::Output,
    time::Duration,
};

use etherparse::PacketBuilder;
use lb_tests::{
    netns::{Link, NetNs},
    process::lb_binary,
    tunnel::send_raw,
};

const SENDER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
const BACKEND_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);
const SENDER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 7, 1);
const BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 7, 2);
/// Added to lo by attach.
const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 8, 80);
/// On lo before attach: attach must leave it, detach must not remove it.
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 8, 0x80);
/// Added by the second attach, removed by the third.
const VIP_EXTRA: Ipv4Addr = Ipv4Addr::new(198, 18, 8, 81);
const SERVICE_PORT: u16 = 7;

/// The sysctls compared before and after (`net.ipv4.conf.<dev>.<name>`).
const SYSCTL_NAMES: [&str; 3] = ["arp_ignore", "arp_announce", "rp_filter"];

static NEXT_LAB: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A sender and a backend on one veth, lb decap's own pin directory and record; Drop
/// detaches whatever is left and removes both (the namespaces go with their own Drop).
struct Lab {
    sender: NetNs,
    backend: NetNs,
    iface: String,
    pin_dir: PathBuf,
    record_dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let sender = NetNs::new("dcsend");
        let backend = NetNs::new("dcback");
        let link = Link::veth(&sender, "198.18.7.1/24", &backend, "198.18.7.2/24");
        sender.ip(&[
            "-6",
            "addr",
            "add",
            "fd00::7:1/112",
            "dev",
            &link.a,
            "nodad",
        ]);
        backend.ip(&[
            "-6",
            "addr",
            "add",
            "fd00::7:2/112",
            "dev",
            &link.b,
            "nodad",
        ]);
        sender.ip(&["route", "add", "198.18.8.0/24", "via", "198.18.7.2"]);
        sender.ip(&["-6", "route", "add", "fd00::8:0/112", "via", "fd00::7:2"]);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/lbt-{}-{}-decap",
            std::process::id(),
            NEXT_LAB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let record_dir = tempfile::Builder::new()
            .prefix("lbt-decap-")
            .tempdir()
            .expect("record directory");
        Self {
            sender,
            backend,
            iface: link.b,
            pin_dir,
            record_dir,
        }
    }

    /// Non-default settings and a VIP already on lo, as an operator's host might have.
    fn customize(&self) {
        self.backend.sysctl("net/ipv4/conf/all/arp_ignore", "2");
        self.backend.sysctl("net/ipv4/conf/all/arp_announce", "1");
        self.backend.sysctl("net/ipv4/conf/all/rp_filter", "1");
        self.backend
            .ip(&["-6", "addr", "add", "fd00::8:80/128", "dev", "lo", "nodad"]);
    }

    fn record(&self) -> PathBuf {
        self.record_dir.path().join("record.json")
    }

    /// `lb decap <args> --pin-dir .. --record ..` inside the backend namespace.
    fn lb(&self, args: &[&str]) -> Output {
        self.backend
            .command(lb_binary())
            .arg("decap")
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--record")
            .arg(self.record())
            .output()
            .expect("run lb")
    }

    /// A command that must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.lb(args);
        assert!(
            output.status.success(),
            "`lb decap {}` failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A command that must fail: its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.lb(args);
        assert!(
            !output.status.success(),
            "`lb decap {}` should have failed but printed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn status(&self) -> serde_json::Value {
        let text = self.ok(&["status", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// The packets of counter `name` of the lab's interface in `lb decap status --json`.
    fn counter(&self, name: &str) -> u64 {
        let status = self.status();
        status["interfaces"][0]["counters"][name]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}: {status}"))
    }

    fn sysctl(&self, dev: &str, name: &str) -> String {
        let output = self
            .backend
            .command("cat")
            .arg(format!("/proc/sys/net/ipv4/conf/{dev}/{name}"))
            .output()
            .expect("cat");
        assert!(output.status.success(), "reading {dev}.{name}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// What detach must restore: every address, the sysctls on all, the interface and lo,
    /// and each interface's XDP state. Taken once IPv6 duplicate address detection has
    /// settled (a link-local address is `tentative` for about a second after link up).
    fn snapshot(&self) -> Snapshot {
        let started = std::time::Instant::now();
        let addresses: serde_json::Value = loop {
            let text = self.backend.ip(&["-j", "addr", "show"]);
            if !text.contains("\"tentative\"") || started.elapsed() > Duration::from_secs(10) {
                break serde_json::from_str(&text).expect("ip -j addr");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let links: serde_json::Value =
            serde_json::from_str(&self.backend.ip(&["-j", "-d", "link", "show"]))
                .expect("ip -j link");
        let xdp = links
            .as_array()
            .expect("links")
            .iter()
            .map(|l| (l["ifname"].to_string(), l["xdp"].to_string()))
            .collect();
        let mut sysctls = Vec::new();
        for dev in ["all", self.iface.as_str(), "lo"] {
            for name in SYSCTL_NAMES {
                sysctls.push((format!("{dev}.{name}"), self.sysctl(dev, name)));
            }
        }
        Snapshot {
            addresses,
            sysctls,
            xdp,
        }
    }

    /// Sends a UDP request to `vip` inside a tunnel to `outer_dst` (see [`request`]).
    fn request(&self, outer_dst: IpAddr, vip: IpAddr, payload: &[u8]) -> Option<Vec<u8>> {
        let sender = match vip {
            IpAddr::V4(_) => IpAddr::V4(SENDER_V4),
            IpAddr::V6(_) => IpAddr::V6(SENDER_V6),
        };
        request(&self.sender, sender, outer_dst, vip, payload)
    }

    /// An echo server on `vip` (see [`serve`]).
    fn serve(&self, vip: IpAddr) {
        serve(&self.backend, vip);
    }
}

/// Sends a UDP request from `sender` (an address in `ns`) to `vip` inside a tunnel to
/// `outer_dst` and returns the echo, if one came back within half a second. The client
/// port is the receiving socket's own ephemeral one, so no two requests ever compete for
/// a port.
fn request(
    ns: &NetNs,
    sender: IpAddr,
    outer_dst: IpAddr,
    vip: IpAddr,
    payload: &[u8],
) -> Option<Vec<u8>> {
    ns.enter(|| {
        let receiver = UdpSocket::bind(SocketAddr::new(sender, 0)).expect("bind the client socket");
        let client_port = receiver.local_addr().expect("local address").port();
        receiver
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut inner = Vec::new();
        let (builder, protocol) = match (sender, vip) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => (
                PacketBuilder::ipv4(src.octets(), dst.octets(), 64),
                libc::IPPROTO_IPIP,
            ),
            (IpAddr::V6(src), IpAddr::V6(dst)) => (
                PacketBuilder::ipv6(src.octets(), dst.octets(), 64),
                libc::IPPROTO_IPV6,
            ),
            _ => unreachable!("same family"),
        };
        builder
            .udp(client_port, SERVICE_PORT)
            .write(&mut inner, payload)
            .expect("build");
        send_raw(outer_dst, protocol, &inner);
        let mut buf = [0u8; 2048];
        let (n, from) = receiver.recv_from(&mut buf).ok()?;
        assert_eq!(
            from,
            SocketAddr::new(vip, SERVICE_PORT),
            "answered by the VIP"
        );
        Some(buf[..n].to_vec())
    })
}

/// An echo server on `vip` in `ns` (which must be on lo by now), for the rest of the test.
fn serve(ns: &NetNs, vip: IpAddr) {
    let socket = ns.enter(|| {
        UdpSocket::bind(SocketAddr::new(vip, SERVICE_PORT)).expect("bind the echo server")
    });
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        // Bounded: at most 1000 echoes, and it ends 30 s after the last request.
        for _ in 0..1000 {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                break;
            };
            // A lost echo is the client's test failure, seen there.
            socket.send_to(&buf[..n], from).unwrap_or_default();
        }
    });
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            lb_tests::cleanup::warn_on_exit(
                "lb decap detach --all",
                &self.lb(&["detach", "--all"]),
            );
            lb_tests::cleanup::remove_dir_all(&self.pin_dir);
        }
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    addresses: serde_json::Value,
    sysctls: Vec<(String, String)>,
    xdp: Vec<(String, String)>,
}

fn has_address(snapshot: &Snapshot, addr: IpAddr) -> bool {
    snapshot
        .addresses
        .as_array()
        .expect("interfaces")
        .iter()
        .any(|i| {
            i["ifname"] == "lo"
                && i["addr_info"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["local"] == addr.to_string()))
        })
}

fn sysctl_of<'a>(snapshot: &'a Snapshot, key: &str) -> &'a str {
    snapshot
        .sysctls
        .iter()
        .find(|(k, _)| k == key)
        .map_or_else(|| panic!("no sysctl {key}"), |(_, v)| v.as_str())
}

#[test]
fn attach_serves_tunnels_status_counts_and_detach_restores_the_backend() {
    lb_tests::require_root!();
    let lab = Lab::new();
    lab.customize();
    let iface = lab.iface.clone();
    let before = lab.snapshot();
    let vip4 = IpAddr::V4(VIP_V4);
    let vip6 = IpAddr::V6(VIP_V6);
    let extra = IpAddr::V4(VIP_EXTRA);

    // Without lb_decap nothing answers (the VIP is not even on lo yet).
    assert_eq!(lab.request(IpAddr::V4(BACKEND_V4), vip4, b"none"), None);

    let out = lab.ok(&[
        "attach",
        "--iface",
        &iface,
        "--vip",
        &VIP_V4.to_string(),
        "--vip",
        &VIP_V6.to_string(),
        "--xdp-mode",
        "native",
    ]);
    // One line per change: what, old -> new.
    for line in [
        format!("lb_decap attached to {iface} (native)"),
        "sysctl net.ipv4.conf.all.arp_announce: 1 -> 2".to_owned(),
        format!("sysctl net.ipv4.conf.{iface}.arp_ignore: 0 -> 1"),
        format!("sysctl net.ipv4.conf.{iface}.arp_announce: 0 -> 2"),
        format!("sysctl net.ipv4.conf.{iface}.rp_filter: 0 -> 2"),
        format!("address {VIP_V4}/32 on lo: absent -> added"),
        format!("VIP {VIP_V6} on lo: already there, left alone"),
    ] {
        assert!(out.contains(&line), "missing `{line}` in:\n{out}");
    }
    assert!(
        !out.contains("net.ipv4.conf.all.arp_ignore"),
        "arp_ignore 2 on all already keeps lo's VIPs silent: left alone\n{out}"
    );
    assert!(
        !out.contains("conf.all.rp_filter") && !out.contains("conf.lo."),
        "only the interface's rp_filter is loosened\n{out}"
    );

    // The command has exited: the pinned link keeps the program on the interface.
    let attached = lab.snapshot();
    assert!(
        lab.backend.has_xdp(),
        "lb_decap attached after attach exits"
    );
    assert!(has_address(&attached, vip4), "the VIP is on lo");
    assert!(has_address(&attached, vip6), "the VIP that was there stays");
    for (key, value) in [
        ("all.arp_ignore", "2"),
        ("all.arp_announce", "2"),
        ("all.rp_filter", "1"),
        (format!("{iface}.arp_ignore").as_str(), "1"),
        (&format!("{iface}.arp_announce"), "2"),
        (&format!("{iface}.rp_filter"), "2"),
        ("lo.rp_filter", "0"),
    ] {
        assert_eq!(sysctl_of(&attached, key), value, "{key}");
    }
    let status = lab.status();
    let entry = &status["interfaces"][0];
    assert_eq!(entry["iface"], iface.as_str());
    assert_eq!(entry["attached"], true, "{status}");
    assert_eq!(entry["mode"], "native");
    assert!(entry["program_id"].as_u64().is_some_and(|id| id > 0));
    assert_eq!(
        entry["local"],
        serde_json::json!([BACKEND_V4.to_string(), BACKEND_V6.to_string()])
    );
    assert_eq!(entry["allow_sources"], serde_json::json!([]));
    assert_eq!(entry["sysctls"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        entry["addresses"],
        serde_json::json!([{"address": VIP_V4.to_string(), "prefix_len": 32, "dev": "lo",
                            "needed_by": [iface.as_str()]}])
    );

    // Tunnelled requests to both VIPs are answered, and counted.
    lab.serve(vip4);
    lab.serve(vip6);
    let cases = [
        (IpAddr::V4(BACKEND_V4), vip4, "decap_ipv4_in_ipv4"),
        (IpAddr::V6(BACKEND_V6), vip6, "decap_ipv6_in_ipv6"),
        (IpAddr::V6(BACKEND_V6), vip4, "decap_ipv4_in_ipv6"),
    ];
    const REQUESTS: u64 = 20;
    for (outer, vip, counter) in cases {
        let before = lab.counter(counter);
        for i in 0..REQUESTS {
            let payload = format!("{counter}-{i}");
            let echo = lab
                .request(outer, vip, payload.as_bytes())
                .unwrap_or_else(|| panic!("no answer to {counter} request {i} via {outer}"));
            assert_eq!(echo, payload.as_bytes());
        }
        let after = lab.counter(counter);
        assert!(
            after >= before + REQUESTS,
            "{counter}: {before} -> {after} after {REQUESTS} requests"
        );
        lb_tests::loud(&format!(
            "decap_cli: {counter}: {REQUESTS} tunnelled requests answered, counter {before} -> {after}"
        ));
    }

    // Attach again: refused when it asks for another mode, changing nothing ...
    let error = lab.fails(&["attach", "--iface", &iface, "--xdp-mode", "skb"]);
    assert!(
        error.contains("attached to") && error.contains("native mode"),
        "{error}"
    );
    assert_eq!(lab.snapshot(), attached, "a refused attach changes nothing");
    // ... else in place: a new VIP list (VIP_V4 dropped, VIP_EXTRA new) and a source
    // filter that leaves the sender out.
    let out = lab.ok(&[
        "attach",
        "--iface",
        &iface,
        "--vip",
        &VIP_EXTRA.to_string(),
        "--vip",
        &VIP_V6.to_string(),
        "--allow-source",
        "198.18.99.0/24",
    ]);
    assert!(out.contains("replaced in place"), "{out}");
    assert!(
        out.contains(&format!("address {VIP_V4}/32 on lo: present -> removed")),
        "{out}"
    );
    assert!(
        out.contains(&format!("address {VIP_EXTRA}/32 on lo: absent -> added")),
        "{out}"
    );
    assert!(!out.contains("sysctl"), "nothing to set again: {out}");
    lab.serve(extra);
    let refused = lab.counter("pass_not_allowed_source");
    assert_eq!(
        lab.request(IpAddr::V4(BACKEND_V4), extra, b"filtered"),
        None
    );
    assert!(lab.counter("pass_not_allowed_source") > refused);
    lab.ok(&[
        "attach",
        "--iface",
        &iface,
        "--vip",
        &VIP_EXTRA.to_string(),
        "--vip",
        &VIP_V6.to_string(),
        "--allow-source",
        "198.18.7.0/24",
    ]);
    assert_eq!(
        lab.status()["interfaces"][0]["allow_sources"],
        serde_json::json!(["198.18.7.0/24"])
    );
    assert!(
        lab.request(IpAddr::V4(BACKEND_V4), extra, b"allowed")
            .is_some(),
        "the sender's prefix is allowed"
    );

    // Detach: exactly as before.
    let out = lab.ok(&["detach", "--iface", &iface]);
    for line in [
        format!("lb_decap detached from {iface}"),
        "sysctl net.ipv4.conf.all.arp_announce: 2 -> 1".to_owned(),
        format!("sysctl net.ipv4.conf.{iface}.rp_filter: 2 -> 0"),
        format!("address {VIP_EXTRA}/32 on lo: present -> removed"),
        format!("VIP {VIP_V6} on lo: not added by lb decap, left alone"),
    ] {
        assert!(out.contains(&line), "missing `{line}` in:\n{out}");
    }
    let after = lab.snapshot();
    assert_eq!(after.sysctls, before.sysctls);
    assert_eq!(after.xdp, before.xdp);
    assert_eq!(after.addresses, before.addresses);
    assert!(!lab.backend.has_xdp());
    assert!(
        !lab.record().exists(),
        "the record goes with the last interface"
    );
    assert_eq!(
        std::fs::read_dir(&lab.pin_dir).map(Iterator::count).ok(),
        Some(0),
        "no pins left"
    );
    assert_eq!(lab.request(IpAddr::V4(BACKEND_V4), extra, b"gone"), None);

    // Detaching again is an error that changes nothing.
    let error = lab.fails(&["detach", "--iface", &iface]);
    assert!(error.contains("is not attached to"), "{error}");
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    lb_tests::require_root!();
    let lab = Lab::new();
    lab.customize();
    let iface = lab.iface.clone();
    // An interface with no address a tunnel could be sent to (a veth pair, down, inside
    // the backend).
    let bare = format!("lbtbare{}", std::process::id() % 100_000);
    lab.backend.ip(&[
        "link",
        "add",
        &bare,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{bare}p"),
    ]);
    let before = lab.snapshot();
    let vip = VIP_V4.to_string();
    let own = BACKEND_V4.to_string();
    let cases: [(&str, Vec<&str>, &str); 9] = [
        (
            "unknown interface",
            vec!["attach", "--iface", "lbt-no-such-if", "--vip", &vip],
            "unknown interface `lbt-no-such-if`",
        ),
        (
            "VIP that is not an address",
            vec!["attach", "--iface", &iface, "--vip", "198.18.8.80:80"],
            "is not an IP address",
        ),
        (
            "VIP that cannot live on lo",
            vec!["attach", "--iface", &iface, "--vip", "127.0.0.9"],
            "it is a loopback address",
        ),
        (
            "VIP that is the interface's own address",
            vec!["attach", "--iface", &iface, "--vip", &own],
            "an address of the interface itself",
        ),
        (
            "prefix with host bits",
            vec![
                "attach",
                "--iface",
                &iface,
                "--allow-source",
                "198.18.7.1/24",
            ],
            "host bits are set",
        ),
        (
            "prefix too long",
            vec!["attach", "--iface", &iface, "--allow-source", "fd00::/129"],
            "the length must be 0 to 128",
        ),
        (
            "interface without addresses",
            vec!["attach", "--iface", &bare, "--vip", &vip],
            "has no IPv4 or IPv6 address of global scope",
        ),
        (
            "detach of what is not attached",
            vec!["detach", "--iface", &iface],
            "is not attached to",
        ),
        (
            "unknown xdp mode",
            vec!["attach", "--iface", &iface, "--xdp-mode", "fast"],
            "invalid value 'fast'",
        ),
    ];
    for (class, args, reason) in cases {
        let error = lab.fails(&args);
        assert!(error.contains(reason), "{class}: {error}");
        assert_eq!(lab.snapshot(), before, "{class} changed the backend");
        assert!(!lab.record().exists(), "{class} wrote a record");
        let pins = std::fs::read_dir(&lab.pin_dir).map_or(0, Iterator::count);
        assert_eq!(pins, 0, "{class} left pins");
        lb_tests::loud(&format!("decap_cli: refused, nothing changed: {class}"));
    }
}

#[test]
fn two_attaches_at_once_share_what_they_change_until_the_last_detach() {
    lb_tests::require_root!();
    let lab = Lab::new();
    lab.customize();
    let second = Link::veth(
        &lab.sender,
        "198.18.10.1/24",
        &lab.backend,
        "198.18.10.2/24",
    );
    let ifaces = [lab.iface.clone(), second.b];
    let before = lab.snapshot();
    // Both at once: the pin directory's lock orders them, and whichever comes second finds
    // the shared settings (all.arp_announce, the VIP on lo) made by the first.
    let children: Vec<_> = ifaces
        .iter()
        .map(|iface| {
            lab.backend
                .command(lb_binary())
                .args(["decap", "attach", "--iface", iface, "--vip"])
                .arg(VIP_V4.to_string())
                .arg("--pin-dir")
                .arg(&lab.pin_dir)
                .arg("--record")
                .arg(lab.record())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start lb")
        })
        .collect();
    for (iface, child) in ifaces.iter().zip(children) {
        let output = child.wait_with_output().expect("run lb");
        assert!(
            output.status.success(),
            "attach {iface}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.record()).expect("record"))
            .expect("JSON record");
    assert_eq!(
        record["interfaces"].as_object().map(serde_json::Map::len),
        Some(2)
    );
    let mut both = ifaces.to_vec();
    both.sort();
    let announce = record["sysctls"]
        .as_array()
        .expect("sysctls")
        .iter()
        .find(|c| c["key"] == "net.ipv4.conf.all.arp_announce")
        .expect("all.arp_announce recorded");
    assert_eq!(announce["old"], "1");
    assert_eq!(announce["needed_by"], serde_json::json!(both));
    assert_eq!(record["addresses"][0]["needed_by"], serde_json::json!(both));
    let status = lab.status();
    assert_eq!(status["interfaces"].as_array().map(Vec::len), Some(2));
    assert!(
        status["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .all(|i| i["attached"] == true),
        "{status}"
    );

    // The first detach keeps what the other interface still needs.
    let out = lab.ok(&["detach", "--iface", &ifaces[0]]);
    assert!(
        out.contains(&format!(
            "sysctl net.ipv4.conf.all.arp_announce = 2: kept, still needed by {}",
            ifaces[1]
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "VIP {VIP_V4} on lo: kept, still needed by {}",
            ifaces[1]
        )),
        "{out}"
    );
    let middle = lab.snapshot();
    assert!(has_address(&middle, IpAddr::V4(VIP_V4)));
    assert_eq!(sysctl_of(&middle, "all.arp_announce"), "2");
    // --all takes the rest.
    let out = lab.ok(&["detach", "--all"]);
    assert!(
        out.contains("sysctl net.ipv4.conf.all.arp_announce: 2 -> 1"),
        "{out}"
    );
    assert_eq!(lab.snapshot(), before);
    assert!(!lab.record().exists());
}

#[test]
fn an_attach_that_fails_half_way_rolls_back_what_it_changed() {
    lb_tests::require_root!();
    let lab = Lab::new();
    lab.customize();
    // IPv6 off on lo: adding the IPv6 VIP fails after the sysctls and the IPv4 VIP are set.
    lab.backend.sysctl("net/ipv6/conf/lo/disable_ipv6", "1");
    let before = lab.snapshot();
    let output = lab.lb(&[
        "attach",
        "--iface",
        &lab.iface,
        "--vip",
        &VIP_V4.to_string(),
        "--vip",
        "fd00::8:99",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "attach must fail: {stdout}");
    assert!(stderr.contains("fd00::8:99/128 on lo"), "{stderr}");
    for line in [
        format!("address {VIP_V4}/32 on lo: absent -> added"),
        format!("rolled back: address {VIP_V4}/32 on lo: present -> removed"),
        "rolled back: sysctl net.ipv4.conf.all.arp_announce: 2 -> 1".to_owned(),
        format!("lb_decap detached from {}", lab.iface),
    ] {
        assert!(stdout.contains(&line), "missing `{line}` in:\n{stdout}");
    }
    assert_eq!(lab.snapshot(), before, "rolled back to the start");
    assert!(!lab.backend.has_xdp());
    assert!(!lab.record().exists(), "no record of a rolled-back attach");
    assert_eq!(
        std::fs::read_dir(&lab.pin_dir).map_or(0, Iterator::count),
        0,
        "no pins left"
    );
}

/// A backend namespace whose interface toward the sender has the name every backend of
/// the test uses, and `lb decap` run there with the default paths.
struct NamedBackend {
    ns: NetNs,
    own: Ipv4Addr,
    vip: Ipv4Addr,
}

/// The name every backend namespace gives its interface (as containers all have `eth0`).
const SHARED_IFACE: &str = "lbtdc0";

impl NamedBackend {
    /// A backend on its own veth from `sender`: sender `198.18.<net>.1`, backend `.2`.
    fn new(sender: &NetNs, net: u8, vip: Ipv4Addr) -> Self {
        let ns = NetNs::new("dcnsb");
        let link = Link::veth(
            sender,
            &format!("198.18.{net}.1/24"),
            &ns,
            &format!("198.18.{net}.2/24"),
        );
        ns.ip(&["link", "set", &link.b, "down"]);
        ns.ip(&["link", "set", &link.b, "name", SHARED_IFACE]);
        ns.ip(&["link", "set", SHARED_IFACE, "up"]);
        Self {
            ns,
            own: Ipv4Addr::new(198, 18, net, 2),
            vip,
        }
    }

    /// `lb decap <args>` in this namespace, default paths.
    fn lb(&self, args: &[&str]) -> Output {
        self.ns
            .command(lb_binary())
            .arg("decap")
            .args(args)
            .output()
            .expect("run lb")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.lb(args);
        assert!(
            output.status.success(),
            "`lb decap {}` in {} failed:\n{}\n{}",
            args.join(" "),
            self.ns.name(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn status(&self) -> serde_json::Value {
        let text = self.ok(&["status", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// This namespace's defaults, named by its inode.
    fn default_paths(&self) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::MetadataExt as _;
        let inode = std::fs::metadata(self.ns.path())
            .expect("the namespace file")
            .ino();
        (
            PathBuf::from(format!("/sys/fs/bpf/lb-decap/netns-{inode}")),
            PathBuf::from(format!("/run/lb-decap/netns-{inode}.json")),
        )
    }
}

impl Drop for NamedBackend {
    fn drop(&mut self) {
        lb_tests::cleanup::warn_on_exit("lb decap detach --all", &self.lb(&["detach", "--all"]));
        let (pin_dir, record) = self.default_paths();
        lb_tests::cleanup::remove_dir_all(&pin_dir);
        lb_tests::cleanup::remove_file(&record);
        for parent in [pin_dir.parent(), record.parent()].into_iter().flatten() {
            lb_tests::cleanup::remove_dir_if_empty(parent);
        }
    }
}

/// bpffs and /run are shared by every network namespace of a host and interface names
/// repeat (containers as backends): `lb decap attach --iface <same name>` with the default
/// paths in two namespaces keeps two datapaths apart. Each status shows only its own
/// addresses and VIP, each decapsulates for its own VIP, and detaching one leaves the
/// other working. An explicit path of the other namespace is refused, not overwritten.
#[test]
fn namespaces_with_the_same_interface_name_keep_their_own_decap() {
    lb_tests::require_root!();
    let sender = NetNs::new("dcnss");
    let backends = [
        NamedBackend::new(&sender, 11, Ipv4Addr::new(198, 18, 13, 1)),
        NamedBackend::new(&sender, 12, Ipv4Addr::new(198, 18, 13, 2)),
    ];
    for backend in &backends {
        let out = backend.ok(&[
            "attach",
            "--iface",
            SHARED_IFACE,
            "--vip",
            &backend.vip.to_string(),
        ]);
        assert!(
            out.contains(&format!("lb_decap attached to {SHARED_IFACE}")),
            "{}: {out}",
            backend.ns.name()
        );
        assert!(backend.ns.has_xdp(), "{}", backend.ns.name());
        serve(&backend.ns, IpAddr::V4(backend.vip));
    }
    let ask = |backend: &NamedBackend, payload: &str| {
        let sender_addr = IpAddr::V4(Ipv4Addr::new(198, 18, backend.own.octets()[2], 1));
        request(
            &sender,
            sender_addr,
            IpAddr::V4(backend.own),
            IpAddr::V4(backend.vip),
            payload.as_bytes(),
        )
    };
    for backend in &backends {
        let status = backend.status();
        let (pin_dir, record) = backend.default_paths();
        assert_eq!(status["pin_dir"], pin_dir.display().to_string(), "{status}");
        assert_eq!(status["record"], record.display().to_string(), "{status}");
        let interfaces = status["interfaces"].as_array().expect("interfaces");
        assert_eq!(interfaces.len(), 1, "only its own: {status}");
        let entry = &interfaces[0];
        assert_eq!(entry["iface"], SHARED_IFACE);
        assert_eq!(entry["attached"], true, "{status}");
        assert_eq!(
            entry["local"],
            serde_json::json!([backend.own.to_string()]),
            "{status}"
        );
        assert_eq!(
            entry["vips"],
            serde_json::json!([backend.vip.to_string()]),
            "{status}"
        );
        let payload = format!("to {}", backend.vip);
        assert_eq!(
            ask(backend, &payload).as_deref(),
            Some(payload.as_bytes()),
            "{} decapsulates for its own VIP",
            backend.ns.name()
        );
    }

    // The first namespace's paths given explicitly in the second: refused, nothing changed.
    let (first_pins, first_record) = backends[0].default_paths();
    let output = backends[1].lb(&[
        "attach",
        "--iface",
        SHARED_IFACE,
        "--pin-dir",
        &first_pins.display().to_string(),
        "--record",
        &first_record.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "attach over another namespace's paths"
    );
    assert!(
        stderr.contains("another network namespace")
            || stderr.contains("belongs to network namespace"),
        "{stderr}"
    );
    assert!(stderr.contains("--pin-dir"), "names the flags: {stderr}");
    assert_eq!(backends[0].status()["interfaces"][0]["attached"], true);

    // Detaching one leaves the other working.
    backends[0].ok(&["detach", "--all"]);
    assert!(!backends[0].ns.has_xdp());
    assert_eq!(
        backends[0].status()["interfaces"],
        serde_json::json!([]),
        "nothing left in the first"
    );
    assert_eq!(ask(&backends[0], "gone"), None);
    let status = backends[1].status();
    assert_eq!(status["interfaces"][0]["attached"], true, "{status}");
    assert!(backends[1].ns.has_xdp());
    assert_eq!(
        ask(&backends[1], "still").as_deref(),
        Some(&b"still"[..]),
        "the second still decapsulates"
    );
    backends[1].ok(&["detach", "--all"]);
    assert!(!backends[1].ns.has_xdp());
    lb_tests::loud(
        "decap_cli: two namespaces, one interface name, default paths: each its own datapath",
    );
}
