//! The pin directory on bpffs: the maps and XDP links that outlive a controller, so packets
//! keep flowing and conntrack survives while `lb run` restarts.
//!
//! Layout (default `/sys/fs/bpf/lb`): one file per map in `PINNED_MAPS`, by map name, and
//! one `link_<ifname>` per attached interface. META records the layout version and sizes;
//! it is checked before anything pinned is used.
//!
//! A pin is only a name: a map or link lives while any file descriptor holds it. A running
//! daemon keeps one handle to each of its pinned objects ([`PinDir::keep`]), so pins that
//! someone removes under it can be put back ([`PinDir::restore`]).

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::links::{FdLink, PinnedLink},
};
use lb_common::{
    consts::{LAYOUT_VERSION, MAP_BACKENDS, MAP_META, MAP_STATS, PINNED_MAPS},
    service::Layout,
    stats::STAT_COUNT,
};
use rustix::{
    fs::{FlockOperation, flock, statfs},
    io::Errno,
    mount::{MountFlags, mount},
};
use thiserror::Error;
use tracing::info;

use crate::model::limits::{Limits, Requested, SizeMismatch};

pub(crate) const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const LINK_PREFIX: &str = "link_";

#[derive(Debug, Error)]
pub(crate) enum PinError {
    #[error("{0} is not on a BPF filesystem (bpffs); pin directories belong under /sys/fs/bpf")]
    NotBpffs(PathBuf),
    #[error("mounting bpffs on /sys/fs/bpf failed")]
    Mount(#[source] io::Error),
    #[error("cannot use the pin directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another lb daemon is using the pin directory {0} (stop it, or give this one its own --pin-dir)"
    )]
    Busy(PathBuf),
    #[error(
        "the datapath pinned in {dir} has map layout version {found}, this lb uses {LAYOUT_VERSION}: \
         run `lb down --pin-dir {dir}` first (it detaches and forgets tracked flows)"
    )]
    Version { dir: PathBuf, found: u32 },
    #[error(
        "the datapath pinned in {dir} was created with {what} {found}, not {wanted}: \
         restart without that option to adopt it, or `lb down --pin-dir {dir}` first"
    )]
    Limits {
        dir: PathBuf,
        what: &'static str,
        found: u32,
        wanted: u32,
    },
    #[error(
        "{0} has pinned XDP links but no complete map layout (META): refusing to guess; \
         `lb down --pin-dir {0}` removes it"
    )]
    Incomplete(PathBuf),
    #[error("reading the pinned META map failed")]
    Meta(#[source] aya::maps::MapError),
    #[error("holding the pinned {name}: {reason}")]
    Keep { name: String, reason: String },
    #[error("re-pinning {name}: {reason}")]
    Repin { name: String, reason: String },
}

/// An open pin directory, locked against other controllers for as long as it lives.
pub struct PinDir {
    path: PathBuf,
    lock: File,
    kept: Kept,
}

/// The running daemon's own handles to what it pinned (see [`PinDir::keep`]).
#[derive(Default)]
struct Kept {
    maps: Vec<(&'static str, MapData)>,
    /// `None` once a failed re-pin consumed the handle (the daemon's attachment still
    /// holds the link; only the spare for re-pinning is gone).
    links: Vec<(String, Option<FdLink>)>,
}

/// Takes the directory's lock: one controller per pin directory.
fn lock(path: &Path) -> Result<File, PinError> {
    let lock = File::open(path).map_err(io_error(path))?;
    match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(lock),
        Err(Errno::WOULDBLOCK) => Err(PinError::Busy(path.to_owned())),
        Err(error) => Err(io_error(path)(error.into())),
    }
}

/// Where the link of `ifname` is pinned in `dir`.
fn link_file(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{ifname}"))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|stat| stat.f_type == BPF_FS_MAGIC)
}

/// Mounts bpffs on /sys/fs/bpf when the pin directory lives there and nothing is mounted.
/// The directory's nearest existing ancestor decides (a nested default such as
/// `/sys/fs/bpf/lb-decap/netns-<inode>` may not exist yet, parent included): bpffs there
/// is enough, and mounting again would hide every pin already on it.
pub(crate) fn ensure_bpffs(dir: &Path) -> Result<(), PinError> {
    let root = Path::new("/sys/fs/bpf");
    let parent = dir.ancestors().skip(1).find(|p| p.exists()).unwrap_or(root);
    if is_bpffs(parent) || is_bpffs(dir) {
        return Ok(());
    }
    if !dir.starts_with(root) {
        return Err(PinError::NotBpffs(dir.to_owned()));
    }
    std::fs::create_dir_all(root).map_err(io_error(root))?;
    mount("bpf", root, "bpf", MountFlags::empty(), None)
        .map_err(|error| PinError::Mount(error.into()))?;
    info!("mounted bpffs on /sys/fs/bpf");
    if is_bpffs(parent) || parent == root {
        Ok(())
    } else {
        Err(PinError::NotBpffs(dir.to_owned()))
    }
}

