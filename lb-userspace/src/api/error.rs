//! The API's errors: a stable machine-readable code beside the human message. Scripts match
//! on the code; the message may be reworded between versions, the codes may not.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::state::ChangeError;

/// What went wrong, for programs. Serialized in snake_case (`unknown_vip`); docs/API.md
/// lists them. A code this client does not know (from a newer daemon) reads as `other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request line is not a valid request (JSON, op, fields, values).
    BadRequest,
    /// The request line is longer than the limit; the connection is closed.
    RequestTooLarge,
    /// Client and daemon speak different protocol versions.
    VersionMismatch,
    /// `lb down` is under way.
    ShuttingDown,
    UnknownVip,
    DuplicateVip,
    UnknownBackend,
    DuplicateBackend,
    InvalidWeight,
    InvalidAddress,
    /// A backend of the other address family than its VIP.
    FamilyMismatch,
    /// The backend endpoint already serves another VIP.
    EndpointInUse,
    /// A VIP's mode changes only while it has no backends.
    ModeChangeWithBackends,
    /// A DSR backend must listen on the VIP's port.
    DsrPortMismatch,
    /// A DSR mode cannot carry the VIP to a backend of this family.
    DsrFamily,
    /// A dsr-l2 backend not on a link the lb is attached to.
    NotOnLink,
    /// A change that changes nothing (`backend set` without a field).
    NothingToChange,
    InvalidCheck,
    /// A VIP's source prefixes: of the other family, given twice, or too many.
    InvalidSources,
    /// A VIP's QUIC-LB configs: not a config, on a TCP VIP, encrypted, a config id given
    /// twice, server-id lengths that differ, or more than 7.
    InvalidQuic,
    /// A server id: not hex, of another length than the VIP's configs say, all zeros, for
    /// a VIP without QUIC configs, or none left to derive.
    InvalidServerId,
    /// Another backend of the VIP has the server id.
    ServerIdInUse,
    TooManyVips,
    TooManyBackends,
    /// Forwarding is off for the VIP's family on an attached interface.
    ForwardingDisabled,
    /// A map update failed; the desired state is unchanged.
    DatapathError,
    /// The state file could not be saved; the change was rolled back.
    StateNotSaved,
    /// `lb reload` of a daemon started without `--config`.
    NoConfig,
    /// `lb reload`: the file is unreadable or invalid, or asks for what a reload cannot do;
    /// nothing changed.
    InvalidConfig,
    /// `capture`: another capture is running (one at a time).
    CaptureBusy,
    /// Anything else the daemon could not do.
    Internal,
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// Every code, in the order docs/API.md lists them.
    pub const ALL: [ErrorCode; 32] = [
        ErrorCode::BadRequest,
        ErrorCode::RequestTooLarge,
        ErrorCode::VersionMismatch,
        ErrorCode::ShuttingDown,
        ErrorCode::UnknownVip,
        ErrorCode::DuplicateVip,
        ErrorCode::UnknownBackend,
        ErrorCode::DuplicateBackend,
        ErrorCode::InvalidWeight,
        ErrorCode::InvalidAddress,
        ErrorCode::FamilyMismatch,
        ErrorCode::EndpointInUse,
        ErrorCode::ModeChangeWithBackends,
        ErrorCode::DsrPortMismatch,
        ErrorCode::DsrFamily,
        ErrorCode::NotOnLink,
        ErrorCode::NothingToChange,
        ErrorCode::InvalidSources,
        ErrorCode::InvalidQuic,
        ErrorCode::InvalidServerId,
        ErrorCode::ServerIdInUse,
        ErrorCode::InvalidCheck,
        ErrorCode::TooManyVips,
        ErrorCode::TooManyBackends,
        ErrorCode::ForwardingDisabled,
        ErrorCode::DatapathError,
        ErrorCode::StateNotSaved,
        ErrorCode::NoConfig,
        ErrorCode::InvalidConfig,
        ErrorCode::CaptureBusy,
        ErrorCode::Internal,
        ErrorCode::Other,
    ];

    /// What the operator does about a refusal with this code. The message says what was
    /// wrong with this request; the remedy holds for every refusal of the code, so a
    /// client (the CLI prints it under the message) and docs/API.md can show it.
    pub const fn remedy(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => {
                "compare the request with docs/API.md (the CLI sends only valid ones: is it the daemon's release?)"
            }
            ErrorCode::RequestTooLarge => {
                "send one change per request: a request line is at most 65,536 bytes"
            }
            ErrorCode::VersionMismatch | ErrorCode::Other => {
                "use the lb binary of the daemon's release (`lb status` names the daemon's version)"
            }
            ErrorCode::ShuttingDown => {
                "the datapath is being taken down: once the daemon has exited, start it again (`systemctl start lb`, or `lb run`)"
            }
            ErrorCode::UnknownVip => {
                "`lb vip list` shows the VIPs; address, port and protocol (--proto) must all match"
            }
            ErrorCode::DuplicateVip => {
                "keep it, change its mode with `lb vip set-mode`, or delete it first with `lb vip del`"
            }
            ErrorCode::UnknownBackend => "`lb backend list <VIP>` shows the VIP's backends",
            ErrorCode::DuplicateBackend => {
                "change its weight or end its drain with `lb backend set`, drain it with `lb backend drain`"
            }
            ErrorCode::InvalidWeight => "give a weight from 1 to 65535 (--weight)",
            ErrorCode::InvalidAddress => {
                "give a unicast address that is not loopback, unspecified or broadcast, and a port other than 0"
            }
            ErrorCode::FamilyMismatch => {
                "give a backend of the VIP's address family; only dsr-ipip and dsr-gue carry an IPv4 VIP to IPv6 backends"
            }
            ErrorCode::EndpointInUse => {
                "serve this VIP on another port of the backend, or delete the backend from the VIP that has it"
            }
            ErrorCode::ModeChangeWithBackends => {
                "delete the VIP's backends, change the mode, then add them again (their tracked flows end)"
            }
            ErrorCode::DsrPortMismatch => {
                "give the backend the VIP's port: in DSR the packet reaches it with the VIP's port unchanged"
            }
            ErrorCode::DsrFamily => {
                "give a backend of the VIP's family (dsr-ipip and dsr-gue also carry an IPv4 VIP to IPv6 backends)"
            }
            ErrorCode::NotOnLink => {
                "attach lb to the backend's link (--iface) or use dsr-ipip, which routes to the backend"
            }
            ErrorCode::NothingToChange => {
                "give --weight, --undrain to end a drain, or --server-id (QUIC VIPs)"
            }
            ErrorCode::InvalidSources => {
                "give at most 64 distinct prefixes (--allow-source) of the VIP's address family"
            }
            ErrorCode::InvalidQuic => {
                "give UDP VIPs 1 to 7 plaintext configs (--quic config=N,server-id-len=L,nonce-len=M) with distinct config ids and one server-id-len"
            }
            ErrorCode::InvalidServerId => {
                "give the VIP QUIC configs first (`lb vip set-quic`), then a server id of server-id-len bytes in hex, not all zeros"
            }
            ErrorCode::ServerIdInUse => {
                "give another server id, or change the other backend's first (`lb backend list <VIP>` shows them)"
            }
            ErrorCode::InvalidCheck => {
                "fix the check as the message says; `lb vip add --help` lists the check options"
            }
            ErrorCode::TooManyVips | ErrorCode::TooManyBackends => {
                "delete unused ones, or restart lb with a larger --max-vips or --max-backends (`lb status` shows the sizes)"
            }
            ErrorCode::ForwardingDisabled => {
                "turn forwarding on for the family on the interface the message names (sysctl), then try again"
            }
            ErrorCode::DatapathError => {
                "nothing changed; the daemon's log says more (`journalctl -u lb`), `lb status` shows the datapath"
            }
            ErrorCode::StateNotSaved => {
                "make the state file's directory writable and not full (the message names the file), then try again"
            }
            ErrorCode::NoConfig => {
                "make changes with `lb vip` and `lb backend`, or restart the daemon with --config (the package's unit does)"
            }
            ErrorCode::InvalidConfig => {
                "fix the file where the message says, then `lb reload` again; the daemon keeps what it runs"
            }
            ErrorCode::CaptureBusy => {
                "wait for the other `lb capture` to end, or stop it (Ctrl-C where it runs): one capture runs at a time"
            }
            ErrorCode::Internal => {
                "the daemon's log says more (`journalctl -u lb`); please report it with that log"
            }
        }
    }

    /// The wire spelling, for messages.
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_else(|| "other".to_owned())
    }
}

