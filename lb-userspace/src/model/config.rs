//! The configuration and state file (TOML): VIPs and their backends. `lb run --config`
//! reads it as a declared start; the daemon writes the live state in the same format.
//!
//! ```toml
//! [[vip]]
//! address = "198.18.1.1:80"      # IPv6: "[fd00::1]:80"
//! proto = "tcp"                  # default tcp
//! mode = "nat"                   # nat (default), dsr-ipip, dsr-gue or dsr-l2
//! on_down = "keep-tcp"           # keep-tcp (default) or move: a down backend's tracked flows
//! allow_sources = ["198.18.0.0/24"]   # clients that may open flows; absent: any
//! check = { probe = "http:/healthz", interval = 2.0, timeout = 1.0, rise = 2, fall = 3 }
//! backends = [
//!   { address = "198.18.2.2:8080", weight = 100 },   # weight 1..=65535, default 100
//!   { address = "198.18.2.3:8080", drain = true },   # no new flows
//! ]
//!
//! [[vip]]
//! address = "198.18.1.1:443"
//! proto = "udp"
//! quic = ["config=0,server-id-len=2,nonce-len=6"]   # QUIC-LB configs (plaintext), first: the one to issue
//! backends = [
//!   { address = "198.18.2.2:443", server_id = "0a1b" },   # hex; absent: derived from the address
//! ]
//! ```
//!
//! `--config` may also hold `[cluster]` (settings every node shares) and `[notify]` (the
//! command run on backends' health changes: `command = ["/path", "arg"]`, `timeout = 10.0`);
//! the daemon's own state file holds neither.
//!
//! A file is read in full and checked like a series of `lb vip add` / `lb backend add`
//! commands before anything uses it; an error names the file, the line and the reason.
//!
//! Text in, text out: reading and writing the file is `crate::store::state_file`'s job.

use std::{
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::Spanned;

use crate::{
    model::check::CheckConfig,
    model::cluster::{ClusterSettings, Seed, check_announce_table},
    model::mode::Mode,
    model::notify::{NotifyConfig, NotifyHook},
    model::policy::OnDown,
    model::prefix::Prefix,
    model::state::{Change, DEFAULT_WEIGHT, Proto, Service, State},
};
use quic_lb::{Config as QuicConfig, ServerId};

/// Files larger than this are refused unread: no real state comes near it.
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}:{line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot encode the state as TOML")]
    Encode(#[from] toml::ser::Error),
    #[error("cannot save the state to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    #[serde(default, rename = "vip")]
    vips: Vec<VipIn>,
    #[serde(default)]
    node: Option<NodeIn>,
    #[serde(default)]
    cluster: Option<ClusterIn>,
    /// `[notify]`: the hook run on backends' health changes (read from `--config` only).
    #[serde(default)]
    notify: Option<Spanned<NotifyConfig>>,
}

/// `[node]`: this node's own state (the daemon writes it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeIn {
    #[serde(default)]
    drained: bool,
}

/// `[cluster]`: what every node of the cluster sets alike (read from `--config` only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterIn {
    #[serde(default)]
    hash_seed: Option<Spanned<String>>,
    #[serde(default)]
    announce_table: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VipIn {
    address: Spanned<SocketAddr>,
    #[serde(default)]
    proto: Proto,
    #[serde(default)]
    mode: Option<Spanned<Mode>>,
    #[serde(default)]
    on_down: Option<Spanned<OnDown>>,
    #[serde(default)]
    allow_sources: Option<Spanned<Vec<Prefix>>>,
    #[serde(default)]
    backends: Vec<BackendIn>,
    #[serde(default)]
    check: Option<Spanned<CheckConfig>>,
    /// QUIC-LB configs, in the CLI's form (`config=0,server-id-len=2,nonce-len=6`).
    #[serde(default)]
    quic: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendIn {
    address: Spanned<SocketAddr>,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    drain: bool,
    /// A QUIC VIP's backend: its server id in hex; absent: lb derives one.
    #[serde(default)]
    server_id: Option<Spanned<String>>,
}

const fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

#[derive(Serialize)]
struct FileOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<NodeOut>,
    vip: Vec<VipOut>,
}

#[derive(Serialize)]
struct NodeOut {
    drained: bool,
}

