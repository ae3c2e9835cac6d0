//! What lb tells the operator about an interface it sends frames out of, from what the
//! kernel says about it (`datapath::link_facts`). A veth is the case that needs it: in
//! native mode the kernel drops every frame redirected out of a veth whose peer has no
//! NAPI (neither GRO nor an XDP program), and a sender behind the peer that leaves its
//! checksums partial (tx offload on) gets its packets dropped by the receiver, since XDP
//! cannot finish them; in skb mode such a sender's TSO segments reach lb whole and are
//! answered as too big. `ethtool -K <peer> tx off gro on` on the peer fixes all three.
//! Pure: the daemon logs the advice and `lb status` shows it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A veth's other end, as far as lb can see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRef<'a> {
    pub ifindex: u32,
    pub name: Option<&'a str>,
    /// In another network namespace than lb's.
    pub elsewhere: bool,
}

/// What is known of one attached interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressFacts<'a> {
    pub iface: &'a str,
    /// `native` or `skb` (generic).
    pub mode: &'a str,
    /// The link kind (`veth`...); `None` for a plain device.
    pub kind: Option<&'a str>,
    pub peer: Option<PeerRef<'a>>,
    /// Whether the kernel takes frames redirected to it by XDP; `None`: it cannot say
    /// (Linux before 6.3).
    pub takes_redirects: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Frames are (or may well be) lost.
    Warning,
    /// Frames are lost only if the hosts behind it are set up a certain way.
    Note,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Warning => "warning",
            Level::Note => "note",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    /// A veth whose peer has no NAPI, in native mode: redirected frames are dropped.
    PeerWithoutNapi,
    /// A veth in native mode on a kernel that cannot say whether its peer has NAPI.
    PeerNapiUnknown,
    /// Another device that takes no redirected frames, in native mode.
    TakesNoRedirects,
    /// A veth that takes redirects, in native mode: senders behind it must send full
    /// checksums.
    PartialChecksums,
    /// A veth in skb mode: senders behind it must not send TSO segments.
    TsoSegments,
}

/// One piece of advice: how bad, what, why, and the command that fixes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advice {
    pub level: Level,
    pub problem: Problem,
    pub text: String,
    /// To run where the peer is (or the lb flag to change); `None` if there is none.
    pub command: Option<String>,
}

/// The advice for an interface, if it needs any.
pub fn advise(facts: &EgressFacts<'_>) -> Option<Advice> {
    let iface = facts.iface;
    let veth = facts.kind == Some("veth");
    let native = facts.mode == "native";
    if !veth {
        return (native && facts.takes_redirects == Some(false)).then(|| Advice {
            level: Level::Warning,
            problem: Problem::TakesNoRedirects,
            text: format!(
                "{iface}{} takes no frames redirected by XDP: the kernel drops every frame lb sends out of it (counted as xdp_redirect_lost); attach it in generic mode",
                facts
                    .kind
                    .map(|kind| format!(" (a {kind})"))
                    .unwrap_or_default()
            ),
            command: Some("lb run --xdp-mode skb ...".to_owned()),
        });
    }
    let (peer, command) = peer_and_command(facts.peer, iface);
    let advice = match (native, facts.takes_redirects) {
        (true, Some(false)) => Advice {
            level: Level::Warning,
            problem: Problem::PeerWithoutNapi,
            text: format!(
                "{iface} is a veth whose peer {peer} has no NAPI (neither GRO nor an XDP program): the kernel drops every frame lb redirects out of {iface} (counted as xdp_redirect_lost); on the peer run `{command}` (gro for NAPI; tx off so senders there give full checksums)"
            ),
            command: Some(command),
        },
        (true, None) => Advice {
            level: Level::Warning,
            problem: Problem::PeerNapiUnknown,
            text: format!(
                "{iface} is a veth: the kernel drops frames lb redirects out of it unless its peer {peer} has NAPI (GRO or an XDP program), and this kernel (before 6.3) cannot tell lb whether it has; on the peer run `{command}`"
            ),
            command: Some(command),
        },
        _ if native => Advice {
            level: Level::Note,
            problem: Problem::PartialChecksums,
            text: format!(
                "{iface} is a veth: senders behind its peer {peer} must send full checksums (tx offload off): XDP cannot finish a partial checksum, so the receiver drops such a packet; if flows through {iface} stall, on the peer run `{command}`"
            ),
            command: Some(command),
        },
        _ => Advice {
            level: Level::Note,
            problem: Problem::TsoSegments,
            text: format!(
                "{iface} is a veth in skb mode: senders behind its peer {peer} must not send TSO segments (tx offload off): lb sees such a segment whole and answers it as too big, so large transfers stall; on the peer run `{command}`"
            ),
            command: Some(command),
        },
    };
    Some(advice)
}

