//! `lb explain`: what the datapath will do with the next packet of one flow, decided from
//! what its maps hold, by the datapath's own rules. Pure; the daemon reads the maps.
//!
//! Every rule here mirrors a function of lb-ebpf, named in a comment: a change there that
//! is not made here makes `lb explain` wrong, and the unit tests below say which case.

use std::net::SocketAddr;

use lb_common::{
    consts::{
        BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_FLAG_KEEP_TCP_ON_DOWN, IPPROTO_TCP,
        NO_BACKEND,
    },
    flow::{
        CT_CLOSED, CT_CLOSING, CT_DATAGRAM, CT_FLAG_REPLY_SEEN, CT_FLAG_SYN_SEEN, Conn,
        PROVEN_AFTER_PACKETS, Timeouts,
    },
    hash::{HashSeed, flow_hash},
    service::{Backend, VipInfo},
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a flow cannot be explained: it is not one the datapath could see.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FlowError {
    #[error("port 0 in {0}: a TCP or UDP flow has a port on both ends")]
    PortZero(SocketAddr),
    #[error("client {client} and VIP {vip} are of different address families")]
    FamilyMismatch { client: SocketAddr, vip: SocketAddr },
}

/// Checks a client → VIP pair before anything is read.
pub fn check_flow(client: SocketAddr, vip: SocketAddr) -> Result<(), FlowError> {
    for end in [client, vip] {
        if end.port() == 0 {
            return Err(FlowError::PortZero(end));
        }
    }
    if client.is_ipv4() != vip.is_ipv4() {
        return Err(FlowError::FamilyMismatch { client, vip });
    }
    Ok(())
}

/// What the next packet of the flow gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Forwarded to the backend its live entry pins it to (`fwd_established`).
    ForwardTracked,
    /// Balanced by Maglev and tracked from here (`fwd_new_flow`): no entry, or an expired one.
    NewFlow,
    /// Its live entry's backend no longer serves it (down, removed, id reused): balanced
    /// again by Maglev and the entry replaced (`ct_rebalanced`, `fwd_new_flow`).
    Rebalance,
    /// For a VIP whose table slot has no active backend: dropped (`drop_no_backend`).
    DropNoBackend,
    /// A flow to open (no entry serving it) from a client outside every source prefix of
    /// its VIP: dropped (`drop_source_not_allowed`).
    DropSourceNotAllowed,
    /// The address is a VIP's, but not this port and protocol: to the kernel (`pass_vip_other_port`).
    PassVipOtherPort,
    /// No VIP: to the kernel's own stack untouched (`pass_not_vip`).
    PassNotVip,
    /// No VIP, but the client is a NAT backend endpoint: its packet is taken for a reply of
    /// the VIP that backend serves and leaves with the VIP as its source (`fwd_reply`).
    BackendReply,
}

impl Verdict {
    /// The XDP action family: `forward` (XDP_TX / XDP_REDIRECT, or a tail call that
    /// ends in one), `pass` (XDP_PASS) or `drop` (XDP_DROP).
    pub const fn action(self) -> &'static str {
        match self {
            Verdict::ForwardTracked
            | Verdict::NewFlow
            | Verdict::Rebalance
            | Verdict::BackendReply => "forward",
            Verdict::DropNoBackend | Verdict::DropSourceNotAllowed => "drop",
            Verdict::PassVipOtherPort | Verdict::PassNotVip => "pass",
        }
    }

    /// The reason counter (`lb stats`) the packet is counted under.
    pub const fn counter(self) -> &'static str {
        match self {
            Verdict::ForwardTracked => "fwd_established",
            Verdict::NewFlow | Verdict::Rebalance => "fwd_new_flow",
            Verdict::DropNoBackend => "drop_no_backend",
            Verdict::DropSourceNotAllowed => "drop_source_not_allowed",
            Verdict::PassVipOtherPort => "pass_vip_other_port",
            Verdict::PassNotVip => "pass_not_vip",
            Verdict::BackendReply => "fwd_reply",
        }
    }
}

