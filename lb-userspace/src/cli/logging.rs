//! The log on stderr: text for people (coloured only on a terminal, and never with
//! NO_COLOR set), or JSON lines for collectors (`--log-format json`). `RUST_LOG` filters.

use std::{ffi::OsString, io::IsTerminal as _};

use tracing_subscriber::EnvFilter;

use crate::cli::args::LogFormat;

pub(crate) fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// Colour codes only for a person at a terminal who did not ask for none
/// (<https://no-color.org>: any non-empty NO_COLOR).
fn colour(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// How a command's failure reaches stderr: as anyhow prints it (`Error: ...` and its
/// causes), or as one JSON log line.
pub(crate) fn report_failure(format: LogFormat, error: &anyhow::Error) {
    match format {
        LogFormat::Text => {
            use std::io::Write as _;
            // Best effort: stderr gone, the exit status still says it failed.
            writeln!(std::io::stderr(), "{}", failure_text(error)).unwrap_or_default();
        }
        LogFormat::Json => tracing::error!("{error:#}"),
    }
}

/// The error and its causes as anyhow's `{:?}` shows them, without the backtrace that it
/// adds when `RUST_BACKTRACE` is set: an operator's mistake is not a bug, and symbolising
/// the binary cost each failing command 0.13 s.
fn failure_text(error: &anyhow::Error) -> String {
    let mut text = format!("Error: {error}");
    let causes: Vec<String> = error.chain().skip(1).map(ToString::to_string).collect();
    match causes.as_slice() {
        [] => {}
        [cause] => text.push_str(&format!("\n\nCaused by:\n    {cause}")),
        _ => {
            text.push_str("\n\nCaused by:");
            for (n, cause) in causes.iter().enumerate() {
                text.push_str(&format!("\n    {n}: {cause}"));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_anyhow_shows_them_without_a_backtrace() {
        let one = anyhow::anyhow!("no such file").context("reading lb.toml");
        assert_eq!(
            failure_text(&one),
            "Error: reading lb.toml\n\nCaused by:\n    no such file"
        );
        let two = one.context("loading the configuration");
        assert_eq!(
            failure_text(&two),
            "Error: loading the configuration\n\nCaused by:\n    0: reading lb.toml\n    1: no such file"
        );
        assert_eq!(failure_text(&anyhow::anyhow!("refused")), "Error: refused");
    }

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsString::new())));
        assert!(!colour(true, Some(OsString::from("1"))));
        assert!(!colour(false, None));
    }
}
