//! Serving `lb capture` on an API connection: the request checked against the live state
//! and turned into the datapath's filter, the program swap asked of the controller, then
//! each record read from the ring, named (VIP, backend, mode, conntrack, table) and sent
//! as a line, until the count, the client's `stop`, or the client leaves.

use std::{collections::HashMap, io, net::SocketAddr, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt as _};
use lb_common::{
    capture::{
        CAPTURE_CT_NONE, CAPTURE_CT_PROVEN, CAPTURE_NONE, CAPTURE_SNAPLEN_MAX, CaptureFilter,
    },
    consts::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    stats::Stat,
};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

use crate::{
    api::{
        error::{ApiError, ErrorCode},
        wire::{
            CaptureControl, CaptureEnd, CaptureEvent, CaptureInterface, CaptureStarted,
            CapturedPacket, Request, Response,
        },
    },
    control::map_sync::wire_addr,
    daemon::{flows::state_name, owner::Commands, published::Published, reader::Reader},
    datapath::capture::{Record, WatchedRing, decode, watch},
    model::prefix::Prefix,
};

type Lines = Framed<UnixStream, LinesCodec>;

/// What a `capture` request asks for, checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) filter: CaptureFilter,
    pub(crate) count: Option<u64>,
    /// The filter, for people.
    pub(crate) described: String,
}

/// Checks a `capture` request against the state: the VIP and backend must exist, the
/// numbers be in range.
pub(crate) fn plan(published: &Published, request: &Request) -> Result<Plan, ApiError> {
    let Request::Capture {
        vip,
        backend,
        client,
        drops,
        sample,
        count,
        snaplen,
    } = request
    else {
        return Err(ApiError::new(ErrorCode::Internal, "not a capture request"));
    };
    let bad = |message: String| ApiError::new(ErrorCode::BadRequest, message);
    if *sample == 0 {
        return Err(bad("sample must be 1 or more (one in N packets)".into()));
    }
    if *count == Some(0) {
        return Err(bad("count must be 1 or more".into()));
    }
    if *snaplen == 0 || *snaplen > CAPTURE_SNAPLEN_MAX {
        return Err(bad(format!(
            "snaplen must be 1 to {CAPTURE_SNAPLEN_MAX} bytes, not {snaplen}"
        )));
    }
    let mut filter = CaptureFilter {
        sample: *sample,
        snaplen: *snaplen,
        drops_only: u8::from(*drops),
        ..CaptureFilter::default()
    };
    let mut described = Vec::new();
    if let Some(vip) = vip {
        if !published
            .state
            .vips
            .keys()
            .any(|service| service.addr == *vip)
        {
            return Err(ApiError::new(
                ErrorCode::UnknownVip,
                format!("no VIP {vip} (any protocol) to capture"),
            ));
        }
        (filter.vip, filter.vip_family) = wire_addr(vip.ip());
        filter.vip_port = vip.port();
        described.push(format!("vip {vip}"));
    }
    if let Some(backend) = backend {
        let known = published
            .state
            .vips
            .values()
            .any(|spec| spec.backends.contains_key(backend));
        if !known {
            return Err(ApiError::new(
                ErrorCode::UnknownBackend,
                format!("no backend {backend} of any VIP to capture"),
            ));
        }
        (filter.backend, filter.backend_family) = wire_addr(backend.ip());
        filter.backend_port = backend.port();
        described.push(format!("backend {backend}"));
    }
    if let Some(client) = client {
        (filter.client, filter.client_mask, filter.client_family) = prefix_bytes(client);
        described.push(format!("client {client}"));
    }
    if *drops {
        described.push("drops only".into());
    }
    if *sample > 1 {
        described.push(format!("1 in {sample} per CPU"));
    }
    if let Some(count) = count {
        described.push(format!("{count} packets"));
    }
    let described = if described.is_empty() {
        "every packet".to_owned()
    } else {
        described.join(", ")
    };
    Ok(Plan {
        filter,
        count: *count,
        described,
    })
}

/// A prefix as the datapath compares it: address and mask bytes, and the family.
fn prefix_bytes(prefix: &Prefix) -> ([u8; 16], [u8; 16], u8) {
    let (addr, family) = wire_addr(prefix.addr);
    let len = usize::from(prefix.len.min(Prefix::max_len(prefix.addr)));
    let mut mask = [0u8; 16];
    for (bit, byte) in (0..len).map(|bit| (bit, bit / 8)) {
        mask[byte] |= 0x80 >> (bit % 8);
    }
    let masked = std::array::from_fn(|i| addr[i] & mask[i]);
    (masked, mask, family)
}

