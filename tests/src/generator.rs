//! A packet generator for live-throughput benchmarks: prebuilt Ethernet frames sent out
//! of one interface through an AF_PACKET socket, 64 at a time (`sendmmsg`). Every frame
//! is a fresh skb, so whatever rewrites it downstream sees the original next time.

use std::{
    io,
    time::{Duration, Instant},
};

const BATCH: usize = 64;

/// What a [`blast`] sent, and for how long.
pub struct Sent {
    pub frames: u64,
    pub took: Duration,
}

/// Sends `frames` round-robin out of `ifname` (of the calling thread's namespace) until
/// `total` frames are out or `limit` has passed.
pub fn blast(ifname: &str, frames: &[Vec<u8>], total: u64, limit: Duration) -> io::Result<Sent> {
    send(ifname, frames, total, limit, None)
}

/// As [`blast`], at most `per_second` frames a second (a batch at a time, each batch on
/// its own schedule, so a late one is caught up and the mean rate holds).
pub fn paced(
    ifname: &str,
    frames: &[Vec<u8>],
    total: u64,
    per_second: u64,
    limit: Duration,
) -> io::Result<Sent> {
    send(ifname, frames, total, limit, Some(per_second.max(1)))
}

fn send(
    ifname: &str,
    frames: &[Vec<u8>],
    total: u64,
    limit: Duration,
    per_second: Option<u64>,
) -> io::Result<Sent> {
    let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket creation; protocol 0 receives nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let socket = Socket(fd);
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are the ones bind reads.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            socket.0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut iovecs: Vec<libc::iovec> = (0..BATCH)
        .map(|i| {
            let frame = &frames[i % frames.len()];
            libc::iovec {
                iov_base: frame.as_ptr() as *mut _,
                iov_len: frame.len(),
            }
        })
        .collect();
    let mut messages: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: a zeroed msghdr is valid (no name, no control data).
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = iov;
            header.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total && started.elapsed() < limit {
        if let Some(rate) = per_second {
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        // The next BATCH frames, round-robin from where the last call stopped (every frame
        // in turn, not only the first BATCH).
        for (i, iov) in iovecs.iter_mut().enumerate() {
            let frame = &frames[(sent as usize + i) % frames.len()];
            iov.iov_base = frame.as_ptr() as *mut _;
            iov.iov_len = frame.len();
        }
        // The last batch stops at `total`.
        let batch = (total - sent).min(BATCH as u64) as u32;
        // SAFETY: every message points at a live frame; the vector outlives the call.
        let n = unsafe { libc::sendmmsg(socket.0, messages.as_mut_ptr(), batch, 0) };
        if n < 0 {
            let error = io::Error::last_os_error();
            // A full transmit queue: try again.
            if error.raw_os_error() == Some(libc::ENOBUFS) {
                continue;
            }
            return Err(error);
        }
        sent += n as u64;
    }
    Ok(Sent {
        frames: sent,
        took: started.elapsed(),
    })
}

struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}
