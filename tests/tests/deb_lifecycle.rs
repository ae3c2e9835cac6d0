//! The Debian package over its life on a host (issue 30), as root. dpkg installs the .deb
//! of `cargo xtask package --debug` into a root of the test's own (`--root`, maintainer
//! scripts run chrootless with `$DPKG_ROOT` set, so they see the host's bpffs), and the
//! packaged `lb` runs as lb.service would run it, in a lab of namespaces:
//! - an upgrade while the daemon runs keeps every flow forwarding, and the restarted daemon
//!   adopts the pins;
//! - removing the package while the daemon runs takes the datapath down and the daemon out;
//! - removing it after a SIGTERM (what `systemctl stop` sends) leaves no XDP program and no
//!   pin, and if the datapath cannot be taken down the removal is refused with the command
//!   that does it, and nothing changes;
//! - on a DSR backend, removing it detaches `lb decap`, and a purge removes the saved state.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use lb_tests::{
    client::{WhoConnection, http_get},
    netns::NetNs,
    process::Daemon,
    servers::{HTTP_PORT, Servers, WHO_PORT},
    topology::{Lab, VIP_V4},
};

use super::{run_ok, xtask};

/// A root directory for dpkg --root: its own package database, nothing installed.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lbt-deb-root-")
            .tempdir()
            .expect("the test root");
        for sub in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(dir.path().join("var/lib/dpkg").join(sub)).expect("mkdir");
        }
        std::fs::write(dir.path().join("var/lib/dpkg/status"), "").expect("status");
        Self { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// `dpkg --root <root> <args>` inside `ns` (the maintainer scripts' `lb` commands act on
    /// the interfaces of the namespace they run in). libc6 and friends are the host's: not
    /// in this root's database, hence --force-depends.
    fn dpkg(&self, ns: &NetNs, args: &[&str]) -> Output {
        let mut dpkg = ns.command("dpkg");
        dpkg.arg(format!("--root={}", self.dir.path().display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args)
            .env_remove("LB_API");
        dpkg.output().expect("run dpkg")
    }

    /// A dpkg command that must succeed; what it printed.
    fn dpkg_ok(&self, ns: &NetNs, args: &[&str]) -> String {
        let output = self.dpkg(ns, args);
        let printed = both(&output);
        assert!(
            output.status.success(),
            "`dpkg {}` failed ({}):\n{printed}",
            args.join(" "),
            output.status
        );
        printed
    }

    /// The package's state and version as dpkg records them, e.g. ("installed", "0.1.0")
    /// (a refused removal leaves it installed, only selected for removal).
    fn package(&self) -> (String, String) {
        let output = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.path("var/lib/dpkg").display()
            ))
            .args([
                "--showformat",
                "${db:Status-Status}|${Version}",
                "--show",
                "lb",
            ])
            .output()
            .expect("run dpkg-query");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (status, version) = text.split_once('|').unwrap_or((&text, ""));
        (status.to_owned(), version.to_owned())
    }

    fn installed_version(&self) -> Option<String> {
        let (status, version) = self.package();
        (status == "installed").then_some(version)
    }
}

fn both(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `deb` with another Version: the upgrade of a package in every other respect the same.
fn with_version(deb: &Path, version: &str, dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    run_ok(
        Command::new("dpkg-deb")
            .arg("--raw-extract")
            .arg(deb)
            .arg(&tree),
    );
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("control");
    let old = format!("Version: {}\n", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&old), "{text}");
    std::fs::write(
        &control,
        text.replace(&old, &format!("Version: {version}\n")),
    )
    .expect("write control");
    let upgrade = dir.join(format!("lb_{version}.deb"));
    // gzip -1, as `cargo xtask package --debug` builds it: dpkg-deb's default, xz, took
    // 17 s of CPU for this throwaway package.
    run_ok(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "-z1", "--build"])
            .arg(&tree)
            .arg(&upgrade),
    );
    upgrade
}

/// The packaged daemon in the lab, as lb.service runs it: `lb run --config /etc/lb/lb.toml
/// --state /var/lib/lb/state.toml $LB_OPTS --iface $LB_IFACES` with `$LB_API` set, the
/// paths under the test root, and /etc/default/lb written as an operator would.
struct Service<'a> {
    root: &'a Root,
    lab: &'a Lab,
    pin_dir: PathBuf,
    api: PathBuf,
    opts: Vec<String>,
    /// Holds the API socket.
    _run: tempfile::TempDir,
}

