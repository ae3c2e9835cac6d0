//! `lb decap attach|status|detach`: a DSR backend's side, run on the backend itself with no
//! daemon and no async runtime. One printed line per change (the flags are in `args`).

use std::io::Write as _;

/// `writeln!` into a `String`, which cannot fail.
macro_rules! push_line {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

use anyhow::Context as _;

use crate::{
    cli::args::{DecapCommand, DecapPathArgs},
    cli::output,
    datapath::backend_setup::{self, DecapPaths, Event},
    model::decap::{DecapStatus, InterfaceStatus},
};

impl DecapPathArgs {
    /// The paths given, this network namespace's defaults for those left out. With both
    /// left out, a note on stderr if an earlier release's shared pins are still there.
    fn paths(&self) -> anyhow::Result<DecapPaths> {
        if self.pin_dir.is_none()
            && self.record.is_none()
            && let Some(note) = backend_setup::legacy_note()
        {
            // Best effort: a note nobody can read is no reason to stop.
            writeln!(std::io::stderr().lock(), "{note}").unwrap_or_default();
        }
        Ok(DecapPaths::resolve(
            self.pin_dir.clone(),
            self.record.clone(),
        )?)
    }
}

pub(crate) fn run(command: DecapCommand) -> anyhow::Result<()> {
    match command {
        DecapCommand::Attach(args) => {
            let paths = args.paths.paths()?;
            backend_setup::attach(
                &paths,
                &args.iface,
                &args.vips,
                &args.allow_sources,
                args.gue_port,
                args.xdp_mode.into(),
                &mut print_event,
            )
            .with_context(|| format!("lb decap attach --iface {}", args.iface))
        }
        DecapCommand::Status(args) => {
            let status = backend_setup::status(&args.paths.paths()?, args.iface.as_deref())
                .context("lb decap status")?;
            if args.json {
                output::line(serde_json::to_string_pretty(&status)?)
            } else {
                output::with_stdout(|out| out.write_all(render_status(&status).as_bytes()))
            }
        }
        DecapCommand::Detach(args) => {
            let paths = args.paths.paths()?;
            if let Some(iface) = args.iface {
                backend_setup::detach(&paths, &iface, &mut print_event)
                    .with_context(|| format!("lb decap detach --iface {iface}"))
            } else {
                let count = backend_setup::detach_all(&paths, &mut print_event)
                    .context("lb decap detach --all")?;
                if count == 0 {
                    output::line("lb decap: nothing was attached")?;
                }
                Ok(())
            }
        }
    }
}

fn list<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per event, on stdout (failures on stderr). A change is carried through
/// whether or not anyone still reads its report: a write that fails is dropped.
fn print_event(event: Event) {
    match render_event(&event) {
        Line::Out(line) => writeln!(std::io::stdout().lock(), "{line}"),
        Line::Err(line) => writeln!(std::io::stderr().lock(), "{line}"),
    }
    .unwrap_or_default();
}

enum Line {
    Out(String),
    Err(String),
}

fn render_event(event: &Event) -> Line {
    Line::Out(match event {
        Event::Attached {
            iface,
            mode,
            link,
            replaced: false,
        } => format!(
            "lb_decap attached to {iface} ({mode}); link pinned at {}",
            link.display()
        ),
        Event::Attached {
            iface,
            mode,
            link,
            replaced: true,
        } => format!(
            "lb_decap on {iface} ({mode}) replaced in place through its pinned link {}",
            link.display()
        ),
        Event::Accepting {
            iface,
            local,
            sources,
        } => format!(
            "{iface}: decapsulating tunnels to {} from {}",
            list(local),
            if sources.is_empty() {
                "any source".to_owned()
            } else {
                list(sources)
            }
        ),
        Event::Applied(step) => step.to_string(),
        Event::Failed { step, reason } => return Line::Err(format!("failed: {step}: {reason}")),
        Event::RolledBack(step) => format!("rolled back: {step}"),
        Event::Detached { iface, link } => format!(
            "lb_decap detached from {iface}; removed its pins in {}",
            link.parent().unwrap_or(link).display()
        ),
        Event::Recorded(path) => format!("recorded what changed in {}", path.display()),
        Event::LeftBehind { what, reason } => {
            return Line::Err(format!("left behind: {what}: {reason}"));
        }
    })
}

fn render_interface(out: &mut String, i: &InterfaceStatus) {
    let state = if i.attached {
        format!(
            "attached ({}, program {}, link {})",
            i.mode.as_deref().unwrap_or("?"),
            i.program_id.unwrap_or_default(),
            i.link_id.unwrap_or_default()
        )
    } else {
        format!(
            "not attached: {}",
            i.problem.as_deref().unwrap_or("unknown")
        )
    };
    push_line!(out, "{}: {state}", i.iface);
    let none = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    push_line!(out, "  decapsulates tunnels to: {}", none(list(&i.local)));
    push_line!(
        out,
        "  from: {}",
        if i.allow_sources.is_empty() {
            "any source".to_owned()
        } else {
            list(&i.allow_sources)
        }
    );
    push_line!(out, "  VIPs: {}", none(list(&i.vips)));
    if !i.counters.is_empty() {
        push_line!(out, "  counters (packets / bytes):");
        for (name, value) in &i.counters {
            push_line!(
                out,
                "    {name:<24} {:>12} {:>14}",
                value.packets,
                value.bytes
            );
        }
    }
    if i.sysctls.is_empty() && i.addresses.is_empty() {
        push_line!(out, "  attach changed nothing on the host");
    } else {
        push_line!(out, "  attach changed:");
        for change in &i.sysctls {
            push_line!(
                out,
                "    sysctl {}: {} -> {} (needed by {})",
                change.key,
                change.old,
                change.new,
                change.needed_by.join(", ")
            );
        }
        for added in &i.addresses {
            push_line!(
                out,
                "    added {}/{} on {} (needed by {})",
                added.address,
                added.prefix_len,
                added.dev,
                added.needed_by.join(", ")
            );
        }
    }
}

fn render_status(status: &DecapStatus) -> String {
    let mut out = String::new();
    if status.interfaces.is_empty() {
        out.push_str(&format!(
            "lb decap: nothing attached (pins {}, record {})\n",
            status.pin_dir.display(),
            status.record.display()
        ));
    }
    for interface in &status.interfaces {
        render_interface(&mut out, interface);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf};

    use clap::Parser as _;

    use super::*;
    use crate::{
        cli::args::{Cli, Command, XdpModeArg},
        datapath::backend_setup::DecapPaths,
        model::decap::{AddedAddress, CounterValue, SysctlChange},
    };

    fn parse(args: &[&str]) -> Result<DecapCommand, clap::Error> {
        let mut full = vec!["lb", "decap"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full)?.command {
            Command::Decap(command) => Ok(command),
            other => panic!("not decap: {other:?}"),
        }
    }

    #[test]
    fn attach_flags_parse_and_bad_values_are_refused_with_reasons() {
        let DecapCommand::Attach(args) = parse(&[
            "attach",
            "--iface",
            "eth0",
            "--vip",
            "198.18.6.80",
            "--vip",
            "fd00::6:80",
            "--allow-source",
            "198.18.0.0/24",
            "--xdp-mode",
            "skb",
        ])
        .expect("valid") else {
            panic!("not attach");
        };
        assert_eq!(args.vips.len(), 2);
        assert_eq!(args.allow_sources[0].to_string(), "198.18.0.0/24");
        assert_eq!(args.xdp_mode, XdpModeArg::Skb);
        assert_eq!(
            args.paths.pin_dir, None,
            "this namespace's default, found at run time"
        );
        assert_eq!(args.paths.record, None);
        let DecapCommand::Status(args) = parse(&[
            "status",
            "--pin-dir",
            "/sys/fs/bpf/mine",
            "--record",
            "/run/mine.json",
        ])
        .expect("valid") else {
            panic!("not status");
        };
        assert_eq!(args.paths.pin_dir, Some(PathBuf::from("/sys/fs/bpf/mine")));
        assert_eq!(args.paths.record, Some(PathBuf::from("/run/mine.json")));
        let defaults = DecapPaths::for_netns(4_026_531_840);
        assert_eq!(
            defaults.pin_dir,
            PathBuf::from("/sys/fs/bpf/lb-decap/netns-4026531840")
        );
        assert_eq!(
            defaults.record,
            PathBuf::from("/run/lb-decap/netns-4026531840.json")
        );
        for (flag, value, reason) in [
            ("--vip", "198.18.6.80:80", "is not an IP address"),
            ("--vip", "vip", "is not an IP address"),
            ("--allow-source", "198.18.0.1/24", "host bits are set"),
            (
                "--allow-source",
                "198.18.0.0/40",
                "the length must be 0 to 32",
            ),
        ] {
            let error = parse(&["attach", "--iface", "eth0", flag, value])
                .expect_err(value)
                .to_string();
            assert!(error.contains(reason), "{flag} {value}: {error}");
        }
        assert!(parse(&["attach"]).is_err(), "--iface is required");
        assert!(parse(&["detach"]).is_err(), "--iface or --all");
        parse(&["detach", "--iface", "eth0", "--all"]).unwrap_err();
    }

    fn sample() -> DecapStatus {
        let mut counters = BTreeMap::new();
        counters.insert(
            "decap_ipv4_in_ipv4".to_owned(),
            CounterValue {
                packets: 3,
                bytes: 252,
            },
        );
        let paths = DecapPaths::for_netns(4_026_531_840);
        DecapStatus {
            pin_dir: paths.pin_dir,
            record: paths.record,
            interfaces: vec![InterfaceStatus {
                iface: "eth0".into(),
                attached: true,
                problem: None,
                ifindex: Some(2),
                mode: Some("native".into()),
                link_id: Some(7),
                program_id: Some(42),
                local: vec!["198.18.5.2".parse().unwrap(), "fd00::5:2".parse().unwrap()],
                allow_sources: vec!["198.18.0.0/24".parse().unwrap()],
                vips: vec!["198.18.6.80".parse().unwrap()],
                counters,
                sysctls: vec![SysctlChange {
                    key: "net.ipv4.conf.all.arp_announce".into(),
                    old: "0".into(),
                    new: "2".into(),
                    needed_by: vec!["eth0".into()],
                }],
                addresses: vec![AddedAddress {
                    address: "198.18.6.80".parse().unwrap(),
                    prefix_len: 32,
                    dev: "lo".into(),
                    needed_by: vec!["eth0".into()],
                }],
            }],
        }
    }

    #[test]
    fn status_json_is_stable() {
        insta::assert_json_snapshot!("decap_status", sample());
    }

    #[test]
    fn status_text() {
        insta::assert_snapshot!("decap_status_text", render_status(&sample()));
    }
}
