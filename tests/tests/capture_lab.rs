//! `lb capture` against the real daemon in namespaces: one flow's packets through a NAT
//! VIP and a dsr-ipip VIP, written to pcapng that tcpdump and tshark read, each packet's
//! comment naming the verdict and the backend; a dropped packet with its reason;
//! `--count` and `--sample` holding. Needs root, tcpdump and tshark (`cargo xtask setup`).

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use lb_tests::{
    client::{http_get, udp_request, udp_request_from_new_port},
    dsr::{self, DsrLab, Wiring},
    process::{Daemon, DecapPaths, Instance, lb_binary},
    servers::{HTTP_PORT, Servers, UDP_PORT},
    topology::{self, Lab},
};

/// How long a capture may take to start or to end.
const LIMIT: Duration = Duration::from_secs(20);

/// A running `lb capture`; killed on drop if it has not ended.
struct Capture {
    child: Child,
    /// Its stderr lines, read by a thread.
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Capture {
    /// `lb capture <args> -w <file>`, returned once it says it captures.
    fn start(instance: &Instance, file: &Path, args: &[&str]) -> Self {
        let file = file.to_string_lossy();
        Self::spawn(instance, &[args, &["-w", &file]].concat(), Stdio::null())
    }

    /// `lb capture <args>` with its stdout to `stdout`, returned once it says it captures.
    fn spawn(instance: &Instance, args: &[&str], stdout: Stdio) -> Self {
        let mut child = Command::new(lb_binary())
            .arg("--api")
            .arg(&instance.api)
            .arg("capture")
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lb capture");
        let stderr: ChildStderr = child.stderr.take().expect("piped stderr");
        let lines = line_by_line(stderr);
        let mut capture = Self {
            child,
            lines,
            seen: Vec::new(),
        };
        capture.wait_for("capturing on");
        capture
    }

    /// Waits (bounded) for a stderr line containing `needle`; the line.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "`lb capture` never said {needle:?}; it said: {:?}",
            self.seen
        );
    }

    /// Waits for it to end by itself (`--count`); its last line.
    fn ended(mut self) -> String {
        let line = self.wait_for("packets captured");
        self.reap();
        line
    }

    /// Ctrl-C, then waits for it to end; its last line.
    fn stop(mut self) -> String {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
        let line = self.wait_for("packets captured");
        self.reap();
        line
    }

    fn reap(&mut self) {
        let deadline = Instant::now() + LIMIT;
        loop {
            match self.child.try_wait().expect("wait for lb capture") {
                Some(status) => {
                    assert!(status.success(), "lb capture: {status}; {:?}", self.seen);
                    return;
                }
                None if Instant::now() > deadline => panic!("lb capture did not exit"),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            lb_tests::cleanup::kill(&mut self.child, "lb capture");
        }
    }
}

