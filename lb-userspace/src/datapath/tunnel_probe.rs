//! Sends a health probe through the tunnel and waits for its answer (the probe and its
//! answer: `model::tunnel_probe`): dsr-gue as a UDP datagram to the backend's GUE port,
//! dsr-ipip through a raw socket of the inner family's protocol (the kernel adds the outer
//! header), and the answer read from a raw TCP socket. Blocking: run it off the runtime.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::model::tunnel_probe::{Answer, Probe, gue_payload};

/// The tunnel a VIP's traffic takes to its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    Ipip,
    Gue { port: u16 },
}

/// Probes the service on `vip` at `backend` through `tunnel`: `Ok` on its SYN-ACK (then a
/// RST closes the half-open connection), otherwise why not.
pub fn probe(
    backend: IpAddr,
    vip: SocketAddr,
    tunnel: Tunnel,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let local = source_toward(backend).map_err(|e| format!("no route to {backend}: {e}"))?;
    if local.is_ipv4() != vip.is_ipv4() {
        return Err(format!(
            "the lb's address toward {backend} ({local}) is not of {vip}'s family"
        ));
    }
    let answers = raw_socket(vip.is_ipv4(), libc::IPPROTO_TCP)
        .map_err(|e| format!("a raw TCP socket for the answer: {e}"))?;
    let noise = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = Probe {
        local: SocketAddr::new(local, 40_000 + (noise % 20_000) as u16),
        vip,
        seq: noise.rotate_left(13),
    };
    send(backend, tunnel, &probe.syn()).map_err(|e| format!("send through the tunnel: {e}"))?;
    let mut buffer = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer through the tunnel within {timeout:?}"));
        }
        let Some((from, len)) =
            receive(&answers, &mut buffer, left).map_err(|e| format!("receive: {e}"))?
        else {
            continue;
        };
        let segment = if vip.is_ipv4() {
            // A raw IPv4 socket hands over the IP header too.
            let header = usize::from(buffer[0] & 0x0f) * 4;
            buffer.get(header..len).unwrap_or_default()
        } else {
            &buffer[..len]
        };
        match probe.answer(from, segment) {
            Answer::Accepted => {
                // Best effort: the backend's half-open connection times out without it.
                if let Err(error) = send(backend, tunnel, &probe.rst()) {
                    tracing::debug!(%error, %backend, "the probe's RST was not sent");
                }
                return Ok(());
            }
            Answer::Refused => {
                return Err(format!("refused through the tunnel (RST from {vip})"));
            }
            Answer::Other => {}
        }
    }
}

/// The lb's address toward `backend`: the route's source (no packet is sent).
fn source_toward(backend: IpAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if backend.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(SocketAddr::new(backend, 9))?;
    Ok(socket.local_addr()?.ip())
}

/// `inner` (an IP packet) to `backend` in `tunnel`.
fn send(backend: IpAddr, tunnel: Tunnel, inner: &[u8]) -> io::Result<()> {
    match tunnel {
        Tunnel::Gue { port } => {
            let any: SocketAddr = if backend.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            let socket = UdpSocket::bind(any)?;
            socket.send_to(&gue_payload(backend, inner), SocketAddr::new(backend, port))?;
            Ok(())
        }
        Tunnel::Ipip => {
            let protocol = if inner.first().map(|b| b >> 4) == Some(4) {
                libc::IPPROTO_IPIP
            } else {
                libc::IPPROTO_IPV6
            };
            send_raw(backend, protocol, inner)
        }
    }
}

fn raw_socket(v4: bool, protocol: libc::c_int) -> io::Result<OwnedFd> {
    let family = if v4 { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `payload` to `to` through a fresh raw socket of `protocol` (`IPPROTO_IPIP` or
/// `IPPROTO_IPV6`): the kernel adds the outer header, so the calling thread's network
/// namespace sends a real tunnel.
pub fn send_raw(to: IpAddr, protocol: libc::c_int, payload: &[u8]) -> io::Result<()> {
    send_to(&raw_socket(to.is_ipv4(), protocol)?, to, payload)
}

fn send_to(socket: &OwnedFd, to: IpAddr, payload: &[u8]) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_storage; it is filled as the family's below.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a sockaddr_in fits in a sockaddr_storage, which is aligned for it.
            unsafe { (&raw mut addr).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for a sockaddr_in6.
            unsafe { (&raw mut addr).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: the buffer and the address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&raw const addr).cast(),
            len as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram from the raw socket within `wait`, and where it came from; `None` when the
/// wait ran out.
fn receive(
    socket: &OwnedFd,
    buffer: &mut [u8],
    wait: Duration,
) -> io::Result<Option<(IpAddr, usize)>> {
    let timeout = libc::timeval {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(wait.subsec_micros().max(1)),
    };
    // SAFETY: a valid timeval for SO_RCVTIMEO, of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of_val(&timeout) as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut from_len = size_of_val(&from) as libc::socklen_t;
    // SAFETY: the buffer and the address storage are valid for the lengths given.
    let len = unsafe {
        libc::recvfrom(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            0,
            (&raw mut from).cast(),
            &raw mut from_len,
        )
    };
    if len < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                Ok(None)
            }
            _ => Err(error),
        };
    }
    let source = if i32::from(from.ss_family) == libc::AF_INET {
        // SAFETY: the kernel wrote a sockaddr_in (its family says so).
        let v4 = unsafe { *(&raw const from).cast::<libc::sockaddr_in>() };
        IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes())
    } else {
        // SAFETY: the kernel wrote a sockaddr_in6.
        let v6 = unsafe { *(&raw const from).cast::<libc::sockaddr_in6>() };
        IpAddr::from(v6.sin6_addr.s6_addr)
    };
    Ok(Some((source, len as usize)))
}
