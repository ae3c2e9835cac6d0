//! The control API: JSON lines over a Unix socket (see docs/API.md). One request object per
//! line, one response object per line. The CLI subcommands are thin clients of it.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorCode};
use crate::{
    model::announce::Reason,
    model::check::CheckConfig,
    model::egress::Advice,
    model::health::{ChangeCounts, Health, Transition},
    model::memory::MemoryReport,
    model::mode::Mode,
    model::policy::OnDown,
    model::prefix::Prefix,
    model::reload::Difference,
    model::state::{DEFAULT_WEIGHT, Proto},
};

/// Longest request line accepted; anything longer is refused and the connection closed.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

const fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// Flows `conntrack-list` shows unless told otherwise.
pub const DEFAULT_FLOW_LIMIT: u64 = 100;
/// Most flows one `conntrack-list` answer carries.
pub const MAX_FLOW_LIMIT: u64 = 100_000;

const fn default_flow_limit() -> u64 {
    DEFAULT_FLOW_LIMIT
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
/// Unit-like requests are written `{}` so unknown fields are refused for them too.
pub enum Request {
    VipAdd {
        vip: SocketAddr,
        #[serde(default)]
        proto: Proto,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        check: Option<CheckConfig>,
        /// Forwarding mode; `nat` when absent.
        #[serde(default)]
        mode: Mode,
        /// What a down backend's tracked flows do; `keep-tcp` when absent.
        #[serde(default)]
        on_down: OnDown,
        /// Clients that may open flows (prefixes of the VIP's family); empty or absent:
        /// any client.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        allow_sources: Vec<Prefix>,
        /// QUIC-LB configs (UDP VIPs), as `config=0,server-id-len=2,nonce-len=6`; the
        /// first is the one servers issue IDs with. Empty or absent: not a QUIC VIP.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        quic: Vec<String>,
    },
    /// Replaces a VIP's QUIC-LB configs; empty: no longer a QUIC VIP.
    VipSetQuic {
        vip: SocketAddr,
        #[serde(default)]
        proto: Proto,
        quic: Vec<String>,
    },
    /// Changes a VIP's forwarding mode (refused while it has backends).
    VipSetMode {
        vip: SocketAddr,
        #[serde(default)]
        proto: Proto,
        mode: Mode,
    },
    /// Sets a VIP's health check; `check` absent or null removes it.
    VipSetCheck {
        vip: SocketAddr,
        #[serde(default)]
        proto: Proto,
        #[serde(default)]
        check: Option<CheckConfig>,
    },
    VipDel {
        vip: SocketAddr,
        #[serde(default)]
        proto: Proto,
    },
    VipList {},
    BackendAdd {
        vip: SocketAddr,
        #[serde(default)]
        proto: Proto,
        backend: SocketAddr,
        #[serde(default = "default_weight")]
        weight: u32,
        /// QUIC VIPs: the backend's server id in hex; absent: lb derives one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_id: Option<String>,
    },
    BackendSet {
        vip: SocketAddr,
        #[serde(default)]
        proto: Proto,
        backend: SocketAddr,
        #[serde(default)]
        weight: Option<u32>,
        #[serde(default)]
        undrain: bool,
        /// QUIC VIPs: a new server id in hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_id: Option<String>,
    },
    BackendDrain {
        vip: SocketAddr,
        #[serde(default)]
        proto: Proto,
        backend: SocketAddr,
    },
    BackendDel {
        vip: SocketAddr,
        #[serde(default)]
        proto: Proto,
        backend: SocketAddr,
    },
    BackendList {
        #[serde(default)]
        vip: Option<SocketAddr>,
        #[serde(default)]
        proto: Proto,
    },
    /// Tracked flows, filtered; at most `limit` are listed, `matched` says how many match.
    ConntrackList {
        #[serde(default)]
        vip: Option<SocketAddr>,
        #[serde(default)]
        proto: Option<Proto>,
        #[serde(default)]
        backend: Option<SocketAddr>,
        #[serde(default = "default_flow_limit")]
        limit: u64,
    },
    /// Deletes the tracked flows the filter picks (all of them without one).
    ConntrackFlush {
        #[serde(default)]
        vip: Option<SocketAddr>,
        #[serde(default)]
        proto: Option<Proto>,
        #[serde(default)]
        backend: Option<SocketAddr>,
    },
    Stats {},
    Status {},
    /// Withdraws every VIP of this node from the routers; flows that still arrive are served.
    NodeDrain {},
    /// Announces the VIPs again (those that can be served).
    NodeResume {},
    Down {},
    /// Re-reads the daemon's `--config` and makes the live state equal to it.
    Reload {},
    /// What the datapath does with the next packet of one client → VIP flow, and why.
    Explain {
        client: SocketAddr,
        vip: SocketAddr,
        #[serde(default)]
        proto: Proto,
        /// QUIC VIPs: a destination connection ID in hex, to say which backend its
        /// Handshake and short-header packets go to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quic_id: Option<String>,
    },
    /// `lb capture`: packets as lb received and sent them. Answered with a
    /// [`CaptureStarted`], then one [`CaptureEvent`] per line until a
    /// [`CaptureEvent::End`]; the client ends it early with a [`CaptureControl`] line or
    /// by closing the connection.
    Capture {
        /// Client → VIP packets of this VIP and its replies.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vip: Option<SocketAddr>,
        /// Packets to and from this backend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<SocketAddr>,
        /// Packets of clients in this prefix.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<Prefix>,
        /// Only dropped packets.
        #[serde(default)]
        drops: bool,
        /// One in `sample` matching packets (per CPU); 1 when absent.
        #[serde(default = "one")]
        sample: u32,
        /// Stop after this many packets; absent: until stopped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        /// Bytes kept of each packet, each way.
        #[serde(default = "default_snaplen")]
        snaplen: u32,
    },
}

const fn one() -> u32 {
    1
}

const fn default_snaplen() -> u32 {
    lb_common::capture::CAPTURE_SNAPLEN_MAX
}

/// The first answer to `capture`: what is captured, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStarted {
    /// The interfaces lb runs on, whose packets are captured.
    pub interfaces: Vec<CaptureInterface>,
    pub snaplen: u32,
    /// The filter, for people (`vip 198.18.0.1:80, drops only, 1 in 10`).
    pub filter: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureInterface {
    pub name: String,
    pub ifindex: u32,
}

/// A line of a running capture, after [`CaptureStarted`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum CaptureEvent {
    Packet(Box<CapturedPacket>),
    /// The last line: the capture is over.
    End(CaptureEnd),
}