/// What the maps hold for one client → VIP flow, read with the keys the datapath builds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts {
    /// The entry [`looked_up`] finds, and BACKENDS[its backend_id].
    pub tracked: Option<(Conn, Backend)>,
    /// The entry is in CONNTRACK (proven), not CT_UNPROVEN.
    pub proven: bool,
    /// VIPS[destination address, port, protocol].
    pub vip: Option<VipInfo>,
    /// VIPS holds the address entry of the destination (a VIP on another port or protocol).
    pub vip_address: bool,
    /// The backend Maglev picks ([`maglev_slot`]): its id and BACKENDS entry; `None` when
    /// the slot holds [`NO_BACKEND`] or there is no VIP.
    pub slot: Option<(u32, Backend)>,
    /// ENDPOINTS[client address, port, protocol]: the client is a NAT backend endpoint.
    pub client_is_endpoint: bool,
    /// The flow's protocol (`IPPROTO_*`): a down backend may keep TCP flows only.
    pub proto: u8,
    /// The VIP has source prefixes (`VIP_FLAG_SOURCE_RANGES`) and SOURCE_RANGES holds
    /// none of its own that contains the client.
    pub source_refused: bool,
    pub now_ns: u64,
    pub timeouts: Timeouts,
}

/// Why a tracked entry is proven, or what would prove it: conntrack.rs `proven`.
pub fn admission_of(conn: &Conn, proven: bool, nat: bool) -> String {
    if proven {
        return "proven: a flood of new flows never evicts it".to_owned();
    }
    let opened = conn.flags & CT_FLAG_SYN_SEEN != 0;
    let answered = conn.flags & CT_FLAG_REPLY_SEEN != 0;
    let closing = matches!(conn.state, CT_CLOSING | CT_CLOSED);
    let needs = match conn.state {
        _ if closing => "nothing: a closing flow stays unproven".to_owned(),
        CT_DATAGRAM if nat && answered => "the client's next datagram".to_owned(),
        CT_DATAGRAM if nat => {
            "a reply from the backend, then the client's next datagram".to_owned()
        }
        _ if opened && nat && answered => format!(
            "the client's ACK of the backend's SYN-ACK (acknowledgment number ending in {:#06x})",
            conn.proof
        ),
        _ if opened && nat => "the backend's SYN-ACK, then the client's ACK of it".to_owned(),
        _ if opened => "the client's ACK that completes the handshake".to_owned(),
        _ => format!(
            "{PROVEN_AFTER_PACKETS} packets from the client ({} so far)",
            conn.proof
        ),
    };
    format!("unproven: proven by {needs}; until then a flood of new flows may evict it")
}

/// How a new flow would be tracked: conntrack.rs `insert` and `admit`.
pub fn admission_of_new_flow(new_flow_limit: u32) -> String {
    let guard = if new_flow_limit == 0 {
        String::new()
    } else {
        format!(
            ", unless its CPU already tracked {new_flow_limit} new flows this second (then it goes where Maglev says, untracked: ct_flood_untracked)"
        )
    };
    format!("a new flow is tracked as unproven{guard}")
}

/// Where a flow falls in a VIP's Maglev tables: lb-ebpf select.rs `maglev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevSlot {
    pub hash: u32,
    pub slot: u32,
    /// Which of the VIP's two tables is live (0 or 1).
    pub table: u8,
    /// The MAGLEV array index of the slot.
    pub index: u32,
}

/// select.rs `maglev`: `flow_hash(flow, seed) % size`, in table `vip.id * 2 + (active_table & 1)`.
/// `None` for a zero size (the datapath then picks nothing).
pub fn maglev_slot(
    flow: &lb_common::flow::FlowKey,
    seed: &HashSeed,
    size: u32,
    vip: &VipInfo,
) -> Option<MaglevSlot> {
    if size == 0 {
        return None;
    }
    let hash = flow_hash(flow, seed);
    let slot = hash % size;
    let table = vip.active_table & 1;
    let index = (vip.id * 2 + u32::from(table)) * size + slot;
    Some(MaglevSlot {
        hash,
        slot,
        table,
        index,
    })
}

