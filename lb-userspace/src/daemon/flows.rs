//! `lb conntrack list|flush`: which tracked flows an operator's filter picks, and how one
//! flow is shown. Pure: the walk itself is [`crate::datapath::conntrack::ConntrackTable::walk`].

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    consts::{FAMILY_V4, FAMILY_V6},
    flow::{
        CT_CLOSED, CT_CLOSING, CT_DATAGRAM, CT_ESTABLISHED, CT_OPENING, Conn, FlowKey, Timeout,
        Timeouts, unproven_timeout_ns,
    },
    service::Addr,
};

use crate::{
    api::error::{ApiError, ErrorCode},
    api::wire::FlowEntry,
    control::map_sync::{VipView, wire_addr},
    model::state::Proto,
};

/// Flows picked by VIP, protocol and backend; each part is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    vip: Option<(Addr, u8, u16)>,
    proto: Option<u8>,
    /// (backend id, generation) of every backend the operator named.
    backends: Option<Vec<(u32, u32)>>,
}

impl Filter {
    /// Resolves the operator's arguments against the VIPs and backends there are. A VIP or
    /// backend that does not exist is refused, so a typo never lists or flushes nothing
    /// silently (or, worse, something else).
    pub(crate) fn resolve(
        view: &[VipView],
        vip: Option<SocketAddr>,
        proto: Option<Proto>,
        backend: Option<SocketAddr>,
    ) -> Result<Self, ApiError> {
        let proto_text = proto.map(|p| format!("/{p}")).unwrap_or_default();
        let services: Vec<&VipView> = view
            .iter()
            .filter(|v| vip.is_none_or(|addr| v.service.addr == addr))
            .filter(|v| proto.is_none_or(|p| v.service.proto == p))
            .collect();
        if let Some(addr) = vip
            && services.is_empty()
        {
            return Err(ApiError::new(
                ErrorCode::UnknownVip,
                format!("no VIP {addr}{proto_text}"),
            ));
        }
        let backends = match backend {
            None => None,
            Some(addr) => {
                let ids: Vec<(u32, u32)> = services
                    .iter()
                    .flat_map(|v| &v.backends)
                    .filter(|b| b.addr == addr)
                    .map(|b| (b.id, b.generation))
                    .collect();
                if ids.is_empty() {
                    let scope = vip
                        .map(|v| format!(" in VIP {v}{proto_text}"))
                        .unwrap_or_default();
                    return Err(ApiError::new(
                        ErrorCode::UnknownBackend,
                        format!("no backend {addr}{scope}"),
                    ));
                }
                Some(ids)
            }
        };
        Ok(Self {
            vip: vip.map(|addr| {
                let (wire, family) = wire_addr(addr.ip());
                (wire, family, addr.port())
            }),
            proto: proto.map(Proto::number),
            backends,
        })
    }

    pub(crate) fn matches(&self, key: &FlowKey, conn: &Conn) -> bool {
        self.vip.is_none_or(|(addr, family, port)| {
            key.dst == addr && key.family == family && key.dst_port == port
        }) && self.proto.is_none_or(|p| key.proto == p)
            && self
                .backends
                .as_ref()
                .is_none_or(|ids| ids.contains(&(conn.backend_id, conn.generation)))
    }
}

/// The name a `CT_*` state is shown with.
pub(crate) fn state_name(state: u8) -> &'static str {
    match state {
        CT_OPENING => "opening",
        CT_ESTABLISHED => "established",
        CT_CLOSING => "closing",
        CT_CLOSED => "closed",
        CT_DATAGRAM => "udp",
        _ => "unknown",
    }
}

