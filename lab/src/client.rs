//! Bounded clients: every call has a timeout, every error is returned, never retried.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// One HTTP/1.0 GET through `vip`; returns the answering backend's name.
pub fn http_get(vip: SocketAddr) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&vip, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    if stream.peer_addr().ok() != Some(vip) {
        return Err("the connection is not to the VIP".to_owned());
    }
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    answer_body(&mut stream)
}

/// The body of a `200 OK` answer read to the end of the connection, trimmed.
fn answer_body(stream: &mut TcpStream) -> Result<String, String> {
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    if !response.starts_with("HTTP/1.0 200 OK") {
        return Err(format!("bad response {response:?}"));
    }
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(body.trim().to_owned())
}

/// One HTTP/1.0 POST of `size` bytes through `vip`, within `limit`; returns the answer
/// (`<backend> <bytes received>`).
pub fn http_upload(vip: SocketAddr, size: usize, limit: Duration) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&vip, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(limit))
        .and_then(|()| stream.set_write_timeout(Some(limit)))
        .map_err(|e| e.to_string())?;
    let header = format!("POST /upload HTTP/1.0\r\nHost: vip\r\nContent-Length: {size}\r\n\r\n");
    stream
        .write_all(header.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let chunk = [b'x'; 16 * 1024];
    let mut sent = 0;
    while sent < size {
        let n = chunk.len().min(size - sent);
        stream
            .write_all(&chunk[..n])
            .map_err(|e| format!("send after {sent} bytes: {e}"))?;
        sent += n;
    }
    answer_body(&mut stream)
}

/// One UDP request from `bind` to `vip`; returns the answering backend's name.
pub fn udp_request(bind: SocketAddr, vip: SocketAddr) -> Result<String, String> {
    ask_udp(bind, vip).map(|(answer, _)| answer)
}

/// One UDP request to `vip` from a fresh socket on `client` (a new source port, so a new
/// flow); returns the source port it used.
pub fn udp_request_from_new_port(client: IpAddr, vip: SocketAddr) -> Result<u16, String> {
    ask_udp(SocketAddr::new(client, 0), vip).map(|(_, port)| port)
}

/// The answer from the VIP and the local port it was asked from.
fn ask_udp(bind: SocketAddr, vip: SocketAddr) -> Result<(String, u16), String> {
    let socket = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    socket
        .send_to(b"ping", vip)
        .map_err(|e| format!("send: {e}"))?;
    let mut buffer = [0u8; 512];
    let (n, from) = socket
        .recv_from(&mut buffer)
        .map_err(|e| format!("recv: {e}"))?;
    if from != vip {
        return Err(format!("answer came from {from}, not the VIP {vip}"));
    }
    let port = socket.local_addr().map_err(|e| e.to_string())?.port();
    Ok((String::from_utf8_lossy(&buffer[..n]).into_owned(), port))
}

/// A long-lived connection to the `who` server behind a VIP.
pub struct WhoConnection {
    reader: BufReader<TcpStream>,
}

impl WhoConnection {
    pub fn open(vip: SocketAddr) -> Result<Self, String> {
        let stream =
            TcpStream::connect_timeout(&vip, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// The client's port: which flow this is.
    pub fn local_port(&self) -> u16 {
        self.reader
            .get_ref()
            .local_addr()
            .map_or(0, |addr| addr.port())
    }

    /// Asks which backend holds this connection.
    pub fn ask(&mut self) -> Result<String, String> {
        self.send_question()?;
        self.answer_by(Instant::now() + IO_TIMEOUT)
    }

    /// Asks without waiting for the answer ([`WhoConnection::answer_by`] reads it): many
    /// connections asked at once wait for their answers together.
    pub fn send_question(&mut self) -> Result<(), String> {
        self.reader
            .get_mut()
            .write_all(b"who\n")
            .map_err(|e| format!("send: {e}"))
    }

    /// The answer to the question sent last, waited for until `deadline` at most.
    pub fn answer_by(&mut self, deadline: Instant) -> Result<String, String> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("closed".to_owned()),
            Ok(_) => Ok(line.trim().to_owned()),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

/// `count` long-lived connections through `vip` (run it inside the client's namespace),
/// each with the backend that answered its first question; panics past `budget`.
pub fn open_who_connections(
    vip: SocketAddr,
    count: usize,
    budget: Duration,
) -> (Vec<WhoConnection>, Vec<String>) {
    let started = Instant::now();
    (0..count)
        .map(|_| {
            assert!(
                started.elapsed() < budget,
                "connecting took over {budget:?}"
            );
            let mut connection = WhoConnection::open(vip).expect("connect through the VIP");
            let name = connection.ask().expect("a first answer");
            (connection, name)
        })
        .unzip()
}
