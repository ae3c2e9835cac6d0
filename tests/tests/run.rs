//! `lb run` as an operator runs it: attached to a veth in a namespace, counting real traffic,
//! and refusing clearly when it cannot work. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use lb_tests::process::{Daemon, Instance, lb_binary, stat_packets};

const READY: &str = "lb: forwarding on";
const STARTUP: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon pins removed under a running daemon are back, as README and
/// docs/RELIABILITY.md promise (its pin check runs every 2 s).
const REPIN_PROMISED: Duration = Duration::from_secs(2);
/// On top of the promise: the check's own work and a busy 2-CPU test machine.
const REPIN_MARGIN: Duration = Duration::from_secs(1);

use lb_tests::pair::PairLab as Lab;

#[test]
fn counts_real_traffic_keeps_forwarding_after_sigterm_and_lb_down_detaches() {
    lb_tests::require_root!();
    const UDP_DATAGRAMS: u64 = 200;
    const TCP_CONNECTIONS: u64 = 50;
    let lab = Lab::new();
    let mut daemon = Daemon::start(lab.lb_run(&["--xdp-mode", "native", "--stats-interval", "1"]));
    assert!(lab.lb.has_xdp(), "the program is attached while lb runs");

    let (udp_server, tcp_server) = lab.lb.enter(|| {
        (
            UdpSocket::bind("198.18.0.2:9000").expect("bind udp"),
            TcpListener::bind("198.18.0.2:9001").expect("bind tcp"),
        )
    });
    let echo = std::thread::spawn(move || {
        for _ in 0..TCP_CONNECTIONS {
            let (mut stream, _) = tcp_server.accept().expect("accept");
            stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut buffer = [0u8; 5];
            stream.read_exact(&mut buffer).expect("read request");
            stream.write_all(&buffer).expect("echo");
        }
    });
    lab.client.enter(|| {
        let socket = UdpSocket::bind("198.18.0.1:0").expect("bind client udp");
        for i in 0..UDP_DATAGRAMS {
            socket
                .send_to(&i.to_be_bytes(), "198.18.0.2:9000")
                .expect("send udp");
        }
        let server: SocketAddr = "198.18.0.2:9001".parse().expect("address");
        for _ in 0..TCP_CONNECTIONS {
            let mut stream = TcpStream::connect_timeout(&server, IO_TIMEOUT).expect("connect");
            stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            stream.write_all(b"hello").expect("send");
            let mut reply = [0u8; 5];
            stream
                .read_exact(&mut reply)
                .expect("reply through XDP_PASS");
            assert_eq!(&reply, b"hello");
        }
    });
    echo.join().expect("echo server");
    let received = {
        udp_server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut n = 0u64;
        let mut buffer = [0u8; 8];
        while n < UDP_DATAGRAMS && udp_server.recv(&mut buffer).is_ok() {
            n += 1;
        }
        n
    };
    assert_eq!(received, UDP_DATAGRAMS, "XDP_PASS delivered every datagram");

    // Each TCP connection sends at least SYN, ACK with data, and FIN toward the lb.
    let stats = lab.instance.stats();
    let udp = stat_packets(&stats, "udp");
    let tcp = stat_packets(&stats, "tcp");
    let ipv4 = stat_packets(&stats, "ipv4");
    let passed = stat_packets(&stats, "xdp_pass");
    assert!(
        udp >= UDP_DATAGRAMS,
        "udp {udp} < {UDP_DATAGRAMS}\n{}",
        stats["counters"]
    );
    assert!(
        tcp >= 3 * TCP_CONNECTIONS,
        "tcp {tcp} < {}",
        3 * TCP_CONNECTIONS
    );
    assert!(ipv4 >= udp + tcp, "every UDP and TCP packet was IPv4");
    assert!(passed >= ipv4, "everything was passed");

    // A periodic report (every second) that has seen the UDP traffic, before SIGTERM.
    daemon.wait_for_line("udp ", Duration::from_secs(5));
    let (status, stdout) = daemon.terminate();
    assert!(status.success(), "lb exits 0 on SIGTERM: {status}");
    let at_exit = stdout
        .iter()
        .position(|l| l.starts_with("counters at exit"))
        .map(|i| stdout[i..].to_vec())
        .expect("lb prints its counters at exit");
    assert!(
        at_exit
            .iter()
            .any(|l| l.split_whitespace().next() == Some("udp")),
        "the table at exit lists the udp counter: {at_exit:?}"
    );
    assert!(
        stdout[..stdout.len() - at_exit.len()]
            .iter()
            .any(|l| l.split_whitespace().next() == Some("udp")),
        "periodic reports were printed while running"
    );
    assert!(
        lab.lb.has_xdp(),
        "after SIGTERM the pinned program stays attached"
    );
    assert!(
        stdout.iter().any(|l| l.contains("keeps forwarding")),
        "lb says the datapath stays: {stdout:?}"
    );
    let down = lab.instance.down();
    assert!(down.contains(&lab.lb_if), "{down}");
    assert!(!lab.lb.has_xdp(), "`lb down` detached the program");
    assert!(!lab.instance.pin_dir.exists(), "`lb down` removed the pins");
}

