//! Global counters: what the datapath saw (protocols), what it decided (verdicts) and why
//! (reasons), and what happened to the conntrack table. Every packet bumps exactly one
//! verdict and exactly one reason.

use crate::consts::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};

/// Per-VIP counters (per-CPU slot, indexed by `VipInfo::id`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipCounter {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for VipCounter {}

impl VipCounter {
    pub fn merge(&mut self, other: &VipCounter) {
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.new_flows = self.new_flows.saturating_add(other.new_flows);
    }
}

/// One per-CPU counter slot. Userspace sums the slots of all CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

impl Counter {
    /// Adds another CPU's slot (saturating: a counter never wraps back to small values).
    pub fn merge(&mut self, other: &Counter) {
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// What a counter is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    Protocol,
    Verdict,
    Reason,
    /// Conntrack table events; `packets` counts events, `bytes` stays 0.
    Conntrack,
    /// Direct server return: packets and bytes sent in each DSR mode, and too big for it.
    Dsr,
    /// Frames the datapath sent on that the kernel dropped after it (`packets` only),
    /// counted by a tracing program: such a frame also has its verdict and reason.
    Lost,
    /// Packets whose sender left work to an offload XDP cannot finish (`packets` only);
    /// they also have their verdict and reason.
    Offload,
    /// How a packet to a QUIC VIP found its backend (`packets` only), beside its verdict
    /// and reason: by the server id in its connection ID, or by Maglev and why.
    Quic,
}

macro_rules! stats {
    ($($variant:ident = $index:literal, $name:literal, $kind:ident;)*) => {
        /// Index of a global counter in the stats map.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Stat {
            $($variant = $index,)*
        }

        impl Stat {
            /// Every counter, in index order.
            pub const ALL: &'static [Stat] = &[$(Stat::$variant,)*];

            /// Stable snake_case name, used in CLI output and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Stat::$variant => $name,)*
                }
            }

            pub const fn kind(self) -> StatKind {
                match self {
                    $(Stat::$variant => StatKind::$kind,)*
                }
            }

            pub const fn index(self) -> u32 {
                self as u32
            }
        }
    };
}