fn socket(addr: &Addr, family: u8, port: u16) -> Option<SocketAddr> {
    let ip = match family {
        FAMILY_V4 => IpAddr::from([addr[0], addr[1], addr[2], addr[3]]),
        FAMILY_V6 => IpAddr::from(*addr),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// One flow as listed at `now_ns`; `backends` maps (id, generation) to the backend's
/// address (a flow whose backend is gone shows none). `None` for an entry the datapath
/// cannot have written (unknown family or protocol).
pub(crate) fn entry(
    key: &FlowKey,
    conn: &Conn,
    proven: bool,
    now_ns: u64,
    timeouts: &Timeouts,
    backends: &HashMap<(u32, u32), SocketAddr>,
) -> Option<FlowEntry> {
    const NS: u64 = 1_000_000_000;
    let idle_ns = now_ns.saturating_sub(conn.last_seen_ns);
    let timeout_ns = if proven {
        timeouts[Timeout::index_of_state(conn.state)]
    } else {
        unproven_timeout_ns(conn.state, timeouts)
    };
    Some(FlowEntry {
        client: socket(&key.src, key.family, key.src_port)?,
        vip: socket(&key.dst, key.family, key.dst_port)?,
        proto: Proto::from_number(key.proto)?,
        backend: backends.get(&(conn.backend_id, conn.generation)).copied(),
        state: state_name(conn.state).to_owned(),
        idle_secs: idle_ns / NS,
        expires_in_secs: timeout_ns.saturating_sub(idle_ns) / NS,
        proven,
    })
}

#[cfg(test)]
mod tests {
    use lb_common::flow::DEFAULT_TIMEOUTS_NS;

    use super::*;
    use crate::{
        control::map_sync::BackendView,
        model::state::{BackendSpec, Service},
    };

    fn sock(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    fn view() -> Vec<VipView> {
        let backend = |addr: &str, id, generation| BackendView {
            addr: sock(addr),
            spec: BackendSpec {
                server_id: None,
                weight: 1,
                draining: false,
            },
            id,
            generation,
        };
        vec![
            VipView {
                service: Service {
                    addr: sock("198.18.1.1:80"),
                    proto: Proto::Tcp,
                },
                id: 0,
                backends: vec![
                    backend("198.18.11.2:80", 0, 1),
                    backend("198.18.12.2:80", 1, 2),
                ],
                fingerprint: 0,
                live: 2,
                healthy: 2,
            },
            VipView {
                service: Service {
                    addr: sock("198.18.1.1:53"),
                    proto: Proto::Udp,
                },
                id: 1,
                backends: vec![backend("198.18.11.2:53", 2, 3)],
                fingerprint: 0,
                live: 1,
                healthy: 1,
            },
        ]
    }

    fn flow(vip: &str, proto: Proto, backend_id: u32, generation: u32) -> (FlowKey, Conn) {
        let vip = sock(vip);
        let (dst, family) = wire_addr(vip.ip());
        let (src, _) = wire_addr(sock("198.18.0.1:1").ip());
        (
            FlowKey {
                src,
                dst,
                src_port: 40_000,
                dst_port: vip.port(),
                proto: proto.number(),
                family,
                _pad: [0; 2],
            },
            Conn {
                backend_id,
                generation,
                state: CT_ESTABLISHED,
                ..Conn::default()
            },
        )
    }

    #[test]
    fn filters_pick_by_vip_protocol_and_backend_generation() {
        let view = view();
        let tcp_b1 = flow("198.18.1.1:80", Proto::Tcp, 0, 1);
        let tcp_b1_old = flow("198.18.1.1:80", Proto::Tcp, 0, 9);
        let tcp_b2 = flow("198.18.1.1:80", Proto::Tcp, 1, 2);
        let udp = flow("198.18.1.1:53", Proto::Udp, 2, 3);
        let all = [tcp_b1, tcp_b1_old, tcp_b2, udp];
        let picked = |filter: &Filter| -> Vec<bool> {
            all.iter().map(|(k, c)| filter.matches(k, c)).collect()
        };
        let resolve = |vip: Option<&str>, proto, backend: Option<&str>| {
            Filter::resolve(&view, vip.map(sock), proto, backend.map(sock)).expect("valid filter")
        };
        assert_eq!(picked(&resolve(None, None, None)), [true; 4]);
        assert_eq!(
            picked(&resolve(Some("198.18.1.1:80"), None, None)),
            [true, true, true, false]
        );
        assert_eq!(
            picked(&resolve(None, Some(Proto::Udp), None)),
            [false, false, false, true]
        );
        assert_eq!(
            picked(&resolve(None, None, Some("198.18.11.2:80"))),
            [true, false, false, false],
            "a flow pinned under another generation is not the backend's"
        );
    }

    #[test]
    fn unknown_vips_and_backends_are_refused() {
        let view = view();
        let error = Filter::resolve(&view, Some(sock("198.18.1.9:80")), None, None)
            .expect_err("unknown VIP");
        assert!(error.message.contains("no VIP 198.18.1.9:80"), "{error}");
        assert_eq!(error.code, ErrorCode::UnknownVip);
        let error = Filter::resolve(&view, Some(sock("198.18.1.1:80")), Some(Proto::Udp), None)
            .expect_err("wrong protocol");
        assert!(
            error.message.contains("no VIP 198.18.1.1:80/udp"),
            "{error}"
        );
        let error = Filter::resolve(&view, None, None, Some(sock("198.18.11.2:81")))
            .expect_err("unknown backend");
        assert!(
            error.message.contains("no backend 198.18.11.2:81"),
            "{error}"
        );
        assert_eq!(error.code, ErrorCode::UnknownBackend);
        let error = Filter::resolve(
            &view,
            Some(sock("198.18.1.1:53")),
            None,
            Some(sock("198.18.11.2:80")),
        )
        .expect_err("a backend of another VIP");
        assert!(error.message.contains("in VIP 198.18.1.1:53"), "{error}");
    }

    #[test]
    fn an_entry_shows_idle_time_and_time_left() {
        let (key, mut conn) = flow("198.18.1.1:80", Proto::Tcp, 0, 1);
        conn.last_seen_ns = 5_000_000_000;
        let backends = HashMap::from([((0, 1), sock("198.18.11.2:80"))]);
        let shown = entry(
            &key,
            &conn,
            true,
            65_000_000_000,
            &DEFAULT_TIMEOUTS_NS,
            &backends,
        )
        .expect("a valid entry");
        assert_eq!(shown.client, sock("198.18.0.1:40000"));
        assert_eq!(shown.vip, sock("198.18.1.1:80"));
        assert_eq!(shown.backend, Some(sock("198.18.11.2:80")));
        assert_eq!(shown.state, "established");
        assert_eq!((shown.idle_secs, shown.expires_in_secs), (60, 10_740));
        conn.generation = 2;
        let gone = entry(
            &key,
            &conn,
            true,
            65_000_000_000,
            &DEFAULT_TIMEOUTS_NS,
            &backends,
        )
        .expect("a valid entry");
        assert_eq!(gone.backend, None);
        // Unproven, the same established entry lives no longer than an opening one.
        conn.last_seen_ns = 35_000_000_000;
        let unproven = entry(
            &key,
            &conn,
            false,
            65_000_000_000,
            &DEFAULT_TIMEOUTS_NS,
            &backends,
        )
        .expect("a valid entry");
        assert_eq!((unproven.proven, unproven.expires_in_secs), (false, 30));
    }
}
