//! `cargo xtask package`: a Debian package of the `cargo xtask install` tree (prefix /usr,
//! configuration in /etc), built with dpkg-deb from a staging directory, so nothing beyond
//! dpkg, dpkg-dev and binutils is needed. The files under /etc are conffiles: an upgrade
//! keeps the operator's edits. The service is neither enabled nor started: it needs its
//! interfaces first. The maintainer scripts are dist/deb/{postinst,prerm,postrm}: removing
//! the package takes the datapath down (prerm), an upgrade keeps it forwarding.
//!
//! What Debian's policy and lintian want beyond the install tree: the binary stripped (as
//! dh_strip does), /usr/share/doc/lb/{copyright (machine-readable, with the crates linked
//! in), changelog.gz}, md5sums, Depends computed by dpkg-shlibdeps, and a real Maintainer.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    build, cmd,
    install::{self, write},
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Who answers for the package when no --maintainer is given. Set your own when you
/// publish packages: it is the address apt and bug reports show.
pub(crate) const DEFAULT_MAINTAINER: &str = "lb developers <lb-dev@lists.example.org>";

/// The package's own files, relative to the workspace root.
const SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];
const SCRIPT_DIR: &str = "dist/deb";
const CHANGELOG: &str = "dist/deb/changelog";
const COPYRIGHT: &str = "dist/deb/copyright";

/// `cargo xtask package`'s flags.
#[derive(clap::Args, Debug)]
pub(crate) struct Options {
    /// Package the unoptimized dev build (see `cargo xtask install --debug`); stripped
    /// like the release one, compressed with gzip -1 instead of xz (17 s of CPU for the
    /// tests' packages, half a second this way).
    #[arg(long)]
    pub debug: bool,
    /// The package's Maintainer field, `NAME <ADDRESS>`.
    #[arg(long, value_name = "NAME <ADDRESS>", default_value = DEFAULT_MAINTAINER)]
    pub maintainer: String,
}

