//! What readers see: the facts the daemon started with, and a snapshot of everything the
//! controller changes, republished after every command. Readers load it without a lock
//! (arc-swap), so a query or a metrics scrape never waits behind a reload.

use std::{path::PathBuf, sync::Arc, time::Duration, time::Instant};

use arc_swap::ArcSwap;
use lb_common::{flow::Timeouts, hash::HashSeed};

use crate::{
    api::wire::{InterfaceEntry, NodeReport},
    control::map_sync::VipView,
    datapath::conntrack::ConntrackBook,
    model::{
        health::HealthBook, limits::Limits, memory::MemoryReport, notify::NotifyHook, state::State,
    },
};

/// What `lb run` was started with: fixed for the daemon's life.
#[derive(Debug)]
pub(crate) struct DaemonFacts {
    pub(crate) state_file: PathBuf,
    pub(crate) api: PathBuf,
    /// Whether it adopted a pinned datapath.
    pub(crate) adopted: bool,
    pub(crate) started: Instant,
    /// The idle timeouts the datapath was loaded with.
    pub(crate) timeouts: Timeouts,
    /// The rate guard's new flows per CPU per second (`--new-flow-limit`).
    pub(crate) new_flow_limit: u32,
    pub(crate) sweep_interval: Duration,
    /// Whether `--hash-seed` (or the config) set the cluster's seed.
    pub(crate) seeded: bool,
    /// The build id of the loaded eBPF object (`lb status`).
    pub(crate) datapath_build: String,
    /// The maps' kernel memory: their sizes are fixed at load, so it is read once.
    pub(crate) map_memory: Option<MemoryReport>,
    /// Whether `lb_redirect_lost` counts frames the kernel drops after a redirect.
    pub(crate) lost_counted: bool,
    /// dsr-gue's UDP port (`--gue-port`): the tunnel health probes use it too.
    pub(crate) gue_port: u16,
}

/// Everything the controller changes that a query reports, as of its last command.
#[derive(Debug)]
pub(crate) struct Published {
    /// After `lb down`: every request is refused.
    pub(crate) shutting_down: bool,
    /// The desired state.
    pub(crate) state: State,
    /// Every VIP with its map ids.
    pub(crate) view: Vec<VipView>,
    pub(crate) limits: Limits,
    pub(crate) hash_seed: HashSeed,
    pub(crate) health: HealthBook,
    pub(crate) conntrack: ConntrackBook,
    pub(crate) node: NodeReport,
    /// The notify hook in use.
    pub(crate) notify: Option<Arc<NotifyHook>>,
    pub(crate) interfaces: Vec<InterfaceEntry>,
    /// Empty once `lb down` removed the pins.
    pub(crate) pin_dir: PathBuf,
}

/// The one place the snapshot lives: the controller's task stores, readers load.
pub(crate) type SnapshotCell = Arc<ArcSwap<Published>>;
