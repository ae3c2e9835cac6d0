//! `cargo xtask run` with no arguments: the whole product in a lab of network namespaces.
//!
//! A client, the lb and three backends (each serving HTTP that answers with its own name).
//! `lb run` starts in the lb namespace; the VIP and backends are added with the CLI, each
//! command printed; requests go through the VIP and their spread is shown; then a backend
//! is drained and another deleted, live. Everything is removed on exit (Ctrl-C, or after
//! one round with `--once`). `--mode dsr-ipip|dsr-gue|dsr-l2` runs it in direct server return
//! (`dsr`), `--nodes 2..=5` as a cluster of lb nodes behind an ECMP router (`cluster`).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_lab::{
    cleanup,
    client::http_get,
    lb::{in_netns, stdout_of},
    netns::NetNs,
    servers::{HTTP_PORT, Servers},
    topology::{Backend, Lab},
};

use crate::cmd;

mod cluster;
mod dsr;

const REQUESTS: usize = 300;
const STARTUP: Duration = Duration::from_secs(30);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Keeps the lab up until Ctrl-C or SIGTERM.
fn wait_for_interrupt() {
    while !INTERRUPTED.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// The demo's own daemon: pins, state and socket under names with our pid.
pub(crate) struct Demo {
    lb: PathBuf,
    dir: PathBuf,
    pin_dir: PathBuf,
    api: PathBuf,
    daemon: Option<Child>,
    /// The namespace the daemon was started in (where `lb down` must run).
    netns: Option<PathBuf>,
    /// One round, then exit (instead of waiting for Ctrl-C).
    once: bool,
}

impl Demo {
    pub(crate) fn lb(&self, args: &[&str]) -> anyhow::Result<String> {
        println!("$ lb {}", args.join(" "));
        let mut command = Command::new(&self.lb);
        command.args(args).env("LB_API", &self.api);
        let stdout = stdout_of(&mut command, &format!("lb {}", args.join(" ")))?;
        print!("{stdout}");
        Ok(stdout)
    }

    fn start_daemon(&mut self, lb: &NetNs, ifaces: &[String]) -> anyhow::Result<()> {
        let log = self.dir.join("lb.log");
        let mut command = lb.command(&self.lb);
        command
            .arg("--api")
            .arg(&self.api)
            .arg("run")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state")
            .arg(self.dir.join("state.toml"))
            .arg("--iface")
            .args(ifaces);
        self.netns = Some(lb.path());
        let (child, lines) = spawn_daemon(&mut command, &log)?;
        self.daemon = Some(child);
        println!("{}", wait_until_forwarding(&lines, &log)?);
        Ok(())
    }
}

/// Starts `lb run` (`command`) with its stderr into `log`; its stdout comes line by line
/// from the receiver (read by a thread until the daemon exits, so it never blocks on a
/// full pipe).
fn spawn_daemon(command: &mut Command, log: &Path) -> anyhow::Result<(Child, Receiver<String>)> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .context("starting lb run")?;
    let stdout = child.stdout.take().context("lb stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Nobody listens once the daemon is up: the line is dropped, the pipe drained.
            tx.send(line).unwrap_or_default();
        }
    });
    Ok((child, rx))
}

/// Waits for the daemon's "lb: forwarding on ..." line (at most `STARTUP`) and returns it.
fn wait_until_forwarding(lines: &Receiver<String>, log: &Path) -> anyhow::Result<String> {
    let deadline = Instant::now() + STARTUP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with("lb: forwarding on") => return Ok(line),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!(
                "lb run did not come up within {STARTUP:?}; its log: {}",
                log.display()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                bail!("lb run exited while starting; its log: {}", log.display())
            }
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // `lb down` through the daemon if it still runs, else straight on the pins. In the
        // daemon's namespace while it exists: without a daemon, `lb down` withdraws the
        // announce routes through the datapath's interfaces, which only that namespace
        // has. Once the lab is gone (the DSR demo drops it first), only through a daemon
        // that still runs.
        let daemon_runs = self
            .daemon
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)));
        let down = match &self.netns {
            Some(netns) if netns.exists() => Some(in_netns(netns, &self.lb)),
            Some(_) if daemon_runs => Some(Command::new(&self.lb)),
            _ => None,
        };
        if let Some(mut down) = down {
            // Its stderr is shown only if it fails.
            let output = down
                .arg("down")
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .env("LB_API", &self.api)
                .stdout(Stdio::null())
                .output();
            cleanup::warn_on_failed("lb down", output);
        }
        if let Some(mut child) = self.daemon.take() {
            cleanup::kill(&mut child, "lb run");
        }
        cleanup::remove_dir_all(&self.pin_dir);
        cleanup::remove_dir_all(&self.dir);
    }
}

