//! Where the commands print: stdout through one locked handle, with a reader that went
//! away (`lb backend list | head -1`) told apart from other write failures, so `main` can
//! end quietly and successfully, as `ls | head -1` does.

use std::{
    fmt::Display,
    io::{self, StdoutLock, Write as _},
};

/// Stdout was closed by its reader: the output is no longer wanted, so nothing failed.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub(crate) struct StdoutClosed;

/// Runs `write` on the locked stdout and flushes. A broken pipe becomes [`StdoutClosed`]
/// (and only a broken pipe on stdout: one on the API socket is a real failure).
pub(crate) fn with_stdout(
    write: impl FnOnce(&mut StdoutLock<'static>) -> io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(error) => Err(anyhow::Error::new(error).context("writing to stdout")),
    }
}

/// One line on stdout.
pub(crate) fn line(text: impl Display) -> anyhow::Result<()> {
    with_stdout(|out| writeln!(out, "{text}"))
}

/// A note for the person at the terminal, on stderr (stdout stays the command's answer,
/// for scripts). Best effort: a closed stderr loses only the note.
pub(crate) fn note(text: &str) {
    writeln!(io::stderr(), "note: {text}").unwrap_or_default();
}

/// Whether an error only says that stdout's reader went away.
pub(crate) fn is_stdout_closed(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(<dyn std::error::Error>::is::<StdoutClosed>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_counts_as_closed() {
        let closed = anyhow::Error::new(StdoutClosed).context("listing backends");
        assert!(is_stdout_closed(&closed));
        // A broken pipe elsewhere (the daemon's socket) is a failure like any other.
        let socket = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("sending the request");
        assert!(!is_stdout_closed(&socket));
    }
}