/// The peer as the text names it, and the command with its name (a placeholder when lb
/// cannot read it).
fn peer_and_command(peer: Option<PeerRef<'_>>, iface: &str) -> (String, String) {
    let Some(peer) = peer else {
        return (
            "(unknown)".to_owned(),
            format!("ethtool -K <peer of {iface}> tx off gro on"),
        );
    };
    let place = if peer.elsewhere {
        " in another network namespace"
    } else {
        ""
    };
    match peer.name {
        Some(name) => (
            format!("{name}{place}"),
            format!("ethtool -K {name} tx off gro on"),
        ),
        None => (
            format!("(ifindex {}{place})", peer.ifindex),
            format!(
                "ethtool -K <the interface of index {} there> tx off gro on",
                peer.ifindex
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(mode: &str, takes_redirects: Option<bool>) -> EgressFacts<'_> {
        EgressFacts {
            iface: "eth1",
            mode,
            kind: Some("veth"),
            peer: Some(PeerRef {
                ifindex: 7,
                name: Some("veth9f2"),
                elsewhere: true,
            }),
            takes_redirects,
        }
    }

    #[test]
    fn a_veth_whose_peer_has_no_napi_is_a_warning_with_the_command() {
        let advice = advise(&veth("native", Some(false))).expect("advice");
        assert_eq!(advice.level, Level::Warning);
        assert_eq!(advice.problem, Problem::PeerWithoutNapi);
        assert_eq!(
            advice.command.as_deref(),
            Some("ethtool -K veth9f2 tx off gro on")
        );
        assert!(
            advice
                .text
                .contains("peer veth9f2 in another network namespace has no NAPI")
                && advice.text.contains("xdp_redirect_lost"),
            "{}",
            advice.text
        );
        let unknown = advise(&veth("native", None)).expect("advice");
        assert_eq!(
            (unknown.level, unknown.problem),
            (Level::Warning, Problem::PeerNapiUnknown)
        );
    }

    #[test]
    fn a_veth_that_takes_redirects_or_runs_in_skb_mode_gets_a_note() {
        for (facts, problem) in [
            (veth("native", Some(true)), Problem::PartialChecksums),
            (veth("skb", Some(false)), Problem::TsoSegments),
            (veth("skb", None), Problem::TsoSegments),
        ] {
            let advice = advise(&facts).expect("advice");
            assert_eq!(
                (advice.level, advice.problem),
                (Level::Note, problem),
                "{facts:?}"
            );
            assert!(advice.text.contains("tx off gro on"), "{}", advice.text);
        }
    }

    #[test]
    fn other_devices_need_advice_only_when_they_refuse_redirects_in_native_mode() {
        let nic = |mode, takes_redirects| EgressFacts {
            iface: "eth0",
            mode,
            kind: None,
            peer: None,
            takes_redirects,
        };
        assert_eq!(advise(&nic("native", Some(true))), None);
        assert_eq!(advise(&nic("native", None)), None);
        assert_eq!(advise(&nic("skb", Some(false))), None);
        let refused = advise(&nic("native", Some(false))).expect("advice");
        assert_eq!(refused.problem, Problem::TakesNoRedirects);
        assert!(
            refused
                .command
                .as_deref()
                .is_some_and(|c| c.contains("--xdp-mode skb"))
        );
    }

    #[test]
    fn a_peer_lb_cannot_name_is_named_by_its_index() {
        let mut facts = veth("native", Some(false));
        facts.peer = Some(PeerRef {
            ifindex: 12,
            name: None,
            elsewhere: true,
        });
        let advice = advise(&facts).expect("advice");
        assert!(
            advice
                .text
                .contains("(ifindex 12 in another network namespace)"),
            "{}",
            advice.text
        );
        assert_eq!(
            advice.command.as_deref(),
            Some("ethtool -K <the interface of index 12 there> tx off gro on")
        );
    }
}
