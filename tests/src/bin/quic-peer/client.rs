//! `quic-peer client`: N connections, each on its own endpoint so that each rebinds on its
//! own; a request after the handshake and after every rebind. A connection dies at its
//! first failed or late request. Everything is bounded: the handshake and each request by
//! the timeout, a dead path by the idle timeout, the pause by [`PAUSE_LIMIT`].

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use quinn::{Connection, Endpoint, EndpointConfig, TokioRuntime};
use serde_json::json;

use crate::tls;

/// A connection that hears nothing from the server for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest answer read: a server's name.
const MAX_ANSWER: usize = 1024;
/// How long a connection waits for the pause file, and how often it looks.
const PAUSE_LIMIT: Duration = Duration::from_secs(20);
const PAUSE_POLL: Duration = Duration::from_millis(20);
/// How many error strings the report carries.
const ERRORS_REPORTED: usize = 5;
/// How long a closing connection may take to tell the server.
const CLOSE_LIMIT: Duration = Duration::from_millis(500);

pub(crate) struct Plan {
    pub(crate) connect: SocketAddr,
    pub(crate) connections: usize,
    pub(crate) rebinds: usize,
    pub(crate) bind_ip: IpAddr,
    pub(crate) timeout: Duration,
    pub(crate) pause_file: Option<PathBuf>,
}

/// What one connection did.
#[derive(Default)]
struct Outcome {
    /// The name that answered each request, in order.
    served_by: Vec<String>,
    rebinds_done: usize,
    error: Option<String>,
}

/// Runs the plan; errors only on setup (the TLS configuration, the first sockets). The
/// report: `{"connections","died","rebinds_done","served_by":{name: requests},"errors"}`.
pub(crate) async fn run(plan: Plan) -> anyhow::Result<serde_json::Value> {
    let config = tls::client_config(IDLE_TIMEOUT)?;
    let mut endpoints = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        let socket = bind(plan.bind_ip)?;
        let mut endpoint = Endpoint::new(
            EndpointConfig::default(),
            None,
            socket,
            Arc::new(TokioRuntime),
        )
        .context("a client endpoint")?;
        endpoint.set_default_client_config(config.clone());
        endpoints.push(endpoint);
    }
    let pause = plan.pause_file.clone().map(|file| {
        Arc::new(Pause {
            file,
            connections: plan.connections,
            arrived: AtomicUsize::new(0),
        })
    });
    let plan = Arc::new(plan);
    let tasks: Vec<_> = endpoints
        .into_iter()
        .enumerate()
        .map(|(index, endpoint)| {
            tokio::spawn(connection(
                index,
                endpoint,
                Arc::clone(&plan),
                pause.clone(),
            ))
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.context("a connection's task panicked")?);
    }
    Ok(report(&outcomes))
}

fn report(outcomes: &[Outcome]) -> serde_json::Value {
    let mut served_by = BTreeMap::<&str, usize>::new();
    for name in outcomes.iter().flat_map(|o| &o.served_by) {
        *served_by.entry(name).or_default() += 1;
    }
    let errors: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.error.as_deref())
        .take(ERRORS_REPORTED)
        .collect();
    json!({
        "connections": outcomes.len(),
        "died": outcomes.iter().filter(|o| o.error.is_some()).count(),
        "rebinds_done": outcomes.iter().map(|o| o.rebinds_done).sum::<usize>(),
        "served_by": served_by,
        "errors": errors,
    })
}

async fn connection(
    index: usize,
    endpoint: Endpoint,
    plan: Arc<Plan>,
    pause: Option<Arc<Pause>>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut paused = false;
    let result = drive(
        &endpoint,
        &plan,
        pause.as_deref(),
        &mut outcome,
        &mut paused,
    )
    .await;
    if let Some(pause) = pause.filter(|_| !paused) {
        // A connection that died before the pause point must not hold up "paused".
        pause.arrive();
    }
    outcome.error = result
        .err()
        .map(|err| format!("connection {index}: {err:#}"));
    endpoint.close(0u32.into(), b"done");
    // Best effort: a drained backend never acknowledges the close.
    tokio::time::timeout(CLOSE_LIMIT, endpoint.wait_idle())
        .await
        .unwrap_or_default();
    outcome
}

async fn drive(
    endpoint: &Endpoint,
    plan: &Plan,
    pause: Option<&Pause>,
    outcome: &mut Outcome,
    paused: &mut bool,
) -> anyhow::Result<()> {
    let connecting = endpoint
        .connect(plan.connect, tls::SERVER_NAME)
        .context("connecting")?;
    let connection = tokio::time::timeout(plan.timeout, connecting)
        .await
        .map_err(|_| anyhow!("no handshake in {:?}", plan.timeout))?
        .context("handshake")?;
    let pause_after = plan.rebinds / 2;
    loop {
        let answer = request(&connection, plan.timeout, outcome.rebinds_done).await?;
        outcome.served_by.push(answer);
        if let Some(pause) = pause.filter(|_| outcome.rebinds_done == pause_after) {
            *paused = true;
            pause.arrive();
            pause.wait().await?;
        }
        if outcome.rebinds_done == plan.rebinds {
            return Ok(());
        }
        let socket = bind(plan.bind_ip)?;
        endpoint.rebind(socket).context("rebinding")?;
        outcome.rebinds_done += 1;
    }
}

/// One request on a new bidirectional stream; the answer is the server's name.
async fn request(
    connection: &Connection,
    timeout: Duration,
    after_rebinds: usize,
) -> anyhow::Result<String> {
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await.context("opening a stream")?;
        send.write_all(format!("after {after_rebinds} rebinds").as_bytes())
            .await
            .context("sending")?;
        send.finish().context("finishing the request")?;
        let answer = recv
            .read_to_end(MAX_ANSWER)
            .await
            .context("reading the answer")?;
        String::from_utf8(answer).context("the answer is not UTF-8")
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("request after {after_rebinds} rebinds: no answer in {timeout:?}"))?
        .with_context(|| format!("request after {after_rebinds} rebinds"))
}

/// A new socket on `ip` with a port of the kernel's choosing.
fn bind(ip: IpAddr) -> anyhow::Result<UdpSocket> {
    UdpSocket::bind((ip, 0)).with_context(|| format!("binding a UDP socket on {ip}"))
}

/// The pause point that all connections reach before the test acts (drains a backend).
struct Pause {
    file: PathBuf,
    connections: usize,
    arrived: AtomicUsize,
}

impl Pause {
    /// The last connection to arrive (or to die before it) prints "paused".
    fn arrive(&self) {
        if self.arrived.fetch_add(1, Ordering::SeqCst) + 1 == self.connections {
            println!("paused");
            if let Err(err) = std::io::stdout().flush() {
                eprintln!("writing \"paused\": {err}");
            }
        }
    }

    /// Until the file exists, at most [`PAUSE_LIMIT`].
    async fn wait(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PAUSE_LIMIT;
        while !self.file.exists() {
            if tokio::time::Instant::now() >= deadline {
                return Err(anyhow!(
                    "{} did not appear in {PAUSE_LIMIT:?}",
                    self.file.display()
                ));
            }
            tokio::time::sleep(PAUSE_POLL).await;
        }
        Ok(())
    }
}