/// An error as the API carries it.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<&ChangeError> for ErrorCode {
    fn from(error: &ChangeError) -> Self {
        match error {
            ChangeError::DuplicateVip(_) => ErrorCode::DuplicateVip,
            ChangeError::UnknownVip(_) => ErrorCode::UnknownVip,
            ChangeError::DuplicateBackend { .. } => ErrorCode::DuplicateBackend,
            ChangeError::UnknownBackend { .. } => ErrorCode::UnknownBackend,
            ChangeError::FamilyMismatch { .. } => ErrorCode::FamilyMismatch,
            ChangeError::WeightOutOfRange(_) => ErrorCode::InvalidWeight,
            ChangeError::PortZero(_) | ChangeError::UnusableAddress(_) => ErrorCode::InvalidAddress,
            ChangeError::EmptySet => ErrorCode::NothingToChange,
            ChangeError::EndpointInUse { .. } => ErrorCode::EndpointInUse,
            ChangeError::ModeChangeWithBackends { .. } => ErrorCode::ModeChangeWithBackends,
            ChangeError::DsrPortMismatch { .. } => ErrorCode::DsrPortMismatch,
            ChangeError::DsrFamily { .. } => ErrorCode::DsrFamily,
            ChangeError::Sources { .. } => ErrorCode::InvalidSources,
            ChangeError::QuicOnTcp(_)
            | ChangeError::TooManyQuicConfigs { .. }
            | ChangeError::EncryptedQuicConfig(_)
            | ChangeError::DuplicateQuicConfigId { .. }
            | ChangeError::QuicServerIdLenDiffers { .. } => ErrorCode::InvalidQuic,
            ChangeError::NotQuic(_)
            | ChangeError::ServerIdLen { .. }
            | ChangeError::ServerIdZero(_)
            | ChangeError::ServerIdsExhausted { .. } => ErrorCode::InvalidServerId,
            ChangeError::ServerIdInUse { .. } => ErrorCode::ServerIdInUse,
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(error: ChangeError) -> Self {
        ApiError::new(ErrorCode::from(&error), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_and_unknown_ones_read_as_other() {
        assert_eq!(ErrorCode::UnknownVip.as_str(), "unknown_vip");
        assert_eq!(ErrorCode::StateNotSaved.as_str(), "state_not_saved");
        let code: ErrorCode = serde_json::from_str(r#""a_code_from_the_future""#).expect("other");
        assert_eq!(code, ErrorCode::Other);
    }

    /// Where a code stands in `ErrorCode::ALL`; a match without a wildcard, so a new code
    /// does not compile until it has a place there.
    fn place(code: ErrorCode) -> usize {
        match code {
            ErrorCode::BadRequest => 0,
            ErrorCode::RequestTooLarge => 1,
            ErrorCode::VersionMismatch => 2,
            ErrorCode::ShuttingDown => 3,
            ErrorCode::UnknownVip => 4,
            ErrorCode::DuplicateVip => 5,
            ErrorCode::UnknownBackend => 6,
            ErrorCode::DuplicateBackend => 7,
            ErrorCode::InvalidWeight => 8,
            ErrorCode::InvalidAddress => 9,
            ErrorCode::FamilyMismatch => 10,
            ErrorCode::EndpointInUse => 11,
            ErrorCode::ModeChangeWithBackends => 12,
            ErrorCode::DsrPortMismatch => 13,
            ErrorCode::DsrFamily => 14,
            ErrorCode::NotOnLink => 15,
            ErrorCode::NothingToChange => 16,
            ErrorCode::InvalidSources => 17,
            ErrorCode::InvalidQuic => 18,
            ErrorCode::InvalidServerId => 19,
            ErrorCode::ServerIdInUse => 20,
            ErrorCode::InvalidCheck => 21,
            ErrorCode::TooManyVips => 22,
            ErrorCode::TooManyBackends => 23,
            ErrorCode::ForwardingDisabled => 24,
            ErrorCode::DatapathError => 25,
            ErrorCode::StateNotSaved => 26,
            ErrorCode::NoConfig => 27,
            ErrorCode::InvalidConfig => 28,
            ErrorCode::CaptureBusy => 29,
            ErrorCode::Internal => 30,
            ErrorCode::Other => 31,
        }
    }

    #[test]
    fn every_code_is_listed_once() {
        for (index, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(place(code), index, "{code:?}");
        }
    }

    /// Every refusal names its remedy: each code has one that says what to do (a command, a
    /// flag, a file to fix), and docs/API.md shows the same words beside the code.
    #[test]
    fn every_code_has_a_remedy_and_docs_api_shows_it() {
        let api = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/API.md"),
        )
        .expect("docs/API.md");
        let acts = [
            "give", "use", "delete", "change", "fix", "start", "make", "turn", "send", "compare",
            "attach", "serve", "keep", "report", "`lb ",
        ];
        for code in ErrorCode::ALL {
            let remedy = code.remedy();
            assert!(
                acts.iter().any(|act| remedy.contains(act)),
                "{}: the remedy says what to do: {remedy}",
                code.as_str()
            );
            if code == ErrorCode::Other {
                continue; // never on the wire: a code this client does not know
            }
            let wire = code.as_str();
            let row = api
                .lines()
                .find(|line| line.starts_with('|') && line.contains(&format!("`{wire}`")))
                .unwrap_or_else(|| panic!("docs/API.md has no row for `{wire}`"));
            assert!(
                row.contains(remedy),
                "docs/API.md's row for `{wire}` shows its remedy `{remedy}`: {row}"
            );
        }
    }

    #[test]
    fn change_errors_map_to_their_codes() {
        let vip = crate::model::state::Service {
            addr: "198.18.1.1:80".parse().expect("addr"),
            proto: crate::model::state::Proto::Tcp,
        };
        let error = ApiError::from(ChangeError::UnknownVip(vip));
        assert_eq!(error.code, ErrorCode::UnknownVip);
        assert!(error.message.contains("198.18.1.1:80"), "{}", error.message);
        assert_eq!(
            ErrorCode::from(&ChangeError::WeightOutOfRange(0)),
            ErrorCode::InvalidWeight
        );
    }
}
