//! `lb` itself in a lab: a node's daemon and CLI, and a backend's `lb decap`, each with its
//! own pins, socket and files, run in their namespaces with `nsenter` (which keeps the
//! host's bpffs, where `ip netns exec` would remount /sys and hide the pins). A daemon is
//! ready when it says `READY=1` on a notify socket of ours, as systemd's `Type=notify`
//! waits for it. Whatever they leave is removed on drop: `lb down`, `lb decap detach`, the
//! daemon killed; a cleanup that fails says so on stderr.

use std::{
    collections::HashSet,
    fmt,
    io::{BufRead as _, BufReader, ErrorKind},
    net::SocketAddr,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use crate::topology::Backend;

/// Why a step in a lab could not be done, for a person to read.
#[derive(Clone, PartialEq, Eq)]
pub struct Failure(String);

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The message as it is, so that a test's `expect` shows its lines, not an escaped string.
impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self(message)
    }
}

/// `program` in the network namespace at `netns`.
pub fn in_netns(netns: &Path, program: &Path) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program);
    command
}

/// Runs `command` to its end: its stdout, or a failure naming `what` with its stderr.
pub fn stdout_of(command: &mut Command, what: &str) -> Result<String, Failure> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Failure::new(format!("running `{what}`: {e}")))?;
    if !output.status.success() {
        return Err(Failure::new(format!(
            "`{what}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// How long `lb run` may take to say READY=1: a cold start loads and verifies five programs
/// (several seconds each on a 2-CPU machine), and a cluster starts several daemons at once.
pub const STARTUP: Duration = Duration::from_secs(45);
/// How long a daemon may take to exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// A running `lb run`, killed (SIGKILL) and reaped on drop.
struct Daemon {
    child: Child,
    /// The socket `$NOTIFY_SOCKET` names.
    notify: UnixDatagram,
    /// Its stdout, line by line (read by a thread until it exits: a full pipe would block it).
    stdout: Receiver<String>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `command` (an `lb run`) with its stderr into `log` and `$NOTIFY_SOCKET`
    /// naming a socket bound at `notify`.
    fn spawn(mut command: Command, notify: &Path, log: &Path) -> Result<Self, Failure> {
        remove_file_if_any(notify)?;
        let socket = UnixDatagram::bind(notify)
            .map_err(|e| Failure::new(format!("binding {}: {e}", notify.display())))?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|e| Failure::new(format!("a timeout on {}: {e}", notify.display())))?;
        let log_file = std::fs::File::create(log)
            .map_err(|e| Failure::new(format!("creating {}: {e}", log.display())))?;
        let mut child = command
            .env("NOTIFY_SOCKET", notify)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| Failure::new(format!("starting lb run: {e}")))?;
        let Some(stdout) = child.stdout.take() else {
            return Err(Failure::new("lb run has no stdout pipe"));
        };
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    // The daemon's handle is gone, and the daemon with it.
                    break;
                }
            }
        });
        Ok(Self {
            child,
            notify: socket,
            stdout: received,
            log: log.to_owned(),
        })
    }

    /// Waits, at most `limit`, for READY=1 (sent once the datapath is attached and the API
    /// socket bound); the line lb printed when it started forwarding.
    fn wait_ready(&mut self, limit: Duration) -> Result<String, Failure> {
        let started = Instant::now();
        let mut buffer = [0u8; 4096];
        let mut said = Vec::new();
        loop {
            match self.notify.recv(&mut buffer) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                    if message.lines().any(|line| line == "READY=1") {
                        break;
                    }
                    said.push(message);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(Failure::new(format!("reading the notify socket: {e}"))),
            }
            let exited = self
                .child
                .try_wait()
                .map_err(|e| Failure::new(format!("waiting for lb run: {e}")))?;
            if let Some(status) = exited {
                return Err(self.not_ready(&format!("exited ({status}) before READY=1"), &said));
            }
            if started.elapsed() >= limit {
                return Err(self.not_ready(&format!("sent no READY=1 within {limit:?}"), &said));
            }
        }
        // Printed before READY=1 is sent: in the pipe already, or about to be.
        let first = self
            .stdout
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_default();
        Ok(first)
    }

    fn not_ready(&self, what: &str, notifications: &[String]) -> Failure {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        Failure::new(format!(
            "lb run (pid {}) {what}; notifications {notifications:?}; the end of its log ({}):\n{}",
            self.child.id(),
            self.log.display(),
            tail.join("\n")
        ))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap, unless it exited already.
    fn kill(&mut self) -> Result<(), Failure> {
        let pid = self.pid();
        let failed = |e: std::io::Error| Failure::new(format!("killing lb run (pid {pid}): {e}"));
        if self.child.try_wait().map_err(failed)?.is_none() {
            self.child.kill().map_err(failed)?;
        }
        self.child.wait().map_err(failed)?;
        Ok(())
    }

    /// SIGTERM, then waits (at most [`STOP_LIMIT`]) for the daemon to exit; its status.
    fn terminate(&mut self) -> Result<ExitStatus, Failure> {
        let pid = self.pid();
        let raw = libc::pid_t::try_from(pid)
            .map_err(|_| Failure::new(format!("pid {pid} out of range")))?;
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        if unsafe { libc::kill(raw, libc::SIGTERM) } != 0 {
            return Err(Failure::new(format!(
                "SIGTERM to lb run (pid {pid}): {}",
                std::io::Error::last_os_error()
            )));
        }
        self.wait_exit("SIGTERM")
    }

    /// Waits (at most [`STOP_LIMIT`]) for the daemon to exit after `what` told it to; its
    /// status.
    fn wait_exit(&mut self, what: &str) -> Result<ExitStatus, Failure> {
        let pid = self.pid();
        let started = Instant::now();
        loop {
            let exited = self
                .child
                .try_wait()
                .map_err(|e| Failure::new(format!("waiting for lb run (pid {pid}): {e}")))?;
            if let Some(status) = exited {
                return Ok(status);
            }
            if started.elapsed() >= STOP_LIMIT {
                return Err(Failure::new(format!(
                    "lb run (pid {pid}) still runs {STOP_LIMIT:?} after {what}"
                )));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("cleanup: {e}");
        }
    }
}

fn remove_file_if_any(path: &Path) -> Result<(), Failure> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(Failure::new(format!("removing {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

fn remove_dir_if_any(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            eprintln!("cleanup: removing {}: {e}", path.display());
        }
        _ => {}
    }
}

/// One lb node: its API socket, pins, state file and log, and its daemon while it runs.
/// Dropping it runs `lb down` in its namespace (through the daemon if it still runs, else
/// on the pins: without a daemon, `lb down` withdraws the announce routes through the
/// datapath's interfaces, which only that namespace has), then kills the daemon. The
/// namespace must still exist then.
pub struct LbNode {
    /// `node<i>`.
    pub name: String,
    lb: PathBuf,
    netns: PathBuf,
    /// The interface it attaches to.
    pub iface: String,
    pub api: PathBuf,
    pub pin_dir: PathBuf,
    pub state: PathBuf,
    /// The daemon's stderr.
    pub log: PathBuf,
    daemon: Option<Daemon>,
    /// `lb down` ran: nothing left to clean up.
    down: bool,
}

impl LbNode {
    /// Node `name` in the namespace at `netns`, attaching to `iface`; its socket, state
    /// file and log in `dir`, its pins in `pin_dir` (bpffs refuses dots in names).
    pub fn new(
        lb: &Path,
        name: &str,
        netns: PathBuf,
        iface: &str,
        dir: &Path,
        pin_dir: PathBuf,
    ) -> Self {
        Self {
            name: name.to_owned(),
            lb: lb.to_owned(),
            netns,
            iface: iface.to_owned(),
            api: dir.join(format!("{name}.sock")),
            pin_dir,
            state: dir.join(format!("{name}-state.toml")),
            log: dir.join(format!("{name}-lb.log")),
            daemon: None,
            down: false,
        }
    }

    /// `lb --api <socket>` in the node's namespace.
    pub fn command(&self) -> Command {
        let mut command = in_netns(&self.netns, &self.lb);
        command.arg("--api").arg(&self.api);
        command
    }

    /// The arguments of this node's `lb run` after `lb --api <socket>`, then `extra`.
    pub fn run_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--iface",
            &self.iface,
            "--pin-dir",
            &self.pin_dir.display().to_string(),
            "--state",
            &self.state.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    }

    /// Starts `lb run` with `extra` arguments; see [`LbNode::wait_ready`].
    pub fn spawn(&mut self, extra: &[&str]) -> Result<(), Failure> {
        if self.daemon.is_some() {
            return Err(Failure::new(format!("{}'s daemon runs already", self.name)));
        }
        let mut command = self.command();
        command.args(self.run_args(extra));
        let notify = self.api.with_extension("notify");
        self.daemon = Some(Daemon::spawn(command, &notify, &self.log)?);
        self.down = false;
        Ok(())
    }

    /// Waits for the daemon's READY=1, at most [`STARTUP`]; the line it printed when it
    /// started forwarding.
    pub fn wait_ready(&mut self) -> Result<String, Failure> {
        let name = self.name.clone();
        self.daemon
            .as_mut()
            .ok_or_else(|| Failure::new(format!("{name} has no daemon to wait for")))?
            .wait_ready(STARTUP)
            .map_err(|e| Failure::new(format!("{name}: {e}")))
    }

    /// Whether its daemon runs and `lb down` has not run.
    pub fn serving(&self) -> bool {
        self.daemon.is_some() && !self.down
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    /// Kills the daemon with SIGKILL (no withdraw, no cleanup: a crash); its pid.
    pub fn crash(&mut self) -> Result<Option<u32>, Failure> {
        let Some(mut daemon) = self.daemon.take() else {
            return Ok(None);
        };
        daemon.kill()?;
        Ok(Some(daemon.pid()))
    }

    /// Stops the daemon with SIGTERM (it leaves its datapath forwarding); its exit status.
    pub fn terminate(&mut self) -> Result<ExitStatus, Failure> {
        let name = self.name.clone();
        self.daemon
            .take()
            .ok_or_else(|| Failure::new(format!("{name} has no daemon to stop")))?
            .terminate()
    }

    /// Waits for the daemon to exit after `lb down` through it (which stops it), so that
    /// another can start; its exit status.
    pub fn wait_stopped(&mut self) -> Result<ExitStatus, Failure> {
        let name = self.name.clone();
        self.daemon
            .take()
            .ok_or_else(|| Failure::new(format!("{name} has no daemon to wait for")))?
            .wait_exit("`lb down`")
    }

    /// `lb <args>` against this node's daemon, in its namespace: its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, Failure> {
        let what = format!("lb {} on {}", args.join(" "), self.name);
        stdout_of(self.command().args(args), &what)
    }

    /// `lb <args>` (a `--json` one), parsed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value, Failure> {
        let text = self.cli(args)?;
        serde_json::from_str(&text).map_err(|e| {
            Failure::new(format!(
                "`lb {}` on {} is not JSON ({e}): {text}",
                args.join(" "),
                self.name
            ))
        })
    }

    /// `lb down --pin-dir <pins>` (through the daemon if it runs, else on the pins): what
    /// it printed.
    pub fn down(&mut self) -> Result<String, Failure> {
        let pins = self.pin_dir.display().to_string();
        let said = self.cli(&["down", "--pin-dir", &pins])?;
        self.down = true;
        Ok(said)
    }

    /// The entry of `vip` (`proto`) in `lb vip list --json`.
    pub fn vip_entry(&self, vip: SocketAddr, proto: &str) -> Result<serde_json::Value, Failure> {
        let list = self.json(&["vip", "list", "--json"])?;
        list.as_array()
            .and_then(|vips| {
                vips.iter()
                    .find(|v| v["vip"] == vip.to_string() && v["proto"] == proto)
            })
            .cloned()
            .ok_or_else(|| Failure::new(format!("{}: {vip}/{proto} not listed: {list}", self.name)))
    }

    /// A number of `vip`'s entry in `lb vip list --json` (`new_flows`, `packets`).
    pub fn vip_count(&self, vip: SocketAddr, proto: &str, field: &str) -> Result<u64, Failure> {
        let entry = self.vip_entry(vip, proto)?;
        entry[field].as_u64().ok_or_else(|| {
            Failure::new(format!(
                "{}: {vip}/{proto} has no {field}: {entry}",
                self.name
            ))
        })
    }

    /// The Maglev table fingerprint of `vip` (`proto`).
    pub fn fingerprint(&self, vip: SocketAddr, proto: &str) -> Result<String, Failure> {
        let entry = self.vip_entry(vip, proto)?;
        entry["table_fingerprint"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                Failure::new(format!(
                    "{}: {vip}/{proto} has no fingerprint: {entry}",
                    self.name
                ))
            })
    }

    /// The packets of global counter `name` in `lb stats --json`. A counter the daemon does
    /// not report is a failure, not a 0: a renamed counter must not read as nothing counted.
    pub fn counter(&self, name: &str) -> Result<u64, Failure> {
        let stats = self.json(&["stats", "--json"])?;
        stats["counters"][name]["packets"].as_u64().ok_or_else(|| {
            Failure::new(format!(
                "{}: `lb stats --json` has no counter {name}: {stats}",
                self.name
            ))
        })
    }

    /// `node` of `lb status --json`: drained, announced addresses, each VIP's reason.
    pub fn node_report(&self) -> Result<serde_json::Value, Failure> {
        Ok(self.json(&["status", "--json"])?["node"].clone())
    }

    /// Of `ports` (clients' ports of flows to `vip`), how many this node tracks.
    pub fn tracks(&self, vip: SocketAddr, ports: &[u16]) -> Result<usize, Failure> {
        let tracked = self.tracked(Some(vip))?;
        Ok(ports
            .iter()
            .filter(|port| tracked.contains(&(vip, **port)))
            .count())
    }

    /// Every flow this node tracks (of `vip` only, or of every VIP with `None`), as its VIP
    /// and its client's port: one `lb conntrack list`.
    pub fn tracked(&self, vip: Option<SocketAddr>) -> Result<HashSet<(SocketAddr, u16)>, Failure> {
        let vip_arg = vip.map(|vip| vip.to_string());
        let mut args = vec!["conntrack", "list"];
        args.extend(vip_arg.as_deref());
        args.extend(["--limit", "100000", "--json"]);
        let list = self.json(&args)?;
        let flows = list["flows"].as_array().ok_or_else(|| {
            Failure::new(format!(
                "{}: `lb conntrack list` has no flows: {list}",
                self.name
            ))
        })?;
        let address = |flow: &serde_json::Value, field: &str| {
            flow[field].as_str()?.parse::<SocketAddr>().ok()
        };
        Ok(flows
            .iter()
            .filter_map(|flow| Some((address(flow, "vip")?, address(flow, "client")?.port())))
            .collect())
    }
}

