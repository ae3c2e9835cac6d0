//! `lb explain`: reads what the maps hold for one flow, with the keys the datapath builds
//! (main.rs `process`, lookup.rs, conntrack.rs `lookup`, select.rs), and says what its next
//! packet gets and why. The decision itself is [`crate::model::explain::decide`].

use std::{collections::HashMap, net::SocketAddr};

use lb_common::{
    consts::{BACKEND_ACTIVE, BACKEND_DRAINING, NO_BACKEND, VIP_FLAG_SOURCE_RANGES},
    encap::{MODE_DSR_L2, MODE_NAT},
    flow::{FlowKey, Timeout, unproven_timeout_ns},
    gue::{EARLIER_TABLES, MODE_DSR_GUE, hop_ids},
    quic::{QuicServerKey, config_id},
    service::{Backend, EndpointKey, VipKey},
};

use super::{answer::datapath_error, published::Published, reader::Reader};
use crate::{
    api::{
        error::{ApiError, ErrorCode},
        explain::{
            BackendStatus, Explanation, MaglevPick, QuicIdRoute, QuicRoute, ServiceMatch,
            TrackedFlow,
        },
    },
    control::map_sync::{BackendView, VipView, wire_addr},
    daemon::flows::state_name,
    datapath::conntrack::monotonic_coarse_ns,
    model::{
        check::CheckConfig,
        explain::{self, Entry, Facts, FlowError, MaglevSlot, Verdict},
        health::Health,
        quic::parse_connection_id,
        state::{Proto, Service},
    },
};

const NS: u64 = 1_000_000_000;

impl From<FlowError> for ApiError {
    fn from(error: FlowError) -> Self {
        let code = match error {
            FlowError::PortZero(_) => ErrorCode::InvalidAddress,
            FlowError::FamilyMismatch { .. } => ErrorCode::FamilyMismatch,
        };
        ApiError::new(code, error.to_string())
    }
}

/// The key parse.rs builds for a client → VIP packet (ports in host order, IPv4 in the
/// first four bytes): CONNTRACK's key and the flow hash's input.
pub(crate) fn flow_key(client: SocketAddr, vip: SocketAddr, proto: Proto) -> FlowKey {
    let (src, family) = wire_addr(client.ip());
    let (dst, _) = wire_addr(vip.ip());
    FlowKey {
        src,
        dst,
        src_port: client.port(),
        dst_port: vip.port(),
        proto: proto.number(),
        family,
        _pad: [0; 2],
    }
}

/// Every listed backend by (id, generation), with its VIP.
type Known<'a> = HashMap<(u32, u32), (Service, &'a BackendView)>;

