//! `quic-peer server`: answers every bidirectional stream with the server's name, so that a
//! client can tell which backend served each request.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use quic_lb::CidGenerator;
use quinn::{Endpoint, EndpointConfig, RecvStream, SendStream, TokioRuntime};

/// The longest request read; a request is a line of text.
const MAX_REQUEST: usize = 1024;

/// A server endpoint on `listen`. With a generator every CID it issues (the first in its
/// long headers, then NEW_CONNECTION_ID frames) encodes the generator's server ID; without,
/// quinn's own CIDs. Migration is allowed (quinn's default).
pub(crate) fn endpoint(
    listen: SocketAddr,
    generator: Option<CidGenerator>,
) -> anyhow::Result<Endpoint> {
    let socket = std::net::UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    let mut config = EndpointConfig::default();
    if let Some(generator) = generator {
        config.cid_generator(move || Box::new(generator.clone()));
    }
    let server = crate::tls::server_config()?;
    Endpoint::new(config, Some(server), socket, Arc::new(TokioRuntime))
        .with_context(|| format!("the QUIC endpoint on {listen}"))
}

/// Serves until the endpoint closes; failures of one connection or stream are logged.
pub(crate) async fn serve(endpoint: Endpoint, name: String) {
    let name: Arc<str> = name.into();
    while let Some(incoming) = endpoint.accept().await {
        let name = Arc::clone(&name);
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(err) => return eprintln!("{name}: handshake: {err}"),
            };
            // Ends when the client closes the connection or it times out.
            while let Ok((send, recv)) = connection.accept_bi().await {
                let name = Arc::clone(&name);
                tokio::spawn(async move {
                    if let Err(err) = answer(send, recv, &name).await {
                        eprintln!("{name}: request: {err:#}");
                    }
                });
            }
        });
    }
}

async fn answer(mut send: SendStream, mut recv: RecvStream, name: &str) -> anyhow::Result<()> {
    recv.read_to_end(MAX_REQUEST).await.context("reading")?;
    send.write_all(name.as_bytes()).await.context("answering")?;
    send.finish().context("finishing the answer")?;
    Ok(())
}
