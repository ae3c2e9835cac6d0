//! The `lb` binary under test, run as a child that is killed on drop.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

/// The `lb` binary: `$LB_BIN`, else next to this test executable's target directory.
pub fn lb_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LB_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/lb
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let lb = profile_dir.join("lb");
    assert!(
        lb.exists(),
        "{} not found: build it first (cargo xtask build) or set LB_BIN",
        lb.display()
    );
    lb
}

/// Health-check timing for tests: a backend is marked down within fall × interval +
/// timeout = 2 × 0.3 + 0.2 = 0.8 s, and up again as fast.
pub const FAST_CHECK: [&str; 8] = [
    "--interval",
    "0.3",
    "--timeout",
    "0.2",
    "--rise",
    "2",
    "--fall",
    "2",
];

/// How long a [`FAST_CHECK`] takes at most to mark a backend down.
pub const FAST_CHECK_FALL: Duration = Duration::from_millis(800);

/// A running `lb`; its stdout lines arrive on a channel so reads can time out.
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines taken off `lines` while waiting for READY=1, not yet looked at by
    /// [`Daemon::wait_for_line`]: the line it waits for may come before the notification.
    unread: std::collections::VecDeque<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// The socket `$NOTIFY_SOCKET` names, when started by [`Daemon::start`].
    notify: Option<Notify>,
}

/// A stand-in for systemd's notify socket (sd_notify(3)): a datagram socket in a directory
/// of its own, given to the daemon as `$NOTIFY_SOCKET`.
struct Notify {
    socket: UnixDatagram,
    /// The notifications received so far, one datagram each.
    received: Vec<String>,
    /// Holds the socket file; removed on drop.
    dir: tempfile::TempDir,
}

impl Notify {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lbt-notify-")
            .tempdir()
            .expect("create the notify socket's directory");
        let socket = UnixDatagram::bind(dir.path().join("notify")).expect("bind the notify socket");
        socket
            .set_nonblocking(true)
            .expect("a non-blocking notify socket");
        Self {
            socket,
            received: Vec::new(),
            dir,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("notify")
    }

    /// Takes every datagram waiting on the socket; the first `READY=1` among all received.
    fn ready(&mut self) -> Option<String> {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buffer) {
            self.received
                .push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        self.received
            .iter()
            .find(|message| message.lines().any(|line| line == "READY=1"))
            .cloned()
    }
}

/// What a daemon that is not ready yet has said, for a panic message.
struct NotReady {
    notifications: Vec<String>,
    stdout: Vec<String>,
    stderr: String,
}

impl std::fmt::Debug for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "notifications {:?}\nstdout:\n{}\nstderr:\n{}",
            self.notifications,
            self.stdout.join("\n"),
            self.stderr
        )
    }
}

/// What the kernel says a process holds: resident memory and open file descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub rss_kib: u64,
    pub fds: usize,
}

impl Daemon {
    /// The daemon's pid (`nsenter` execs `lb` in place, so it is lb's own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's resident memory and open descriptors, from /proc.
    pub fn footprint(&self) -> Footprint {
        let proc = PathBuf::from(format!("/proc/{}", self.pid()));
        let status = std::fs::read_to_string(proc.join("status")).expect("read /proc/<pid>/status");
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        let fds = std::fs::read_dir(proc.join("fd"))
            .expect("list /proc/<pid>/fd")
            .count();
        Footprint { rss_kib, fds }
    }