impl Reader {
    pub(super) fn explain(
        &self,
        snap: &Published,
        client: SocketAddr,
        vip: SocketAddr,
        proto: Proto,
        quic_id: Option<&str>,
    ) -> Result<Explanation, ApiError> {
        explain::check_flow(client, vip)?;
        let key = flow_key(client, vip, proto);
        let (facts, place) = self.facts(snap, &key)?;
        let service = Service { addr: vip, proto };
        let view = &snap.view;
        let known: Known<'_> = view
            .iter()
            .flat_map(|v| {
                v.backends
                    .iter()
                    .map(|b| ((b.id, b.generation), (v.service, b)))
            })
            .collect();
        let size = snap.limits.maglev_size;
        let verdict = explain::decide(&facts);

        let vip_view = view.iter().find(|v| v.service == service);
        let matched = facts
            .vip
            .map(|_| Self::service_match(snap, service, vip_view));
        let tracked = facts.tracked.map(|(conn, backend)| {
            let idle_ns = facts.now_ns.saturating_sub(conn.last_seen_ns);
            let timeout_ns = if facts.proven {
                facts.timeouts[Timeout::index_of_state(conn.state)]
            } else {
                unproven_timeout_ns(conn.state, &facts.timeouts)
            };
            TrackedFlow {
                state: state_name(conn.state).to_owned(),
                idle_secs: idle_ns / NS,
                timeout_secs: timeout_ns / NS,
                expires_in_secs: timeout_ns.saturating_sub(idle_ns) / NS,
                expired: explain::entry(&facts) == Entry::Expired,
                proven: facts.proven,
                admission: explain::admission_of(&conn, facts.proven, backend.mode == MODE_NAT),
                backend: Self::backend_status(
                    snap,
                    &known,
                    conn.backend_id,
                    &backend,
                    (conn.vip_id, conn.generation),
                ),
            }
        });
        let maglev = match (place, vip_view) {
            (Some(place), Some(v)) => Some(MaglevPick {
                hash: place.hash,
                slot: place.slot,
                table_size: size,
                table_fingerprint: format!("{:016x}", v.fingerprint),
                backend: facts.slot.map(|(id, backend)| {
                    Self::backend_status(
                        snap,
                        &known,
                        id,
                        &backend,
                        (backend.vip_id, backend.generation),
                    )
                }),
            }),
            _ => None,
        };
        let mut answer = Explanation {
            client,
            vip,
            proto,
            service: matched,
            vip_address: facts.vip_address,
            tracked,
            maglev,
            verdict,
            action: verdict.action().to_owned(),
            counter: verdict.counter().to_owned(),
            explanation: String::new(),
            admission: if facts.tracked.is_some() {
                String::new()
            } else {
                explain::admission_of_new_flow(self.facts.new_flow_limit)
            },
            hops: Vec::new(),
            quic: None,
        };
        answer.quic = self.quic_route(snap, &known, service, facts.vip.map(|v| v.id), quic_id)?;
        let mode = facts
            .tracked
            .map(|(_, backend)| backend.mode)
            .filter(|_| verdict == Verdict::ForwardTracked)
            .or_else(|| facts.slot.map(|(_, backend)| backend.mode));
        if mode == Some(MODE_DSR_GUE) {
            answer.hops = self.hops(&known, &facts, place, verdict)?;
        }
        answer.explanation = sentence(&answer, explain::entry(&facts), mode);
        Ok(answer)
    }

    /// gue.rs `of_flow`: the flow's backend, then the live table's choice, then the earlier
    /// tables' (MAGLEV_HOPS), each once, as far as they still serve the VIP in the first
    /// one's family.
    fn hops(
        &self,
        known: &Known<'_>,
        facts: &Facts,
        place: Option<MaglevSlot>,
        verdict: Verdict,
    ) -> Result<Vec<SocketAddr>, ApiError> {
        let first = match (verdict, facts.tracked, facts.slot) {
            (Verdict::ForwardTracked, Some((conn, backend)), _) => (conn.backend_id, backend),
            (Verdict::NewFlow | Verdict::Rebalance, _, Some(slot)) => slot,
            _ => return Ok(Vec::new()),
        };
        let current = facts.slot.map_or(NO_BACKEND, |(id, _)| id);
        let earlier = match (place, facts.vip) {
            (Some(place), Some(vip)) => self
                .maps
                .earlier_hops(vip.id * 2 + u32::from(place.table), place.slot)
                .map_err(datapath_error)?
                .map_or([NO_BACKEND; EARLIER_TABLES], |e| e.ids),
            _ => [NO_BACKEND; EARLIER_TABLES],
        };
        let (ids, count) = hop_ids(first.0, current, &earlier, NO_BACKEND);
        let mut hops = Vec::new();
        for (i, id) in ids.iter().take(count).enumerate() {
            let backend = self.maps.backend(*id).map_err(datapath_error)?;
            let serves = i == 0
                || (backend.vip_id == first.1.vip_id
                    && backend.family == first.1.family
                    && matches!(backend.state, BACKEND_ACTIVE | BACKEND_DRAINING));
            if let Some((_, view)) = known.get(&(*id, backend.generation))
                && serves
            {
                hops.push(view.addr);
            }
        }
        Ok(hops)
    }