/// One packet, as received and (if it was sent on) as sent, with what lb did to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedPacket {
    /// When it arrived, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The interface it arrived on.
    pub ifindex: u32,
    /// The XDP action: `tx`, `redirect`, `pass`, `drop` or `aborted`.
    pub verdict: String,
    /// The reason counter it bumped (`lb stats`), or `unknown`.
    pub reason: String,
    /// The VIP it was for (client → VIP) or from (a reply), `ADDR:PORT/PROTO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<SocketAddr>,
    /// The VIP's forwarding mode (`nat`, `dsr-ipip`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The flow's conntrack entry after the packet (`established, proven`), or `none`.
    pub conntrack: String,
    /// The VIP's Maglev table fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The CPU that ran it.
    pub cpu: u32,
    /// Its length as received, and the bytes kept of it (base64).
    pub received_len: u32,
    pub received: String,
    /// Its length as sent and the bytes kept; absent when it was not sent on (passed to
    /// the kernel, dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_len: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
}

/// How a capture ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureEnd {
    /// Packets sent to the client.
    pub captured: u64,
    /// Packets that matched but were lost: the ring buffer was full (the reader did not
    /// keep up).
    pub lost: u64,
    /// Why it ended: `count reached`, `stopped`, `daemon stopping`.
    pub why: String,
}

/// What the client of a running capture may send: `{"stop":{}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum CaptureControl {
    Stop {},
}

/// The protocol version this build speaks. Every request carries it and every response
/// echoes the daemon's; a request with another version is refused (`version_mismatch`).
/// Bump it when a request or a result changes shape.
pub const PROTOCOL_VERSION: u32 = 1;

/// The field that carries [`PROTOCOL_VERSION`] in a request line, beside `op`.
pub const VERSION_FIELD: &str = "version";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// The daemon's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// What went wrong, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What went wrong, for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub result: serde_json::Value,
}

