//! `lb capture` as a process, against a daemon played by the test on a socket of its own:
//! the stop on Ctrl-C and what follows it, a daemon that ignores the stop or goes away, a
//! reader of `-w -` that goes away, a refusal. (The daemon's side, with real packets, is the
//! lab's capture test.)

use std::{
    borrow::Cow,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use pcap_file::pcapng::{Block, PcapNgReader, blocks::enhanced_packet::EnhancedPacketOption};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};

/// Longest any step may take before the test gives up on it.
const BOUND: Duration = Duration::from_secs(15);

/// The daemon's side of one connection.
struct Peer {
    lines: BufReader<UnixStream>,
    out: UnixStream,
}

impl Peer {
    fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.lines.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("a JSON line from lb")),
        }
    }

    fn send(&mut self, value: &Value) -> std::io::Result<()> {
        self.out.write_all(format!("{value}\n").as_bytes())
    }

    fn started(&mut self) {
        let request = self.read().expect("a request");
        assert_eq!(request["op"], "capture", "{request}");
        self.send(&json!({"ok": true, "version": 1, "result": {
            "interfaces": [{"name": "eth0", "ifindex": 2}],
            "snaplen": 2048,
            "filter": "vip 198.18.0.1:80",
        }}))
        .expect("answer");
    }

    fn packet(&mut self, n: u64) -> std::io::Result<()> {
        self.send(&json!({"packet": {
            "time_ns": 1_800_000_000_000_000_000u64 + n,
            "ifindex": 2,
            "verdict": "tx",
            "reason": "fwd_new_flow",
            "vip": "198.18.0.1:80/tcp",
            "backend": "198.18.1.2:80",
            "mode": "nat",
            "conntrack": "opening, unproven",
            "cpu": 0,
            "received_len": 60,
            "received": STANDARD.encode([0xaa; 60]),
            "sent_len": 60,
            "sent": STANDARD.encode([0xbb; 60]),
        }}))
    }

    fn end(&mut self, captured: u64, lost: u64) {
        self.send(&json!({"end": {"captured": captured, "lost": lost, "why": "stopped"}}))
            .expect("end");
    }
}

/// A daemon that plays `script` on the first connection; its result comes back on the
/// receiver.
fn daemon<T: Send + 'static>(
    dir: &Path,
    script: impl FnOnce(Peer) -> T + Send + 'static,
) -> (PathBuf, mpsc::Receiver<T>) {
    let socket = dir.join("lb.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(BOUND)).expect("timeout");
        let out = stream.try_clone().expect("clone");
        let peer = Peer {
            lines: BufReader::new(stream),
            out,
        };
        done.send(script(peer)).unwrap_or_default();
    });
    (socket, result)
}

fn lb(socket: &Path, args: &[&str], stdout: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lb"))
        .arg("--api")
        .arg(socket)
        .arg("capture")
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lb")
}

/// `lb capture <extra> -w <dir>/out.pcapng`, and the file's path.
fn capture_to_file(socket: &Path, dir: &Path, extra: &[&str]) -> (Child, PathBuf) {
    let file = dir.join("out.pcapng");
    let mut args = extra.to_vec();
    args.extend(["-w", file.to_str().expect("utf-8")]);
    (lb(socket, &args, Stdio::null()), file)
}

/// Reads `child`'s stderr until a line contains `wanted`; the lines read.
fn stderr_until(child: &mut Child, wanted: &str) -> String {
    let stderr = child.stderr.as_mut().expect("stderr");
    let mut read = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&read).contains(wanted) {
        match stderr.read(&mut byte) {
            Ok(1) => read.push(byte[0]),
            _ => panic!(
                "lb's stderr ended without `{wanted}`: {}",
                String::from_utf8_lossy(&read)
            ),
        }
    }
    String::from_utf8_lossy(&read).into_owned()
}

/// Waits (bounded) for `child` to exit: its status, the rest of its stderr, how long.
fn finished(mut child: Child) -> (ExitStatus, String, Duration) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > BOUND {
            child.kill().unwrap_or_default();
            panic!("lb capture did not exit within {BOUND:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("stderr");
    }
    (status, stderr, start.elapsed())
}

fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(child.id() as i32).expect("a pid");
    kill_process(pid, signal).expect("a signal");
}

/// The comments of the file's packet blocks, in order.
fn packet_comments(file: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).expect("the capture file");
    let mut reader = PcapNgReader::new(&bytes[..]).expect("a pcapng section");
    let mut comments = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(epb) = block.expect("a valid block") {
            for option in epb.options {
                if let EnhancedPacketOption::Comment(Cow::Borrowed(c)) = option {
                    comments.push(c.to_owned());
                }
            }
        }
    }
    comments
}