/// Serves a `capture` request on `lines` until it ends; errors are the client's socket's.
pub(crate) async fn serve(
    lines: &mut Lines,
    commands: &Commands,
    reader: &Reader,
    request: Request,
) -> io::Result<()> {
    let published = reader.published.load_full();
    let plan = match plan(&published, &request) {
        Ok(plan) => plan,
        Err(refusal) => return send(lines, &Response::failure(refusal)).await,
    };
    let ring = match commands.capture_start(plan.filter).await {
        Ok(ring) => ring,
        Err(refusal) => return send(lines, &Response::failure(refusal)).await,
    };
    let ring = match watch(ring) {
        Ok(ring) => ring,
        Err(failed) => {
            let (ring, error) = *failed;
            commands.capture_stop(Some(ring)).await;
            let refusal = ApiError::new(
                ErrorCode::Internal,
                format!("could not watch the capture ring: {error}"),
            );
            return send(lines, &Response::failure(refusal)).await;
        }
    };
    // From here the capture is on: `Lent` gives the ring back and swaps `lb` back in, on
    // every way out (the client's socket failing mid-write, this task aborted).
    let mut lent = Lent {
        ring: Some(ring),
        commands: commands.clone(),
    };
    let started = CaptureStarted {
        interfaces: published
            .interfaces
            .iter()
            .map(|iface| CaptureInterface {
                name: iface.name.clone(),
                ifindex: iface.ifindex,
            })
            .collect(),
        snaplen: plan.filter.snaplen,
        filter: plan.described.clone(),
    };
    let started = serde_json::to_value(started).map_err(io::Error::other)?;
    send(lines, &Response::success(started)).await?;
    let Some(ring) = lent.ring.as_mut() else {
        return Ok(());
    };
    let (captured, why) = stream(lines, ring, reader, plan.count).await?;
    let counts = commands.capture_stop(lent.take_ring()).await;
    let end = CaptureEvent::End(CaptureEnd {
        captured,
        lost: counts.lost,
        why: why.to_owned(),
    });
    send_line(lines, &end).await?;
    SinkExt::<String>::flush(lines).await.map_err(codec_error)
}

/// The ring lent to a running capture; dropping it ends the capture and gives it back.
struct Lent {
    ring: Option<WatchedRing>,
    commands: Commands,
}

impl Lent {
    fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take().map(WatchedRing::into_inner)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(ring) = self.take_ring() {
            self.commands.capture_stop_detached(Some(ring));
        }
    }
}

/// Sends records until the count is reached, the client stops or leaves; the packets sent
/// and why it ended.
async fn stream(
    lines: &mut Lines,
    ring: &mut WatchedRing,
    reader: &Reader,
    count: Option<u64>,
) -> io::Result<(u64, &'static str)> {
    let clock = Clock::now();
    let mut names = Names::default();
    let mut captured = 0u64;
    let why = loop {
        tokio::select! {
            line = lines.next() => match line {
                Some(Ok(line)) => match serde_json::from_str::<CaptureControl>(line.trim()) {
                    Ok(CaptureControl::Stop {}) => break "stopped",
                    // Anything else is not for a running capture: it ends it.
                    Err(_) => break "stopped: the client sent something other than a stop",
                },
                _ => break "the client left",
            },
            ready = ring.readable_mut() => {
                let mut ready = ready?;
                names.refresh(&reader.published.load_full());
                let mut reached = false;
                while let Some(item) = ready.get_inner_mut().next() {
                    let Some(record) = decode(&item) else { continue };
                    let packet = names.packet(&record, &clock);
                    lines.feed(line(&CaptureEvent::Packet(Box::new(packet)))?).await.map_err(codec_error)?;
                    captured += 1;
                    if count.is_some_and(|count| captured >= count) {
                        reached = true;
                        break;
                    }
                }
                ready.clear_ready();
                SinkExt::<String>::flush(lines).await.map_err(codec_error)?;
                if reached {
                    break "count reached";
                }
            }
        }
    };
    Ok((captured, why))
}

/// CLOCK_MONOTONIC (the datapath's `bpf_ktime_get_ns`) to Unix time.
struct Clock {
    offset_ns: i128,
}

impl Clock {
    fn now() -> Self {
        let monotonic = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let monotonic =
            i128::from(monotonic.tv_sec) * 1_000_000_000 + i128::from(monotonic.tv_nsec);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos() as i128;
        Self {
            offset_ns: unix - monotonic,
        }
    }

    fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(i128::from(monotonic_ns) + self.offset_ns).unwrap_or(0)
    }
}

/// What the records' ids name, from the published state.
#[derive(Default)]
struct Names {
    from: Option<Arc<Published>>,
    vips: HashMap<u32, VipName>,
    backends: HashMap<u32, SocketAddr>,
}

struct VipName {
    label: String,
    mode: &'static str,
    fingerprint: String,
}