    /// A QUIC VIP's routing, and where the connection ID `quic_id` (hex) goes: the
    /// datapath's QUIC_SERVERS lookup with the key it builds (lb-common `QuicServerKey::of_id`),
    /// then BACKENDS, which must serve the VIP (active or draining).
    fn quic_route(
        &self,
        snap: &Published,
        known: &Known<'_>,
        service: Service,
        vip_id: Option<u32>,
        quic_id: Option<&str>,
    ) -> Result<Option<QuicRoute>, ApiError> {
        let configs = snap
            .state
            .vips
            .get(&service)
            .map(|v| v.quic.as_slice())
            .unwrap_or_default();
        let invalid = |message: String| ApiError::new(ErrorCode::InvalidQuic, message);
        let Some(vip_id) = vip_id.filter(|_| !configs.is_empty()) else {
            return match quic_id {
                Some(_) => Err(invalid(format!(
                    "{service} is not a QUIC VIP: --quic-id is for VIPs with QUIC configs"
                ))),
                None => Ok(None),
            };
        };
        let connection_id = match quic_id {
            None => None,
            Some(text) => {
                let id = parse_connection_id(text).map_err(|e| invalid(e.to_string()))?;
                let config = config_id(id[0]);
                let found = configs.iter().find(|c| c.config_id() == config);
                let (server_id, backend) = match found {
                    None => (None, None),
                    Some(found) => {
                        let len = found.server_id_len();
                        let key = QuicServerKey::of_id(vip_id, &id, len as u8);
                        let server_id: String =
                            key.id[1..=len].iter().map(|b| format!("{b:02x}")).collect();
                        let backend = match self.maps.quic_server(&key).map_err(datapath_error)? {
                            Some(backend_id) => {
                                let backend =
                                    self.maps.backend(backend_id).map_err(datapath_error)?;
                                let serves = backend.vip_id == vip_id
                                    && matches!(backend.state, BACKEND_ACTIVE | BACKEND_DRAINING);
                                serves.then(|| {
                                    Self::backend_status(
                                        snap,
                                        known,
                                        backend_id,
                                        &backend,
                                        (backend.vip_id, backend.generation),
                                    )
                                })
                            }
                            None => None,
                        };
                        (Some(server_id), backend)
                    }
                };
                let counter = match (&server_id, &backend) {
                    (None, _) => "quic_unknown_config",
                    (Some(_), None) => "quic_unknown_server_id",
                    (Some(_), Some(_)) => "quic_by_server_id",
                };
                Some(QuicIdRoute {
                    id: text.to_ascii_lowercase(),
                    config_id: config,
                    server_id,
                    backend,
                    counter: counter.to_owned(),
                })
            }
        };
        Ok(Some(QuicRoute {
            configs: configs.iter().map(ToString::to_string).collect(),
            connection_id,
        }))
    }

