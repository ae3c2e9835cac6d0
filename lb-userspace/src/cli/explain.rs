//! `lb explain <CLIENT:PORT> <VIP:PORT>`: one flow's VIP, tracked entry, Maglev pick and
//! what its next packet gets, as text or JSON.

use std::{net::SocketAddr, path::Path};

use clap::{Args, error::ErrorKind};

use crate::{
    api::{
        client,
        explain::{BackendStatus, Explanation},
        wire::Request,
    },
    model::{explain::check_flow, state::Proto},
};

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// The client's end of the flow, as ADDRESS:PORT ([IPv6]:PORT).
    #[arg(value_name = "CLIENT:PORT", value_parser = parse_flow_end)]
    pub(crate) client: SocketAddr,
    /// The VIP end, as ADDRESS:PORT (the client's address family).
    #[arg(value_name = "VIP:PORT", value_parser = parse_flow_end)]
    pub(crate) vip: SocketAddr,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub(crate) proto: Proto,
    /// QUIC VIPs: a destination connection ID (hex) of the flow's Handshake or
    /// short-header packets, to say which backend its server id sends them to.
    #[arg(long, value_name = "HEX", value_parser = parse_quic_id)]
    pub(crate) quic_id: Option<String>,
    /// Print JSON (stable, documented in docs/API.md) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// ADDRESS:PORT with a port a flow can have.
fn parse_flow_end(text: &str) -> Result<SocketAddr, String> {
    let end: SocketAddr = text.parse().map_err(|_| {
        format!("`{text}` is not ADDRESS:PORT (e.g. 198.18.0.10:80, or [fd00::10]:80 for IPv6)")
    })?;
    if end.port() == 0 {
        return Err(format!(
            "`{text}` has port 0: a TCP or UDP flow has a port on both ends"
        ));
    }
    Ok(end)
}

/// A connection ID in hex: 1 to 20 bytes (RFC 9000), kept as the text sent.
fn parse_quic_id(text: &str) -> Result<String, String> {
    crate::model::quic::parse_connection_id(text)
        .map(|_| text.to_ascii_lowercase())
        .map_err(|e| e.to_string())
}

/// Refuses what clap cannot see one argument at a time: a mixed-family pair.
fn checked(args: &ExplainArgs) -> Result<(), clap::Error> {
    check_flow(args.client, args.vip)
        .map_err(|e| clap::Error::raw(ErrorKind::ArgumentConflict, format!("{e}\n")))
}

pub(crate) fn run(socket: &Path, args: ExplainArgs) -> anyhow::Result<()> {
    if let Err(error) = checked(&args) {
        error.exit();
    }
    let answer: Explanation = client::call_as(
        socket,
        &Request::Explain {
            client: args.client,
            vip: args.vip,
            proto: args.proto,
            quic_id: args.quic_id,
        },
    )?;
    if args.json {
        crate::cli::output::line(serde_json::to_string_pretty(&answer)?)
    } else {
        crate::cli::output::line(text(&answer))
    }
}

fn backend(b: &BackendStatus) -> String {
    let Some(addr) = b.backend else {
        return "a removed backend".to_owned();
    };
    let weight = b
        .weight
        .map(|w| format!(", weight {w}"))
        .unwrap_or_default();
    let drained = if b.drained { ", drained" } else { "" };
    format!("{addr} ({}, health {}{weight}{drained})", b.state, b.health)
}

/// The answer for people: one line per part, the verdict last.
pub(crate) fn text(a: &Explanation) -> String {
    let mut lines = vec![format!("flow:     {} -> {}/{}", a.client, a.vip, a.proto)];
    lines.push(match &a.service {
        Some(s) => format!(
            "VIP:      {}/{} {}, {}, {} backends ({} live, {} healthy){}",
            a.vip,
            a.proto,
            s.mode,
            s.check.as_ref().map_or_else(
                || "unchecked".to_owned(),
                |c| format!("checked by {}", c.probe)
            ),
            s.backends,
            s.live,
            s.healthy,
            if s.fail_open { ", fail open" } else { "" }
        ),
        None if a.vip_address => format!(
            "VIP:      none ({} is a VIP's address on other ports or protocols)",
            a.vip.ip()
        ),
        None => "VIP:      none".to_owned(),
    });
    lines.push(match &a.tracked {
        Some(t) => format!(
            "tracked:  {}, idle {} s, {} of {} s left{} -> {}",
            t.state,
            t.idle_secs,
            t.expires_in_secs,
            t.timeout_secs,
            if t.expired { " (expired)" } else { "" },
            backend(&t.backend)
        ),
        None => "tracked:  no".to_owned(),
    });
    let admission = match &a.tracked {
        Some(t) => &t.admission,
        None => &a.admission,
    };
    if !admission.is_empty() {
        lines.push(format!("admitted: {admission}"));
    }
    if let Some(m) = &a.maglev {
        lines.push(format!(
            "maglev:   hash {:08x}, slot {} of {}, table {} -> {}",
            m.hash,
            m.slot,
            m.table_size,
            m.table_fingerprint,
            m.backend
                .as_ref()
                .map_or_else(|| "empty slot".to_owned(), backend)
        ));
    }
    lines.push(format!(
        "verdict:  {} ({}, counted as {})",
        serde_json::to_value(a.verdict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        a.action,
        a.counter
    ));
    lines.push(format!("          {}", a.explanation));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures;

    #[test]
    fn explanations_read_as_documented() {
        for (name, answer) in fixtures::explanations() {
            insta::assert_snapshot!(format!("explain_{name}"), text(&answer));
        }
    }

    /// The arguments alone, as `lb explain` parses them.
    #[derive(clap::Parser)]
    struct Explain {
        #[command(flatten)]
        args: ExplainArgs,
    }

    fn parse(args: &[&str]) -> Result<ExplainArgs, clap::Error> {
        let mut all = vec!["explain"];
        all.extend_from_slice(args);
        <Explain as clap::Parser>::try_parse_from(all).map(|e| e.args)
    }

    #[test]
    fn bad_flows_are_refused_by_the_parser() {
        let ok = parse(&["198.18.0.1:40000", "198.18.1.1:80", "--proto", "udp"]).expect("valid");
        assert_eq!(ok.proto, Proto::Udp);
        checked(&ok).unwrap();
        for (args, reason) in [
            (vec!["198.18.0.1", "198.18.1.1:80"], "is not ADDRESS:PORT"),
            (vec!["198.18.0.1:1", "vip:80"], "is not ADDRESS:PORT"),
            (vec!["198.18.0.1:0", "198.18.1.1:80"], "port 0"),
            (vec!["198.18.0.1:1", "198.18.1.1:0"], "port 0"),
            (
                vec!["198.18.0.1:1", "198.18.1.1:80", "--proto", "sctp"],
                "sctp",
            ),
        ] {
            let error = parse(&args).expect_err("refused").to_string();
            assert!(error.contains(reason), "{args:?}: {error}");
        }
        let mixed = parse(&["198.18.0.1:1", "[fd00:1::1]:80"]).expect("parses");
        let error = checked(&mixed).expect_err("mixed families");
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
        assert!(
            error.to_string().contains("different address families"),
            "{error}"
        );
    }
}
