//! `cargo xtask run --mode dsr-ipip|dsr-l2`: the demo in direct server return. The lab
//! gains a router: the client and the backends are behind it, the lb hangs off it on a
//! link of its own, and the backends' default route is the router, so their replies never
//! cross the lb. Each backend is set up with `lb decap attach` alone.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use lb_lab::{
    dsr::{DsrLab, LB_V4, VIP_V4, Wiring},
    servers::{HTTP_PORT, Servers},
    topology::Backend,
};

use super::{Demo, DemoMode, round, wait_for_interrupt};

/// `lb decap` on one backend, with pins and record of its own (each backend stands for a
/// host); dropping it detaches, so the backend is left as it was. It keeps the path of the
/// backend's namespace, not the namespace, so that the lab stays free to change.
pub(super) struct BackendDecap {
    lb: PathBuf,
    netns: PathBuf,
    name: String,
    pin_dir: PathBuf,
    record: PathBuf,
}

impl BackendDecap {
    /// For `backend`, with pins under `<pin_prefix>-<backend name>` and the record in `dir`.
    pub(super) fn new(lb: &Path, backend: &Backend, pin_prefix: &Path, dir: &Path) -> Self {
        Self {
            lb: lb.to_owned(),
            netns: backend.ns.path(),
            name: backend.name.clone(),
            // bpffs refuses dots in names.
            pin_dir: PathBuf::from(format!("{}-{}", pin_prefix.display(), backend.name)),
            record: dir.join(format!("{}-decap.json", backend.name)),
        }
    }

    /// `lb decap <args>` in the backend's namespace, printed with its output.
    pub(super) fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        self.call(args, true)
    }

    /// `lb decap <args>` in the backend's namespace, printed with its output when `loud`.
    pub(super) fn call(&self, args: &[&str], loud: bool) -> anyhow::Result<String> {
        if loud {
            println!("$ [{}] lb decap {}", self.name, args.join(" "));
        }
        let mut command = self.command();
        command
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--record")
            .arg(&self.record);
        let what = format!("lb decap {} on {}", args.join(" "), self.name);
        let stdout = super::stdout_of(&mut command, &what)?;
        if loud {
            print!("{stdout}");
        }
        Ok(stdout)
    }

    /// `lb decap` inside the backend's namespace (`nsenter`, which keeps the host's bpffs).
    fn command(&self) -> Command {
        let mut command = super::in_netns(&self.netns, &self.lb);
        command.arg("decap");
        command
    }
}

impl Drop for BackendDecap {
    fn drop(&mut self) {
        let detached = self
            .command()
            .args(["detach", "--all", "--pin-dir"])
            .arg(&self.pin_dir)
            .arg("--record")
            .arg(&self.record)
            .output();
        lb_lab::cleanup::warn_on_failed("lb decap detach --all", detached);
        lb_lab::cleanup::remove_dir_all(&self.pin_dir);
    }
}

pub(super) fn run(demo: &mut Demo, mode: DemoMode) -> anyhow::Result<()> {
    let (wiring, mode_arg, how) = match mode {
        DemoMode::DsrL2 => (
            Wiring::SharedLink,
            "dsr-l2",
            "the router, the lb and the backends share one link (a bridge); the lb changes only the destination MAC",
        ),
        _ => (
            Wiring::Routed,
            "dsr-ipip",
            "each backend sits behind the router; the lb sends it the client's packet inside an outer IP header",
        ),
    };
    println!(
        "Direct server return ({mode_arg}): {how}. Replies go from the backends to the client \
         through the router, never through the lb.\n"
    );
    let lab = DsrLab::new("lbdemo", wiring, 3);
    let vip = SocketAddr::new(VIP_V4.into(), HTTP_PORT);
    let vip_arg = vip.to_string();
    let lb_source = format!("{LB_V4}/32");
    let mut decaps = Vec::new();
    for backend in &lab.backends {
        let decap = BackendDecap::new(&demo.lb, backend, &demo.pin_dir, &demo.dir);
        decap.run(&[
            "attach",
            "--iface",
            &backend.dev,
            "--vip",
            &VIP_V4.to_string(),
            "--allow-source",
            &lb_source,
        ])?;
        decaps.push(decap);
    }
    let servers = Servers::start_on_vips(&lab.backends, &[vip.ip()]);
    println!();
    demo.start_daemon(&lab.lb, std::slice::from_ref(&lab.lb_iface))?;
    println!(
        "\nThe CLI talks to the daemon over its socket; in another shell:  export LB_API={}\n",
        demo.api.display()
    );
    let backend = |n: usize| SocketAddr::new(lab.backends[n].v4.into(), HTTP_PORT).to_string();
    demo.lb(&["vip", "add", &vip_arg, "--mode", mode_arg])?;
    for n in 0..lab.backends.len() {
        demo.lb(&["backend", "add", &vip_arg, &backend(n)])?;
    }
    round(&lab.client, &lab.backends, vip, "Three equal backends")?;
    println!();
    demo.lb(&["backend", "drain", &vip_arg, &backend(0)])?;
    round(
        &lab.client,
        &lab.backends,
        vip,
        "backend-1 draining (no new flows)",
    )?;

    println!("\nThe lb saw only the clients' side (fwd_reply stays 0):");
    let stats = demo.lb(&["stats"])?;
    if stats
        .lines()
        .any(|l| l.trim_start().starts_with("fwd_reply") && !l.trim_end().ends_with(" 0"))
    {
        println!("(unexpected: replies crossed the lb)");
    }
    println!();
    decaps[1].run(&["status"])?;

    if !demo.once {
        println!(
            "\nThe lab stays up: try `LB_API={} lb backend list`. Ctrl-C removes everything.",
            demo.api.display()
        );
        wait_for_interrupt();
    }
    drop(servers);
    drop(decaps);
    Ok(())
}
