//! The conntrack sweep's clock: a pass every `--conntrack-sweep` interval, the walk itself
//! on the blocking pool, its census handed to the controller's task.

use std::time::Duration;

use tokio::time::{MissedTickBehavior, interval};

/// One pass of a periodic job.
pub(crate) trait Pass {
    fn pass(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Runs `job` every `period`, the first pass `period` from now (start-up swept already).
/// A pass slower than the period delays the next one rather than queueing a burst. Ends
/// with the first pass that fails.
pub(crate) async fn every(period: Duration, job: &mut impl Pass) -> anyhow::Result<()> {
    let mut ticker = interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        job.pass().await?;
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::{Instant, sleep};

    use super::*;

    const PERIOD: Duration = Duration::from_secs(10);

    /// Notes when each pass began, from the start; pass `n` takes `took(n)`, and the
    /// pass numbered `passes` fails.
    struct Recorder {
        start: Instant,
        began: Vec<Duration>,
        passes: usize,
        took: fn(usize) -> Duration,
    }

    impl Pass for Recorder {
        async fn pass(&mut self) -> anyhow::Result<()> {
            self.began.push(self.start.elapsed());
            sleep((self.took)(self.began.len())).await;
            anyhow::ensure!(self.began.len() < self.passes, "enough");
            Ok(())
        }
    }

    async fn passes(passes: usize, took: fn(usize) -> Duration) -> Vec<Duration> {
        let mut recorder = Recorder {
            start: Instant::now(),
            began: Vec::new(),
            passes,
            took,
        };
        let ended = every(PERIOD, &mut recorder).await;
        assert!(ended.is_err(), "only a failed pass ends the loop");
        recorder.began
    }

    #[tokio::test(start_paused = true)]
    async fn passes_run_every_period_after_the_first() {
        let began = passes(3, |_| Duration::from_millis(5)).await;
        let expected: Vec<Duration> = [10, 20, 30].map(Duration::from_secs).into();
        assert_eq!(began, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_pass_delays_the_next_instead_of_a_burst() {
        // The first pass takes 25 s: the ticks at 20 and 30 s are missed. The next pass
        // starts as the slow one ends, then the period counts from there.
        let began = passes(4, |n| Duration::from_secs(if n == 1 { 25 } else { 0 })).await;
        let expected: Vec<Duration> = [10, 35, 45, 55].map(Duration::from_secs).into();
        assert_eq!(began, expected);
    }
}
