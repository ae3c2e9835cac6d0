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
    /// Anything else the daemon could not do.
    Internal,
    #[serde(other)]
    Other,
}

impl ErrorCode {
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