/// select.rs `maglev`: the slot's backend takes the flow only if it is active.
pub const fn maglev_takes(id: u32, backend: &Backend) -> bool {
    id != NO_BACKEND && backend.state == BACKEND_ACTIVE
}

/// select.rs `tracked`: a tracked flow keeps its backend while that backend is active or
/// draining, or down with its VIP's `--on-down keep-tcp` for a TCP flow (`proto`), and
/// still of the entry's VIP and of the entry's generation.
pub const fn still_serves(conn: &Conn, backend: &Backend, proto: u8) -> bool {
    if backend.vip_id != conn.vip_id || backend.generation != conn.generation {
        return false;
    }
    match backend.state {
        BACKEND_ACTIVE | BACKEND_DRAINING => true,
        BACKEND_DOWN => kept_on_down(backend, proto),
        _ => false,
    }
}

/// select.rs `keeps_on_down`: a down backend keeps a tracked TCP flow when its VIP says
/// `--on-down keep-tcp` (the flag copied into its BACKENDS entry).
pub const fn kept_on_down(backend: &Backend, proto: u8) -> bool {
    proto == IPPROTO_TCP && backend.flags & BACKEND_FLAG_KEEP_TCP_ON_DOWN != 0
}

/// What a BACKENDS entry says of the backend an id names for a flow pinned under
/// (`vip_id`, `generation`): `active`, `draining`, `down`, or `removed` (retired, or the
/// id given to another backend since; see control/map_sync.rs `write_backend`).
pub const fn backend_state(backend: &Backend, vip_id: u32, generation: u32) -> &'static str {
    if backend.vip_id != vip_id || backend.generation != generation {
        return "removed";
    }
    match backend.state {
        BACKEND_ACTIVE => "active",
        BACKEND_DRAINING => "draining",
        BACKEND_DOWN => "down",
        _ => "removed",
    }
}

/// control/map_sync.rs `effective`: when every backend the operator has not drained fails
/// its check, they all stay in the table (fail open) rather than the VIP dropping.
pub const fn fail_open(checked: bool, live: usize, healthy: usize) -> bool {
    checked && live > 0 && healthy == 0
}

/// How the tracked entry stands with the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Missing,
    /// Idle past its state's timeout: conntrack.rs `lookup` returns `Expired`.
    Expired,
    /// Live and its backend still serves it (select.rs `tracked`).
    Serving,
    /// Live, but its backend no longer serves it.
    Stale,
}

/// The entry conntrack.rs `lookup` takes for a client → VIP packet: the proven one (live
/// or expired), else the unproven one; `true`: proven.
pub fn looked_up(unproven: Option<Conn>, proven: Option<Conn>) -> Option<(Conn, bool)> {
    match (unproven, proven) {
        (_, Some(conn)) => Some((conn, true)),
        (unproven, None) => unproven.map(|conn| (conn, false)),
    }
}

pub fn entry(facts: &Facts) -> Entry {
    match &facts.tracked {
        None => Entry::Missing,
        // conntrack.rs `lookup`: expired when idle longer than `timeout_ns(state)`; the
        // same formula as `Conn::expired`, with the timeouts the program was loaded with.
        Some((conn, _)) if facts.proven && conn.expired(facts.now_ns, &facts.timeouts) => {
            Entry::Expired
        }
        // The unproven table's timeout (`unproven_timeout_ns`).
        Some((conn, _))
            if !facts.proven && conn.expired_unproven(facts.now_ns, &facts.timeouts) =>
        {
            Entry::Expired
        }
        Some((conn, backend)) if still_serves(conn, backend, facts.proto) => Entry::Serving,
        Some(_) => Entry::Stale,
    }
}

