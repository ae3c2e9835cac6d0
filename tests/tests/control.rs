//! The control plane as operators use it: the real `lb` binary, driven through its CLI and
//! API socket, steering real TCP connections between backends in namespaces. Needs root.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    client::{WhoConnection, http_get, open_who_connections},
    netns::NetNs,
    process::{Daemon, Instance, READY},
    servers::{ECHO_PORT, HTTP_PORT, Servers, WHO_PORT},
    topology::Lab,
};
use lb_userspace::api::error::ErrorCode;

const BUDGET: Duration = Duration::from_secs(120);

fn endpoint(lab: &Lab, n: usize, port: u16) -> String {
    SocketAddr::new(lab.backends[n].v4.into(), port).to_string()
}

/// `count` new HTTP connections through `vip`; how many each backend answered.
fn spread(lab: &Lab, vip: SocketAddr, count: usize) -> HashMap<String, usize> {
    let started = Instant::now();
    let answers: Vec<Result<String, String>> = lab.client.enter(|| {
        (0..count)
            .map(|_| {
                assert!(started.elapsed() < BUDGET, "request budget exceeded");
                http_get(vip)
            })
            .collect()
    });
    let mut by_backend = HashMap::new();
    for answer in answers {
        let name = answer.unwrap_or_else(|e| panic!("a request through {vip} failed: {e}"));
        *by_backend.entry(name).or_insert(0) += 1;
    }
    by_backend
}