/// The interfaces whose XDP links are pinned in `dir`, sorted; read without opening,
/// locking or creating anything.
pub(crate) fn pinned_links_in(dir: &Path) -> Result<Vec<String>, PinError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(name) = entry.file_name().to_str()
            && let Some(ifname) = name.strip_prefix(LINK_PREFIX)
        {
            names.push(ifname.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

impl PinDir {
    /// Creates (if needed) and locks `path`, mounting bpffs first if it is missing.
    pub(crate) fn open(path: &Path) -> Result<Self, PinError> {
        ensure_bpffs(path)?;
        std::fs::create_dir_all(path).map_err(io_error(path))?;
        Ok(Self {
            path: path.to_owned(),
            lock: lock(path)?,
            kept: Kept::default(),
        })
    }

    /// Opens one handle to every pinned map and to the links of `ifaces`, held for as long
    /// as this `PinDir` lives, so that [`PinDir::restore`] can re-pin them.
    pub(crate) fn keep(&mut self, ifaces: &[String]) -> Result<(), PinError> {
        let keep_error = |name: &str, e: &dyn std::error::Error| PinError::Keep {
            name: name.to_owned(),
            reason: crate::model::error_chain::error_chain(e),
        };
        let mut kept = Kept::default();
        for name in PINNED_MAPS {
            let map = MapData::from_pin(self.map_path(name)).map_err(|e| keep_error(name, &e))?;
            kept.maps.push((name, map));
        }
        for ifname in ifaces {
            let link_name = format!("{LINK_PREFIX}{ifname}");
            let link = PinnedLink::from_pin(self.link_path(ifname))
                .map_err(|e| keep_error(&link_name, &e))?;
            kept.links.push((ifname.clone(), Some(link.into())));
        }
        self.kept = kept;
        Ok(())
    }

    /// Whether the lock taken is on the directory now at `path` (same device and inode).
    fn holds_lock_on_path(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (self.lock.metadata(), std::fs::metadata(&self.path)) {
            (Ok(locked), Ok(now)) => locked.dev() == now.dev() && locked.ino() == now.ino(),
            _ => false,
        }
    }

    /// Drops the handles [`PinDir::keep`] took, so that unpinning really detaches.
    pub(crate) fn release(&mut self) {
        self.kept = Kept::default();
    }

    /// What is missing of the pins [`PinDir::keep`] holds: maps by name, links as
    /// `link_<ifname>`.
    pub(crate) fn missing(&self) -> Vec<String> {
        let maps = self
            .kept
            .maps
            .iter()
            .filter(|(name, _)| !self.map_path(name).exists())
            .map(|(name, _)| (*name).to_owned());
        let links = self
            .kept
            .links
            .iter()
            .filter(|(ifname, _)| !self.link_path(ifname).exists())
            .map(|(ifname, _)| format!("{LINK_PREFIX}{ifname}"));
        maps.chain(links).collect()
    }

    /// Re-pins whatever [`PinDir::missing`] lists, re-creating (and re-locking) the
    /// directory if it was removed too. Returns what was re-pinned.
    pub(crate) fn restore(&mut self) -> Result<Vec<String>, PinError> {
        let missing = self.missing();
        if missing.is_empty() {
            return Ok(missing);
        }
        if !self.path.is_dir() {
            std::fs::create_dir_all(&self.path).map_err(io_error(&self.path))?;
        }
        if !self.holds_lock_on_path() {
            // The directory was removed (and maybe re-created by someone else): the old lock
            // is on the removed one. Lock this one, or leave it to whoever holds it.
            self.lock = lock(&self.path)?;
        }
        let repin_error = |name: &str, e: &dyn std::error::Error| PinError::Repin {
            name: name.to_owned(),
            reason: crate::model::error_chain::error_chain(e),
        };
        for (name, map) in &self.kept.maps {
            let path = self.map_path(name);
            if !path.exists() {
                map.pin(&path).map_err(|e| repin_error(name, &e))?;
            }
        }
        for (ifname, spare) in &mut self.kept.links {
            let path = link_file(&self.path, ifname);
            if path.exists() {
                continue;
            }
            let name = format!("{LINK_PREFIX}{ifname}");
            let link = spare.take().ok_or_else(|| PinError::Repin {
                name: name.clone(),
                reason: "an earlier re-pin of it failed and used up the spare handle".to_owned(),
            })?;
            let pinned = link.pin(&path).map_err(|e| repin_error(&name, &e))?;
            *spare = Some(pinned.into());
        }
        Ok(missing)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn map_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub(crate) fn link_path(&self, ifname: &str) -> PathBuf {
        link_file(&self.path, ifname)
    }

    /// Interface names with a pinned XDP link.
    pub(crate) fn pinned_links(&self) -> Result<Vec<String>, PinError> {
        pinned_links_in(&self.path)
    }

    /// The limits of a complete pinned datapath, checked against this controller's layout
    /// and the operator's explicit wishes; `None` when there is nothing (complete) to adopt.
    /// A half-made set of pins (META never written) is removed.
    pub(crate) fn adoptable(&self, wanted: &Requested) -> Result<Option<Limits>, PinError> {
        let meta_path = self.map_path(MAP_META);
        if !meta_path.exists() {
            // Maps without META are an interrupted first start; links would mean a live
            // datapath we do not understand.
            if !self.pinned_links()?.is_empty() {
                return Err(PinError::Incomplete(self.path.clone()));
            }
            self.clear()?;
            return Ok(None);
        }
        let data = MapData::from_pin(&meta_path).map_err(PinError::Meta)?;
        let map = Array::<MapData, Layout>::try_from(Map::Array(data)).map_err(PinError::Meta)?;
        let layout = map.get(&0, 0).map_err(PinError::Meta)?;
        if layout.version == 0 {
            info!(dir = %self.path.display(), "removing pins left by an interrupted start");
            drop(map);
            self.clear()?;
            return Ok(None);
        }
        if layout.version != LAYOUT_VERSION {
            return Err(PinError::Version {
                dir: self.path.clone(),
                found: layout.version,
            });
        }
        let pinned = Limits {
            max_vips: layout.max_vips,
            maglev_size: layout.maglev_size,
            conntrack_capacity: layout.conntrack_capacity,
            max_backends: self.pinned_size(MAP_BACKENDS)?,
        };
        if let Some(SizeMismatch {
            flag,
            pinned,
            wanted,
        }) = wanted.mismatch(&pinned)
        {
            return Err(PinError::Limits {
                dir: self.path.clone(),
                what: flag,
                found: pinned,
                wanted,
            });
        }
        // Only once the pins are known to be adopted.
        self.renew_short_stats()?;
        Ok(Some(pinned))
    }

    /// A release that counts more reasons than the one that pinned STATS cannot count them
    /// in the old map: its pin is removed so the loader creates a larger one. The counters
    /// start again from zero (the daemon's figures are rates and deltas); the flows, in
    /// the other maps, are kept.
    fn renew_short_stats(&self) -> Result<(), PinError> {
        let path = self.map_path(MAP_STATS);
        if !path.exists() || self.pinned_size(MAP_STATS)? >= STAT_COUNT {
            return Ok(());
        }
        std::fs::remove_file(&path).map_err(io_error(&path))?;
        info!(
            dir = %self.path.display(),
            counters = STAT_COUNT,
            "the pinned STATS map predates this release's counters: counting starts again from zero"
        );
        Ok(())
    }

    /// The `max_entries` a pinned map was created with.
    fn pinned_size(&self, name: &str) -> Result<u32, PinError> {
        let data = MapData::from_pin(self.map_path(name)).map_err(PinError::Meta)?;
        let info = data.info().map_err(PinError::Meta)?;
        Ok(info.max_entries())
    }

    /// Records that the pinned maps are complete and what they were created with.
    pub(crate) fn write_layout(meta: Map, limits: &Limits) -> Result<(), PinError> {
        let mut map = Array::<MapData, Layout>::try_from(meta).map_err(PinError::Meta)?;
        let layout = Layout {
            version: LAYOUT_VERSION,
            maglev_size: limits.maglev_size,
            max_vips: limits.max_vips,
            conntrack_capacity: limits.conntrack_capacity,
        };
        map.set(0, layout, 0).map_err(PinError::Meta)
    }

    /// Removes every pin: links first (detaching XDP unless a live process still holds the
    /// link), then everything else, whatever layout version named it. The directory itself
    /// stays until [`PinDir::remove`].
    pub(crate) fn clear(&self) -> Result<(), PinError> {
        for ifname in self.pinned_links()? {
            let path = self.link_path(&ifname);
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            info!(iface = %ifname, "unpinned XDP link");
        }
        for entry in std::fs::read_dir(&self.path).map_err(io_error(&self.path))? {
            let path = entry.map_err(io_error(&self.path))?.path();
            match std::fs::remove_file(&path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error(&path)(error));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Clears the pins and removes the directory.
    pub(crate) fn remove(self) -> Result<(), PinError> {
        self.clear()?;
        std::fs::remove_dir(&self.path).map_err(io_error(&self.path))
    }
}
