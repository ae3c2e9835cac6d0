//! `lb decap` on a DSR backend, the pure part: the VIPs and source prefixes it is given,
//! the sysctls a backend needs (and the rule for each), and the record of what `attach`
//! changed, with the plans that extend it (`attach`) and undo it (`detach`). No kernel
//! calls and no files: the caller observes the host, applies the steps, and saves the
//! record (`crate::store::decap_record`).
//!
//! Several interfaces may be attached at once and share `all` sysctls and VIPs on `lo`, so
//! every change in the record lists the interfaces that need it (`needed_by`): detaching one
//! undoes a change only when no other attached interface still needs it.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::model::prefix::{Prefix, PrefixError};

/// The record's format; a record of another version is refused, never guessed at.
pub const RECORD_VERSION: u32 = 1;
/// Where VIPs go.
pub const LOOPBACK: &str = "lo";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecapInputError {
    #[error("not a source prefix: {0}")]
    Prefix(#[from] PrefixError),
    #[error("VIP {addr} cannot go on lo: {reason}")]
    Vip { addr: IpAddr, reason: &'static str },
    #[error("at most {max} --allow-source prefixes, not {count}")]
    TooManySources { count: usize, max: usize },
}

/// Refuses addresses that cannot be a VIP on `lo`.
pub fn check_vip(addr: IpAddr) -> Result<IpAddr, DecapInputError> {
    let reason = match addr {
        _ if addr.is_unspecified() => Some("it is the unspecified address"),
        _ if addr.is_loopback() => Some("it is a loopback address"),
        _ if addr.is_multicast() => Some("it is a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("it is the broadcast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("it is link-local"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some("it is link-local"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("it is IPv4-mapped: give the IPv4 address instead")
        }
        _ => None,
    };
    match reason {
        Some(reason) => Err(DecapInputError::Vip { addr, reason }),
        None => Ok(addr),
    }
}

/// What `lb decap attach` was asked for, validated and without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    pub iface: String,
    pub ifindex: u32,
    pub vips: Vec<IpAddr>,
    pub allow_sources: Vec<Prefix>,
}

impl AttachRequest {
    pub fn new(
        iface: String,
        ifindex: u32,
        vips: &[IpAddr],
        allow_sources: &[Prefix],
        max_sources: usize,
    ) -> Result<Self, DecapInputError> {
        let mut checked = Vec::new();
        for vip in vips {
            let vip = check_vip(*vip)?;
            if !checked.contains(&vip) {
                checked.push(vip);
            }
        }
        let mut sources = allow_sources.to_vec();
        sources.sort();
        sources.dedup();
        if sources.len() > max_sources {
            return Err(DecapInputError::TooManySources {
                count: sources.len(),
                max: max_sources,
            });
        }
        Ok(Self {
            iface,
            ifindex,
            vips: checked,
            allow_sources: sources,
        })
    }
}

impl AttachRequest {
    /// Refuses a VIP that is one of the interface's own addresses (`local`): that is the
    /// address tunnels are sent to, not a service address, and a second copy on `lo` would
    /// only confuse which interface owns it.
    pub fn check_local(&self, local: &[IpAddr]) -> Result<(), DecapInputError> {
        match self.vips.iter().find(|vip| local.contains(vip)) {
            Some(vip) => Err(DecapInputError::Vip {
                addr: *vip,
                reason: "it is an address of the interface itself (where tunnels are sent)",
            }),
            None => Ok(()),
        }
    }
}

/// The prefix length a VIP gets on `lo`: the whole address.
pub const fn host_len(addr: IpAddr) -> u8 {
    Prefix::max_len(addr)
}

/// The sysctl(8) name of an IPv4 per-interface setting (`all` for every interface); a dot
/// in an interface name is written `/`.
pub fn conf_key(dev: &str, name: &str) -> String {
    format!("net.ipv4.conf.{}.{name}", dev.replace('.', "/"))
}

/// A sysctl that must change for the backend to work, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysctlNeed {
    pub key: String,
    pub wanted: &'static str,
    pub why: &'static str,
}

const WHY_ARP_IGNORE: &str =
    "answer ARP only for addresses of the interface asked on, so the VIPs on lo stay silent";
const WHY_ARP_ANNOUNCE: &str = "never use a VIP on lo as the source address of an ARP request";
const WHY_RP_FILTER: &str = "strict reverse-path filtering drops decapsulated packets whose \
     client is routed through another interface; loose only needs some route back";

/// Every sysctl [`needed_sysctls`] reads for `iface`.
pub fn consulted_sysctls(iface: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for name in ["arp_ignore", "arp_announce", "rp_filter"] {
        for dev in ["all", iface] {
            keys.push(conf_key(dev, name));
        }
    }
    keys
}

/// The sysctls whose current value does not suit a DSR backend on `iface`, given the
/// values of [`consulted_sysctls`]. The kernel applies the larger of `all` and the
/// interface's value for all three.
///
/// - `arp_ignore` (all and the interface): 1 or 2 is kept (2 is stricter still), anything
///   else becomes 1.
/// - `arp_announce` (all and the interface): anything but 2 becomes 2.
/// - `rp_filter`: when the larger of all and the interface's value is 1 (strict), the
///   interface's becomes 2 (loose), which is enough since the larger applies; `all` is
///   left alone so other interfaces keep their filtering, and `lo` needs nothing: the
///   check is made on the interface a packet arrives on, and decapsulated packets arrive
///   on `iface`.
pub fn needed_sysctls(iface: &str, current: &BTreeMap<String, String>) -> Vec<SysctlNeed> {
    let value = |key: &str| current.get(key).and_then(|v| v.trim().parse::<u32>().ok());
    let mut needs = Vec::new();
    for dev in ["all", iface] {
        let key = conf_key(dev, "arp_ignore");
        if !matches!(value(&key), Some(1 | 2)) {
            needs.push(SysctlNeed {
                key,
                wanted: "1",
                why: WHY_ARP_IGNORE,
            });
        }
    }
    for dev in ["all", iface] {
        let key = conf_key(dev, "arp_announce");
        if value(&key) != Some(2) {
            needs.push(SysctlNeed {
                key,
                wanted: "2",
                why: WHY_ARP_ANNOUNCE,
            });
        }
    }
    let all = value(&conf_key("all", "rp_filter")).unwrap_or(0);
    let own_key = conf_key(iface, "rp_filter");
    let own = value(&own_key).unwrap_or(0);
    if all.max(own) == 1 {
        needs.push(SysctlNeed {
            key: own_key,
            wanted: "2",
            why: WHY_RP_FILTER,
        });
    }
    needs
}

/// One interface `lb decap attach` runs on, as it was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedInterface {
    pub ifindex: u32,
    /// The mode the link was first attached in: `native` or `skb`.
    pub mode: String,
    pub vips: Vec<IpAddr>,
    pub allow_sources: Vec<Prefix>,
}

/// A sysctl attach changed: the value it found and the one it set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlChange {
    pub key: String,
    pub old: String,
    pub new: String,
    pub needed_by: Vec<String>,
}