fn share(by_backend: &HashMap<String, usize>, name: &str) -> f64 {
    let total: usize = by_backend.values().sum();
    by_backend.get(name).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

/// Lets one test process hold a few hundred connections at both ends.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

#[test]
fn weights_drain_and_delete_steer_new_connections() {
    lb_tests::require_root!();
    let lab = Lab::new("lbt", 3);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), 80);
    let vip_arg = vip.to_string();
    instance.ok(&["vip", "add", &vip_arg]);
    for (n, weight) in [(0, "1"), (1, "2"), (2, "1")] {
        let backend = endpoint(&lab, n, HTTP_PORT);
        instance.ok(&["backend", "add", &vip_arg, &backend, "--weight", weight]);
    }

    let weighted = spread(&lab, vip, 1000);
    eprintln!("weights 1:2:1 over 1000 connections: {weighted:?}");
    for (name, want) in [
        ("backend-1", 0.25),
        ("backend-2", 0.50),
        ("backend-3", 0.25),
    ] {
        let got = share(&weighted, name);
        assert!(
            (got - want).abs() <= 0.05,
            "weights 1:2:1: {name} got {:.1}%, want {:.0}% ± 5: {weighted:?}",
            got * 100.0,
            want * 100.0
        );
    }

    // An established connection to backend-1 must outlive its drain.
    let who_vip = SocketAddr::new(lab.vip(false), WHO_PORT);
    let who_arg = who_vip.to_string();
    instance.ok(&["vip", "add", &who_arg]);
    instance.ok(&["backend", "add", &who_arg, &endpoint(&lab, 0, WHO_PORT)]);
    let mut pinned = lab
        .client
        .enter(|| WhoConnection::open(who_vip).expect("connect"));
    assert_eq!(pinned.ask().as_deref(), Ok("backend-1"));
    instance.ok(&["backend", "add", &who_arg, &endpoint(&lab, 1, WHO_PORT)]);

    instance.ok(&[
        "backend",
        "set",
        &vip_arg,
        &endpoint(&lab, 1, HTTP_PORT),
        "--weight",
        "1",
    ]);
    let equal = spread(&lab, vip, 600);
    for name in ["backend-1", "backend-2", "backend-3"] {
        let got = share(&equal, name);
        assert!(
            (got - 1.0 / 3.0).abs() <= 0.08,
            "after set --weight 1, {name} got {:.1}%: {equal:?}",
            got * 100.0
        );
    }

    for (vip, port) in [(&vip_arg, HTTP_PORT), (&who_arg, WHO_PORT)] {
        instance.ok(&["backend", "drain", vip, &endpoint(&lab, 0, port)]);
    }
    let drained = spread(&lab, vip, 300);
    assert_eq!(drained.get("backend-1"), None, "drained: {drained:?}");
    assert_eq!(
        lab.client.enter(|| pinned.ask()).as_deref(),
        Ok("backend-1"),
        "the established connection stays on the draining backend"
    );
    let list = instance.ok(&["backend", "list", &vip_arg, "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&list).expect("JSON");
    let drained = endpoint(&lab, 0, HTTP_PORT);
    assert!(
        entries.as_array().expect("array").iter().any(|e| {
            e["backend"].as_str() == Some(drained.as_str())
                && e["state"].as_str() == Some("draining")
                && e["weight"].as_u64() == Some(1)
        }),
        "{list}"
    );

    instance.ok(&["backend", "del", &vip_arg, &endpoint(&lab, 2, HTTP_PORT)]);
    let after_delete = spread(&lab, vip, 200);
    assert_eq!(
        after_delete.get("backend-2"),
        Some(&200),
        "only the active backend is left: {after_delete:?}"
    );
    instance.down();
}

#[test]
fn deleting_one_of_five_backends_keeps_the_others_flows() {
    lb_tests::require_root!();
    const CONNECTIONS: usize = 400;
    raise_fd_limit();
    let lab = Lab::new("lbt", 5);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), WHO_PORT);
    let vip_arg = vip.to_string();
    instance.ok(&["vip", "add", &vip_arg]);
    for n in 0..5 {
        instance.ok(&["backend", "add", &vip_arg, &endpoint(&lab, n, WHO_PORT)]);
    }
    let (mut connections, before) = lab
        .client
        .enter(|| open_who_connections(vip, CONNECTIONS, BUDGET));
    assert!(
        before.iter().filter(|n| *n == "backend-5").count() > 0,
        "backend-5 had flows to lose"
    );

    instance.ok(&["backend", "del", &vip_arg, &endpoint(&lab, 4, WHO_PORT)]);
    let after: Vec<Result<String, String>> = lab
        .client
        .enter(|| connections.iter_mut().map(WhoConnection::ask).collect());
    let others = before.iter().filter(|n| *n != "backend-5").count();
    let kept = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *b != "backend-5" && a.as_deref() == Ok(b.as_str()))
        .count();
    // Conntrack pins every tracked flow: the Maglev slots that move when a backend goes
    // must not move a single established connection of the others (the README's promise).
    assert_eq!(
        kept, others,
        "only {kept}/{others} flows of the remaining backends stayed put"
    );
    drop(connections);
    let new = lab.client.enter(|| {
        (0..100)
            .map(|_| WhoConnection::open(vip).and_then(|mut c| c.ask()))
            .collect::<Result<Vec<_>, _>>()
            .expect("new connections after the delete")
    });
    assert!(
        new.iter().all(|n| n != "backend-5"),
        "no new flow reaches the deleted backend"
    );
    eprintln!("kept {kept}/{others} flows of the remaining backends");
    instance.down();
}

