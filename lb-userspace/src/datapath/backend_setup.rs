//! `lb decap` on a backend host: `lb_decap` attached to an interface through a pinned link,
//! the host settings a DSR backend needs (VIPs on `lo`, sysctls), the record of what
//! changed, and undoing exactly that. The plans come from [`crate::model::decap`]; this
//! module observes the host, applies them, and rolls back a failed attach.
//!
//! Layout: the pin directory (default `/sys/fs/bpf/lb-decap/netns-<inode>`, locked by every
//! command that changes something) holds one directory per interface with the four maps by
//! name and the XDP link as `link`. The record is a JSON file (default
//! `/run/lb-decap/netns-<inode>.json`): bpffs holds only BPF objects, and /run, like bpffs,
//! the sysctls and the addresses, is gone after a reboot, so the record never outlives what
//! it describes.
//!
//! Network namespaces: bpffs and /run are shared by every network namespace of a host, and
//! interface names repeat in each (containers as backends), so the defaults name the
//! namespace by the inode of `/proc/self/ns/net`. Paths given explicitly are checked: a
//! record written in another namespace, or an interface whose pinned link runs in
//! another namespace, is refused, never rewritten. Releases before this one used
//! `/sys/fs/bpf/lb-decap` and `/run/lb-decap/record.json` for every namespace: commands
//! with the default paths say so when those are still there ([`legacy_note`]).

use std::{
    fs::File,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::programs::links::{FdLink, PinnedLink};
use lb_common::decap::{DECAP_MAX_SOURCES, DECAP_PINNED_MAPS, DecapStat};
use rustix::{
    fs::{FlockOperation, flock},
    io::Errno,
};
use thiserror::Error;

use crate::datapath::{
    attach::{AttachError, AttachMode, Interface, attach_pinned_at},
    decap::{
        DECAP_OBJECT, Decap, DecapError, SourcePrefix, read_pinned_counters, read_pinned_filters,
    },
    netlink::{self, NetlinkError},
    netns::{self, LinkPlace},
    pins::{PinError, ensure_bpffs},
    privileges::{self, NotPrivileged},
    sysctl::{self, SysctlError},
};
use crate::model::{
    decap::{
        AttachRequest, CounterValue, DecapInputError, DecapStatus, InterfaceStatus, LOOPBACK,
        Observed, Prefix, Record, RecordError, Step, consulted_sysctls, plan_attach, plan_detach,
    },
    error_chain::error_chain,
};
use crate::store::decap_record;

/// Where each network namespace's pin directory goes: `netns-<inode>` under it.
pub(crate) const DECAP_PIN_ROOT: &str = "/sys/fs/bpf/lb-decap";
/// Where each network namespace's record goes: `netns-<inode>.json` in it.
pub(crate) const DECAP_RECORD_DIR: &str = "/run/lb-decap";
/// The record of releases that kept one for the whole host (the pins were directly in
/// [`DECAP_PIN_ROOT`]).
pub(crate) const LEGACY_DECAP_RECORD: &str = "/run/lb-decap/record.json";
/// The name of a namespace's own directory (and record) in the defaults.
const NETNS_PREFIX: &str = "netns-";
/// The link's pin in an interface's directory.
const LINK_PIN: &str = "link";
/// How long a command waits for another `lb decap` command to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long detach waits for the kernel to take the program off the interface.
const DETACH_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub(crate) enum SetupError {
    #[error(transparent)]
    NotPrivileged(#[from] NotPrivileged),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Input(#[from] DecapInputError),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Decap(#[from] DecapError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error("{} is in use by another lb decap command (waited {}s)", .0.display(), LOCK_WAIT.as_secs())]
    Busy(PathBuf),
    #[error("cannot use {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{iface} has no IPv4 or IPv6 address of global scope: the lb sends tunnels to the \
         backend's address, so add one first"
    )]
    NoAddresses { iface: String },
    #[error(
        "lb_decap was attached to {iface} in {attached} mode; run `lb decap detach --iface {iface}` \
         first to attach it in {asked} mode"
    )]
    ModeMismatch {
        iface: String,
        attached: String,
        asked: &'static str,
    },
    #[error(
        "lb decap is not attached to {iface}: nothing pinned in {} and nothing recorded in {}",
        pin_dir.display(), record.display()
    )]
    NotAttached {
        iface: String,
        pin_dir: PathBuf,
        record: PathBuf,
    },
    #[error(
        "could not make this change: {step} ({reason}); what this attach had changed was rolled back"
    )]
    Applying { step: String, reason: String },
    #[error(
        "detaching {iface}: {failed} undo step(s) failed (listed above); they stay in the \
         record, so `lb decap detach --iface {iface}` tries them again"
    )]
    Incomplete { iface: String, failed: usize },
    #[error(
        "the link pin of {iface} is gone but the interface still runs program {program_id}: \
         another process holds the link"
    )]
    StillAttached { iface: String, program_id: u32 },
    #[error("cannot tell which network namespace this is (/proc/self/ns/net)")]
    Netns(#[source] io::Error),
    #[error(
        "the decap record {} belongs to network namespace net:[{found}], and this is \
         net:[{ours}]: refusing to read or rewrite another namespace's record. Each network \
         namespace needs its own --pin-dir and --record; leave both out to use this \
         namespace's defaults ({})",
        record.display(), defaults_text(*ours)
    )]
    ForeignRecord {
        record: PathBuf,
        found: u64,
        ours: u64,
    },
    #[error(
        "{} is the link of lb_decap on interface index {ifindex} of another network \
         namespace (this namespace's {iface} does not run its program): refusing to replace \
         or remove it. Each network namespace needs its own --pin-dir and --record; leave \
         both out to use this namespace's defaults ({})",
        link.display(), defaults_text(*ours)
    )]
    ForeignLink {
        iface: String,
        link: PathBuf,
        ifindex: u32,
        ours: u64,
    },
}

