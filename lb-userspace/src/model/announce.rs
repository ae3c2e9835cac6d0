//! Which VIP addresses this node announces, and why each VIP is or is not announced.
//!
//! A route is per address, a VIP per address, port and protocol: an address is announced
//! while any of its VIPs can be served here. Pure: the controller feeds it the VIPs as the
//! maps hold them and writes the routes it asks for.

use std::{collections::BTreeSet, fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::model::state::Service;

/// Why a VIP is (or is not) announced; stable names for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Announced: some backend takes new flows.
    Serving,
    /// Announced although every backend fails its check: they all stay in the table
    /// (fail open), so this node keeps its share as the others do.
    FailOpen,
    /// No `--announce-table`: nothing is announced by lb.
    Off,
    /// `lb node drain`: withdrawn; flows that still arrive are served.
    NodeDrained,
    /// No backend that takes new flows (none, or all drained).
    NoBackend,
    /// `lb down`: the datapath is going away.
    ShuttingDown,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Serving => "backends take new flows",
            Reason::FailOpen => "every backend fails its check; kept (fail open)",
            Reason::Off => "announcing is off: no --announce-table",
            Reason::NodeDrained => "node drained; `lb node resume` announces again",
            Reason::NoBackend => "no backend takes new flows",
            Reason::ShuttingDown => "shutting down (`lb down`)",
        })
    }
}

/// A VIP as the announcement sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipLoad {
    pub service: Service,
    /// Backends not drained by the operator.
    pub live: usize,
    /// Of those, the ones not failing their check.
    pub healthy: usize,
}

/// What this node wants of its routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub announcing: bool,
    pub drained: bool,
    pub shutting_down: bool,
}

/// One VIP's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub service: Service,
    /// Its address is announced (possibly for another VIP of the same address).
    pub announced: bool,
    pub reason: Reason,
}

/// The VIP's own reason, before addresses are shared.
fn reason(node: NodeState, vip: &VipLoad) -> Reason {
    if !node.announcing {
        Reason::Off
    } else if node.shutting_down {
        Reason::ShuttingDown
    } else if node.drained {
        Reason::NodeDrained
    } else if vip.live == 0 {
        Reason::NoBackend
    } else if vip.healthy == 0 {
        Reason::FailOpen
    } else {
        Reason::Serving
    }
}

/// The addresses to announce and every VIP's verdict.
pub fn plan(node: NodeState, vips: &[VipLoad]) -> (BTreeSet<IpAddr>, Vec<Verdict>) {
    let reasons: Vec<Reason> = vips.iter().map(|vip| reason(node, vip)).collect();
    let wanted: BTreeSet<IpAddr> = vips
        .iter()
        .zip(&reasons)
        .filter(|(_, r)| matches!(r, Reason::Serving | Reason::FailOpen))
        .map(|(vip, _)| vip.service.addr.ip())
        .collect();
    let verdicts = vips
        .iter()
        .zip(reasons)
        .map(|(vip, reason)| Verdict {
            service: vip.service,
            announced: wanted.contains(&vip.service.addr.ip()),
            reason,
        })
        .collect();
    (wanted, verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::Proto;

    fn vip(addr: &str, live: usize, healthy: usize) -> VipLoad {
        VipLoad {
            service: Service {
                addr: addr.parse().expect("address"),
                proto: Proto::Tcp,
            },
            live,
            healthy,
        }
    }

    const SERVING: NodeState = NodeState {
        announcing: true,
        drained: false,
        shutting_down: false,
    };

    #[test]
    fn an_address_is_announced_while_one_of_its_vips_has_backends() {
        let vips = [
            vip("198.18.78.1:80", 3, 3),
            vip("198.18.78.1:443", 0, 0),
            vip("198.18.78.2:80", 2, 0),
            vip("198.18.78.3:80", 0, 0),
        ];
        let (wanted, verdicts) = plan(SERVING, &vips);
        let addr = |text: &str| text.parse::<IpAddr>().expect("ip");
        assert_eq!(
            wanted,
            BTreeSet::from([addr("198.18.78.1"), addr("198.18.78.2")])
        );
        let got: Vec<(bool, Reason)> = verdicts.iter().map(|v| (v.announced, v.reason)).collect();
        assert_eq!(
            got,
            [
                (true, Reason::Serving),
                (true, Reason::NoBackend),
                (true, Reason::FailOpen),
                (false, Reason::NoBackend),
            ]
        );
    }

    #[test]
    fn drain_shutdown_and_off_withdraw_everything() {
        let vips = [vip("198.18.78.1:80", 3, 3), vip("[fd00:78::1]:80", 1, 1)];
        for (node, why) in [
            (
                NodeState {
                    drained: true,
                    ..SERVING
                },
                Reason::NodeDrained,
            ),
            (
                NodeState {
                    shutting_down: true,
                    drained: true,
                    ..SERVING
                },
                Reason::ShuttingDown,
            ),
            (
                NodeState {
                    announcing: false,
                    ..SERVING
                },
                Reason::Off,
            ),
        ] {
            let (wanted, verdicts) = plan(node, &vips);
            assert!(wanted.is_empty(), "{node:?}");
            assert!(
                verdicts.iter().all(|v| !v.announced && v.reason == why),
                "{node:?}: {verdicts:?}"
            );
        }
    }
}