fn run_to_failure(mut command: Command) -> String {
    let output = command.output().expect("run lb");
    assert!(!output.status.success(), "lb must fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn unknown_interface_is_named() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let ifaces = ["lo".to_owned(), "no-such-if0".to_owned()];
    let stderr = run_to_failure(lab.instance.run(&lab.lb, &ifaces, &[]));
    assert!(
        stderr.contains("unknown interface `no-such-if0`"),
        "{stderr}"
    );
    assert!(!lab.lb.has_xdp(), "nothing was attached, not even to lo");
}

#[test]
fn no_interface_names_the_file_that_gives_them() {
    lb_tests::require_root!();
    let lab = Lab::new();
    // As the packaged unit starts it: no --iface, LB_IFACES from /etc/default/lb.
    let without_iface = |ifaces: &str| {
        let mut command = lab.lb.command(lb_binary());
        command
            .arg("--api")
            .arg(&lab.instance.api)
            .arg("run")
            .arg("--pin-dir")
            .arg(&lab.instance.pin_dir)
            .arg("--state")
            .arg(&lab.instance.state)
            .env("LB_IFACES", ifaces);
        run_to_failure(command)
    };
    for empty in ["", "  "] {
        let stderr = without_iface(empty);
        assert!(
            stderr.contains("no interface to attach to")
                && stderr.contains("/etc/default/lb")
                && stderr.contains("--iface <IF>"),
            "LB_IFACES={empty:?}: {stderr}"
        );
    }
    // Names separated by spaces, each one read.
    let stderr = without_iface("lo no-such-if0");
    assert!(
        stderr.contains("unknown interface `no-such-if0`"),
        "{stderr}"
    );
    assert!(!lab.lb.has_xdp(), "nothing was attached");
}

/// A copy of `lb` that any user may run, removed on drop: the checkout may sit in a
/// folder only root can enter (a 0700 home, say), where nobody could run the built binary.
struct WorldExecutable {
    dir: tempfile::TempDir,
}

impl WorldExecutable {
    fn of(binary: &Path) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("lb-any-user-")
            .tempdir()
            .expect("create the copy's folder");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open the folder to everyone");
        let copy = dir.path().join("lb");
        std::fs::copy(binary, &copy).expect("copy lb");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
            .expect("make the copy executable by everyone");
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("lb")
    }
}

#[test]
fn not_root_is_refused_with_advice() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let lb = WorldExecutable::of(&lb_binary());
    // nsenter drops to nobody after joining the namespace.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", lab.lb.path().display()))
        .args(["--setuid", "65534", "--setgid", "65534", "--"])
        .arg(lb.path())
        .args(["run", "--iface", &lab.lb_if]);
    let stderr = run_to_failure(cmd);
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(!lab.lb.has_xdp());
}

#[test]
fn an_interface_with_an_xdp_program_is_not_taken_over() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let first = Daemon::start(lab.lb_run(&["--stats-interval", "0"]));
    for mode in ["auto", "native", "skb"] {
        // A second lb with its own pins and socket still cannot take the interface.
        let other = Instance::new();
        let ifaces = std::slice::from_ref(&lab.lb_if);
        let stderr = run_to_failure(other.run(&lab.lb, ifaces, &["--xdp-mode", mode]));
        assert!(
            stderr.contains("already has an XDP program attached"),
            "{mode}: {stderr}"
        );
    }
    // Nor can a second daemon share the first one's pins, or its socket.
    let stderr = run_to_failure(lab.lb_run(&[]));
    assert!(
        stderr.contains("already listening"),
        "same socket: {stderr}"
    );
    // `lb down` for another pin directory does not take this daemon down.
    let elsewhere = Instance::new();
    let other_dir = elsewhere.pin_dir.to_string_lossy().into_owned();
    lab.instance.ok(&["down", "--pin-dir", &other_dir]);
    assert!(lab.instance.ok(&["status"]).contains("running"));
    assert!(lab.lb.has_xdp());
    let (status, _) = first.terminate();
    assert!(
        status.success(),
        "the first lb kept running and stopped cleanly"
    );
    assert!(lab.lb.has_xdp(), "its pinned program still runs");
    lab.instance.down();
}

