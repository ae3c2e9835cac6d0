//! The smallest lab: a client namespace and an lb namespace joined by one veth, with the
//! lb's own instance (pins, state file, API socket).

use std::process::Command;

use crate::{
    netns::{Link, NetNs},
    process::{Daemon, Instance},
};

pub struct PairLab {
    pub client: NetNs,
    pub lb: NetNs,
    /// The lb's end of the veth (198.18.0.2; the client is 198.18.0.1).
    pub lb_if: String,
    pub instance: Instance,
}

impl Default for PairLab {
    fn default() -> Self {
        Self::new()
    }
}

impl PairLab {
    pub fn new() -> Self {
        let client = NetNs::new("client");
        let lb = NetNs::new("lb");
        let link = Link::veth(&client, "198.18.0.1/24", &lb, "198.18.0.2/24");
        // lb refuses interfaces where the FIB would not forward (see tests/conntrack.rs).
        lb.sysctl("net/ipv4/ip_forward", "1");
        Self {
            client,
            lb,
            lb_if: link.b,
            instance: Instance::new(),
        }
    }

    /// `lb run` on the lb's end of the veth, inside its namespace.
    pub fn lb_run(&self, extra: &[&str]) -> Command {
        self.instance
            .run(&self.lb, std::slice::from_ref(&self.lb_if), extra)
    }

    /// Starts `lb run` and waits until it forwards.
    pub fn start(&self, extra: &[&str]) -> Daemon {
        Daemon::start(self.lb_run(extra))
    }

    /// `lb status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        self.instance.status()
    }
}
