//! Connection tracking: the 5-tuple of a flow and what it is pinned to.

use crate::service::Addr;

/// A flow's 5-tuple as seen on the wire (ports in host order). Aligned to 8 (no size
/// change) so the datapath copies it in words, not bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}

impl FlowKey {
    /// The source address as the little-endian words the address hashes take, read in
    /// place: one load per word (the key is 8-aligned), where bytes cost four.
    #[inline(always)]
    #[expect(clippy::cast_ptr_alignment, reason = "4-aligned: see SAFETY")]
    pub fn src_words(&self) -> [u32; 4] {
        // SAFETY: `src` is 16 bytes at offset 0 of an 8-aligned struct.
        let words = unsafe { *(&raw const self.src).cast::<[u32; 4]>() };
        words.map(u32::from_le)
    }

    /// As [`FlowKey::src_words`], for the destination.
    #[inline(always)]
    #[expect(clippy::cast_ptr_alignment, reason = "4-aligned: see SAFETY")]
    pub fn dst_words(&self) -> [u32; 4] {
        // SAFETY: `dst` is 16 bytes at offset 16 of an 8-aligned struct.
        let words = unsafe { *(&raw const self.dst).cast::<[u32; 4]>() };
        words.map(u32::from_le)
    }
}

/// A tracked flow, keyed by its client → VIP 5-tuple. One entry per flow serves both
/// directions: replies find it through the backend's [`crate::service::Endpoint`], so the
/// two directions can never be evicted apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    pub backend_id: u32,
    pub vip_id: u32,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC, coarse) of the last packet in either
    /// direction, refreshed at most once a second.
    pub last_seen_ns: u64,
    /// `Backend::generation` when the flow was pinned: an id given to another backend
    /// since then does not match, so the entry cannot follow it.
    pub generation: u32,
    /// `CT_*` state.
    pub state: u8,
    /// `CT_FLAG_*` bits.
    pub flags: u8,
    /// What proves an unproven entry (unused once proven): for a NAT TCP flow opened by a
    /// SYN, the low 16 bits of the ACK number that completes its handshake (the backend's
    /// SYN-ACK sequence + 1, stored when the SYN-ACK passes); for every other flow, the
    /// client's packets so far (saturating; see [`PROVEN_AFTER_PACKETS`]). Was padding.
    pub proof: u16,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Conn {}

/// Lifecycle states of a tracked flow; each has its own idle timeout ([`Timeout`]).
pub const CT_OPENING: u8 = 0;
pub const CT_ESTABLISHED: u8 = 1;
/// A FIN was seen in one direction.
pub const CT_CLOSING: u8 = 2;
/// FINs seen in both directions, or a RST.
pub const CT_CLOSED: u8 = 3;
/// UDP (and any other datagram protocol): one state, one idle timeout.
pub const CT_DATAGRAM: u8 = 4;

/// The client sent a FIN.
pub const CT_FLAG_FIN_CLIENT: u8 = 1;
/// The backend sent a FIN.
pub const CT_FLAG_FIN_BACKEND: u8 = 2;
/// The entry was created by the client's SYN (not by a packet of a connection already
/// under way).
pub const CT_FLAG_SYN_SEEN: u8 = 4;
/// A reply from the backend was seen (NAT: replies pass through lb).
pub const CT_FLAG_REPLY_SEEN: u8 = 8;

/// An unproven flow that no handshake proves (datagrams, DSR flows whose replies lb never
/// sees, connections that began before lb saw them) is proven once its client sent this
/// many packets: a random-source flood sends one packet per forged 5-tuple.
pub const PROVEN_AFTER_PACKETS: u16 = 4;
/// The flow was kept on its backend while that backend was down (`ct_kept_on_down`
/// counts it once, when this is set).
pub const CT_FLAG_KEPT_ON_DOWN: u8 = 16;

/// Idle timeouts, one per lifecycle state, indexing the datapath's timeout table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timeout {
    TcpOpening = 0,
    TcpEstablished = 1,
    TcpClosing = 2,
    TcpClosed = 3,
    Udp = 4,
}

impl Timeout {
    pub const ALL: [Timeout; 5] = [
        Timeout::TcpOpening,
        Timeout::TcpEstablished,
        Timeout::TcpClosing,
        Timeout::TcpClosed,
        Timeout::Udp,
    ];

    /// The timeout of a flow in `state` (a `CT_*` value; the state numbers index the table).
    pub const fn index_of_state(state: u8) -> usize {
        if state as usize >= TIMEOUT_COUNT {
            Timeout::Udp as usize
        } else {
            state as usize
        }
    }