/// This namespace's default paths, for messages.
fn defaults_text(netns: u64) -> String {
    let paths = DecapPaths::for_netns(netns);
    format!(
        "--pin-dir {} --record {}",
        paths.pin_dir.display(),
        paths.record.display()
    )
}

/// Whether a directory name in a pin directory is a namespace's (`netns-<inode>`), not an
/// interface's: the defaults keep one per namespace under [`DECAP_PIN_ROOT`].
fn is_netns_dir(name: &str) -> bool {
    name.strip_prefix(NETNS_PREFIX)
        .is_some_and(|ino| !ino.is_empty() && ino.bytes().all(|b| b.is_ascii_digit()))
}

/// Where `lb decap` keeps its pins and its record.
#[derive(Clone, Debug)]
pub(crate) struct DecapPaths {
    pub(crate) pin_dir: PathBuf,
    pub(crate) record: PathBuf,
}

impl DecapPaths {
    /// The defaults of network namespace `netns` (its inode).
    pub(crate) fn for_netns(netns: u64) -> Self {
        Self {
            pin_dir: Path::new(DECAP_PIN_ROOT).join(format!("{NETNS_PREFIX}{netns}")),
            record: Path::new(DECAP_RECORD_DIR).join(format!("{NETNS_PREFIX}{netns}.json")),
        }
    }

    /// The paths given, each missing one this namespace's default.
    pub(crate) fn resolve(
        pin_dir: Option<PathBuf>,
        record: Option<PathBuf>,
    ) -> Result<Self, SetupError> {
        let defaults = Self::for_netns(netns::current().map_err(SetupError::Netns)?);
        Ok(Self {
            pin_dir: pin_dir.unwrap_or(defaults.pin_dir),
            record: record.unwrap_or(defaults.record),
        })
    }

    fn iface_dir(&self, iface: &str) -> PathBuf {
        self.pin_dir.join(iface)
    }

    fn link_pin(&self, iface: &str) -> PathBuf {
        self.iface_dir(iface).join(LINK_PIN)
    }