/// The lines of a child's output, read by a thread until it ends.
fn line_by_line(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A command's stdout lines; it must succeed.
fn read_with(program: &str, args: &[&str]) -> Vec<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (`cargo xtask setup` installs it): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// tcpdump's one line per packet.
fn tcpdump(file: &Path) -> Vec<String> {
    read_with("tcpdump", &["-nn", "-r", &file.to_string_lossy()])
}

/// tshark's `fields` of each packet, one line per packet (tab between fields).
fn tshark(file: &Path, fields: &[&str]) -> Vec<String> {
    let file = file.to_string_lossy();
    let mut args = vec!["-r", &file, "-T", "fields"];
    for field in fields {
        args.extend(["-e", field]);
    }
    read_with("tshark", &args)
}

/// tshark's packet comments, one per packet, in order.
fn comments(file: &Path) -> Vec<String> {
    tshark(file, &["frame.comment"])
}

/// The number in `lb capture: N packets captured, M lost ...`.
fn captured(line: &str) -> (u64, u64) {
    let number = |before: &str| -> u64 {
        let end = line
            .find(before)
            .unwrap_or_else(|| panic!("no {before:?}: {line}"));
        line[..end]
            .split_whitespace()
            .last()
            .and_then(|word| word.trim_matches(',').parse().ok())
            .unwrap_or_else(|| panic!("no count before {before:?}: {line}"))
    };
    (number(" packets captured"), number(" lost"))
}

/// `count` UDP requests through `vip`, each from a new port (a new flow), each answered.
fn udp_requests(lab: &Lab, vip: SocketAddr, count: usize) {
    for _ in 0..count {
        lab.client
            .enter(|| udp_request_from_new_port(topology::CLIENT_V4.into(), vip))
            .expect("an answer");
    }
}

fn instance_file(instance: &Instance, name: &str) -> PathBuf {
    instance.state.with_file_name(name)
}

#[test]
fn a_nat_flow_is_captured_both_ways_with_what_lb_did_and_drops_say_why() {
    lb_tests::require_root!();
    let lab = Lab::new("lbcap", 2);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(topology::VIP_V4.into(), HTTP_PORT);
    let udp_vip = SocketAddr::new(topology::VIP_V4.into(), UDP_PORT);
    // Port 80 of the VIP takes no client of this lab: its SYNs are dropped.
    let refused = SocketAddr::new(topology::VIP_V4.into(), 80);
    instance.ok(&["vip", "add", &vip.to_string()]);
    instance.ok(&["vip", "add", &udp_vip.to_string(), "--proto", "udp"]);
    instance.ok(&[
        "vip",
        "add",
        &refused.to_string(),
        "--allow-source",
        "198.19.0.0/16",
    ]);
    let backends: Vec<SocketAddr> = lab
        .backends
        .iter()
        .map(|b| SocketAddr::new(b.v4.into(), HTTP_PORT))
        .collect();
    for backend in &backends {
        instance.ok(&["backend", "add", &vip.to_string(), &backend.to_string()]);
        let udp = SocketAddr::new(backend.ip(), UDP_PORT).to_string();
        instance.ok(&[
            "backend",
            "add",
            &udp_vip.to_string(),
            &udp,
            "--proto",
            "udp",
        ]);
    }

    // First requests until each backend answered resolve the neighbours (until then lb
    // rewrites a packet and leaves it to the kernel: pass_no_neighbour); then one HTTP
    // request through the NAT VIP, captured until Ctrl-C.
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..64 {
        if answered.len() == lab.backends.len() {
            break;
        }
        answered.insert(lab.client.enter(|| http_get(vip)).expect("an answer"));
    }
    assert_eq!(
        answered.len(),
        lab.backends.len(),
        "each backend answered once"
    );
    let file = instance_file(&instance, "nat.pcapng");
    let capture = Capture::start(&instance, &file, &["--vip", &vip.to_string()]);
    let answer = lab
        .client
        .enter(|| http_get(vip))
        .expect("an answer through the VIP");
    let (count, lost) = captured(&capture.stop());
    assert_eq!(lost, 0);
    let packets = tcpdump(&file);
    let notes = comments(&file);
    assert_eq!(packets.len(), notes.len(), "{packets:#?}");
    // Each packet lb sent on is there twice: as received and as sent.
    let received = notes.iter().filter(|c| c.contains("lb: received")).count();
    let sent = notes.iter().filter(|c| c.contains("lb: sent")).count();
    assert_eq!(received as u64, count, "{notes:#?}");
    assert_eq!(
        sent, received,
        "every packet of the flow was sent on: {notes:#?}"
    );
    assert!(
        count >= 6,
        "a handshake, a request, an answer, a close: {notes:#?}"
    );
    let answered = lab
        .backends
        .iter()
        .position(|b| answer.contains(&b.name))
        .unwrap_or_else(|| panic!("{answer:?} names no backend"));
    let backend = backends[answered];
    for note in &notes {
        assert!(note.contains("verdict redirect"), "{note}");
        assert!(note.contains(&format!("backend {backend}")), "{note}");
        assert!(note.contains("mode nat"), "{note}");
        assert!(note.contains(&format!("vip {vip}/tcp")), "{note}");
        assert!(
            note.contains("conntrack ") && note.contains("table "),
            "{note}"
        );
    }
    assert!(
        notes.iter().any(|n| n.contains("reason fwd_new_flow")),
        "{notes:#?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("reason fwd_reply")),
        "{notes:#?}"
    );
    // tcpdump shows the client's packet to the VIP, then the same packet to the backend.
    let client_to_vip = format!("{}.", topology::CLIENT_V4);
    assert!(
        packets[0].contains(&client_to_vip)
            && packets[0].contains(&format!("{}.{HTTP_PORT}", topology::VIP_V4)),
        "{}",
        packets[0]
    );
    assert!(
        packets[1].contains(&format!("{}.{HTTP_PORT}", backend.ip())),
        "{}",
        packets[1]
    );

    // A dropped SYN appears with its reason; --count ends the capture by itself.
    let file = instance_file(&instance, "drops.pcapng");
    let capture = Capture::start(&instance, &file, &["--drops", "--count", "1"]);
    let refused_by_lb = lab
        .client
        .enter(|| std::net::TcpStream::connect_timeout(&refused, Duration::from_millis(300)));
    assert!(refused_by_lb.is_err(), "the SYN is dropped");
    let (count, _) = captured(&capture.ended());
    assert_eq!(count, 1, "--count 1");
    let notes = comments(&file);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("verdict drop"), "{}", notes[0]);
    assert!(
        notes[0].contains("reason drop_source_not_allowed"),
        "{}",
        notes[0]
    );
    assert!(
        notes[0].contains(&format!("vip {refused}/tcp")),
        "{}",
        notes[0]
    );
    assert_eq!(tcpdump(&file).len(), 1);

    // --count holds under more traffic than it asks for.
    let file = instance_file(&instance, "count.pcapng");
    let capture = Capture::start(
        &instance,
        &file,
        &["--vip", &udp_vip.to_string(), "--count", "5"],
    );
    udp_requests(&lab, udp_vip, 10);
    assert_eq!(captured(&capture.ended()).0, 5);
    assert_eq!(
        comments(&file).len(),
        10,
        "5 packets, each as received and as sent"
    );

    // --sample 1/4: about one in four of 40 requests and their 40 answers (per CPU: each
    // CPU keeps every fourth it sees, so two CPUs may keep one more or one less each).
    let file = instance_file(&instance, "sample.pcapng");
    let capture = Capture::start(
        &instance,
        &file,
        &["--vip", &udp_vip.to_string(), "--sample", "1/4"],
    );
    udp_requests(&lab, udp_vip, 40);
    let (count, lost) = captured(&capture.stop());
    assert_eq!(lost, 0);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    assert!(
        count.abs_diff(80 / 4) <= cpus,
        "{count} of 80 kept with --sample 1/4 on {cpus} CPUs"
    );
    assert_eq!(comments(&file).len() as u64, 2 * count);
}

