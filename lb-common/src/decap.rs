//! The backends' decapsulation program (`lb_decap`): its map names, sizes, configuration
//! and counters. Its own object, so a backend never creates the balancer's maps.
//!
//! Addresses in its maps are 16 bytes: IPv6 as is, IPv4 mapped into `::ffff:0:0/96`
//! ([`mapped_v4`]), so one hash map and one LPM trie serve both families.

/// The XDP program in the decap object.
pub const DECAP_PROGRAM_NAME: &str = "lb_decap";
/// dsr-gue's program, tail-called by `lb_decap` through `DECAP_JUMPS` at [`JUMP_DECAP_GUE`].
pub const DECAP_GUE_PROGRAM_NAME: &str = "lb_decap_gue";
pub const JUMP_DECAP_GUE: u32 = 0;
/// Program array of `lb_decap_gue`. Pinned with the other maps: a program array is
/// emptied when no user-space reference holds it, and the attach command exits.
pub const MAP_DECAP_JUMPS: &str = "DECAP_JUMPS";

/// Hash: outer destination address ([`mapped_v4`] or IPv6) → 1. Only packets addressed to
/// one of these are decapsulated.
pub const MAP_DECAP_LOCAL: &str = "DECAP_LOCAL";
/// LPM trie: allowed outer source prefixes (16-byte data, IPv4 mapped, prefix + 96).
/// Consulted only when [`DECAP_FILTER_SOURCES`] is set in [`MAP_DECAP_CONFIG`].
pub const MAP_DECAP_SOURCES: &str = "DECAP_SOURCES";
/// Array of one [`DecapConfig`].
pub const MAP_DECAP_CONFIG: &str = "DECAP_CONFIG";
/// Per-CPU array of [`crate::stats::Counter`], indexed by [`DecapStat`].
pub const MAP_DECAP_STATS: &str = "DECAP_STATS";
/// LRU hash: the inner 5-tuple of UDP flows this host took from dsr-gue
/// ([`crate::gue::RecentKey`]) → when it last took one of their packets (ns, coarse
/// monotonic clock). A UDP flow found here, and not older than [`DECAP_RECENT_NS`], stays
/// here instead of going to its next hop.
pub const MAP_DECAP_RECENT: &str = "DECAP_RECENT";
/// Entries of `DECAP_RECENT`.
pub const DECAP_MAX_RECENT: u32 = 65_536;
/// How long a UDP flow counts as this host's after its last packet: the balancer's default
/// UDP idle timeout, after which its conntrack entry would be gone too.
pub const DECAP_RECENT_NS: u64 = crate::flow::Timeout::Udp.default_secs() * 1_000_000_000;

/// Every map of the decap object, each pinned by its name when the program is pinned.
pub const DECAP_PINNED_MAPS: [&str; 6] = [
    MAP_DECAP_LOCAL,
    MAP_DECAP_SOURCES,
    MAP_DECAP_CONFIG,
    MAP_DECAP_STATS,
    MAP_DECAP_RECENT,
    MAP_DECAP_JUMPS,
];

/// Entries of `DECAP_LOCAL`: the host's addresses that tunnels may be sent to.
pub const DECAP_MAX_LOCAL: u32 = 256;
/// Entries of `DECAP_SOURCES`.
pub const DECAP_MAX_SOURCES: u32 = 64;

/// `DecapConfig::flags`: only outer sources inside a `DECAP_SOURCES` prefix are
/// decapsulated. Clear: any source (an empty trie could not be told from a filter that
/// matches nothing).
pub const DECAP_FILTER_SOURCES: u32 = 1;

/// Runtime settings of the decap program (slot 0 of `DECAP_CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    pub flags: u32,
    /// The UDP port of dsr-gue (host order; 0: GUE is not decapsulated).
    pub gue_port: u16,
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for DecapConfig {}

