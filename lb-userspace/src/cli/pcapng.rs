//! The pcapng stream `lb capture` writes: a section header, one interface per interface lb
//! runs on, each captured packet as lb received it and as it sent it on (with a comment
//! that says what lb did), and at the end the capture's counts. Every block is flushed as
//! it is written, so the reader of a pipe (`lb capture -w - | tcpdump -r -`) sees each
//! packet when it comes.

use std::{
    borrow::Cow,
    collections::HashMap,
    io::{self, Write},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use pcap_file::{
    DataLink, PcapError,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
    },
};

use crate::api::wire::{CaptureEnd, CaptureInterface, CaptureStarted, CapturedPacket};

/// `epb_flags` bits 0-1, the packet's direction (pcapng, "Enhanced Packet Block Flags
/// Word").
pub(crate) const INBOUND: u32 = 0b01;
pub(crate) const OUTBOUND: u32 = 0b10;

/// `if_tsresol` 9: timestamps count nanoseconds, as the daemon's do. pcap-file writes an
/// EPB's timestamp in nanoseconds whatever the interface says, so readers (tcpdump,
/// tshark) must be told so.
pub(crate) const NANOSECONDS: u8 = 9;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CaptureFileError {
    #[error("writing the capture")]
    Write(#[source] io::Error),
    #[error("the daemon sent a packet whose `{field}` is not base64")]
    NotBase64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
}

impl CaptureFileError {
    /// Whether the reader of the stream went away (`lb capture -w - | head -c 100`).
    pub(crate) fn is_broken_pipe(&self) -> bool {
        matches!(self, CaptureFileError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

impl From<PcapError> for CaptureFileError {
    fn from(error: PcapError) -> Self {
        CaptureFileError::Write(match error {
            PcapError::IoError(error) => error,
            other => io::Error::other(other),
        })
    }
}

impl From<io::Error> for CaptureFileError {
    fn from(error: io::Error) -> Self {
        CaptureFileError::Write(error)
    }
}

/// A capture being written.
pub(crate) struct PcapngStream<W: Write> {
    writer: PcapNgWriter<W>,
    /// The interface id (the order of the interface blocks) of each ifindex.
    ids: HashMap<u32, u32>,
    /// When the capture started, for the statistics block.
    started_ns: u64,
}

impl<W: Write> PcapngStream<W> {
    /// Writes the section header and one interface block per interface (at least one: a
    /// packet needs an interface to point at).
    pub(crate) fn new(
        out: W,
        started: &CaptureStarted,
        started_ns: u64,
    ) -> Result<Self, CaptureFileError> {
        let section = SectionHeaderBlock {
            endianness: pcap_file::Endianness::native(),
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "lb {}",
                env!("CARGO_PKG_VERSION")
            )))],
            ..Default::default()
        };
        let mut writer = PcapNgWriter::with_section_header(out, section)?;
        let unknown = [CaptureInterface {
            name: "unknown".to_owned(),
            ifindex: 0,
        }];
        let interfaces = if started.interfaces.is_empty() {
            &unknown[..]
        } else {
            &started.interfaces
        };
        let mut ids = HashMap::new();
        for (id, interface) in (0u32..).zip(interfaces) {
            writer.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: started.snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Borrowed(&interface.name)),
                    InterfaceDescriptionOption::IfTsResol(NANOSECONDS),
                ],
            })?;
            ids.entry(interface.ifindex).or_insert(id);
        }
        writer.get_mut().flush()?;
        Ok(Self {
            writer,
            ids,
            started_ns,
        })
    }

    /// Writes one packet: as received, then, if lb sent it on, as sent.
    pub(crate) fn packet(&mut self, packet: &CapturedPacket) -> Result<(), CaptureFileError> {
        let interface_id = self.ids.get(&packet.ifindex).copied().unwrap_or(0);
        let received = decode("received", &packet.received)?;
        let sent = packet
            .sent
            .as_deref()
            .map(|sent| decode("sent", sent))
            .transpose()?;
        let mut write = |data: Vec<u8>, original_len: u32, flags: u32, direction: &str| {
            self.writer.write_pcapng_block(EnhancedPacketBlock {
                interface_id,
                timestamp: Duration::from_nanos(packet.time_ns),
                original_len: original_len.max(data.len() as u32),
                data: Cow::Owned(data),
                options: vec![
                    EnhancedPacketOption::Flags(flags),
                    EnhancedPacketOption::Comment(Cow::Owned(comment(direction, packet))),
                ],
            })
        };
        write(received, packet.received_len, INBOUND, "received")?;
        if let Some(sent) = sent {
            let len = packet.sent_len.unwrap_or(sent.len() as u32);
            write(sent, len, OUTBOUND, "sent")?;
        }
        self.writer.get_mut().flush()?;
        Ok(())
    }

    /// Writes the capture's counts: one statistics block, on the first interface (the
    /// counts are of the whole capture). Wireshark shows `isb_ifdrop` as the capture's
    /// dropped packets, as dumpcap writes a full buffer's losses there.
    pub(crate) fn end(&mut self, end: &CaptureEnd, now_ns: u64) -> Result<(), CaptureFileError> {
        self.writer.write_pcapng_block(InterfaceStatisticsBlock {
            interface_id: 0,
            timestamp: now_ns,
            options: vec![
                InterfaceStatisticsOption::Comment(Cow::Owned(format!(
                    "lb: {}, over all interfaces; ended: {}",
                    counts(end),
                    end.why
                ))),
                InterfaceStatisticsOption::IsbStartTime(self.started_ns),
                InterfaceStatisticsOption::IsbEndTime(now_ns),
                InterfaceStatisticsOption::IsbIfDrop(end.lost),
                InterfaceStatisticsOption::IsbUsrDeliv(end.captured),
            ],
        })?;
        self.writer.get_mut().flush()?;
        Ok(())
    }

    /// The writer below, for what the file was written to.
    #[cfg(test)]
    pub(crate) fn into_inner(self) -> W {
        self.writer.into_inner()
    }
}