/// (VIP, backend, weight, state) of every backend in `lb backend list --json` output.
fn backend_identities(json: &str) -> Vec<(String, String, u64, String)> {
    let list: serde_json::Value = serde_json::from_str(json).expect("JSON");
    list.as_array()
        .expect("an array")
        .iter()
        .map(|b| {
            (
                b["vip"].as_str().unwrap_or_default().to_owned(),
                b["backend"].as_str().unwrap_or_default().to_owned(),
                b["weight"].as_u64().unwrap_or_default(),
                b["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Bytes of one stream so far, shared with the thread that streams them.
#[derive(Default)]
struct Progress {
    /// Bytes written to the stream (counted once written).
    sent: AtomicU64,
    /// Bytes that came back, in order.
    verified: AtomicU64,
}

/// The size of one write (and echo) of [`stream_through`].
const CHUNK: u64 = 1024;

/// Streams numbered bytes through `vip` to an echo server and checks every byte comes back
/// in order, until `stop`; `progress` counts as it goes. Returns (bytes sent, bytes verified,
/// first error).
fn stream_through(
    vip: SocketAddr,
    stop: &AtomicBool,
    progress: &Progress,
) -> (u64, u64, Option<String>) {
    let mut stream = match std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => return (0, 0, Some(format!("connect: {e}"))),
    };
    if let Err(e) = stream.set_read_timeout(Some(Duration::from_secs(5))) {
        return (0, 0, Some(format!("read timeout: {e}")));
    }
    let (mut sent, mut verified) = (0u64, 0u64);
    let mut reply = vec![0u8; CHUNK as usize];
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < BUDGET {
        let chunk: Vec<u8> = (sent..sent + CHUNK).map(|i| (i % 251) as u8).collect();
        if let Err(e) = stream.write_all(&chunk) {
            return (sent, verified, Some(format!("send: {e}")));
        }
        sent += chunk.len() as u64;
        progress.sent.store(sent, Ordering::SeqCst);
        if let Err(e) = stream.read_exact(&mut reply) {
            return (sent, verified, Some(format!("read: {e}")));
        }
        if reply != chunk {
            return (
                sent,
                verified,
                Some(format!("corrupted at byte {verified}")),
            );
        }
        verified += reply.len() as u64;
        progress.verified.store(verified, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
    }
    (sent, verified, None)
}

/// Waits until at least `bytes` more than `from` came back through the stream.
fn stream_reaches(progress: &Progress, from: u64, bytes: u64, what: &str) -> u64 {
    lb_tests::eventually(Duration::from_secs(10), what, || {
        let verified = progress.verified.load(Ordering::SeqCst);
        if verified >= from + bytes {
            Ok(verified)
        } else {
            Err(format!(
                "{} bytes verified, {} sent; waiting for {}",
                verified,
                progress.sent.load(Ordering::SeqCst),
                from + bytes
            ))
        }
    })
}

#[test]
fn a_stream_survives_kill_9_and_restart_and_new_connections_work_meanwhile() {
    lb_tests::require_root!();
    /// Bytes that must come back in each phase: the pinned datapath alone, then with the
    /// restarted daemon.
    const PHASE: u64 = 32 * CHUNK;
    let lab = Lab::new("lbt", 3);
    let instance = Instance::new();
    let daemon = instance.start(&lab, &[]);
    let _servers = Servers::start(&lab.backends);
    let stream_vip = SocketAddr::new(lab.vip(false), ECHO_PORT);
    let http_vip = SocketAddr::new(lab.vip(false), 80);
    for (vip, port) in [(stream_vip, ECHO_PORT), (http_vip, HTTP_PORT)] {
        let vip = vip.to_string();
        instance.ok(&["vip", "add", &vip]);
        for n in 0..3 {
            instance.ok(&["backend", "add", &vip, &endpoint(&lab, n, port)]);
        }
    }
    let listed_before = instance.ok(&["backend", "list", "--json"]);

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let client = {
        let (stop, progress) = (Arc::clone(&stop), Arc::clone(&progress));
        lab.client
            .spawn(move || stream_through(stream_vip, &stop, &progress))
    };
    stream_reaches(&progress, 0, CHUNK, "the stream flowing before the kill");

    let status = daemon.kill_hard();
    assert!(!status.success(), "lb was killed");
    // Bytes written up to here may have been forwarded by the daemon's datapath before it
    // died; one more chunk may be on its way (written, not yet counted). Only bytes past
    // both count as flowed after the kill.
    let sent_at_kill = progress.sent.load(Ordering::SeqCst) + CHUNK;
    assert!(lab.lb.has_xdp(), "the pinned datapath outlives the daemon");
    let during = spread(&lab, http_vip, 50);
    assert_eq!(
        during.values().sum::<usize>(),
        50,
        "new connections during the downtime: {during:?}"
    );
    stream_reaches(
        &progress,
        sent_at_kill,
        PHASE,
        "stream bytes through the pinned datapath with no daemon",
    );

    let mut restarted = Daemon::start(instance.run(&lab.lb, &lab.lb_ifaces, &[]));
    // Ready; its first line says how it started.
    let ready = restarted.wait_for_line(READY, Duration::from_secs(5));
    assert!(ready.contains("adopted"), "{ready}");
    let sent_at_restart = progress.sent.load(Ordering::SeqCst) + CHUNK;
    stream_reaches(
        &progress,
        sent_at_restart,
        PHASE,
        "stream bytes through the restarted daemon's datapath",
    );
    stop.store(true, Ordering::Relaxed);
    let (sent, verified, error) = client.join().expect("stream thread");
    assert_eq!(
        error, None,
        "the stream broke after {verified} of {sent} bytes"
    );
    assert_eq!(sent, verified, "no byte lost");
    let after_kill = verified.saturating_sub(sent_at_kill);
    assert!(
        after_kill >= 2 * PHASE,
        "the stream ran on after the kill: {after_kill} bytes sent after it came back"
    );

    assert_eq!(
        backend_identities(&instance.ok(&["backend", "list", "--json"])),
        backend_identities(&listed_before),
        "the restarted daemon knows the same backends"
    );
    let status: serde_json::Value =
        serde_json::from_str(&instance.ok(&["status", "--json"])).expect("JSON");
    assert_eq!(status["adopted"], true, "{status}");
    eprintln!(
        "streamed {sent} bytes across kill -9 and restart, {after_kill} of them written after the kill, all echoed in order"
    );
    instance.down();
    assert!(!lab.lb.has_xdp());
}

/// One raw API exchange; the daemon's answer line.
fn raw_request(instance: &Instance, payload: &[u8]) -> String {
    let mut stream = UnixStream::connect(&instance.api).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The daemon may answer and close before reading everything of an oversized request.
    stream.write_all(payload).unwrap_or_default();
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("an answer");
    line
}

#[test]
fn bad_input_is_refused_with_a_reason_and_changes_nothing() {
    lb_tests::require_root!();
    let lab = Lab::new("lbt", 1);
    let instance = Instance::new();
    let daemon = instance.start(&lab, &[]);
    instance.ok(&["vip", "add", "198.18.1.1:80"]);
    instance.ok(&["vip", "add", "[fd00:1::1]:80"]);
    instance.ok(&["backend", "add", "198.18.1.1:80", "198.18.11.2:8080"]);
    let snapshot = || {
        (
            instance.ok(&["vip", "list", "--json"]),
            instance.ok(&["backend", "list", "--json"]),
            std::fs::read(&instance.state).expect("state file"),
        )
    };
    let before = snapshot();

    // Each refusal says what was wrong and what to do: clap's parse errors show the form
    // or the values it takes, the daemon's refusals the remedy of their code.
    let remedy = |code: ErrorCode| format!("to fix: {}", code.remedy());
    let address_form = "e.g. 198.18.0.10:80, or [fd00::10]:80".to_owned();
    let weight_range = "not in 1..=65535".to_owned();
    let cli_cases: Vec<(&[&str], &str, String)> = vec![
        (
            &["vip", "add", "198.18.1.2"],
            "is not ADDRESS:PORT",
            address_form.clone(),
        ),
        (
            &["vip", "add", "198.18.1.300:80"],
            "is not ADDRESS:PORT",
            address_form,
        ),
        (
            &["backend", "add", "[fd00:1::1]:80", "198.18.11.2:80"],
            "IPv4 but VIP",
            remedy(ErrorCode::FamilyMismatch),
        ),
        (
            &["backend", "add", "198.18.1.9:80", "198.18.11.2:80"],
            "no VIP 198.18.1.9:80/tcp",
            remedy(ErrorCode::UnknownVip),
        ),
        (
            &["backend", "drain", "198.18.1.1:80", "198.18.11.9:80"],
            "has no backend",
            remedy(ErrorCode::UnknownBackend),
        ),
        (
            &["vip", "add", "198.18.1.1:80"],
            "already exists",
            remedy(ErrorCode::DuplicateVip),
        ),
        (
            &["backend", "add", "198.18.1.1:80", "198.18.11.2:8080"],
            "already exists",
            remedy(ErrorCode::DuplicateBackend),
        ),
        (
            &[
                "backend",
                "add",
                "198.18.1.1:80",
                "198.18.11.3:80",
                "--weight",
                "0",
            ],
            "invalid value '0'",
            weight_range.clone(),
        ),
        (
            &[
                "backend",
                "set",
                "198.18.1.1:80",
                "198.18.11.2:8080",
                "--weight",
                "70000",
            ],
            "invalid value '70000'",
            weight_range,
        ),
        (
            &["vip", "add", "198.18.1.1:80", "--proto", "sctp"],
            "invalid value 'sctp'",
            "[possible values: tcp, udp]".to_owned(),
        ),
        (
            &["backend", "list", "198.18.1.1:81"],
            "no VIP",
            remedy(ErrorCode::UnknownVip),
        ),
        (
            &["vip", "add", "0.0.0.0:80"],
            "not a usable address",
            remedy(ErrorCode::InvalidAddress),
        ),
        (&["reload"], "without --config", remedy(ErrorCode::NoConfig)),
    ];
    for (args, reason, what_to_do) in &cli_cases {
        let stderr = instance.fails(args);
        assert!(stderr.contains(reason), "lb {}: {stderr}", args.join(" "));
        assert!(
            stderr.contains(what_to_do.as_str()),
            "lb {} names no remedy ({what_to_do}): {stderr}",
            args.join(" ")
        );
        assert_eq!(
            snapshot(),
            before,
            "lb {} changed something",
            args.join(" ")
        );
    }

    // Each refusal carries its stable code beside the message (docs/API.md).
    let api_cases: &[(&[u8], &str, &str)] = &[
        (b"{\"op\":\"backend-add\",\"vip\":\"198.18.1.1:80\",\"backend\":\"198.18.11.3:80\",\"weight\":0}\n", "out of range", "invalid_weight"),
        (b"{\"op\":\"backend-add\",\"vip\":\"198.18.1.1:80\",\"backend\":\"198.18.11.3:80\",\"weight\":65536}\n", "out of range", "invalid_weight"),
        (b"{\"op\":\"backend-add\",\"vip\":\"198.18.1.1:80\",\"backend\":\"198.18.11.2:8080\"}\n", "already exists", "duplicate_backend"),
        (b"{\"op\":\"backend-del\",\"vip\":\"198.18.1.9:80\",\"backend\":\"198.18.11.2:8080\"}\n", "no VIP", "unknown_vip"),
        (b"{\"op\":\"vip-add\",\"vip\":\"0.0.0.0:80\"}\n", "not a usable address", "invalid_address"),
        (b"{\"op\":\"vip-add\",\"vip\":\"198.18.1.1\"}\n", "bad request", "bad_request"),
        (b"{\"op\":\"vip-add\",\"vip\":\"198.18.1.7:80\",\"check\":{\"probe\":\"ftp\"}}\n", "check:", "invalid_check"),
        (b"not json\n", "bad request", "bad_request"),
        (b"{\"op\":\"vip-list\",\"admin\":true}\n", "unknown field", "bad_request"),
        (b"{\"op\":\"vip-add\",\"vip\":\"198.18.1.7:80\",\"version\":99}\n", "version 99", "version_mismatch"),
        // Not UTF-8: answered, then the connection is closed.
        (b"\xff\xfe{}\n", "not UTF-8", "bad_request"),
    ];
    for (payload, reason, code) in api_cases {
        let answer = raw_request(&instance, payload);
        assert!(
            answer.contains("\"ok\":false")
                && answer.contains(reason)
                && answer.contains(&format!("\"code\":\"{code}\"")),
            "{answer}"
        );
        assert_eq!(snapshot(), before);
    }
    let mut oversized = b"{\"op\":\"vip-add\",\"vip\":\"198.18.1.7:80\",\"pad\":\"".to_vec();
    oversized.extend(std::iter::repeat_n(b'x', 100 * 1024));
    oversized.extend_from_slice(b"\"}\n");
    let answer = raw_request(&instance, &oversized);
    assert!(
        answer.contains("larger than 65536 bytes")
            && answer.contains("\"code\":\"request_too_large\""),
        "{answer}"
    );
    assert_eq!(snapshot(), before);
    // The CLI shows the code beside the message.
    let stderr = instance.fails(&["backend", "list", "198.18.1.1:81"]);
    assert!(stderr.contains("[unknown_vip]"), "{stderr}");

    drop(daemon);
    let stopped = Instance::new();
    let stderr = stopped.fails(&["vip", "list"]);
    assert!(
        stderr.contains("no lb daemon is listening") && stderr.contains("lb run --iface"),
        "{stderr}"
    );
    instance.down();
}

#[test]
fn a_corrupt_state_file_is_refused_and_left_untouched() {
    lb_tests::require_root!();
    let lab = Lab::new("lbt", 1);
    let instance = Instance::new();
    let corrupt = "[[vip]]\naddress = \"198.18.1.1:80\"\nbackends = [\n  { address = \"198.18.11.2:80\", weight = \"heavy\" },\n]\n";
    std::fs::write(&instance.state, corrupt).expect("write state");
    let output = instance
        .run(&lab.lb, &lab.lb_ifaces, &[])
        .output()
        .expect("run lb");
    assert!(!output.status.success(), "lb must refuse to start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let place = format!("{}:4:", instance.state.display());
    assert!(stderr.contains(&place), "names file and line: {stderr}");
    assert!(
        stderr.contains("invalid type"),
        "gives the reason: {stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&instance.state).expect("state file"),
        corrupt,
        "the file is left exactly as it was"
    );
    assert!(!lab.lb.has_xdp(), "nothing was attached");
    assert!(!instance.api.exists(), "no socket was left behind");
}

/// `strace` attached to a running daemon that kills it (SIGKILL, on entry, before the call
/// runs) at the first of `syscalls` that touches one of `paths`. Killed on drop.
struct KillOnSyscall {
    strace: std::process::Child,
}

impl KillOnSyscall {
    fn attach(pid: u32, paths: &[&std::path::Path], syscalls: &str) -> Self {
        let mut command = std::process::Command::new("strace");
        command.args(["-f", "-qq", "-o", "/dev/null", "-p", &pid.to_string()]);
        for path in paths {
            command.arg("-P").arg(path);
        }
        command
            .arg("-e")
            .arg(format!("trace={syscalls}"))
            .arg("-e")
            .arg(format!("inject={syscalls}:signal=SIGKILL"))
            .stdin(std::process::Stdio::null());
        let strace = command.spawn().expect("run strace");
        let tracer = strace.id();
        // Attached once every thread of the daemon has strace as its tracer.
        lb_tests::eventually(
            Duration::from_secs(10),
            &format!("strace attached to every thread of lb (pid {pid})"),
            || {
                let tracers: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .expect("list the daemon's threads")
                    .flatten()
                    .map(|task| {
                        let status =
                            std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                        let tracer = status
                            .lines()
                            .find_map(|l| l.strip_prefix("TracerPid:"))
                            .unwrap_or_default()
                            .trim()
                            .to_owned();
                        (task.file_name().to_string_lossy().into_owned(), tracer)
                    })
                    .collect();
                if tracers.iter().all(|(_, t)| *t == tracer.to_string()) {
                    Ok(())
                } else {
                    Err(tracers)
                }
            },
        );
        Self { strace }
    }
}

impl Drop for KillOnSyscall {
    fn drop(&mut self) {
        lb_tests::cleanup::kill(&mut self.strace, "strace");
    }
}

/// A kill at the worst moment of a save must leave the state file whole. Deterministic:
/// strace kills the daemon on entry to the first write(2) into the state file or its
/// temporary file (where a plain `fs::write`, having truncated the state file, would leave
/// it empty), and in a second round on entry to the rename(2) that puts the new file in
/// place (which a save that writes in place never reaches). Either way the state file must
/// be exactly the one before the change, and a restart serves it and removes the
/// temporary file the kill left.
#[test]
fn a_daemon_killed_during_changes_leaves_a_whole_state_file() {
    lb_tests::require_root!();
    let lab = Lab::new("lbt", 3);
    let instance = Instance::new();
    let mut daemon = instance.start(&lab, &[]);
    let vip = "198.18.1.1:80";
    instance.ok(&["vip", "add", vip]);
    instance.ok(&["backend", "add", vip, "198.18.11.2:8080"]);
    let state = std::fs::canonicalize(&instance.state).expect("the state file exists");
    let rounds = [
        (
            "the first write to the state file or its temporary file",
            "write,pwrite64,writev,pwritev,pwritev2",
        ),
        (
            "the rename over the state file",
            "rename,renameat,renameat2",
        ),
    ];
    for (round, (moment, syscalls)) in rounds.into_iter().enumerate() {
        let before = std::fs::read_to_string(&state).expect("state file exists");
        let temp = state.with_file_name(format!(
            ".{}.{}.tmp",
            state.file_name().expect("a file name").to_string_lossy(),
            daemon.pid()
        ));
        let strace = KillOnSyscall::attach(daemon.pid(), &[&state, &temp], syscalls);
        let backend = format!("198.18.11.{}:8080", 3 + round);
        let output = instance.cli(&["backend", "add", vip, &backend]);
        assert!(
            !output.status.success(),
            "round {round}: the change was answered, so the daemon was not killed at {moment}"
        );
        let status = daemon.wait_exit(Duration::from_secs(10));
        drop(strace);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "round {round}: killed at {moment}"
        );
        let after = std::fs::read_to_string(&state).expect("state file exists");
        assert_eq!(
            after, before,
            "round {round}: killed at {moment}, the state file is not the whole one from before the change"
        );
        let saved = lb_userspace::model::config::parse(&after, &state)
            .unwrap_or_else(|e| panic!("round {round}: the state file is not whole: {e}\n{after}"));
        daemon = Daemon::start(instance.run(&lab.lb, &lab.lb_ifaces, &[]));
        // The restarted daemon removes what the killed one left half written.
        let left = temporary_files(&instance.state);
        assert!(
            left.is_empty(),
            "round {round}: left after the restart: {left:?}"
        );
        let listed = backend_identities(&instance.ok(&["backend", "list", "--json"]));
        let served: usize = saved.vips.values().map(|v| v.backends.len()).sum();
        assert_eq!(
            (listed.len(), served),
            (1, 1),
            "round {round}: the restart serves the saved state, without the change"
        );
    }
    instance.down();
    drop(daemon);
}

#[test]
fn the_api_socket_is_private_and_paths_others_control_are_refused() {
    lb_tests::require_root!();
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _, chown};
    const NOBODY: u32 = 65_534;
    let ns = NetNs::new("sock");
    // lb refuses interfaces that would not forward.
    ns.sysctl("net/ipv4/ip_forward", "1");
    let instance = Instance::new();
    let ifaces = ["lo".to_owned()];
    let daemon = Daemon::start(instance.run(&ns, &ifaces, &[]));
    let meta = std::fs::symlink_metadata(&instance.api).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (0o600, 0),
        "0600, owned by root"
    );
    drop(daemon);
    instance.down();

    // Each path below is refused before anything is loaded, and left as it was.
    let try_run = |api: &std::path::Path| -> String {
        let mut refused = Instance::new();
        refused.api = api.to_owned();
        let output = refused.run(&ns, &ifaces, &[]).output().expect("run lb");
        assert!(
            !output.status.success(),
            "lb run accepted {}",
            api.display()
        );
        assert!(!refused.pin_dir.exists(), "nothing was loaded or pinned");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let dir = |name: &str, mode: u32, owner: u32| {
        let dir = instance.state.with_file_name(name);
        std::fs::create_dir(&dir).expect("create a directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
        chown(&dir, Some(owner), Some(owner)).expect("chown");
        dir
    };

    let file = dir("file", 0o700, 0).join("lb.sock");
    std::fs::write(&file, b"not a socket").expect("write");
    let stderr = try_run(&file);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&file).expect("still there"), b"not a socket");

    let foreign = dir("foreign", 0o700, 0).join("lb.sock");
    drop(std::os::unix::net::UnixListener::bind(&foreign).expect("a stale socket"));
    chown(&foreign, Some(NOBODY), Some(NOBODY)).expect("chown the socket");
    let stderr = try_run(&foreign);
    assert!(
        stderr.contains(&format!("owned by uid {NOBODY}")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::symlink_metadata(&foreign).expect("kept").uid(),
        NOBODY
    );

    let open_dir = dir("open", 0o777, 0);
    let stderr = try_run(&open_dir.join("lb.sock"));
    assert!(stderr.contains("writable by other users"), "{stderr}");
    let their_dir = dir("theirs", 0o700, NOBODY);
    let stderr = try_run(&their_dir.join("lb.sock"));
    assert!(stderr.contains("is owned by uid 65534"), "{stderr}");
    for refused in [&open_dir, &their_dir] {
        assert_eq!(std::fs::read_dir(refused).expect("list").count(), 0);
    }
}

/// The temporary files beside a state file.
fn temporary_files(state: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(state.parent().expect("dir"))
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}