#[test]
fn verifier_rejection_shows_the_verifier_log() {
    lb_tests::require_root!();
    let broken = tempfile::Builder::new()
        .prefix("lb-broken-")
        .suffix(".o")
        .tempfile()
        .expect("create the object file");
    std::fs::write(broken.path(), object_with_unreadable_register()).expect("write object");
    let lab = Lab::new();
    let path = broken.path().to_str().expect("utf-8");
    let stderr = run_to_failure(lab.lb_run(&["--bpf-object", path]));
    drop(broken);
    assert!(stderr.contains("verifier rejected"), "{stderr}");
    assert!(
        stderr.contains("R9 !read_ok"),
        "the kernel's own words are shown: {stderr}"
    );
    assert!(!lab.lb.has_xdp());
}

/// The real object with its first instruction replaced by a read through r9, which is never
/// initialised at program entry: the verifier must refuse it.
fn object_with_unreadable_register() -> Vec<u8> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let mut bytes = lb_userspace::datapath::load::OBJECT.to_vec();
    let file = object::File::parse(&*bytes).expect("parse the embedded ELF");
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(lb_common::consts::PROGRAM_NAME))
        .expect("program symbol");
    let section = file
        .section_by_index(symbol.section_index().expect("symbol has a section"))
        .expect("program section");
    let (section_offset, _) = section.file_range().expect("section has file bytes");
    let mut at = (section_offset + symbol.address()) as usize;
    // The program may be one call to its body, a subprogram elsewhere (a BPF_PSEUDO_CALL
    // that the loader relocates, so it must stay): patch the body's first instruction.
    if bytes[at] == 0x85 && bytes[at + 1] >> 4 == 1 {
        let imm = i32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let (_, relocation) = section
            .relocations()
            .find(|(offset, _)| *offset == symbol.address())
            .expect("the call is relocated");
        let object::RelocationTarget::Symbol(index) = relocation.target() else {
            panic!("the call's relocation names a symbol");
        };
        let target = file.symbol_by_index(index).expect("relocation symbol");
        let body = file
            .section_by_index(target.section_index().expect("target has a section"))
            .expect("target section");
        let (body_offset, _) = body.file_range().expect("target section has file bytes");
        at = (body_offset as i64 + target.address() as i64 + (i64::from(imm) + 1) * 8) as usize;
    }
    drop(file);
    // BPF_LDX | BPF_MEM | BPF_DW, dst r0, src r9, offset 0: r0 = *(u64 *)(r9 + 0)
    bytes[at..at + 8].copy_from_slice(&[0x79, 0x90, 0, 0, 0, 0, 0, 0]);
    bytes
}

#[test]
fn an_invalid_config_file_is_refused_with_its_line_and_nothing_attached() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let file = tempfile::Builder::new()
        .prefix("lb-bad-config-")
        .suffix(".toml")
        .tempfile()
        .expect("create the config file");
    let path = file.path().to_owned();
    std::fs::write(
        &path,
        "[[vip]]\naddress = \"198.18.1.1:80\"\nproto = \"sctp\"\n",
    )
    .expect("write config");
    let stderr = run_to_failure(lab.lb_run(&["--config", path.to_str().expect("utf-8")]));
    let untouched = std::fs::read_to_string(&path).expect("config still there");
    drop(file);
    assert!(
        stderr.contains(&path.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:3:", path.display())),
        "names the line: {stderr}"
    );
    assert!(untouched.contains("sctp"), "the file is left as it was");
    assert!(!lab.lb.has_xdp());

    let stderr = run_to_failure(lab.lb_run(&["--table-size", "65536"]));
    assert!(stderr.contains("not a prime"), "{stderr}");
}

