//! The client side of the control socket: one blocking request, one answer (or, for
//! `capture`, one answer and then a stream of lines). No runtime.

use std::{
    ffi::OsString,
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;
use thiserror::Error;

use super::{
    error::{ApiError, ErrorCode},
    wire::{PROTOCOL_VERSION, Request, Response, request_line},
};

pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";
pub const SOCKET_ENV: &str = "LB_API";
/// How long a client waits for an answer (a change rewrites whole Maglev tables).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the CLI adds how to start the daemon.
    #[error("no lb daemon is listening on {}", .socket.display())]
    NoDaemon {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{hint}")]
    Connect {
        hint: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the lb daemon closed the connection without answering")]
    NoAnswer,
    #[error("the daemon's answer is not valid JSON")]
    Malformed(#[source] serde_json::Error),
    #[error(
        "this lb speaks API version {PROTOCOL_VERSION} but the daemon {}: use an lb binary of \
         the same release as the daemon",
        match .daemon { Some(v) => format!("speaks version {v}"), None => "predates API versions".to_owned() }
    )]
    VersionMismatch { daemon: Option<u32> },
    /// The daemon refused the request; `code` says why.
    /// The daemon refused the request: its message and code, and under them what to do.
    #[error("{} [{}]\n  to fix: {}", .0.message, .0.code.as_str(), .0.code.remedy())]
    Refused(ApiError),
    #[error("unexpected answer from the daemon")]
    Unexpected(#[source] serde_json::Error),
}

impl ClientError {
    /// The daemon's error code, when it refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(error) => Some(error.code),
            ClientError::VersionMismatch { .. } => Some(ErrorCode::VersionMismatch),
            _ => None,
        }
    }
}

/// The socket the CLI talks to: `--api`, else `$LB_API`, else the default.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    choose_socket(flag, std::env::var_os(SOCKET_ENV))
}

fn choose_socket(flag: Option<&Path>, env: Option<OsString>) -> PathBuf {
    flag.map(Path::to_owned)
        .or_else(|| env.map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Whether a daemon answers on `socket`.
pub fn is_listening(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(socket).map_err(|source| {
        let hint = match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                return ClientError::NoDaemon {
                    socket: socket.to_owned(),
                    source,
                };
            }
            io::ErrorKind::PermissionDenied => format!(
                "permission denied on {}: the API socket is root-only, run as root",
                socket.display()
            ),
            _ => format!("cannot connect to the lb daemon at {}", socket.display()),
        };
        ClientError::Connect { hint, source }
    })
}

/// Connects and sends one request; the answer is the caller's to read.
fn send(socket: &Path, request: &Request) -> Result<UnixStream, ClientError> {
    let stream = connect(socket)?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(failed("setting a timeout"))?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(failed("setting a timeout"))?;
    let line = request_line(request).map_err(ClientError::Unexpected)?;
    (&stream)
        .write_all(line.as_bytes())
        .map_err(failed("sending the request"))?;
    Ok(stream)
}

fn failed(what: &'static str) -> impl FnOnce(io::Error) -> ClientError {
    move |source| ClientError::Io { what, source }
}

/// Sends one request and returns its result, or the daemon's error.
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let stream = send(socket, request)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(failed("reading the daemon's answer"))?;
    read_answer(&answer)
}

/// A request answered by a stream of lines (`capture`): its first answer, then the
/// connection the lines follow on.
pub struct Stream {
    /// The first answer's result.
    pub result: serde_json::Value,
    /// The stream's lines (the first answer read off already).
    pub lines: BufReader<UnixStream>,
    /// The same connection, for the client's own lines (`{"stop":{}}`) and for ending it
    /// from another thread.
    pub control: UnixStream,
}

/// Sends one request whose answer is followed by a stream of lines, and returns the first
/// answer's result (or the daemon's error) with the connection. The stream has no read
/// timeout: a capture may see nothing for hours.
pub fn open_stream(socket: &Path, request: &Request) -> Result<Stream, ClientError> {
    let stream = send(socket, request)?;
    let control = stream
        .try_clone()
        .map_err(failed("sharing the connection"))?;
    let mut lines = BufReader::new(stream);
    let mut answer = String::new();
    lines
        .read_line(&mut answer)
        .map_err(failed("reading the daemon's answer"))?;
    let result = read_answer(&answer)?;
    lines
        .get_ref()
        .set_read_timeout(None)
        .map_err(failed("setting a timeout"))?;
    Ok(Stream {
        result,
        lines,
        control,
    })
}

/// Decodes an answer line, telling a version mismatch from a refusal.
fn read_answer(answer: &str) -> Result<serde_json::Value, ClientError> {
    if answer.is_empty() {
        return Err(ClientError::NoAnswer);
    }
    let value: serde_json::Value = serde_json::from_str(answer).map_err(ClientError::Malformed)?;
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u32::try_from(v).ok());
    if version != Some(PROTOCOL_VERSION) {
        return Err(ClientError::VersionMismatch { daemon: version });
    }
    let response: Response = serde_json::from_value(value).map_err(ClientError::Malformed)?;
    if response.ok {
        return Ok(response.result);
    }
    Err(ClientError::Refused(ApiError::new(
        response.code.unwrap_or(ErrorCode::Other),
        response
            .error
            .unwrap_or_else(|| "the daemon refused the request".to_owned()),
    )))
}

/// [`call`], decoding the result.
pub fn call_as<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<T, ClientError> {
    serde_json::from_value(call(socket, request)?).map_err(ClientError::Unexpected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_flag_beats_the_environment_which_beats_the_default() {
        let env = || Some(OsString::from("/tmp/from-env.sock"));
        assert_eq!(
            choose_socket(Some(Path::new("/tmp/x.sock")), env()),
            PathBuf::from("/tmp/x.sock")
        );
        assert_eq!(
            choose_socket(None, env()),
            PathBuf::from("/tmp/from-env.sock")
        );
        assert_eq!(choose_socket(None, None), PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn answers_are_told_apart() {
        let ok = read_answer(r#"{"ok":true,"version":1,"result":{"x":1}}"#).expect("ok");
        assert_eq!(ok["x"], 1);
        let refused = read_answer(
            r#"{"ok":false,"version":1,"error":"no VIP 198.18.1.1:80/tcp","code":"unknown_vip"}"#,
        )
        .expect_err("refused");
        assert_eq!(refused.code(), Some(ErrorCode::UnknownVip));
        assert_eq!(
            refused.to_string(),
            format!(
                "no VIP 198.18.1.1:80/tcp [unknown_vip]\n  to fix: {}",
                ErrorCode::UnknownVip.remedy()
            )
        );
        // A daemon from before versions answers our `version` field with a refusal.
        let old = read_answer(r#"{"ok":false,"error":"bad request: unknown field `version`"}"#)
            .expect_err("old daemon");
        assert!(old.to_string().contains("predates API versions"), "{old}");
        let newer = read_answer(r#"{"ok":true,"version":2}"#).expect_err("newer daemon");
        assert!(newer.to_string().contains("speaks version 2"), "{newer}");
        assert!(matches!(read_answer(""), Err(ClientError::NoAnswer)));
        assert!(matches!(read_answer("{"), Err(ClientError::Malformed(_))));
    }
}