/// An address attach added (never one that was there before).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub dev: String,
    pub needed_by: Vec<String>,
}

/// What `lb decap attach` changed on this host, so `detach` can undo exactly that.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    /// The network namespace (inode of `/proc/self/ns/net`) the record was written in;
    /// absent in records of earlier releases. Another namespace's record is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    pub interfaces: BTreeMap<String, AttachedInterface>,
    pub sysctls: Vec<SysctlChange>,
    pub addresses: Vec<AddedAddress>,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            version: RECORD_VERSION,
            netns: None,
            interfaces: BTreeMap::new(),
            sysctls: Vec::new(),
            addresses: Vec::new(),
        }
    }
}

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("reading the decap record {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the decap record {} is not valid: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "the decap record {} has version {found}, this lb reads {RECORD_VERSION}: detach with the lb that attached",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error("writing the decap record {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Record {
    /// Reads a record's text (from `path`, named in errors); a record of another version
    /// is refused.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, RecordError> {
        let record: Self = serde_json::from_str(text).map_err(|e| RecordError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if record.version != RECORD_VERSION {
            return Err(RecordError::Version {
                path: path.to_owned(),
                found: record.version,
            });
        }
        Ok(record)
    }

    /// The record's text, as `crate::store::decap_record` saves it.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self).map(|text| format!("{text}\n"))
    }

    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty() && self.sysctls.is_empty() && self.addresses.is_empty()
    }

    /// The sysctl changes and added addresses `iface` relies on.
    pub fn changes_for(&self, iface: &str) -> (Vec<SysctlChange>, Vec<AddedAddress>) {
        let needs = |by: &Vec<String>| by.iter().any(|i| i == iface);
        (
            self.sysctls
                .iter()
                .filter(|c| needs(&c.needed_by))
                .cloned()
                .collect(),
            self.addresses
                .iter()
                .filter(|a| needs(&a.needed_by))
                .cloned()
                .collect(),
        )
    }
}