/// The datapath's decision for the next non-SYN packet of the flow (with a TTL above 1),
/// in the order main.rs takes it: `process` → `to_backend` → `chosen_backend` (tracked
/// entry first, then the VIP) → `pick_backend`; for no VIP, `to_client` if the client is
/// a backend endpoint, else a pass.
pub fn decide(facts: &Facts) -> Verdict {
    let entry = entry(facts);
    // chosen_backend: a live entry whose backend still serves it is forwarded with no VIP
    // lookup. (`process` calls `to_backend` only when the ADDRESSES bucket says the address
    // may be a VIP's; a serving entry's VIP exists, so its address entry sets the bucket.)
    if entry == Entry::Serving {
        return Verdict::ForwardTracked;
    }
    if facts.vip.is_none() {
        // process: `to_backend` returned None; then the endpoint, then the VIP address.
        return if facts.client_is_endpoint {
            Verdict::BackendReply
        } else if facts.vip_address {
            Verdict::PassVipOtherPort
        } else {
            Verdict::PassNotVip
        };
    }
    // chosen_backend: policy.rs `source_allowed`, right after the VIP lookup.
    if facts.source_refused {
        return Verdict::DropSourceNotAllowed;
    }
    // pick_backend: select::maglev or drop_no_backend.
    match facts.slot {
        Some((id, backend)) if maglev_takes(id, &backend) => {
            if entry == Entry::Stale {
                Verdict::Rebalance
            } else {
                Verdict::NewFlow
            }
        }
        _ => Verdict::DropNoBackend,
    }
}

#[cfg(test)]
mod tests {
    use lb_common::flow::{CT_ESTABLISHED, DEFAULT_TIMEOUTS_NS, FlowKey};

    use super::*;

    const NS: u64 = 1_000_000_000;

    fn backend(state: u8) -> Backend {
        Backend {
            state,
            vip_id: 3,
            generation: 7,
            ..Backend::default()
        }
    }

    fn conn(last_seen_ns: u64) -> Conn {
        Conn {
            backend_id: 1,
            vip_id: 3,
            generation: 7,
            last_seen_ns,
            state: CT_ESTABLISHED,
            ..Conn::default()
        }
    }

    fn facts() -> Facts {
        Facts {
            vip: Some(VipInfo {
                id: 3,
                ..VipInfo::default()
            }),
            vip_address: true,
            slot: Some((2, backend(BACKEND_ACTIVE))),
            now_ns: 100 * NS,
            timeouts: DEFAULT_TIMEOUTS_NS,
            proven: true,
            ..Facts::default()
        }
    }

    #[test]
    fn an_unproven_entry_lives_no_longer_than_an_opening_one() {
        let opening = DEFAULT_TIMEOUTS_NS[0];
        let now = facts().now_ns;
        let idle = |ns: u64, proven: bool| Facts {
            tracked: Some((conn(now - ns), backend(BACKEND_ACTIVE))),
            proven,
            ..facts()
        };
        assert_eq!(entry(&idle(opening, false)), Entry::Serving);
        assert_eq!(entry(&idle(opening + NS, false)), Entry::Expired);
        assert_eq!(entry(&idle(opening + NS, true)), Entry::Serving);
    }

    /// The proven table first, as the datapath looks (a flow in both, mid-promotion,
    /// is the proven one's).
    #[test]
    fn the_proven_entry_is_looked_up_first() {
        let now = facts().now_ns;
        let mut new = conn(now);
        new.backend_id = 2;
        let old = conn(now - NS);
        assert_eq!(looked_up(Some(new), Some(old)), Some((old, true)));
        assert_eq!(looked_up(Some(new), None), Some((new, false)));
        assert_eq!(looked_up(None, Some(old)), Some((old, true)));
        assert_eq!(looked_up(None, None), None);
    }