/// Sends `REQUESTS` requests from `client` through `vip` and prints how they spread.
fn round(client: &NetNs, backends: &[Backend], vip: SocketAddr, title: &str) -> anyhow::Result<()> {
    interrupted()?;
    println!("\n{title}: {REQUESTS} HTTP requests from the client to http://{vip}/");
    let answers: Vec<Result<String, String>> =
        client.enter(|| (0..REQUESTS).map(|_| http_get(vip)).collect());
    let mut spread: BTreeMap<String, usize> =
        backends.iter().map(|b| (b.name.clone(), 0)).collect();
    let mut failed = 0;
    for answer in answers {
        match answer {
            Ok(name) => *spread.entry(name).or_insert(0) += 1,
            Err(_) => failed += 1,
        }
    }
    for (name, count) in &spread {
        let share = *count as f64 / REQUESTS as f64;
        let bar = "#".repeat((share * 50.0).round() as usize);
        println!("  {name:<10} {count:>4}  {:>5.1}%  {bar}", share * 100.0);
    }
    if failed > 0 {
        bail!("{failed} of {REQUESTS} requests failed");
    }
    Ok(())
}

/// Which demo: the lb in NAT mode between client and backends, or a DSR lab behind a router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DemoMode {
    Nat,
    DsrIpip,
    DsrL2,
    DsrGue,
}

/// How many lb nodes the demo may have: one (the single-node demos) to this many.
pub(crate) const MAX_NODES: usize = 5;

/// The demo of `mode` with `nodes` lb nodes: 1 for the single-node demos, 2 to
/// [`MAX_NODES`] for the scale-out demo.
pub(crate) fn run(lb: &Path, once: bool, mode: DemoMode, nodes: usize) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "the demo creates network namespaces and attaches XDP: run it as root (sudo -E cargo xtask run)"
        );
    }
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    if nodes > 1 {
        return cluster::run(lb, once, nodes, mode);
    }
    let tag = format!("lb-demo-{}", std::process::id());
    let dir = PathBuf::from("/run").join(&tag);
    std::fs::create_dir_all(&dir).context("creating the demo directory")?;
    let mut demo = Demo {
        lb: lb.to_owned(),
        pin_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
        api: dir.join("lb.sock"),
        dir,
        daemon: None,
        netns: None,
        once,
    };
    println!(
        "lb demo: a client, the lb and three backends in network namespaces (lbdemo-{}-*).\n\
         Addresses are from 198.18.0.0/15; nothing leaves this machine.\n",
        std::process::id()
    );
    if mode != DemoMode::Nat {
        let done = dsr::run(&mut demo, mode);
        println!("\ncleaning up: lb decap detach on the backends, lb down, namespaces removed");
        drop(demo);
        return done;
    }
    let lab = Lab::new("lbdemo", 3);
    let servers = Servers::start(&lab.backends);
    demo.start_daemon(&lab.lb, &lab.lb_ifaces)?;
    println!(
        "\nThe CLI talks to the daemon over its socket; in another shell:  export LB_API={}\n",
        demo.api.display()
    );
    let vip = SocketAddr::new(lab.vip(false), 80);
    let vip_arg = vip.to_string();
    let backend = |n: usize| SocketAddr::new(lab.backends[n].v4.into(), HTTP_PORT).to_string();
    demo.lb(&["vip", "add", &vip_arg])?;
    for n in 0..lab.backends.len() {
        demo.lb(&["backend", "add", &vip_arg, &backend(n)])?;
    }
    round(&lab.client, &lab.backends, vip, "Three equal backends")?;

    println!();
    demo.lb(&["backend", "set", &vip_arg, &backend(0), "--weight", "300"])?;
    round(
        &lab.client,
        &lab.backends,
        vip,
        "backend-1 at weight 300, the others at 100",
    )?;

    println!();
    demo.lb(&["backend", "drain", &vip_arg, &backend(0)])?;
    round(
        &lab.client,
        &lab.backends,
        vip,
        "backend-1 draining (no new flows)",
    )?;

    println!();
    demo.lb(&["backend", "del", &vip_arg, &backend(2)])?;
    round(&lab.client, &lab.backends, vip, "backend-3 deleted")?;

    println!();
    demo.lb(&["backend", "list"])?;
    println!();
    demo.lb(&["vip", "list"])?;
    println!();
    demo.lb(&["status"])?;

    if !once {
        println!(
            "\nThe lab stays up: try `LB_API={} lb backend add {vip_arg} {}`. Ctrl-C removes everything.",
            demo.api.display(),
            backend(2)
        );
        wait_for_interrupt();
    }
    println!("\ncleaning up: lb down, namespaces removed");
    drop(demo);
    drop(servers);
    drop(lab);
    Ok(())
}
