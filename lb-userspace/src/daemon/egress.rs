//! The advice about each attached interface as a way out (`model::egress`): read at start
//! and again after every sweep, since a veth's peer can gain or lose NAPI at any time.
//! A warning or note is logged when it appears or changes, and its end when it goes;
//! `lb status` shows what holds now. And the warnings when the counters of frames lost
//! that way grow (`xdp_redirect_lost`, `syn_checksum_partial`).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use lb_common::stats::Stat;
use tracing::{debug, info, warn};

use crate::{
    daemon::reader::Reader,
    datapath::{attach::PinnedAttachment, link_facts, netlink},
    model::{
        egress::{self, Advice, EgressFacts, Level, PeerRef, Problem},
        error_chain::error_chain,
    },
};

/// What lb knows of one attached interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Egress {
    /// The link kind (`veth`...); `None` for a plain device.
    pub(crate) kind: Option<String>,
    pub(crate) advice: Option<Advice>,
}

/// The last advice per attached interface, by ifindex.
#[derive(Debug, Default)]
pub(crate) struct EgressAdvisor {
    last: BTreeMap<u32, Egress>,
}

impl EgressAdvisor {
    /// Reads every attached interface again and logs what changed.
    pub(crate) fn refresh(&mut self, attachments: &[PinnedAttachment]) {
        self.last
            .retain(|ifindex, _| attachments.iter().any(|a| a.iface.index == *ifindex));
        for attachment in attachments {
            let iface = &attachment.iface;
            let facts = match link_facts::of_interface(iface.index) {
                Ok(facts) => facts,
                Err(error) => {
                    debug!(iface = %iface.name, error = %error_chain(&error), "cannot read the interface's link facts");
                    continue;
                }
            };
            // An adopted link keeps its mode: the kernel says which.
            let mode = match netlink::xdp_program(iface.index) {
                Ok(Some(xdp)) => xdp.mode,
                _ => attachment.mode,
            };
            let advice = egress::advise(&EgressFacts {
                iface: &iface.name,
                mode,
                kind: facts.kind.as_deref(),
                peer: facts.peer.as_ref().map(|peer| PeerRef {
                    ifindex: peer.ifindex,
                    name: peer.name.as_deref(),
                    elsewhere: peer.elsewhere,
                }),
                takes_redirects: facts.takes_redirects,
            });
            let now = Egress {
                kind: facts.kind,
                advice,
            };
            let before = self.last.insert(iface.index, now.clone());
            report(
                &iface.name,
                before.and_then(|b| b.advice).as_ref(),
                now.advice.as_ref(),
            );
        }
    }

    /// What is known of interface `ifindex`.
    pub(crate) fn of(&self, ifindex: u32) -> Egress {
        self.last.get(&ifindex).cloned().unwrap_or_default()
    }
}

/// Logs advice that is new or changed, and the end of a warning.
fn report(iface: &str, before: Option<&Advice>, now: Option<&Advice>) {
    if before == now {
        return;
    }
    if let Some(was) = before
        && was.level == Level::Warning
        && now.is_none_or(|advice| advice.level != Level::Warning)
    {
        info!(
            iface,
            "{iface} takes redirected frames again: the warning before no longer holds"
        );
    }
    match now {
        Some(advice) if advice.level == Level::Warning => warn!(iface, "{}", advice.text),
        Some(advice) => info!(iface, "{}", advice.text),
        None => {}
    }
}

/// How often a growing loss counter is logged again.
const REPEAT: Duration = Duration::from_secs(60);

/// A counter whose growth is worth a warning: at once the first time, then at most once
/// every [`REPEAT`] while it goes on.
#[derive(Debug, Default)]
struct Growth {
    /// The count the last warning reported, or the one found at the first look (what an
    /// earlier run counted into the pinned map is not news).
    reported: Option<u64>,
    warned: Option<Instant>,
}

impl Growth {
    /// How much `total` grew since the last warning, if a warning is due `now`.
    fn due(&mut self, total: u64, now: Instant) -> Option<u64> {
        let Some(reported) = self.reported else {
            self.reported = Some(total);
            return None;
        };
        if total <= reported || self.warned.is_some_and(|at| now < at + REPEAT) {
            return None;
        }
        self.reported = Some(total);
        self.warned = Some(now);
        Some(total - reported)
    }
}

/// Watches the counters of frames lost on the way out.
#[derive(Debug, Default)]
pub(crate) struct LossWatch {
    redirect_lost: Growth,
    checksum_partial: Growth,
}

impl LossWatch {
    /// Reads both counters and warns for each that grew, with the advice that explains it.
    pub(crate) fn check(&mut self, reader: &Reader) {
        let counters = match reader.stats.read() {
            Ok(counters) => counters,
            Err(error) => {
                debug!(%error, "reading the loss counters failed");
                return;
            }
        };
        let published = reader.published.load();
        let advice = || {
            published
                .interfaces
                .iter()
                .filter_map(|i| Some((i, i.advice.as_ref()?)))
        };
        let now = Instant::now();
        let total = counters.get(Stat::RedirectLost).packets;
        if let Some(lost) = self.redirect_lost.due(total, now) {
            let why: Vec<&str> = advice()
                .filter(|(_, advice)| advice.level == Level::Warning)
                .map(|(_, advice)| advice.text.as_str())
                .collect();
            warn!(
                lost,
                xdp_redirect_lost = total,
                "the kernel dropped {lost} frame(s) lb had redirected: {}",
                if why.is_empty() {
                    "`lb status` says which interface needs what".to_owned()
                } else {
                    why.join("; ")
                }
            );
        }
        // Only native mode forwards a partial checksum as it is; in skb mode the kernel
        // keeps the offload's state and the receiver trusts it.
        let native_veths: Vec<&str> = advice()
            .filter(|(_, advice)| {
                matches!(
                    advice.problem,
                    Problem::PeerWithoutNapi | Problem::PeerNapiUnknown | Problem::PartialChecksums
                )
            })
            .filter_map(|(_, advice)| advice.command.as_deref())
            .collect();
        let total = counters.get(Stat::SynChecksumPartial).packets;
        if let Some(partial) = self.checksum_partial.due(total, now)
            && !native_veths.is_empty()
        {
            warn!(
                partial,
                syn_checksum_partial = total,
                "{partial} client SYN(s) arrived with a checksum their sender left to its tx offload: XDP cannot finish it, so their receivers drop them; where the peers of lb's veths are, run: {}",
                native_veths.join("; ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_reported_at_once_then_at_most_once_a_minute() {
        let mut growth = Growth::default();
        let start = Instant::now();
        assert_eq!(
            growth.due(5, start),
            None,
            "what was there at start is not news"
        );
        assert_eq!(growth.due(5, start), None);
        assert_eq!(growth.due(8, start), Some(3));
        assert_eq!(
            growth.due(9, start + Duration::from_secs(1)),
            None,
            "too soon"
        );
        assert_eq!(
            growth.due(12, start + REPEAT),
            Some(4),
            "all since the last one"
        );
        assert_eq!(growth.due(12, start + REPEAT * 3), None, "no growth");
    }
}