#[test]
fn a_pinned_datapath_of_another_layout_or_size_is_refused_not_adopted() {
    lb_tests::require_root!();
    use aya::maps::{Array, Map, MapData};
    use lb_common::{consts::MAP_META, service::Layout};

    let lab = Lab::new();
    let daemon = Daemon::start(lab.lb_run(&[]));
    let (status, _) = daemon.terminate();
    assert!(status.success());
    assert!(lab.lb.has_xdp(), "pinned and still attached");

    let stderr = run_to_failure(lab.lb_run(&["--table-size", "131071"]));
    assert!(
        stderr.contains("created with --table-size 65537, not 131071"),
        "{stderr}"
    );

    // Pretend a future lb pinned these maps.
    let meta = lab.instance.pin_dir.join(MAP_META);
    let mut map = Array::<MapData, Layout>::try_from(Map::Array(
        MapData::from_pin(&meta).expect("pinned META"),
    ))
    .expect("META is an array");
    let layout = map.get(&0, 0).expect("META entry");
    map.set(
        0,
        Layout {
            version: 99,
            ..layout
        },
        0,
    )
    .expect("rewrite META");
    let stderr = run_to_failure(lab.lb_run(&[]));
    assert!(stderr.contains("layout version 99"), "{stderr}");
    assert!(
        stderr.contains("lb down --pin-dir"),
        "says what to do: {stderr}"
    );
    assert!(
        lab.lb.has_xdp(),
        "the refused start left the running datapath alone"
    );

    lab.instance.down();
    assert!(!lab.lb.has_xdp());
}

#[test]
fn pins_removed_under_a_running_daemon_are_put_back() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let daemon = Daemon::start(lab.lb_run(&[]));
    let pinned = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&lab.instance.pin_dir)
            .map(|dir| {
                dir.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let before = pinned();
    assert!(before.iter().any(|n| n.starts_with("link_")), "{before:?}");
    // Everything goes, the directory too (as `rm -r` would; again if a pin check, the
    // first of which runs as the daemon starts, put something back in between).
    for attempt in 1..=3 {
        for name in pinned() {
            // One the daemon removed meanwhile is gone all the same.
            match std::fs::remove_file(lab.instance.pin_dir.join(&name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    panic!("removing pin {name}: {e}")
                }
                _ => {}
            }
        }
        match std::fs::remove_dir(&lab.instance.pin_dir) {
            Ok(()) => break,
            Err(e) => assert!(attempt < 3, "removing the pin directory: {e}"),
        }
    }
    let removed = std::time::Instant::now();
    assert!(
        lab.lb.has_xdp(),
        "the daemon's own handles keep the datapath attached"
    );
    // README and docs/RELIABILITY.md promise "within 2 s" (the daemon checks its pins every
    // 2 s); the margin is for the check's own work and this poll on a busy 2-CPU machine.
    lb_tests::eventually(
        REPIN_PROMISED + REPIN_MARGIN,
        "the removed pins put back",
        || {
            let now = pinned();
            if now == before { Ok(()) } else { Err(now) }
        },
    );
    let took = removed.elapsed();
    // The warning is written in the same check; it reaches us through a pipe.
    let log = daemon.wait_for_log("re-pinned them", 1, Duration::from_secs(5));
    assert!(log.contains("link_"), "says what it re-pinned: {log}");
    // The re-created directory is locked again: a second daemon is refused.
    let mut second = Instance::new();
    let own_pins = std::mem::replace(&mut second.pin_dir, lab.instance.pin_dir.clone());
    let output = second
        .run(&lab.lb, std::slice::from_ref(&lab.lb_if), &[])
        .output()
        .expect("run a second lb");
    // Its own again, so that dropping it cannot remove the first daemon's pins.
    second.pin_dir = own_pins;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("another lb daemon is using"),
        "{stderr}"
    );
    let (status, _) = daemon.terminate();
    assert!(status.success());
    assert!(
        lab.lb.has_xdp(),
        "the re-pinned datapath keeps forwarding after the daemon stops"
    );
    let mut daemon = Daemon::start(lab.lb_run(&[]));
    // Ready; its first line says how it started.
    let ready = daemon.wait_for_line(READY, Duration::from_secs(5));
    assert!(ready.contains("adopted the pinned datapath"), "{ready}");
    eprintln!("pins and their directory removed under a running daemon: put back in {took:?}");
    drop(daemon);
    lab.instance.down();
    assert!(!lab.lb.has_xdp());
}

/// The datagrams a stand-in for systemd received on its notify socket, one per message.
fn notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buffer = [0u8; 4096];
    let n = socket
        .recv(&mut buffer)
        .expect("a notification from lb within the timeout");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

