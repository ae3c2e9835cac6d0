//! `lb capture ... -w FILE|-`: packets as lb received and sent them, from the daemon's
//! capture stream into a pcapng file, or a live pcapng stream on stdout. Ctrl-C and SIGTERM
//! ask the daemon to stop, and the packets still on their way are written before the end.

use std::{
    fs::File,
    io::{self, BufRead as _, BufWriter, IsTerminal as _, Read as _, Write},
    net::{Shutdown, SocketAddr},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::Args;
use lb_common::capture::CAPTURE_SNAPLEN_MAX;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    api::{
        client,
        wire::{CaptureControl, CaptureEvent, CaptureStarted, Request},
    },
    cli::{
        output::StdoutClosed,
        pcapng::{self, CaptureFileError, PcapngStream},
    },
    model::prefix::Prefix,
};

/// How long the daemon has, after the stop, to send its last packets and the `end` line.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Longest capture line read: two copies of a packet at the largest snaplen, in base64,
/// and the fields around them fit many times over.
const MAX_LINE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Args)]
pub(crate) struct CaptureArgs {
    /// Only packets of this VIP: client-to-VIP packets and its replies (ADDRESS:PORT).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_address)]
    pub(crate) vip: Option<SocketAddr>,
    /// Only packets to and from this backend (ADDRESS:PORT).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_address)]
    pub(crate) backend: Option<SocketAddr>,
    /// Only packets of clients in this prefix (198.18.0.0/24, fd00::/64; an address alone
    /// is one client).
    #[arg(long, value_name = "PREFIX", value_parser = parse_client)]
    pub(crate) client: Option<Prefix>,
    /// Only packets lb dropped, each with the reason it counted.
    #[arg(long)]
    pub(crate) drops: bool,
    /// Keep one in N matching packets (on each CPU), as 1/N or N.
    #[arg(long, value_name = "1/N", default_value = "1/1", value_parser = parse_sample)]
    pub(crate) sample: u32,
    /// Stop after N packets.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// Bytes kept of each packet, each way (the rest is counted in its length only).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = CAPTURE_SNAPLEN_MAX,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(CAPTURE_SNAPLEN_MAX))
    )]
    pub(crate) snaplen: u32,
    /// Write pcapng here (created or truncated), or `-` for a live stream on stdout:
    /// `lb capture -w - | tcpdump -nr -`.
    #[arg(short = 'w', long = "write", value_name = "FILE|-", value_parser = parse_output)]
    pub(crate) write: Output,
}

/// Where the capture goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    Stdout,
    File(PathBuf),
}

/// ADDRESS:PORT of a VIP or backend: a port, since a VIP is an address and a port.
fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let address: SocketAddr = text.parse().map_err(|_| {
        format!("`{text}` is not ADDRESS:PORT (e.g. 198.18.0.10:80, or [fd00::10]:80 for IPv6)")
    })?;
    if address.port() == 0 {
        return Err(format!(
            "`{text}` has port 0: give the port the VIP or backend serves"
        ));
    }
    Ok(address)
}

fn parse_client(text: &str) -> Result<Prefix, String> {
    text.parse()
        .map_err(|e: crate::model::prefix::PrefixError| e.to_string())
}

/// `--sample 1/N` or `--sample N`: one in N, N from 1.
pub(crate) fn parse_sample(text: &str) -> Result<u32, String> {
    let wrong = || {
        format!(
            "`{text}` is not a sample rate: give 1/N or N, N a whole number from 1 to {} \
             (1/10 keeps one packet in ten)",
            u32::MAX
        )
    };
    let n = match text.trim().split_once('/') {
        Some((one, n)) if one.trim() == "1" => n,
        Some((_, _)) => {
            return Err(format!(
                "`{text}`: only one in N can be sampled, as 1/N (e.g. 1/10)"
            ));
        }
        None => text,
    };
    match n.trim().parse::<u32>() {
        Ok(0) | Err(_) => Err(wrong()),
        Ok(n) => Ok(n),
    }
}