impl<'a> Service<'a> {
    fn new(root: &'a Root, lab: &'a Lab) -> Self {
        let run = tempfile::Builder::new()
            .prefix("lbt-deb-run-")
            .tempdir()
            .expect("the runtime directory");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/lbt-{}-deb", std::process::id()));
        let opts = vec![
            "--pin-dir".to_owned(),
            pin_dir.display().to_string(),
            "--conntrack-size".to_owned(),
            "4096".to_owned(),
            "--max-vips".to_owned(),
            "4".to_owned(),
        ];
        Self {
            root,
            lab,
            pin_dir,
            api: run.path().join("lb.sock"),
            opts,
            _run: run,
        }
    }

    /// The operator's edits of the conffiles, after the first install.
    fn configure(&self, backend: IpAddr) {
        let defaults = format!(
            "LB_IFACES=\"{}\"\nLB_OPTS=\"{}\"\nLB_API={}\n",
            self.lab.lb_ifaces.join(" "),
            self.opts.join(" "),
            self.api.display()
        );
        std::fs::write(self.root.path("etc/default/lb"), defaults).expect("etc/default/lb");
        let config = format!(
            "[[vip]]\naddress = \"{VIP_V4}:80\"\nbackends = [{{ address = \"{backend}:{HTTP_PORT}\" }}]\n\n\
             [[vip]]\naddress = \"{VIP_V4}:{WHO_PORT}\"\nbackends = [{{ address = \"{backend}:{WHO_PORT}\" }}]\n"
        );
        std::fs::write(self.root.path("etc/lb/lb.toml"), config).expect("etc/lb/lb.toml");
    }

    /// Starts the installed binary and waits for READY=1.
    fn start(&self) -> Daemon {
        // systemd's StateDirectory=.
        std::fs::create_dir_all(self.root.path("var/lib/lb")).expect("var/lib/lb");
        let mut command = self.lab.lb.command(self.root.path("usr/bin/lb"));
        command
            .env("LB_API", &self.api)
            .arg("run")
            .arg("--config")
            .arg(self.root.path("etc/lb/lb.toml"))
            .arg("--state")
            .arg(self.root.path("var/lib/lb/state.toml"))
            .args(&self.opts)
            .arg("--iface")
            .args(&self.lab.lb_ifaces);
        Daemon::start(command)
    }

    /// Whether the lab's lb still has a datapath: pins or XDP on an interface.
    fn datapath(&self) -> (bool, bool) {
        (self.pin_dir.exists(), self.lab.lb.has_xdp())
    }
}

impl Drop for Service<'_> {
    fn drop(&mut self) {
        // After a failed test: the pins go, which detaches what they held.
        lb_tests::cleanup::remove_dir_all(&self.pin_dir);
    }
}

/// `lb decap`'s default paths in `ns` (named by its inode), removed on drop.
struct DecapPaths {
    pin_dir: PathBuf,
    record: PathBuf,
}

impl DecapPaths {
    fn of(ns: &NetNs) -> Self {
        let inode = std::fs::metadata(ns.path()).expect("the namespace").ino();
        Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/lb-decap/netns-{inode}")),
            record: PathBuf::from(format!("/run/lb-decap/netns-{inode}.json")),
        }
    }
}

impl Drop for DecapPaths {
    fn drop(&mut self) {
        lb_tests::cleanup::remove_dir_all(&self.pin_dir);
        lb_tests::cleanup::remove_file(&self.record);
        for parent in [self.pin_dir.parent(), self.record.parent()]
            .into_iter()
            .flatten()
        {
            lb_tests::cleanup::remove_dir_if_empty(parent);
        }
    }
}

/// One new HTTP flow through the VIP, from the client.
fn vip_answers(lab: &Lab) -> Result<String, String> {
    lab.client
        .enter(|| http_get(SocketAddr::new(VIP_V4.into(), 80)))
}

const SETTLE: Duration = Duration::from_secs(10);

