//! The controller's task: the one place that changes anything. API changes, SIGHUP
//! reloads, probe results, sweep results and pin checks arrive as [`Command`]s on one
//! channel and are applied one at a time, in arrival order; after each, the task publishes
//! a new snapshot for the readers, then replies.
//!
//! It runs on a thread of its own (a blocking task that lives as long as the daemon), not
//! on the async workers: every command may call bpf(2), netlink or fsync, and a reload
//! rebuilds Maglev tables, which would stall the API server and the probes. One thread
//! also means no lock: nothing else can reach the controller, so nothing can poison it.

use std::sync::Arc;

use anyhow::anyhow;
use aya::maps::{MapData, RingBuf};
use lb_common::capture::{CaptureCounts, CaptureFilter};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use crate::{
    api::{
        error::{ApiError, ErrorCode},
        wire::{Request, Response},
    },
    control::checker::ProbeResult,
    daemon::{controller::Controller, published::SnapshotCell, reload},
    datapath::conntrack::Census,
};

/// What the controller's task is asked to do. Those with a reply channel are answered once
/// the change is applied and published.
pub(crate) enum Command {
    /// An API request that changes something (queries go to the readers).
    Request(Request, oneshot::Sender<Response>),
    /// SIGHUP: reload `--config`; the outcome goes to the log.
    Hangup(oneshot::Sender<()>),
    /// One probe's result. No reply: the probe goes on either way.
    Probe(ProbeResult),
    /// A sweep's census, and the upkeep due every sweep interval.
    Swept(Census, oneshot::Sender<()>),
    /// Put back pins removed under the running daemon.
    CheckPins(oneshot::Sender<()>),
    /// `lb capture` starts: set its filter and swap `lb_capture` in; the ring to read.
    CaptureStart(
        CaptureFilter,
        oneshot::Sender<Result<RingBuf<MapData>, ApiError>>,
    ),
    /// `lb capture` ended: swap `lb` back, take the ring back (if its reader still had
    /// it); the capture's counts.
    CaptureStop(Option<RingBuf<MapData>>, oneshot::Sender<CaptureCounts>),
    /// The daemon stops: the task ends and the controller is dropped on its thread.
    Stop,
}

/// Sends commands to the controller's task.
#[derive(Clone)]
pub(crate) struct Commands(mpsc::UnboundedSender<Command>);

/// The controller's task has ended (it panicked, or the daemon is stopping).
fn gone() -> anyhow::Error {
    anyhow!("the controller's task has ended")
}

impl Commands {
    pub(crate) fn channel() -> (Self, mpsc::UnboundedReceiver<Command>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self(sender), receiver)
    }

    /// Applies an API change; a failure answer if the controller's task has ended.
    pub(crate) async fn request(&self, request: Request) -> Response {
        let (reply, answer) = oneshot::channel();
        let answered = match self.0.send(Command::Request(request, reply)) {
            Ok(()) => answer.await.ok(),
            Err(_) => None,
        };
        answered.unwrap_or_else(|| {
            Response::failure(ApiError::new(
                ErrorCode::Internal,
                "the daemon's controller has stopped; the daemon is ending",
            ))
        })
    }

    /// Sends a command and waits until it is done.
    pub(crate) async fn run(
        &self,
        command: impl FnOnce(oneshot::Sender<()>) -> Command,
    ) -> anyhow::Result<()> {
        let (reply, done) = oneshot::channel();
        self.0.send(command(reply)).map_err(|_| gone())?;
        done.await.map_err(|_| gone())
    }

    /// Hands a probe result over; `false` once the controller's task has ended.
    pub(crate) fn probe(&self, result: ProbeResult) -> bool {
        self.0.send(Command::Probe(result)).is_ok()
    }

    /// Starts a capture (`daemon::capture`).
    pub(crate) async fn capture_start(
        &self,
        filter: CaptureFilter,
    ) -> Result<RingBuf<MapData>, ApiError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            ApiError::new(
                ErrorCode::ShuttingDown,
                "the daemon's controller has stopped; the daemon is ending",
            )
        };
        self.0
            .send(Command::CaptureStart(filter, reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Ends the capture and gives its ring back; its counts (zero if the daemon is
    /// ending, which ends the capture itself).
    pub(crate) async fn capture_stop(&self, ring: Option<RingBuf<MapData>>) -> CaptureCounts {
        let (reply, answer) = oneshot::channel();
        if self.0.send(Command::CaptureStop(ring, reply)).is_err() {
            return CaptureCounts::default();
        }
        answer.await.unwrap_or_default()
    }

    /// [`Commands::capture_stop`] without waiting (from a `Drop`).
    pub(crate) fn capture_stop_detached(&self, ring: Option<RingBuf<MapData>>) {
        let (reply, _) = oneshot::channel();
        if self.0.send(Command::CaptureStop(ring, reply)).is_err() {
            debug!("a capture ended after the controller's task");
        }
    }

    /// Asks the controller's task to end after the commands before this one.
    pub(crate) fn stop(&self) -> anyhow::Result<()> {
        self.0.send(Command::Stop).map_err(|_| gone())
    }
}

/// The controller's task: applies commands until [`Command::Stop`].
pub(crate) fn run(
    mut controller: Controller,
    mut commands: mpsc::UnboundedReceiver<Command>,
    published: SnapshotCell,
) -> anyhow::Result<()> {
    let mut pins_reported = false;
    while let Some(command) = commands.blocking_recv() {
        // Each reply is sent after the publish, so whoever asked reads its own change.
        let delivered = match command {
            Command::Request(request, reply) => {
                let response = controller.handle(request);
                published.store(Arc::new(controller.publish()));
                reply.send(response).is_ok()
            }
            Command::Hangup(done) => {
                reload::on_hangup(&mut controller);
                published.store(Arc::new(controller.publish()));
                done.send(()).is_ok()
            }
            Command::Probe((key, result)) => {
                controller.on_probe(key, result);
                published.store(Arc::new(controller.publish()));
                true
            }
            Command::Swept(census, done) => {
                controller.after_sweep(census);
                published.store(Arc::new(controller.publish()));
                done.send(()).is_ok()
            }
            Command::CheckPins(done) => {
                controller.check_pins(&mut pins_reported);
                published.store(Arc::new(controller.publish()));
                done.send(()).is_ok()
            }
            Command::CaptureStart(filter, reply) => {
                let started = controller.capture_start(&filter);
                published.store(Arc::new(controller.publish()));
                reply.send(started).is_ok()
            }
            Command::CaptureStop(ring, reply) => {
                let counts = controller.capture_stop(ring);
                published.store(Arc::new(controller.publish()));
                reply.send(counts).is_ok()
            }
            Command::Stop => {
                // A capture still running ends with the daemon: `lb` goes back in.
                controller.capture_stop(None);
                info!("the controller stops");
                return Ok(());
            }
        };
        if !delivered {
            // The asker stopped waiting (a closed connection): the change stands.
            debug!("a command's sender left before its reply");
        }
    }
    Err(anyhow!("every sender of commands is gone"))
}