stats! {
    // Protocols seen (a packet bumps its L3 and, when parsed, its L4 counter).
    Ipv4 = 0, "ipv4", Protocol;
    Ipv6 = 1, "ipv6", Protocol;
    OtherL3 = 2, "other_l3", Protocol;
    Tcp = 3, "tcp", Protocol;
    Udp = 4, "udp", Protocol;
    Icmp = 5, "icmp", Protocol;
    OtherL4 = 6, "other_l4", Protocol;
    // Verdicts, one per XDP action value (XDP_ABORTED = 0 ... XDP_REDIRECT = 4).
    Aborted = 7, "xdp_aborted", Verdict;
    Drop = 8, "xdp_drop", Verdict;
    Pass = 9, "xdp_pass", Verdict;
    Tx = 10, "xdp_tx", Verdict;
    Redirect = 11, "xdp_redirect", Verdict;
    // Reasons: why the verdict was what it was.
    PassNotIp = 12, "pass_not_ip", Reason;
    PassNotVip = 13, "pass_not_vip", Reason;
    MalformedEthernet = 14, "malformed_ethernet", Reason;
    MalformedVlan = 15, "malformed_vlan", Reason;
    MalformedIpv4 = 16, "malformed_ipv4", Reason;
    MalformedIpv6 = 17, "malformed_ipv6", Reason;
    MalformedTcp = 18, "malformed_tcp", Reason;
    MalformedUdp = 19, "malformed_udp", Reason;
    ForwardNew = 20, "fwd_new_flow", Reason;
    ForwardEstablished = 21, "fwd_established", Reason;
    ForwardReply = 22, "fwd_reply", Reason;
    PassNoNeighbour = 23, "pass_no_neighbour", Reason;
    PassEgressNotAttached = 24, "pass_egress_not_attached", Reason;
    PassTtlExceeded = 25, "pass_ttl_exceeded", Reason;
    PassVipOtherPort = 26, "pass_vip_other_port", Reason;
    PassIcmpToVip = 27, "pass_icmp_to_vip", Reason;
    DropNoBackend = 28, "drop_no_backend", Reason;
    // A fragment to a VIP address that cannot follow a balanced first fragment: of a
    // protocol other than TCP/UDP (ICMP included), or any later fragment while lb_fragment
    // has no JUMPS slot (a JUMPS map pinned by an earlier release). An IPv6 Fragment
    // header behind other extension headers is drop_ipv6_ext_header.
    DropFragment = 29, "drop_fragment", Reason;
    DropIpv6ExtensionHeader = 30, "drop_ipv6_ext_header", Reason;
    DropFibFailure = 31, "drop_fib_failure", Reason;
    DropForwardingDisabled = 32, "drop_forwarding_disabled", Reason;
    PassToLocal = 33, "pass_to_local", Reason;
    // A fragment from a backend address that cannot be translated: of a protocol other
    // than TCP/UDP, any later fragment while lb_fragment has no JUMPS slot, or an ICMP
    // error quoting a later fragment sent to a backend.
    DropBackendFragment = 34, "drop_backend_fragment", Reason;
    DropBackendIpv6ExtensionHeader = 35, "drop_backend_ipv6_ext_header", Reason;
    IcmpEchoReply = 36, "icmp_echo_reply", Reason;
    // The too-big program could not be reached (not loaded): dropped, counted.
    DropTooBig = 37, "drop_too_big", Reason;
    PassFragmentationNeeded = 38, "pass_fragmentation_needed", Reason;
    ForwardIcmpToBackend = 39, "fwd_icmp_to_backend", Reason;
    ForwardIcmpToClient = 40, "fwd_icmp_to_client", Reason;
    IcmpTooBigSent = 41, "icmp_too_big_sent", Reason;
    DropTooBigRateLimited = 42, "drop_too_big_rate_limited", Reason;
    // Conntrack events. LRU evictions are silent in the kernel: userspace derives them as
    // entries created minus entries present minus entries it deleted.
    // A new flow tracked (in the unproven table; see ct_promoted).
    CtCreated = 43, "ct_created", Conntrack;
    CtReplaced = 44, "ct_replaced", Conntrack;
    CtInsertFailed = 45, "ct_insert_failed", Conntrack;
    CtMissMidFlow = 46, "ct_miss_mid_flow", Conntrack;
    // An entry found idle past its timeout (treated as absent, then replaced).
    CtExpired = 47, "ct_expired", Conntrack;
    // A tracked flow whose backend went down, was deleted or changed generation,
    // balanced again to a live backend.
    CtRebalanced = 48, "ct_rebalanced", Conntrack;
    // A RST that matched no entry: forwarded, never tracked.
    CtRstUntracked = 49, "ct_rst_untracked", Conntrack;
    // Direct server return, beside the packet's reason (fwd_new_flow, fwd_established).
    DsrIpipEncapsulated = 50, "dsr_ipip_encapsulated", Dsr;
    DsrL2Forwarded = 51, "dsr_l2_forwarded", Dsr;
    // A DSR packet that would not fit its next hop with the outer header: answered with
    // frag-needed / packet-too-big (or rate-limited), see icmp_too_big_sent.
    DsrTooBig = 52, "dsr_too_big", Dsr;
    // The backend's neighbour is not resolved: the kernel cannot forward a DSR packet for
    // us (the VIP is not its to route), so it is dropped.
    DropDsrNoNeighbour = 53, "drop_dsr_no_neighbour", Reason;
    // A dsr-l2 backend that is not on the lb's link (its route has a gateway).
    DropDsrNotOnLink = 54, "drop_dsr_not_on_link", Reason;
    // No outer header possible: an IPv6 packet for an IPv4 backend (refused by the
    // controller), or no outer source of the backend's family (no address on the lb's
    // interfaces and no --encap-source for it).
    DropDsrUnsupported = 55, "drop_dsr_unsupported", Reason;
    // The route toward a DSR backend ends on this host or leaves through an interface lb
    // is not attached to: the kernel would send the untouched packet to the VIP again.
    DropDsrUnroutable = 56, "drop_dsr_unroutable", Reason;
    // A frame to a VIP or from a backend addressed to a MAC that is not the interface's:
    // the kernel drops it (PACKET_OTHERHOST); forwarding it would duplicate the flow on
    // every lb node that sees it.
    PassOtherHost = 57, "pass_other_host", Reason;
    // Admission (docs/ARCHITECTURE.md, "Admission"): a flow tracked as unproven
    // (ct_created) moved to the proven table: reply and handshake, or enough packets ...
    CtPromoted = 58, "ct_promoted", Conntrack;
    // ... and a new flow not tracked at all: this CPU tracked its --new-flow-limit this
    // second (the flow still goes where Maglev says).
    CtFloodUntracked = 59, "ct_flood_untracked", Conntrack;
    // A tracked TCP flow kept on its backend while that backend is down (its VIP's
    // --on-down keep-tcp): counted once per flow, when it is first kept.
    CtKeptOnDown = 60, "ct_kept_on_down", Conntrack;
    // A new flow from a client outside every --allow-source prefix of its VIP.
    DropSourceNotAllowed = 61, "drop_source_not_allowed", Reason;
    // A frame with an 802.1Q / 802.1ad tag: passed untouched to the kernel, whose VLAN
    // interface owns it (lb does not forward tagged frames).
    PassVlanTagged = 62, "pass_vlan_tagged", Reason;
    // A later fragment (offset > 0) of a TCP/UDP datagram to a VIP address or from a
    // backend address whose first fragment was not seen (yet, or within 30 s, or its
    // entry was evicted): it carries no ports, so nothing says where it goes.
    DropFragmentNoFirst = 63, "drop_fragment_no_first", Reason;
    // A later fragment sent where its first fragment went: to the same backend (NAT:
    // destination address rewritten; DSR: encapsulated) or, from a backend, to the client
    // with the VIP as source.
    ForwardFragment = 64, "fwd_fragment", Reason;
    // A client → VIP packet of a proven NAT flow sent from the per-CPU flow cache (the
    // fast path: no conntrack lookup), also counted under `fwd_established`.
    FlowCacheHit = 65, "flow_cache_hit", Conntrack;
    // A frame redirected out of an attached interface that the kernel then refused to
    // send (the tracepoint xdp:xdp_redirect_err for TX_PORTS): most often a veth whose
    // peer has no NAPI (neither GRO nor an XDP program); the frame is lost.
    RedirectLost = 66, "xdp_redirect_lost", Lost;
    // A client's SYN whose checksum is only the pseudo-header's sum (its sender left the
    // rest to an offload: a socket behind a veth with tx checksumming on). XDP cannot
    // finish it: forwarded in native mode, the receiver drops it (in skb mode the kernel
    // keeps the offload's state and it arrives). Also counted as fwd_new_flow.
    SynChecksumPartial = 67, "syn_checksum_partial", Offload;
    // dsr-gue: sent inside UDP and GUE with the flow's hop list, beside its reason.
    DsrGueEncapsulated = 68, "dsr_gue_encapsulated", Dsr;
    // ... of which with more than one hop: the flow's slot had another backend in an
    // earlier table (or its tracked backend is not the table's), so the first backend
    // may hand it on (the second chance).
    GueSecondHop = 69, "gue_sent_with_second_hop", Dsr;
    // QUIC VIPs (`--quic`), one of these per client packet that looked for a backend (a
    // conntrack miss, or a tracked flow of a QUIC VIP): a Handshake or short-header packet
    // sent to the backend whose server id its connection ID carries ...
    QuicByServerId = 70, "quic_by_server_id", Quic;
    // ... a long header the client chose the ID of (Initial, 0-RTT) or of a version lb
    // does not read: by Maglev ...
    QuicLongHeader = 71, "quic_long_header", Quic;
    // ... an ID of a config the VIP does not have (or the unroutable config 7): Maglev ...
    QuicUnknownConfig = 72, "quic_unknown_config", Quic;
    // ... a server id that names no backend serving the VIP (unknown, deleted, down):
    // Maglev ...
    QuicUnknownServerId = 73, "quic_unknown_server_id", Quic;
    // ... a datagram too short for a QUIC header and its connection ID: Maglev.
    QuicTruncated = 74, "quic_truncated", Quic;
    // A tracked flow whose connection ID names another serving backend (its 5-tuple now
    // carries another connection): pinned to that backend, also quic_by_server_id.
    QuicRepinned = 75, "quic_repinned", Quic;
    // A SYN that looked in the proven table and found no entry of its 5-tuple: the
    // proven-flow filter had its bit set by another flow, or was not built yet (until the
    // daemon's first sweep). Its ratio to fwd_new_flow says how well the filter spares
    // new flows that lookup.
    CtFilterFalsePositive = 76, "ct_filter_false_positive", Conntrack;
    // An unproven flow deleted to make room in the full unproven table for a new one: the
    // oldest its CPU tracked that was still there (a flood evicts its own entries).
    CtUnprovenEvicted = 77, "ct_unproven_evicted", Conntrack;
}