impl Drop for LbNode {
    fn drop(&mut self) {
        if !self.down {
            if let Err(e) = self.down() {
                eprintln!("cleanup: {e}");
            }
        }
        // The daemon (if any) is killed as it drops.
        self.daemon = None;
        remove_dir_if_any(&self.pin_dir);
    }
}

/// `lb decap` on one backend, with its own pins and record (each backend stands for a
/// host); dropping it detaches what is left, so that the backend is left as it was.
pub struct Decap {
    lb: PathBuf,
    netns: PathBuf,
    /// The backend's name.
    pub name: String,
    pin_dir: PathBuf,
    record: PathBuf,
}

impl Decap {
    /// For `backend`, with pins in `pin_dir` and the record in `dir`.
    pub fn new(lb: &Path, backend: &Backend, pin_dir: PathBuf, dir: &Path) -> Self {
        Self {
            lb: lb.to_owned(),
            netns: backend.ns.path(),
            name: backend.name.clone(),
            pin_dir,
            record: dir.join(format!("{}-decap.json", backend.name)),
        }
    }

    /// `lb decap <args>` in the backend's namespace, with its pins and record: its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String, Failure> {
        let mut command = in_netns(&self.netns, &self.lb);
        command
            .arg("decap")
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--record")
            .arg(&self.record);
        stdout_of(
            &mut command,
            &format!("lb decap {} on {}", args.join(" "), self.name),
        )
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            if let Err(e) = self.run(&["detach", "--all"]) {
                eprintln!("cleanup: {e}");
            }
            remove_dir_if_any(&self.pin_dir);
        }
    }
}