    #[test]
    fn admission_says_what_proves_a_flow() {
        let mut c = conn(0);
        assert!(admission_of(&c, true, true).starts_with("proven"));
        // An established flow lb did not see open: its client's packets.
        c.proof = 2;
        assert!(admission_of(&c, false, true).contains("4 packets from the client (2 so far)"));
        c.flags = CT_FLAG_SYN_SEEN;
        assert!(admission_of(&c, false, true).contains("the backend's SYN-ACK"));
        c.flags = CT_FLAG_SYN_SEEN | CT_FLAG_REPLY_SEEN;
        c.proof = 0x1235;
        assert!(admission_of(&c, false, true).contains("0x1235"));
        assert!(admission_of(&c, false, false).contains("handshake"));
        c.state = CT_DATAGRAM;
        c.flags = 0;
        assert!(admission_of(&c, false, true).contains("a reply from the backend"));
        c.state = CT_CLOSED;
        assert!(admission_of(&c, false, true).contains("closing"));
        assert!(admission_of_new_flow(0).ends_with("unproven"));
        assert!(admission_of_new_flow(5).contains("5 new flows"));
    }

    #[test]
    fn a_pair_needs_ports_and_one_family() {
        let s = |t: &str| t.parse::<SocketAddr>().expect("addr");
        assert_eq!(check_flow(s("198.18.0.1:4000"), s("198.18.1.1:80")), Ok(()));
        assert_eq!(check_flow(s("[fd00::1]:4000"), s("[fd00:1::1]:80")), Ok(()));
        assert!(matches!(
            check_flow(s("198.18.0.1:4000"), s("[fd00:1::1]:80")),
            Err(FlowError::FamilyMismatch { .. })
        ));
        assert_eq!(
            check_flow(s("198.18.0.1:0"), s("198.18.1.1:80")),
            Err(FlowError::PortZero(s("198.18.0.1:0")))
        );
        assert_eq!(
            check_flow(s("198.18.0.1:1"), s("198.18.1.1:0")),
            Err(FlowError::PortZero(s("198.18.1.1:0")))
        );
    }

    #[test]
    fn a_live_entry_keeps_an_active_or_draining_backend() {
        for state in [BACKEND_ACTIVE, BACKEND_DRAINING] {
            let f = Facts {
                tracked: Some((conn(99 * NS), backend(state))),
                ..facts()
            };
            assert_eq!(decide(&f), Verdict::ForwardTracked, "state {state}");
        }
        // Even with no VIP left to look up (chosen_backend looks at the entry first).
        let f = Facts {
            tracked: Some((conn(99 * NS), backend(BACKEND_ACTIVE))),
            vip: None,
            slot: None,
            ..facts()
        };
        assert_eq!(decide(&f), Verdict::ForwardTracked);
    }

    #[test]
    fn a_down_removed_or_reused_backend_loses_its_flows() {
        let reused = Backend {
            generation: 8,
            ..backend(BACKEND_ACTIVE)
        };
        let other_vip = Backend {
            vip_id: 4,
            ..backend(BACKEND_ACTIVE)
        };
        for stale in [backend(BACKEND_DOWN), Backend::default(), reused, other_vip] {
            let f = Facts {
                tracked: Some((conn(99 * NS), stale)),
                ..facts()
            };
            assert_eq!(decide(&f), Verdict::Rebalance, "{stale:?}");
        }
        assert_eq!(backend_state(&backend(BACKEND_DOWN), 3, 7), "down");
        assert_eq!(backend_state(&reused, 3, 7), "removed");
        assert_eq!(backend_state(&Backend::default(), 3, 7), "removed");
    }

    #[test]
    fn a_down_backend_keeps_tcp_flows_only_under_keep_tcp() {
        use lb_common::consts::IPPROTO_UDP;
        let keep = Backend {
            flags: BACKEND_FLAG_KEEP_TCP_ON_DOWN,
            ..backend(BACKEND_DOWN)
        };
        let tracked = |backend: Backend, proto: u8| Facts {
            tracked: Some((conn(99 * NS), backend)),
            proto,
            ..facts()
        };
        assert_eq!(decide(&tracked(keep, IPPROTO_TCP)), Verdict::ForwardTracked);
        assert_eq!(decide(&tracked(keep, IPPROTO_UDP)), Verdict::Rebalance);
        assert_eq!(
            decide(&tracked(backend(BACKEND_DOWN), IPPROTO_TCP)),
            Verdict::Rebalance,
            "--on-down move"
        );
        // Kept only while the entry is its backend's: not once the id is reused.
        let reused = Backend {
            generation: 8,
            ..keep
        };
        assert_eq!(decide(&tracked(reused, IPPROTO_TCP)), Verdict::Rebalance);
    }

