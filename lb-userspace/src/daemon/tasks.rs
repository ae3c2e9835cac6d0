//! The daemon's tasks, by name, and what ends the daemon: every task runs until `lb run`
//! stops, so one that panics, fails or returns early ends the daemon with an error line
//! naming it. Work a task hands off (a blocking read, an API connection, a scrape) reports
//! its panic here too ([`Fatal`]), so nothing dies unnoticed.

use std::{any::Any, collections::HashMap, future::Future};

use tokio::{
    sync::mpsc,
    task::{Id, JoinError, JoinSet},
};
use tracing::error;

/// Says the daemon must end: which task, and why.
#[derive(Clone)]
pub(crate) struct Fatal(mpsc::UnboundedSender<(String, String)>);

impl Fatal {
    pub(crate) fn report(&self, task: &str, reason: String) {
        // Sent only while the daemon runs; once it is stopping nobody waits for the report,
        // and the error line below is the record either way.
        error!(task, "{reason}; stopping the daemon");
        if self.0.send((task.to_owned(), reason)).is_err() {
            error!(task, "the daemon is already stopping");
        }
    }
}

/// What a panic said, for the log.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Why a task's join failed, in words.
fn join_failure(error: JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
        Err(error) => format!("was cancelled ({error})"),
    }
}

/// Runs blocking work off the async workers. A panic in it is reported as fatal for
/// `task` and comes back as `None`, for the caller to answer with an error.
pub(crate) async fn blocking<T: Send + 'static>(
    fatal: &Fatal,
    task: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Some(value),
        Err(error) => {
            fatal.report(task, join_failure(error));
            None
        }
    }
}

/// The running tasks.
pub(crate) struct Tasks {
    set: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
    fatal: Fatal,
    reports: mpsc::UnboundedReceiver<(String, String)>,
}

impl Tasks {
    pub(crate) fn new() -> Self {
        let (sender, reports) = mpsc::unbounded_channel();
        Self {
            set: JoinSet::new(),
            names: HashMap::new(),
            fatal: Fatal(sender),
            reports,
        }
    }

    /// For work handed off outside the tasks (see [`Fatal`]).
    pub(crate) fn fatal(&self) -> Fatal {
        self.fatal.clone()
    }

    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// A task on a thread of its own (tokio's blocking pool), for one that blocks.
    pub(crate) fn spawn_blocking(
        &mut self,
        name: &'static str,
        task: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
    ) {
        let handle = self.set.spawn_blocking(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits until a task ends or reports a failure: while the daemon runs, either is
    /// one. Logs it, naming the task, and returns it as the daemon's error.
    pub(crate) async fn failure(&mut self) -> anyhow::Error {
        tokio::select! {
            Some((task, reason)) = self.reports.recv() => {
                anyhow::anyhow!("the daemon's {task} {reason}")
            }
            Some(ended) = self.set.join_next_with_id() => {
                let (task, reason) = match ended {
                    Ok((id, Ok(()))) => (self.name(id), "ended early".to_owned()),
                    Ok((id, Err(error))) => (self.name(id), format!("failed: {error:#}")),
                    Err(error) => (self.name(error.id()), join_failure(error)),
                };
                error!(task, "the {task} task {reason}; stopping the daemon");
                anyhow::anyhow!("the daemon's {task} task {reason}")
            }
            else => std::future::pending().await,
        }
    }

    /// Stops the async tasks and waits for every task to end (the blocking ones must have
    /// been told to stop). Failures on the way out are logged, naming the task.
    pub(crate) async fn shut_down(mut self) {
        self.set.abort_all();
        while let Some(ended) = self.set.join_next_with_id().await {
            match ended {
                Ok((_, Ok(()))) => {}
                Ok((id, Err(error))) => {
                    error!(task = self.name(id), "failed while stopping: {error:#}");
                }
                Err(error) if error.is_cancelled() => {}
                Err(error) => {
                    let task = self.name(error.id());
                    error!(task, "{} while stopping", join_failure(error));
                }
            }
        }
    }

    fn name(&self, id: Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("unnamed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_named() {
        let mut tasks = Tasks::new();
        tasks.spawn("quiet", std::future::pending());
        tasks.spawn("probe results", async { panic!("boom") });
        let failure = tasks.failure().await.to_string();
        assert!(failure.contains("probe results"), "{failure}");
        assert!(failure.contains("panicked: boom"), "{failure}");
        tasks.shut_down().await;
    }

    #[tokio::test]
    async fn a_panic_in_handed_off_work_is_reported() {
        let mut tasks = Tasks::new();
        tasks.spawn("quiet", std::future::pending());
        let fatal = tasks.fatal();
        let answer: Option<()> = blocking(&fatal, "metrics scrape", || panic!("bad read")).await;
        assert!(answer.is_none());
        let failure = tasks.failure().await.to_string();
        assert!(failure.contains("metrics scrape"), "{failure}");
        assert!(failure.contains("bad read"), "{failure}");
    }
}