    pub fn spawn(mut command: Command) -> Self {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn lb");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        // Drained continuously so a chatty daemon never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut buffer) {
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            }
        });
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            unread: std::collections::VecDeque::new(),
            seen: Vec::new(),
            stderr,
            notify: None,
        }
    }

    /// Starts `command` (an `lb run`) and waits, at most [`STARTUP`], until it is ready:
    /// see [`Daemon::wait_ready`].
    pub fn start(command: Command) -> Self {
        let mut daemon = Self::spawn_notified(command);
        daemon.wait_ready(STARTUP);
        daemon
    }

    /// Spawns `command` with `$NOTIFY_SOCKET` naming a datagram socket of the test's own,
    /// as systemd does for a `Type=notify` unit; [`Daemon::wait_ready`] then waits for the
    /// daemon's `READY=1`. For starting several daemons at once.
    pub fn spawn_notified(mut command: Command) -> Self {
        let notify = Notify::new();
        command.env("NOTIFY_SOCKET", notify.path());
        let mut daemon = Self::spawn(command);
        daemon.notify = Some(notify);
        daemon
    }

    /// Waits up to `timeout` for the daemon's `READY=1` (sent once the datapath is attached
    /// and the API socket bound); the whole notification. Panics with what the daemon
    /// printed and logged if it exits first or the time runs out.
    pub fn wait_ready(&mut self, timeout: Duration) -> String {
        let pid = self.pid();
        let ready = crate::eventually(timeout, &format!("lb (pid {pid}) READY=1"), || {
            let notify = self
                .notify
                .as_mut()
                .expect("wait_ready needs a daemon started by Daemon::start or spawn_notified");
            if let Some(ready) = notify.ready() {
                return Ok(Ok(ready));
            }
            let notifications = notify.received.clone();
            while let Ok(line) = self.lines.try_recv() {
                self.unread.push_back(line);
            }
            let exited = self.child.try_wait().expect("wait for lb");
            let not_ready = NotReady {
                notifications,
                stdout: self.seen.iter().chain(&self.unread).cloned().collect(),
                stderr: self.stderr(),
            };
            match exited {
                Some(status) => Ok(Err((status, not_ready))),
                None => Err(not_ready),
            }
        });
        match ready {
            Ok(ready) => ready,
            Err((status, not_ready)) => {
                panic!("lb exited ({status}) before READY=1: {not_ready:?}")
            }
        }
    }

    /// Waits up to `timeout` for a stdout line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        while let Some(line) = self.unread.pop_front() {
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(line) = self.lines.recv_timeout(left) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            } else {
                let stderr = self.kill_and_stderr();
                panic!(
                    "lb did not print `{needle}` within {timeout:?}\nstdout:\n{}\nstderr:\n{stderr}",
                    self.seen.join("\n")
                );
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns status and the rest of stdout.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let child = &mut self.child;
        let status = crate::eventually(Duration::from_secs(10), "lb exits on SIGTERM", || {
            child
                .try_wait()
                .expect("wait for lb")
                .ok_or("still running")
        });
        self.seen.extend(self.unread.drain(..));
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }

    /// SIGHUP: the daemon reloads its --config.
    pub fn hangup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    /// Waits up to `timeout` until the daemon's log holds `needle` at least `count` times;
    /// the log so far.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> String {
        crate::eventually(
            timeout,
            &format!("lb logs `{needle}` {count} time(s)"),
            || {
                let log = self.stderr();
                if log.matches(needle).count() >= count {
                    Ok(log)
                } else {
                    Err(Logged(log))
                }
            },
        )
    }

    /// Waits up to `timeout` for the daemon to exit on its own (or by a signal someone
    /// else sent); its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.pid();
        let child = &mut self.child;
        crate::eventually(timeout, &format!("lb (pid {pid}) exits"), || {
            child
                .try_wait()
                .expect("wait for lb")
                .ok_or("still running")
        })
    }

    /// SIGKILL: the daemon gets no chance to clean up, as in a crash.
    pub fn kill_hard(mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL lb");
        self.child.wait().expect("wait for lb")
    }

    fn kill_and_stderr(&mut self) -> String {
        crate::cleanup::kill(&mut self.child, "lb run");
        std::thread::sleep(Duration::from_millis(100));
        self.stderr()
    }

    /// What the daemon logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A daemon's log as a panic message shows it: its lines, not one escaped string.
struct Logged(String);

impl std::fmt::Debug for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "its log:\n{}", self.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        crate::cleanup::kill(&mut self.child, "lb run");
    }
}