/// One change to the host, or a line that says why something was left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Sysctl {
        key: String,
        from: String,
        to: String,
        why: String,
    },
    AddAddress {
        dev: String,
        address: IpAddr,
        prefix_len: u8,
    },
    RemoveAddress {
        dev: String,
        address: IpAddr,
        prefix_len: u8,
    },
    Note(String),
}

impl Step {
    /// The step that takes this one back (for rolling back a failed attach).
    pub fn undo(&self) -> Option<Step> {
        match self {
            Step::Sysctl { key, from, to, .. } => Some(Step::Sysctl {
                key: key.clone(),
                from: to.clone(),
                to: from.clone(),
                why: "as before this attach".to_owned(),
            }),
            Step::AddAddress {
                dev,
                address,
                prefix_len,
            } => Some(Step::RemoveAddress {
                dev: dev.clone(),
                address: *address,
                prefix_len: *prefix_len,
            }),
            Step::RemoveAddress {
                dev,
                address,
                prefix_len,
            } => Some(Step::AddAddress {
                dev: dev.clone(),
                address: *address,
                prefix_len: *prefix_len,
            }),
            Step::Note(_) => None,
        }
    }
}

/// One line each: what, the old value and the new.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Sysctl { key, from, to, why } => {
                let from = if from.is_empty() { "(none)" } else { from };
                write!(f, "sysctl {key}: {from} -> {to} ({why})")
            }
            Step::AddAddress {
                dev,
                address,
                prefix_len,
            } => write!(
                f,
                "address {address}/{prefix_len} on {dev}: absent -> added"
            ),
            Step::RemoveAddress {
                dev,
                address,
                prefix_len,
            } => write!(
                f,
                "address {address}/{prefix_len} on {dev}: present -> removed"
            ),
            Step::Note(text) => f.write_str(text),
        }
    }
}

/// The host as attach or detach found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Current values of the sysctls consulted (absent: the sysctl does not exist).
    pub sysctls: BTreeMap<String, String>,
    /// Addresses on `lo`.
    pub loopback: Vec<IpAddr>,
}

fn need(by: &mut Vec<String>, iface: &str) -> bool {
    if by.iter().any(|i| i == iface) {
        return false;
    }
    by.push(iface.to_owned());
    by.sort();
    true
}