/// `-w FILE|-`; a directory is refused now, before the daemon starts a capture.
fn parse_output(text: &str) -> Result<Output, String> {
    if text == "-" {
        return Ok(Output::Stdout);
    }
    if text.is_empty() {
        return Err("an empty path: give a file to write the capture to, or - for stdout".into());
    }
    let path = PathBuf::from(text);
    if path.is_dir() {
        return Err(format!(
            "`{text}` is a directory: give a file to write the capture to (e.g. \
             {}/lb.pcapng), or - for stdout",
            text.trim_end_matches('/')
        ));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent.filter(|p| !p.is_dir()) {
        return Err(format!(
            "`{text}`: there is no directory {}",
            parent.display()
        ));
    }
    Ok(Output::File(path))
}

impl CaptureArgs {
    fn request(&self) -> Request {
        Request::Capture {
            vip: self.vip,
            backend: self.backend,
            client: self.client,
            drops: self.drops,
            sample: self.sample,
            count: self.count,
            snaplen: self.snaplen,
        }
    }
}

/// Nanoseconds since the Unix epoch, as the daemon stamps packets.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A line on stderr, which is the person's: stdout may be the capture. Best effort, as
/// [`crate::cli::output::note`].
fn say(text: &str) {
    writeln!(io::stderr(), "lb capture: {text}").unwrap_or_default();
}

pub(crate) fn run(socket: &Path, args: CaptureArgs) -> anyhow::Result<()> {
    if args.write == Output::Stdout && io::stdout().is_terminal() {
        bail!(
            "stdout is a terminal, and pcapng is binary: pipe it to a reader \
             (`lb capture -w - | tcpdump -nr -`) or give a file (-w FILE)"
        );
    }
    let stream = client::open_stream(socket, &args.request())?;
    let started: CaptureStarted =
        serde_json::from_value(stream.result).context("the daemon's answer to `capture`")?;
    let out: Box<dyn Write> = match &args.write {
        Output::Stdout => Box::new(io::stdout().lock()),
        Output::File(path) => {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
    };
    let stopper = Arc::new(Stopper::new(stream.control));
    let mut file = match PcapngStream::new(BufWriter::new(out), &started, now_ns()) {
        Ok(file) => file,
        Err(error) => {
            // As below: the reader of -w - may go away before the file's header is whole.
            stopper.ask().unwrap_or_default();
            return Err(written(error, &args.write));
        }
    };
    stop_on_signals(&stopper)?;
    // Said once Ctrl-C is handled, so that what it says holds.
    say(&starting(&started));
    let ended = copy(stream.lines, &mut file, &stopper);
    match ended {
        Ok(Ended::End(end)) => {
            file.end(&end, now_ns())
                .map_err(|e| written(e, &args.write))?;
            say(&ending(&end));
            Ok(())
        }
        Ok(Ended::GaveUp { packets }) => {
            say(&format!(
                "the daemon did not end the capture within {} s of the stop; {packets} \
                 packets written",
                STOP_GRACE.as_secs()
            ));
            Ok(())
        }
        Err(Failed::Write(error)) => {
            // Nowhere to put more packets (the reader of -w - went away, the disk is full):
            // the daemon is told so, rather than left to find a closed connection.
            stopper.ask().unwrap_or_default();
            Err(written(error, &args.write))
        }
        Err(Failed::Other(error)) => Err(error),
    }
}

/// A failed write as the command's error; a reader of stdout that went away is no failure
/// (`main` ends quietly and successfully, as for `lb backend list | head -1`).
fn written(error: CaptureFileError, to: &Output) -> anyhow::Error {
    if error.is_broken_pipe() && *to == Output::Stdout {
        return StdoutClosed.into();
    }
    let to = match to {
        Output::Stdout => "stdout".to_owned(),
        Output::File(path) => path.display().to_string(),
    };
    anyhow::Error::new(error).context(format!("capturing into {to}"))
}

/// `capturing on eth0, eth1 (vip 198.18.0.1:80), snaplen 2048; Ctrl-C stops`.
fn starting(started: &CaptureStarted) -> String {
    let names: Vec<&str> = started.interfaces.iter().map(|i| i.name.as_str()).collect();
    let filter = if started.filter.is_empty() {
        "every packet"
    } else {
        &started.filter
    };
    format!(
        "capturing on {} ({filter}), snaplen {}; Ctrl-C stops",
        if names.is_empty() {
            "no interface".to_owned()
        } else {
            names.join(", ")
        },
        started.snaplen
    )
}

/// `12 packets captured, 3 lost (stopped): the reader did not keep up; ...`.
fn ending(end: &crate::api::wire::CaptureEnd) -> String {
    let mut line = format!("{} ({})", pcapng::counts(end), end.why);
    if end.lost > 0 {
        line.push_str(": the reader did not keep up; narrow the filter or --sample");
    }
    line
}

/// How the stream ended.
#[derive(Debug)]
enum Ended {
    /// With its `end` line.
    End(crate::api::wire::CaptureEnd),
    /// The stop was not answered in time, and the connection was cut.
    GaveUp { packets: u64 },
}

#[derive(Debug)]
enum Failed {
    /// The capture could not be written.
    Write(CaptureFileError),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failed {
    fn from(error: anyhow::Error) -> Self {
        Failed::Other(error)
    }
}

/// Copies the stream's packets into `file` until its `end` line.
fn copy<W: Write>(
    mut lines: impl io::BufRead,
    file: &mut PcapngStream<W>,
    stopper: &Stopper,
) -> Result<Ended, Failed> {
    let mut line = String::new();
    let mut packets = 0u64;
    loop {
        line.clear();
        let read = (&mut lines).take(MAX_LINE_BYTES).read_line(&mut line);
        let whole = read.is_ok() && line.ends_with('\n');
        if !whole && stopper.was_cut() {
            // What had arrived before the cut is written; the rest is not coming.
            return Ok(Ended::GaveUp { packets });
        }
        let read = read.context("reading the capture from the daemon")?;
        if read == 0 {
            return Err(anyhow::anyhow!(
                "the daemon ended the capture without saying why (no `end` line) after \
                 {packets} packets: its log says more (journalctl -u lb)"
            )
            .into());
        }
        if !whole {
            return Err(anyhow::anyhow!(
                "the daemon sent a capture line longer than {MAX_LINE_BYTES} bytes, or cut one \
                 short"
            )
            .into());
        }
        let event: CaptureEvent = serde_json::from_str(&line)
            .context("the daemon sent a capture line that is not a packet or the end")?;
        match event {
            CaptureEvent::Packet(packet) => {
                file.packet(&packet).map_err(Failed::Write)?;
                packets += 1;
            }
            CaptureEvent::End(end) => return Ok(Ended::End(end)),
        }
    }
}

/// Ends a capture from any thread: asks the daemon to stop (once), or cuts the connection.
struct Stopper {
    control: UnixStream,
    asked: AtomicBool,
    cut: AtomicBool,
}

impl Stopper {
    fn new(control: UnixStream) -> Self {
        Self {
            control,
            asked: AtomicBool::new(false),
            cut: AtomicBool::new(false),
        }
    }

    /// Sends `{"stop":{}}`, the first time only.
    fn ask(&self) -> io::Result<()> {
        if self.asked.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut line = serde_json::to_string(&CaptureControl::Stop {}).map_err(io::Error::other)?;
        line.push('\n');
        (&self.control).write_all(line.as_bytes())
    }

    /// Closes the connection: a read blocked on it returns.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.control.shutdown(Shutdown::Both).unwrap_or_default();
    }

    fn was_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// On the first Ctrl-C or SIGTERM, asks the daemon to stop; after [`STOP_GRACE`] more, or
/// on a second signal, cuts the connection. The handlers are in place when this returns.
fn stop_on_signals(stopper: &Arc<Stopper>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    let (mut interrupt, mut terminate) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        )
    };
    let stopper = Arc::clone(stopper);
    std::thread::Builder::new()
        .name("lb-capture-signals".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                if stopper.ask().is_err() {
                    // The connection is gone already: the reader sees its end.
                    return;
                }
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                    () = tokio::time::sleep(STOP_GRACE) => {}
                }
                stopper.cut();
            });
        })
        .context("starting the signal handler")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use clap::error::ErrorKind;
    use pcap_file::pcapng::{Block, PcapNgReader};

    use super::*;
    use crate::api::wire::{CaptureEnd, CaptureInterface, CapturedPacket};

    /// The arguments alone, as `lb capture` parses them.
    #[derive(clap::Parser)]
    struct Capture {
        #[command(flatten)]
        args: CaptureArgs,
    }

    fn parse(args: &[&str]) -> Result<CaptureArgs, clap::Error> {
        let mut all = vec!["capture"];
        all.extend_from_slice(args);
        <Capture as clap::Parser>::try_parse_from(all).map(|c| c.args)
    }

    #[test]
    fn sample_rates_are_one_in_n() {
        for (text, n) in [
            ("1/10", 10),
            ("10", 10),
            ("1/1", 1),
            ("1", 1),
            (" 1 / 4 ", 4),
        ] {
            assert_eq!(parse_sample(text), Ok(n), "{text}");
        }
        for (text, reason) in [
            ("0", "is not a sample rate"),
            ("1/0", "is not a sample rate"),
            ("-3", "is not a sample rate"),
            ("1/x", "is not a sample rate"),
            ("", "is not a sample rate"),
            ("1/4294967296", "is not a sample rate"),
            ("2/3", "only one in N"),
            ("0.1", "is not a sample rate"),
        ] {
            let error = parse_sample(text).expect_err(text);
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn the_arguments_become_the_request() {
        let args = parse(&[
            "--vip",
            "198.18.0.1:80",
            "--backend",
            "198.18.1.2:8080",
            "--client",
            "198.18.5.0/24",
            "--drops",
            "--sample",
            "1/10",
            "--count",
            "5",
            "--snaplen",
            "96",
            "-w",
            "-",
        ])
        .expect("valid");
        assert_eq!(args.write, Output::Stdout);
        assert_eq!(
            args.request(),
            Request::Capture {
                vip: Some("198.18.0.1:80".parse().expect("address")),
                backend: Some("198.18.1.2:8080".parse().expect("address")),
                client: Some("198.18.5.0/24".parse().expect("prefix")),
                drops: true,
                sample: 10,
                count: Some(5),
                snaplen: 96,
            }
        );
        let defaults = parse(&["-w", "out.pcapng"]).expect("valid");
        assert_eq!(defaults.write, Output::File("out.pcapng".into()));
        assert_eq!(
            defaults.request(),
            Request::Capture {
                vip: None,
                backend: None,
                client: None,
                drops: false,
                sample: 1,
                count: None,
                snaplen: CAPTURE_SNAPLEN_MAX,
            }
        );
    }

    #[test]
    fn bad_arguments_are_refused_by_the_parser() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir_arg = dir.path().to_str().expect("utf-8").to_owned();
        let missing = format!("{dir_arg}/no/such/dir/out.pcapng");
        for (args, kind, reason) in [
            (vec![], ErrorKind::MissingRequiredArgument, "--write"),
            (vec!["-w"], ErrorKind::InvalidValue, "a value is required"),
            (vec!["-w", ""], ErrorKind::ValueValidation, "an empty path"),
            (
                vec!["-w", &dir_arg],
                ErrorKind::ValueValidation,
                "is a directory",
            ),
            (
                vec!["-w", &missing],
                ErrorKind::ValueValidation,
                "there is no directory",
            ),
        ] {
            let error = parse(&args).expect_err("refused");
            assert_eq!(error.kind(), kind, "{args:?}: {error}");
            assert!(error.to_string().contains(reason), "{args:?}: {error}");
        }
        for (flag, value, reason) in [
            ("--sample", "0", "not a sample rate"),
            ("--sample", "2/5", "only one in N"),
            ("--count", "0", "--count"),
            ("--snaplen", "0", "1..=2048"),
            ("--snaplen", "2049", "1..=2048"),
            ("--vip", "198.18.0.1", "is not ADDRESS:PORT"),
            ("--backend", "198.18.1.2:0", "port 0"),
            ("--client", "198.18.5.1/24", "host bits are set"),
            ("--client", "clients", "not an IP address"),
        ] {
            let error = parse(&["-w", "-", flag, value]).expect_err(value);
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{flag} {value}");
            assert!(
                error.to_string().contains(reason),
                "{flag} {value}: {error}"
            );
        }
    }

    fn packet(n: u8) -> CaptureEvent {
        CaptureEvent::Packet(Box::new(CapturedPacket {
            time_ns: 1_800_000_000_000_000_000 + u64::from(n),
            ifindex: 3,
            verdict: "tx".to_owned(),
            reason: "fwd_tracked".to_owned(),
            vip: Some("198.18.0.1:80/tcp".to_owned()),
            backend: Some("198.18.1.2:80".parse().expect("address")),
            mode: Some("nat".to_owned()),
            conntrack: "established, proven".to_owned(),
            fingerprint: None,
            cpu: 0,
            received_len: 64,
            received: STANDARD.encode([n; 64]),
            sent_len: Some(64),
            sent: Some(STANDARD.encode([n; 64])),
        }))
    }

    fn lines(events: &[CaptureEvent]) -> String {
        events
            .iter()
            .map(|e| format!("{}\n", serde_json::to_string(e).expect("JSON")))
            .collect()
    }

    /// The stream copied into a pcapng file: how it ended, and the file's packet blocks.
    fn copied(stream: &str, stopper: &Stopper) -> (Result<Ended, Failed>, usize) {
        let started = CaptureStarted {
            interfaces: vec![CaptureInterface {
                name: "eth0".to_owned(),
                ifindex: 3,
            }],
            snaplen: 2048,
            filter: String::new(),
        };
        let mut file = PcapngStream::new(Vec::new(), &started, 0).expect("header");
        let ended = copy(stream.as_bytes(), &mut file, stopper);
        let bytes = file.into_inner();
        let mut reader = PcapNgReader::new(&bytes[..]).expect("header");
        let mut epbs = 0;
        while let Some(block) = reader.next_block() {
            if matches!(block.expect("valid"), Block::EnhancedPacket(_)) {
                epbs += 1;
            }
        }
        (ended, epbs)
    }

    fn connected() -> (Stopper, UnixStream) {
        let (ours, daemons) = UnixStream::pair().expect("socket pair");
        (Stopper::new(ours), daemons)
    }

    #[test]
    fn the_stream_is_copied_until_its_end_line() {
        let (stopper, _daemon) = connected();
        let end = CaptureEvent::End(CaptureEnd {
            captured: 2,
            lost: 1,
            why: "count reached".to_owned(),
        });
        let (ended, epbs) = copied(&lines(&[packet(1), packet(2), end, packet(3)]), &stopper);
        let Ok(Ended::End(end)) = ended else {
            panic!("not ended by its end line: {ended:?}");
        };
        assert_eq!((end.captured, end.lost), (2, 1));
        assert_eq!(
            epbs, 4,
            "two packets, each received and sent; none after the end"
        );
        assert_eq!(
            ending(&end),
            "2 packets captured, 1 lost (count reached): the reader did not keep up; \
             narrow the filter or --sample"
        );
    }

    #[test]
    fn a_stream_without_its_end_line_is_an_error_unless_lb_gave_up() {
        let (stopper, _daemon) = connected();
        let (ended, epbs) = copied(&lines(&[packet(1)]), &stopper);
        let Err(Failed::Other(error)) = ended else {
            panic!("a stream cut short is not an error: {ended:?}");
        };
        assert!(
            error.to_string().contains("daemon ended the capture"),
            "{error}"
        );
        assert_eq!(epbs, 2, "the packet before the cut is written");
        let (ended, _) = copied("{\"packet\":", &stopper);
        assert!(matches!(ended, Err(Failed::Other(_))), "{ended:?}");
        let (ended, _) = copied("{\"surprise\":{}}\n", &stopper);
        assert!(matches!(ended, Err(Failed::Other(_))), "{ended:?}");
        stopper.cut();
        let (ended, epbs) = copied(&lines(&[packet(1)]), &stopper);
        assert_eq!(epbs, 2, "what arrived before the cut is written");
        assert!(
            matches!(ended, Ok(Ended::GaveUp { packets: 1 })),
            "{ended:?}"
        );
    }

    #[test]
    fn the_stop_line_is_sent_once_and_a_cut_wakes_the_reader() {
        let (stopper, daemon) = connected();
        stopper.ask().expect("stop");
        stopper.ask().expect("stop again");
        daemon
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = String::new();
        let mut reader = io::BufReader::new(&daemon);
        reader.read_line(&mut got).expect("the stop line");
        assert_eq!(got, "{\"stop\":{}}\n");
        // A reader blocked on the connection returns once it is cut.
        let (stopper, _daemon) = connected();
        let reading = stopper.control.try_clone().expect("clone");
        let stopper = Arc::new(stopper);
        let cutter = Arc::clone(&stopper);
        let blocked = std::thread::spawn(move || {
            let mut buf = [0u8; 1];
            (&reading).read(&mut buf)
        });
        cutter.cut();
        let read = blocked.join().expect("the reader returns");
        assert!(matches!(read, Ok(0)), "{read:?}");
        assert!(stopper.was_cut());
        // Nothing more from the first: a second stop was not sent.
        daemon
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        got.clear();
        let more = reader.read_line(&mut got);
        assert!(more.is_err(), "a second stop line: {more:?} {got:?}");
    }

    #[test]
    fn a_closed_stdout_is_no_failure_but_a_full_disk_is() {
        let pipe = || CaptureFileError::Write(io::ErrorKind::BrokenPipe.into());
        assert!(crate::cli::output::is_stdout_closed(&written(
            pipe(),
            &Output::Stdout
        )));
        let file = written(pipe(), &Output::File("/srv/out.pcapng".into()));
        assert!(!crate::cli::output::is_stdout_closed(&file));
        let full = written(
            CaptureFileError::Write(io::ErrorKind::StorageFull.into()),
            &Output::Stdout,
        );
        assert!(!crate::cli::output::is_stdout_closed(&full));
        assert_eq!(full.to_string(), "capturing into stdout");
        assert_eq!(file.to_string(), "capturing into /srv/out.pcapng");
    }

    #[test]
    fn the_start_line_names_interfaces_filter_and_snaplen() {
        let started = CaptureStarted {
            interfaces: vec![
                CaptureInterface {
                    name: "eth0".to_owned(),
                    ifindex: 2,
                },
                CaptureInterface {
                    name: "eth1".to_owned(),
                    ifindex: 3,
                },
            ],
            snaplen: 96,
            filter: "vip 198.18.0.1:80, drops only, 1 in 10".to_owned(),
        };
        assert_eq!(
            starting(&started),
            "capturing on eth0, eth1 (vip 198.18.0.1:80, drops only, 1 in 10), snaplen 96; \
             Ctrl-C stops"
        );
        let end = CaptureEnd {
            captured: 7,
            lost: 0,
            why: "stopped".to_owned(),
        };
        assert_eq!(ending(&end), "7 packets captured, 0 lost (stopped)");
    }
}