/// An IPv4 address as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), the form both decap
/// maps use.
pub const fn mapped_v4(octets: [u8; 4]) -> [u8; 16] {
    let [a, b, c, d] = octets;
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

/// The LPM prefix length of an IPv4 prefix of `len` bits in its mapped form.
pub const fn mapped_v4_prefix_len(len: u8) -> u32 {
    96 + len as u32
}

macro_rules! decap_stats {
    ($($variant:ident = $index:literal, $name:literal;)*) => {
        /// Index of a counter in `DECAP_STATS`. Every packet bumps exactly one.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum DecapStat {
            $($variant = $index,)*
        }

        impl DecapStat {
            /// Every counter, in index order.
            pub const ALL: &'static [DecapStat] = &[$(DecapStat::$variant,)*];

            /// Stable snake_case name, for output and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DecapStat::$variant => $name,)*
                }
            }

            pub const fn index(self) -> u32 {
                self as u32
            }
        }
    };
}

decap_stats! {
    DecapV4InV4 = 0, "decap_ipv4_in_ipv4";
    DecapV6InV6 = 1, "decap_ipv6_in_ipv6";
    DecapV4InV6 = 2, "decap_ipv4_in_ipv6";
    // Not IP (after at most one VLAN tag), or IP that is not IPIP / IPv6-in-IPv6 /
    // IPv4-in-IPv6 (IPv6 extension headers before the inner packet included): passed
    // untouched.
    PassNotEncapsulated = 3, "pass_not_encapsulated";
    // Encapsulated, but the outer destination is not in DECAP_LOCAL.
    PassNotLocal = 4, "pass_not_local";
    // Encapsulated and local, but the outer source is outside every DECAP_SOURCES prefix.
    PassNotAllowedSource = 5, "pass_not_allowed_source";
    // Encapsulated, but cut short or inconsistent (lengths, versions, the outer IPv4
    // header checksum): passed untouched, the stack drops it as it would without us.
    Malformed = 6, "malformed";
    // The outer header carries a congestion mark (CE) and the inner packet is not
    // ECN-capable: the mark cannot be carried in, so the packet is dropped (RFC 6040).
    DropCeNotEct = 7, "drop_ce_not_ect";
    // dsr-gue (UDP to the GUE port with lb's hop list), each decapsulated here ...
    // ... a TCP SYN: a new connection starts on its first hop;
    GueTakenSyn = 8, "gue_taken_syn";
    // ... a TCP segment of a connection this host has a socket for (bpf_skc_lookup_tcp);
    GueTakenSocket = 9, "gue_taken_socket";
    // ... a UDP datagram of a flow this host took within DECAP_RECENT_NS;
    GueTakenRecentUdp = 10, "gue_taken_recent_udp";
    // ... the last hop of its list (or the only one);
    GueTakenLastHop = 11, "gue_taken_last_hop";
    // ... neither TCP nor UDP, or its next hop unreachable from here: taken rather than lost.
    GueTakenUnforwardable = 12, "gue_taken_unforwardable";
    // Sent on to its next hop, the outer header rewritten, without the stack ...
    GueForwarded = 13, "gue_forwarded";
    // ... or handed to the stack to forward, rewritten: the next hop's neighbour is not
    // resolved (the host must route: net.ipv4.ip_forward / net.ipv6.conf.all.forwarding).
    GueForwardedToStack = 14, "gue_forwarded_to_stack";
    // ... or sent back, rewritten, to the neighbour it came from (the lb node or a
    // router), which routes it on: this host does not forward, so the FIB will not answer
    // for it (bpf_fib_lookup needs forwarding on the receiving interface).
    GueSentBackToRoute = 15, "gue_sent_back_to_route";
}

/// Entries of `DECAP_STATS`.
pub const DECAP_STATS_LEN: u32 = DecapStat::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, stat) in DecapStat::ALL.iter().enumerate() {
            assert_eq!(stat.index() as usize, i, "{}", stat.name());
        }
        assert_eq!(DECAP_STATS_LEN, 16);
    }

    #[test]
    fn ipv4_is_mapped_into_ffff_96() {
        let mapped = mapped_v4([198, 18, 0, 1]);
        assert_eq!(
            std::net::Ipv6Addr::from(mapped),
            std::net::Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped()
        );
        assert_eq!(mapped_v4_prefix_len(24), 120);
    }
}
