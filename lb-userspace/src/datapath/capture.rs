//! `lb capture`'s side of the kernel (`lb_common::capture`): its maps, and the swap of
//! `lb_capture` into the pinned links and of `lb` back. `lb_capture` is loaded (verified)
//! at the first capture only; `lb` never carries capture code.

use std::path::PathBuf;

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    programs::{ProgramError, Xdp},
};
use lb_common::{
    capture::{CAPTURE_HEADER_BYTES, CaptureCounts, CaptureFilter, CaptureHeader, CaptureScratch},
    consts::{
        CAPTURE_PROGRAM_NAME, MAP_CAPTURE_FILTER, MAP_CAPTURE_RING, MAP_CAPTURE_SCRATCH,
        PROGRAM_NAME,
    },
};
use thiserror::Error;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

use crate::datapath::{attach, maps};

#[derive(Debug, Error)]
pub(crate) enum CaptureError {
    #[error("another capture is running")]
    Busy,
    #[error("the capture ring buffer is still held by a capture that has not ended")]
    RingHeld,
    #[error("the eBPF object has no XDP program {0}")]
    Missing(&'static str),
    #[error("loading {CAPTURE_PROGRAM_NAME}")]
    Load(#[source] ProgramError),
    #[error("writing {0}")]
    Map(&'static str, #[source] MapError),
    #[error("swapping {program} into the XDP link of {iface}: {reason}")]
    Swap {
        program: &'static str,
        iface: String,
        reason: String,
    },
}

/// A pinned XDP link the capture swaps programs in: the interface's name and the pin.
pub(crate) type LinkPin = (String, PathBuf);

/// The capture maps, and whether `lb_capture` runs in the links now.
pub(crate) struct CaptureMaps {
    filter: Array<MapData, CaptureFilter>,
    scratch: PerCpuArray<MapData, CaptureScratch>,
    /// Lent to the running capture's reader, given back when it ends.
    ring: Option<RingBuf<MapData>>,
    running: bool,
}

impl CaptureMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            filter: Array::try_from(maps::take(ebpf, MAP_CAPTURE_FILTER)?)?,
            scratch: PerCpuArray::try_from(maps::take(ebpf, MAP_CAPTURE_SCRATCH)?)?,
            ring: Some(RingBuf::try_from(maps::take(ebpf, MAP_CAPTURE_RING)?)?),
            running: false,
        })
    }

    /// Sets `filter`, zeroes the counts and swaps `lb_capture` into every link; the ring
    /// to read the records from. Nothing stays changed on an error.
    pub(crate) fn start(
        &mut self,
        ebpf: &mut Ebpf,
        filter: &CaptureFilter,
        links: &[LinkPin],
    ) -> Result<RingBuf<MapData>, CaptureError> {
        if self.running {
            return Err(CaptureError::Busy);
        }
        let mut ring = self.ring.take().ok_or(CaptureError::RingHeld)?;
        let prepared = self.prepare(ebpf, filter, &mut ring);
        if let Err(error) = prepared.and_then(|()| swap_all(ebpf, CAPTURE_PROGRAM_NAME, links)) {
            self.ring = Some(ring);
            return Err(error);
        }
        self.running = true;
        info!(
            links = links.len(),
            "capture started: {CAPTURE_PROGRAM_NAME} swapped in"
        );
        Ok(ring)
    }

    fn prepare(
        &mut self,
        ebpf: &mut Ebpf,
        filter: &CaptureFilter,
        ring: &mut RingBuf<MapData>,
    ) -> Result<(), CaptureError> {
        // Records an earlier capture left after its reader stopped.
        while ring.next().is_some() {}
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| {
            CaptureError::Map(MAP_CAPTURE_SCRATCH, MapError::IoError(error))
        })?;
        let zeroed = PerCpuValues::try_from(vec![empty_scratch(); cpus])
            .map_err(|error| CaptureError::Map(MAP_CAPTURE_SCRATCH, MapError::IoError(error)))?;
        self.scratch
            .set(0, zeroed, 0)
            .map_err(|error| CaptureError::Map(MAP_CAPTURE_SCRATCH, error))?;
        self.filter
            .set(0, filter, 0)
            .map_err(|error| CaptureError::Map(MAP_CAPTURE_FILTER, error))?;
        let program = xdp(ebpf, CAPTURE_PROGRAM_NAME)?;
        if program.fd().is_err() {
            program.load().map_err(CaptureError::Load)?;
        }
        Ok(())
    }

    /// Swaps `lb` back into every link (a link that is gone is skipped) and takes the ring
    /// back (`None`: its reader lost it); the counts of the capture that ended.
    pub(crate) fn stop(
        &mut self,
        ebpf: &mut Ebpf,
        ring: Option<RingBuf<MapData>>,
        links: &[LinkPin],
    ) -> CaptureCounts {
        if let Some(ring) = ring {
            self.ring = Some(ring);
        }
        if self.running {
            self.running = false;
            for (iface, pin) in links {
                if let Err(error) = swap(ebpf, PROGRAM_NAME, iface, pin) {
                    // The link stays on lb_capture: each packet pays the copy until the
                    // next capture or restart swaps lb back.
                    warn!(%error, "could not swap lb back after a capture");
                }
            }
            info!("capture ended: {PROGRAM_NAME} swapped back");
        }
        self.counts()
    }

    /// The counts of the current or last capture, summed over the CPUs.
    pub(crate) fn counts(&self) -> CaptureCounts {
        let mut total = CaptureCounts::default();
        match self.scratch.get(&0, 0) {
            Ok(per_cpu) => per_cpu.iter().for_each(|cpu| total.merge(&cpu.counts)),
            Err(error) => warn!(%error, "reading the capture counts"),
        }
        total
    }
}

