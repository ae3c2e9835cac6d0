//! A bounded soak: mixed TCP and UDP traffic through three VIPs of the real binary while
//! backends are added, drained and removed every second, in namespaces. Needs root.
//!
//! `cargo xtask soak` runs it for 10 minutes on the release build; `cargo xtask test` for
//! 12 s ([`CI_SECS`]). `LB_SOAK_SECS` sets the length. Backends 1 and 2 stay throughout; 3, 4 and 5 each
//! cycle through active, draining and removed, staggered so that one changes every second.
//! Checked: no request fails and no held connection breaks unless its backend was removed;
//! and the daemon's resident memory and open descriptors stay within the bounds below: the
//! stated bounds on runs long enough to tell a leak from warm-up (`cargo xtask soak`), a
//! weaker check on short runs (`cargo xtask test`), which says on stderr what it skipped.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_tests::{
    client::{WhoConnection, http_get, udp_request},
    process::{Daemon, Footprint, Instance},
    servers::{HTTP_PORT, Servers, UDP_PORT, WHO_PORT},
    topology::Lab,
};

const BACKENDS: usize = 5;
/// Backends `0..STABLE` are never touched.
const STABLE: usize = 2;
/// One churned backend changes every period.
const PERIOD: Duration = Duration::from_secs(1);
/// A churned backend's cycle, in periods: added at 0, drained at `DRAIN_AT`, removed at
/// `REMOVE_AT`, added again at `CYCLE`. The three churned backends are one period apart, so
/// exactly one of them changes every period.
const CYCLE: u64 = 9;
const DRAIN_AT: u64 = 3;
const REMOVE_AT: u64 = 6;
/// Long-lived connections held open (asked every `HELD_ROUND`), each closed and replaced
/// after `HELD_FOR`, so that held connections keep landing on the churned backends too.
const HELD: usize = 12;
const HELD_ROUND: Duration = Duration::from_millis(50);
const HELD_FOR: Duration = Duration::from_secs(8);
/// Pause between one worker's requests.
const PACE: Duration = Duration::from_millis(2);
/// Caps on top of the time bound.
const MAX_REQUESTS: u64 = 2_000_000;
/// The footprint is judged against the stated bounds from this point on, and only on runs
/// at least twice as long.
const WARM_UP: Duration = Duration::from_secs(60);
/// Bounds on growth after warm-up (docs/RELIABILITY.md states them).
const RSS_GROWTH_KIB: u64 = 8 * 1024;
const FD_GROWTH: usize = 8;
/// Shorter runs judge from the first periodic sample (about 5 s in) with a generous memory
/// bound: a 20 s run saw RSS grow by about 1 MiB after it; a leak of 1 KiB per request
/// (some 25,000 requests) would pass 16 MiB. Descriptors must be back to where they were
/// at that sample by the end (transient health-check sockets may show in between).
const SHORT_RSS_GROWTH_KIB: u64 = 16 * 1024;
/// Footprint and `lb stats` every this many periods.
const SAMPLE_EVERY: u64 = 5;

/// The length CI runs: every churned backend goes once through its whole cycle (added,
/// drained, removed, added again: [`CYCLE`] periods, the last one starting two periods
/// after the first) and the footprint is sampled twice. 20 s before, to save 8 s of an
/// 8-minute CI: leaks are judged by `cargo xtask soak`.
const CI_SECS: u64 = CYCLE + 3;

fn soak_length() -> Duration {
    let secs = std::env::var("LB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SECS);
    Duration::from_secs(secs)
}

/// What one worker saw: answers by backend, and every failure with when and why.
#[derive(Default)]
struct Tally {
    answered: BTreeMap<String, u64>,
    failures: Vec<String>,
    /// Held connections that broke because their backend was removed (expected).
    broken_by_removal: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (backend, n) in other.answered {
            *self.answered.entry(backend).or_default() += n;
        }
        self.failures.extend(other.failures);
        self.broken_by_removal += other.broken_by_removal;
    }

    fn requests(&self) -> u64 {
        self.answered.values().sum::<u64>() + self.failures.len() as u64
    }
}

struct Vips {
    http: SocketAddr,
    udp: SocketAddr,
    who: SocketAddr,
}