/// Packet count of global counter `name` in `lb stats --json` output. Panics when the
/// daemon reports no such counter: a renamed or misspelt counter must fail the test, not
/// read as 0.
pub fn stat_packets(stats: &serde_json::Value, name: &str) -> u64 {
    let counters = stats["counters"]
        .as_object()
        .unwrap_or_else(|| panic!("`lb stats --json` has no \"counters\" object: {stats}"));
    let Some(counter) = counters.get(name) else {
        let known: Vec<&String> = counters.keys().collect();
        panic!("`lb stats --json` has no counter `{name}`; it has: {known:?}");
    };
    counter["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("counter `{name}` has no packet count: {counter}"))
}

/// What `lb run` prints once it forwards (its first line: what it attached, adopted or
/// loaded). Readiness is [`Daemon::wait_ready`]'s `READY=1`, not this line.
pub const READY: &str = "lb: forwarding on";
/// How long a daemon may take to start (a cold start loads and verifies the program: about
/// 2.2 × 10^6 instructions over its five programs, several seconds each on a 2-CPU machine,
/// and the cluster tests start six daemons at once).
pub const STARTUP: Duration = Duration::from_secs(45);

/// One `lb` installation for one test: its own pin directory, state file and API socket,
/// so tests never share a datapath. Drop removes all three (which detaches anything
/// still pinned).
pub struct Instance {
    pub pin_dir: PathBuf,
    pub state: PathBuf,
    pub api: PathBuf,
    /// Holds the state file and the socket; kept only to be removed on drop.
    _dir: tempfile::TempDir,
}

static NEXT_INSTANCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Default for Instance {
    fn default() -> Self {
        Self::new()
    }
}

impl Instance {
    pub fn new() -> Self {
        let id = NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("lbt-{}-{id}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir()
            .expect("create the instance directory");
        Self {
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
            state: dir.path().join("state.toml"),
            api: dir.path().join("lb.sock"),
            _dir: dir,
        }
    }

    /// `lb --api .. run --pin-dir .. --state .. --iface <ifaces> <extra>`, inside `ns`.
    pub fn run(&self, ns: &crate::netns::NetNs, ifaces: &[String], extra: &[&str]) -> Command {
        let mut cmd = ns.command(lb_binary());
        cmd.arg("--api")
            .arg(&self.api)
            .arg("run")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state")
            .arg(&self.state)
            .arg("--iface")
            .args(ifaces)
            .args(extra);
        cmd
    }

    /// Starts `lb run` on the lab's lb interfaces and waits until it forwards.
    pub fn start(&self, lab: &crate::topology::Lab, extra: &[&str]) -> Daemon {
        Daemon::start(self.run(&lab.lb, &lab.lb_ifaces, extra))
    }

    /// Runs a client subcommand against this instance's daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(lb_binary())
            .arg("--api")
            .arg(&self.api)
            .args(args)
            .output()
            .expect("run lb")
    }

    /// A client subcommand that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "`lb {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `lb stats --json`, parsed (read counters with [`stat_packets`]).
    pub fn stats(&self) -> serde_json::Value {
        let text = self.ok(&["stats", "--json"]);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`lb stats --json` is not JSON ({e}): {text}"))
    }

    /// `lb status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let text = self.ok(&["status", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status is not JSON ({e}): {text}"))
    }

    /// A client subcommand that must fail; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            !output.status.success(),
            "`lb {}` should have failed but printed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// A backend's `health` (`up`, `down`, `unchecked`) and its whole `backend list` entry.
    pub fn backend_health(&self, backend: &str) -> (String, serde_json::Value) {
        let list: serde_json::Value =
            serde_json::from_str(&self.ok(&["backend", "list", "--json"])).expect("JSON");
        let entry = list
            .as_array()
            .expect("array")
            .iter()
            .find(|b| b["backend"] == backend)
            .cloned()
            .unwrap_or_else(|| panic!("{backend} is not listed: {list}"));
        (
            entry["health"].as_str().unwrap_or_default().to_owned(),
            entry,
        )
    }

    /// Polls until `backend` has `health`; how long it took.
    pub fn wait_for_health(&self, backend: &str, health: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        crate::eventually(limit, &format!("{backend} {health}"), || {
            let (now, entry) = self.backend_health(backend);
            if now == health { Ok(()) } else { Err(entry) }
        });
        started.elapsed()
    }

    /// `lb down` for this instance's pin directory (through the daemon if one runs).
    pub fn down(&self) -> String {
        let pin_dir = self.pin_dir.to_string_lossy().into_owned();
        self.ok(&["down", "--pin-dir", &pin_dir])
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        crate::cleanup::remove_dir_all(&self.pin_dir);
        // `self._dir` (a TempDir) removes itself.
    }
}

static NEXT_DECAP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `lb decap`'s own pin directory and record for one backend (each backend stands for a
/// host of its own), for `lb decap` run inside its namespace. Drop detaches whatever is left and removes both.
pub struct DecapPaths {
    ns_path: PathBuf,
    pin_dir: PathBuf,
    record: tempfile::TempDir,
}

impl DecapPaths {
    pub fn new(ns: &crate::netns::NetNs) -> Self {
        let id = NEXT_DECAP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            ns_path: ns.path(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/lbt-{}-{id}-dsr", std::process::id())),
            record: tempfile::Builder::new()
                .prefix("lbt-dsr-decap-")
                .tempdir()
                .expect("record directory"),
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--pin-dir".to_owned(),
            self.pin_dir.display().to_string(),
            "--record".to_owned(),
            self.record.path().join("record.json").display().to_string(),
        ]
    }

    /// `lb decap <args>` inside the backend's namespace.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path.display()))
            .arg("--")
            .arg(lb_binary())
            .arg("decap")
            .args(args)
            .args(self.args())
            .output()
            .expect("run lb decap")
    }

    /// A `lb decap` command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "`lb decap {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl DecapPaths {
    /// `lb decap attach` on every backend of a DSR lab for `vip`, taking tunnels only from
    /// `lb_source` (a prefix): attached while the returned handles live.
    pub fn attach_all(
        backends: &[crate::topology::Backend],
        vip: std::net::IpAddr,
        lb_source: &str,
    ) -> Vec<Self> {
        backends
            .iter()
            .map(|backend| {
                let decap = Self::new(&backend.ns);
                decap.ok(&[
                    "attach",
                    "--iface",
                    &backend.dev,
                    "--vip",
                    &vip.to_string(),
                    "--allow-source",
                    lb_source,
                ]);
                decap
            })
            .collect()
    }
}

impl Drop for DecapPaths {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            crate::cleanup::warn_on_exit("lb decap detach --all", &self.run(&["detach", "--all"]));
            crate::cleanup::remove_dir_all(&self.pin_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stat_packets;

    #[test]
    fn a_counter_is_read_by_name_and_an_unknown_name_panics() {
        let stats = serde_json::json!({
            "counters": { "udp": { "packets": 7, "bytes": 700 } }
        });
        assert_eq!(stat_packets(&stats, "udp"), 7);
        let missing = std::panic::catch_unwind(|| stat_packets(&stats, "upd"));
        assert!(missing.is_err(), "a misspelt counter read as a number");
    }
}