    /// Interfaces with a pin directory.
    fn pinned_interfaces(&self) -> Result<Vec<String>, SetupError> {
        let entries = match std::fs::read_dir(&self.pin_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error(&self.pin_dir)(source)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(&self.pin_dir))?;
            if entry.path().is_dir()
                && let Some(name) = entry.file_name().to_str()
                && !is_netns_dir(name)
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// What a command did, one event per line of output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// The program runs on `iface` through the link pinned at `link`; `replaced`: an
    /// attached link got the new program in one atomic update.
    Attached {
        iface: String,
        mode: String,
        link: PathBuf,
        replaced: bool,
    },
    /// What the program accepts now.
    Accepting {
        iface: String,
        local: Vec<IpAddr>,
        sources: Vec<Prefix>,
    },
    /// A change made (or a line about one left alone).
    Applied(Step),
    /// A failed step, and why.
    Failed {
        step: Step,
        reason: String,
    },
    /// A change taken back after a later step failed.
    RolledBack(Step),
    Detached {
        iface: String,
        link: PathBuf,
    },
    Recorded(PathBuf),
    /// A cleanup after a failure that failed too: what is left behind, and why.
    LeftBehind {
        what: String,
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The exclusive lock on the pin directory, held while a command changes anything.
struct Lock {
    _file: File,
}

/// Locks `dir`, creating it (and mounting bpffs) when `create`; `None` when it does not
/// exist and `create` is false.
fn lock(dir: &Path, create: bool) -> Result<Option<Lock>, SetupError> {
    if create {
        ensure_bpffs(dir)?;
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    } else if !dir.exists() {
        return Ok(None);
    }
    let file = File::open(dir).map_err(io_error(dir))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(Some(Lock { _file: file })),
            Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(Errno::WOULDBLOCK) => return Err(SetupError::Busy(dir.to_owned())),
            Err(error) => return Err(io_error(dir)(error.into())),
        }
    }
}

/// Refuses a record written in another network namespace; the record (stamped with this
/// namespace) and this namespace's inode otherwise.
fn load_own_record(paths: &DecapPaths) -> Result<(Record, u64), SetupError> {
    let ours = netns::current().map_err(SetupError::Netns)?;
    let record = decap_record::load(&paths.record)?;
    match record.netns {
        Some(found) if found != ours => Err(SetupError::ForeignRecord {
            record: paths.record.clone(),
            found,
            ours,
        }),
        _ => Ok((record, ours)),
    }
}

/// Refuses an interface whose pinned link runs in another network namespace.
fn check_own_link(paths: &DecapPaths, iface: &str, ours: u64) -> Result<(), SetupError> {
    let link = paths.link_pin(iface);
    match netns::pinned_link_place(&link) {
        LinkPlace::Elsewhere { ifindex } => Err(SetupError::ForeignLink {
            iface: iface.to_owned(),
            link,
            ifindex,
            ours,
        }),
        _ => Ok(()),
    }
}

/// With the default paths: a note when an earlier release's `lb decap` (one pin directory
/// and record for every namespace of the host) left pins or a record, which the
/// namespace-named defaults no longer find.
pub(crate) fn legacy_note() -> Option<String> {
    let root = Path::new(DECAP_PIN_ROOT);
    let mut ifaces: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|name| !is_netns_dir(name))
        .collect();
    ifaces.sort();
    let record = Path::new(LEGACY_DECAP_RECORD);
    if ifaces.is_empty() && !record.exists() {
        return None;
    }
    Some(format!(
        "note: an earlier lb decap kept its pins in {DECAP_PIN_ROOT} (interfaces: {}) and its \
         record in {LEGACY_DECAP_RECORD}, shared by every network namespace; the defaults are \
         now per namespace. In the namespace that attached them, run `lb decap detach --all \
         --pin-dir {DECAP_PIN_ROOT} --record {LEGACY_DECAP_RECORD}`, then attach again",
        if ifaces.is_empty() {
            "none".to_owned()
        } else {
            ifaces.join(", ")
        }
    ))
}

/// The addresses tunnels may be sent to on `ifindex`: all of global (or site) scope, both
/// families; link-local and host-scope addresses are left out (the lb never tunnels to one).
fn local_addresses(ifindex: u32) -> Result<Vec<IpAddr>, SetupError> {
    const RT_SCOPE_SITE: u8 = 200;
    let mut local: Vec<IpAddr> = netlink::addresses(ifindex)?
        .into_iter()
        .filter(|a| a.scope <= RT_SCOPE_SITE)
        .map(|a| a.addr)
        .collect();
    local.sort();
    local.dedup();
    Ok(local)
}

