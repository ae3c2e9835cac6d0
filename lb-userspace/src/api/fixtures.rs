//! Answers as a daemon would give them, for the snapshot tests of their JSON, their tables
//! and the metrics text. Fixed values: a snapshot must not depend on the clock or the host.

use std::collections::BTreeMap;

use super::wire::{
    AnnounceEntry, BackendEntry, ConntrackReport, CounterEntry, FlowEntry, FlowList, HookRuns,
    InterfaceEntry, NodeReport, NotifyStatus, StatsReport, StatusReport, TimeoutEntry, VipEntry,
};
use crate::model::{
    announce::Reason,
    check::CheckConfig,
    egress,
    health::{ChangeCounts, Health, Transition},
    memory::{MapMemory, MemoryReport},
    mode::Mode,
    policy::OnDown,
    state::Proto,
};

/// "Now" for the fixtures, in Unix seconds.
pub(crate) const NOW: u64 = 1_800_000_000;

fn sock(text: &str) -> std::net::SocketAddr {
    text.parse().expect("fixture address")
}

pub(crate) fn vips() -> Vec<VipEntry> {
    vec![
        VipEntry {
            quic: Vec::new(),
            vip: sock("198.18.1.1:80"),
            proto: Proto::Tcp,
            mode: Mode::Nat,
            on_down: OnDown::KeepTcp,
            allow_sources: vec![
                "198.18.0.0/24".parse().expect("fixture prefix"),
                "198.19.0.0/16".parse().expect("fixture prefix"),
            ],
            check: Some(CheckConfig {
                probe: "http:/healthz".to_owned(),
                interval: Some(2.0),
                timeout: Some(1.0),
                rise: Some(2),
                fall: Some(3),
                expect: None,
            }),
            backends: 2,
            active: 1,
            packets: 123_456,
            bytes: 98_765_432,
            new_flows: 4_321,
            drops: [("drop_source_not_allowed".to_owned(), 12)].into(),
            table_fingerprint: "5d1f0a7c93e2b468".to_owned(),
        },
        VipEntry {
            quic: vec![
                "config=1,server-id-len=2,nonce-len=8".to_owned(),
                "config=0,server-id-len=2,nonce-len=6".to_owned(),
            ],
            vip: sock("[fd00::1]:53"),
            proto: Proto::Udp,
            mode: Mode::DsrIpip,
            on_down: OnDown::Move,
            allow_sources: Vec::new(),
            check: None,
            backends: 1,
            active: 1,
            packets: 7,
            bytes: 560,
            new_flows: 7,
            drops: BTreeMap::new(),
            table_fingerprint: "0c4e8a21f6b7d390".to_owned(),
        },
    ]
}

pub(crate) fn backends() -> Vec<BackendEntry> {
    vec![
        BackendEntry {
            server_id: None,
            vip: sock("198.18.1.1:80"),
            proto: Proto::Tcp,
            backend: sock("198.18.11.2:8080"),
            weight: 100,
            state: "active".to_owned(),
            health: Health::Up,
            health_since: Some(NOW - 90),
            last_check_error: None,
            health_history: vec![Transition {
                to: Health::Up,
                at: NOW - 90,
                reason: "2 checks passed".to_owned(),
            }],
            health_changes: ChangeCounts { down: 1, up: 1 },
            packets: 100_000,
            bytes: 80_000_000,
            active_conns: 12,
            closing_conns: 3,
        },
        BackendEntry {
            server_id: None,
            vip: sock("198.18.1.1:80"),
            proto: Proto::Tcp,
            backend: sock("198.18.11.3:8080"),
            weight: 50,
            state: "draining".to_owned(),
            health: Health::Down,
            health_since: Some(NOW - 7_200),
            last_check_error: Some("connection refused".to_owned()),
            health_history: Vec::new(),
            health_changes: ChangeCounts::default(),
            packets: 23_456,
            bytes: 18_765_432,
            active_conns: 0,
            closing_conns: 1,
        },
        BackendEntry {
            server_id: Some("0a1b".to_owned()),
            vip: sock("[fd00::1]:53"),
            proto: Proto::Udp,
            backend: sock("[fd00::11:2]:5353"),
            weight: 100,
            state: "active".to_owned(),
            health: Health::Unchecked,
            health_since: None,
            last_check_error: None,
            health_history: Vec::new(),
            health_changes: ChangeCounts::default(),
            packets: 7,
            bytes: 560,
            active_conns: 7,
            closing_conns: 0,
        },
    ]
}