impl Names {
    /// Rebuilt when the daemon published a change since.
    fn refresh(&mut self, published: &Arc<Published>) {
        if self
            .from
            .as_ref()
            .is_some_and(|from| Arc::ptr_eq(from, published))
        {
            return;
        }
        self.vips.clear();
        self.backends.clear();
        for view in &published.view {
            let mode = published
                .state
                .vips
                .get(&view.service)
                .map_or("unknown", |spec| spec.mode.name());
            self.vips.insert(
                view.id,
                VipName {
                    label: format!("{}/{}", view.service.addr, view.service.proto),
                    mode,
                    fingerprint: format!("{:016x}", view.fingerprint),
                },
            );
            for backend in &view.backends {
                self.backends.insert(backend.id, backend.addr);
            }
        }
        self.from = Some(Arc::clone(published));
    }

    fn packet(&self, record: &Record<'_>, clock: &Clock) -> CapturedPacket {
        let header = &record.header;
        let vip = self.vips.get(&header.vip_id);
        // A passed packet's copy is left out when lb did not change it.
        let unchanged = header.sent_len == header.received_len && record.sent == record.received;
        let sent = header.sent_len != 0 && !unchanged;
        let engine = base64::engine::general_purpose::STANDARD;
        CapturedPacket {
            time_ns: clock.unix_ns(header.time_ns),
            ifindex: header.ifindex,
            verdict: verdict(header.action).to_owned(),
            reason: reason(header.reason).to_owned(),
            vip: vip.map(|vip| vip.label.clone()),
            backend: (header.backend_id != CAPTURE_NONE)
                .then(|| self.backends.get(&header.backend_id).copied())
                .flatten(),
            mode: vip.map(|vip| vip.mode.to_owned()),
            conntrack: conntrack(header.ct_table, header.ct_state),
            fingerprint: vip.map(|vip| vip.fingerprint.clone()),
            cpu: header.cpu,
            received_len: header.received_len,
            received: engine.encode(record.received),
            sent_len: sent.then_some(header.sent_len),
            sent: sent.then(|| engine.encode(record.sent)),
        }
    }
}

fn verdict(action: u32) -> &'static str {
    match action {
        XDP_TX => "tx",
        XDP_REDIRECT => "redirect",
        XDP_PASS => "pass",
        XDP_DROP => "drop",
        _ => "aborted",
    }
}

fn reason(index: u32) -> &'static str {
    Stat::ALL
        .get(index as usize)
        .map_or("unknown", |stat| stat.name())
}

fn conntrack(table: u8, state: u8) -> String {
    match table {
        CAPTURE_CT_NONE => "none".to_owned(),
        CAPTURE_CT_PROVEN => format!("{}, proven", state_name(state)),
        _ => format!("{}, unproven", state_name(state)),
    }
}

fn line(event: &CaptureEvent) -> io::Result<String> {
    serde_json::to_string(event).map_err(io::Error::other)
}

async fn send_line(lines: &mut Lines, event: &CaptureEvent) -> io::Result<()> {
    lines.feed(line(event)?).await.map_err(codec_error)
}

async fn send(lines: &mut Lines, response: &Response) -> io::Result<()> {
    let text = serde_json::to_string(response).map_err(io::Error::other)?;
    lines.send(text).await.map_err(codec_error)
}

fn codec_error(error: LinesCodecError) -> io::Error {
    match error {
        LinesCodecError::Io(error) => error,
        LinesCodecError::MaxLineLengthExceeded => io::Error::other(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_masked_bytes() {
        let prefix: Prefix = "198.18.0.0/16".parse().expect("prefix");
        let (addr, mask, family) = prefix_bytes(&prefix);
        assert_eq!(&addr[..4], &[198, 18, 0, 0]);
        assert_eq!(&mask[..4], &[255, 255, 0, 0]);
        assert_eq!(family, lb_common::consts::FAMILY_V4);
        let prefix: Prefix = "fd00::/12".parse().expect("prefix");
        let (addr, mask, _) = prefix_bytes(&prefix);
        assert_eq!(&mask[..3], &[0xff, 0xf0, 0]);
        assert_eq!(addr[0], 0xfd);
        assert_eq!(addr[1], 0x00);
    }

    #[test]
    fn names_of_verdicts_reasons_and_states() {
        assert_eq!(verdict(XDP_DROP), "drop");
        assert_eq!(verdict(99), "aborted");
        assert_eq!(reason(Stat::DropNoBackend.index()), "drop_no_backend");
        assert_eq!(reason(CAPTURE_NONE), "unknown");
        assert_eq!(conntrack(CAPTURE_CT_NONE, 0), "none");
        assert_eq!(
            conntrack(CAPTURE_CT_PROVEN, lb_common::flow::CT_ESTABLISHED),
            "established, proven"
        );
    }

    #[test]
    fn clock_offsets_monotonic_to_unix_time() {
        let clock = Clock::now();
        let monotonic = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let ns = monotonic.tv_sec as u64 * 1_000_000_000 + monotonic.tv_nsec as u64;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64;
        assert!(clock.unix_ns(ns).abs_diff(unix) < 1_000_000_000);
    }
}
