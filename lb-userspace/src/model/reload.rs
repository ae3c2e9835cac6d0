//! `lb reload` (and SIGHUP): what changes when the live state becomes the `--config`
//! file's. Pure: it lists the differences and refuses what a reload cannot do; the daemon
//! validates the rest against the kernel and applies it like an API change.

use std::{fmt, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{
    check::CheckConfig,
    cluster::ClusterSettings,
    mode::Mode,
    policy::OnDown,
    prefix::Prefix,
    state::{Proto, Service, State},
};

/// Where the declared state comes from, and the `[cluster]` the daemon runs with.
#[derive(Clone, Debug, Default)]
pub struct Declared {
    /// `--config`; `None`: nothing to reload.
    pub config: Option<PathBuf>,
    /// `--hash-seed` and `--announce-table`, which win over the file.
    pub flags: ClusterSettings,
    /// What the datapath was loaded with (flags over the file at start).
    pub running: ClusterSettings,
}

/// One difference between the live state and the file, as reported to the operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Difference {
    VipAdded {
        vip: SocketAddr,
        proto: Proto,
        mode: Mode,
        backends: usize,
    },
    VipRemoved {
        vip: SocketAddr,
        proto: Proto,
        backends: usize,
    },
    /// Only a VIP without backends changes mode (see [`ReloadError`]).
    ModeChanged {
        vip: SocketAddr,
        proto: Proto,
        from: Mode,
        to: Mode,
    },
    CheckChanged {
        vip: SocketAddr,
        proto: Proto,
        from: Option<CheckConfig>,
        to: Option<CheckConfig>,
    },
    /// Applies to tracked flows at once (every backend entry of the VIP is rewritten).
    OnDownChanged {
        vip: SocketAddr,
        proto: Proto,
        from: OnDown,
        to: OnDown,
    },
    /// New flows are admitted by the new prefixes; tracked flows stay.
    SourcesChanged {
        vip: SocketAddr,
        proto: Proto,
        from: Vec<Prefix>,
        to: Vec<Prefix>,
    },
    /// New QUIC-LB configs (empty: not a QUIC VIP). A new server-id length gives every
    /// backend a new server id, listed as `server-id-changed`.
    QuicChanged {
        vip: SocketAddr,
        proto: Proto,
        from: Vec<String>,
        to: Vec<String>,
    },
    BackendAdded {
        vip: SocketAddr,
        proto: Proto,
        backend: SocketAddr,
        weight: u32,
        draining: bool,
    },
    /// A QUIC VIP's backend gets another server id (`null`: none): its server must issue
    /// IDs with the new one; packets with the old one go by Maglev.
    ServerIdChanged {
        vip: SocketAddr,
        proto: Proto,
        backend: SocketAddr,
        from: Option<String>,
        to: Option<String>,
    },
    BackendRemoved {
        vip: SocketAddr,
        proto: Proto,
        backend: SocketAddr,
    },
    WeightChanged {
        vip: SocketAddr,
        proto: Proto,
        backend: SocketAddr,
        from: u32,
        to: u32,
    },
    BackendDrained {
        vip: SocketAddr,
        proto: Proto,
        backend: SocketAddr,
    },
    BackendUndrained {
        vip: SocketAddr,
        proto: Proto,
        backend: SocketAddr,
    },
    NodeDrained,
    /// The notify hook (`[notify]`) changed; `None`: no hook. Its next run takes it.
    NotifyChanged {
        from: Option<String>,
        to: Option<String>,
    },
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReloadError {
    #[error(
        "VIP {service}: the file changes its mode from {from} to {to}, but it has {backends} backend(s) whose tracked flows would break; remove the VIP from the file and reload, then add it back with its new mode"
    )]
    ModeChangeWithBackends {
        service: Service,
        from: Mode,
        to: Mode,
        backends: usize,
    },
    #[error(
        "the file changes [cluster] {setting}, which is fixed when the datapath is loaded: restart the daemon to change it (the pinned datapath keeps forwarding meanwhile)"
    )]
    ClusterChanged { setting: &'static str },
}

/// The state a reload makes live: the file's, but a drained node stays drained (only
/// `lb node resume` announces it again, as at start).
pub fn target(current: &State, mut declared: State) -> State {
    declared.node.drained |= current.node.drained;
    declared
}

/// Refuses a `[cluster]` that differs from the running one. `running` is what the daemon
/// started with (flags over its file); `reloaded` the same flags over the new file.
pub fn check_cluster(
    running: &ClusterSettings,
    reloaded: &ClusterSettings,
) -> Result<(), ReloadError> {
    if running.hash_seed != reloaded.hash_seed {
        return Err(ReloadError::ClusterChanged {
            setting: "hash_seed",
        });
    }
    if running.announce_table != reloaded.announce_table {
        return Err(ReloadError::ClusterChanged {
            setting: "announce_table",
        });
    }
    Ok(())
}

