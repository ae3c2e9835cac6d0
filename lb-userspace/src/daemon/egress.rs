//! The advice about each attached interface as a way out (`model::egress`): read at start
//! and again after every sweep, since a veth's peer can gain or lose NAPI at any time.
//! A warning or note is logged when it appears or changes, and its end when it goes;
//! `lb status` shows what holds now.

use std::collections::BTreeMap;

use tracing::{debug, info, warn};

use crate::{
    datapath::{attach::PinnedAttachment, link_facts, netlink},
    model::{
        egress::{self, Advice, EgressFacts, Level, PeerRef},
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