    /// What the maps hold for the flow `key`, read as the datapath reads them, and where
    /// the flow falls in the VIP's table.
    fn facts(
        &self,
        snap: &Published,
        key: &FlowKey,
    ) -> Result<(Facts, Option<MaglevSlot>), ApiError> {
        let maps = &self.maps;
        // lookup.rs `service` and `is_vip_address`.
        let vip_key = VipKey {
            addr: key.dst,
            port: key.dst_port,
            proto: key.proto,
            family: key.family,
        };
        let vip = maps.vip(&vip_key).map_err(datapath_error)?;
        let vip_address = maps
            .vip(&VipKey::address_entry(key.dst, key.family))
            .map_err(datapath_error)?
            .is_some();
        // lookup.rs `endpoint`, with the client as the source.
        let client_is_endpoint = maps
            .endpoint(&EndpointKey {
                addr: key.src,
                port: key.src_port,
                proto: key.proto,
                family: key.family,
            })
            .map_err(datapath_error)?
            .is_some();
        // conntrack.rs `lookup` and select.rs `tracked` (BACKENDS[conn.backend_id]).
        let (unproven, proven) = maps.tracked_entries(key).map_err(datapath_error)?;
        let now_ns = monotonic_coarse_ns();
        let entry = explain::looked_up(unproven, proven);
        let (tracked, proven) = match entry {
            Some((conn, proven)) => (
                Some((conn, maps.backend(conn.backend_id).map_err(datapath_error)?)),
                proven,
            ),
            None => (None, false),
        };
        // policy.rs `source_allowed`: asked only of a VIP with source prefixes.
        let source_refused = match vip {
            Some(info) if info.flags & VIP_FLAG_SOURCE_RANGES != 0 => !maps
                .source_allowed(info.id, &key.src)
                .map_err(datapath_error)?,
            _ => false,
        };
        // select.rs `maglev`.
        let size = snap.limits.maglev_size;
        let seed = snap.hash_seed;
        let place = vip.and_then(|info| explain::maglev_slot(key, &seed, size, &info));
        let slot = match place {
            Some(place) => match maps.maglev_slot(place.index).map_err(datapath_error)? {
                NO_BACKEND => None,
                id => Some((id, maps.backend(id).map_err(datapath_error)?)),
            },
            None => None,
        };
        let facts = Facts {
            tracked,
            proven,
            vip,
            vip_address,
            slot,
            client_is_endpoint,
            proto: key.proto,
            source_refused,
            now_ns,
            timeouts: self.facts.timeouts,
        };
        Ok((facts, place))
    }

    fn service_match(snap: &Published, service: Service, view: Option<&VipView>) -> ServiceMatch {
        let spec = snap.state.vips.get(&service);
        let (backends, live, healthy) =
            view.map_or((0, 0, 0), |v| (v.backends.len(), v.live, v.healthy));
        ServiceMatch {
            mode: spec.map(|s| s.mode).unwrap_or_default(),
            check: spec.and_then(|s| s.check.as_ref()).map(CheckConfig::from),
            backends,
            live,
            healthy,
            fail_open: explain::fail_open(spec.is_some_and(|s| s.check.is_some()), live, healthy),
        }
    }

    /// BACKENDS[`id`] as seen by a flow pinned under (`vip_id`, `generation`).
    fn backend_status(
        snap: &Published,
        known: &Known<'_>,
        id: u32,
        backend: &Backend,
        (vip_id, generation): (u32, u32),
    ) -> BackendStatus {
        let state = explain::backend_state(backend, vip_id, generation);
        match known.get(&(id, generation)) {
            Some((service, b)) if state != "removed" => BackendStatus {
                backend: Some(b.addr),
                state: state.to_owned(),
                weight: Some(b.spec.weight),
                health: snap
                    .health
                    .get(&(*service, b.addr))
                    .map_or(Health::Unchecked, |h| h.health),
                drained: b.spec.draining,
            },
            _ => BackendStatus {
                backend: None,
                state: "removed".to_owned(),
                weight: None,
                health: Health::Unchecked,
                drained: false,
            },
        }
    }
}

fn shown(status: &BackendStatus) -> String {
    status
        .backend
        .map_or_else(|| "a removed backend".to_owned(), |b| b.to_string())
}

/// How a packet reaches a backend in the backend's mode (main.rs `to_backend_address`:
/// NAT rewrites, any other mode tail-calls encap.rs `to_backend`).
fn how(mode: Option<u8>) -> &'static str {
    match mode {
        Some(MODE_NAT) => "destination NAT",
        Some(MODE_DSR_L2) => "dsr-l2: the packet untouched, new MACs",
        Some(MODE_DSR_GUE) => "dsr-gue: the packet untouched inside UDP and GUE with its hop list",
        _ => "dsr-ipip: the packet encapsulated untouched",
    }
}

