//! `lb stats --watch`: a live table of rates per VIP and per backend, redrawn in place
//! every interval on a terminal, printed one frame after another under a timestamp line
//! anywhere else (a pipe, a file: no screen codes), or one JSON object per interval with
//! `--json`.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::bail;
use comfy_table::{Table, presets::NOTHING};
use serde::Serialize;

use crate::api::client;
use crate::{
    api::wire::{Request, StatsReport},
    cli::{args::StatsArgs, output},
    model::state::Proto,
};

/// How each frame reaches the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frames {
    /// One JSON object a line.
    Json,
    /// Home and clear, then the frame: redrawn in place on a terminal.
    Screen,
    /// A timestamp line, then the frame, one after another.
    Plain,
}

impl Frames {
    fn choose(json: bool, terminal: bool) -> Self {
        match (json, terminal) {
            (true, _) => Frames::Json,
            (false, true) => Frames::Screen,
            (false, false) => Frames::Plain,
        }
    }

    fn write(
        self,
        out: &mut impl std::io::Write,
        rates: &Rates,
        at: std::time::SystemTime,
    ) -> anyhow::Result<()> {
        match self {
            Frames::Json => writeln!(out, "{}", serde_json::to_string(rates)?)?,
            Frames::Screen => write!(out, "\x1b[H\x1b[2J{}", render(rates))?,
            Frames::Plain => write!(
                out,
                "--- {} ---\n{}\n",
                humantime::format_rfc3339_seconds(at),
                render(rates)
            )?,
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
struct VipRate {
    vip: SocketAddr,
    proto: Proto,
    packets_per_sec: f64,
    bits_per_sec: f64,
    new_flows_per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
struct BackendRate {
    vip: SocketAddr,
    proto: Proto,
    backend: SocketAddr,
    health: String,
    packets_per_sec: f64,
    bits_per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
struct Rates {
    interval_secs: f64,
    vips: Vec<VipRate>,
    backends: Vec<BackendRate>,
}

fn per_sec(now: u64, before: Option<u64>, secs: f64) -> f64 {
    before.map_or(0.0, |b| now.saturating_sub(b) as f64 / secs)
}

fn rates(now: &StatsReport, before: &StatsReport, elapsed: Duration) -> Rates {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let old_vips: HashMap<_, _> = before.vips.iter().map(|v| ((v.vip, v.proto), v)).collect();
    let old_backends: HashMap<_, _> = before
        .backends
        .iter()
        .map(|b| ((b.vip, b.proto, b.backend), b))
        .collect();
    Rates {
        interval_secs: secs,
        vips: now
            .vips
            .iter()
            .map(|v| {
                let old = old_vips.get(&(v.vip, v.proto));
                VipRate {
                    vip: v.vip,
                    proto: v.proto,
                    packets_per_sec: per_sec(v.packets, old.map(|o| o.packets), secs),
                    bits_per_sec: 8.0 * per_sec(v.bytes, old.map(|o| o.bytes), secs),
                    new_flows_per_sec: per_sec(v.new_flows, old.map(|o| o.new_flows), secs),
                }
            })
            .collect(),
        backends: now
            .backends
            .iter()
            .map(|b| {
                let old = old_backends.get(&(b.vip, b.proto, b.backend));
                BackendRate {
                    vip: b.vip,
                    proto: b.proto,
                    backend: b.backend,
                    health: if b.state == "draining" {
                        "draining".to_owned()
                    } else {
                        b.health.to_string()
                    },
                    packets_per_sec: per_sec(b.packets, old.map(|o| o.packets), secs),
                    bits_per_sec: 8.0 * per_sec(b.bytes, old.map(|o| o.bytes), secs),
                }
            })
            .collect(),
    }
}

/// 1234567 → "1.23M"
fn human(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.2}k", v / 1e3),
        v => format!("{v:.1}"),
    }
}

fn render(rates: &Rates) -> String {
    let mut vips = Table::new();
    vips.load_preset(NOTHING)
        .set_header(vec!["VIP", "PROTO", "PKT/S", "BIT/S", "NEW FLOWS/S"]);
    for v in &rates.vips {
        vips.add_row(vec![
            v.vip.to_string(),
            v.proto.to_string(),
            human(v.packets_per_sec),
            human(v.bits_per_sec),
            human(v.new_flows_per_sec),
        ]);
    }
    let mut backends = Table::new();
    backends
        .load_preset(NOTHING)
        .set_header(vec!["VIP", "BACKEND", "HEALTH", "PKT/S", "BIT/S"]);
    for b in &rates.backends {
        backends.add_row(vec![
            format!("{}/{}", b.vip, b.proto),
            b.backend.to_string(),
            b.health.clone(),
            human(b.packets_per_sec),
            human(b.bits_per_sec),
        ]);
    }
    format!(
        "lb stats --watch (every {:.1} s, Ctrl-C to stop)\n\n{vips}\n\n{backends}\n",
        rates.interval_secs
    )
}

pub(crate) fn run(socket: &Path, args: &StatsArgs) -> anyhow::Result<()> {
    if !args.interval.is_finite() || !(0.1..=3600.0).contains(&args.interval) {
        bail!("--interval must be between 0.1 and 3600 seconds");
    }
    let interval = Duration::from_secs_f64(args.interval);
    let mut before: StatsReport = client::call_as(socket, &Request::Stats {})?;
    let mut taken = Instant::now();
    let mut shown = 0u64;
    let frames = Frames::choose(args.output.json, std::io::stdout().is_terminal());
    while args.count.is_none_or(|n| shown < n) {
        std::thread::sleep(interval.saturating_sub(taken.elapsed()));
        let now: StatsReport = client::call_as(socket, &Request::Stats {})?;
        let at = Instant::now();
        let rates = rates(&now, &before, at - taken);
        let mut frame = Vec::new();
        frames.write(&mut frame, &rates, std::time::SystemTime::now())?;
        output::with_stdout(|out| out.write_all(&frame))?;
        (before, taken) = (now, at);
        shown += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::wire::{BackendEntry, VipEntry},
        model::health::Health,
    };

    fn report(packets: u64, bytes: u64, new_flows: u64) -> StatsReport {
        let vip: SocketAddr = "198.18.1.1:53".parse().expect("addr");
        StatsReport {
            counters: Default::default(),
            conntrack: Default::default(),
            vips: vec![VipEntry {
                quic: Vec::new(),
                vip,
                proto: Proto::Udp,
                mode: Default::default(),
                on_down: Default::default(),
                allow_sources: Vec::new(),
                check: None,
                backends: 1,
                active: 1,
                packets,
                bytes,
                new_flows,
                drops: Default::default(),
                table_fingerprint: String::new(),
            }],
            backends: vec![BackendEntry {
                server_id: None,
                vip,
                proto: Proto::Udp,
                backend: "198.18.11.2:53".parse().expect("addr"),
                weight: 100,
                state: "active".into(),
                health: Health::Up,
                health_since: None,
                last_check_error: None,
                health_history: vec![],
                health_changes: Default::default(),
                packets,
                bytes,
                active_conns: 0,
                closing_conns: 0,
            }],
        }
    }

    #[test]
    #[expect(clippy::float_cmp, reason = "whole counts over whole seconds: exact")]
    fn rates_are_deltas_over_time() {
        let r = rates(
            &report(300, 30_000, 30),
            &report(100, 10_000, 10),
            Duration::from_secs(2),
        );
        assert_eq!(r.vips[0].packets_per_sec, 100.0);
        assert_eq!(r.vips[0].bits_per_sec, 80_000.0);
        assert_eq!(r.vips[0].new_flows_per_sec, 10.0);
        assert_eq!(r.backends[0].packets_per_sec, 100.0);
        let frame = render(&r);
        assert!(
            frame.contains("198.18.1.1:53") && frame.contains("80.00k"),
            "{frame}"
        );
        assert_eq!(human(1_234_567.0), "1.23M");
    }

    #[test]
    fn frames_carry_screen_codes_only_on_a_terminal() {
        let r = rates(
            &report(300, 30_000, 30),
            &report(100, 10_000, 10),
            Duration::from_secs(2),
        );
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let frame = |frames: Frames| {
            let mut out = Vec::new();
            frames.write(&mut out, &r, at).expect("write a frame");
            String::from_utf8(out).expect("utf-8")
        };
        assert_eq!(Frames::choose(false, false), Frames::Plain);
        assert_eq!(Frames::choose(false, true), Frames::Screen);
        assert_eq!(Frames::choose(true, true), Frames::Json);
        let plain = frame(Frames::Plain);
        assert!(!plain.contains('\x1b'), "{plain:?}");
        assert!(
            plain.starts_with("--- 2027-01-15T08:00:00Z ---\n"),
            "{plain}"
        );
        assert!(plain.contains("198.18.1.1:53"), "{plain}");
        assert!(frame(Frames::Screen).starts_with("\x1b[H\x1b[2J"));
        let json: serde_json::Value =
            serde_json::from_str(frame(Frames::Json).trim()).expect("one JSON line");
        assert_eq!(json["vips"][0]["packets_per_sec"], 100.0);
    }
}