/// Builds `target/lb_<version>_<arch>.deb`; returns its path.
pub(crate) fn run(options: &Options) -> anyhow::Result<PathBuf> {
    check_maintainer(&options.maintainer)?;
    let root = cmd::workspace_root();
    check_changelog(&fs::read_to_string(root.join(CHANGELOG)).context("reading the changelog")?)?;
    let arch = dpkg_architecture()?;
    let target = build::lb_binary(true)
        .parent()
        .and_then(Path::parent)
        .context("the target directory")?
        .to_owned();
    // Per process: packages may be built side by side (the tests do).
    let work = target.join("package").join(std::process::id().to_string());
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let staging = work.join(format!("lb_{VERSION}_{arch}"));
    let layout = install::run(&install::Options {
        prefix: PathBuf::from("/usr"),
        sysconfdir: Some(PathBuf::from("/etc")),
        destdir: Some(staging.clone()),
        debug: options.debug,
    })?;

    let bin = staging.join("usr/bin/lb");
    strip(&bin)?;
    let doc = staging.join("usr/share/doc/lb");
    let changelog = fs::read(root.join(CHANGELOG)).context("reading the changelog")?;
    write(
        &doc.join("changelog.gz"),
        &install::gzip(&changelog)?,
        0o644,
    )?;
    let copyright = fs::read_to_string(root.join(COPYRIGHT)).context("reading the copyright")?;
    let copyright = copyright
        .replace("@MAINTAINER@", &options.maintainer)
        .replace("@CRATES@", &crates_comment(&linked_crates()?));
    write(&doc.join("copyright"), copyright.as_bytes(), 0o644)?;

    let installed_kib = tree_size(&staging)?.div_ceil(1024);
    let debian = staging.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let conffiles: Vec<PathBuf> = layout.conffiles().into();
    write(
        &debian.join("md5sums"),
        &md5sums(&staging, &conffiles)?,
        0o644,
    )?;
    let depends = shlibs_depends(&work, &bin)?;
    let control = control(&arch, installed_kib, &depends, &options.maintainer);
    write(&debian.join("control"), control.as_bytes(), 0o644)?;
    let conffiles: String = conffiles
        .iter()
        .map(|path| format!("{}\n", path.display()))
        .collect();
    write(&debian.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    for name in SCRIPTS {
        let script = fs::read(root.join(SCRIPT_DIR).join(name))
            .with_context(|| format!("reading {SCRIPT_DIR}/{name}"))?;
        write(&debian.join(name), &script, 0o755)?;
    }

    let deb = target.join(format!("lb_{VERSION}_{arch}.deb"));
    // Built beside and renamed: a reader never sees half a package.
    let partial = work.join(format!("lb_{VERSION}_{arch}.deb"));
    let mut dpkg_deb = Command::new("dpkg-deb");
    dpkg_deb.arg("--root-owner-group");
    if options.debug {
        dpkg_deb.args(["-Zgzip", "-z1"]);
    }
    cmd::run(dpkg_deb.arg("--build").arg(&staging).arg(&partial))?;
    fs::rename(&partial, &deb)
        .with_context(|| format!("moving the package to {}", deb.display()))?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(deb)
}

/// `NAME <USER@DOMAIN>`, with a domain mail can reach (lintian refuses localhost).
fn check_maintainer(maintainer: &str) -> anyhow::Result<()> {
    let refuse = |why: &str| {
        anyhow::anyhow!(
            "--maintainer `{maintainer}` {why}: give `NAME <USER@DOMAIN>`, e.g. `{DEFAULT_MAINTAINER}`"
        )
    };
    let (name, rest) = maintainer
        .split_once('<')
        .ok_or_else(|| refuse("has no <ADDRESS>"))?;
    let address = rest
        .strip_suffix('>')
        .ok_or_else(|| refuse("does not end with its <ADDRESS>"))?;
    if name.trim().is_empty() {
        return Err(refuse("has no name"));
    }
    let (user, domain) = address
        .split_once('@')
        .ok_or_else(|| refuse("has no USER@DOMAIN address"))?;
    if user.is_empty() || !domain.contains('.') || domain.split('.').any(str::is_empty) {
        return Err(refuse("has no routable mail domain"));
    }
    if domain.starts_with("localhost") || domain.ends_with(".localdomain") {
        return Err(refuse("names a local host"));
    }
    if maintainer.contains(['\n', ',']) {
        return Err(refuse("is not one contact"));
    }
    Ok(())
}

/// The changelog's newest entry must be this version: `lb (<VERSION>) ...`.
fn check_changelog(changelog: &str) -> anyhow::Result<()> {
    let first = changelog.lines().next().unwrap_or_default();
    let expected = format!("lb ({VERSION}) ");
    if !first.starts_with(&expected) {
        bail!(
            "{CHANGELOG} starts with `{first}`, not an entry for lb {VERSION}: add one (dch -v {VERSION})"
        );
    }
    Ok(())
}

/// Strips symbols and debug information as dh_strip does for an executable.
fn strip(bin: &Path) -> anyhow::Result<()> {
    cmd::run(
        Command::new("strip")
            .args(["--remove-section=.comment", "--remove-section=.note"])
            .arg(bin),
    )
}

/// The crates from crates.io linked into `lb` (the daemon and, embedded, the datapath),
/// as `name version: license`, sorted; lb's own (path) crates are left out.
fn linked_crates() -> anyhow::Result<Vec<String>> {
    let host = host_triple()?;
    let mut crates = Vec::new();
    for (package, target) in [
        ("lb-userspace", host.as_str()),
        ("lb-ebpf", "bpfel-unknown-none"),
    ] {
        let listing = output(cmd::cargo()?.args([
            "tree",
            "--package",
            package,
            "--edges",
            "normal,no-proc-macro",
            "--prefix",
            "none",
            "--format",
            "{p}|{l}",
            "--target",
            target,
        ]))?;
        crates.extend(listing.lines().filter_map(crate_line));
    }
    crates.sort();
    crates.dedup();
    if crates.is_empty() {
        bail!("cargo tree listed no crates linked into lb");
    }
    Ok(crates)
}

/// `aya v0.14.0|MIT OR Apache-2.0 (*)` → `aya 0.14.0: MIT OR Apache-2.0`; a path crate
/// (`lb-common v0.1.0 (/…)`) → none.
fn crate_line(line: &str) -> Option<String> {
    let (package, license) = line.split_once('|')?;
    let license = license.trim().trim_end_matches("(*)").trim();
    let mut words = package.split_whitespace();
    let (name, version) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let license = if license.is_empty() {
        "not declared"
    } else {
        license
    };
    Some(format!(
        "{name} {}: {license}",
        version.trim_start_matches('v')
    ))
}

/// The crates as continuation lines of a copyright field.
fn crates_comment(crates: &[String]) -> String {
    crates
        .iter()
        .map(|line| format!(" {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn host_triple() -> anyhow::Result<String> {
    let version = output(Command::new("rustc").arg("-vV"))?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV names no host")
}

/// DEBIAN/md5sums: every file under `staging` but the conffiles (dpkg checks those
/// itself), as dh_md5sums writes it.
fn md5sums(staging: &Path, conffiles: &[PathBuf]) -> anyhow::Result<Vec<u8>> {
    let mut files = Vec::new();
    list_files(staging, staging, &mut files)?;
    files.retain(|file| {
        !file.starts_with("DEBIAN")
            && !conffiles
                .iter()
                .any(|conffile| conffile.strip_prefix("/").is_ok_and(|c| c == file))
    });
    files.sort();
    let mut md5sum = Command::new("md5sum");
    md5sum.current_dir(staging).args(&files);
    Ok(output(&mut md5sum)?.into_bytes())
}

fn list_files(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            list_files(root, &entry.path(), files)?;
        } else {
            files.push(entry.path().strip_prefix(root)?.to_owned());
        }
    }
    Ok(())
}

/// The shared libraries `bin` needs, as dpkg-shlibdeps words them
/// (`libc6 (>= 2.34), libgcc-s1 (>= 4.2)`). It reads a debian/control, written in `work`.
fn shlibs_depends(work: &Path, bin: &Path) -> anyhow::Result<String> {
    write(
        &work.join("debian/control"),
        b"Source: lb\n\nPackage: lb\nArchitecture: any\n",
        0o644,
    )?;
    let out = output(
        Command::new("dpkg-shlibdeps")
            .current_dir(work)
            .args(["-O", "--warnings=0"])
            .arg(format!("-e{}", bin.display())),
    )?;
    out.lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out}"))
}

