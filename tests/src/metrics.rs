//! Reading the daemon's Prometheus endpoint from inside its namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::netns::NetNs;

/// One scrape of http://<addr>/metrics from inside `ns`.
pub fn scrape(ns: &NetNs, addr: SocketAddr) -> String {
    ns.enter(|| {
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answer
    })
}

/// The value of the sample `name{labels}` in an exposition.
pub fn sample(text: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}