#[derive(Serialize)]
struct VipOut {
    address: SocketAddr,
    proto: Proto,
    mode: Mode,
    on_down: OnDown,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow_sources: Vec<Prefix>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<CheckConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    quic: Vec<String>,
    backends: Vec<BackendOut>,
}

#[derive(Serialize)]
struct BackendOut {
    address: SocketAddr,
    weight: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    drain: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_id: Option<String>,
}

fn line_of(text: &str, span: Option<Range<usize>>) -> usize {
    let offset = span.map_or(0, |s| s.start.min(text.len()));
    text[..offset].matches('\n').count() + 1
}

/// A TOML or field error on one line: the parser's message (its later lines, such as
/// "expected `.`, `]]`", in parentheses), the value it is about, quoted from the file, and
/// for an address the form expected.
fn toml_reason(text: &str, error: &toml::de::Error) -> String {
    let mut lines = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty());
    let first = lines.next().unwrap_or("invalid TOML");
    let rest: Vec<&str> = lines.collect();
    let mut reason = first.to_owned();
    // A value, not a whole table or the rest of the file.
    if let Some(value) = error
        .span()
        .and_then(|span| text.get(span))
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 80 && !v.contains('\n'))
    {
        reason.push_str(&format!(": {value}"));
    }
    if !rest.is_empty() {
        reason.push_str(&format!(" ({})", rest.join("; ")));
    }
    if first == "invalid socket address syntax" {
        reason.push_str(
            " (an address and a port from 1 to 65535: \"198.18.1.1:80\", \"[fd00::1]:80\")",
        );
    }
    reason
}

/// Parses and validates file contents; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<State, ConfigError> {
    parse_with_cluster(text, path).map(|(state, _)| state)
}

/// [`parse`], with the `[cluster]` settings.
pub fn parse_with_cluster(
    text: &str,
    path: &Path,
) -> Result<(State, ClusterSettings), ConfigError> {
    parse_declared(text, path).map(|file| (file.state, file.cluster))
}

/// Everything a `--config` file declares: the state, and the settings read from it alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredFile {
    pub state: State,
    pub cluster: ClusterSettings,
    /// `[notify]`, if the file has one.
    pub notify: Option<NotifyHook>,
}