impl Response {
    pub fn success(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            version: PROTOCOL_VERSION,
            error: None,
            code: None,
            result,
        }
    }

    pub fn failure(error: ApiError) -> Self {
        Self {
            ok: false,
            version: PROTOCOL_VERSION,
            error: Some(error.message),
            code: Some(error.code),
            result: serde_json::Value::Null,
        }
    }
}

/// `lb vip list` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipEntry {
    pub vip: SocketAddr,
    pub proto: Proto,
    pub mode: Mode,
    /// What a down backend's tracked flows do: `keep-tcp` or `move`.
    #[serde(default)]
    pub on_down: OnDown,
    /// Clients that may open flows; empty: any client.
    #[serde(default)]
    pub allow_sources: Vec<Prefix>,
    /// The health check, as given (`null` when unchecked).
    pub check: Option<CheckConfig>,
    /// QUIC-LB configs (`config=0,server-id-len=2,nonce-len=6`), the one servers issue
    /// IDs with first; empty: not a QUIC VIP.
    #[serde(default)]
    pub quic: Vec<String>,
    pub backends: usize,
    /// Backends taking new flows (not draining).
    pub active: usize,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Its dropped packets by reason counter (`drop_no_backend`...), those above zero,
    /// counted since the daemon started.
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
    /// Fingerprint of the live Maglev table (16 hex digits): equal on two nodes exactly
    /// when they send every flow of the VIP to the same backend.
    pub table_fingerprint: String,
}

/// `lb backend list` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendEntry {
    pub vip: SocketAddr,
    pub proto: Proto,
    pub backend: SocketAddr,
    pub weight: u32,
    /// A QUIC VIP's backend: the server id (hex) its connection IDs must carry; `null`
    /// for other VIPs.
    #[serde(default)]
    pub server_id: Option<String>,
    /// `active` or `draining`.
    pub state: String,
    /// `up`, `down` or `unchecked`.
    pub health: Health,
    /// When `health` last changed (Unix seconds); `null` when unchecked.
    pub health_since: Option<u64>,
    /// Why the last check failed, if one did.
    pub last_check_error: Option<String>,
    /// Recent health changes, oldest first.
    pub health_history: Vec<Transition>,
    /// How many times its checks took it down and back up since the daemon started.
    #[serde(default)]
    pub health_changes: ChangeCounts,
    pub packets: u64,
    pub bytes: u64,
    /// Tracked flows opening, established or UDP (ipvsadm's ActiveConn), as of the last
    /// conntrack sweep.
    #[serde(default)]
    pub active_conns: u64,
    /// Tracked TCP flows closing or closed (ipvsadm's InActConn), as of the last sweep.
    #[serde(default)]
    pub closing_conns: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterEntry {
    pub packets: u64,
    pub bytes: u64,
}

/// `lb stats`: every global counter by name, and the per-VIP and per-backend counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    pub counters: BTreeMap<String, CounterEntry>,
    pub vips: Vec<VipEntry>,
    pub backends: Vec<BackendEntry>,
    #[serde(default)]
    pub conntrack: ConntrackReport,
}

/// How full the conntrack table is and what it had to evict, as of the last sweep (a
/// batch walk of the map every `--conntrack-sweep`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackReport {
    pub entries: u64,
    pub capacity: u64,
    /// Flows the table dropped to make room for new ones since this daemon started.
    pub evicted: u64,
    /// Entries deleted by this daemon: expired ones by its sweeps, and flushes.
    #[serde(default)]
    pub deleted: u64,
    /// TCP segments of open connections that found no entry (evicted, or older than this lb).
    pub missed_mid_flow: u64,
    /// Of `entries`, the proven flows (the rest are unproven: docs/ARCHITECTURE.md,
    /// "Admission").
    #[serde(default)]
    pub proven_entries: u64,
    /// Size of the unproven table.
    #[serde(default)]
    pub unproven_capacity: u64,
    /// Of `evicted`, proven flows: evicted to make room for other proven flows.
    #[serde(default)]
    pub evicted_proven: u64,
    /// Of `evicted`, unproven flows (what a flood churns).
    #[serde(default)]
    pub evicted_unproven: u64,
    /// Flows moved from the unproven table to the proven one.
    #[serde(default)]
    pub promoted: u64,
    /// New flows not tracked because their CPU had tracked `new_flow_limit` that second.
    #[serde(default)]
    pub flood_untracked: u64,
    /// New flows each CPU tracks per second (0: no limit).
    #[serde(default)]
    pub new_flow_limit: u32,
}