    #[test]
    fn a_client_outside_the_source_prefixes_opens_nothing_but_keeps_its_flow() {
        let refused = Facts {
            source_refused: true,
            ..facts()
        };
        let verdict = decide(&refused);
        assert_eq!(verdict, Verdict::DropSourceNotAllowed);
        assert_eq!(
            (verdict.action(), verdict.counter()),
            ("drop", "drop_source_not_allowed")
        );
        // A stale entry is balanced afresh, so it is refused too.
        let stale = Facts {
            tracked: Some((conn(99 * NS), Backend::default())),
            ..refused
        };
        assert_eq!(decide(&stale), Verdict::DropSourceNotAllowed);
        // A flow tracked before the prefixes changed is never asked.
        let serving = Facts {
            tracked: Some((conn(99 * NS), backend(BACKEND_ACTIVE))),
            ..refused
        };
        assert_eq!(decide(&serving), Verdict::ForwardTracked);
    }

    #[test]
    fn an_entry_idle_past_its_timeout_counts_as_absent() {
        let timeout = DEFAULT_TIMEOUTS_NS[CT_ESTABLISHED as usize];
        let now = facts().now_ns + timeout;
        let at_limit = Facts {
            tracked: Some((conn(facts().now_ns), backend(BACKEND_ACTIVE))),
            now_ns: now,
            ..facts()
        };
        assert_eq!(entry(&at_limit), Entry::Serving, "expired only past it");
        let past = Facts {
            now_ns: now + 1,
            ..at_limit
        };
        assert_eq!(entry(&past), Entry::Expired);
        assert_eq!(decide(&past), Verdict::NewFlow);
    }

    #[test]
    fn without_an_entry_maglev_decides_or_the_packet_drops() {
        assert_eq!(decide(&facts()), Verdict::NewFlow);
        for slot in [
            None,
            Some((NO_BACKEND, backend(BACKEND_ACTIVE))),
            Some((2, backend(BACKEND_DRAINING))),
        ] {
            let f = Facts { slot, ..facts() };
            assert_eq!(decide(&f), Verdict::DropNoBackend, "{slot:?}");
        }
    }

    #[test]
    fn traffic_of_no_vip_passes_unless_it_comes_from_an_endpoint() {
        let no_vip = Facts {
            vip: None,
            slot: None,
            ..facts()
        };
        assert_eq!(decide(&no_vip), Verdict::PassVipOtherPort);
        let elsewhere = Facts {
            vip_address: false,
            ..no_vip
        };
        assert_eq!(decide(&elsewhere), Verdict::PassNotVip);
        let verdict = decide(&elsewhere);
        assert_eq!(
            (verdict.action(), verdict.counter()),
            ("pass", "pass_not_vip")
        );
        let endpoint = Facts {
            client_is_endpoint: true,
            ..elsewhere
        };
        assert_eq!(decide(&endpoint), Verdict::BackendReply);
    }

    #[test]
    fn only_a_checked_vip_whose_live_backends_all_fail_is_open() {
        assert!(fail_open(true, 2, 0));
        assert!(!fail_open(true, 2, 1));
        assert!(!fail_open(true, 0, 0), "no live backend: nothing to keep");
        assert!(!fail_open(false, 2, 0));
    }

    #[test]
    fn the_slot_is_taken_as_the_datapath_takes_it() {
        let flow = FlowKey::default();
        let vip = VipInfo {
            id: 5,
            active_table: 1,
            ..VipInfo::default()
        };
        let at = maglev_slot(&flow, &[1, 2], 13, &vip).expect("a slot");
        assert_eq!(at.hash, flow_hash(&flow, &[1, 2]));
        assert_eq!(at.slot, at.hash % 13);
        assert_eq!(at.index, (5 * 2 + 1) * 13 + at.slot);
        assert_eq!(maglev_slot(&flow, &[0; 2], 0, &vip), None);
    }
}