fn others(by: &[String], iface: &str) -> String {
    by.iter()
        .filter(|i| *i != iface)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

/// Drops `iface` from what `vip` on lo is needed by: the step that removes it when no
/// attached interface needs it any more.
fn release_vip(next: &mut Record, observed: &Observed, iface: &str, vip: IpAddr) -> Step {
    let Some(index) = next
        .addresses
        .iter()
        .position(|a| a.address == vip && a.dev == LOOPBACK)
    else {
        return Step::Note(format!(
            "VIP {vip} on lo: not added by lb decap, left alone"
        ));
    };
    let added = &mut next.addresses[index];
    added.needed_by.retain(|i| i != iface);
    if !added.needed_by.is_empty() {
        return Step::Note(format!(
            "VIP {vip} on lo: kept, still needed by {}",
            added.needed_by.join(", ")
        ));
    }
    let added = next.addresses.remove(index);
    if observed.loopback.contains(&vip) {
        Step::RemoveAddress {
            dev: added.dev,
            address: added.address,
            prefix_len: added.prefix_len,
        }
    } else {
        Step::Note(format!("VIP {vip} on lo: already gone"))
    }
}

/// What `lb decap attach` does to the host for `request`, and the record after it. Run
/// again on an attached interface it brings the VIPs to the new list (adding the new ones,
/// removing those it added that are no longer listed) and sets again any sysctl changed
/// since; what it found before the first attach stays recorded as the value to restore.
pub fn plan_attach(
    record: &Record,
    observed: &Observed,
    request: &AttachRequest,
    mode: &str,
) -> (Vec<Step>, Record) {
    let iface = request.iface.as_str();
    let mut next = record.clone();
    next.version = RECORD_VERSION;
    let mut steps = Vec::new();

    let needs = needed_sysctls(iface, &observed.sysctls);
    for need_ in &needs {
        let current = observed
            .sysctls
            .get(&need_.key)
            .cloned()
            .unwrap_or_default();
        match next.sysctls.iter_mut().find(|c| c.key == need_.key) {
            Some(change) => {
                // Ours, but changed since: set it again, keep what the first attach found.
                need_.wanted.clone_into(&mut change.new);
                need(&mut change.needed_by, iface);
            }
            None => next.sysctls.push(SysctlChange {
                key: need_.key.clone(),
                old: current.clone(),
                new: need_.wanted.to_owned(),
                needed_by: vec![iface.to_owned()],
            }),
        }
        steps.push(Step::Sysctl {
            key: need_.key.clone(),
            from: current,
            to: need_.wanted.to_owned(),
            why: need_.why.to_owned(),
        });
    }
    // Settings an earlier attach (of another interface) changed that this one relies on
    // too: not restored while this interface is attached.
    for key in consulted_sysctls(iface) {
        if needs.iter().any(|n| n.key == key) {
            continue;
        }
        if let Some(change) = next.sysctls.iter_mut().find(|c| c.key == key)
            && need(&mut change.needed_by, iface)
        {
            steps.push(Step::Note(format!(
                "sysctl {key} = {}: set by lb decap for {}, kept",
                change.new,
                others(&change.needed_by, iface)
            )));
        }
    }

    let before: Vec<IpAddr> = record
        .interfaces
        .get(iface)
        .map(|a| a.vips.clone())
        .unwrap_or_default();
    for &vip in &request.vips {
        let present = observed.loopback.contains(&vip);
        let ours = next
            .addresses
            .iter_mut()
            .find(|a| a.address == vip && a.dev == LOOPBACK);
        match (ours, present) {
            (Some(added), true) => {
                if need(&mut added.needed_by, iface) {
                    steps.push(Step::Note(format!(
                        "VIP {vip} on lo: added by lb decap for {}, kept",
                        others(&added.needed_by, iface)
                    )));
                }
            }
            (Some(added), false) => {
                // Ours, removed by someone since: put it back.
                need(&mut added.needed_by, iface);
                steps.push(Step::AddAddress {
                    dev: LOOPBACK.to_owned(),
                    address: vip,
                    prefix_len: added.prefix_len,
                });
            }
            (None, true) => steps.push(Step::Note(format!(
                "VIP {vip} on lo: already there, left alone (detach will not remove it)"
            ))),
            (None, false) => {
                let prefix_len = host_len(vip);
                next.addresses.push(AddedAddress {
                    address: vip,
                    prefix_len,
                    dev: LOOPBACK.to_owned(),
                    needed_by: vec![iface.to_owned()],
                });
                steps.push(Step::AddAddress {
                    dev: LOOPBACK.to_owned(),
                    address: vip,
                    prefix_len,
                });
            }
        }
    }
    for vip in before {
        if !request.vips.contains(&vip) {
            steps.push(release_vip(&mut next, observed, iface, vip));
        }
    }
    let mode = record
        .interfaces
        .get(iface)
        .map_or_else(|| mode.to_owned(), |a| a.mode.clone());
    next.interfaces.insert(
        iface.to_owned(),
        AttachedInterface {
            ifindex: request.ifindex,
            mode,
            vips: request.vips.clone(),
            allow_sources: request.allow_sources.clone(),
        },
    );
    (steps, next)
}

/// What `lb decap detach` does to the host for `iface`, and the record after it: each
/// change attach made for `iface` and no other attached interface needs is undone, if the
/// host still shows what attach set (a value or address someone changed since is left as it
/// is, and said so).
pub fn plan_detach(record: &Record, observed: &Observed, iface: &str) -> (Vec<Step>, Record) {
    let mut next = record.clone();
    let mut steps = Vec::new();
    let vips = next
        .interfaces
        .remove(iface)
        .map(|a| a.vips)
        .unwrap_or_default();

    let mut kept = Vec::new();
    for mut change in std::mem::take(&mut next.sysctls) {
        let was_needed = change.needed_by.iter().any(|i| i == iface);
        change.needed_by.retain(|i| i != iface);
        if !was_needed {
            kept.push(change);
            continue;
        }
        if !change.needed_by.is_empty() {
            steps.push(Step::Note(format!(
                "sysctl {} = {}: kept, still needed by {}",
                change.key,
                change.new,
                change.needed_by.join(", ")
            )));
            kept.push(change);
            continue;
        }
        steps.push(match observed.sysctls.get(&change.key) {
            None => Step::Note(format!(
                "sysctl {}: no longer exists, nothing to restore",
                change.key
            )),
            Some(now) if *now == change.new => Step::Sysctl {
                key: change.key,
                from: change.new,
                to: change.old,
                why: "as before attach".to_owned(),
            },
            Some(now) if *now == change.old => Step::Note(format!(
                "sysctl {} = {now}: already as before attach",
                change.key
            )),
            Some(now) => Step::Note(format!(
                "sysctl {} = {now}: changed since attach set {}, left alone (it was {})",
                change.key, change.new, change.old
            )),
        });
    }
    next.sysctls = kept;

    // Addresses attach added for this interface, whether or not its VIP list names them.
    let mut release: Vec<IpAddr> = next
        .addresses
        .iter()
        .filter(|a| a.needed_by.iter().any(|i| i == iface))
        .map(|a| a.address)
        .collect();
    for vip in vips {
        if !release.contains(&vip) {
            release.push(vip);
        }
    }
    for vip in release {
        steps.push(release_vip(&mut next, observed, iface, vip));
    }
    (steps, next)
}

/// One counter of the decap program, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// `lb decap status --json` (docs/API.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecapStatus {
    pub pin_dir: PathBuf,
    pub record: PathBuf,
    pub interfaces: Vec<InterfaceStatus>,
}