/// What changes from `current` to `target`, in the order it is reported: VIPs that go,
/// VIPs that come, then each VIP's check and backends. A mode change is refused while the
/// VIP has backends, as `lb vip set-mode` refuses it.
pub fn differences(current: &State, target: &State) -> Result<Vec<Difference>, ReloadError> {
    let mut out = Vec::new();
    for (service, vip) in &current.vips {
        if !target.vips.contains_key(service) {
            out.push(Difference::VipRemoved {
                vip: service.addr,
                proto: service.proto,
                backends: vip.backends.len(),
            });
        }
    }
    for (service, wanted) in &target.vips {
        let (vip, proto) = (service.addr, service.proto);
        let Some(live) = current.vips.get(service) else {
            out.push(Difference::VipAdded {
                vip,
                proto,
                mode: wanted.mode,
                backends: wanted.backends.len(),
            });
            continue;
        };
        if live.mode != wanted.mode && !live.backends.is_empty() {
            return Err(ReloadError::ModeChangeWithBackends {
                service: *service,
                from: live.mode,
                to: wanted.mode,
                backends: live.backends.len(),
            });
        }
        if live.mode != wanted.mode {
            out.push(Difference::ModeChanged {
                vip,
                proto,
                from: live.mode,
                to: wanted.mode,
            });
        }
        if live.on_down != wanted.on_down {
            out.push(Difference::OnDownChanged {
                vip,
                proto,
                from: live.on_down,
                to: wanted.on_down,
            });
        }
        if live.sources != wanted.sources {
            out.push(Difference::SourcesChanged {
                vip,
                proto,
                from: live.sources.iter().copied().collect(),
                to: wanted.sources.iter().copied().collect(),
            });
        }
        if live.quic != wanted.quic {
            out.push(Difference::QuicChanged {
                vip,
                proto,
                from: live.quic.iter().map(ToString::to_string).collect(),
                to: wanted.quic.iter().map(ToString::to_string).collect(),
            });
        }
        if live.check != wanted.check {
            out.push(Difference::CheckChanged {
                vip,
                proto,
                from: live.check.as_ref().map(CheckConfig::from),
                to: wanted.check.as_ref().map(CheckConfig::from),
            });
        }
        for backend in live.backends.keys() {
            if !wanted.backends.contains_key(backend) {
                out.push(Difference::BackendRemoved {
                    vip,
                    proto,
                    backend: *backend,
                });
            }
        }
        for (backend, spec) in &wanted.backends {
            let backend = *backend;
            let Some(was) = live.backends.get(&backend) else {
                out.push(Difference::BackendAdded {
                    vip,
                    proto,
                    backend,
                    weight: spec.weight,
                    draining: spec.draining,
                });
                continue;
            };
            if was.server_id != spec.server_id {
                out.push(Difference::ServerIdChanged {
                    vip,
                    proto,
                    backend,
                    from: was.server_id.map(|id| id.to_string()),
                    to: spec.server_id.map(|id| id.to_string()),
                });
            }
            if was.weight != spec.weight {
                out.push(Difference::WeightChanged {
                    vip,
                    proto,
                    backend,
                    from: was.weight,
                    to: spec.weight,
                });
            }
            match (was.draining, spec.draining) {
                (false, true) => out.push(Difference::BackendDrained {
                    vip,
                    proto,
                    backend,
                }),
                (true, false) => out.push(Difference::BackendUndrained {
                    vip,
                    proto,
                    backend,
                }),
                _ => {}
            }
        }
    }
    if target.node.drained && !current.node.drained {
        out.push(Difference::NodeDrained);
    }
    Ok(out)
}

