//! Network namespaces owned by one test: unique names (with the pid), removed on drop, even
//! when the test panics. Nothing here touches the host's own interfaces.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs a command and panics with its stderr when it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `lbt-<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> Self {
        Self::with_prefix("lbt", role)
    }

    /// Creates `<prefix>-<pid>-<n>-<role>` with its loopback up.
    pub fn with_prefix(prefix: &str, role: &str) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{id}-{role}", std::process::id());
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// A command that runs inside this namespace. `nsenter --net` (unlike `ip netns exec`)
    /// keeps the host's /sys, so bpffs pins stay visible.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates live here.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).expect("open the namespace file");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on this thread only; the fd is a valid netns file.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Like [`NetNs::enter`], on a thread that runs in the background.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = File::open(self.path()).expect("open the namespace file");
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only; the fd is a valid netns file.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        })
    }

    /// Whether any interface in this namespace has an XDP program attached.
    pub fn has_xdp(&self) -> bool {
        self.ip(&["-d", "link", "show"])
            .lines()
            .any(|line| line.contains(" xdp") || line.contains("prog/xdp"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also removes its veths (and their peers elsewhere).
        crate::cleanup::warn_on_failed(
            format_args!("deleting netns {}", self.name),
            Command::new("ip")
                .args(["netns", "del", &self.name])
                .output(),
        );
    }
}

/// A veth pair with one end in each namespace, addressed and up.
pub struct Link {
    pub a: String,
    pub b: String,
}

impl Link {
    /// Joins `a_ns` (address `a_addr`, a CIDR) and `b_ns` (`b_addr`).
    pub fn veth(a_ns: &NetNs, a_addr: &str, b_ns: &NetNs, b_addr: &str) -> Self {
        let link = Self::veth_bare(a_ns, b_ns);
        for (ns, dev, addr) in [(a_ns, &link.a, a_addr), (b_ns, &link.b, b_addr)] {
            let family = if addr.contains(':') { "-6" } else { "-4" };
            ns.ip(&[family, "addr", "add", addr, "dev", dev, "nodad"]);
        }
        link
    }

    /// Joins `a_ns` and `b_ns` with both ends up and no address (a bridge port, say).
    pub fn veth_bare(a_ns: &NetNs, b_ns: &NetNs) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let a = format!("va{id}");
        let b = format!("vb{id}");
        sh(
            "ip",
            &[
                "link",
                "add",
                &a,
                "netns",
                a_ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                b_ns.name(),
            ],
        );
        for (ns, dev) in [(a_ns, &a), (b_ns, &b)] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        Self { a, b }
    }
}

impl NetNs {
    /// Writes a sysctl of this namespace (e.g. `net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let status = self
            .command("sh")
            .args(["-c", &format!("echo {value} > /proc/sys/{key}")])
            .status()
            .expect("run sh");
        assert!(status.success(), "setting {key} in {}", self.name);
    }

    /// Turns on IPv4 and IPv6 forwarding, as on any router.
    pub fn enable_forwarding(&self) {
        self.sysctl("net/ipv4/ip_forward", "1");
        self.sysctl("net/ipv6/conf/all/forwarding", "1");
    }

    /// The interface index of `dev` inside this namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        out.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex for {dev} in {}: {out}", self.name))
    }

    /// The MAC address of `dev` inside this namespace.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        let text = out
            .split("link/ether ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no MAC for {dev}: {out}"));
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(text.split(':')) {
            *byte = u8::from_str_radix(part, 16).expect("hex MAC");
        }
        mac
    }
}
