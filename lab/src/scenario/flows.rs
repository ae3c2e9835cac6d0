//! Long-lived flows through the VIPs: TCP connections to the who server and UDP flows,
//! opened once from the client and asked again after every event. Each must answer, from
//! the backend that answered it first.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use crate::{client::WhoConnection, cluster::client_addr, lb::Failure, netns::NetNs};

/// How long the answers to one round of questions may take, all flows together.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this many broken flows are named in a check's details.
const NAMED: usize = 5;

/// The backend that answered, or why none did.
type Answer = Result<String, String>;

pub(super) struct Flows {
    tcp: Vec<WhoConnection>,
    udp: Vec<UdpSocket>,
    /// The backend each answered first.
    tcp_backends: Vec<String>,
    udp_backends: Vec<String>,
    /// The client's port of each: which flow a node's conntrack entry is.
    pub(super) tcp_ports: Vec<u16>,
    pub(super) udp_ports: Vec<u16>,
}

/// What one check found: the flows that broke or moved to another backend, by kind.
pub(super) struct Broken {
    pub(super) tcp: usize,
    pub(super) udp: usize,
    /// The first few of them, with what happened.
    pub(super) named: Vec<String>,
}

impl Flows {
    /// `connections` connections to `who` and `flows` UDP flows to `udp` from `client`,
    /// each asked once.
    pub(super) fn open(
        client: &NetNs,
        who: SocketAddr,
        udp: SocketAddr,
        connections: usize,
        flows: usize,
    ) -> Result<Self, Failure> {
        let source = client_addr(who.ip());
        let (tcp, sockets) = client.enter(|| {
            let tcp = (0..connections)
                .map(|i| {
                    WhoConnection::open(who).map_err(|e| format!("connection {i} to {who}: {e}"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let sockets = (0..flows)
                .map(|i| {
                    let socket = UdpSocket::bind((source, 0))
                        .and_then(|socket| socket.connect(udp).map(|()| socket))
                        .map_err(|e| format!("UDP flow {i} to {udp}: {e}"))?;
                    Ok(socket)
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok::<_, String>((tcp, sockets))
        })?;
        let udp_ports = sockets
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::new(format!("a UDP flow's port: {e}")))?;
        let mut opened = Self {
            tcp_ports: tcp.iter().map(WhoConnection::local_port).collect(),
            udp_ports,
            tcp,
            udp: sockets,
            tcp_backends: Vec::new(),
            udp_backends: Vec::new(),
        };
        let (tcp, udp) = opened.ask_all();
        let first = |answers: Vec<Answer>, what: &str| {
            answers
                .into_iter()
                .enumerate()
                .map(|(i, answer)| answer.map_err(|e| format!("the first ask of {what} {i}: {e}")))
                .collect::<Result<Vec<_>, String>>()
        };
        opened.tcp_backends = first(tcp, "connection")?;
        opened.udp_backends = first(udp, "UDP flow")?;
        Ok(opened)
    }

    pub(super) fn connections(&self) -> usize {
        self.tcp.len()
    }

    pub(super) fn udp_flows(&self) -> usize {
        self.udp.len()
    }

    /// How the connections (or the UDP flows) spread over the backends: `5 on backend-1, ...`.
    pub(super) fn spread(&self, udp: bool) -> String {
        let backends = if udp {
            &self.udp_backends
        } else {
            &self.tcp_backends
        };
        let mut by_backend = BTreeMap::<&str, usize>::new();
        for backend in backends {
            *by_backend.entry(backend).or_default() += 1;
        }
        by_backend
            .iter()
            .map(|(backend, n)| format!("{n} on {backend}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Asks every flow at once, then reads the answers: a round of questions takes at most
    /// [`ASK_TIMEOUT`], however many flows are broken.
    fn ask_all(&mut self) -> (Vec<Answer>, Vec<Answer>) {
        let sent_tcp: Vec<Result<(), String>> = self
            .tcp
            .iter_mut()
            .map(WhoConnection::send_question)
            .collect();
        let sent_udp: Vec<Result<(), String>> = self
            .udp
            .iter()
            .map(|socket| {
                socket
                    .send(b"who")
                    .map(|_| ())
                    .map_err(|e| format!("send: {e}"))
            })
            .collect();
        let deadline = Instant::now() + ASK_TIMEOUT;
        let tcp = self
            .tcp
            .iter_mut()
            .zip(sent_tcp)
            .map(|(connection, sent)| sent.and_then(|()| connection.answer_by(deadline)))
            .collect();
        let udp = self
            .udp
            .iter()
            .zip(sent_udp)
            .map(|(socket, sent)| sent.and_then(|()| answer_by(socket, deadline)))
            .collect();
        (tcp, udp)
    }

    /// Asks every flow again: each must answer, from the backend it had.
    pub(super) fn check(&mut self) -> Broken {
        let (tcp, udp) = self.ask_all();
        let mut named = Vec::new();
        let mut broken = |answers: &[Answer], first: &[String], what: &str| -> usize {
            let mut count = 0;
            for (i, (now, then)) in answers.iter().zip(first).enumerate() {
                let problem = match now {
                    Ok(backend) if backend == then => continue,
                    Ok(backend) => format!("{what} #{i} moved from {then} to {backend}"),
                    Err(e) => format!("{what} #{i} (on {then}): {e}"),
                };
                count += 1;
                if named.len() < NAMED {
                    named.push(problem);
                }
            }
            count
        };
        let tcp = broken(&tcp, &self.tcp_backends, "connection");
        let udp = broken(&udp, &self.udp_backends, "UDP flow");
        Broken { tcp, udp, named }
    }
}

/// The answer on `socket` to the question sent last, waited for until `deadline` at most.
fn answer_by(socket: &UdpSocket, deadline: Instant) -> Answer {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    socket
        .set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    let mut buffer = [0u8; 256];
    let n = socket.recv(&mut buffer).map_err(|e| format!("recv: {e}"))?;
    Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
}