/// How a QUIC VIP's packets find their backend, and where the connection ID asked about
/// goes.
fn quic_sentence(quic: &QuicRoute) -> String {
    let mut text = format!(
        " QUIC: Initial and 0-RTT packets carry the client's connection ID and go by Maglev as above; Handshake and short-header packets go to the backend whose server id their connection ID carries (configs: {}), and a tracked flow's packet whose ID names another serving backend moves the flow there (quic_repinned).",
        quic.configs.join("; ")
    );
    if let Some(route) = &quic.connection_id {
        let id = &route.id;
        let config = route.config_id;
        text.push_str(&match (&route.server_id, &route.backend) {
            (None, _) => format!(
                " Connection ID {id} has config id {config}, none of the VIP's: its packets go by Maglev (quic_unknown_config)."
            ),
            (Some(server_id), None) => format!(
                " Connection ID {id} carries server id {server_id} (config {config}), which names no backend serving the VIP: its packets go by Maglev (quic_unknown_server_id)."
            ),
            (Some(server_id), Some(backend)) => format!(
                " Connection ID {id} carries server id {server_id} (config {config}): its Handshake and short-header packets go to {} (quic_by_server_id).",
                shown(backend)
            ),
        });
    }
    text
}

/// The verdict and why, in one sentence (two for TCP's SYN and RST rules).
pub(crate) fn sentence(a: &Explanation, entry: Entry, mode: Option<u8>) -> String {
    let flow = format!("{}/{}", a.vip, a.proto);
    let pick = a
        .maglev
        .as_ref()
        .and_then(|m| m.backend.as_ref().map(|b| (m.slot, shown(b))));
    let pick_text = pick
        .as_ref()
        .map_or_else(String::new, |(slot, b)| format!("{b} (slot {slot}"));
    let fail_open = if a.service.as_ref().is_some_and(|s| s.fail_open) {
        "; every backend fails its check, so all stay in the table (fail open)"
    } else {
        ""
    };
    let tcp = a.proto == Proto::Tcp;
    let mut text = match a.verdict {
        Verdict::ForwardTracked => {
            let t = a.tracked.as_ref();
            let backend = t.map_or_else(String::new, |t| shown(&t.backend));
            let draining = t.is_some_and(|t| t.backend.state == "draining");
            let down = t.is_some_and(|t| t.backend.state == "down");
            let mut s = format!(
                "forwarded to {backend} ({}), the backend its conntrack entry pins it to ({}, {} s of idleness left)",
                how(mode),
                t.map_or("", |t| t.state.as_str()),
                t.map_or(0, |t| t.expires_in_secs),
            );
            if draining {
                s.push_str(&format!(
                    "; {backend} is draining: it keeps its tracked flows but gets no new ones"
                ));
            }
            // select.rs `tracked`: only a TCP flow of a keep-tcp VIP stays on a down backend.
            if down {
                s.push_str(&format!(
                    "; {backend} is down, and the flow is kept on it because its VIP keeps TCP flows on a down backend (--on-down keep-tcp, ct_kept_on_down)"
                ));
            }
            s.push('.');
            // main.rs `to_backend`: a SYN skips the lookup and is balanced afresh.
            if tcp {
                s.push_str(&match &pick {
                    Some(_) => format!(" A SYN on this 5-tuple (a reused client port) would open a new connection instead, balanced to {pick_text})."),
                    None => " A SYN on this 5-tuple (a reused client port) would be balanced afresh instead.".to_owned(),
                });
            }
            s
        }
        Verdict::NewFlow | Verdict::Rebalance => {
            let why = match (entry, a.tracked.as_ref()) {
                (Entry::Expired, _) => "its conntrack entry is idle past its timeout, so it counts as absent (ct_expired)".to_owned(),
                (Entry::Stale, Some(t)) if t.backend.backend.is_none() => "the backend its conntrack entry pins it to was removed (ct_rebalanced)".to_owned(),
                (Entry::Stale, Some(t)) => format!(
                    "its conntrack entry pins it to {}, which is {} and so loses its flows (ct_rebalanced)",
                    shown(&t.backend),
                    t.backend.state
                ),
                _ => "the flow is not tracked".to_owned(),
            };
            let mut s = format!(
                "{why}: Maglev sends it to {pick_text}, {}) and tracks it{fail_open}.",
                how(mode)
            );
            // main.rs `pick_backend` and conntrack.rs `first_state`.
            if tcp && entry == Entry::Missing {
                s.push_str(" A SYN is tracked as opening; any other segment but a RST goes there too and is tracked as established, unproven for at most the opening timeout (ct_miss_mid_flow); a RST goes there untracked (ct_rst_untracked).");
            }
            s
        }
        Verdict::DropSourceNotAllowed => format!(
            "{} is outside every --allow-source prefix of {flow}: a flow it opens is dropped (drop_source_not_allowed); flows tracked before are not checked.",
            a.client.ip()
        ),
        Verdict::DropNoBackend => format!(
            "{flow} has no active backend in this slot of its live table (it has none, or every one is drained): dropped (drop_no_backend)."
        ),
        Verdict::PassVipOtherPort => format!(
            "no VIP is {flow}, though {} is a VIP's address on another port or protocol: passed untouched to the kernel's stack (XDP_PASS).",
            a.vip.ip()
        ),
        Verdict::PassNotVip => format!(
            "{} is no VIP's address: passed untouched to the kernel's stack (XDP_PASS).",
            a.vip.ip()
        ),
        Verdict::BackendReply => format!(
            "no VIP is {flow}, and {} is a NAT backend's endpoint: the packet is taken for that backend's reply and leaves with its VIP as the source (fwd_reply).",
            a.client
        ),
    };
    if let Some(quic) = a.quic.as_ref().filter(|_| a.service.is_some()) {
        text.push_str(&quic_sentence(quic));
    }
    if a.hops.len() > 1 {
        let list: Vec<String> = a.hops.iter().map(ToString::to_string).collect();
        text.push_str(&format!(
            " Its hop list is {}: a backend without the connection (TCP: no SYN and no socket; UDP: not among its recent flows) hands the packet on to the next, and the last takes it (the second chance).",
            list.join(" → ")
        ));
    }
    if let Some(first) = text.get(..1) {
        text = format!("{}{}", first.to_uppercase(), &text[1..]);
    }
    text
}