fn loopback_addresses(lo: &Interface) -> Result<Vec<IpAddr>, SetupError> {
    Ok(netlink::addresses(lo.index)?
        .into_iter()
        .map(|a| a.addr)
        .collect())
}

/// Reads `keys`; a sysctl that does not exist is left out.
fn read_sysctls(
    keys: impl IntoIterator<Item = String>,
) -> Result<std::collections::BTreeMap<String, String>, SetupError> {
    let mut values = std::collections::BTreeMap::new();
    for key in keys {
        match sysctl::read(&key) {
            Ok(value) => {
                values.insert(key, value);
            }
            Err(error) if error.is_missing() => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(values)
}

/// Makes one change to the host.
fn apply(step: &Step) -> Result<(), SetupError> {
    match step {
        Step::Sysctl { key, to, .. } => sysctl::write(key, to)?,
        Step::AddAddress {
            dev,
            address,
            prefix_len,
        } => {
            let dev = Interface::resolve(dev)?;
            netlink::add_address(dev.index, *address, *prefix_len)?;
        }
        Step::RemoveAddress {
            dev,
            address,
            prefix_len,
        } => {
            let dev = Interface::resolve(dev)?;
            match netlink::delete_address(dev.index, *address, *prefix_len) {
                Err(error) if error.errno() == Some(libc::EADDRNOTAVAIL) => {}
                other => other?,
            }
        }
        Step::Note(_) => {}
    }
    Ok(())
}

fn mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Auto => "auto",
        AttachMode::Native => "native",
        AttachMode::Skb => "skb",
    }
}

/// Removes an interface's pins (link first, which detaches unless someone else holds the
/// link) and its directory.
fn remove_pins(paths: &DecapPaths, iface: &str) -> Result<(), SetupError> {
    let dir = paths.iface_dir(iface);
    let names = std::iter::once(LINK_PIN).chain(DECAP_PINNED_MAPS);
    for name in names {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(io_error(&path)(error));
            }
            _ => {}
        }
    }
    match std::fs::remove_dir(&dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error(&dir)(error)),
        _ => Ok(()),
    }
}

