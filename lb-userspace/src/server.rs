//! Serving the control API on its Unix socket: root-only, one JSON request per line, bounded
//! in size. Requests are handled one at a time, in arrival order.

use std::{
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tracing::{debug, warn};

use crate::{
    api::{self, MAX_REQUEST_BYTES, Request, Response},
    controller::Controller,
};

/// The bound API socket; removed again on drop (if it is still ours).
pub struct ApiSocket {
    pub listener: UnixListener,
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
pub fn bind(path: &Path) -> anyhow::Result<ApiSocket> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
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
            if api::is_listening(path) {
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
    // SAFETY: umask only changes this process's file creation mask.
    let old_mask = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old_mask) };
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
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Accepts connections until `stop` turns true. A `down` request sets `down` after it is
/// answered.
pub async fn serve(
    socket: &ApiSocket,
    controller: Arc<Mutex<Controller>>,
    down: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let controller = Arc::clone(&controller);
                    let down = down.clone();
                    tokio::spawn(async move {
                        if let Err(error) = connection(stream, controller, down).await {
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

async fn connection(
    stream: UnixStream,
    controller: Arc<Mutex<Controller>>,
    down: watch::Sender<bool>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut bytes = Vec::new();
        // The limit is on the request; its newline comes on top.
        let limit = MAX_REQUEST_BYTES as u64 + 2;
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut bytes)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if bytes.ends_with(b"\n") {
            bytes.pop();
        }
        if bytes.len() > MAX_REQUEST_BYTES {
            let refusal = Response::failure(format!(
                "request larger than {MAX_REQUEST_BYTES} bytes: refused, connection closed"
            ));
            send(&mut write, &refusal).await?;
            return Ok(());
        }
        let Ok(line) = String::from_utf8(bytes) else {
            send(&mut write, &Response::failure("bad request: not UTF-8")).await?;
            continue;
        };
        let (response, is_down) = match api::parse_request(line.trim_end()) {
            Err(reason) => (Response::failure(reason), false),
            Ok(request) => {
                let is_down = request == Request::Down {};
                let controller = Arc::clone(&controller);
                let response = tokio::task::spawn_blocking(move || match controller.lock() {
                    Ok(mut controller) => controller.handle(request),
                    Err(_) => Response::failure("the daemon's state is poisoned; restart it"),
                })
                .await
                .unwrap_or_else(|_| Response::failure("the request handler failed"));
                (response.clone(), is_down && response.ok)
            }
        };
        if is_down {
            // Stop even if the client is gone before it reads the answer.
            let _ = down.send(true);
            let _ = send(&mut write, &response).await;
            return Ok(());
        }
        send(&mut write, &response).await?;
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}
