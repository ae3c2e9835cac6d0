//! The datapath's aya-log records, as a file descriptor tokio can wait on.

use aya::Ebpf;
use aya_log::EbpfLogger;
use thiserror::Error;
use tokio::io::{Interest, unix::AsyncFd};

#[derive(Debug, Error)]
pub(crate) enum LogError {
    #[error("opening the datapath log")]
    Open(#[from] aya_log::Error),
    #[error("watching the datapath log")]
    Watch(#[source] std::io::Error),
}

/// Opens the datapath's log ring and registers it with the running tokio reactor; flush
/// the logger each time it is readable.
pub(crate) fn watch(
    ebpf: &mut Ebpf,
) -> Result<AsyncFd<EbpfLogger<&'static dyn log::Log>>, LogError> {
    let logger = EbpfLogger::init(ebpf)?;
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the same for as
    // long as the AsyncFd (which owns the logger) lives.
    unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| LogError::Watch(e.into_parts().1))
}