/// `lb decap attach`: loads `lb_decap` with its maps pinned under the interface's
/// directory, makes it accept tunnels to the interface's addresses (from `sources` only,
/// when given), attaches it through a pinned link (or swaps it into the link an earlier
/// attach pinned), then changes the host as [`plan_attach`] says, recording first what it
/// is about to change. Bad input and an interface that cannot take the program change
/// nothing; a failed host change rolls back this attach's changes.
pub(crate) fn attach(
    paths: &DecapPaths,
    iface: &str,
    vips: &[IpAddr],
    sources: &[Prefix],
    gue_port: u16,
    mode: AttachMode,
    report: &mut dyn FnMut(Event),
) -> Result<(), SetupError> {
    privileges::check()?;
    let iface = Interface::resolve(iface)?;
    let request = AttachRequest::new(
        iface.name.clone(),
        iface.index,
        vips,
        sources,
        DECAP_MAX_SOURCES as usize,
    )?;
    let lo = Interface::resolve(LOOPBACK)?;
    let local = local_addresses(iface.index)?;
    if local.is_empty() {
        return Err(SetupError::NoAddresses { iface: iface.name });
    }
    request.check_local(&local)?;
    let _lock = lock(&paths.pin_dir, true)?;
    let (record, ours) = load_own_record(paths)?;
    check_own_link(paths, &iface.name, ours)?;
    let dir = paths.iface_dir(&iface.name);
    let link = paths.link_pin(&iface.name);
    let fresh = !link.exists();
    if !fresh
        && mode != AttachMode::Auto
        && let Some(attached) = record.interfaces.get(&iface.name)
        && attached.mode != mode_name(mode)
    {
        return Err(SetupError::ModeMismatch {
            iface: iface.name.clone(),
            attached: attached.mode.clone(),
            asked: mode_name(mode),
        });
    }
    let mut keys = consulted_sysctls(&iface.name);
    keys.extend(record.sysctls.iter().map(|c| c.key.clone()));
    let observed = Observed {
        sysctls: read_sysctls(keys)?,
        loopback: loopback_addresses(&lo)?,
    };

    // The program first: the step most likely to be refused (another XDP program, a driver
    // without XDP), before anything else is touched.
    let pins_existed = dir.exists();
    let undo_pins = |paths: &DecapPaths, report: &mut dyn FnMut(Event)| {
        if !pins_existed && let Err(error) = remove_pins(paths, &iface.name) {
            report(Event::LeftBehind {
                what: format!("the pins in {}", paths.iface_dir(&iface.name).display()),
                reason: error_chain(&error),
            });
        }
    };
    let attached = (|| {
        let mut decap = Decap::load_pinned(DECAP_OBJECT, &dir)?;
        decap.set_local(&local)?;
        decap.set_gue_port(gue_port)?;
        let prefixes: Vec<SourcePrefix> = request
            .allow_sources
            .iter()
            .map(|p| SourcePrefix::from(*p))
            .collect();
        decap.set_sources(&prefixes)?;
        Ok::<_, SetupError>(attach_pinned_at(decap.program(), &iface, mode, &link)?)
    })();
    let attached = match attached {
        Ok(attached) => attached,
        Err(error) => {
            undo_pins(paths, report);
            return Err(error);
        }
    };
    let replaced = attached.mode == "adopted";
    let mode_now = match record.interfaces.get(&iface.name) {
        Some(previous) if replaced => previous.mode.clone(),
        _ if replaced => netlink::xdp_program(iface.index)
            .ok()
            .flatten()
            .map_or_else(|| "unknown".to_owned(), |x| x.mode.to_owned()),
        _ => attached.mode.to_owned(),
    };
    drop(attached);
    report(Event::Attached {
        iface: iface.name.clone(),
        mode: mode_now.clone(),
        link: link.clone(),
        replaced,
    });
    report(Event::Accepting {
        iface: iface.name.clone(),
        local,
        sources: request.allow_sources.clone(),
    });

    let (steps, mut next) = plan_attach(&record, &observed, &request, &mode_now);
    next.netns = Some(ours);
    let detach_fresh = |paths: &DecapPaths, report: &mut dyn FnMut(Event)| {
        if fresh {
            let link = paths.link_pin(&iface.name);
            if let Err(error) = std::fs::remove_file(&link) {
                report(Event::LeftBehind {
                    what: format!(
                        "the link pin {} (the program stays attached)",
                        link.display()
                    ),
                    reason: error.to_string(),
                });
            }
            undo_pins(paths, report);
        }
    };
    // Recorded before the changes are made, so a crash half-way leaves a record that
    // covers every change made (undoing one not made yet is harmless: detach restores
    // only what still shows the value attach set).
    if let Err(error) = decap_record::save(&next, &paths.record) {
        detach_fresh(paths, report);
        return Err(error.into());
    }
    let mut done: Vec<&Step> = Vec::new();
    for step in &steps {
        if let Err(error) = apply(step) {
            let reason = error_chain(&error);
            report(Event::Failed {
                step: step.clone(),
                reason: reason.clone(),
            });
            for made in done.iter().rev() {
                if let Some(undo) = made.undo() {
                    match apply(&undo) {
                        Ok(()) => report(Event::RolledBack(undo)),
                        Err(error) => report(Event::Failed {
                            step: undo,
                            reason: error_chain(&error),
                        }),
                    }
                }
            }
            // The record was saved with the changes about to be made: put the one from
            // before back, or say that it still lists changes that were rolled back.
            if let Err(error) = decap_record::save(&record, &paths.record) {
                report(Event::LeftBehind {
                    what: format!(
                        "{} listing the rolled-back changes (`lb decap detach` restores only \
                         what still shows attach's values)",
                        paths.record.display()
                    ),
                    reason: error_chain(&error),
                });
            }
            detach_fresh(paths, report);
            if fresh {
                report(Event::Detached {
                    iface: iface.name.clone(),
                    link,
                });
            }
            return Err(SetupError::Applying {
                step: step.to_string(),
                reason,
            });
        }
        report(Event::Applied(step.clone()));
        done.push(step);
    }
    report(Event::Recorded(paths.record.clone()));
    Ok(())
}