impl Vips {
    /// Each VIP with its backend port and health check.
    fn each(&self) -> [(SocketAddr, u16, &'static str, &'static str); 3] {
        [
            (self.http, HTTP_PORT, "tcp", "http:/"),
            (self.udp, UDP_PORT, "udp", "udp:ping"),
            (self.who, WHO_PORT, "tcp", "tcp"),
        ]
    }
}

/// Requests one after another until `stop`; `request` returns the answering backend.
fn worker(
    lab: &Lab,
    stop: &Arc<AtomicBool>,
    started: Instant,
    what: &'static str,
    request: impl Fn() -> Result<String, String> + Send + 'static,
) -> JoinHandle<Tally> {
    let stop = Arc::clone(stop);
    lab.client.spawn(move || {
        let mut tally = Tally::default();
        for _ in 0..MAX_REQUESTS {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match request() {
                Ok(backend) => *tally.answered.entry(backend).or_default() += 1,
                Err(e) => tally
                    .failures
                    .push(format!("{what} at {:?}: {e}", started.elapsed())),
            }
            std::thread::sleep(PACE);
        }
        tally
    })
}

/// Backend names and when they were removed.
type Removals = Arc<Mutex<Vec<(String, Instant)>>>;

/// A held connection: who answered it first, and when it was opened.
struct Held {
    connection: WhoConnection,
    backend: String,
    opened: Instant,
}

/// Keeps `HELD` connections open and asks each, every round, who holds it. A connection
/// may break only if its backend was removed after it was opened.
fn holder(
    lab: &Lab,
    stop: &Arc<AtomicBool>,
    started: Instant,
    vip: SocketAddr,
    removals: Removals,
) -> JoinHandle<Tally> {
    let stop = Arc::clone(stop);
    lab.client.spawn(move || {
        let mut tally = Tally::default();
        let mut held: Vec<Option<Held>> = (0..HELD).map(|_| None).collect();
        let open = |tally: &mut Tally| match WhoConnection::open(vip).and_then(|mut c| {
            let opened = Instant::now();
            let backend = c.ask()?;
            Ok(Held {
                connection: c,
                backend,
                opened,
            })
        }) {
            Ok(held) => Some(held),
            Err(e) => {
                let when = started.elapsed();
                tally.failures.push(format!("held open at {when:?}: {e}"));
                None
            }
        };
        let rounds = MAX_REQUESTS / HELD as u64;
        for _ in 0..rounds {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for slot in &mut held {
                let Some(Held {
                    connection,
                    backend,
                    opened,
                }) = slot
                else {
                    *slot = open(&mut tally);
                    continue;
                };
                if opened.elapsed() >= HELD_FOR {
                    *slot = open(&mut tally);
                    continue;
                }
                match connection.ask() {
                    Ok(answer) if answer == *backend => {
                        *tally.answered.entry(answer).or_default() += 1;
                    }
                    Ok(answer) => {
                        let when = started.elapsed();
                        tally
                            .failures
                            .push(format!("held at {when:?}: {backend} became {answer}"));
                        *slot = None;
                    }
                    Err(e) => {
                        let was_removed = removals.lock().is_ok_and(|removals| {
                            removals
                                .iter()
                                .any(|(name, at)| name == backend && at >= opened)
                        });
                        if was_removed {
                            tally.broken_by_removal += 1;
                        } else {
                            let when = started.elapsed();
                            tally
                                .failures
                                .push(format!("held on {backend} at {when:?}: {e}"));
                        }
                        *slot = None;
                    }
                }
            }
            std::thread::sleep(HELD_ROUND);
        }
        tally
    })
}