#[test]
fn a_dsr_ipip_flow_is_captured_with_its_outer_header() {
    lb_tests::require_root!();
    let lab = DsrLab::new("lbcd", Wiring::Routed, 2);
    let instance = Instance::new();
    let _daemon = Daemon::start(instance.run(&lab.lb, std::slice::from_ref(&lab.lb_iface), &[]));
    let vip = SocketAddr::new(IpAddr::from(dsr::VIP_V4), UDP_PORT);
    let vip_arg = vip.to_string();
    instance.ok(&[
        "vip", "add", &vip_arg, "--proto", "udp", "--mode", "dsr-ipip",
    ]);
    for backend in &lab.backends {
        let addr = SocketAddr::new(backend.v4.into(), UDP_PORT).to_string();
        instance.ok(&["backend", "add", &vip_arg, &addr, "--proto", "udp"]);
    }
    let _decap = DecapPaths::attach_all(&lab.backends, vip.ip(), &format!("{}/32", dsr::LB_V4));
    let _servers = Servers::start_on_vips(&lab.backends, &[vip.ip()]);
    let file = instance_file(&instance, "dsr.pcapng");
    let capture = Capture::start(&instance, &file, &["--vip", &vip_arg, "--count", "1"]);
    let name = lab
        .client
        .enter(|| udp_request(SocketAddr::new(dsr::CLIENT_V4.into(), 0), vip))
        .expect("an answer from the VIP");
    assert_eq!(captured(&capture.ended()).0, 1);
    let backend = lab
        .backends
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no backend {name}"));
    let notes = comments(&file);
    assert_eq!(notes.len(), 2, "received and sent: {notes:?}");
    for note in &notes {
        assert!(note.contains("mode dsr-ipip"), "{note}");
        assert!(note.contains("verdict redirect"), "{note}");
        assert!(
            note.contains(&format!("backend {}:{UDP_PORT}", backend.v4)),
            "{note}"
        );
    }
    // As received: UDP to the VIP; as sent: the same datagram inside IPv4 to the backend.
    let protos = tshark(&file, &["ip.proto", "ip.dst"]);
    assert_eq!(protos[0], format!("17\t{}", dsr::VIP_V4), "{protos:?}");
    assert_eq!(
        protos[1],
        format!("4,17\t{},{}", backend.v4, dsr::VIP_V4),
        "{protos:?}"
    );
}