/// The program id of the link pinned at `path` (the handle is closed again at once, so it
/// never keeps the link alive).
fn pinned_link_ids(path: &Path) -> Option<(u32, u32)> {
    let link: FdLink = PinnedLink::from_pin(path).ok()?.into();
    let info = link.info().ok()?;
    Some((info.id(), info.program_id()))
}

/// `lb decap detach`: takes the program off `iface` (removing its pins) and undoes what
/// [`plan_detach`] says. Refused, with nothing changed, when nothing was attached there.
pub(crate) fn detach(
    paths: &DecapPaths,
    iface: &str,
    report: &mut dyn FnMut(Event),
) -> Result<(), SetupError> {
    privileges::check()?;
    let _lock = lock(&paths.pin_dir, false)?;
    let (record, ours) = load_own_record(paths)?;
    check_own_link(paths, iface, ours)?;
    detach_locked(paths, &record, iface, report).map(drop)
}

/// `lb decap detach --all`: every interface attached or recorded. Returns how many.
pub(crate) fn detach_all(
    paths: &DecapPaths,
    report: &mut dyn FnMut(Event),
) -> Result<usize, SetupError> {
    privileges::check()?;
    let _lock = lock(&paths.pin_dir, false)?;
    let (mut record, ours) = load_own_record(paths)?;
    let mut names: Vec<String> = record.interfaces.keys().cloned().collect();
    names.extend(paths.pinned_interfaces()?);
    names.sort();
    names.dedup();
    // All or nothing: another namespace's interface is refused before anything changes.
    for name in &names {
        check_own_link(paths, name, ours)?;
    }
    for name in &names {
        record = detach_locked(paths, &record, name, report)?;
    }
    Ok(names.len())
}

