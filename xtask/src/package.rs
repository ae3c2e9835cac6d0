//! `cargo xtask package`: a Debian package of the `cargo xtask install` tree (prefix /usr,
//! configuration in /etc), built with dpkg-deb from a staging directory, so nothing beyond
//! dpkg is needed. The files under /etc are conffiles: an upgrade keeps the operator's
//! edits. The service is neither enabled nor started: it needs its interfaces first.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{build, cmd, install};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// After an install or upgrade: systemd learns of the new unit when it runs (not in a
/// container or chroot without it); an upgrade restarts a running daemon onto the new
/// binary (it adopts the pinned datapath: flows stay).
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ -n \"$2\" ]; then
        systemctl try-restart lb.service || true
    fi
fi
";

/// Before removal: stop the daemon (the datapath keeps forwarding until `lb down`).
const PRERM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop lb.service || true
    echo 'lb: the daemon is stopped; its datapath still forwards until `lb down` (run it before removing lb)' >&2
fi
";

/// After removal: systemd forgets the unit; a purge removes the saved state too.
const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ \"$1\" = purge ]; then
    rm -rf /var/lib/lb
fi
";

/// `cargo xtask package`'s flags.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct Options {
    /// Package the unoptimized dev build (see `cargo xtask install --debug`).
    #[arg(long)]
    pub debug: bool,
}

/// Builds `target/lb_<version>_<arch>.deb`; returns its path.
pub(crate) fn run(options: &Options) -> anyhow::Result<PathBuf> {
    let arch = dpkg_architecture()?;
    let target = build::lb_binary(true)
        .parent()
        .and_then(Path::parent)
        .context("the target directory")?
        .to_owned();
    let staging = target.join("package").join(format!("lb_{VERSION}_{arch}"));
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("clearing {}", staging.display()))?;
    }
    let layout = install::run(&install::Options {
        prefix: PathBuf::from("/usr"),
        sysconfdir: Some(PathBuf::from("/etc")),
        destdir: Some(staging.clone()),
        debug: options.debug,
    })?;

    let debian = staging.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let installed_kib = tree_size(&staging)?.div_ceil(1024);
    write(
        &debian.join("control"),
        &control(&arch, installed_kib),
        0o644,
    )?;
    let conffiles: String = layout
        .conffiles()
        .iter()
        .map(|path| format!("{}\n", path.display()))
        .collect();
    write(&debian.join("conffiles"), &conffiles, 0o644)?;
    for (name, script) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        write(&debian.join(name), script, 0o755)?;
    }

    let deb = target.join(format!("lb_{VERSION}_{arch}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&staging)
            .arg(&deb),
    )?;
    Ok(deb)
}

fn control(arch: &str, installed_kib: u64) -> String {
    format!(
        "Package: lb
Version: {VERSION}
Architecture: {arch}
Maintainer: lb developers <lb@localhost>
Installed-Size: {installed_kib}
Depends: libc6
Section: net
Priority: optional
Description: XDP layer-4 load balancer
 lb balances TCP and UDP flows to a VIP over backends (Maglev, connection tracking,
 health checks; NAT or direct server return) in an XDP program. The daemon `lb run`
 (lb.service) loads and attaches it and serves the `lb` commands; the datapath keeps
 forwarding while the daemon is stopped, until `lb down`.
"
    )
}

fn dpkg_architecture() -> anyhow::Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture (is this Debian or Ubuntu?)")?;
    let arch = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || arch.is_empty() {
        bail!("dpkg --print-architecture failed ({})", out.status);
    }
    Ok(arch)
}

/// Bytes in the regular files under `dir`.
fn tree_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += tree_size(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}
