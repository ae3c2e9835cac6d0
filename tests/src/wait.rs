//! Waiting for a condition instead of sleeping: one bounded poll loop for every test.

use std::{
    fmt::Debug,
    time::{Duration, Instant},
};

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Ok` (its value is returned) or `timeout` has passed: then
/// panics naming `what` and the last value `check` observed (its `Err`). `check` runs at least
/// once, and once more at the deadline, so a condition met just in time still counts.
pub fn eventually<T, O: Debug>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, O>,
) -> T {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut polls = 0u64;
    loop {
        polls += 1;
        let observed = match check() {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        let now = Instant::now();
        assert!(
            now < deadline,
            "{what}: not within {timeout:?} ({polls} checks over {:?}); last observed: {observed:?}",
            started.elapsed()
        );
        std::thread::sleep(POLL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::eventually;
    use std::time::{Duration, Instant};

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut calls = 0;
        let value = eventually(Duration::from_secs(5), "third call", || {
            calls += 1;
            if calls == 3 {
                Ok(calls * 10)
            } else {
                Err(calls)
            }
        });
        assert_eq!((value, calls), (30, 3));
    }

    #[test]
    fn a_timeout_panics_naming_what_and_the_last_value() {
        let started = Instant::now();
        let mut calls = 0u32;
        let panic = std::panic::catch_unwind(move || {
            eventually(Duration::from_millis(100), "the answer", || {
                calls += 1;
                Err::<(), _>(format!("value {calls}"))
            })
        })
        .expect_err("a condition that never holds must panic");
        let message = panic
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert!(
            message.starts_with("the answer: not within 100ms"),
            "{message}"
        );
        assert!(message.contains("last observed: \"value "), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "not bounded: {:?}",
            started.elapsed()
        );
    }
}