#[cfg(test)]
mod tests {
    use lb_common::encap::MODE_DSR_IPIP;

    use super::*;
    use crate::api::fixtures;

    /// The fixtures' sentences are this function's: the snapshots show what operators read.
    #[test]
    fn the_fixtures_say_what_the_daemon_says() {
        for (name, answer) in fixtures::explanations() {
            let (entry, mode) = match name {
                "tracked_draining" | "kept_on_down" => (Entry::Serving, Some(MODE_NAT)),
                "rebalanced" => (Entry::Stale, Some(MODE_NAT)),
                "new_flow_v6_dsr" => (Entry::Missing, Some(MODE_DSR_IPIP)),
                "new_flow_admission" | "new_flow_quic" => (Entry::Missing, Some(MODE_NAT)),
                "new_flow_gue_second_chance" => (Entry::Missing, Some(MODE_DSR_GUE)),
                _ => (Entry::Missing, None),
            };
            assert_eq!(sentence(&answer, entry, mode), answer.explanation, "{name}");
        }
    }

    #[test]
    fn the_key_is_the_datapaths() {
        let key = flow_key(
            "[fd00::1]:40000".parse().expect("addr"),
            "[fd00:1::1]:80".parse().expect("addr"),
            Proto::Udp,
        );
        assert_eq!(key.family, lb_common::consts::FAMILY_V6);
        assert_eq!((key.src_port, key.dst_port, key.proto), (40_000, 80, 17));
        assert_eq!(key.dst[..2], [0xfd, 0x00]);
        let v4 = flow_key(
            "198.18.0.1:1".parse().expect("addr"),
            "198.18.1.1:2".parse().expect("addr"),
            Proto::Tcp,
        );
        assert_eq!(v4.src, lb_common::service::addr_from_v4([198, 18, 0, 1]));
        assert_eq!(v4.family, lb_common::consts::FAMILY_V4);
    }
}
