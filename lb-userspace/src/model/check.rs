//! Health checks: what a check is (`CheckSpec`, set per VIP), as operators write it
//! (`CheckConfig`) and validated. Each backend's health is in [`super::health`]; the probes
//! run in [`crate::control`].

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_RISE: u32 = 2;
pub(crate) const DEFAULT_FALL: u32 = 3;
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
const MAX_COUNT: u32 = 100;
const MAX_UDP_PAYLOAD: usize = 512;

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

/// How a probe reaches a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbePath {
    /// To the backend's own address and port.
    #[default]
    Direct,
    /// A TCP check of a dsr-ipip or dsr-gue VIP: a SYN to the VIP inside the tunnel its
    /// traffic takes (`gue_port`: dsr-gue's UDP port; `None`: dsr-ipip), so that passing
    /// proves the backend's decapsulation, the VIP on its `lo` and the service on the VIP.
    Tunnel {
        vip: SocketAddr,
        gue_port: Option<u16>,
    },
}

/// A VIP's health check, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub probe: Probe,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    /// Successes in a row that bring a down backend back.
    pub(crate) rise: u32,
    /// Failures in a row that take an up backend out.
    pub(crate) fall: u32,
    /// HTTP: a status or range (`200-299`); UDP: text the reply must contain.
    pub(crate) expect: Option<String>,
    /// How the probes travel: set by the daemon from the VIP's mode, never configured.
    pub(crate) path: ProbePath,
}

/// A check as operators write it (CLI flags, API, TOML): seconds as numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub probe: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) interval: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rise: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fall: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expect: Option<String>,
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
pub(crate) fn status_range(text: &str) -> Result<(u16, u16), String> {
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
    pub(crate) fn validate(&self) -> Result<CheckSpec, String> {
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
            path: ProbePath::Direct,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        status_range("300-200").unwrap_err();
    }
}
