//! The tasks that probe backends: one per checked backend, each on its VIP's interval,
//! handing every result to a sink. The controller decides what results mean.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use futures_util::future::BoxFuture;
use tokio::{
    runtime::Handle,
    task::JoinHandle,
    time::{MissedTickBehavior, interval},
};

use crate::{control::probe::probe, model::check::CheckSpec, model::health::HealthKey};

pub(crate) type ProbeResult = (HealthKey, Result<(), String>);

/// Where results go; `false` once nobody takes them (the probe task then ends).
pub(crate) type ResultSink = Arc<dyn Fn(ProbeResult) -> bool + Send + Sync>;

/// One probe of one backend. The real one is [`probe`]; tests give a scripted one.
pub(crate) type Prober =
    Arc<dyn Fn(CheckSpec, SocketAddr) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

pub(crate) struct Checker {
    runtime: Handle,
    results: ResultSink,
    prober: Prober,
    tasks: BTreeMap<HealthKey, (CheckSpec, JoinHandle<()>)>,
}

impl Checker {
    /// Probes the backends for real, on `runtime`.
    pub(crate) fn new(runtime: Handle, results: ResultSink) -> Self {
        let prober: Prober = Arc::new(|spec: CheckSpec, backend| {
            Box::pin(async move { probe(&spec, backend).await })
        });
        Self::with_prober(runtime, results, prober)
    }

    pub(crate) fn with_prober(runtime: Handle, results: ResultSink, prober: Prober) -> Self {
        Self {
            runtime,
            results,
            prober,
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
            let results = Arc::clone(&self.results);
            let prober = Arc::clone(&self.prober);
            let task = self.runtime.spawn(async move {
                let mut ticker = interval(spec_for_task.interval);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let result = prober(spec_for_task.clone(), key.1).await;
                    if !results((key, result)) {
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

#[cfg(test)]
mod tests {
    use std::{
        sync::Mutex,
        time::{Duration, SystemTime},
    };

    use tokio::{sync::mpsc, time::Instant};

    use super::*;
    use crate::model::{
        check::CheckConfig,
        health::{Health, HealthBook},
        state::{Proto, Service},
    };

    fn key() -> HealthKey {
        let service = Service {
            addr: "198.18.1.1:80".parse().expect("address"),
            proto: Proto::Tcp,
        };
        (service, "198.18.2.2:8080".parse().expect("address"))
    }

    /// interval 2 s, rise 2, fall 3.
    fn spec() -> CheckSpec {
        CheckConfig {
            probe: "tcp".to_owned(),
            interval: Some(2.0),
            timeout: Some(1.0),
            rise: Some(2),
            fall: Some(3),
            expect: None,
        }
        .validate()
        .expect("a valid check")
    }

    /// A checker whose probes answer from `script` (then keep the last answer), with the
    /// results on a channel.
    fn scripted(
        script: Vec<Result<(), String>>,
    ) -> (Checker, mpsc::UnboundedReceiver<(Instant, ProbeResult)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink: ResultSink = Arc::new(move |result| tx.send((Instant::now(), result)).is_ok());
        let script = Arc::new(Mutex::new(script));
        let prober: Prober = Arc::new(move |_, _| {
            let script = Arc::clone(&script);
            Box::pin(async move {
                let mut script = script.lock().expect("script");
                if script.len() > 1 {
                    script.remove(0)
                } else {
                    script.first().cloned().unwrap_or(Ok(()))
                }
            })
        });
        (Checker::with_prober(Handle::current(), sink, prober), rx)
    }

    /// Feeds results into a health book until it reports a change; the change and when.
    async fn next_change(
        results: &mut mpsc::UnboundedReceiver<(Instant, ProbeResult)>,
        book: &mut HealthBook,
        spec: &CheckSpec,
    ) -> (Health, Instant) {
        loop {
            let (at, (key, result)) = results.recv().await.expect("the probe runs");
            if let Some(change) = book.record(&key, &result, spec.rise, spec.fall) {
                return (change.transition.to, at);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_falls_after_fall_failures_and_rises_after_rise_passes() {
        let spec = spec();
        let fail = || Err("connect: refused".to_owned());
        // Probes at 0, 2, 4 s fail (down at the third); from 6 s they pass (up at 8 s).
        let (mut checker, mut results) = scripted(vec![fail(), fail(), fail(), Ok(()), Ok(())]);
        let mut book = HealthBook::default();
        book.reconcile(&[key()], &[]);
        let start = Instant::now();
        checker.reconcile(&[(key(), spec.clone())]);

        let (health, at) = next_change(&mut results, &mut book, &spec).await;
        assert_eq!(health, Health::Down);
        assert_eq!(
            at - start,
            Duration::from_secs(4),
            "three failures, 2 s apart"
        );
        assert!(
            book.get(&key())
                .is_some_and(|h| h.since <= SystemTime::now())
        );

        let (health, at) = next_change(&mut results, &mut book, &spec).await;
        assert_eq!(health, Health::Up);
        assert_eq!(
            at - start,
            Duration::from_secs(8),
            "two passes after the fall"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_check_restarts_its_probe_and_a_removed_one_stops() {
        let (mut checker, mut results) = scripted(vec![Ok(())]);
        let start = Instant::now();
        checker.reconcile(&[(key(), spec())]);
        let (at, _) = results.recv().await.expect("first probe");
        assert_eq!(at, start, "the first probe runs at once");
        let (at, _) = results.recv().await.expect("second probe");
        assert_eq!(at - start, Duration::from_secs(2));

        let mut faster = spec();
        faster.interval = Duration::from_secs(1);
        checker.reconcile(&[(key(), faster)]);
        let (restarted, _) = results.recv().await.expect("restarted probe");
        let (next, _) = results.recv().await.expect("next probe");
        assert_eq!(next - restarted, Duration::from_secs(1));

        checker.reconcile(&[]);
        // The checker still holds the sink, so the channel stays open: wait, then look.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(results.try_recv().is_err(), "no probe after the check went");
    }
}