/// One tracked flow (`conntrack-list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEntry {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub proto: Proto,
    /// `null` when the backend the flow is pinned to is gone (deleted, or its id reused).
    pub backend: Option<SocketAddr>,
    /// `opening`, `established`, `closing`, `closed` or `udp`.
    pub state: String,
    pub idle_secs: u64,
    /// Seconds of idleness left before the entry expires.
    pub expires_in_secs: u64,
    /// In the proven table (a flood never evicts it); `false`: unproven.
    #[serde(default = "proven_by_default")]
    pub proven: bool,
}

/// Daemons that predate admission had one table, whose flows no flood evicted first.
fn proven_by_default() -> bool {
    true
}

/// `conntrack-list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowList {
    pub flows: Vec<FlowEntry>,
    /// Flows that matched the filter, listed or not.
    pub matched: u64,
}

/// `conntrack-flush`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushReport {
    pub flushed: u64,
}

/// One conntrack idle timeout (`status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutEntry {
    pub state: String,
    pub secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceEntry {
    pub name: String,
    pub ifindex: u32,
    /// `native` or `skb`; `pinned` for a link adopted from an earlier run.
    pub mode: String,
    /// The link kind (`veth`...); `null` for a plain device.
    #[serde(default)]
    pub kind: Option<String>,
    /// What lb advises about frames sent out of it (a veth's peer without NAPI...).
    #[serde(default)]
    pub advice: Option<Advice>,
}

/// `lb status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's package version.
    pub version: String,
    /// The build of the eBPF object it loaded (as in `lb --version`); empty from daemons
    /// that predate it.
    #[serde(default)]
    pub datapath_build: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub interfaces: Vec<InterfaceEntry>,
    pub pin_dir: PathBuf,
    pub state_file: PathBuf,
    pub api: PathBuf,
    /// Whether this run adopted a datapath pinned by an earlier one.
    pub adopted: bool,
    pub table_size: u32,
    pub max_vips: u32,
    /// Backend slots (`--max-backends`); 0 from daemons that predate the flag.
    #[serde(default)]
    pub max_backends: u32,
    pub conntrack_capacity: u32,
    /// Entries as of the last sweep (proven and unproven).
    #[serde(default)]
    pub conntrack_entries: u64,
    /// Of which proven.
    #[serde(default)]
    pub conntrack_proven_entries: u64,
    /// Size of the unproven table, where new flows wait until proven.
    #[serde(default)]
    pub conntrack_unproven_capacity: u32,
    /// New flows each CPU tracks per second (0: no limit).
    #[serde(default)]
    pub new_flow_limit: u32,
    /// Idle timeout of each flow state, in lifecycle order.
    #[serde(default)]
    pub conntrack_timeouts: Vec<TimeoutEntry>,
    /// Seconds between conntrack sweeps.
    #[serde(default)]
    pub conntrack_sweep_secs: f64,
    pub vips: usize,
    pub backends: usize,
    /// This node in its cluster: announcements, drain, hash seed.
    pub node: NodeReport,
    /// The kernel memory of every map the datapath uses, as the kernel accounts it;
    /// `null` when it cannot be read.
    #[serde(default)]
    pub map_memory: Option<MemoryReport>,
    /// The command run on backends' health changes; `null` without one.
    #[serde(default)]
    pub notify: Option<NotifyStatus>,
    /// Frames redirected out of an attached interface that the kernel then dropped (the
    /// counter `xdp_redirect_lost`); `null` when they cannot be counted (no tracefs).
    #[serde(default)]
    pub xdp_redirect_lost: Option<u64>,
    /// Client SYNs that arrived with a checksum their sender left to an offload (the
    /// counter `syn_checksum_partial`): lost at their receiver when forwarded natively.
    #[serde(default)]
    pub syn_checksum_partial: u64,
}

/// The notify hook (`status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotifyStatus {
    /// As a shell would need it typed; each run appends VIP, backend, old and new state.
    pub command: String,
    pub timeout_secs: f64,
    pub runs: HookRuns,
}