pub(crate) fn counters() -> BTreeMap<String, CounterEntry> {
    [
        ("tcp", 123_456, 98_765_432),
        ("udp", 7, 560),
        ("xdp_tx", 123_463, 98_765_992),
        ("xdp_pass", 10, 1_000),
        ("drop_forwarding_disabled", 0, 0),
    ]
    .into_iter()
    .map(|(name, packets, bytes)| (name.to_owned(), CounterEntry { packets, bytes }))
    .collect()
}

pub(crate) fn conntrack() -> ConntrackReport {
    ConntrackReport {
        entries: 23,
        capacity: 1_048_576,
        evicted: 0,
        deleted: 4_298,
        missed_mid_flow: 2,
        proven_entries: 20,
        unproven_capacity: 262_144,
        evicted_proven: 0,
        evicted_unproven: 0,
        promoted: 311,
        flood_untracked: 0,
        new_flow_limit: 100_000,
    }
}

pub(crate) fn stats() -> StatsReport {
    StatsReport {
        counters: counters(),
        vips: vips(),
        backends: backends(),
        conntrack: conntrack(),
    }
}

pub(crate) fn flows() -> FlowList {
    FlowList {
        flows: vec![
            FlowEntry {
                client: sock("198.18.0.2:40000"),
                vip: sock("198.18.1.1:80"),
                proto: Proto::Tcp,
                backend: Some(sock("198.18.11.2:8080")),
                state: "established".to_owned(),
                idle_secs: 3,
                expires_in_secs: 10_797,
                proven: true,
            },
            FlowEntry {
                client: sock("[fd00::2]:5000"),
                vip: sock("[fd00::1]:53"),
                proto: Proto::Udp,
                backend: None,
                state: "udp".to_owned(),
                idle_secs: 100,
                expires_in_secs: 20,
                proven: false,
            },
        ],
        matched: 5,
    }
}

pub(crate) fn status() -> StatusReport {
    StatusReport {
        version: "0.0.0-fixture".to_owned(),
        datapath_build: "3f2a9c1b7d4e".to_owned(),
        pid: 4242,
        uptime_secs: 3_600,
        interfaces: vec![
            InterfaceEntry {
                name: "eth0".to_owned(),
                ifindex: 2,
                mode: "native".to_owned(),
                kind: None,
                advice: None,
            },
            InterfaceEntry {
                name: "eth1".to_owned(),
                ifindex: 3,
                mode: "pinned".to_owned(),
                kind: Some("veth".to_owned()),
                advice: egress::advise(&egress::EgressFacts {
                    iface: "eth1",
                    mode: "native",
                    kind: Some("veth"),
                    peer: Some(egress::PeerRef {
                        ifindex: 7,
                        name: Some("veth9f2"),
                        elsewhere: true,
                    }),
                    takes_redirects: Some(false),
                }),
            },
        ],
        pin_dir: "/sys/fs/bpf/lb".into(),
        state_file: "/var/lib/lb/state.toml".into(),
        api: "/run/lb/lb.sock".into(),
        adopted: true,
        table_size: 65_537,
        max_vips: 256,
        max_backends: 4096,
        conntrack_capacity: 1_048_576,
        conntrack_entries: 23,
        conntrack_proven_entries: 20,
        conntrack_unproven_capacity: 262_144,
        new_flow_limit: 100_000,
        conntrack_timeouts: [
            ("tcp_opening", 60),
            ("tcp_established", 10_800),
            ("tcp_closing", 120),
            ("tcp_closed", 10),
            ("udp", 120),
        ]
        .into_iter()
        .map(|(state, secs)| TimeoutEntry {
            state: state.to_owned(),
            secs,
        })
        .collect(),
        conntrack_sweep_secs: 5.0,
        vips: 2,
        backends: 3,
        node: node(),
        map_memory: Some(MemoryReport::new(
            [
                ("CONNTRACK", 268_435_456),
                ("MAGLEV", 134_217_728),
                ("HOPS", 1_048_576),
                ("BACKEND_HOPS", 262_144),
                ("ENDPOINTS", 65_536),
                ("STATS", 4_096),
            ]
            .into_iter()
            .map(|(name, bytes)| MapMemory {
                name: name.to_owned(),
                bytes,
            })
            .collect(),
        )),
        notify: Some(NotifyStatus {
            command: "/usr/local/bin/lb-page --team 'net ops'".to_owned(),
            timeout_secs: 10.0,
            runs: HookRuns {
                ok: 3,
                failed: 1,
                timed_out: 0,
                dropped: 0,
            },
        }),
        xdp_redirect_lost: Some(1_207),
        syn_checksum_partial: 0,
    }
}