/// Number of slots in the stats map.
pub const STAT_COUNT: u32 = Stat::ALL.len() as u32;

/// The reasons a packet is dropped for, in their `VIP_DROPS` slot order.
pub const DROP_REASONS: [Stat; 16] = [
    Stat::DropNoBackend,
    Stat::DropFragment,
    Stat::DropIpv6ExtensionHeader,
    Stat::DropFibFailure,
    Stat::DropForwardingDisabled,
    Stat::DropBackendFragment,
    Stat::DropBackendIpv6ExtensionHeader,
    Stat::DropTooBig,
    Stat::DropTooBigRateLimited,
    Stat::DropDsrNoNeighbour,
    Stat::DropDsrNotOnLink,
    Stat::DropDsrUnsupported,
    Stat::DropDsrUnroutable,
    Stat::DropSourceNotAllowed,
    Stat::DropFragmentNoFirst,
    Stat::Drop,
];

/// Slots per VIP in `VIP_DROPS`.
pub const DROP_SLOTS: u32 = DROP_REASONS.len() as u32;

/// [`Stat::drop_slot`] of a `Stat` index (the datapath's reasons travel as indices); an
/// index that names no drop reason takes the last slot.
pub const fn drop_slot_of_index(index: u32) -> u32 {
    let mut slot = 0;
    while slot < DROP_SLOTS - 1 {
        if DROP_REASONS[slot as usize] as u32 == index {
            return slot;
        }
        slot += 1;
    }
    DROP_SLOTS - 1
}