#[test]
fn a_soak_with_backends_changing_every_second() {
    lb_tests::require_root!();
    let length = soak_length();
    let lab = Lab::new("lbk", BACKENDS);
    let instance = Instance::new();
    let daemon = Daemon::start(instance.run(&lab.lb, &lab.lb_ifaces, &[]));
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", daemon.pid())).expect("comm");
    assert_eq!(comm.trim(), "lb", "the footprint is lb's own");
    let servers = Servers::start(&lab.backends);
    let vip = lab.vip(false);
    let vips = Vips {
        http: SocketAddr::new(vip, HTTP_PORT),
        udp: SocketAddr::new(vip, UDP_PORT),
        who: SocketAddr::new(vip, WHO_PORT),
    };
    let endpoint = |n: usize, port: u16| SocketAddr::new(lab.backends[n].v4.into(), port);
    // One backend's change on every VIP, through the CLI as an operator makes it.
    let change = |n: usize, verb: &str| {
        for (vip, port, proto, _) in vips.each() {
            let (vip, backend) = (vip.to_string(), endpoint(n, port).to_string());
            let mut args = vec!["backend", verb, &vip, &backend];
            if proto == "udp" {
                args.extend(["--proto", "udp"]);
            }
            instance.ok(&args);
        }
    };
    for (vip, _, proto, check) in vips.each() {
        let vip = vip.to_string();
        instance.ok(&["vip", "add", &vip, "--proto", proto, "--check", check]);
    }
    for n in 0..STABLE {
        change(n, "add");
    }
    // Churned backends start where their staggered cycle puts them.
    let churned: Vec<usize> = (STABLE..BACKENDS).collect();
    let phase = |k: usize, period: u64| (period + k as u64) % CYCLE;
    for (k, &n) in churned.iter().enumerate() {
        let at = phase(k, 0);
        if at < REMOVE_AT {
            change(n, "add");
        }
        if (DRAIN_AT..REMOVE_AT).contains(&at) {
            change(n, "drain");
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let removals = Removals::default();
    let started = Instant::now();
    let client_addr = SocketAddr::new(lab.client_addr(false), 0);
    let (http, udp) = (vips.http, vips.udp);
    let workers = vec![
        worker(&lab, &stop, started, "http", move || http_get(http)),
        worker(&lab, &stop, started, "http", move || http_get(http)),
        worker(&lab, &stop, started, "udp", move || {
            udp_request(client_addr, udp)
        }),
        holder(&lab, &stop, started, vips.who, Arc::clone(&removals)),
    ];

    let mut samples: Vec<(Duration, Footprint)> = vec![(Duration::ZERO, daemon.footprint())];
    let mut changes = 0u64;
    let mut period = 0u64;
    while started.elapsed() < length {
        period += 1;
        for (k, &n) in churned.iter().enumerate() {
            match phase(k, period) {
                0 => change(n, "add"),
                DRAIN_AT => change(n, "drain"),
                REMOVE_AT => {
                    // Noted before the change: a break it causes is always excused.
                    if let Ok(mut removals) = removals.lock() {
                        removals.push((lab.backends[n].name.clone(), Instant::now()));
                    }
                    change(n, "del");
                }
                _ => continue,
            }
            changes += 1;
        }
        if period.is_multiple_of(SAMPLE_EVERY) {
            samples.push((started.elapsed(), daemon.footprint()));
            let stats: serde_json::Value =
                serde_json::from_str(&instance.ok(&["stats", "--json"])).expect("stats JSON");
            assert!(stats["counters"]["fwd_new_flow"]["packets"].as_u64() > Some(0));
            servers.take_seen();
        }
        let next = started + PERIOD * period as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    let mut by_kind = Vec::new();
    for (kind, handle) in ["http", "http", "udp", "held"].into_iter().zip(workers) {
        let tally = handle.join().expect("a worker panicked");
        by_kind.push((kind, tally.requests()));
        total.merge(tally);
    }
    samples.push((started.elapsed(), settled_footprint(&daemon)));

    let stats: serde_json::Value =
        serde_json::from_str(&instance.ok(&["stats", "--json"])).expect("stats JSON");
    eprintln!(
        "soak: {:?}, {changes} backend changes, {} requests ({by_kind:?}), {} failed; {} held \
         connections broken by their backend's removal (expected); answers by backend: {:?}; \
         conntrack: {}",
        started.elapsed(),
        total.requests(),
        total.failures.len(),
        total.broken_by_removal,
        total.answered,
        stats["conntrack"]
    );
    for (at, footprint) in &samples {
        eprintln!(
            "soak: at {:>4} s: daemon RSS {} KiB, {} fds",
            at.as_secs(),
            footprint.rss_kib,
            footprint.fds
        );
    }
    assert!(
        total.failures.is_empty(),
        "{} requests failed, first ones: {:#?}",
        total.failures.len(),
        &total.failures[..total.failures.len().min(10)]
    );
    assert!(
        changes + 1 >= length.as_secs() / PERIOD.as_secs(),
        "only {changes} changes"
    );
    for backend in &lab.backends {
        assert!(
            total.answered.get(&backend.name).copied().unwrap_or(0) > 0,
            "{} never answered",
            backend.name
        );
    }
    if length < WARM_UP * 2 {
        lb_tests::loud(&format!(
            "soak: SKIPPED the memory and descriptor leak bounds (RSS +{RSS_GROWTH_KIB} KiB, \
             fds +{FD_GROWTH} after a {} s warm-up): this run is {} s, they need at least {} \
             s; run them with `sudo cargo xtask soak` (10 minutes, or --secs 120 and up). \
             Checked instead: RSS +{SHORT_RSS_GROWTH_KIB} KiB at most and no descriptor \
             growth by the end, from the first sample after traffic started",
            WARM_UP.as_secs(),
            length.as_secs(),
            (WARM_UP * 2).as_secs()
        ));
    }
    check_footprint(&samples, length);
    drop(daemon);
    instance.down();
}

/// Judges the daemon's footprint samples: the stated bounds after [`WARM_UP`] on runs at
/// least twice that long; otherwise a weaker check (the caller says so on stderr).
fn check_footprint(samples: &[(Duration, Footprint)], length: Duration) {
    let long = length >= WARM_UP * 2;
    let after_warm_up: Vec<Footprint> = if long {
        samples
            .iter()
            .filter(|(at, _)| *at >= WARM_UP)
            .map(|(_, f)| *f)
            .collect()
    } else {
        // Skip the sample taken before any traffic.
        samples.iter().skip(1).map(|(_, f)| *f).collect()
    };
    let [base, .., last] = after_warm_up[..] else {
        lb_tests::loud(&format!(
            "soak: SKIPPED every footprint check: {} samples after warm-up, too few to see \
             growth; run `sudo cargo xtask soak`",
            after_warm_up.len()
        ));
        return;
    };
    let peak_rss = after_warm_up.iter().map(|f| f.rss_kib).max().unwrap_or(0);
    let peak_fds = after_warm_up.iter().map(|f| f.fds).max().unwrap_or(0);
    let rss_bound = if long {
        RSS_GROWTH_KIB
    } else {
        SHORT_RSS_GROWTH_KIB
    };
    eprintln!(
        "soak: after warm-up, RSS {} → peak {} KiB (bound +{rss_bound}), fds {} → peak {} \
         (bound +{FD_GROWTH}) → {} at the end",
        base.rss_kib, peak_rss, base.fds, peak_fds, last.fds
    );
    assert!(
        peak_rss <= base.rss_kib + rss_bound,
        "daemon memory grew by {} KiB (bound {rss_bound}): {samples:?}",
        peak_rss - base.rss_kib
    );
    assert!(
        peak_fds <= base.fds + FD_GROWTH,
        "daemon descriptors grew: {samples:?}"
    );
    if !long {
        assert!(
            last.fds <= base.fds,
            "daemon descriptors grew from {} to {} by the end of the run: {samples:?}",
            base.fds,
            last.fds
        );
    }
}

/// The footprint with the fewest descriptors of five reads 100 ms apart: a health check's
/// socket open at one read does not count as growth.
fn settled_footprint(daemon: &Daemon) -> Footprint {
    (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            daemon.footprint()
        })
        .min_by_key(|f| f.fds)
        .expect("five reads")
}

/// The footprint checks themselves (no root): they catch growth on short and long runs.
#[test]
fn footprint_checks_catch_leaks() {
    let at = |secs, rss_kib, fds| (Duration::from_secs(secs), Footprint { rss_kib, fds });
    let short = Duration::from_secs(20);
    let steady = [
        at(0, 20_000, 60),
        at(5, 21_000, 63),
        at(10, 21_500, 64),
        at(20, 22_000, 63),
    ];
    check_footprint(&steady, short);
    let leaking_fds = [
        at(0, 20_000, 60),
        at(5, 21_000, 63),
        at(10, 21_000, 64),
        at(20, 21_000, 65),
    ];
    let leaking_rss = [at(0, 20_000, 60), at(5, 21_000, 63), at(20, 40_000, 63)];
    let long = Duration::from_secs(600);
    let leaking_long = [at(0, 20_000, 60), at(60, 21_000, 63), at(600, 21_000, 72)];
    for (samples, length) in [
        (&leaking_fds[..], short),
        (&leaking_rss[..], short),
        (&leaking_long[..], long),
    ] {
        let caught = std::panic::catch_unwind(|| check_footprint(samples, length)).is_err();
        assert!(caught, "growth not caught: {samples:?}");
    }
}
