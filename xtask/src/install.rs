//! `cargo xtask install`: the release `lb` (eBPF object embedded), its systemd unit, man
//! pages, shell completions, and the files an operator edits, under a prefix.
//!
//! Layout (`<destdir>` before every path, for packaging):
//! - `<prefix>/bin/lb`
//! - `<prefix>/lib/systemd/system/lb.service`: systemd reads units from /usr/lib and
//!   /usr/local/lib, so both usual prefixes work as they are; `systemctl link` one elsewhere
//! - `<prefix>/share/man/man1/lb*.1.gz` (gzipped, as Debian's policy wants); their FILES
//!   sections name this install's own paths
//! - `<prefix>/share/doc/lb/README.md.gz`: the README the man pages and lb.toml point to
//! - `<prefix>/share/lb/grafana/lb.json`: the Grafana dashboard of lb's metrics
//! - `<prefix>/share/{bash-completion/completions/lb, zsh/site-functions/_lb,
//!   fish/vendor_completions.d/lb.fish}`
//! - `<sysconfdir>/default/lb` and `<sysconfdir>/lb/lb.toml`, kept when they exist:
//!   they are the operator's. `<sysconfdir>` is /etc for the prefixes /usr and /usr/local,
//!   else `<prefix>/etc`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{build, cmd};

#[derive(Args, Debug)]
pub(crate) struct Options {
    /// Where `bin/`, `lib/` and `share/` go.
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Where `default/lb` and `lb/lb.toml` go [default: /etc for the prefixes /usr and
    /// /usr/local, else <PREFIX>/etc].
    #[arg(long, value_name = "DIR")]
    pub sysconfdir: Option<PathBuf>,
    /// A staging root put before every path (for packages); the unit still names the
    /// paths without it.
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
    /// Install the unoptimized dev build instead of the release one, as `cargo install
    /// --debug` does: for checking the install itself (`cargo xtask test`), not for hosts.
    #[arg(long)]
    pub debug: bool,
}

/// The shipped files, relative to the workspace root.
const UNIT: &str = "dist/systemd/lb.service";
const ENVIRONMENT: &str = "dist/default/lb";
const CONFIG: &str = "dist/lb.toml";
const README: &str = "README.md";
const DASHBOARD: &str = "dist/grafana/lb.json";

/// Shells with a completion directory of their own, and where each looks.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "share/bash-completion/completions/lb"),
    ("zsh", "share/zsh/site-functions/_lb"),
    ("fish", "share/fish/vendor_completions.d/lb.fish"),
];

/// The install's paths as they will be on the host (no destdir).
pub(crate) struct Layout {
    pub prefix: PathBuf,
    pub sysconfdir: PathBuf,
}

impl Layout {
    pub(crate) fn new(options: &Options) -> anyhow::Result<Self> {
        if !options.prefix.is_absolute() {
            bail!(
                "--prefix {} is not an absolute path",
                options.prefix.display()
            );
        }
        let sysconfdir = match &options.sysconfdir {
            Some(dir) if !dir.is_absolute() => {
                bail!("--sysconfdir {} is not an absolute path", dir.display())
            }
            Some(dir) => dir.clone(),
            None if [Path::new("/usr"), Path::new("/usr/local")]
                .contains(&options.prefix.as_path()) =>
            {
                PathBuf::from("/etc")
            }
            None => options.prefix.join("etc"),
        };
        Ok(Self {
            prefix: options.prefix.clone(),
            sysconfdir,
        })
    }

    /// The files the operator edits (Debian's conffiles), as on the host.
    pub(crate) fn conffiles(&self) -> [PathBuf; 2] {
        [
            self.sysconfdir.join("default/lb"),
            self.sysconfdir.join("lb/lb.toml"),
        ]
    }

    fn unit(&self) -> PathBuf {
        self.prefix.join("lib/systemd/system/lb.service")
    }

    /// Where the README goes: Debian's place for a package's documents.
    pub(crate) fn docdir(&self) -> PathBuf {
        self.prefix.join("share/doc/lb")
    }
}