fn detach_locked(
    paths: &DecapPaths,
    record: &Record,
    iface: &str,
    report: &mut dyn FnMut(Event),
) -> Result<Record, SetupError> {
    let dir = paths.iface_dir(iface);
    let (sysctls, addresses) = record.changes_for(iface);
    let recorded =
        record.interfaces.contains_key(iface) || !sysctls.is_empty() || !addresses.is_empty();
    if !recorded && !dir.exists() {
        return Err(SetupError::NotAttached {
            iface: iface.to_owned(),
            pin_dir: paths.pin_dir.clone(),
            record: paths.record.clone(),
        });
    }
    let lo = Interface::resolve(LOOPBACK)?;
    let observed = Observed {
        sysctls: read_sysctls(sysctls.iter().map(|c| c.key.clone()))?,
        loopback: loopback_addresses(&lo)?,
    };
    let (steps, mut next) = plan_detach(record, &observed, iface);

    // The program first, so that no tunnel is taken apart for a VIP that is leaving.
    if dir.exists() {
        let link = paths.link_pin(iface);
        let program = pinned_link_ids(&link).map(|(_, program)| program);
        remove_pins(paths, iface)?;
        if let (Some(program_id), Ok(ifindex)) = (program, Interface::resolve(iface)) {
            let deadline = Instant::now() + DETACH_WAIT;
            while netlink::xdp_program(ifindex.index)?.is_some_and(|x| x.program_id == program_id) {
                if Instant::now() >= deadline {
                    return Err(SetupError::StillAttached {
                        iface: iface.to_owned(),
                        program_id,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        report(Event::Detached {
            iface: iface.to_owned(),
            link,
        });
    }

    let mut failed = 0;
    for step in steps {
        match apply(&step) {
            Ok(()) => report(Event::Applied(step)),
            Err(error) => {
                failed += 1;
                // Kept in the record, so a second detach tries again.
                match &step {
                    Step::Sysctl { key, .. } => {
                        if let Some(change) = sysctls.iter().find(|c| c.key == *key) {
                            let mut change = change.clone();
                            change.needed_by = vec![iface.to_owned()];
                            next.sysctls.push(change);
                        }
                    }
                    Step::RemoveAddress { address, .. } => {
                        if let Some(added) = addresses.iter().find(|a| a.address == *address) {
                            let mut added = added.clone();
                            added.needed_by = vec![iface.to_owned()];
                            next.addresses.push(added);
                        }
                    }
                    _ => {}
                }
                report(Event::Failed {
                    step,
                    reason: error_chain(&error),
                });
            }
        }
    }
    decap_record::save(&next, &paths.record)?;
    if failed > 0 {
        return Err(SetupError::Incomplete {
            iface: iface.to_owned(),
            failed,
        });
    }
    Ok(next)
}

/// `lb decap status`: every interface with pins or a record (or only `only`), as the
/// kernel, the pinned maps and the record show it. Reads only; takes no lock.
pub(crate) fn status(paths: &DecapPaths, only: Option<&str>) -> Result<DecapStatus, SetupError> {
    // Reading pinned maps and links needs the same privileges as making them.
    privileges::check()?;
    let (record, _) = load_own_record(paths)?;
    let names = if let Some(name) = only {
        vec![name.to_owned()]
    } else {
        let mut names: Vec<String> = record.interfaces.keys().cloned().collect();
        names.extend(paths.pinned_interfaces()?);
        names.sort();
        names.dedup();
        names
    };
    let interfaces = names
        .into_iter()
        .map(|name| interface_status(paths, &record, name))
        .collect();
    Ok(DecapStatus {
        pin_dir: paths.pin_dir.clone(),
        record: paths.record.clone(),
        interfaces,
    })
}

fn interface_status(paths: &DecapPaths, record: &Record, iface: String) -> InterfaceStatus {
    let dir = paths.iface_dir(&iface);
    let link = paths.link_pin(&iface);
    let ids = link.exists().then(|| pinned_link_ids(&link)).flatten();
    let ifindex = Interface::resolve(&iface).ok().map(|i| i.index);
    let xdp = ifindex.and_then(|i| netlink::xdp_program(i).ok().flatten());
    let program_id = ids.map(|(_, program)| program);
    let attached = program_id.is_some() && xdp.map(|x| x.program_id) == program_id;
    let elsewhere =
        !attached && matches!(netns::pinned_link_place(&link), LinkPlace::Elsewhere { .. });
    let problem = match (ids, ifindex, xdp) {
        _ if attached => None,
        _ if elsewhere => Some(
            "its pinned link runs in another network namespace: give each namespace its own \
             --pin-dir and --record"
                .to_owned(),
        ),
        (None, _, _) if link.exists() => Some("the link pin cannot be read".to_owned()),
        (None, _, _) => Some(format!("no link pinned in {}", dir.display())),
        (Some(_), None, _) => Some("the interface is gone (the pinned link is defunct)".into()),
        (Some(_), Some(_), None) => Some("the interface runs no XDP program".into()),
        (Some(_), Some(_), Some(other)) => Some(format!(
            "the interface runs another XDP program (id {})",
            other.program_id
        )),
    };
    let filters = dir
        .exists()
        .then(|| read_pinned_filters(&dir).ok())
        .flatten()
        .unwrap_or_default();
    let counters = dir
        .exists()
        .then(|| read_pinned_counters(&dir).ok())
        .flatten()
        .map(|snapshot| {
            DecapStat::ALL
                .iter()
                .map(|stat| {
                    let c = snapshot.get(*stat);
                    (
                        stat.name().to_owned(),
                        CounterValue {
                            packets: c.packets,
                            bytes: c.bytes,
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let (sysctls, addresses) = record.changes_for(&iface);
    InterfaceStatus {
        attached,
        problem,
        ifindex,
        mode: xdp.filter(|_| attached).map(|x| x.mode.to_owned()),
        link_id: ids.map(|(link, _)| link),
        program_id,
        local: filters.local,
        allow_sources: filters.sources.into_iter().map(Prefix::from).collect(),
        vips: record
            .interfaces
            .get(&iface)
            .map(|a| a.vips.clone())
            .unwrap_or_default(),
        counters,
        sysctls,
        addresses,
        iface,
    }
}