#[test]
fn ctrl_c_asks_the_daemon_to_stop_and_writes_what_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, stopped) = daemon(dir.path(), |mut peer| {
        peer.started();
        peer.packet(1).expect("packet");
        peer.packet(2).expect("packet");
        let stop = peer.read();
        // What the datapath had in flight still comes, then the end.
        peer.packet(3).expect("packet");
        peer.end(3, 2);
        stop
    });
    let (mut child, file) = capture_to_file(&socket, dir.path(), &["--vip", "198.18.0.1:80"]);
    let start = stderr_until(&mut child, "Ctrl-C stops");
    assert!(
        start.contains("lb capture: capturing on eth0 (vip 198.18.0.1:80), snaplen 2048"),
        "{start}"
    );
    signal(&child, Signal::INT);
    let (status, stderr, _) = finished(child);
    assert!(status.success(), "{status}: {stderr}");
    let stop = stopped.recv_timeout(BOUND).expect("the daemon's side ran");
    assert_eq!(stop, Some(json!({"stop": {}})), "the stop line");
    assert!(
        stderr.contains(
            "lb capture: 3 packets captured, 2 lost (stopped): the reader did not keep up"
        ),
        "{stderr}"
    );
    let comments = packet_comments(&file);
    assert_eq!(comments.len(), 6, "3 packets, as received and as sent");
    assert!(
        comments[0].starts_with("lb: received; verdict tx; reason fwd_new_flow"),
        "{comments:?}"
    );
    assert!(comments[5].starts_with("lb: sent;"), "{comments:?}");
}

#[test]
fn a_daemon_that_does_not_answer_the_stop_is_given_5_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, held) = daemon(dir.path(), |mut peer| {
        peer.started();
        peer.packet(1).expect("packet");
        let stop = peer.read();
        // Holds the connection, silent, until lb cuts it.
        let after = peer.read();
        (stop, after)
    });
    let (mut child, file) = capture_to_file(&socket, dir.path(), &[]);
    stderr_until(&mut child, "Ctrl-C stops");
    // SIGTERM (systemd, kill) as Ctrl-C.
    signal(&child, Signal::TERM);
    let (status, stderr, took) = finished(child);
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("the daemon did not end the capture within 5 s of the stop"),
        "{stderr}"
    );
    assert!(took >= Duration::from_secs(4), "gave up after {took:?}");
    let (stop, after) = held.recv_timeout(BOUND).expect("the daemon's side ran");
    assert_eq!(stop, Some(json!({"stop": {}})));
    assert_eq!(after, None, "the connection is closed");
    assert_eq!(
        packet_comments(&file).len(),
        2,
        "the packet before the stop"
    );
}

#[test]
fn a_daemon_that_goes_away_without_the_end_line_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, _) = daemon(dir.path(), |mut peer| {
        peer.started();
        peer.packet(1).expect("packet");
    });
    let (child, file) = capture_to_file(&socket, dir.path(), &[]);
    let (status, stderr, _) = finished(child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the daemon ended the capture without saying why"),
        "{stderr}"
    );
    assert_eq!(packet_comments(&file).len(), 2, "the packet before is kept");
}

#[test]
fn a_reader_of_stdout_that_goes_away_stops_the_capture_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, stopped) = daemon(dir.path(), |mut peer| {
        peer.started();
        // Packets until the stop (or lb's end), bounded.
        let start = Instant::now();
        peer.lines
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        for n in 0.. {
            if peer.packet(n).is_err() {
                // The client sent its stop and went away before this write: the stop
                // line waits in the socket.
                return peer.read();
            }
            if start.elapsed() > BOUND {
                return None;
            }
            if let Some(line) = peer.read() {
                return Some(line);
            }
        }
        None
    });
    let mut child = lb(&socket, &["-w", "-"], Stdio::piped());
    let mut stdout = child.stdout.take().expect("stdout");
    let mut header = [0u8; 4];
    stdout.read_exact(&mut header).expect("the stream starts");
    assert_eq!(header, [0x0a, 0x0d, 0x0d, 0x0a], "a pcapng section header");
    drop(stdout);
    let (status, stderr, _) = finished(child);
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("rror"), "quietly: {stderr}");
    let stop = stopped.recv_timeout(BOUND).expect("the daemon's side ran");
    assert_eq!(stop, Some(json!({"stop": {}})), "the stop line");
}

#[test]
fn a_refused_capture_writes_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, _) = daemon(dir.path(), |mut peer| {
        peer.read().expect("a request");
        peer.send(&json!({"ok": false, "version": 1, "code": "bad_request",
                          "error": "a capture is running already"}))
            .expect("answer");
    });
    let (child, file) = capture_to_file(&socket, dir.path(), &[]);
    let (status, stderr, _) = finished(child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a capture is running already [bad_request]"),
        "{stderr}"
    );
    assert!(!file.exists(), "nothing written for a refused capture");
}
