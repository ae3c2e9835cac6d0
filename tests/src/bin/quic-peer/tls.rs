//! TLS for the test peer: the server makes a self-signed certificate in memory at start,
//! and the client accepts any certificate (it still checks the handshake signatures). A
//! test peer on a private lab has nothing to authenticate, and no file to share.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use quinn::{
    IdleTimeout, TransportConfig,
    crypto::rustls::QuicClientConfig,
    rustls::{
        self, DigitallySignedStruct, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
        pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    },
};

/// The name the server's certificate carries and the client asks for.
pub(crate) const SERVER_NAME: &str = "quic-peer";

pub(crate) fn server_config() -> anyhow::Result<quinn::ServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
        .context("making a self-signed certificate")?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    quinn::ServerConfig::with_single_cert(vec![certified.cert.der().clone()], key.into())
        .context("the server's TLS configuration")
}

/// `idle`: a connection that hears nothing for this long is dead; keep-alives every third
/// of it keep a connection that waits (at the pause file) alive.
#[expect(
    deprecated,
    reason = "rustls 0.23.48 deprecates ring's provider for lacking post-quantum key \
              exchange, which a lab peer does not need; aws-lc-rs would add a C build"
)]
pub(crate) fn client_config(idle: Duration) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let quic = QuicClientConfig::try_from(tls).context("the client's QUIC TLS configuration")?;
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(IdleTimeout::try_from(idle).context("idle timeout")?))
        .keep_alive_interval(Some(idle / 3));
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts the server's certificate whatever it is; checks that the server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
