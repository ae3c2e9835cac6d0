//! Long-lived flows through the VIPs: TCP connections to the who server and UDP flows,
//! opened once from the client and asked again after every event. Each must answer, from
//! the backend that answered it first. A flow found broken (no answer, or another backend's)
//! is counted at that check and then closed: it is never asked again, so no later check
//! counts it a second time, and [`Flows::top_up`] opens new ones in its place when a
//! measurement wants every flow again.

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

/// One long-lived connection and the backend that answered it first.
struct Tcp {
    connection: WhoConnection,
    backend: String,
    /// The client's port: which flow a node's conntrack entry is.
    port: u16,
}

/// One UDP flow (a connected socket) and the backend that answered it first.
struct Udp {
    socket: UdpSocket,
    backend: String,
    port: u16,
}

pub(super) struct Flows {
    who: SocketAddr,
    udp_vip: SocketAddr,
    /// How many of each [`Flows::top_up`] keeps open.
    wanted_tcp: usize,
    wanted_udp: usize,
    tcp: Vec<Tcp>,
    udp: Vec<Udp>,
}

/// What one check found: the flows that broke or moved to another backend, by kind, out of
/// those asked.
pub(super) struct Broken {
    pub(super) tcp: usize,
    pub(super) udp: usize,
    pub(super) tcp_asked: usize,
    pub(super) udp_asked: usize,
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
        let mut opened = Self {
            who,
            udp_vip: udp,
            wanted_tcp: connections,
            wanted_udp: flows,
            tcp: Vec::new(),
            udp: Vec::new(),
        };
        opened.top_up(client)?;
        Ok(opened)
    }

    /// Opens new flows in place of those closed as broken, each asked once, until there are
    /// as many as first opened; how many connections and UDP flows it opened.
    pub(super) fn top_up(&mut self, client: &NetNs) -> Result<(usize, usize), Failure> {
        let (who, vip) = (self.who, self.udp_vip);
        let source = client_addr(vip.ip());
        let (tcp, udp) = (
            self.wanted_tcp.saturating_sub(self.tcp.len()),
            self.wanted_udp.saturating_sub(self.udp.len()),
        );
        let (mut connections, sockets) = client.enter(|| {
            let connections = (0..tcp)
                .map(|i| {
                    WhoConnection::open(who).map_err(|e| format!("connection {i} to {who}: {e}"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let sockets = (0..udp)
                .map(|i| {
                    UdpSocket::bind((source, 0))
                        .and_then(|socket| socket.connect(vip).map(|()| socket))
                        .map_err(|e| format!("UDP flow {i} to {vip}: {e}"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok::<_, String>((connections, sockets))
        })?;
        let tcp_answers = ask_tcp(connections.iter_mut());
        let udp_answers = ask_udp(sockets.iter());
        for (connection, answer) in connections.into_iter().zip(tcp_answers) {
            let port = connection.local_port();
            let backend = answer.map_err(|e| format!("the first ask of connection {port}: {e}"))?;
            self.tcp.push(Tcp {
                connection,
                backend,
                port,
            });
        }
        for (socket, answer) in sockets.into_iter().zip(udp_answers) {
            let port = socket
                .local_addr()
                .map_err(|e| Failure::new(format!("a UDP flow's port: {e}")))?
                .port();
            let backend = answer.map_err(|e| format!("the first ask of UDP flow {port}: {e}"))?;
            self.udp.push(Udp {
                socket,
                backend,
                port,
            });
        }
        Ok((tcp, udp))
    }

    pub(super) fn connections(&self) -> usize {
        self.tcp.len()
    }

    pub(super) fn udp_flows(&self) -> usize {
        self.udp.len()
    }

    /// The client's ports of the open connections and of the UDP flows.
    pub(super) fn tcp_ports(&self) -> Vec<u16> {
        self.tcp.iter().map(|flow| flow.port).collect()
    }

    pub(super) fn udp_ports(&self) -> Vec<u16> {
        self.udp.iter().map(|flow| flow.port).collect()
    }

    /// How the connections (or the UDP flows) spread over the backends: `5 on backend-1, ...`.
    pub(super) fn spread(&self, udp: bool) -> String {
        let backends: Vec<&str> = if udp {
            self.udp.iter().map(|flow| flow.backend.as_str()).collect()
        } else {
            self.tcp.iter().map(|flow| flow.backend.as_str()).collect()
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

    /// Asks every flow again: each must answer, from the backend it had. Those that do not
    /// are counted, then closed.
    pub(super) fn check(&mut self) -> Broken {
        let tcp_answers = ask_tcp(self.tcp.iter_mut().map(|flow| &mut flow.connection));
        let udp_answers = ask_udp(self.udp.iter().map(|flow| &flow.socket));
        let (tcp_asked, udp_asked) = (self.tcp.len(), self.udp.len());
        let mut named = Vec::new();
        let tcp_kept = kept(
            &tcp_answers,
            &self.tcp,
            |f| (&f.backend, f.port),
            "connection",
            &mut named,
        );
        let udp_kept = kept(
            &udp_answers,
            &self.udp,
            |f| (&f.backend, f.port),
            "UDP flow",
            &mut named,
        );
        retain_by(&mut self.tcp, &tcp_kept);
        retain_by(&mut self.udp, &udp_kept);
        Broken {
            tcp: tcp_asked - self.tcp.len(),
            udp: udp_asked - self.udp.len(),
            tcp_asked,
            udp_asked,
            named,
        }
    }
}

/// Whether each flow answered from the backend it had; the first few that did not are
/// named (`what` and the client's port) into `named`.
fn kept<F>(
    answers: &[Answer],
    flows: &[F],
    backend_and_port: impl Fn(&F) -> (&String, u16),
    what: &str,
    named: &mut Vec<String>,
) -> Vec<bool> {
    answers
        .iter()
        .zip(flows)
        .map(|(now, flow)| {
            let (then, port) = backend_and_port(flow);
            let problem = match now {
                Ok(backend) if backend == then => return true,
                Ok(backend) => format!("{what} from port {port} moved from {then} to {backend}"),
                Err(e) => format!("{what} from port {port} (on {then}): {e}"),
            };
            if named.len() < NAMED {
                named.push(problem);
            }
            false
        })
        .collect()
}

/// Keeps the items whose `keep` is true (dropping the others closes their sockets).
fn retain_by<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut index = 0;
    items.retain(|_| {
        let kept = keep.get(index).copied().unwrap_or(false);
        index += 1;
        kept
    });
}

/// Asks every connection at once, then reads the answers: a round of questions takes at
/// most [`ASK_TIMEOUT`], however many are broken.
fn ask_tcp<'a>(connections: impl Iterator<Item = &'a mut WhoConnection>) -> Vec<Answer> {
    let mut connections: Vec<&mut WhoConnection> = connections.collect();
    let sent: Vec<Result<(), String>> = connections
        .iter_mut()
        .map(|connection| connection.send_question())
        .collect();
    let deadline = Instant::now() + ASK_TIMEOUT;
    connections
        .into_iter()
        .zip(sent)
        .map(|(connection, sent)| sent.and_then(|()| connection.answer_by(deadline)))
        .collect()
}

/// The same for UDP flows.
fn ask_udp<'a>(sockets: impl Iterator<Item = &'a UdpSocket>) -> Vec<Answer> {
    let sockets: Vec<&UdpSocket> = sockets.collect();
    let sent: Vec<Result<(), String>> = sockets
        .iter()
        .map(|socket| {
            socket
                .send(b"who")
                .map(|_| ())
                .map_err(|e| format!("send: {e}"))
        })
        .collect();
    let deadline = Instant::now() + ASK_TIMEOUT;
    sockets
        .into_iter()
        .zip(sent)
        .map(|(socket, sent)| sent.and_then(|()| answer_by(socket, deadline)))
        .collect()
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