/// How the notify hook's runs went since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRuns {
    /// Exited with status 0.
    pub ok: u64,
    /// Could not start, or exited otherwise.
    pub failed: u64,
    /// Killed at the timeout.
    pub timed_out: u64,
    /// Not run: too many changes were waiting for theirs.
    pub dropped: u64,
}

/// Whether one VIP is announced, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceEntry {
    pub vip: SocketAddr,
    pub proto: Proto,
    /// Its address is in the announce table (for this VIP or another of that address).
    pub announced: bool,
    pub reason: Reason,
    /// The reason, for people.
    pub detail: String,
}

/// The node's part in a cluster (`status`, `node-drain`, `node-resume`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// `lb node drain` is in force.
    pub drained: bool,
    /// The kernel table lb announces through; `null`: announcing is off.
    pub announce_table: Option<u32>,
    /// `set` or `default` (the seed itself is secret).
    pub hash_seed: String,
    /// Addresses whose route is in the announce table now.
    pub announced: Vec<std::net::IpAddr>,
    /// The last failure to write a route, if the last attempt failed.
    pub route_error: Option<String>,
    pub vips: Vec<AnnounceEntry>,
}

/// `lb down`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownReport {
    pub detached: Vec<String>,
    pub pin_dir: PathBuf,
    /// VIP addresses withdrawn from the announce table first.
    #[serde(default)]
    pub withdrawn: Vec<std::net::IpAddr>,
}

/// `lb reload`: the file read and what changed (nothing when `changes` is empty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub config: PathBuf,
    pub changes: Vec<Difference>,
}

