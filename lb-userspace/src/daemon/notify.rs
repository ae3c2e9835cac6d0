//! systemd's readiness protocol (sd_notify(3)) for `Type=notify` units: one datagram per
//! state change to `$NOTIFY_SOCKET`. Without the variable (not run by systemd) nothing is
//! sent. Written here rather than with the sd-notify crate because that crate connects to
//! `@name` as a file path, and systemd hands out abstract sockets (`@...`) too.

use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
};

use tracing::warn;

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells systemd the daemon serves: the datapath is attached and the API socket bound.
/// `status` is what `systemctl status` shows.
pub(crate) fn ready(status: &str) {
    send_logged(&format!("READY=1\nSTATUS={status}\n"));
}

/// Tells systemd the daemon is stopping (the datapath stays attached).
pub(crate) fn stopping() {
    send_logged("STOPPING=1\nSTATUS=stopping; the datapath keeps forwarding\n");
}

/// A lost notification is not fatal: systemd's own start timeout reports a missing READY.
fn send_logged(message: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    if let Err(error) = send_to(&socket, message) {
        warn!(socket = %socket.to_string_lossy(), %error, "telling systemd the daemon's state failed");
    }
}

/// Sends `message` as one datagram to the socket `$NOTIFY_SOCKET` names.
fn send_to(socket: &OsStr, message: &str) -> io::Result<()> {
    let address = address(socket)?;
    let sender = UnixDatagram::unbound()?;
    let sent = sender.send_to_addr(message.as_bytes(), &address)?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the notification was cut short",
        ));
    }
    Ok(())
}

/// `/path` is a socket file, `@name` an abstract socket; anything else (a relative path,
/// systemd's `vsock:` for virtual machines) is not for a service.
fn address(socket: &OsStr) -> io::Result<SocketAddr> {
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(socket),
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an abstract socket (@name)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(receiver: &UnixDatagram) -> String {
        let mut buffer = [0u8; 512];
        let n = receiver.recv(&mut buffer).expect("recv");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_socket_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        send_to(path.as_os_str(), "READY=1\n").expect("send");
        assert_eq!(received(&receiver), "READY=1\n");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("lb-notify-test-{}", std::process::id());
        let receiver = UnixDatagram::bind_addr(
            &SocketAddr::from_abstract_name(name.as_bytes()).expect("name"),
        )
        .expect("bind");
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1\n").expect("send");
        assert_eq!(received(&receiver), "STOPPING=1\n");
    }

    #[test]
    fn refuses_what_is_not_a_socket_address() {
        for bad in ["", "notify", "vsock:2:1234"] {
            let error = send_to(OsStr::new(bad), "READY=1\n").expect_err(bad);
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        let missing = send_to(OsStr::new("/nonexistent/lb-notify"), "READY=1\n");
        assert!(missing.is_err());
    }
}
