//! `cargo xtask run --nodes N [--mode nat|dsr-ipip|dsr-gue|dsr-l2]`: the scale-out demo (issue 18),
//! the multi-node scenario of `lb_lab::scenario` told on stdout: the one the cluster test
//! (`tests/tests/cluster.rs`) checks and the benchmark times.
//!
//! A client behind a router, N lb nodes and four backends on one link (the "fabric")
//! behind the same router (five in direct server return: the fifth is in no config, added
//! live). Each node runs lb with the same config and hash seed and its own BIRD, which
//! announces the VIPs lb writes into table 4242 to the router over eBGP (with BFD); the
//! router spreads flows over the nodes by ECMP. The demo shows the route with a next hop
//! per node, the identical Maglev table fingerprints, how requests spread over nodes and
//! backends, `lb node drain` and `lb node resume` live, a node lost as in a power cut (BFD
//! takes it out of the route), and, in direct server return, its return, the fifth backend
//! added during a drain and during a restart with `lb down` (counting the flows that
//! breaks: lb has no second chance), and `lb down`. It fails when the scenario did not keep
//! one of its promises (`Report::unmet`).

use std::{path::Path, sync::atomic::Ordering};

use anyhow::bail;
use lb_lab::scenario::{self, Mode, Narrator, Options};

use super::{DemoMode, INTERRUPTED, wait_for_interrupt};

/// The story on stdout; at the end, unless `--once`, the lab stays up until Ctrl-C.
struct Told {
    once: bool,
}

impl Narrator for Told {
    fn say(&mut self, text: &str) {
        println!("{text}");
    }

    fn interrupted(&self) -> bool {
        INTERRUPTED.load(Ordering::Relaxed)
    }

    fn finished(&mut self, hint: &str) {
        if !self.once {
            println!("{hint}");
            wait_for_interrupt();
        }
    }
}

pub(super) fn run(lb: &Path, once: bool, count: usize, mode: DemoMode) -> anyhow::Result<()> {
    let mode = match mode {
        DemoMode::Nat => Mode::Nat,
        DemoMode::DsrIpip => Mode::DsrIpip,
        DemoMode::DsrL2 => Mode::DsrL2,
        DemoMode::DsrGue => Mode::DsrGue,
    };
    print!("lb demo. ");
    let options = Options::new(lb, mode, count, "lbdemo");
    let report = scenario::run(&options, &mut Told { once })?;
    let unmet = report.unmet();
    if !unmet.is_empty() {
        bail!(
            "the scale-out demo did not go as promised:\n- {}",
            unmet.join("\n- ")
        );
    }
    Ok(())
}