/// One raw API request line on the daemon's socket; the first answer line, parsed.
fn api_request(instance: &Instance, line: &str) -> serde_json::Value {
    use std::io::Write as _;
    let mut socket = std::os::unix::net::UnixStream::connect(&instance.api).expect("the API");
    socket
        .set_read_timeout(Some(LIMIT))
        .expect("a read timeout");
    socket.write_all(line.as_bytes()).expect("send");
    let mut answer = String::new();
    BufReader::new(socket)
        .read_line(&mut answer)
        .expect("an answer");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
}

#[test]
fn bad_captures_are_refused_with_a_reason_and_one_runs_at_a_time() {
    lb_tests::require_root!();
    let lab = Lab::new("lbcb", 1);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    let vip = SocketAddr::new(topology::VIP_V4.into(), HTTP_PORT).to_string();
    instance.ok(&["vip", "add", &vip]);
    let file = instance_file(&instance, "refused.pcapng");
    let file_arg = file.to_string_lossy().into_owned();
    // The CLI refuses what it can tell is wrong, before asking the daemon.
    for (args, says) in [
        (vec!["--sample", "0"], "sample"),
        (vec!["--sample", "1/x"], "sample"),
        (vec!["--snaplen", "0"], "snaplen"),
        (vec!["--snaplen", "70000"], "snaplen"),
        (vec!["--count", "0"], "count"),
        (vec!["--vip", "198.18.1.1"], "vip"),
        (vec!["--client", "198.18.0.1/33"], "client"),
    ] {
        let mut all = vec!["capture"];
        all.extend(&args);
        all.extend(["-w", &file_arg]);
        let error = instance.fails(&all);
        assert!(error.contains(says), "{args:?}: {error}");
        assert!(!file.exists(), "{args:?} wrote a file");
    }
    // The daemon refuses what only it can tell, with a code.
    let unknown = instance.fails(&["capture", "--vip", "198.18.1.1:9", "-w", &file_arg]);
    assert!(unknown.contains("no VIP 198.18.1.1:9"), "{unknown}");
    assert!(!file.exists());
    for (line, code) in [
        (r#"{"op":"capture","sample":0}"#, "bad_request"),
        (r#"{"op":"capture","snaplen":4096}"#, "bad_request"),
        (r#"{"op":"capture","count":0}"#, "bad_request"),
        (r#"{"op":"capture","vip":"198.18.1.1:9"}"#, "unknown_vip"),
        (
            r#"{"op":"capture","backend":"198.18.9.9:80"}"#,
            "unknown_backend",
        ),
        (
            r#"{"op":"capture","client":"198.18.0.1/40"}"#,
            "bad_request",
        ),
        (r#"{"op":"capture","verbose":true}"#, "bad_request"),
    ] {
        let answer = api_request(&instance, &format!("{line}\n"));
        assert_eq!(answer["ok"], false, "{line}: {answer}");
        assert_eq!(answer["code"], code, "{line}: {answer}");
    }
    // Nothing changed: no program swapped in, the next capture starts.
    let capture = Capture::start(&instance, &file, &["--vip", &vip]);
    // A second capture while one runs is refused, and the first one goes on.
    let busy = instance.fails(&["capture", "-w", &file_arg]);
    assert!(busy.contains("another `lb capture` is running"), "{busy}");
    let answer = lab.client.enter(|| http_get(vip.parse().expect("VIP")));
    assert!(
        answer.is_err(),
        "no backend: the SYN is dropped ({answer:?})"
    );
    let (count, lost) = captured(&capture.stop());
    assert!(count >= 1 && lost == 0, "the first capture saw the SYN");
    // Once it ended, lb is back in the link: another capture may start.
    drop(Capture::start(&instance, &file, &[]));
}

/// The name of the XDP program attached to `iface` in `ns` (`ip -d -j link`).
fn xdp_program(ns: &lb_tests::netns::NetNs, iface: &str) -> String {
    let output = ns
        .command("ip")
        .args(["-d", "-j", "link", "show", "dev", iface])
        .output()
        .expect("run ip");
    let links: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("ip -j prints JSON");
    links[0]["xdp"]["prog"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no XDP program on {iface}: {links}"))
        .to_owned()
}

#[test]
fn a_daemon_that_stops_during_a_capture_puts_lb_back_in_the_links() {
    lb_tests::require_root!();
    let lab = Lab::new("lbcs", 1);
    let instance = Instance::new();
    let daemon = instance.start(&lab, &[]);
    let iface = &lab.lb_ifaces[0];
    assert_eq!(xdp_program(&lab.lb, iface), "lb");
    let file = instance_file(&instance, "stopped.pcapng");
    let _capture = Capture::start(&instance, &file, &[]);
    assert_eq!(xdp_program(&lab.lb, iface), "lb_capture", "swapped in");
    let (status, _) = daemon.terminate();
    assert!(status.success(), "the daemon stopped cleanly: {status}");
    // The pinned link forwards on without the daemon, with the plain program.
    assert_eq!(
        xdp_program(&lab.lb, iface),
        "lb",
        "swapped back as it stopped"
    );
}

#[test]
fn a_stream_on_stdout_is_read_by_tcpdump_while_the_capture_runs() {
    lb_tests::require_root!();
    let lab = Lab::new("lbcw", 1);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(topology::VIP_V4.into(), HTTP_PORT);
    instance.ok(&["vip", "add", &vip.to_string()]);
    let backend = SocketAddr::new(lab.backends[0].v4.into(), HTTP_PORT);
    instance.ok(&["backend", "add", &vip.to_string(), &backend.to_string()]);
    let mut capture = Capture::spawn(
        &instance,
        &["--vip", &vip.to_string(), "-w", "-"],
        Stdio::piped(),
    );
    let stream = capture.child.stdout.take().expect("piped stdout");
    let mut tcpdump = Command::new("tcpdump")
        .args(["-nn", "-l", "-r", "-"])
        .stdin(Stdio::from(stream))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run tcpdump (`cargo xtask setup` installs it)");
    let lines = line_by_line(tcpdump.stdout.take().expect("piped stdout"));
    lab.client
        .enter(|| http_get(vip))
        .expect("an answer through the VIP");
    // tcpdump prints the SYN to the VIP while the capture still runs.
    let to_vip = format!("> {}.{HTTP_PORT}", topology::VIP_V4);
    let first = lines
        .recv_timeout(LIMIT)
        .expect("tcpdump printed a packet of the live stream");
    assert!(first.contains(&to_vip), "{first}");
    assert!(
        matches!(capture.child.try_wait(), Ok(None)),
        "the capture was still running"
    );
    let (count, _) = captured(&capture.stop());
    // The stream's end ends tcpdump (and a panic above kills lb, which ends it too).
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = tcpdump.try_wait().expect("wait for tcpdump") {
            break status;
        }
        if Instant::now() > deadline {
            lb_tests::cleanup::kill(&mut tcpdump, "tcpdump");
            panic!("tcpdump did not end with the stream");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "tcpdump: {status}");
    let rest: Vec<String> = lines.try_iter().collect();
    assert_eq!(1 + rest.len() as u64, 2 * count, "{first} {rest:#?}");
}

#[test]
fn a_capture_whose_client_is_killed_mid_stream_ends_and_lb_goes_back() {
    lb_tests::require_root!();
    let lab = Lab::new("lbck", 1);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(topology::VIP_V4.into(), UDP_PORT);
    instance.ok(&["vip", "add", &vip.to_string(), "--proto", "udp"]);
    let backend = SocketAddr::new(lab.backends[0].v4.into(), UDP_PORT);
    instance.ok(&[
        "backend",
        "add",
        &vip.to_string(),
        &backend.to_string(),
        "--proto",
        "udp",
    ]);
    let iface = &lab.lb_ifaces[0];
    let file = instance_file(&instance, "killed.pcapng");
    let mut capture = Capture::start(&instance, &file, &["--vip", &vip.to_string()]);
    // Traffic while the client dies, so that the daemon may be writing records when its
    // socket goes: either way the capture must end.
    udp_requests(&lab, vip, 20);
    lb_tests::eventually(
        LIMIT,
        "records reach the file",
        || match std::fs::metadata(&file).map(|m| m.len()) {
            Ok(len) if len > 1_000 => Ok(()),
            other => Err(other.map_err(|e| e.to_string())),
        },
    );
    std::thread::scope(|scope| {
        scope.spawn(|| udp_requests(&lab, vip, 100));
        lb_tests::cleanup::kill(&mut capture.child, "lb capture");
    });
    lb_tests::eventually(LIMIT, "lb back in the link", || {
        match xdp_program(&lab.lb, iface) {
            name if name == "lb" => Ok(()),
            other => Err(other),
        }
    });
    // The ring came back: another capture starts and records.
    let capture = Capture::start(
        &instance,
        &file,
        &["--vip", &vip.to_string(), "--count", "2"],
    );
    udp_requests(&lab, vip, 2);
    assert_eq!(captured(&capture.ended()).0, 2);
}
