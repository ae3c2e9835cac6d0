//! `lb reload` and SIGHUP: re-read `--config` and make the live state equal to it, with
//! the checks and the packet-safe map order of an API change (each VIP's table flips
//! whole, tracked flows stay). A file that fails any check changes nothing.

use std::{net::SocketAddr, sync::Arc};

use tracing::{info, warn};

use crate::{
    api::error::{ApiError, ErrorCode},
    api::wire::ReloadReport,
    daemon::controller::Controller,
    daemon::hook,
    model::error_chain::error_chain,
    model::notify::NotifyHook,
    model::reload::{self, Difference},
    model::state::{Service, State},
    store::state_file,
};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidConfig, message)
}

impl Controller {
    /// A reload asked by `how` (`SIGHUP`, `lb reload`), its refusal logged: the journal
    /// holds every reload's outcome, whoever asked.
    pub(crate) fn reload_logged(&mut self, how: &str) -> Result<ReloadReport, ApiError> {
        self.reload().inspect_err(|error| {
            warn!(
                code = %error.code.as_str(),
                asked_by = how,
                "reload refused: {}",
                error.message
            );
        })
    }

    /// Re-reads `--config`, checks everything, applies the difference and saves it.
    pub(crate) fn reload(&mut self) -> Result<ReloadReport, ApiError> {
        let Some(path) = self.declared.config.clone() else {
            return Err(ApiError::new(
                ErrorCode::NoConfig,
                "the daemon was started without --config: there is no file to reload",
            ));
        };
        let refused = |reason: String| invalid(format!("{reason}; nothing was changed"));
        let file = state_file::load_declared(&path).map_err(|e| refused(error_chain(&e)))?;
        let (declared, cluster) = (file.state, file.cluster);
        let hook = self.notify.flag.clone().or(file.notify);
        if let Some(given) = &hook {
            hook::check_program(given).map_err(|e| refused(format!("{}: {e}", path.display())))?;
        }
        let hook_change = self.notify_change(hook.as_ref());
        let reloaded = self.declared.flags.or(cluster);
        reload::check_cluster(&self.declared.running, &reloaded)
            .map_err(|e| refused(format!("{}: {e}", path.display())))?;
        let before = self.datapath.map_sync.state().clone();
        let target = reload::target(&before, declared);
        let mut changes = reload::differences(&before, &target)
            .map_err(|e| refused(format!("{}: {e}", path.display())))?;
        // Reported with the file's other changes, and taken once they are applied.
        changes.extend(hook_change);
        if changes.is_empty() {
            info!(config = %path.display(), "reloaded: no changes");
            return Ok(ReloadReport {
                config: path,
                changes,
            });
        }
        self.check_reload(&target, &changes)
            .map_err(|e| ApiError::new(e.code, format!("{}; nothing was changed", e.message)))?;
        self.datapath
            .map_sync
            .sync(&target)
            .map_err(ApiError::from)?;
        self.save_or_roll_back(&before)?;
        crate::daemon::controller::log_server_ids(&before, self.datapath.map_sync.state());
        self.notify.hook = hook.map(Arc::new);
        for change in &changes {
            info!(config = %path.display(), "reload: {change}");
        }
        info!(config = %path.display(), changes = changes.len(), "reloaded");
        self.after_change();
        Ok(ReloadReport {
            config: path,
            changes,
        })
    }

    /// The reload's change of notify hook, if it has one.
    fn notify_change(&self, hook: Option<&NotifyHook>) -> Option<Difference> {
        let running = self.notify.hook.as_deref();
        (running != hook).then(|| Difference::NotifyChanged {
            from: running.map(ToString::to_string),
            to: hook.map(ToString::to_string),
        })
    }

    /// The checks an API change gets that need the kernel: IPv6 forwarding for new IPv6
    /// VIPs, a direct link for new dsr-l2 backends. (`MapSync` checks capacity before
    /// it writes anything.)
    fn check_reload(&self, target: &State, changes: &[Difference]) -> Result<(), ApiError> {
        let mut added: Vec<(Service, SocketAddr)> = Vec::new();
        for change in changes {
            match *change {
                Difference::VipAdded { vip, proto, .. } => {
                    self.forwarding_for(vip)?;
                    let service = Service { addr: vip, proto };
                    if let Some(spec) = target.vips.get(&service) {
                        added.extend(spec.backends.keys().map(|b| (service, *b)));
                    }
                }
                Difference::ModeChanged { vip, proto, .. } => {
                    let service = Service { addr: vip, proto };
                    if let Some(spec) = target.vips.get(&service) {
                        added.extend(spec.backends.keys().map(|b| (service, *b)));
                    }
                }
                Difference::BackendAdded {
                    vip,
                    proto,
                    backend,
                    ..
                } => added.push((Service { addr: vip, proto }, backend)),
                _ => {}
            }
        }
        self.check_dsr_backends(target, added.into_iter())
    }
}

/// SIGHUP: a reload whose outcome goes to the log (there is no one to answer).
pub(crate) fn on_hangup(controller: &mut Controller) {
    // Logged here, on the controller's thread, right before the outcome: the two lines
    // stay together in the log.
    info!("SIGHUP received, reloading --config");
    // The refusal is logged by `reload_logged`.
    drop(controller.reload_logged("SIGHUP"));
}