/// Waits (bounded) until `pid` is stopped by SIGSTOP.
fn wait_until_stopped(pid: u32) {
    lb_tests::eventually(
        Duration::from_secs(2),
        &format!("lb (pid {pid}) stopped by SIGSTOP"),
        || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let state = status
                .lines()
                .find(|l| l.starts_with("State:"))
                .map(str::to_owned);
            if state.as_deref().is_some_and(|l| l.starts_with("State:\tT")) {
                Ok(())
            } else {
                Err(state)
            }
        },
    );
}

#[test]
fn tells_systemd_ready_once_attached_and_serving_and_stopping_on_sigterm() {
    use std::os::{linux::net::SocketAddrExt as _, unix::net};
    lb_tests::require_root!();
    let lab = Lab::new();
    // An abstract socket, as systemd sometimes hands out; those live in a network
    // namespace, so it is bound in the daemon's.
    let name = format!("lbt-notify-{}", std::process::id());
    let socket = lab.lb.enter(|| {
        let address = net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        net::UnixDatagram::bind_addr(&address).expect("bind the notify socket")
    });
    socket
        .set_read_timeout(Some(STARTUP))
        .expect("read timeout");
    let mut command = lab.lb_run(&[]);
    command.env("NOTIFY_SOCKET", format!("@{name}"));
    let daemon = Daemon::spawn(command);

    let first = notification(&socket);
    // Frozen on the spot, so what follows is what held when READY=1 was sent.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGSTOP) };
    wait_until_stopped(daemon.pid());
    let lines: Vec<&str> = first.lines().collect();
    assert!(
        lines.contains(&"READY=1"),
        "the first notification is READY=1 (nothing before it): {first:?}"
    );
    assert!(
        lines.contains(&format!("STATUS=forwarding on {}", lab.lb_if).as_str()),
        "READY comes with a status naming the interface: {first:?}"
    );
    assert!(lab.lb.has_xdp(), "the datapath is attached at READY=1");
    let socket_file = std::fs::symlink_metadata(&lab.instance.api).expect("the API socket");
    assert!(
        std::os::unix::fs::FileTypeExt::is_socket(&socket_file.file_type()),
        "the API socket is bound at READY=1"
    );
    // SAFETY: as above.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGCONT) };
    let status = lab.instance.ok(&["status"]);
    assert!(status.contains(&lab.lb_if), "`lb status` answers: {status}");

    let (exit, _) = daemon.terminate();
    assert!(exit.success(), "lb exits 0 on SIGTERM: {exit}");
    let last = notification(&socket);
    assert!(
        last.lines().any(|l| l == "STOPPING=1"),
        "SIGTERM is announced with STOPPING=1: {last:?}"
    );
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buffer = [0u8; 512];
    assert!(
        socket.recv(&mut buffer).is_err(),
        "nothing but READY=1 and STOPPING=1 was sent: also {:?}",
        String::from_utf8_lossy(&buffer)
    );
    assert!(lab.lb.has_xdp(), "stopping the daemon keeps the datapath");
    lab.instance.down();
}

/// The release before source ranges pinned no SOURCE_RANGES: its pins are adopted as they
/// are (same layout version), the missing map is created and pinned at load, and the state
/// file's prefixes are written into it.
#[test]
fn pins_of_the_release_before_source_ranges_are_adopted() {
    lb_tests::require_root!();
    use lb_common::consts::MAP_SOURCE_RANGES;
    let lab = Lab::new();
    let daemon = lab.start(&[]);
    let vip = "198.18.1.1:80";
    lab.instance
        .ok(&["vip", "add", vip, "--allow-source", "198.18.0.0/24"]);
    lab.instance.ok(&["backend", "add", vip, "198.18.0.9:8080"]);
    let (status, _) = daemon.terminate();
    assert!(status.success());
    let pin = lab.instance.pin_dir.join(MAP_SOURCE_RANGES);
    std::fs::remove_file(&pin).expect("SOURCE_RANGES was pinned");

    let daemon = lab.start(&[]);
    assert!(
        pin.exists(),
        "created and pinned when the pins were adopted"
    );
    let listed = lab.instance.ok(&["vip", "list", "--json"]);
    assert!(listed.contains("198.18.0.0/24"), "{listed}");
    let verdict = |client: &str| -> String {
        let answer = lab.instance.ok(&["explain", client, vip, "--json"]);
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
        answer["verdict"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(verdict("198.18.0.1:4000"), "new-flow");
    assert_eq!(verdict("198.18.5.1:4000"), "drop-source-not-allowed");
    lab.instance.down();
    drop(daemon);
}
