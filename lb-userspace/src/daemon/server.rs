//! Serving the control API on its Unix socket: root-only, one JSON request per line, bounded
//! in size. Changes go to the controller's task, applied one at a time in arrival order;
//! queries are answered by the readers, beside it.

use std::{
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use rustix::fs::Mode;
use tokio::{
    net::{UnixListener, UnixStream},
    sync::watch,
    task::JoinSet,
};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};
use tracing::{debug, warn};

use crate::api::client;
use crate::{
    api::error::{ApiError, ErrorCode},
    api::wire::{self, MAX_REQUEST_BYTES, Request, Response},
    daemon::capture,
    daemon::owner::Commands,
    daemon::reader::{Reader, only_reads},
    daemon::tasks::{self, Fatal},
};

/// The bound API socket; removed again on drop (if it is still ours).
pub(crate) struct ApiSocket {
    pub(crate) listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

/// Refuses a directory in which someone else could replace the socket: one owned by another
/// user (root excepted), or writable by group or others without the sticky bit.
fn check_directory(dir: &Path, euid: u32) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    if meta.uid() != euid && meta.uid() != 0 {
        bail!(
            "{} is owned by uid {}, not by this daemon (uid {euid}) or root: refusing to put the \
             API socket there",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        bail!(
            "{} is writable by other users (mode {:o}) without the sticky bit: refusing to put \
             the API socket there",
            dir.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// Binds `path` with mode 0600. An existing path is replaced only if it is a stale socket
/// owned by us; a live daemon, a foreign owner or a non-socket file is refused, and so is a
/// directory where others could swap the socket.
pub(crate) fn bind(path: &Path) -> anyhow::Result<ApiSocket> {
    let euid = rustix::process::geteuid().as_raw();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the API directory {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", dir.display()))?;
        }
        check_directory(dir, euid)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket: refusing to replace it (choose another --api)",
                    path.display()
                );
            }
            if meta.uid() != euid {
                bail!(
                    "{} is owned by uid {}, not by this daemon (uid {euid}): refusing to use it",
                    path.display(),
                    meta.uid()
                );
            }
            if client::is_listening(path) {
                bail!(
                    "another lb daemon is already listening on {} (`lb status` shows it)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("inspecting {}", path.display()));
        }
    }
    // Created 0600 from the start: no window in which others could connect.
    let old_mask = rustix::process::umask(Mode::from_raw_mode(0o177));
    let listener = UnixListener::bind(path);
    rustix::process::umask(old_mask);
    let listener =
        listener.with_context(|| format!("binding the API socket {}", path.display()))?;
    let inode = std::fs::metadata(path)
        .with_context(|| format!("inspecting {}", path.display()))?
        .ino();
    Ok(ApiSocket {
        listener,
        path: path.to_owned(),
        inode,
    })
}

impl ApiSocket {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            if let Err(error) = std::fs::remove_file(&self.path) {
                // The next daemon replaces a stale socket of ours; said in case it is not.
                warn!(socket = %self.path.display(), %error, "could not remove the API socket");
            }
        }
    }
}

/// Where a connection's requests go.
#[derive(Clone)]
pub(crate) struct Handlers {
    pub(crate) commands: Commands,
    pub(crate) reader: Arc<Reader>,
    pub(crate) fatal: Fatal,
}

/// Accepts connections until `stop` turns true. A `down` request sets `down` after it is
/// answered.
pub(crate) async fn serve(
    socket: ApiSocket,
    handlers: Handlers,
    down: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Kept, so a connection that panics ends the server (and the daemon) instead of
    // vanishing.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            Some(ended) = connections.join_next() => {
                if let Err(error) = ended
                    && error.is_panic()
                {
                    let reason = tasks::panic_message(error.into_panic().as_ref());
                    bail!("an API connection panicked: {reason}");
                }
            }
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handlers = handlers.clone();
                    let down = down.clone();
                    connections.spawn(async move {
                        if let Err(error) = connection(stream, handlers, down).await {
                            debug!(%error, "API connection ended");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    warn!(%error, "accepting an API connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// The answer to one parsed request: a query from a reader (on the blocking pool: it
/// reads maps), a change from the controller's task.
async fn answer(handlers: &Handlers, request: Request) -> Response {
    if !only_reads(&request) {
        return handlers.commands.request(request).await;
    }
    let reader = Arc::clone(&handlers.reader);
    tasks::blocking(&handlers.fatal, "API reader", move || {
        reader.answer(request)
    })
    .await
    .unwrap_or_else(|| {
        Response::failure(ApiError::new(
            ErrorCode::Internal,
            "the query failed (the daemon logged why and is ending)",
        ))
    })
}

async fn connection(
    stream: UnixStream,
    handlers: Handlers,
    down: watch::Sender<bool>,
) -> io::Result<()> {
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_REQUEST_BYTES));
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(line) => line,
            // The codec stops at the limit without buffering the rest of the line.
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                let refusal = ApiError::new(
                    ErrorCode::RequestTooLarge,
                    format!(
                        "request larger than {MAX_REQUEST_BYTES} bytes: refused, connection closed"
                    ),
                );
                return send(&mut lines, &Response::failure(refusal)).await;
            }
            // A line that is not UTF-8 ends the framing: answer, then close.
            Err(LinesCodecError::Io(error)) if error.kind() == io::ErrorKind::InvalidData => {
                let refusal = ApiError::new(ErrorCode::BadRequest, "bad request: not UTF-8");
                return send(&mut lines, &Response::failure(refusal)).await;
            }
            Err(LinesCodecError::Io(error)) => return Err(error),
        };
        let (response, is_down) = match wire::parse_request(line.trim_end()) {
            Err(refusal) => (Response::failure(refusal), false),
            // A capture holds the connection until it ends.
            Ok(request @ Request::Capture { .. }) => {
                return capture::serve(&mut lines, &handlers.commands, &handlers.reader, request)
                    .await;
            }
            Ok(request) => {
                let is_down = request == Request::Down {};
                let response = answer(&handlers, request).await;
                let ok = response.ok;
                (response, is_down && ok)
            }
        };
        if is_down {
            // Stop even if the client is gone before it reads the answer: the watch has
            // a receiver for as long as the daemon waits for it.
            if down.send(true).is_err() {
                debug!("`lb down` answered while the daemon was already stopping");
            }
            return send(&mut lines, &response).await;
        }
        send(&mut lines, &response).await?;
    }
    Ok(())
}

async fn send(lines: &mut Framed<UnixStream, LinesCodec>, response: &Response) -> io::Result<()> {
    let text = serde_json::to_string(response).map_err(io::Error::other)?;
    lines.send(text).await.map_err(|error| match error {
        LinesCodecError::Io(error) => error,
        LinesCodecError::MaxLineLengthExceeded => io::Error::other(error),
    })
}