/// A node announcing one VIP of two.
pub(crate) fn node() -> NodeReport {
    NodeReport {
        drained: false,
        announce_table: Some(4242),
        hash_seed: "set".to_owned(),
        announced: vec!["198.18.1.1".parse().expect("fixture address")],
        route_error: None,
        vips: vec![
            AnnounceEntry {
                vip: sock("198.18.1.1:80"),
                proto: Proto::Tcp,
                announced: true,
                reason: Reason::Serving,
                detail: Reason::Serving.to_string(),
            },
            AnnounceEntry {
                vip: sock("[fd00::1]:53"),
                proto: Proto::Udp,
                announced: false,
                reason: Reason::NoBackend,
                detail: Reason::NoBackend.to_string(),
            },
        ],
    }
}

/// `explain` answers, one per kind of verdict the snapshots pin.
pub(crate) fn explanations() -> Vec<(&'static str, super::explain::Explanation)> {
    use super::explain::{BackendStatus, Explanation, MaglevPick, ServiceMatch, TrackedFlow};
    use crate::model::explain::Verdict;
    let backend = |addr: &str, state: &str, health, drained| BackendStatus {
        backend: Some(sock(addr)),
        state: state.to_owned(),
        weight: Some(100),
        health,
        drained,
    };
    let service = |mode, checked: bool| ServiceMatch {
        mode,
        check: checked.then(|| vips()[0].check.clone()).flatten(),
        backends: 3,
        live: 2,
        healthy: 2,
        fail_open: false,
    };
    let maglev = |to: BackendStatus| MaglevPick {
        hash: 0x5d1f_0a7c,
        slot: 24_576,
        table_size: 65_537,
        table_fingerprint: "5d1f0a7c93e2b468".to_owned(),
        backend: Some(to),
    };
    let v4 = |verdict: Verdict, explanation: &str| Explanation {
        client: sock("198.18.0.1:40000"),
        vip: sock("198.18.1.1:80"),
        proto: Proto::Tcp,
        service: Some(service(Mode::Nat, true)),
        vip_address: true,
        tracked: None,
        maglev: Some(maglev(backend(
            "198.18.12.2:8080",
            "active",
            Health::Up,
            false,
        ))),
        verdict,
        action: verdict.action().to_owned(),
        counter: verdict.counter().to_owned(),
        explanation: explanation.to_owned(),
        admission: String::new(),
        hops: Vec::new(),
        quic: None,
    };
    let tracked = |state: &str, to: BackendStatus| TrackedFlow {
        state: state.to_owned(),
        idle_secs: 3,
        timeout_secs: 10_800,
        expires_in_secs: 10_797,
        expired: false,
        backend: to,
        proven: true,
        admission: "proven: only other proven flows can evict it, never a flood".to_owned(),
    };
    vec![
        (
            "tracked_draining",
            Explanation {
                tracked: Some(tracked(
                    "established",
                    backend("198.18.11.2:8080", "draining", Health::Up, true),
                )),
                ..v4(
                    Verdict::ForwardTracked,
                    "Forwarded to 198.18.11.2:8080 (destination NAT), the backend its conntrack entry pins it to (established, 10797 s of idleness left); 198.18.11.2:8080 is draining: it keeps its tracked flows but gets no new ones. A SYN on this 5-tuple (a reused client port) would open a new connection instead, balanced to 198.18.12.2:8080 (slot 24576).",
                )
            },
        ),
        (
            "rebalanced",
            Explanation {
                tracked: Some(tracked(
                    "established",
                    BackendStatus {
                        backend: None,
                        state: "removed".to_owned(),
                        weight: None,
                        health: Health::Unchecked,
                        drained: false,
                    },
                )),
                ..v4(
                    Verdict::Rebalance,
                    "The backend its conntrack entry pins it to was removed (ct_rebalanced): Maglev sends it to 198.18.12.2:8080 (slot 24576, destination NAT) and tracks it.",
                )
            },
        ),
        (
            "new_flow_v6_dsr",
            Explanation {
                client: sock("[fd00::1]:53000"),
                vip: sock("[fd00:1::1]:53"),
                proto: Proto::Udp,
                service: Some(service(Mode::DsrIpip, false)),
                maglev: Some(maglev(backend(
                    "[fd00:11::2]:53",
                    "active",
                    Health::Unchecked,
                    false,
                ))),
                ..v4(
                    Verdict::NewFlow,
                    "The flow is not tracked: Maglev sends it to [fd00:11::2]:53 (slot 24576, dsr-ipip: the packet encapsulated untouched) and tracks it.",
                )
            },
        ),
        (
            "new_flow_gue_second_chance",
            Explanation {
                service: Some(service(Mode::DsrGue, false)),
                maglev: Some(maglev(backend(
                    "198.18.12.3:80",
                    "active",
                    Health::Unchecked,
                    false,
                ))),
                vip: sock("198.18.1.1:80"),
                hops: vec![sock("198.18.12.3:80"), sock("198.18.12.2:80")],
                ..v4(
                    Verdict::NewFlow,
                    "The flow is not tracked: Maglev sends it to 198.18.12.3:80 (slot 24576, dsr-gue: the packet untouched inside UDP and GUE with its hop list) and tracks it. A SYN is tracked as opening; any other segment but a RST goes there too and is tracked as established, unproven for at most the opening timeout (ct_miss_mid_flow); a RST goes there untracked (ct_rst_untracked). Its hop list is 198.18.12.3:80 → 198.18.12.2:80: a backend without the connection (TCP: no SYN and no socket; UDP: not among its recent flows) hands the packet on to the next, and the last takes it (the second chance).",
                )
            },
        ),
        (
            "new_flow_quic",
            Explanation {
                client: sock("198.18.0.1:40000"),
                vip: sock("198.18.1.1:443"),
                proto: Proto::Udp,
                service: Some(service(Mode::Nat, false)),
                maglev: Some(maglev(backend(
                    "198.18.12.2:443",
                    "active",
                    Health::Unchecked,
                    false,
                ))),
                quic: Some(super::explain::QuicRoute {
                    configs: vec!["config=0,server-id-len=2,nonce-len=6".to_owned()],
                    connection_id: Some(super::explain::QuicIdRoute {
                        id: "0a1b2c3d4e5f6071".to_owned(),
                        config_id: 0,
                        server_id: Some("0a1b".to_owned()),
                        backend: Some(backend(
                            "198.18.12.3:443",
                            "active",
                            Health::Unchecked,
                            false,
                        )),
                        counter: "quic_by_server_id".to_owned(),
                    }),
                }),
                ..v4(
                    Verdict::NewFlow,
                    "The flow is not tracked: Maglev sends it to 198.18.12.2:443 (slot 24576, destination NAT) and tracks it. QUIC: Initial and 0-RTT packets carry the client's connection ID and go by Maglev as above; Handshake and short-header packets go to the backend whose server id their connection ID carries (configs: config=0,server-id-len=2,nonce-len=6), and a tracked flow's packet whose ID names another serving backend moves the flow there (quic_repinned). Connection ID 0a1b2c3d4e5f6071 carries server id 0a1b (config 0): its Handshake and short-header packets go to 198.18.12.3:443 (quic_by_server_id).",
                )
            },
        ),
        (
            "new_flow_admission",
            Explanation {
                admission: "a new flow is tracked as unproven, unless its CPU already tracked 100000 new flows this second (then it goes where Maglev says, untracked: ct_flood_untracked)".to_owned(),
                ..v4(
                    Verdict::NewFlow,
                    "The flow is not tracked: Maglev sends it to 198.18.12.2:8080 (slot 24576, destination NAT) and tracks it. A SYN is tracked as opening; any other segment but a RST goes there too and is tracked as established, unproven for at most the opening timeout (ct_miss_mid_flow); a RST goes there untracked (ct_rst_untracked).",
                )
            },
        ),
        (
            "kept_on_down",
            Explanation {
                tracked: Some(tracked(
                    "established",
                    backend("198.18.11.2:8080", "down", Health::Down, false),
                )),
                ..v4(
                    Verdict::ForwardTracked,
                    "Forwarded to 198.18.11.2:8080 (destination NAT), the backend its conntrack entry pins it to (established, 10797 s of idleness left); 198.18.11.2:8080 is down, and the flow is kept on it because its VIP keeps TCP flows on a down backend (--on-down keep-tcp, ct_kept_on_down). A SYN on this 5-tuple (a reused client port) would open a new connection instead, balanced to 198.18.12.2:8080 (slot 24576).",
                )
            },
        ),
        (
            "source_not_allowed",
            Explanation {
                client: sock("198.18.100.5:40000"),
                ..v4(
                    Verdict::DropSourceNotAllowed,
                    "198.18.100.5 is outside every --allow-source prefix of 198.18.1.1:80/tcp: a flow it opens is dropped (drop_source_not_allowed); flows tracked before are not checked.",
                )
            },
        ),
        (
            "not_a_vip",
            Explanation {
                vip: sock("198.18.9.9:80"),
                service: None,
                vip_address: false,
                maglev: None,
                ..v4(
                    Verdict::PassNotVip,
                    "198.18.9.9 is no VIP's address: passed untouched to the kernel's stack (XDP_PASS).",
                )
            },
        ),
    ]
}