fn empty_scratch() -> CaptureScratch {
    CaptureScratch {
        header: CaptureHeader::default(),
        bytes: [0; 2 * lb_common::capture::CAPTURE_SNAPLEN_MAX as usize],
        key: lb_common::flow::FlowKey::default(),
        counts: CaptureCounts::default(),
    }
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, CaptureError> {
    ebpf.program_mut(name)
        .and_then(|program| program.try_into().ok())
        .ok_or(CaptureError::Missing(name))
}

/// Swaps `name` into every link; on a failure, the links already swapped get `lb` back.
fn swap_all(ebpf: &mut Ebpf, name: &'static str, links: &[LinkPin]) -> Result<(), CaptureError> {
    for (done, (iface, pin)) in links.iter().enumerate() {
        if let Err(error) = swap(ebpf, name, iface, pin) {
            for (iface, pin) in &links[..done] {
                if let Err(undo) = swap(ebpf, PROGRAM_NAME, iface, pin) {
                    warn!(error = %undo, "could not swap lb back after a failed capture start");
                }
            }
            return Err(error);
        }
    }
    Ok(())
}

fn swap(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    pin: &std::path::Path,
) -> Result<(), CaptureError> {
    let program = xdp(ebpf, name)?;
    attach::replace_program(program, pin)
        .map(drop)
        .map_err(|(reason, _)| CaptureError::Swap {
            program: name,
            iface: iface.to_owned(),
            reason,
        })
}

/// The capture ring as the async runtime watches it.
pub(crate) type WatchedRing = AsyncFd<RingBuf<MapData>>;

/// A ring the runtime could not watch, given back, and why.
pub(crate) type NotWatched = Box<(RingBuf<MapData>, std::io::Error)>;

/// The ring, watched for records by the async runtime; on an error, the ring back.
pub(crate) fn watch(ring: RingBuf<MapData>) -> Result<WatchedRing, NotWatched> {
    // SAFETY: the ring owns its fd, which stays open and the same for as long as the
    // AsyncFd (which owns the ring) lives.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|error| Box::new(error.into_parts()))
}

/// One record from the ring: its header, the bytes as received and as sent.
pub struct Record<'a> {
    pub header: CaptureHeader,
    pub received: &'a [u8],
    pub sent: &'a [u8],
}

/// Splits a record; `None` if it is shorter than its header says (never from a datapath
/// of this build).
pub fn decode(bytes: &[u8]) -> Option<Record<'_>> {
    let (head, rest) = bytes.split_at_checked(CAPTURE_HEADER_BYTES)?;
    // SAFETY: `head` is exactly a CaptureHeader's bytes (plain integers, any value valid);
    // read unaligned.
    let header = unsafe { std::ptr::read_unaligned(head.as_ptr().cast::<CaptureHeader>()) };
    let (received, rest) = rest.split_at_checked(usize::from(header.received_cap))?;
    let sent = rest.get(..usize::from(header.sent_cap))?;
    Some(Record {
        header,
        received,
        sent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_at_their_caps_and_short_ones_are_refused() {
        let header = CaptureHeader {
            received_cap: 3,
            sent_cap: 2,
            action: 4,
            ..CaptureHeader::default()
        };
        // SAFETY: a CaptureHeader is plain integers.
        let head: [u8; CAPTURE_HEADER_BYTES] = unsafe { std::mem::transmute(header) };
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&[1, 2, 3, 4, 5]);
        let record = decode(&bytes).expect("whole");
        assert_eq!(record.header.action, 4);
        assert_eq!(record.received, &[1, 2, 3]);
        assert_eq!(record.sent, &[4, 5]);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(&bytes[..10]).is_none());
    }
}
