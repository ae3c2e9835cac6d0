//! Servers on every backend, each answering with the backend's name so a client can tell
//! where the lb sent it, and recording the peer address it saw:
//! - HTTP on 8080 (IPv4 and IPv6): one request per connection, body `<name>\n`;
//! - UDP on 5353 (IPv4 and IPv6): answers every datagram with `<name>`;
//! - TCP on 7000 (IPv4): answers every line with `<name>\n`, for long-lived connections;
//! - TCP on 9000 (IPv4): echoes every byte back, for streams.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::topology::Backend;

pub const HTTP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;
pub const WHO_PORT: u16 = 7000;
pub const ECHO_PORT: u16 = 9000;

/// How often idle server threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Peer addresses each backend saw, by backend name.
pub type Seen = Arc<Mutex<HashMap<String, Vec<IpAddr>>>>;

#[derive(Clone)]
struct Shared {
    stop: Arc<AtomicBool>,
    seen: Seen,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Shared {
    fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let handle = std::thread::spawn(f);
        if let Ok(mut threads) = self.threads.lock() {
            // A finished thread keeps its stack until joined or detached: dropping its
            // handle detaches it, so long runs (the soak) do not run out of memory.
            threads.retain(|thread| !thread.is_finished());
            threads.push(handle);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn record(&self, name: &str, peer: IpAddr) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.entry(name.to_owned()).or_default().push(peer);
        }
    }
}

pub struct Servers {
    shared: Shared,
}

impl Servers {
    pub fn start(backends: &[Backend]) -> Self {
        let shared = Shared {
            stop: Arc::new(AtomicBool::new(false)),
            seen: Arc::default(),
            threads: Arc::default(),
        };
        for backend in backends {
            let (v4, v6) = (IpAddr::from(backend.v4), IpAddr::from(backend.v6));
            let sockets = backend.ns.enter(|| {
                let tcp = |ip: IpAddr, port| TcpListener::bind((ip, port)).expect("bind tcp");
                let udp = |ip: IpAddr| UdpSocket::bind((ip, UDP_PORT)).expect("bind udp");
                (
                    [tcp(v4, HTTP_PORT), tcp(v6, HTTP_PORT)],
                    [udp(v4), udp(v6)],
                    tcp(v4, WHO_PORT),
                    tcp(v4, ECHO_PORT),
                )
            });
            let (http, udp, who, echo) = sockets;
            for listener in http {
                accept_loop(&shared, listener, &backend.name, serve_http);
            }
            accept_loop(&shared, who, &backend.name, serve_who);
            accept_loop(&shared, echo, &backend.name, serve_echo);
            for socket in udp {
                let (s, name) = (shared.clone(), backend.name.clone());
                socket.set_read_timeout(Some(POLL)).expect("timeout");
                shared.spawn(move || serve_udp(&socket, &name, &s));
            }
        }
        Self { shared }
    }

    /// HTTP, UDP and who servers on each of `vips` (ports [`HTTP_PORT`], [`UDP_PORT`],
    /// [`WHO_PORT`]) in every backend, as direct server return needs: the backend holds the VIPs, and its answers
    /// leave from them (a UDP socket bound to a wildcard would answer from the backend's
    /// own address). The VIPs must be on the backends already (`lb decap attach`).
    pub fn start_on_vips(backends: &[Backend], vips: &[IpAddr]) -> Self {
        let shared = Shared {
            stop: Arc::new(AtomicBool::new(false)),
            seen: Arc::default(),
            threads: Arc::default(),
        };
        for backend in backends {
            let sockets = backend.ns.enter(|| {
                vips.iter()
                    .map(|vip| {
                        (
                            TcpListener::bind((*vip, HTTP_PORT)).expect("bind tcp on the VIP"),
                            UdpSocket::bind((*vip, UDP_PORT)).expect("bind udp on the VIP"),
                            TcpListener::bind((*vip, WHO_PORT)).expect("bind who on the VIP"),
                        )
                    })
                    .collect::<Vec<_>>()
            });
            for (http, udp, who) in sockets {
                accept_loop(&shared, http, &backend.name, serve_http);
                accept_loop(&shared, who, &backend.name, serve_who);
                let (s, name) = (shared.clone(), backend.name.clone());
                udp.set_read_timeout(Some(POLL)).expect("timeout");
                shared.spawn(move || serve_udp(&udp, &name, &s));
            }
        }
        Self { shared }
    }

