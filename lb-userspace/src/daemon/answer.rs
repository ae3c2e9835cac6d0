//! The two answers every request handler shares: a value as JSON, and a datapath failure
//! as an API error. Apart from the controller and the readers so both can use them.

use serde::Serialize;

use crate::{
    api::error::{ApiError, ErrorCode},
    model::error_chain::error_chain,
};

/// An answer as JSON.
pub(super) fn json(value: impl Serialize) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// A map or syscall failure: the datapath, not the request, is at fault.
pub(super) fn datapath_error(error: impl std::error::Error) -> ApiError {
    ApiError::new(ErrorCode::DatapathError, error_chain(&error))
}
