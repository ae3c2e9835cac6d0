//! Runs the notify hook (`lb run --notify`, `[notify]`): health changes come from the
//! controller's task on a bounded queue and are run one at a time, in the order they
//! happened, each with its timeout. The controller only queues, so a slow or hung command
//! never holds it; a full queue drops the change, logged and counted. Every outcome goes
//! to the log and to [`HookCounters`] (the metric `lb_notify_runs_total`).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    api::wire::HookRuns,
    model::notify::{HealthEvent, NotifyHook},
};

/// Changes waiting for their run; past this many (a command far slower than the
/// backends flap), new ones are dropped.
const QUEUE: usize = 1024;

/// At most this much of a failed run's output goes to the log.
const OUTPUT_LOGGED: usize = 400;

/// How the runs went since the daemon started.
#[derive(Debug, Default)]
pub(crate) struct HookCounters {
    ok: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    dropped: AtomicU64,
}

impl HookCounters {
    pub(crate) fn read(&self) -> HookRuns {
        HookRuns {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One change to run the hook for, with the hook as it was when the change happened.
type Job = (Arc<NotifyHook>, HealthEvent);

/// The controller's end: queues a change without waiting.
#[derive(Clone)]
pub(crate) struct HookQueue {
    jobs: mpsc::Sender<Job>,
    counters: Arc<HookCounters>,
}

/// The runner's end, for [`run`].
pub(crate) struct HookJobs(mpsc::Receiver<Job>);

pub(crate) fn channel(counters: Arc<HookCounters>) -> (HookQueue, HookJobs) {
    let (jobs, receiver) = mpsc::channel(QUEUE);
    (HookQueue { jobs, counters }, HookJobs(receiver))
}

impl HookQueue {
    pub(crate) fn push(&self, hook: Arc<NotifyHook>, event: HealthEvent) {
        match self.jobs.try_send((hook, event)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((_, event))) => {
                HookCounters::add(&self.counters.dropped);
                warn!(
                    vip = %event.service,
                    backend = %event.backend,
                    to = %event.to,
                    "notify hook not run for this change: {QUEUE} changes already wait for theirs (is the command hanging?)"
                );
            }
            // The runner ends only with the daemon.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Runs queued changes until the daemon stops.
pub(crate) async fn run(
    HookJobs(mut jobs): HookJobs,
    counters: Arc<HookCounters>,
) -> anyhow::Result<()> {
    while let Some((hook, event)) = jobs.recv().await {
        let counter = match run_one(&hook, &event).await {
            Outcome::Ok => &counters.ok,
            Outcome::Failed => &counters.failed,
            Outcome::TimedOut => &counters.timed_out,
        };
        HookCounters::add(counter);
    }
    Ok(())
}

enum Outcome {
    Ok,
    Failed,
    TimedOut,
}

/// One run: no shell, stdin closed, output kept for the log, the command and whatever it
/// started (its own process group) killed at the timeout.
async fn run_one(hook: &NotifyHook, event: &HealthEvent) -> Outcome {
    let invocation = hook.invocation(event);
    let mut command = tokio::process::Command::new(&invocation.program);
    command
        .args(&invocation.args)
        .envs(invocation.env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let (vip, backend, from, to) = (&event.service, &event.backend, event.from, event.to);
    let started = Instant::now();
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            warn!(%vip, %backend, %from, %to, command = %hook, "notify hook could not start: {error}");
            return Outcome::Failed;
        }
    };
    let group = child.id();
    match tokio::time::timeout(hook.timeout(), child.wait_with_output()).await {
        Ok(Ok(output)) if output.status.success() => {
            info!(%vip, %backend, %from, %to, command = %hook, took_ms = started.elapsed().as_millis() as u64, "notify hook ran");
            Outcome::Ok
        }
        Ok(Ok(output)) => {
            warn!(
                %vip, %backend, %from, %to, command = %hook,
                "notify hook failed ({}): {}",
                output.status,
                tail(&output.stderr, &output.stdout)
            );
            Outcome::Failed
        }
        Ok(Err(error)) => {
            warn!(%vip, %backend, %from, %to, command = %hook, "notify hook: waiting for it failed: {error}");
            Outcome::Failed
        }
        Err(_) => {
            // The child itself is killed as its handle drops; what it started goes with
            // its group.
            if let Some(pid) = group.and_then(|id| rustix::process::Pid::from_raw(id as i32))
                && let Err(error) =
                    rustix::process::kill_process_group(pid, rustix::process::Signal::KILL)
                && error != rustix::io::Errno::SRCH
            {
                warn!(command = %hook, "notify hook: killing its process group failed: {error}");
            }
            warn!(
                %vip, %backend, %from, %to, command = %hook,
                "notify hook killed after its timeout of {} s",
                hook.timeout().as_secs_f64()
            );
            Outcome::TimedOut
        }
    }
}

/// The end of what a failed run printed (stderr, else stdout), on one line.
fn tail(stderr: &[u8], stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(if stderr.is_empty() { stdout } else { stderr });
    let text = text.trim().replace('\n', " | ");
    if text.is_empty() {
        return "no output".to_owned();
    }
    let start = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| text.len() - i <= OUTPUT_LOGGED)
        .unwrap_or(0);
    if start > 0 {
        format!("...{}", &text[start..])
    } else {
        text
    }
}

/// Refuses a hook whose program cannot run: not found (in `$PATH` for a bare name), not
/// a file, or not executable. Checked at start and at each reload, so a typo is an error
/// then rather than a warning at the first health change.
pub(crate) fn check_program(hook: &NotifyHook) -> Result<PathBuf, String> {
    let program = hook.program();
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(program))
                    .collect()
            })
            .unwrap_or_default()
    };
    candidates
        .into_iter()
        .find(|path| is_executable(path))
        .ok_or_else(|| {
            if program.contains('/') {
                format!("notify: {program} is not an executable file")
            } else {
                format!("notify: no executable {program} in $PATH (give its full path)")
            }
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, time::Duration};

    use super::*;
    use crate::model::{
        health::Health,
        state::{Proto, Service},
    };

    fn event(to: Health) -> HealthEvent {
        HealthEvent {
            service: Service {
                addr: "198.18.1.1:80".parse().expect("addr"),
                proto: Proto::Tcp,
            },
            backend: "198.18.11.2:8080".parse().expect("addr"),
            from: if to == Health::Down {
                Health::Up
            } else {
                Health::Down
            },
            to,
            reason: "test".to_owned(),
            at: 1,
        }
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("hook.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write the script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn hook(path: &Path, timeout: Duration) -> Arc<NotifyHook> {
        Arc::new(NotifyHook::new(vec![path.display().to_string()], timeout).expect("valid"))
    }

    #[tokio::test]
    async fn runs_in_order_and_counts_each_outcome() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("runs");
        let ok = script(
            dir.path(),
            &format!(
                "echo \"$@ $LB_PROTO\" >> {}; [ \"$4\" = up ] || exit 3",
                log.display()
            ),
        );
        let counters = Arc::new(HookCounters::default());
        let (queue, jobs) = channel(Arc::clone(&counters));
        let runner = tokio::spawn(run(jobs, Arc::clone(&counters)));
        let hook = hook(&ok, Duration::from_secs(5));
        queue.push(Arc::clone(&hook), event(Health::Down));
        queue.push(Arc::clone(&hook), event(Health::Up));
        drop(queue);
        runner.await.expect("runner").expect("ran");
        let runs = std::fs::read_to_string(&log).expect("the hook wrote");
        assert_eq!(
            runs,
            "198.18.1.1:80 198.18.11.2:8080 up down tcp\n198.18.1.1:80 198.18.11.2:8080 down up tcp\n"
        );
        let counted = counters.read();
        assert_eq!((counted.ok, counted.failed), (1, 1), "{counted:?}");
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_at_its_timeout_with_what_it_started() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hung = script(dir.path(), "sleep 30 & sleep 30");
        let counters = Arc::new(HookCounters::default());
        let (queue, jobs) = channel(Arc::clone(&counters));
        let runner = tokio::spawn(run(jobs, Arc::clone(&counters)));
        let started = Instant::now();
        queue.push(hook(&hung, Duration::from_millis(200)), event(Health::Down));
        drop(queue);
        runner.await.expect("runner").expect("ran");
        assert!(started.elapsed() < Duration::from_secs(5), "not waited for");
        assert_eq!(counters.read().timed_out, 1);
    }

    #[test]
    fn a_program_that_cannot_run_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let runnable = script(dir.path(), "true");
        assert_eq!(
            check_program(&hook(&runnable, Duration::from_secs(1))),
            Ok(runnable.clone())
        );
        std::fs::set_permissions(&runnable, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = check_program(&hook(&runnable, Duration::from_secs(1))).expect_err("refused");
        assert!(error.contains("not an executable file"), "{error}");
        let bare =
            NotifyHook::new(vec!["no-such-lb-hook".into()], Duration::from_secs(1)).expect("valid");
        assert!(check_program(&bare).expect_err("refused").contains("$PATH"));
        assert_eq!(tail(b"", b""), "no output");
        assert_eq!(tail(b"bad\nworse\n", b"ignored"), "bad | worse");
        assert!(tail("x".repeat(1000).as_bytes(), b"").len() <= OUTPUT_LOGGED + 3);
    }
}