/// `12 packets captured, 0 lost`.
pub(crate) fn counts(end: &CaptureEnd) -> String {
    format!("{} packets captured, {} lost", end.captured, end.lost)
}

fn decode(field: &'static str, text: &str) -> Result<Vec<u8>, CaptureFileError> {
    STANDARD
        .decode(text)
        .map_err(|source| CaptureFileError::NotBase64 { field, source })
}

/// What lb did with the packet, for the person reading the capture:
/// `lb: received; verdict redirect; reason fwd_new_flow; vip 198.18.0.1:80/tcp; ...`.
pub(crate) fn comment(direction: &str, packet: &CapturedPacket) -> String {
    let mut parts = vec![
        format!("lb: {direction}"),
        format!("verdict {}", packet.verdict),
        format!("reason {}", packet.reason),
    ];
    if let Some(vip) = &packet.vip {
        parts.push(format!("vip {vip}"));
    }
    if let Some(backend) = &packet.backend {
        parts.push(format!("backend {backend}"));
    }
    if let Some(mode) = &packet.mode {
        parts.push(format!("mode {mode}"));
    }
    parts.push(format!("conntrack {}", packet.conntrack));
    if let Some(table) = &packet.fingerprint {
        parts.push(format!("table {table}"));
    }
    parts.push(format!("cpu {}", packet.cpu));
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use pcap_file::pcapng::{Block, PcapNgReader};

    use super::*;

    /// 2027-01-15T08:00:00Z and a few nanoseconds, so a microsecond clock would lose them.
    const T0: u64 = 1_800_000_000_000_000_123;

    fn started() -> CaptureStarted {
        CaptureStarted {
            interfaces: vec![
                CaptureInterface {
                    name: "eth0".to_owned(),
                    ifindex: 7,
                },
                CaptureInterface {
                    name: "eth1".to_owned(),
                    ifindex: 9,
                },
            ],
            snaplen: 128,
            filter: "vip 198.18.0.1:80".to_owned(),
        }
    }

    /// A packet lb forwarded: 60 bytes in (all kept), 1514 out of which 128 were kept.
    fn forwarded() -> CapturedPacket {
        CapturedPacket {
            time_ns: T0,
            ifindex: 9,
            verdict: "redirect".to_owned(),
            reason: "fwd_new_flow".to_owned(),
            vip: Some("198.18.0.1:80/tcp".to_owned()),
            backend: Some("198.18.1.2:80".parse().expect("address")),
            mode: Some("nat".to_owned()),
            conntrack: "opening, unproven".to_owned(),
            fingerprint: Some("5d1f0a7c93e2b468".to_owned()),
            cpu: 1,
            received_len: 60,
            received: STANDARD.encode([0xaa; 60]),
            sent_len: Some(1514),
            sent: Some(STANDARD.encode([0xbb; 128])),
        }
    }

    /// A dropped packet on an interface the capture did not announce.
    fn dropped() -> CapturedPacket {
        CapturedPacket {
            time_ns: T0 + 1_500,
            ifindex: 42,
            verdict: "drop".to_owned(),
            reason: "drop_no_backend".to_owned(),
            vip: None,
            backend: None,
            mode: None,
            conntrack: "none".to_owned(),
            fingerprint: None,
            cpu: 0,
            received_len: 1000,
            received: STANDARD.encode([0xcc; 128]),
            sent_len: None,
            sent: None,
        }
    }

    fn written(packets: &[CapturedPacket], end: Option<&CaptureEnd>) -> Vec<u8> {
        let mut stream = PcapngStream::new(Vec::new(), &started(), T0 - 1_000).expect("header");
        for packet in packets {
            stream.packet(packet).expect("packet");
        }
        if let Some(end) = end {
            stream.end(end, T0 + 2_000_000_000).expect("end");
        }
        stream.into_inner()
    }

    fn blocks(bytes: &[u8]) -> Vec<Block<'static>> {
        let mut reader = PcapNgReader::new(bytes).expect("a section header");
        let mut blocks = Vec::new();
        while let Some(block) = reader.next_block() {
            blocks.push(block.expect("a valid block").into_owned());
        }
        blocks
    }

    /// The option of `epb` that `pick` picks.
    fn epb_option<T>(
        epb: &EnhancedPacketBlock<'_>,
        pick: impl Fn(&EnhancedPacketOption<'_>) -> Option<T>,
    ) -> T {
        epb.options.iter().find_map(pick).expect("the option")
    }

    fn epb_comment(epb: &EnhancedPacketBlock<'_>) -> String {
        epb_option(epb, |o| match o {
            EnhancedPacketOption::Comment(c) => Some(c.to_string()),
            _ => None,
        })
    }

    fn epb_flags(epb: &EnhancedPacketBlock<'_>) -> u32 {
        epb_option(epb, |o| match o {
            EnhancedPacketOption::Flags(f) => Some(*f),
            _ => None,
        })
    }

    #[test]
    fn packets_are_written_as_received_and_as_sent_with_what_lb_did() {
        let end = CaptureEnd {
            captured: 2,
            lost: 3,
            why: "stopped".to_owned(),
        };
        let bytes = written(&[forwarded(), dropped()], Some(&end));
        let mut reader = PcapNgReader::new(&bytes[..]).expect("a section header");
        let mut epbs = Vec::new();
        let mut isbs = Vec::new();
        while let Some(block) = reader.next_block() {
            match block.expect("a valid block").into_owned() {
                Block::EnhancedPacket(epb) => epbs.push(epb),
                Block::InterfaceStatistics(isb) => isbs.push(isb),
                Block::InterfaceDescription(_) => {}
                other => panic!("unexpected block {other:?}"),
            }
        }
        let names: Vec<_> = reader
            .interfaces()
            .iter()
            .map(|idb| {
                assert_eq!(idb.linktype, DataLink::ETHERNET);
                assert_eq!(idb.snaplen, 128);
                assert!(
                    idb.options
                        .contains(&InterfaceDescriptionOption::IfTsResol(NANOSECONDS)),
                    "{idb:?}"
                );
                idb.options
                    .iter()
                    .find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .expect("if_name")
            })
            .collect();
        assert_eq!(names, ["eth0", "eth1"]);

        assert_eq!(epbs.len(), 3, "forwarded: in and out; dropped: in only");
        let (received, sent, drop) = (&epbs[0], &epbs[1], &epbs[2]);
        assert_eq!(received.interface_id, 1, "ifindex 9 is eth1");
        assert_eq!(received.timestamp, Duration::from_nanos(T0));
        assert_eq!((received.data.len(), received.original_len), (60, 60));
        assert!(received.data.iter().all(|b| *b == 0xaa));
        assert_eq!(epb_flags(received), INBOUND);
        assert_eq!(
            epb_comment(received),
            "lb: received; verdict redirect; reason fwd_new_flow; vip 198.18.0.1:80/tcp; \
             backend 198.18.1.2:80; mode nat; conntrack opening, unproven; \
             table 5d1f0a7c93e2b468; cpu 1"
        );
        assert_eq!(sent.interface_id, 1);
        assert_eq!(sent.timestamp, Duration::from_nanos(T0));
        assert_eq!((sent.data.len(), sent.original_len), (128, 1514));
        assert!(sent.data.iter().all(|b| *b == 0xbb));
        assert_eq!(epb_flags(sent), OUTBOUND);
        assert!(
            epb_comment(sent).starts_with("lb: sent; verdict redirect; reason fwd_new_flow;"),
            "{}",
            epb_comment(sent)
        );
        assert_eq!(drop.interface_id, 0, "an unknown ifindex goes to the first");
        assert_eq!(drop.timestamp, Duration::from_nanos(T0 + 1_500));
        assert_eq!((drop.data.len(), drop.original_len), (128, 1000));
        assert_eq!(
            epb_comment(drop),
            "lb: received; verdict drop; reason drop_no_backend; conntrack none; cpu 0",
            "absent fields are left out"
        );

        let [isb] = &isbs[..] else {
            panic!("one statistics block: {isbs:?}");
        };
        assert_eq!(isb.interface_id, 0);
        assert_eq!(isb.timestamp, T0 + 2_000_000_000);
        for option in [
            InterfaceStatisticsOption::IsbIfDrop(3),
            InterfaceStatisticsOption::IsbUsrDeliv(2),
            InterfaceStatisticsOption::IsbStartTime(T0 - 1_000),
            InterfaceStatisticsOption::IsbEndTime(T0 + 2_000_000_000),
            InterfaceStatisticsOption::Comment(Cow::Borrowed(
                "lb: 2 packets captured, 3 lost, over all interfaces; ended: stopped",
            )),
        ] {
            assert!(isb.options.contains(&option), "{option:?} in {isb:?}");
        }
    }

    #[test]
    fn the_header_stands_alone_and_every_packet_is_flushed() {
        // What a pipe's reader has before the first packet: a section and its interfaces.
        let header = written(&[], None);
        let found = blocks(&header);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .all(|b| matches!(b, Block::InterfaceDescription(_)))
        );

        /// Counts what reached the writer below the stream, flushed.
        #[derive(Default)]
        struct Flushed {
            pending: usize,
            flushed: usize,
        }
        impl Write for Flushed {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.pending += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                self.flushed += std::mem::take(&mut self.pending);
                Ok(())
            }
        }
        let mut stream = PcapngStream::new(Flushed::default(), &started(), T0).expect("header");
        assert_eq!(stream.writer.get_ref().pending, 0, "the header is flushed");
        stream.packet(&forwarded()).expect("packet");
        assert_eq!(stream.writer.get_ref().pending, 0, "the packet is flushed");
        assert!(stream.writer.get_ref().flushed > header.len() + 60 + 128);
    }

    #[test]
    fn a_capture_without_interfaces_still_has_one_for_its_packets() {
        let started = CaptureStarted {
            interfaces: Vec::new(),
            ..started()
        };
        let mut stream = PcapngStream::new(Vec::new(), &started, T0).expect("header");
        stream.packet(&dropped()).expect("packet");
        let found = blocks(&stream.into_inner());
        assert!(matches!(found[0], Block::InterfaceDescription(_)));
        assert!(matches!(&found[1], Block::EnhancedPacket(p) if p.interface_id == 0));
    }

    #[test]
    fn bad_base64_and_a_closed_reader_are_told_apart() {
        let mut stream = PcapngStream::new(Vec::new(), &started(), T0).expect("header");
        let bad = CapturedPacket {
            sent: Some("not base64!".to_owned()),
            ..forwarded()
        };
        let error = stream.packet(&bad).expect_err("refused");
        assert!(
            matches!(error, CaptureFileError::NotBase64 { field: "sent", .. }),
            "{error:?}"
        );
        assert!(!error.is_broken_pipe());
        let pipe = CaptureFileError::from(PcapError::IoError(io::ErrorKind::BrokenPipe.into()));
        assert!(pipe.is_broken_pipe());
    }
}