    /// Takes what the backends saw since the last call.
    pub fn take_seen(&self) -> HashMap<String, Vec<IpAddr>> {
        self.shared
            .seen
            .lock()
            .map(|mut seen| std::mem::take(&mut *seen))
            .unwrap_or_default()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        loop {
            let batch: Vec<JoinHandle<()>> = match self.shared.threads.lock() {
                Ok(mut threads) => threads.drain(..).collect(),
                Err(_) => return,
            };
            if batch.is_empty() {
                return;
            }
            for thread in batch {
                crate::cleanup::join(thread, "joining a lab server thread");
            }
        }
    }
}

type Handler = fn(TcpStream, &str, &Shared);

fn accept_loop(shared: &Shared, listener: TcpListener, name: &str, handler: Handler) {
    listener.set_nonblocking(true).expect("nonblocking");
    let (s, name) = (shared.clone(), name.to_owned());
    shared.spawn(move || {
        while !s.stopped() {
            match listener.accept() {
                Ok((stream, peer)) => {
                    s.record(&name, peer.ip());
                    let blocking = stream.set_nonblocking(false);
                    if let Err(err) = blocking.and_then(|()| stream.set_read_timeout(Some(POLL))) {
                        eprintln!("lab server {name}: a connection from {peer}: {err}");
                        continue;
                    }
                    let (conn_shared, conn_name) = (s.clone(), name.clone());
                    s.spawn(move || handler(stream, &conn_name, &conn_shared));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
}

/// Reads until `done` says the buffer is complete; false if the peer left or we stop.
fn read_until(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    shared: &Shared,
    done: impl Fn(&[u8]) -> bool,
) -> bool {
    let mut chunk = [0u8; 4096];
    while !done(buffer) {
        match stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) && !shared.stopped() => {}
            Err(_) => return false,
        }
    }
    true
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Uploads larger than this are cut off (the lab sends at most a few MB).
const MAX_UPLOAD: usize = 16 << 20;

fn serve_http(mut stream: TcpStream, name: &str, shared: &Shared) {
    let mut request = Vec::new();
    let complete = |b: &[u8]| header_end(b).is_some() || b.len() > 8192;
    if !read_until(&mut stream, &mut request, shared, complete) {
        return;
    }
    // A body (an upload) is read in full, and its size said in the answer.
    let end = header_end(&request).unwrap_or(request.len());
    let length = content_length(&request[..end]).min(MAX_UPLOAD);
    if length > 0
        && !read_until(&mut stream, &mut request, shared, |b| {
            b.len() >= end + length
        })
    {
        return;
    }
    let body = if length > 0 {
        format!("{name} {length}\n")
    } else {
        format!("{name}\n")
    };
    // A client that left before the answer is its own test's failure, seen there.
    write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap_or_default();
}

/// Where the headers end (after the blank line).
fn header_end(request: &[u8]) -> Option<usize> {
    request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

fn content_length(headers: &[u8]) -> usize {
    String::from_utf8_lossy(headers)
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

fn serve_who(stream: TcpStream, name: &str, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                line.clear();
                if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) && !shared.stopped() => {}
            Err(_) => return,
        }
    }
}

fn serve_echo(mut stream: TcpStream, _name: &str, shared: &Shared) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&chunk[..n]).is_err() {
                    return;
                }
            }
            Err(e) if is_timeout(&e) && !shared.stopped() => {}
            Err(_) => return,
        }
    }
}

fn serve_udp(socket: &UdpSocket, name: &str, shared: &Shared) {
    let mut buffer = [0u8; 1500];
    while !shared.stopped() {
        if let Ok((_, peer)) = socket.recv_from(&mut buffer) {
            shared.record(name, peer.ip());
            // As for TCP: a lost answer is the client's test failure.
            socket.send_to(name.as_bytes(), peer).unwrap_or_default();
        }
    }
}
