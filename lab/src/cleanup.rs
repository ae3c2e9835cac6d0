//! Cleanup steps for `Drop`: they must not panic, and must not fail in silence either. A
//! step that fails says so on stderr, so a namespace, process or pin left behind is named
//! rather than hidden; something already gone is not a failure.

use std::{
    fmt::Display,
    io::{self, Write as _},
    path::Path,
    process::{Child, Output},
    thread::JoinHandle,
};

/// Reports `result`'s error on stderr as the failed cleanup step `what`.
pub fn warn_on_err<T, E: Display>(what: impl Display, result: Result<T, E>) {
    if let Err(err) = result {
        warn(format_args!("{what}: {err}"));
    }
}

/// Reports a cleanup command that did not start or exited with a failure, with its stderr.
pub fn warn_on_failed(what: impl Display, output: io::Result<Output>) {
    match output {
        Ok(output) => warn_on_exit(what, &output),
        Err(err) => warn(format_args!("{what}: {err}")),
    }
}

/// Reports a cleanup command that exited with a failure, with its stderr.
pub fn warn_on_exit(what: impl Display, output: &Output) {
    if !output.status.success() {
        warn(format_args!(
            "{what}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
}

/// SIGKILL, then reap: the process is gone when this returns, or stderr says why not.
pub fn kill(child: &mut Child, what: impl Display) {
    warn_on_err(format_args!("killing {what}"), child.kill());
    warn_on_err(format_args!("waiting for {what}"), child.wait());
}

/// Joins a thread; a panic in it is reported here (the panic hook printed its message).
pub fn join<T>(thread: JoinHandle<T>, what: impl Display) {
    if thread.join().is_err() {
        warn(format_args!("{what}: the thread panicked"));
    }
}

/// Removes a directory tree; one that is already gone is fine.
pub fn remove_dir_all(path: &Path) {
    warn_on_err(
        format_args!("removing {}", path.display()),
        absent_is_fine(std::fs::remove_dir_all(path)),
    );
}

/// Removes a file; one that is already gone is fine.
pub fn remove_file(path: &Path) {
    warn_on_err(
        format_args!("removing {}", path.display()),
        absent_is_fine(std::fs::remove_file(path)),
    );
}

/// Removes the directory that holds a test's own entry, if nothing else is in it: a
/// shared parent such as `/sys/fs/bpf/lb-decap`, which another test may still be using.
pub fn remove_dir_if_empty(path: &Path) {
    match std::fs::remove_dir(path) {
        Err(err) if err.kind() == io::ErrorKind::DirectoryNotEmpty => {}
        result => warn_on_err(
            format_args!("removing {}", path.display()),
            absent_is_fine(result),
        ),
    }
}

fn absent_is_fine(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Straight to stderr, past libtest's capture: a leftover matters in a passing test too.
fn warn(line: impl Display) {
    // A failed write to stderr has nowhere else to be reported.
    writeln!(io::stderr().lock(), "cleanup: {line}").unwrap_or_default();
}