fn service(vip: &SocketAddr, proto: &Proto) -> Service {
    Service {
        addr: *vip,
        proto: *proto,
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::NotifyChanged { from, to } => {
                let describe =
                    |hook: &Option<String>| hook.clone().unwrap_or_else(|| "none".to_owned());
                write!(f, "~ notify hook: {} -> {}", describe(from), describe(to))
            }
            Difference::VipAdded {
                vip,
                proto,
                mode,
                backends,
            } => write!(
                f,
                "+ VIP {} ({mode}, {backends} backend(s))",
                service(vip, proto)
            ),
            Difference::VipRemoved {
                vip,
                proto,
                backends,
            } => write!(
                f,
                "- VIP {} and its {backends} backend(s)",
                service(vip, proto)
            ),
            Difference::ModeChanged {
                vip,
                proto,
                from,
                to,
            } => write!(f, "~ VIP {} mode: {from} -> {to}", service(vip, proto)),
            Difference::CheckChanged {
                vip,
                proto,
                from,
                to,
            } => {
                let describe = |check: &Option<CheckConfig>| match check {
                    Some(check) => check.probe.clone(),
                    None => "none".to_owned(),
                };
                write!(
                    f,
                    "~ VIP {} check: {} -> {}",
                    service(vip, proto),
                    describe(from),
                    describe(to)
                )
            }
            Difference::OnDownChanged {
                vip,
                proto,
                from,
                to,
            } => write!(f, "~ VIP {} on-down: {from} -> {to}", service(vip, proto)),
            Difference::SourcesChanged {
                vip,
                proto,
                from,
                to,
            } => {
                let describe = |sources: &[Prefix]| {
                    if sources.is_empty() {
                        "any".to_owned()
                    } else {
                        sources
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    }
                };
                write!(
                    f,
                    "~ VIP {} allowed sources: {} -> {}",
                    service(vip, proto),
                    describe(from),
                    describe(to)
                )
            }
            Difference::QuicChanged {
                vip,
                proto,
                from,
                to,
            } => {
                let describe = |configs: &[String]| {
                    if configs.is_empty() {
                        "none".to_owned()
                    } else {
                        configs.join("; ")
                    }
                };
                write!(
                    f,
                    "~ VIP {} QUIC configs: {} -> {}",
                    service(vip, proto),
                    describe(from),
                    describe(to)
                )
            }
            Difference::ServerIdChanged {
                vip,
                proto,
                backend,
                from,
                to,
            } => {
                let describe =
                    |id: &Option<String>| id.clone().unwrap_or_else(|| "none".to_owned());
                write!(
                    f,
                    "~ backend {backend} of {}: server id {} -> {}",
                    service(vip, proto),
                    describe(from),
                    describe(to)
                )
            }
            Difference::BackendAdded {
                vip,
                proto,
                backend,
                weight,
                draining,
            } => write!(
                f,
                "+ backend {backend} of {} (weight {weight}{})",
                service(vip, proto),
                if *draining { ", draining" } else { "" }
            ),
            Difference::BackendRemoved {
                vip,
                proto,
                backend,
            } => write!(f, "- backend {backend} of {}", service(vip, proto)),
            Difference::WeightChanged {
                vip,
                proto,
                backend,
                from,
                to,
            } => write!(
                f,
                "~ backend {backend} of {}: weight {from} -> {to}",
                service(vip, proto)
            ),
            Difference::BackendDrained {
                vip,
                proto,
                backend,
            } => write!(
                f,
                "~ backend {backend} of {}: draining",
                service(vip, proto)
            ),
            Difference::BackendUndrained {
                vip,
                proto,
                backend,
            } => write!(
                f,
                "~ backend {backend} of {}: drain ended",
                service(vip, proto)
            ),
            Difference::NodeDrained => f.write_str("~ node drained (its VIPs are withdrawn)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config;
    use std::path::Path;

    fn state(text: &str) -> State {
        config::parse(text, Path::new("test.toml")).expect("valid test config")
    }

    const BASE: &str = r#"
[[vip]]
address = "198.18.1.1:80"
backends = [
  { address = "198.18.2.1:80", weight = 100 },
  { address = "198.18.2.2:80", weight = 100 },
]
"#;

    #[test]
    fn the_same_file_changes_nothing() {
        assert_eq!(differences(&state(BASE), &state(BASE)), Ok(vec![]));
    }

    #[test]
    fn weights_joiners_leavers_and_drains_are_listed() {
        let next = state(
            r#"
[[vip]]
address = "198.18.1.1:80"
backends = [
  { address = "198.18.2.1:80", weight = 300, drain = true },
  { address = "198.18.2.3:80" },
]
[[vip]]
address = "198.18.1.2:53"
proto = "udp"
"#,
        );
        let vip: SocketAddr = "198.18.1.1:80".parse().expect("addr");
        let proto = Proto::Tcp;
        let found = differences(&state(BASE), &next).expect("allowed");
        assert_eq!(
            found,
            vec![
                Difference::BackendRemoved {
                    vip,
                    proto,
                    backend: "198.18.2.2:80".parse().expect("addr"),
                },
                Difference::WeightChanged {
                    vip,
                    proto,
                    backend: "198.18.2.1:80".parse().expect("addr"),
                    from: 100,
                    to: 300,
                },
                Difference::BackendDrained {
                    vip,
                    proto,
                    backend: "198.18.2.1:80".parse().expect("addr"),
                },
                Difference::BackendAdded {
                    vip,
                    proto,
                    backend: "198.18.2.3:80".parse().expect("addr"),
                    weight: 100,
                    draining: false,
                },
                Difference::VipAdded {
                    vip: "198.18.1.2:53".parse().expect("addr"),
                    proto: Proto::Udp,
                    mode: Mode::Nat,
                    backends: 0,
                },
            ]
        );
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            text[1],
            "~ backend 198.18.2.1:80 of 198.18.1.1:80/tcp: weight 100 -> 300"
        );
        let removed = differences(&next, &state(BASE)).expect("allowed");
        assert!(removed.contains(&Difference::VipRemoved {
            vip: "198.18.1.2:53".parse().expect("addr"),
            proto: Proto::Udp,
            backends: 0,
        }));
        assert!(removed.contains(&Difference::BackendUndrained {
            vip,
            proto,
            backend: "198.18.2.1:80".parse().expect("addr"),
        }));
    }

    #[test]
    fn a_mode_change_with_backends_is_refused() {
        let dsr = BASE.replace("[[vip]]", "[[vip]]\nmode = \"dsr-ipip\"");
        let refused = differences(&state(BASE), &state(&dsr));
        assert!(
            matches!(
                refused,
                Err(ReloadError::ModeChangeWithBackends { backends: 2, .. })
            ),
            "{refused:?}"
        );
        // Without backends the mode may change.
        let empty = "[[vip]]\naddress = \"198.18.1.1:80\"\n";
        let empty_dsr = "[[vip]]\naddress = \"198.18.1.1:80\"\nmode = \"dsr-ipip\"\n";
        assert_eq!(
            differences(&state(empty), &state(empty_dsr)),
            Ok(vec![Difference::ModeChanged {
                vip: "198.18.1.1:80".parse().expect("addr"),
                proto: Proto::Tcp,
                from: Mode::Nat,
                to: Mode::DsrIpip,
            }])
        );
    }

    #[test]
    fn on_down_and_source_changes_are_listed() {
        let next = BASE.replace(
            "[[vip]]",
            "[[vip]]\non_down = \"move\"\nallow_sources = [\"198.18.0.0/24\"]",
        );
        let vip: SocketAddr = "198.18.1.1:80".parse().expect("addr");
        let found = differences(&state(BASE), &state(&next)).expect("allowed");
        assert_eq!(
            found,
            vec![
                Difference::OnDownChanged {
                    vip,
                    proto: Proto::Tcp,
                    from: OnDown::KeepTcp,
                    to: OnDown::Move,
                },
                Difference::SourcesChanged {
                    vip,
                    proto: Proto::Tcp,
                    from: vec![],
                    to: vec!["198.18.0.0/24".parse().expect("prefix")],
                },
            ]
        );
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "~ VIP 198.18.1.1:80/tcp on-down: keep-tcp -> move",
                "~ VIP 198.18.1.1:80/tcp allowed sources: any -> 198.18.0.0/24",
            ]
        );
    }

    #[test]
    fn quic_config_and_server_id_changes_are_listed() {
        let quic = "[[vip]]\naddress = \"198.18.1.1:443\"\nproto = \"udp\"\nquic = [\"config=0,server-id-len=2,nonce-len=6\"]\nbackends = [{ address = \"198.18.2.1:443\", server_id = \"0a1b\" }]\n";
        let rotated = quic
            .replace(
                "quic = [",
                "quic = [\"config=1,server-id-len=2,nonce-len=8\", ",
            )
            .replace("0a1b", "0c0d");
        let vip: SocketAddr = "198.18.1.1:443".parse().expect("addr");
        let found = differences(&state(quic), &state(&rotated)).expect("allowed");
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "~ VIP 198.18.1.1:443/udp QUIC configs: config=0,server-id-len=2,nonce-len=6 -> config=1,server-id-len=2,nonce-len=8; config=0,server-id-len=2,nonce-len=6",
                "~ backend 198.18.2.1:443 of 198.18.1.1:443/udp: server id 0a1b -> 0c0d",
            ]
        );
        assert!(matches!(
            &found[1],
            Difference::ServerIdChanged { vip: v, to: Some(to), .. } if *v == vip && to == "0c0d"
        ));
    }

    #[test]
    fn a_drained_node_stays_drained() {
        let mut current = state(BASE);
        current.node.drained = true;
        assert!(target(&current, state(BASE)).node.drained);
        let drained = format!("[node]\ndrained = true\n{BASE}");
        assert_eq!(
            differences(&state(BASE), &target(&state(BASE), state(&drained))),
            Ok(vec![Difference::NodeDrained])
        );
    }

    #[test]
    fn cluster_settings_cannot_change() {
        let seeded = ClusterSettings {
            hash_seed: Some("0123456789abcdef".parse().expect("seed")),
            announce_table: Some(100),
        };
        assert_eq!(check_cluster(&seeded, &seeded), Ok(()));
        let other_seed = ClusterSettings {
            hash_seed: None,
            ..seeded
        };
        assert_eq!(
            check_cluster(&seeded, &other_seed),
            Err(ReloadError::ClusterChanged {
                setting: "hash_seed"
            })
        );
        let other_table = ClusterSettings {
            announce_table: Some(101),
            ..seeded
        };
        assert!(check_cluster(&seeded, &other_table).is_err());
    }
}
