//! `cargo xtask run --mode dsr-ipip|dsr-gue|dsr-l2`: the demo in direct server return. The lab
//! gains a router: the client and the backends are behind it, the lb hangs off it on a
//! link of its own, and the backends' default route is the router, so their replies never
//! cross the lb. Each backend is set up with `lb decap attach` alone.

use std::{net::SocketAddr, path::PathBuf};

use lb_lab::{
    dsr::{DsrLab, LB_V4, VIP_V4, Wiring},
    lb::Decap,
    servers::{HTTP_PORT, Servers},
};

use super::{Demo, DemoMode, round, wait_for_interrupt};

/// `lb decap <args>` on a backend (with its own pins and record), printed with its output.
fn shown(decap: &Decap, args: &[&str]) -> anyhow::Result<String> {
    println!("$ [{}] lb decap {}", decap.name, args.join(" "));
    let stdout = decap.run(args)?;
    print!("{stdout}");
    Ok(stdout)
}

pub(super) fn run(demo: &mut Demo, mode: DemoMode) -> anyhow::Result<()> {
    let (wiring, mode_arg, how) = match mode {
        DemoMode::DsrL2 => (
            Wiring::SharedLink,
            "dsr-l2",
            "the router, the lb and the backends share one link (a bridge); the lb changes only the destination MAC",
        ),
        DemoMode::DsrGue => (
            Wiring::Routed,
            "dsr-gue",
            "each backend sits behind the router; the lb sends it the client's packet inside UDP and GUE with the flow's hop list (the second chance)",
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
        // bpffs refuses dots in names.
        let pins = PathBuf::from(format!("{}-{}", demo.pin_dir.display(), backend.name));
        let decap = Decap::new(&demo.lb, backend, pins, &demo.dir);
        shown(
            &decap,
            &[
                "attach",
                "--iface",
                &backend.dev,
                "--vip",
                &VIP_V4.to_string(),
                "--allow-source",
                &lb_source,
            ],
        )?;
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
    shown(&decaps[1], &["status"])?;

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