#[test]
fn the_package_keeps_forwarding_across_an_upgrade_and_takes_the_datapath_with_it() {
    lb_tests::require_root!();
    let output = xtask(&["package", "--debug"]);
    let deb = PathBuf::from(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .expect("the .deb's path")
            .trim(),
    );
    let scratch = tempfile::tempdir().expect("scratch");
    let next = format!("{}+upgrade1", env!("CARGO_PKG_VERSION"));
    let upgrade = with_version(&deb, &next, scratch.path());
    let (deb_arg, upgrade_arg) = (deb.display().to_string(), upgrade.display().to_string());

    let lab = Lab::new("lbt-deb", 1);
    let backend = &lab.backends[0];
    let _servers = Servers::start(&lab.backends);
    let root = Root::new();
    let service = Service::new(&root, &lab);

    // Installed and started as an operator would.
    root.dpkg_ok(&lab.lb, &["--install", &deb_arg]);
    assert_eq!(
        root.installed_version().as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    service.configure(backend.v4.into());
    let first = service.start();
    assert_eq!(vip_answers(&lab).as_deref(), Ok(backend.name.as_str()));
    let mut held = lab
        .client
        .enter(|| WhoConnection::open(SocketAddr::new(VIP_V4.into(), WHO_PORT)))
        .expect("a connection through the VIP");
    assert_eq!(held.ask().as_deref(), Ok(backend.name.as_str()));

    // Upgrade: the old prerm leaves the datapath, the running daemon keeps serving.
    let printed = root.dpkg_ok(&lab.lb, &["--install", &upgrade_arg]);
    assert_eq!(root.installed_version().as_ref(), Some(&next), "{printed}");
    assert_eq!(service.datapath(), (true, true), "{printed}");
    assert_eq!(vip_answers(&lab).as_deref(), Ok(backend.name.as_str()));
    assert_eq!(held.ask().as_deref(), Ok(backend.name.as_str()));
    // The restart onto the new binary (postinst's try-restart under systemd): the
    // datapath forwards alone meanwhile, and the new daemon adopts it.
    let (status, _) = first.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(vip_answers(&lab).as_deref(), Ok(backend.name.as_str()));
    let mut second = service.start();
    second.wait_for_line("adopted the pinned datapath", SETTLE);
    assert_eq!(held.ask().as_deref(), Ok(backend.name.as_str()));
    drop(held);

    // Removed while the daemon runs: it takes its datapath down through the API and exits.
    root.dpkg_ok(&lab.lb, &["--remove", "lb"]);
    assert_eq!(root.installed_version(), None);
    let status = second.wait_exit(SETTLE);
    assert!(status.success(), "the daemon exits after lb down: {status}");
    assert_eq!(service.datapath(), (false, false));
    assert!(
        vip_answers(&lab).is_err(),
        "the VIP answers after the removal"
    );

    // The case: the daemon stopped by SIGTERM, then the package removed.
    root.dpkg_ok(&lab.lb, &["--install", &deb_arg]);
    let (status, _) = service.start().terminate();
    assert!(status.success(), "{status}");
    assert_eq!(service.datapath(), (true, true));
    assert_eq!(vip_answers(&lab).as_deref(), Ok(backend.name.as_str()));
    {
        // A datapath that cannot be taken down (another lb holds its pins): refused, with
        // the command, and nothing changes.
        let pins = File::open(&service.pin_dir).expect("the pin directory");
        // SAFETY: flock(2) on a descriptor this test owns.
        let locked = unsafe { libc::flock(pins.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(locked, 0, "{}", std::io::Error::last_os_error());
        let refused = root.dpkg(&lab.lb, &["--remove", "lb"]);
        let printed = both(&refused);
        assert!(!refused.status.success(), "removal went ahead:\n{printed}");
        let command = format!("lb down --pin-dir {}", service.pin_dir.display());
        assert!(
            printed.contains(&format!("run `{command}`, then remove lb again")),
            "the refusal names the command:\n{printed}"
        );
        assert_eq!(
            root.installed_version().as_deref(),
            Some(env!("CARGO_PKG_VERSION")),
            "{printed}"
        );
        assert_eq!(service.datapath(), (true, true), "{printed}");
        assert_eq!(vip_answers(&lab).as_deref(), Ok(backend.name.as_str()));
    }
    let printed = root.dpkg_ok(&lab.lb, &["--remove", "lb"]);
    assert_eq!(service.datapath(), (false, false), "{printed}");
    assert!(
        vip_answers(&lab).is_err(),
        "the VIP answers after the removal"
    );

    // A DSR backend: lb decap goes with the package; a purge takes the saved state too.
    root.dpkg_ok(&backend.ns, &["--install", &deb_arg]);
    let decap = DecapPaths::of(&backend.ns);
    let attach = backend
        .ns
        .command(root.path("usr/bin/lb"))
        .args(["decap", "attach", "--iface", &backend.dev, "--vip"])
        .arg(VIP_V4.to_string())
        .output()
        .expect("run lb decap attach");
    assert!(attach.status.success(), "{}", both(&attach));
    assert!(backend.ns.has_xdp() && decap.pin_dir.exists());
    assert!(root.path("var/lib/lb/state.toml").exists());
    let printed = root.dpkg_ok(&backend.ns, &["--purge", "lb"]);
    assert!(
        !backend.ns.has_xdp(),
        "lb decap is still attached:\n{printed}"
    );
    assert!(
        !decap.pin_dir.exists() && !decap.record.exists(),
        "{printed}"
    );
    let lo = backend.ns.ip(&["-4", "addr", "show", "dev", "lo"]);
    assert!(
        !lo.contains(&VIP_V4.to_string()),
        "the VIP stays on lo: {lo}"
    );
    assert!(!root.path("var/lib/lb").exists(), "purge keeps /var/lib/lb");
    assert_eq!(root.package(), (String::new(), String::new()), "purged");
}
