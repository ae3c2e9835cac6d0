//! Keeps the announce table holding exactly the VIP addresses this node should announce.
//!
//! Every pass reads the table back first, so a route someone deleted by hand, or one left
//! by an earlier daemon that should no longer be there, is put right on the next pass.

use std::{collections::BTreeSet, net::IpAddr};

use tracing::{info, warn};

use crate::{
    datapath::announce,
    model::{
        announce::{NodeState, Verdict, VipLoad, plan},
        error_chain::error_chain,
    },
};

pub(crate) struct Announcer {
    /// `None`: announcing is off.
    table: Option<u32>,
    /// The interface the routes go through (the first lb is attached to): when it goes
    /// down, the kernel deletes them.
    ifindex: u32,
    /// What the table held after the last pass.
    announced: BTreeSet<IpAddr>,
    verdicts: Vec<Verdict>,
    /// Why the last pass could not finish, if it could not.
    error: Option<String>,
}

impl Announcer {
    pub(crate) fn new(table: Option<u32>, ifindex: u32) -> Self {
        Self {
            table,
            ifindex,
            announced: BTreeSet::new(),
            verdicts: Vec::new(),
            error: None,
        }
    }

    pub(crate) fn table(&self) -> Option<u32> {
        self.table
    }

    pub(crate) fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.announced
    }

    pub(crate) fn verdicts(&self) -> &[Verdict] {
        &self.verdicts
    }

    pub(crate) fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Withdraws what should not be announced, then announces what should. A failure is
    /// logged once per new reason, kept for `lb status`, and retried on the next pass.
    pub(crate) fn reconcile(&mut self, node: NodeState, vips: &[VipLoad]) {
        let node = NodeState {
            announcing: self.table.is_some(),
            ..node
        };
        let (wanted, verdicts) = plan(node, vips);
        self.verdicts = verdicts;
        let Some(table) = self.table else {
            return;
        };
        match self.write(table, &wanted) {
            Ok(()) => self.error = None,
            Err(error) => {
                if self.error.as_ref() != Some(&error) {
                    warn!(table, %error, "announce table not in sync; retrying at the next sweep");
                }
                self.error = Some(error);
            }
        }
    }

    fn write(&mut self, table: u32, wanted: &BTreeSet<IpAddr>) -> Result<(), String> {
        let current = announce::announced(table).map_err(|e| error_chain(&e))?;
        self.announced.clone_from(&current);
        for vip in current.difference(wanted) {
            announce::withdraw(table, *vip).map_err(|e| error_chain(&e))?;
            self.announced.remove(vip);
            info!(%vip, table, "withdrawn");
        }
        for vip in wanted.difference(&current) {
            announce::announce(table, *vip, self.ifindex).map_err(|e| error_chain(&e))?;
            self.announced.insert(*vip);
            info!(%vip, table, "announced");
        }
        Ok(())
    }
}
