//! The notify hook (keepalived's `notify_up` / `notify_down`): a command the daemon runs on
//! every health change of a backend, with the VIP, the backend, the old and the new state.
//! What a hook is and what one run of it gets; running it is `daemon::hook`'s job.

use std::{fmt, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{health::Health, state::Service};

/// How long a run may take before it is killed, unless set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A run's time limit, if within bounds.
pub fn check_timeout(timeout: Duration) -> Result<Duration, String> {
    if (MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
        Ok(timeout)
    } else {
        Err(format!(
            "notify: timeout must be between {} and {} seconds, not {}",
            MIN_TIMEOUT.as_secs_f64(),
            MAX_TIMEOUT.as_secs(),
            timeout.as_secs_f64()
        ))
    }
}

/// A validated hook: the program and its own arguments, and the time a run may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyHook {
    command: Vec<String>,
    timeout: Duration,
}

/// A backend's health changed: what the hook is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub service: Service,
    pub backend: SocketAddr,
    pub from: Health,
    pub to: Health,
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// One run: the program, its arguments and the environment it gets on top of the daemon's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
}

impl NotifyHook {
    /// Checks a hook as the operator wrote it: a program, and a timeout within bounds.
    pub fn new(command: Vec<String>, timeout: Duration) -> Result<Self, String> {
        match command.first() {
            None => return Err("notify: the command is empty; name a program".to_owned()),
            Some(program) if program.trim().is_empty() => {
                return Err("notify: the program name is empty".to_owned());
            }
            Some(_) => {}
        }
        if command.iter().any(|arg| arg.contains('\0')) {
            return Err("notify: an argument contains a NUL byte".to_owned());
        }
        let timeout = check_timeout(timeout)?;
        Ok(Self { command, timeout })
    }

    /// The same hook with another timeout, one [`check_timeout`] accepted.
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// The program: a path, or a name looked up in `$PATH`.
    pub fn program(&self) -> &str {
        &self.command[0]
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What one run gets: the hook's own arguments, then the VIP (`ADDR:PORT`), the
    /// backend, the old and the new state; the same, the protocol and the reason in
    /// `LB_*` variables. No shell: nothing in them is interpreted.
    pub fn invocation(&self, event: &HealthEvent) -> Invocation {
        let (vip, backend) = (event.service.addr.to_string(), event.backend.to_string());
        let (from, to) = (event.from.to_string(), event.to.to_string());
        let mut args: Vec<String> = self.command[1..].to_vec();
        args.extend([vip.clone(), backend.clone(), from.clone(), to.clone()]);
        Invocation {
            program: self.program().to_owned(),
            args,
            env: vec![
                ("LB_VIP", vip),
                ("LB_PROTO", event.service.proto.to_string()),
                ("LB_BACKEND", backend),
                ("LB_OLD_STATE", from),
                ("LB_NEW_STATE", to),
                ("LB_REASON", event.reason.clone()),
                ("LB_TIME", event.at.to_string()),
            ],
        }
    }
}

/// The command as a shell would need it typed: words with spaces or quotes are quoted.
impl fmt::Display for NotifyHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self
            .command
            .iter()
            .map(|word| {
                let plain = !word.is_empty()
                    && word
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,@%".contains(c));
                if plain {
                    word.clone()
                } else {
                    format!("'{}'", word.replace('\'', r"'\''"))
                }
            })
            .collect();
        f.write_str(&words.join(" "))
    }
}

/// `[notify]` as the configuration file writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The program and its own arguments (no shell).
    pub command: Vec<String>,
    /// Seconds a run may take.
    #[serde(default = "default_timeout_secs")]
    pub timeout: f64,
}

fn default_timeout_secs() -> f64 {
    DEFAULT_TIMEOUT.as_secs_f64()
}

impl NotifyConfig {
    pub fn validate(&self) -> Result<NotifyHook, String> {
        let timeout = Duration::try_from_secs_f64(self.timeout).map_err(|_| {
            format!(
                "notify: timeout must be a number of seconds, not {}",
                self.timeout
            )
        })?;
        NotifyHook::new(self.command.clone(), timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::Proto;

    fn event() -> HealthEvent {
        HealthEvent {
            service: Service {
                addr: "198.18.1.1:80".parse().expect("addr"),
                proto: Proto::Udp,
            },
            backend: "[fd00::2]:8080".parse().expect("addr"),
            from: Health::Up,
            to: Health::Down,
            reason: "3 failed checks in a row, last: refused".to_owned(),
            at: 1_795_580_750,
        }
    }

    #[test]
    fn a_run_gets_the_vip_backend_and_both_states_after_the_hooks_own_arguments() {
        let hook = NotifyHook::new(
            vec![
                "/usr/local/bin/page".into(),
                "--team".into(),
                "net ops".into(),
            ],
            DEFAULT_TIMEOUT,
        )
        .expect("valid");
        let run = hook.invocation(&event());
        assert_eq!(run.program, "/usr/local/bin/page");
        assert_eq!(
            run.args,
            [
                "--team",
                "net ops",
                "198.18.1.1:80",
                "[fd00::2]:8080",
                "up",
                "down"
            ]
        );
        let env: std::collections::HashMap<_, _> = run.env.into_iter().collect();
        assert_eq!(env["LB_VIP"], "198.18.1.1:80");
        assert_eq!(env["LB_PROTO"], "udp");
        assert_eq!(env["LB_BACKEND"], "[fd00::2]:8080");
        assert_eq!(
            (env["LB_OLD_STATE"].as_str(), env["LB_NEW_STATE"].as_str()),
            ("up", "down")
        );
        assert!(env["LB_REASON"].contains("refused"));
        assert_eq!(env["LB_TIME"], "1795580750");
        assert_eq!(hook.to_string(), "/usr/local/bin/page --team 'net ops'");
    }

    #[test]
    fn bad_hooks_are_refused_with_the_reason() {
        let refused = |command: &[&str], secs: f64| {
            NotifyConfig {
                command: command.iter().map(|s| (*s).to_owned()).collect(),
                timeout: secs,
            }
            .validate()
            .expect_err("refused")
        };
        assert!(refused(&[], 1.0).contains("empty"));
        assert!(refused(&[" "], 1.0).contains("program name is empty"));
        assert!(refused(&["/bin/true"], 0.0).contains("between 0.1 and 3600"));
        assert!(refused(&["/bin/true"], -1.0).contains("number of seconds"));
        assert!(refused(&["/bin/true"], 7200.0).contains("between"));
        assert!(refused(&["/bin/true", "a\0b"], 1.0).contains("NUL"));
        let hook = NotifyConfig {
            command: vec!["/bin/true".into()],
            timeout: default_timeout_secs(),
        }
        .validate()
        .expect("valid");
        assert_eq!(hook.timeout(), DEFAULT_TIMEOUT);
    }
}
