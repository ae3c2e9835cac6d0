//! The control API: JSON lines over a Unix socket (see docs/API.md). One request object per
//! line, one response object per line. The CLI subcommands are thin clients of it.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    health::{CheckConfig, Health, Transition},
    state::{DEFAULT_WEIGHT, Proto},
};

pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";
pub const SOCKET_ENV: &str = "LB_API";
/// Longest request line accepted; anything longer is refused and the connection closed.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long a client waits for an answer (a change rewrites whole Maglev tables).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

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
    Down {},
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub result: serde_json::Value,
}

impl Response {
    pub fn success(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            result,
        }
    }

    pub fn failure(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            result: serde_json::Value::Null,
        }
    }
}

/// `lb vip list` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipEntry {
    pub vip: SocketAddr,
    pub proto: Proto,
    /// The health check, as given (`null` when unchecked).
    pub check: Option<CheckConfig>,
    pub backends: usize,
    /// Backends taking new flows (not draining).
    pub active: usize,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// `lb backend list` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendEntry {
    pub vip: SocketAddr,
    pub proto: Proto,
    pub backend: SocketAddr,
    pub weight: u32,
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
}

/// `lb status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
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
    pub conntrack_capacity: u32,
    /// Entries as of the last sweep.
    #[serde(default)]
    pub conntrack_entries: u64,
    /// Idle timeout of each flow state, in lifecycle order.
    #[serde(default)]
    pub conntrack_timeouts: Vec<TimeoutEntry>,
    /// Seconds between conntrack sweeps.
    #[serde(default)]
    pub conntrack_sweep_secs: f64,
    pub vips: usize,
    pub backends: usize,
}

/// `lb down`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownReport {
    pub detached: Vec<String>,
    pub pin_dir: PathBuf,
}

/// The socket the CLI talks to: `--api`, else `$LB_API`, else the default.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_owned)
        .or_else(|| std::env::var_os(SOCKET_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Whether a daemon answers on `socket`.
pub fn is_listening(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// Sends one request and returns its result, or the daemon's error.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let stream = UnixStream::connect(socket).map_err(|error| {
        let hint = match error.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                "no lb daemon is listening on {}: start one with `lb run --iface <IF>` \
                 (or point --api / ${SOCKET_ENV} at its socket)",
                socket.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "permission denied on {}: the API socket is root-only, run as root",
                socket.display()
            ),
            _ => format!("cannot connect to the lb daemon at {}", socket.display()),
        };
        anyhow!(error).context(hint)
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .context("sending the request")?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading the daemon's answer")?;
    if answer.is_empty() {
        bail!("the lb daemon closed the connection without answering");
    }
    let response: Response =
        serde_json::from_str(&answer).context("the daemon's answer is not valid JSON")?;
    if response.ok {
        Ok(response.result)
    } else {
        Err(anyhow!(response.error.unwrap_or_else(|| {
            "the daemon refused the request".to_owned()
        })))
    }
}

/// [`call`], decoding the result.
pub fn call_as<T: DeserializeOwned>(socket: &Path, request: &Request) -> anyhow::Result<T> {
    let value = call(socket, request)?;
    serde_json::from_value(value).context("unexpected answer from the daemon (version mismatch?)")
}

/// Parses one request line; the error text is what the client gets back.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
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
            }
        );
        let text = serde_json::to_string(&request).expect("serialize");
        assert_eq!(parse_request(&text), Ok(request));
        assert_eq!(parse_request(r#"{"op":"status"}"#), Ok(Request::Status {}));
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
            assert!(error.starts_with("bad request: "), "{error}");
            assert!(error.contains(reason), "{line}: {error}");
        }
    }

    #[test]
    fn the_socket_flag_beats_the_environment() {
        assert_eq!(
            socket_path(Some(Path::new("/tmp/x.sock"))),
            PathBuf::from("/tmp/x.sock")
        );
    }
}