/// [`parse`], with the `[cluster]` and `[notify]` settings.
pub fn parse_declared(text: &str, path: &Path) -> Result<DeclaredFile, ConfigError> {
    let invalid = |span: Option<Range<usize>>, reason: String| ConfigError::Invalid {
        path: path.to_owned(),
        line: line_of(text, span),
        reason,
    };
    let file: FileIn =
        toml::from_str(text).map_err(|e| invalid(e.span(), toml_reason(text, &e)))?;
    let notify = file
        .notify
        .as_ref()
        .map(|hook| {
            hook.get_ref()
                .validate()
                .map_err(|reason| invalid(Some(hook.span()), reason))
        })
        .transpose()?;
    let mut state = State::default();
    state.node.drained = file.node.as_ref().is_some_and(|node| node.drained);
    let mut cluster = ClusterSettings::default();
    if let Some(given) = &file.cluster {
        if let Some(seed) = &given.hash_seed {
            cluster.hash_seed = Some(
                seed.get_ref()
                    .parse::<Seed>()
                    .map_err(|e| invalid(Some(seed.span()), e.to_string()))?,
            );
        }
        if let Some(table) = &given.announce_table {
            cluster.announce_table = Some(
                check_announce_table(*table.get_ref())
                    .map_err(|e| invalid(Some(table.span()), e.to_string()))?,
            );
        }
    }
    for vip in &file.vips {
        let service = Service {
            addr: *vip.address.get_ref(),
            proto: vip.proto,
        };
        state
            .apply(&Change::AddVip(service))
            .map_err(|e| invalid(Some(vip.address.span()), e.to_string()))?;
        if let Some(mode) = &vip.mode {
            state
                .apply(&Change::SetMode {
                    service,
                    mode: *mode.get_ref(),
                })
                .map_err(|e| invalid(Some(mode.span()), e.to_string()))?;
        }
        if let Some(quic) = &vip.quic {
            let configs = quic
                .get_ref()
                .iter()
                .map(|text| {
                    text.parse::<QuicConfig>()
                        .map_err(|e| invalid(Some(quic.span()), format!("quic {text:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            state
                .apply(&Change::SetQuic { service, configs })
                .map_err(|e| invalid(Some(quic.span()), e.to_string()))?;
        }
        if let Some(on_down) = &vip.on_down {
            state
                .apply(&Change::SetOnDown {
                    service,
                    on_down: *on_down.get_ref(),
                })
                .map_err(|e| invalid(Some(on_down.span()), e.to_string()))?;
        }
        if let Some(sources) = &vip.allow_sources {
            state
                .apply(&Change::SetSources {
                    service,
                    sources: sources.get_ref().clone(),
                })
                .map_err(|e| invalid(Some(sources.span()), e.to_string()))?;
        }
        if let Some(check) = &vip.check {
            let spec = check
                .get_ref()
                .validate()
                .map_err(|reason| invalid(Some(check.span()), format!("check: {reason}")))?;
            state
                .apply(&Change::SetCheck {
                    service,
                    check: Some(spec),
                })
                .map_err(|e| invalid(Some(check.span()), e.to_string()))?;
        }
        for backend in &vip.backends {
            let addr = *backend.address.get_ref();
            let server_id = backend
                .server_id
                .as_ref()
                .map(|id| {
                    id.get_ref()
                        .parse::<ServerId>()
                        .map_err(|e| invalid(Some(id.span()), e.to_string()))
                })
                .transpose()?;
            state
                .apply(&Change::AddBackend {
                    service,
                    backend: addr,
                    weight: backend.weight,
                    server_id,
                })
                .map_err(|e| {
                    // A server id's own error points at it, the others at the address.
                    let span = backend
                        .server_id
                        .as_ref()
                        .filter(|_| e.is_about_server_id())
                        .map_or_else(|| backend.address.span(), Spanned::span);
                    invalid(Some(span), e.to_string())
                })?;
            if backend.drain {
                state
                    .apply(&Change::DrainBackend {
                        service,
                        backend: addr,
                    })
                    .map_err(|e| invalid(Some(backend.address.span()), e.to_string()))?;
            }
        }
    }
    Ok(DeclaredFile {
        state,
        cluster,
        notify,
    })
}

/// The file text for `state`.
pub(crate) fn render(state: &State) -> Result<String, ConfigError> {
    let file = FileOut {
        node: state.node.drained.then_some(NodeOut { drained: true }),
        vip: state
            .vips
            .iter()
            .map(|(service, spec)| VipOut {
                address: service.addr,
                proto: service.proto,
                mode: spec.mode,
                on_down: spec.on_down,
                allow_sources: spec.sources.iter().copied().collect(),
                check: spec.check.as_ref().map(CheckConfig::from),
                quic: spec.quic.iter().map(ToString::to_string).collect(),
                backends: spec
                    .backends
                    .iter()
                    .map(|(addr, backend)| BackendOut {
                        address: *addr,
                        weight: backend.weight,
                        drain: backend.draining,
                        server_id: backend.server_id.map(|id| id.to_string()),
                    })
                    .collect(),
            })
            .collect(),
    };
    let body = toml::to_string(&file)?;
    Ok(format!(
        "# lb state: written by `lb run` on every change; same format as --config.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::VipSpec;

    fn parse_ok(text: &str) -> State {
        parse(text, Path::new("test.toml")).expect("valid file")
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("test.toml"))
            .expect_err("invalid file")
            .to_string()
    }

    #[test]
    fn parses_vips_with_defaults() {
        let state = parse_ok(
            r#"
            [[vip]]
            address = "198.18.1.1:80"
            backends = [{ address = "198.18.2.2:8080" }, { address = "198.18.2.3:8080", weight = 7, drain = true }]

            [[vip]]
            address = "[fd00::1]:53"
            proto = "udp"
            "#,
        );
        let vips: Vec<_> = state.vips.iter().collect();
        assert_eq!(vips.len(), 2);
        let (tcp, spec) = vips[0];
        assert_eq!(tcp.proto, Proto::Tcp);
        let backends: Vec<_> = spec.backends.values().collect();
        assert_eq!(backends[0].weight, DEFAULT_WEIGHT);
        assert!(!backends[0].draining);
        assert_eq!((backends[1].weight, backends[1].draining), (7, true));
        assert_eq!(vips[1].0.proto, Proto::Udp);
        assert!(vips[1].0.addr.is_ipv6());
    }

    #[test]
    fn render_and_parse_round_trip() {
        let state = parse_ok(
            "[[vip]]\naddress = \"198.18.1.1:80\"\nbackends = [{ address = \"198.18.2.2:80\", drain = true }]\ncheck = { probe = \"http:/\", interval = 0.5, expect = \"200\" }\n[[vip]]\naddress = \"[fd00::1]:53\"\nproto = \"udp\"\n",
        );
        assert!(
            state
                .vips
                .values()
                .next()
                .is_some_and(|v| v.check.is_some())
        );
        assert_eq!(parse_ok(&render(&state).expect("render")), state);
        assert_eq!(
            parse_ok(&render(&State::default()).expect("render")),
            State::default()
        );
    }

    #[test]
    fn cluster_settings_and_the_node_drain_are_read_and_checked() {
        let text = "[cluster]\nhash_seed = \"00000000deadbeef\"\nannounce_table = 4242\n\n[node]\ndrained = true\n\n[[vip]]\naddress = \"198.18.1.1:80\"\n";
        let (state, cluster) =
            parse_with_cluster(text, Path::new("test.toml")).expect("valid file");
        assert!(state.node.drained);
        assert_eq!(cluster.announce_table, Some(4242));
        assert_eq!(cluster.hash_seed.map(Seed::words), Some([0xdead_beef, 0]));
        // The daemon keeps the drain, never the cluster's secret, in its state file.
        let rendered = render(&state).expect("render");
        assert!(rendered.contains("[node]\ndrained = true"), "{rendered}");
        assert!(!rendered.contains("hash_seed"), "{rendered}");
        assert_eq!(parse_ok(&rendered), state);
        for (text, line, reason) in [
            ("[cluster]\nhash_seed = \"abc\"\n", 2, "16 hex digits"),
            (
                "[cluster]\nhash_seed = \"000000000000000z\"\n",
                2,
                "not a hex digit",
            ),
            ("[cluster]\nannounce_table = 254\n", 2, "main table"),
            ("[cluster]\nannounce_table = -1\n", 2, ""),
            ("[cluster]\nseed = \"x\"\n", 2, "unknown field"),
            ("[node]\ndrained = \"yes\"\n", 2, ""),
        ] {
            let error = parse_err(text);
            assert!(
                error.starts_with(&format!("test.toml:{line}: ")) && error.contains(reason),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn a_toml_error_is_one_line_and_quotes_the_value() {
        let port = parse_err("[[vip]]\naddress = \"198.18.1.1:99999\"\n");
        assert_eq!(
            port,
            "test.toml:2: invalid socket address syntax: \"198.18.1.1:99999\" (an address and a \
             port from 1 to 65535: \"198.18.1.1:80\", \"[fd00::1]:80\")"
        );
        let header = parse_err("[[vip]\naddress = \"198.18.1.1:80\"\n");
        assert!(!header.contains('\n'), "{header}");
        assert!(
            header.starts_with("test.toml:1: invalid table header") && header.contains("(expected"),
            "{header}"
        );
    }

    #[test]
    fn the_notify_hook_is_read_and_checked() {
        let text =
            "[notify]\ncommand = [\"/usr/local/bin/page\", \"--team\", \"ops\"]\ntimeout = 2.5\n";
        let file = parse_declared(text, Path::new("test.toml")).expect("valid file");
        let hook = file.notify.expect("a hook");
        assert_eq!(hook.to_string(), "/usr/local/bin/page --team ops");
        assert_eq!(hook.timeout(), std::time::Duration::from_millis(2500));
        let without = parse_declared("", Path::new("test.toml")).expect("valid file");
        assert_eq!(without.notify, None);
        // The daemon never writes the hook into its state file.
        assert!(!render(&file.state).expect("render").contains("notify"));
        for (text, reason) in [
            ("[notify]\ncommand = []\n", "the command is empty"),
            (
                "[notify]\ncommand = [\"/bin/true\"]\ntimeout = 0\n",
                "between",
            ),
            ("[notify]\ncommand = \"/bin/true\"\n", ""),
            ("[notify]\nprogram = [\"/bin/true\"]\n", "unknown field"),
        ] {
            let error = parse_declared(text, Path::new("test.toml"))
                .expect_err("invalid")
                .to_string();
            assert!(
                error.starts_with("test.toml:") && error.contains(reason),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let syntax = parse_err("[[vip]]\naddress = \"198.18.1.1\"\n");
        assert!(syntax.starts_with("test.toml:2: "), "{syntax}");
        let unknown_field = parse_err("[[vip]]\naddress = \"198.18.1.1:80\"\ncolour = 1\n");
        assert!(unknown_field.contains("colour"), "{unknown_field}");
        let proto = parse_err("[[vip]]\naddress = \"198.18.1.1:80\"\nproto = \"sctp\"\n");
        assert!(proto.starts_with("test.toml:3: "), "{proto}");
        let family = parse_err(
            "[[vip]]\naddress = \"[fd00::1]:80\"\nbackends = [\n  { address = \"198.18.2.2:80\" },\n]\n",
        );
        assert!(
            family.starts_with("test.toml:4: ") && family.contains("IPv4"),
            "{family}"
        );
        let duplicate = parse_err(
            "[[vip]]\naddress = \"198.18.1.1:80\"\n\n[[vip]]\naddress = \"198.18.1.1:80\"\n",
        );
        assert!(
            duplicate.starts_with("test.toml:5: ") && duplicate.contains("already exists"),
            "{duplicate}"
        );
        let check =
            parse_err("[[vip]]\naddress = \"198.18.1.1:80\"\n\ncheck = { probe = \"icmp\" }\n");
        assert!(
            check.starts_with("test.toml:4: ") && check.contains("unknown check"),
            "{check}"
        );
        let weight = parse_err(
            "[[vip]]\naddress = \"198.18.1.1:80\"\nbackends = [{ address = \"198.18.2.2:80\", weight = 0 }]\n",
        );
        assert!(weight.contains("out of range"), "{weight}");
    }

    #[test]
    fn vip_policies_round_trip_and_default_to_keep_tcp_and_any_source() {
        let state = parse_ok(
            "[[vip]]\naddress = \"198.18.1.1:80\"\non_down = \"move\"\nallow_sources = [\"198.18.0.0/24\", \"198.19.0.7\"]\n[[vip]]\naddress = \"[fd00:1::1]:53\"\nproto = \"udp\"\nallow_sources = [\"fd00::/64\"]\n[[vip]]\naddress = \"198.18.1.2:80\"\n",
        );
        let specs: Vec<&VipSpec> = state.vips.values().collect();
        assert_eq!(specs[0].on_down, OnDown::Move);
        assert_eq!(specs[0].sources.len(), 2);
        assert_eq!(specs[1].on_down, OnDown::KeepTcp, "the default");
        assert!(specs[1].sources.is_empty(), "any source");
        assert_eq!(specs[2].sources.len(), 1);
        let rendered = render(&state).expect("render");
        assert!(rendered.contains("on_down = \"move\""), "{rendered}");
        assert!(
            rendered.contains("allow_sources = [\"198.18.0.0/24\", \"198.19.0.7/32\"]"),
            "{rendered}"
        );
        assert_eq!(parse_ok(&rendered), state);
    }

    const QUIC_VIP: &str = "[[vip]]\naddress = \"198.18.1.1:443\"\nproto = \"udp\"\nquic = [\"config=0,server-id-len=2,nonce-len=6\", \"config=1,server-id-len=2,nonce-len=8\"]\n";

    #[test]
    fn quic_configs_and_server_ids_round_trip() {
        let text = format!(
            "{QUIC_VIP}backends = [\n  {{ address = \"198.18.2.1:443\", server_id = \"0A1B\" }},\n  {{ address = \"198.18.2.2:443\" }},\n]\n"
        );
        let state = parse_ok(&text);
        let vip = state.vips.values().next().expect("a VIP");
        let shown: Vec<String> = vip.quic.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "config=0,server-id-len=2,nonce-len=6",
                "config=1,server-id-len=2,nonce-len=8"
            ]
        );
        let ids: Vec<String> = vip
            .backends
            .values()
            .map(|b| b.server_id.expect("a server id").to_string())
            .collect();
        assert_eq!(ids[0], "0a1b");
        let rendered = render(&state).expect("render");
        assert!(
            rendered.contains("quic = [\"config=0,server-id-len=2,nonce-len=6\", \"config=1,server-id-len=2,nonce-len=8\"]"),
            "{rendered}"
        );
        // The derived id is saved, so a restart keeps it whatever else changes.
        assert!(
            rendered.contains(&format!("server_id = \"{}\"", ids[1])),
            "{rendered}"
        );
        assert_eq!(parse_ok(&rendered), state);
        // A file without QUIC (an older state file) has none.
        let plain = parse_ok(
            "[[vip]]\naddress = \"198.18.1.1:443\"\nproto = \"udp\"\nbackends = [{ address = \"198.18.2.1:443\" }]\n",
        );
        let vip = plain.vips.values().next().expect("a VIP");
        assert!(vip.quic.is_empty() && vip.backends.values().all(|b| b.server_id.is_none()));
        assert!(!render(&plain).expect("render").contains("quic"));
    }

    #[test]
    fn bad_quic_configs_and_server_ids_name_the_line() {
        for (text, line, reason) in [
            (
                "[[vip]]\naddress = \"198.18.1.1:443\"\nquic = [\"config=0,server-id-len=2,nonce-len=6\"]\n".to_owned(),
                3,
                "is TCP: QUIC configs are for UDP VIPs",
            ),
            (
                "[[vip]]\naddress = \"198.18.1.1:443\"\nproto = \"udp\"\nquic = [\"config=7,server-id-len=2,nonce-len=6\"]\n".to_owned(),
                4,
                "quic \"config=7,server-id-len=2,nonce-len=6\": config id 7 is out of range",
            ),
            (
                "[[vip]]\naddress = \"198.18.1.1:443\"\nproto = \"udp\"\nquic = [\"config=0,server-id-len=2,nonce-len=6,key=8f95f09245765f80256934e50c66207f\"]\n".to_owned(),
                4,
                "encrypted QUIC-LB configs are not supported",
            ),
            (
                "[[vip]]\naddress = \"198.18.1.1:443\"\nproto = \"udp\"\nquic = \"config=0,server-id-len=2,nonce-len=6\"\n".to_owned(),
                4,
                "invalid type",
            ),
            (
                format!("{QUIC_VIP}backends = [\n  {{ address = \"198.18.2.1:443\", server_id = \"0a1b2c\" }},\n]\n"),
                6,
                "has 3 byte(s) but VIP 198.18.1.1:443/udp's QUIC configs have server-id-len 2",
            ),
            (
                format!("{QUIC_VIP}backends = [\n  {{ address = \"198.18.2.1:443\", server_id = \"0x1b\" }},\n]\n"),
                6,
                "not a hex digit",
            ),
            (
                format!("{QUIC_VIP}backends = [\n  {{ address = \"198.18.2.1:443\", server_id = \"0a1b\" }},\n  {{ address = \"198.18.2.2:443\", server_id = \"0a1b\" }},\n]\n"),
                7,
                "server id 0a1b is already backend 198.18.2.1:443's",
            ),
            (
                "[[vip]]\naddress = \"198.18.1.1:443\"\nproto = \"udp\"\nbackends = [\n  { address = \"198.18.2.1:443\", server_id = \"0a1b\" },\n]\n".to_owned(),
                5,
                "has no QUIC config",
            ),
        ] {
            let error = parse_err(&text);
            assert!(
                error.starts_with(&format!("test.toml:{line}: ")) && error.contains(reason),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn bad_vip_policies_name_the_line() {
        let head = "[[vip]]\naddress = \"198.18.1.1:80\"\n";
        for (text, reason) in [
            ("on_down = \"drop\"\n", "expected `keep-tcp` or `move`"),
            ("allow_sources = [\"198.18.0.1/24\"]\n", "host bits are set"),
            ("allow_sources = [\"198.18.0.0/33\"]\n", "0 to 32"),
            ("allow_sources = [\"fd00::/64\"]\n", "is IPv6 but VIP"),
            (
                "allow_sources = [\"198.18.0.0/24\", \"198.18.0.0/24\"]\n",
                "given twice",
            ),
            ("allow_sources = \"198.18.0.0/24\"\n", ""),
        ] {
            let error = parse_err(&format!("{head}{text}"));
            assert!(
                error.starts_with("test.toml:3: ") && error.contains(reason),
                "{text:?}: {error}"
            );
        }
        let many: Vec<String> = (0..65).map(|i| format!("\"198.18.{i}.0/24\"")).collect();
        let error = parse_err(&format!("{head}allow_sources = [{}]\n", many.join(", ")));
        assert!(error.contains("at most 64"), "{error}");
    }
}