impl Stat {
    /// This drop reason's slot among a VIP's `VIP_DROPS` counters; any other reason of a
    /// dropped packet counts in the last slot (`xdp_drop`: a reason not listed there).
    pub const fn drop_slot(self) -> u32 {
        drop_slot_of_index(self as u32)
    }

    /// The verdict counter for an XDP action value; unknown values count as aborted.
    pub const fn for_action(action: u32) -> Stat {
        match action {
            XDP_DROP => Stat::Drop,
            XDP_PASS => Stat::Pass,
            XDP_TX => Stat::Tx,
            XDP_REDIRECT => Stat::Redirect,
            _ => Stat::Aborted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (position, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(stat.index() as usize, position, "{stat:?} is out of order");
        }
        for (i, a) in Stat::ALL.iter().enumerate() {
            for b in &Stat::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn every_drop_reason_has_its_own_slot() {
        for (slot, reason) in DROP_REASONS.iter().enumerate() {
            assert_eq!(reason.drop_slot() as usize, slot, "{reason:?}");
        }
        // Every reason named drop_* is listed; anything else shares the last slot.
        for stat in Stat::ALL {
            let listed = DROP_REASONS.contains(stat);
            assert_eq!(
                stat.name().starts_with("drop_"),
                listed && *stat != Stat::Drop
            );
            if !listed {
                assert_eq!(stat.drop_slot(), DROP_SLOTS - 1);
            }
        }
    }

    #[test]
    fn every_xdp_action_has_its_verdict_counter() {
        let verdicts: [Stat; 5] = core::array::from_fn(|action| Stat::for_action(action as u32));
        assert_eq!(
            verdicts,
            [
                Stat::Aborted,
                Stat::Drop,
                Stat::Pass,
                Stat::Tx,
                Stat::Redirect
            ]
        );
        assert!(verdicts.iter().all(|v| v.kind() == StatKind::Verdict));
        assert_eq!(Stat::for_action(99), Stat::Aborted);
    }

    #[test]
    fn merge_sums_and_saturates() {
        let mut total = Counter {
            packets: 1,
            bytes: 10,
        };
        total.merge(&Counter {
            packets: 2,
            bytes: u64::MAX,
        });
        assert_eq!(
            total,
            Counter {
                packets: 3,
                bytes: u64::MAX
            }
        );
    }
}
