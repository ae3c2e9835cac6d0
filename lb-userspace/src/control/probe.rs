//! One health probe against one backend, bounded by the check's timeout. The daemon runs
//! in the lb's network namespace, so probes leave from where the datapath forwards.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use crate::{
    datapath::tunnel_probe::{self, Tunnel},
    model::check::{CheckSpec, Probe, ProbePath, status_range},
};

/// Answers longer than this are not read further.
const MAX_ANSWER: usize = 4096;

/// `Ok` if the backend passed; otherwise why not, in a few words.
pub(crate) async fn probe(spec: &CheckSpec, backend: SocketAddr) -> Result<(), String> {
    match timeout(spec.timeout, run(spec, backend)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", spec.timeout)),
    }
}

async fn run(spec: &CheckSpec, backend: SocketAddr) -> Result<(), String> {
    match &spec.probe {
        Probe::Tcp if let ProbePath::Tunnel { vip, gue_port } = spec.path => {
            let tunnel = gue_port.map_or(Tunnel::Ipip, |port| Tunnel::Gue { port });
            let wait = spec.timeout;
            tokio::task::spawn_blocking(move || {
                tunnel_probe::probe(backend.ip(), vip, tunnel, wait)
            })
            .await
            .map_err(|e| format!("the probe task: {e}"))?
        }
        Probe::Tcp => TcpStream::connect(backend)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}")),
        Probe::Http { path } => http(backend, path, spec.expect.as_deref()).await,
        Probe::Udp { payload } => udp(backend, payload, spec.expect.as_deref()).await,
    }
}

async fn http(backend: SocketAddr, path: &str, expect: Option<&str>) -> Result<(), String> {
    let (low, high) = status_range(expect.unwrap_or("200-399"))?;
    let mut stream = TcpStream::connect(backend)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {backend}\r\nUser-Agent: lb-health-check\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    while !answer.contains(&b'\n') && answer.len() < MAX_ANSWER {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| "not an HTTP answer".to_owned())?;
    if (low..=high).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP status {status}, expected {low}-{high}"))
    }
}

async fn udp(backend: SocketAddr, payload: &str, expect: Option<&str>) -> Result<(), String> {
    let local: SocketAddr = if backend.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "address")?
    } else {
        "[::]:0".parse().map_err(|_| "address")?
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("bind: {e}"))?;
    // Connected, so an ICMP port unreachable comes back as an error.
    socket
        .connect(backend)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    socket
        .send(payload.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = vec![0u8; MAX_ANSWER];
    let n = socket
        .recv(&mut answer)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    let answer = String::from_utf8_lossy(&answer[..n]);
    match expect {
        Some(text) if !answer.contains(text) => {
            Err(format!("reply {answer:?} does not contain {text:?}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;
    use crate::model::check::CheckConfig;

    fn spec(probe: &str, expect: Option<&str>) -> CheckSpec {
        CheckConfig {
            probe: probe.to_owned(),
            interval: Some(1.0),
            timeout: Some(0.5),
            rise: None,
            fall: None,
            expect: expect.map(str::to_owned),
        }
        .validate()
        .expect("valid check")
    }

    /// Serves one HTTP answer with `status` on loopback.
    async fn http_server(status: u16) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                // A probe that hung up early just gets no answer.
                if stream.read(&mut buffer).await.is_ok() {
                    let answer = format!("HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n");
                    stream
                        .write_all(answer.as_bytes())
                        .await
                        .unwrap_or_default();
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_status_ranges_decide() {
        let ok = http_server(204).await;
        let error = http_server(503).await;
        assert_eq!(probe(&spec("http:/healthz", None), ok).await, Ok(()));
        let refused = probe(&spec("http:/healthz", None), error).await;
        assert!(refused.is_err_and(|e| e.contains("503")));
        assert_eq!(probe(&spec("http:/", Some("500-599")), error).await, Ok(()));
        assert_eq!(probe(&spec("tcp", None), ok).await, Ok(()));
    }

    #[tokio::test]
    async fn closed_ports_and_silence_fail() {
        // Bind and drop, so the port is (almost certainly) closed.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let tcp = probe(&spec("tcp", None), closed).await;
        assert!(tcp.is_err_and(|e| e.contains("connect")));
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let started = std::time::Instant::now();
        let udp = probe(&spec("udp:ping", None), silent.local_addr().expect("addr")).await;
        assert!(udp.is_err_and(|e| e.contains("no answer")));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn udp_replies_are_matched() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buffer = [0u8; 64];
            while let Ok((n, peer)) = server.recv_from(&mut buffer).await {
                // A probe that gave up before the echo is no failure of the echo server.
                server
                    .send_to(&buffer[..n], peer)
                    .await
                    .map(drop)
                    .unwrap_or_default();
            }
        });
        assert_eq!(probe(&spec("udp:pong?", Some("pong")), addr).await, Ok(()));
        let wrong = probe(&spec("udp:ping", Some("pong")), addr).await;
        assert!(wrong.is_err_and(|e| e.contains("does not contain")));
    }
}