    /// Name used by `--timeout <name>=<secs>`, `lb status` and the docs.
    pub const fn name(self) -> &'static str {
        match self {
            Timeout::TcpOpening => "tcp_opening",
            Timeout::TcpEstablished => "tcp_established",
            Timeout::TcpClosing => "tcp_closing",
            Timeout::TcpClosed => "tcp_closed",
            Timeout::Udp => "udp",
        }
    }

    /// Default idle timeout in seconds (see docs/ARCHITECTURE.md for the reasons).
    pub const fn default_secs(self) -> u64 {
        match self {
            Timeout::TcpOpening => 60,
            Timeout::TcpEstablished => 10_800,
            Timeout::TcpClosing => 120,
            Timeout::TcpClosed => 10,
            Timeout::Udp => 120,
        }
    }
}

pub const TIMEOUT_COUNT: usize = 5;

/// The datapath's timeout table in nanoseconds, indexed by `CT_*` state.
pub type Timeouts = [u64; TIMEOUT_COUNT];

pub const DEFAULT_TIMEOUTS_NS: Timeouts = [
    Timeout::TcpOpening.default_secs() * 1_000_000_000,
    Timeout::TcpEstablished.default_secs() * 1_000_000_000,
    Timeout::TcpClosing.default_secs() * 1_000_000_000,
    Timeout::TcpClosed.default_secs() * 1_000_000_000,
    Timeout::Udp.default_secs() * 1_000_000_000,
];

impl Conn {
    /// Whether the entry has been idle longer than its state allows at `now_ns`. The
    /// datapath treats an expired entry as absent; userspace's sweep deletes it.
    pub const fn expired(&self, now_ns: u64, timeouts: &Timeouts) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > timeouts[Timeout::index_of_state(self.state)]
    }

    /// As [`Conn::expired`] for an entry of the unproven table: an unproven TCP flow lives
    /// no longer than an opening one, so a flood of mid-flow segments (an ACK scan) leaves
    /// no long-lived entries behind.
    pub const fn expired_unproven(&self, now_ns: u64, timeouts: &Timeouts) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > unproven_timeout_ns(self.state, timeouts)
    }

    /// Counted as active (ipvsadm's ActiveConn) rather than closing (InActConn).
    pub const fn is_active(&self) -> bool {
        matches!(self.state, CT_OPENING | CT_ESTABLISHED | CT_DATAGRAM)
    }
}

/// The idle timeout of an unproven entry in `state`: its state's, but at most the
/// opening timeout for TCP.
pub const fn unproven_timeout_ns(state: u8, timeouts: &Timeouts) -> u64 {
    let own = timeouts[Timeout::index_of_state(state)];
    if state == CT_DATAGRAM {
        return own;
    }
    let opening = timeouts[Timeout::TcpOpening as usize];
    if own < opening { own } else { opening }
}

/// A proven flow's forwarding decision, cached per CPU in a direct-mapped slot (see
/// [`flow_cache_slot`]): the established fast path reads this one array slot instead of the
/// conntrack hash, the next-hop slot and the MAC table. It answers only for its `key` and
/// ingress interface, until `valid_until_jiffies`, and only while its backend (re-read
/// every packet) still serves the flow; the slow path fills it and refreshes conntrack at
/// least that often. Not pinned: a new program starts with an empty cache.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow {
    pub key: FlowKey,
    pub backend_id: u32,
    /// `Backend::generation` and `vip_id` when filled: a retired or reused id does not match.
    pub generation: u32,
    pub vip_id: u32,
    pub ingress_ifindex: u32,
    /// The route to the backend (egress interface, MACs, MTU), as the slow path used it.
    pub hop: NextHop,
    /// The ingress interface's MAC: only frames addressed to it take the fast path.
    pub local_mac: [u8; 6],
    /// `FLOW_CACHE_*` bits.
    pub flags: u8,
    pub _pad: u8,
    /// In jiffies (`bpf_jiffies64`, which the verifier inlines into one load, where the
    /// nanosecond clock is a helper call): at most `FLOW_CACHE_NS` after the fill.
    pub valid_until_jiffies: u64,
}

/// The longest a jiffy lasts, in ns: Linux's HZ is at least 100. A slot filled for
/// `FLOW_CACHE_NS / JIFFY_NS_MAX` jiffies answers for at most `FLOW_CACHE_NS`, whatever
/// the kernel's HZ (a tenth of it at HZ=1000).
pub const JIFFY_NS_MAX: u64 = 10_000_000;

#[cfg(feature = "user")]
unsafe impl aya::Pod for CachedFlow {}

/// `CachedFlow::local_mac` holds no MAC (the interface's is not recorded): any MAC passes,
/// as on the slow path.
pub const FLOW_CACHE_ANY_MAC: u8 = 1;

/// Slots of the per-CPU flow cache (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 1 << 13;