/// Parses one request line. A `version` other than ours is refused before anything else is
/// read; a line without one is taken as ours (hand-written requests, `socat`).
pub fn parse_request(line: &str) -> Result<Request, ApiError> {
    let bad =
        |reason: String| ApiError::new(ErrorCode::BadRequest, format!("bad request: {reason}"));
    let mut value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
    if let Some(fields) = value.as_object_mut()
        && let Some(version) = fields.remove(VERSION_FIELD)
        && version.as_u64() != Some(u64::from(PROTOCOL_VERSION))
    {
        return Err(ApiError::new(
            ErrorCode::VersionMismatch,
            format!(
                "the client speaks lb API version {version} and this daemon speaks version \
                 {PROTOCOL_VERSION}: use an lb binary of the same release as the daemon"
            ),
        ));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// A request line as the client sends it: the request with our version beside `op`.
pub fn request_line(request: &Request) -> serde_json::Result<String> {
    let mut value = serde_json::to_value(request)?;
    if let Some(fields) = value.as_object_mut() {
        fields.insert(VERSION_FIELD.to_owned(), PROTOCOL_VERSION.into());
    }
    let mut line = serde_json::to_string(&value)?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_defaults_apply() {
        let request = parse_request(
            r#"{"op":"backend-add","vip":"198.18.1.1:80","backend":"198.18.2.1:8080"}"#,
        )
        .expect("valid");
        assert_eq!(
            request,
            Request::BackendAdd {
                vip: "198.18.1.1:80".parse().expect("addr"),
                proto: Proto::Tcp,
                backend: "198.18.2.1:8080".parse().expect("addr"),
                weight: DEFAULT_WEIGHT,
                server_id: None,
            }
        );
        let text = serde_json::to_string(&request).expect("serialize");
        assert_eq!(parse_request(&text), Ok(request));
        assert_eq!(parse_request(r#"{"op":"status"}"#), Ok(Request::Status {}));
    }

    #[test]
    fn quic_fields_are_optional_and_parse() {
        let add = parse_request(
            r#"{"op":"vip-add","vip":"198.18.1.1:443","proto":"udp","quic":["config=0,server-id-len=2,nonce-len=6"]}"#,
        )
        .expect("valid");
        let Request::VipAdd { quic, .. } = &add else {
            panic!("not vip-add: {add:?}");
        };
        assert_eq!(quic, &["config=0,server-id-len=2,nonce-len=6"]);
        let without = parse_request(r#"{"op":"vip-add","vip":"198.18.1.1:80"}"#).expect("valid");
        assert!(matches!(without, Request::VipAdd { ref quic, .. } if quic.is_empty()));
        // An answer of an older client's shape still goes out without the new fields.
        let line = serde_json::to_string(&without).expect("serialize");
        assert!(!line.contains("quic"), "{line}");
        let set = parse_request(
            r#"{"op":"vip-set-quic","vip":"198.18.1.1:443","proto":"udp","quic":[]}"#,
        )
        .expect("valid");
        assert!(matches!(set, Request::VipSetQuic { ref quic, .. } if quic.is_empty()));
        let backend = parse_request(
            r#"{"op":"backend-set","vip":"198.18.1.1:443","backend":"198.18.2.1:443","server_id":"0a1b"}"#,
        )
        .expect("valid");
        assert!(
            matches!(backend, Request::BackendSet { ref server_id, .. } if server_id.as_deref() == Some("0a1b"))
        );
        for line in [
            r#"{"op":"vip-set-quic","vip":"198.18.1.1:443"}"#,
            r#"{"op":"vip-add","vip":"198.18.1.1:443","quic":"config=0,server-id-len=2,nonce-len=6"}"#,
            r#"{"op":"backend-add","vip":"198.18.1.1:443","backend":"198.18.2.1:443","server_id":10}"#,
            r#"{"op":"backend-add","vip":"198.18.1.1:443","backend":"198.18.2.1:443","serverid":"0a"}"#,
        ] {
            let error = parse_request(line).expect_err(line);
            assert_eq!(error.code, ErrorCode::BadRequest, "{line}: {error}");
        }
        // Entries from a daemon that predates QUIC read with the defaults.
        let entry: BackendEntry = serde_json::from_value(serde_json::json!({
            "vip": "198.18.1.1:80", "proto": "tcp", "backend": "198.18.2.1:80", "weight": 1,
            "state": "active", "health": "unchecked", "health_since": null,
            "last_check_error": null, "health_history": [], "packets": 0, "bytes": 0
        }))
        .expect("an old entry");
        assert_eq!(entry.server_id, None);
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        for (line, reason) in [
            ("", "EOF"),
            ("{", "EOF"),
            (r#"{"op":"vip-add"}"#, "missing field `vip`"),
            (r#"{"op":"vip-add","vip":"198.18.1.1"}"#, "socket address"),
            (
                r#"{"op":"vip-add","vip":"198.18.1.1:80","proto":"sctp"}"#,
                "sctp",
            ),
            (r#"{"op":"format-disk"}"#, "unknown variant"),
            (r#"{"op":"vip-list","extra":1}"#, "unknown field"),
            (
                r#"{"op":"backend-add","vip":"198.18.1.1:80","backend":"198.18.2.1:80","weight":-1}"#,
                "invalid value",
            ),
        ] {
            let error = parse_request(line).expect_err(line);
            assert_eq!(error.code, ErrorCode::BadRequest, "{line}");
            assert!(error.message.starts_with("bad request: "), "{error}");
            assert!(error.message.contains(reason), "{line}: {error}");
        }
    }

    #[test]
    fn the_version_is_sent_and_a_different_one_is_refused() {
        let line = request_line(&Request::Status {}).expect("serialize");
        assert_eq!(
            line,
            format!("{{\"op\":\"status\",\"version\":{PROTOCOL_VERSION}}}\n")
        );
        assert_eq!(parse_request(line.trim_end()), Ok(Request::Status {}));
        let error = parse_request(r#"{"op":"status","version":999}"#).expect_err("refused");
        assert_eq!(error.code, ErrorCode::VersionMismatch);
        assert!(error.message.contains("version 999"), "{error}");
        let error = parse_request(r#"{"op":"status","version":"1"}"#).expect_err("refused");
        assert_eq!(error.code, ErrorCode::VersionMismatch);
    }

    /// The JSON every `--json` output and API answer carries: docs/API.md documents it and
    /// scripts parse it, so a change here must be deliberate (review the snapshot).
    #[test]
    fn answers_keep_their_json_shape() {
        use crate::api::fixtures;
        insta::assert_json_snapshot!("stats", fixtures::stats());
        insta::assert_json_snapshot!("status", fixtures::status());
        insta::assert_json_snapshot!("flows", fixtures::flows());
        insta::assert_json_snapshot!(
            "refusal",
            Response::failure(ApiError::new(
                ErrorCode::UnknownVip,
                "no VIP 198.18.1.9:80/tcp"
            ))
        );
        insta::assert_json_snapshot!("success", Response::success(serde_json::Value::Null));
    }
}