fn control(arch: &str, installed_kib: u64, depends: &str, maintainer: &str) -> String {
    format!(
        "Package: lb
Version: {VERSION}
Architecture: {arch}
Maintainer: {maintainer}
Installed-Size: {installed_kib}
Depends: {depends}
Suggests: bash-completion
Section: net
Priority: optional
Description: XDP layer-4 load balancer
 lb balances TCP and UDP flows to a VIP over backends in an XDP program:
 Maglev, connection tracking, health checks; NAT or direct server return.
 .
 The daemon `lb run` (lb.service) loads and attaches it and serves the `lb`
 commands. The datapath keeps forwarding while the daemon is stopped or
 upgraded, until `lb down`; removing the package runs `lb down`.
"
    )
}

fn dpkg_architecture() -> anyhow::Result<String> {
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .context("is this Debian or Ubuntu?")?;
    let arch = arch.trim();
    if arch.is_empty() {
        bail!("dpkg --print-architecture printed nothing");
    }
    Ok(arch.to_owned())
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

/// A command's stdout as text; its stderr in the error when it fails.
fn output(command: &mut Command) -> anyhow::Result<String> {
    String::from_utf8(cmd::output(command)?)
        .with_context(|| format!("{} printed non-UTF-8", cmd::describe(command)))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maintainer_is_a_name_and_a_routable_address() {
        check_maintainer(DEFAULT_MAINTAINER).expect("the default");
        check_maintainer("Ada Lovelace <ada@example.com>").expect("a person");
        for bad in [
            "lb developers <lb@localhost>",
            "lb developers <lb@localhost.localdomain>",
            "lb developers",
            "<lb@example.org>",
            "lb <lb@example>",
            "lb <@example.org>",
            "a <a@example.org>, b <b@example.org>",
        ] {
            let error = check_maintainer(bad).expect_err(bad).to_string();
            assert!(
                error.contains(bad) && error.contains("NAME <USER@DOMAIN>"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_changelog_starts_with_this_version() {
        let shipped = fs::read_to_string(cmd::workspace_root().join(CHANGELOG)).expect("read");
        check_changelog(&shipped).expect("the shipped changelog");
        let error = check_changelog("lb (0.0.1) unstable; urgency=medium\n")
            .expect_err("an old entry")
            .to_string();
        assert!(error.contains(VERSION), "{error}");
    }

    #[test]
    fn cargo_tree_lines_become_crates_and_path_crates_are_left_out() {
        assert_eq!(
            crate_line("aya v0.14.0|MIT OR Apache-2.0 (*)").as_deref(),
            Some("aya 0.14.0: MIT OR Apache-2.0")
        );
        assert_eq!(crate_line("lb-common v0.1.0 (/src/lb-common)|MIT"), None);
        assert_eq!(
            crate_line("odd v1.0.0|").as_deref(),
            Some("odd 1.0.0: not declared")
        );
    }
}