/// Builds the release `lb` (the dev one with `--debug`) and installs everything; returns
/// the layout used.
pub(crate) fn run(options: &Options) -> anyhow::Result<Layout> {
    let layout = Layout::new(options)?;
    let lb = build::run(&build::Options {
        release: !options.debug,
    })?;
    let root = cmd::workspace_root();
    let staged = |path: &Path| match &options.destdir {
        Some(destdir) => destdir.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_owned(),
    };

    let bin = staged(&layout.prefix.join("bin/lb"));
    copy(&lb, &bin, 0o755)?;

    let unit = fs::read_to_string(root.join(UNIT)).context("reading the unit")?;
    write(&staged(&layout.unit()), fill_in(&unit, &layout), 0o644)?;

    let man1 = staged(&layout.prefix.join("share/man/man1"));
    install_man_pages(&lb, &man1, &layout)?;

    let readme = fs::read(root.join(README)).context("reading the README")?;
    write(
        &staged(&layout.docdir().join("README.md.gz")),
        gzip(&readme)?,
        0o644,
    )?;

    let dashboard = fs::read(root.join(DASHBOARD)).context("reading the dashboard")?;
    write(
        &staged(&layout.prefix.join("share/lb/grafana/lb.json")),
        dashboard,
        0o644,
    )?;

    for (shell, path) in COMPLETIONS {
        let script = cmd::output(Command::new(&lb).args(["completions", shell]))?;
        write(&staged(&layout.prefix.join(path)), &script, 0o644)?;
    }

    let [environment, config] = layout.conffiles();
    for (source, target) in [(ENVIRONMENT, environment), (CONFIG, config)] {
        let target = staged(&target);
        if target.exists() {
            eprintln!(
                "install: kept {} (yours); the shipped one is {source}",
                target.display()
            );
            continue;
        }
        let text =
            fs::read_to_string(root.join(source)).with_context(|| format!("reading {source}"))?;
        write(&target, fill_in(&text, &layout), 0o644)?;
    }

    eprintln!(
        "install: lb in {}, its unit in {}",
        bin.display(),
        staged(&layout.unit()).display()
    );
    let systemd_reads_it =
        [Path::new("/usr"), Path::new("/usr/local")].contains(&layout.prefix.as_path());
    if options.destdir.is_none() && systemd_reads_it && Path::new("/run/systemd/system").is_dir() {
        cmd::run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    Ok(layout)
}

/// The unit, the environment file and lb.toml name the install's own paths.
fn fill_in(text: &str, layout: &Layout) -> String {
    text.replace("@BINDIR@", &layout.prefix.join("bin").to_string_lossy())
        .replace("@SYSCONFDIR@", &layout.sysconfdir.to_string_lossy())
        .replace("@DOCDIR@", &layout.docdir().to_string_lossy())
}

/// `bytes` gzipped at -9 without a name or time (-n), so the same tree gives the same
/// package, as Debian's dh_compress does.
pub(crate) fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting gzip")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let input = bytes.to_vec();
    // Written from a thread: gzip's output fills its pipe while it still reads.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("running gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the thread feeding gzip panicked"))?
        .context("feeding gzip")?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// `lb manpages` into a scratch directory, then each page gzipped (-n: no name or time,
/// so the same tree gives the same package) into `man1`. The pages' FILES sections name
/// the layout's configuration and documentation paths.
fn install_man_pages(lb: &Path, man1: &Path, layout: &Layout) -> anyhow::Result<()> {
    // Per process: installs may run side by side (the tests do).
    let scratch = lb.with_file_name(format!("man-pages.{}", std::process::id()));
    match fs::remove_dir_all(&scratch) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", scratch.display()));
        }
        _ => {}
    }
    cmd::run(
        Command::new(lb)
            .arg("manpages")
            .arg(&scratch)
            .arg("--sysconfdir")
            .arg(&layout.sysconfdir)
            .arg("--docdir")
            .arg(layout.docdir()),
    )?;
    fs::create_dir_all(man1).with_context(|| format!("creating {}", man1.display()))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&scratch)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    for page in &pages {
        let name = page.file_name().context("a page has no name")?;
        let gzipped =
            gzip(&fs::read(page).with_context(|| format!("reading {}", page.display()))?)?;
        let mut target = man1.join(name).into_os_string();
        target.push(".gz");
        write(Path::new(&target), &gzipped, 0o644)?;
    }
    fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    eprintln!("install: {} man pages in {}", pages.len(), man1.display());
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

/// Writes through a temporary file and a rename, so a running `lb` is replaced, not
/// overwritten in place (which fails with ETXTBSY).
pub(crate) fn write(path: &Path, bytes: impl AsRef<[u8]>, mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("installing to /")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".lb-install");
    let temporary = PathBuf::from(temporary);
    fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("installing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(prefix: &str) -> Layout {
        Layout::new(&Options {
            prefix: prefix.into(),
            sysconfdir: None,
            destdir: None,
            debug: false,
        })
        .expect("valid")
    }

    #[test]
    fn the_usual_prefixes_configure_in_etc_others_under_the_prefix() {
        assert_eq!(layout("/usr").sysconfdir, Path::new("/etc"));
        assert_eq!(layout("/usr/local").sysconfdir, Path::new("/etc"));
        assert_eq!(layout("/opt/lb").sysconfdir, Path::new("/opt/lb/etc"));
    }

    #[test]
    fn relative_paths_are_refused() {
        let options = Options {
            prefix: "usr".into(),
            sysconfdir: None,
            destdir: None,
            debug: false,
        };
        assert!(Layout::new(&options).is_err());
    }

    #[test]
    fn the_unit_names_the_installed_paths() {
        let unit = fs::read_to_string(cmd::workspace_root().join(UNIT)).expect("unit");
        let filled = fill_in(&unit, &layout("/usr"));
        assert!(!filled.contains('@'), "a placeholder is left:\n{filled}");
        assert!(filled.contains("ExecStart=/usr/bin/lb run --config /etc/lb/lb.toml"));
        assert!(filled.contains("ExecReload=/usr/bin/lb reload\n"));
        assert!(filled.contains("EnvironmentFile=-/etc/default/lb\n"));
    }
}
