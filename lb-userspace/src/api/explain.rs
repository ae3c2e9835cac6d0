//! The `explain` answer (docs/API.md): one flow's VIP, tracked entry, Maglev pick and what
//! its next packet gets. Apart from wire.rs, which carries the request.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::model::{
    check::CheckConfig, explain::Verdict, health::Health, mode::Mode, state::Proto,
};

/// `lb explain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub proto: Proto,
    /// The VIP entry the flow matches; `null`: none (address, port and protocol).
    pub service: Option<ServiceMatch>,
    /// Some VIP has this address (on another port or protocol, if `service` is null).
    pub vip_address: bool,
    /// The flow's CONNTRACK entry; `null`: not tracked.
    pub tracked: Option<TrackedFlow>,
    /// The backend Maglev would give a new flow now; `null` without a VIP.
    pub maglev: Option<MaglevPick>,
    pub verdict: Verdict,
    /// `forward`, `pass` (to the kernel's stack) or `drop`.
    pub action: String,
    /// The reason counter of `lb stats` the packet is counted under.
    pub counter: String,
    /// The verdict and why, for people.
    pub explanation: String,
    /// How a new flow would be tracked (the unproven table, the rate guard); empty when the
    /// flow is tracked.
    #[serde(default)]
    pub admission: String,
    /// dsr-gue: the backends the next packet is offered to, in order (the second chance);
    /// absent for other modes and for a packet that is not forwarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hops: Vec<SocketAddr>,
    /// A QUIC VIP: how its packets find their backend; absent for other VIPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<QuicRoute>,
}

/// How the packets of a flow to a QUIC VIP find their backend: Initial and 0-RTT packets
/// (the client chose their connection ID) by Maglev, as `maglev` says; Handshake and
/// short-header packets by the server id their connection ID carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicRoute {
    /// The VIP's QUIC-LB configs, the one servers issue IDs with first.
    pub configs: Vec<String>,
    /// Where a Handshake or short-header packet with the connection ID asked about
    /// (`quic_id`) goes; absent when none was asked about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<QuicIdRoute>,
}

/// One connection ID, read as the datapath reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicIdRoute {
    /// The connection ID, in hex.
    pub id: String,
    /// The config id in its first octet's top three bits.
    pub config_id: u8,
    /// The server id it carries under that config (hex); `null`: the VIP has no config
    /// of that id.
    pub server_id: Option<String>,
    /// The backend that server id names, serving the VIP; `null`: none, so the packet
    /// goes by Maglev.
    pub backend: Option<BackendStatus>,
    /// The counter of `lb stats` the packet is counted under: `quic_by_server_id`,
    /// `quic_unknown_config` or `quic_unknown_server_id`.
    pub counter: String,
}

/// The VIP a flow matches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceMatch {
    pub mode: Mode,
    /// The health check (`null` when unchecked).
    pub check: Option<CheckConfig>,
    pub backends: usize,
    /// Backends not drained by the operator.
    pub live: usize,
    /// Of those, the ones not failing their check.
    pub healthy: usize,
    /// Every live backend fails its check, so all stay in the table (fail open).
    pub fail_open: bool,
}

/// A backend as a flow sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// `null` when the backend was removed (its address is no longer known).
    pub backend: Option<SocketAddr>,
    /// The datapath's BACKENDS state: `active` (takes new flows), `draining` (keeps its
    /// flows), `down` (failing its check: loses its flows, but TCP ones under its VIP's
    /// `--on-down keep-tcp`) or `removed`.
    pub state: String,
    pub weight: Option<u32>,
    /// `up`, `down` or `unchecked`.
    pub health: Health,
    /// Drained by the operator (`lb backend drain`).
    pub drained: bool,
}

/// A flow's CONNTRACK entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedFlow {
    /// `opening`, `established`, `closing`, `closed` or `udp`.
    pub state: String,
    pub idle_secs: u64,
    /// The idle timeout of that state the datapath was loaded with.
    pub timeout_secs: u64,
    /// Seconds of idleness left; 0 once expired.
    pub expires_in_secs: u64,
    /// Idle past its timeout: the datapath treats it as absent (the sweep deletes it).
    pub expired: bool,
    pub backend: BackendStatus,
    /// In the proven table (CONNTRACK), which a flood never evicts; `false`: unproven
    /// (CT_UNPROVEN).
    #[serde(default = "proven_by_default")]
    pub proven: bool,
    /// Why the entry is proven, or what would prove it.
    #[serde(default)]
    pub admission: String,
}

/// Daemons that predate admission had one table.
fn proven_by_default() -> bool {
    true
}

/// Where Maglev puts a new flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaglevPick {
    /// The flow hash (lb-common `flow_hash` with the cluster's seed).
    pub hash: u32,
    /// `hash % table_size`.
    pub slot: u32,
    pub table_size: u32,
    /// Fingerprint of the VIP's live table (as `lb vip list`).
    pub table_fingerprint: String,
    /// The slot's backend; `null`: the slot is empty.
    pub backend: Option<BackendStatus>,
}

#[cfg(test)]
mod tests {
    use crate::api::fixtures;

    /// docs/API.md documents this JSON and scripts parse it: a change must be deliberate.
    #[test]
    fn explanations_keep_their_json_shape() {
        for (name, answer) in fixtures::explanations() {
            insta::assert_json_snapshot!(format!("explain_{name}"), answer);
        }
    }
}

#[cfg(test)]
mod request_tests {
    use crate::api::{
        error::ErrorCode,
        wire::{Request, parse_request},
    };
    use crate::model::state::Proto;

    #[test]
    fn the_request_defaults_to_tcp_and_refuses_what_is_not_a_flow() {
        let request =
            parse_request(r#"{"op":"explain","client":"[fd00::1]:4000","vip":"[fd00:1::1]:80"}"#)
                .expect("valid");
        assert_eq!(
            request,
            Request::Explain {
                quic_id: None,
                client: "[fd00::1]:4000".parse().expect("addr"),
                vip: "[fd00:1::1]:80".parse().expect("addr"),
                proto: Proto::Tcp,
            }
        );
        for line in [
            r#"{"op":"explain","client":"198.18.0.1","vip":"198.18.1.1:80"}"#,
            r#"{"op":"explain","client":"198.18.0.1:1"}"#,
            r#"{"op":"explain","client":"198.18.0.1:1","vip":"198.18.1.1:80","proto":"icmp"}"#,
            r#"{"op":"explain","client":"198.18.0.1:1","vip":"198.18.1.1:80","port":1}"#,
        ] {
            let error = parse_request(line).expect_err(line);
            assert_eq!(error.code, ErrorCode::BadRequest, "{line}: {error}");
        }
    }
}
