//! The tasks that probe backends: one per checked backend, each on its VIP's interval,
//! reporting every result on a channel. The controller decides what results mean.

use std::collections::BTreeMap;

use tokio::{
    runtime::Handle,
    sync::mpsc::UnboundedSender,
    task::JoinHandle,
    time::{MissedTickBehavior, interval},
};

use crate::{control::probe::probe, model::check::CheckSpec, model::health::HealthKey};

pub(crate) type ProbeResult = (HealthKey, Result<(), String>);

pub(crate) struct Checker {
    runtime: Handle,
    results: UnboundedSender<ProbeResult>,
    tasks: BTreeMap<HealthKey, (CheckSpec, JoinHandle<()>)>,
}

impl Checker {
    pub(crate) fn new(runtime: Handle, results: UnboundedSender<ProbeResult>) -> Self {
        Self {
            runtime,
            results,
            tasks: BTreeMap::new(),
        }
    }

    /// Runs exactly the `wanted` probes: stops the others, restarts changed ones.
    pub(crate) fn reconcile(&mut self, wanted: &[(HealthKey, CheckSpec)]) {
        self.tasks.retain(|key, (spec, task)| {
            let keep = wanted.iter().any(|(k, s)| k == key && s == spec);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, spec) in wanted {
            if self.tasks.contains_key(key) {
                continue;
            }
            let (key, spec_for_task) = (*key, spec.clone());
            let results = self.results.clone();
            let task = self.runtime.spawn(async move {
                let mut ticker = interval(spec_for_task.interval);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let result = probe(&spec_for_task, key.1).await;
                    if results.send((key, result)).is_err() {
                        return;
                    }
                }
            });
            self.tasks.insert(key, (spec.clone(), task));
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}
