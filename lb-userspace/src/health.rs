//! Health checks: what a check is (`CheckSpec`, set per VIP), what each backend's health
//! is (`HealthBook`: rise/fall counting, state with the time it began, recent changes).
//! Probes themselves live in [`crate::probe`]; the tasks that run them in
//! [`crate::checker`].

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    net::SocketAddr,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::state::Service;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
const MAX_COUNT: u32 = 100;
const MAX_UDP_PAYLOAD: usize = 512;
/// State changes remembered per backend.
const HISTORY: usize = 16;

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET <path>` answers with a status in the expected range (default 200-399).
    Http { path: String },
    /// A datagram with this payload gets a reply (containing the expected text, if set).
    Udp { payload: String },
}

impl FromStr for Probe {
    type Err = String;

    /// `tcp`, `http:/path` or `udp:<payload>`.
    fn from_str(text: &str) -> Result<Self, String> {
        let probe = match text.split_once(':') {
            None if text == "tcp" => Probe::Tcp,
            Some(("http", path)) => {
                if !path.starts_with('/') || path.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(format!(
                        "HTTP check path `{path}` must start with / and have no spaces or control characters"
                    ));
                }
                Probe::Http {
                    path: path.to_owned(),
                }
            }
            Some(("udp", payload)) => {
                if payload.is_empty() || payload.len() > MAX_UDP_PAYLOAD {
                    return Err(format!(
                        "UDP check payload must be 1 to {MAX_UDP_PAYLOAD} bytes"
                    ));
                }
                Probe::Udp {
                    payload: payload.to_owned(),
                }
            }
            _ => {
                return Err(format!(
                    "unknown check `{text}`: use tcp, http:/<path> or udp:<payload>"
                ));
            }
        };
        Ok(probe)
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Tcp => f.write_str("tcp"),
            Probe::Http { path } => write!(f, "http:{path}"),
            Probe::Udp { payload } => write!(f, "udp:{payload}"),
        }
    }
}

/// A VIP's health check, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row that bring a down backend back.
    pub rise: u32,
    /// Failures in a row that take an up backend out.
    pub fall: u32,
    /// HTTP: a status or range (`200-299`); UDP: text the reply must contain.
    pub expect: Option<String>,
}

/// A check as operators write it (CLI flags, API, TOML): seconds as numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub probe: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

fn seconds(value: Option<f64>, default: Duration, what: &str) -> Result<Duration, String> {
    let Some(value) = value else {
        return Ok(default);
    };
    if !value.is_finite() || value <= 0.0 || value > MAX_INTERVAL.as_secs_f64() {
        return Err(format!(
            "{what} must be a number of seconds above 0 and at most {}",
            MAX_INTERVAL.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Parses `200`, or `200-299`.
pub fn status_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expected HTTP status `{text}` is not a status or a range like 200-299");
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    if !(100..=599).contains(&low) || !(low..=599).contains(&high) {
        return Err(bad());
    }
    Ok((low, high))
}

impl CheckConfig {
    pub fn validate(&self) -> Result<CheckSpec, String> {
        let probe: Probe = self.probe.parse()?;
        let interval = seconds(self.interval, DEFAULT_INTERVAL, "interval")?;
        let timeout = seconds(self.timeout, DEFAULT_TIMEOUT.min(interval), "timeout")?;
        if interval < MIN_INTERVAL {
            return Err(format!(
                "interval must be at least {} ms",
                MIN_INTERVAL.as_millis()
            ));
        }
        if timeout > interval {
            return Err("timeout must not be longer than the interval".to_owned());
        }
        let count = |value: Option<u32>, default: u32, what: &str| {
            let value = value.unwrap_or(default);
            if (1..=MAX_COUNT).contains(&value) {
                Ok(value)
            } else {
                Err(format!("{what} must be between 1 and {MAX_COUNT}"))
            }
        };
        let rise = count(self.rise, DEFAULT_RISE, "rise")?;
        let fall = count(self.fall, DEFAULT_FALL, "fall")?;
        match (&probe, &self.expect) {
            (Probe::Tcp, Some(_)) => {
                return Err("a tcp check has nothing to expect; drop --expect".to_owned());
            }
            (Probe::Http { .. }, Some(expect)) => {
                status_range(expect)?;
            }
            _ => {}
        }
        Ok(CheckSpec {
            probe,
            interval,
            timeout,
            rise,
            fall,
            expect: self.expect.clone(),
        })
    }
}

impl From<&CheckSpec> for CheckConfig {
    fn from(spec: &CheckSpec) -> Self {
        Self {
            probe: spec.probe.to_string(),
            interval: Some(spec.interval.as_secs_f64()),
            timeout: Some(spec.timeout.as_secs_f64()),
            rise: Some(spec.rise),
            fall: Some(spec.fall),
            expect: spec.expect.clone(),
        }
    }
}

/// A backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Its VIP has no check.
    Unchecked,
    Up,
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unchecked => "unchecked",
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// One state change, kept for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub to: Health,
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct BackendHealth {
    pub health: Health,
    pub since: SystemTime,
    successes: u32,
    failures: u32,
    pub last_error: Option<String>,
    pub history: VecDeque<Transition>,
}

pub type HealthKey = (Service, SocketAddr);

pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Every backend's health. New backends of a checked VIP start up (they take traffic at
/// once, as an unchecked one would) and need `fall` failures to go down.
#[derive(Debug, Default)]
pub struct HealthBook {
    entries: BTreeMap<HealthKey, BackendHealth>,
}

impl HealthBook {
    pub fn get(&self, key: &HealthKey) -> Option<&BackendHealth> {
        self.entries.get(key)
    }

    /// Makes the book cover exactly `checked` (backends of VIPs with a check) and
    /// `unchecked`; entries of backends that stay keep their state.
    pub fn reconcile(&mut self, checked: &[HealthKey], unchecked: &[HealthKey]) {
        let now = SystemTime::now();
        self.entries
            .retain(|key, _| checked.contains(key) || unchecked.contains(key));
        for (keys, initial) in [(checked, Health::Up), (unchecked, Health::Unchecked)] {
            for key in keys {
                let entry = self.entries.entry(*key).or_insert_with(|| BackendHealth {
                    health: initial,
                    since: now,
                    successes: 0,
                    failures: 0,
                    last_error: None,
                    history: VecDeque::new(),
                });
                // A check added to (or removed from) a VIP changes what the state means.
                if (initial == Health::Unchecked) != (entry.health == Health::Unchecked) {
                    entry.health = initial;
                    entry.since = now;
                    entry.successes = 0;
                    entry.failures = 0;
                }
            }
        }
    }

    /// Counts one probe result; returns the new health if it changed.
    pub fn record(
        &mut self,
        key: &HealthKey,
        result: &Result<(), String>,
        rise: u32,
        fall: u32,
    ) -> Option<Health> {
        let entry = self.entries.get_mut(key)?;
        if entry.health == Health::Unchecked {
            return None;
        }
        match result {
            Ok(()) => {
                entry.successes += 1;
                entry.failures = 0;
            }
            Err(error) => {
                entry.failures += 1;
                entry.successes = 0;
                entry.last_error = Some(error.clone());
            }
        }
        let next = match entry.health {
            Health::Up if entry.failures >= fall => Health::Down,
            Health::Down if entry.successes >= rise => Health::Up,
            _ => return None,
        };
        let now = SystemTime::now();
        let reason = match (next, result) {
            (Health::Down, Err(error)) => format!("{fall} failed checks in a row, last: {error}"),
            _ => format!("{rise} successful checks in a row"),
        };
        entry.health = next;
        entry.since = now;
        entry.history.push_back(Transition {
            to: next,
            at: unix_seconds(now),
            reason,
        });
        if entry.history.len() > HISTORY {
            entry.history.pop_front();
        }
        Some(next)
    }

    /// Backends that are down.
    pub fn down(&self) -> impl Iterator<Item = &HealthKey> {
        self.entries
            .iter()
            .filter(|(_, h)| h.health == Health::Down)
            .map(|(key, _)| key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Proto;

    fn config(probe: &str) -> CheckConfig {
        CheckConfig {
            probe: probe.to_owned(),
            interval: None,
            timeout: None,
            rise: None,
            fall: None,
            expect: None,
        }
    }

    #[test]
    fn probes_parse_and_print_back() {
        for text in ["tcp", "http:/healthz?full=1", "udp:ping"] {
            let probe: Probe = text.parse().expect(text);
            assert_eq!(probe.to_string(), text);
        }
        let spec = config("http:/").validate().expect("defaults");
        assert_eq!(
            (spec.interval, spec.timeout, spec.rise, spec.fall),
            (
                DEFAULT_INTERVAL,
                DEFAULT_TIMEOUT,
                DEFAULT_RISE,
                DEFAULT_FALL
            )
        );
        assert_eq!(CheckConfig::from(&spec).validate(), Ok(spec));
    }

    #[test]
    fn bad_checks_say_what_is_wrong() {
        let cases = [
            (config("icmp"), "unknown check"),
            (config("http:healthz"), "must start with /"),
            (config("http:/a b"), "no spaces"),
            (config("udp:"), "payload"),
            (
                CheckConfig {
                    interval: Some(0.01),
                    ..config("tcp")
                },
                "at least 100 ms",
            ),
            (
                CheckConfig {
                    interval: Some(1.0),
                    timeout: Some(2.0),
                    ..config("tcp")
                },
                "not be longer than the interval",
            ),
            (
                CheckConfig {
                    interval: Some(f64::NAN),
                    ..config("tcp")
                },
                "seconds",
            ),
            (
                CheckConfig {
                    rise: Some(0),
                    ..config("tcp")
                },
                "rise must be",
            ),
            (
                CheckConfig {
                    fall: Some(1000),
                    ..config("tcp")
                },
                "fall must be",
            ),
            (
                CheckConfig {
                    expect: Some("2xx".into()),
                    ..config("http:/")
                },
                "not a status",
            ),
            (
                CheckConfig {
                    expect: Some("x".into()),
                    ..config("tcp")
                },
                "nothing to expect",
            ),
        ];
        for (config, message) in cases {
            let error = config.validate().expect_err(message);
            assert!(error.contains(message), "{config:?}: {error}");
        }
        assert_eq!(status_range("200-299"), Ok((200, 299)));
        assert_eq!(status_range("204"), Ok((204, 204)));
        assert!(status_range("300-200").is_err());
    }

    #[test]
    fn fall_and_rise_count_in_a_row() {
        let key = (
            Service {
                addr: "198.18.1.1:80".parse().expect("addr"),
                proto: Proto::Tcp,
            },
            "198.18.11.2:80".parse().expect("addr"),
        );
        let mut book = HealthBook::default();
        book.reconcile(&[key], &[]);
        let fail = Err("refused".to_owned());
        assert_eq!(book.record(&key, &fail, 2, 3), None);
        assert_eq!(book.record(&key, &fail, 2, 3), None);
        assert_eq!(book.record(&key, &Ok(()), 2, 3), None, "the run is broken");
        assert_eq!(book.record(&key, &fail, 2, 3), None);
        assert_eq!(book.record(&key, &fail, 2, 3), None);
        assert_eq!(book.record(&key, &fail, 2, 3), Some(Health::Down));
        assert_eq!(book.down().count(), 1);
        assert_eq!(book.record(&key, &Ok(()), 2, 3), None);
        assert_eq!(book.record(&key, &Ok(()), 2, 3), Some(Health::Up));
        let history = &book.get(&key).expect("entry").history;
        assert_eq!(history.len(), 2);
        assert!(history[0].reason.contains("refused"), "{history:?}");
        book.reconcile(&[], &[key]);
        assert_eq!(book.get(&key).map(|h| h.health), Some(Health::Unchecked));
        assert_eq!(book.record(&key, &fail, 2, 3), None);
    }
}