/// One interface in [`DecapStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceStatus {
    pub iface: String,
    /// The link is pinned and the interface runs its program.
    pub attached: bool,
    /// Why not, when not.
    pub problem: Option<String>,
    pub ifindex: Option<u32>,
    /// `native` or `skb`, as the kernel reports the attachment.
    pub mode: Option<String>,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// Outer destinations it decapsulates (`DECAP_LOCAL`).
    pub local: Vec<IpAddr>,
    /// Outer sources it accepts; empty: any.
    pub allow_sources: Vec<Prefix>,
    pub vips: Vec<IpAddr>,
    /// Every counter by name (`DECAP_STATS`); empty when the maps are not pinned.
    pub counters: BTreeMap<String, CounterValue>,
    pub sysctls: Vec<SysctlChange>,
    pub addresses: Vec<AddedAddress>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A host with kernel defaults, `eth0` and `lo` holding `loopback`.
    fn defaults(loopback: &[&str]) -> Observed {
        let mut sysctls = BTreeMap::new();
        for iface in ["eth0", "eth1"] {
            for key in consulted_sysctls(iface) {
                sysctls.insert(key, "0".to_owned());
            }
        }
        Observed {
            sysctls,
            loopback: loopback.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn request(iface: &str, vips: &[&str]) -> AttachRequest {
        let vips: Vec<IpAddr> = vips.iter().map(|v| v.parse().unwrap()).collect();
        AttachRequest::new(iface.to_owned(), 2, &vips, &[], 64).unwrap()
    }

    /// Applies the steps to the observed host, as the datapath would.
    fn apply(observed: &mut Observed, steps: &[Step]) {
        for step in steps {
            match step {
                Step::Sysctl { key, to, .. } => {
                    observed.sysctls.insert(key.clone(), to.clone());
                }
                Step::AddAddress { address, .. } => observed.loopback.push(*address),
                Step::RemoveAddress { address, .. } => observed.loopback.retain(|a| a != address),
                Step::Note(_) => {}
            }
        }
    }

    #[test]
    fn prefixes_parse_with_clear_reasons() {
        let p: Prefix = "198.18.0.0/24".parse().unwrap();
        assert_eq!(p.to_string(), "198.18.0.0/24");
        assert_eq!("fd00::1".parse::<Prefix>().unwrap().len, 128);
        assert_eq!("0.0.0.0/0".parse::<Prefix>().unwrap().len, 0);
        for (text, reason) in [
            (
                "198.18.0.1/24",
                "host bits are set (the prefix is 198.18.0.0/24)",
            ),
            ("198.18.0.0/33", "the length must be 0 to 32"),
            ("fd00::/129", "the length must be 0 to 128"),
            ("fd00::/x", "the length must be 0 to 128"),
            ("bogus/8", "`bogus` is not an IP address"),
            ("", "is not an IP address"),
        ] {
            let error = text.parse::<Prefix>().expect_err(text).to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"198.18.0.0/24\"");
        assert_eq!(serde_json::from_str::<Prefix>(&json).unwrap(), p);
    }

    #[test]
    fn vips_that_cannot_live_on_lo_are_refused() {
        for bad in [
            "0.0.0.0",
            "127.0.0.2",
            "224.0.0.1",
            "255.255.255.255",
            "169.254.1.1",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "::ffff:198.18.0.1",
        ] {
            assert!(check_vip(bad.parse().unwrap()).is_err(), "{bad}");
        }
        check_vip("198.18.6.80".parse().unwrap()).unwrap();
        let request = AttachRequest::new(
            "eth0".into(),
            2,
            &[
                "198.18.6.80".parse().unwrap(),
                "198.18.6.80".parse().unwrap(),
            ],
            &["198.18.0.0/24".parse().unwrap(); 2],
            64,
        )
        .unwrap();
        assert_eq!(request.vips.len(), 1);
        assert_eq!(request.allow_sources.len(), 1);
        assert!(
            request
                .check_local(&["198.18.6.80".parse().unwrap()])
                .unwrap_err()
                .to_string()
                .contains("an address of the interface itself")
        );
        request
            .check_local(&["198.18.5.2".parse().unwrap()])
            .unwrap();
        let too_many: Vec<Prefix> = (0..3)
            .map(|i| format!("198.18.{i}.0/24").parse().unwrap())
            .collect();
        assert_eq!(
            AttachRequest::new("eth0".into(), 2, &[], &too_many, 2),
            Err(DecapInputError::TooManySources { count: 3, max: 2 })
        );
    }

    #[test]
    fn sysctl_rules_change_only_what_does_not_suit() {
        let keys = |needs: Vec<SysctlNeed>| {
            needs
                .into_iter()
                .map(|n| format!("{}={}", n.key, n.wanted))
                .collect::<Vec<_>>()
        };
        // Defaults: arp settings on both, rp_filter left (0 is off).
        assert_eq!(
            keys(needed_sysctls("eth0", &defaults(&[]).sysctls)),
            [
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.eth0.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.eth0.arp_announce=2",
            ]
        );
        // arp_ignore 2 is stricter and kept; strict rp_filter on all is loosened on eth0 only.
        let current = values(&[
            ("net.ipv4.conf.all.arp_ignore", "2"),
            ("net.ipv4.conf.eth0.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.eth0.arp_announce", "1"),
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
        ]);
        assert_eq!(
            keys(needed_sysctls("eth0", &current)),
            [
                "net.ipv4.conf.eth0.arp_announce=2",
                "net.ipv4.conf.eth0.rp_filter=2"
            ]
        );
        // Loose already applies when either is 2.
        let loose = values(&[
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.eth0.rp_filter", "2"),
        ]);
        assert!(
            !keys(needed_sysctls("eth0", &loose))
                .iter()
                .any(|k| k.contains("rp_filter"))
        );
        assert_eq!(
            conf_key("eth0.100", "rp_filter"),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
    }

    #[test]
    fn attach_then_detach_restores_the_host_and_keeps_what_was_there() {
        let mut host = defaults(&["127.0.0.1", "198.18.6.81"]);
        host.sysctls
            .insert("net.ipv4.conf.all.arp_announce".into(), "1".into());
        let before = host.clone();
        let (steps, record) = plan_attach(
            &Record::default(),
            &host,
            &request("eth0", &["198.18.6.80", "198.18.6.81"]),
            "native",
        );
        assert!(steps.contains(&Step::Sysctl {
            key: "net.ipv4.conf.all.arp_announce".into(),
            from: "1".into(),
            to: "2".into(),
            why: WHY_ARP_ANNOUNCE.into(),
        }));
        assert!(steps.contains(&Step::AddAddress {
            dev: "lo".into(),
            address: "198.18.6.80".parse().unwrap(),
            prefix_len: 32,
        }));
        assert!(steps.iter().any(
            |s| matches!(s, Step::Note(n) if n.contains("198.18.6.81") && n.contains("left alone"))
        ));
        assert_eq!(record.addresses.len(), 1, "only the address it added");
        apply(&mut host, &steps);
        let (undo, empty) = plan_detach(&record, &host, "eth0");
        apply(&mut host, &undo);
        assert_eq!(host, before);
        assert!(empty.is_empty(), "{empty:?}");
    }

    #[test]
    fn shared_changes_stay_until_the_last_interface_detaches() {
        let mut host = defaults(&[]);
        let before = host.clone();
        let (steps, record) = plan_attach(
            &Record::default(),
            &host,
            &request("eth0", &["198.18.6.80"]),
            "native",
        );
        apply(&mut host, &steps);
        let (steps, record) =
            plan_attach(&record, &host, &request("eth1", &["198.18.6.80"]), "skb");
        apply(&mut host, &steps);
        let shared = |s: &Step| match s {
            Step::AddAddress { .. } => true,
            Step::Sysctl { key, .. } => key.contains(".all."),
            _ => false,
        };
        assert!(
            !steps.iter().any(shared),
            "nothing shared is changed twice: {steps:?}"
        );
        let (steps, record) = plan_detach(&record, &host, "eth0");
        apply(&mut host, &steps);
        assert!(host.loopback.contains(&"198.18.6.80".parse().unwrap()));
        assert_eq!(host.sysctls["net.ipv4.conf.all.arp_ignore"], "1");
        assert_eq!(host.sysctls["net.ipv4.conf.eth0.arp_ignore"], "0");
        let (steps, record) = plan_detach(&record, &host, "eth1");
        apply(&mut host, &steps);
        assert_eq!(host, before);
        assert!(record.is_empty(), "{record:?}");
    }

    #[test]
    fn attaching_again_updates_the_vips_and_keeps_the_first_old_values() {
        let mut host = defaults(&[]);
        let before = host.clone();
        let (steps, record) = plan_attach(
            &Record::default(),
            &host,
            &request("eth0", &["198.18.6.80", "fd00::6:80"]),
            "native",
        );
        apply(&mut host, &steps);
        // Someone lowers a setting attach made; attach again with one VIP fewer and one more.
        host.sysctls
            .insert("net.ipv4.conf.all.arp_announce".into(), "0".into());
        let (steps, record) = plan_attach(
            &record,
            &host,
            &request("eth0", &["198.18.6.80", "198.18.6.82"]),
            "skb",
        );
        let removed: IpAddr = "fd00::6:80".parse().unwrap();
        assert!(steps.contains(&Step::RemoveAddress {
            dev: "lo".into(),
            address: removed,
            prefix_len: 128
        }));
        assert_eq!(steps.iter().filter(|s| s.undo().is_some()).count(), 3);
        apply(&mut host, &steps);
        assert_eq!(record.interfaces["eth0"].mode, "native", "first mode kept");
        let announce = record
            .sysctls
            .iter()
            .find(|c| c.key == "net.ipv4.conf.all.arp_announce")
            .unwrap();
        assert_eq!(announce.old, "0");
        let (steps, record) = plan_detach(&record, &host, "eth0");
        apply(&mut host, &steps);
        assert_eq!(host, before);
        assert!(record.is_empty());
    }

    #[test]
    fn detach_leaves_what_was_changed_since() {
        let mut host = defaults(&[]);
        let (steps, record) = plan_attach(
            &Record::default(),
            &host,
            &request("eth0", &["198.18.6.80"]),
            "native",
        );
        apply(&mut host, &steps);
        host.sysctls
            .insert("net.ipv4.conf.all.arp_ignore".into(), "2".into());
        host.loopback.clear();
        let (steps, _) = plan_detach(&record, &host, "eth0");
        assert!(!steps.iter().any(
            |s| matches!(s, Step::Sysctl { key, .. } if key == "net.ipv4.conf.all.arp_ignore")
        ));
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, Step::RemoveAddress { .. }))
        );
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::Note(n) if n.contains("changed since")))
        );
    }
}