/// The flow cache's slot for `flow`: a multiplicative hash of its words. Not the Maglev
/// hash: it only spreads flows over slots, and a collision costs one slow-path packet.
#[inline(always)]
pub fn flow_cache_slot(flow: &FlowKey) -> u32 {
    ((flow_mix(flow) >> 40) as u32) & (FLOW_CACHE_SLOTS - 1)
}

/// A multiplicative hash of a 5-tuple's words: its high bits index the flow cache and the
/// proven-flow filter.
#[inline(always)]
fn flow_mix(flow: &FlowKey) -> u64 {
    // SAFETY: FlowKey is 40 bytes of plain integers, 8-aligned.
    let words = unsafe { &*core::ptr::from_ref(flow).cast::<[u64; 5]>() };
    let h = words[0] ^ words[1].rotate_left(17);
    (h ^ words[2].rotate_left(31) ^ words[3].rotate_left(47) ^ words[4])
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The proven-flow filter (PROVEN_FILTER): which 5-tuples may have an entry in CONNTRACK,
/// one bit per hash. A SYN must replace a proven entry of its 5-tuple (a client reusing a
/// port); with its bit clear it skips that lookup, a cold bucket of the largest table.
///
/// Slot 0 says which half answers ([`PROVEN_FILTER_UNBUILT`]: none, every SYN looks);
/// the halves follow, `words` each. A promotion sets its flow's bit in both halves. The
/// sweep clears the half that does not answer, walks CONNTRACK setting the bit of every
/// entry it keeps, then makes that half answer: a flow promoted before the clearing is in
/// the table the walk reads, one promoted after it set its bit itself, so the answering
/// half holds every proven flow's bit at every moment.
pub const PROVEN_FILTER_UNBUILT: u64 = 0;
/// Slot 0's value when half 0 answers; half 1 answers at one more.
pub const PROVEN_FILTER_HALF0: u64 = 1;

/// Filter bits per proven-table entry: with the table full, a SYN of a new 5-tuple still
/// looks in CONNTRACK about once in 4.5 (1 − e^(−1/4)).
const PROVEN_FILTER_BITS_PER_FLOW: u64 = 4;
/// At least one page per half, at most 32 MiB.
const PROVEN_FILTER_WORDS_MIN: u64 = 1 << 9;
const PROVEN_FILTER_WORDS_MAX: u64 = 1 << 22;

/// Words (u64) in each half of the filter for a proven table of `capacity` entries: a
/// power of two.
pub const fn proven_filter_words(capacity: u32) -> u32 {
    let bits = (capacity as u64).next_power_of_two() * PROVEN_FILTER_BITS_PER_FLOW;
    let words = bits / 64;
    let words = if words < PROVEN_FILTER_WORDS_MIN {
        PROVEN_FILTER_WORDS_MIN
    } else if words > PROVEN_FILTER_WORDS_MAX {
        PROVEN_FILTER_WORDS_MAX
    } else {
        words
    };
    words as u32
}

/// PROVEN_FILTER's entries for halves of `words`: slot 0 and both halves.
pub const fn proven_filter_entries(words: u32) -> u32 {
    1 + 2 * words
}

/// `flow`'s bit in a filter half of `words` words: (the word's index in the half, its
/// mask).
#[inline(always)]
pub fn proven_filter_bit(flow: &FlowKey, words: u32) -> (u32, u64) {
    let index = (flow_mix(flow) >> 36) as u32 & (words.wrapping_mul(64).wrapping_sub(1));
    (index >> 6, 1 << (index & 63))
}

/// The map slot of word `word` in half `half` (0 or 1).
#[inline(always)]
pub const fn proven_filter_slot(half: u32, words: u32, word: u32) -> u32 {
    1 + half * words + word
}

/// A cached `bpf_fib_lookup` answer for packets to `dst` that came in on
/// `ingress_ifindex`: egress interface, MACs and MTU, valid until `expires_ns`. One per
/// slot of the per-CPU next-hop arrays; a slot answers only for the destination it holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub dst: Addr,
    pub ingress_ifindex: u32,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// The route's MTU (0: unknown, not checked).
    pub mtu: u16,
    /// `NEXTHOP_FLAG_*` bits.
    pub flags: u8,
    pub family: u8,
    pub expires_ns: u64,
}

/// The egress interface is one lb can send to (the ingress one, or in TX_PORTS).
pub const NEXTHOP_FLAG_ATTACHED: u8 = 1;
/// The destination itself is the next hop (on this host's link, no gateway): where
/// dsr-l2 may send.
pub const NEXTHOP_FLAG_DIRECT: u8 = 2;

#[cfg(feature = "user")]
unsafe impl aya::Pod for NextHop {}
