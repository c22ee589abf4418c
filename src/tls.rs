//! TLS with rustls, on both sides, without the relay knowing.
//!
//! The relay drives plain `TcpStream`s with non-blocking `try_read`/`try_write` (see
//! `relay.rs`); making it generic over a TLS stream would touch every line of the hot path.
//! Instead a TLS connection is terminated by a small bridge task that moves bytes between the
//! `TlsStream` and one end of a loopback TCP pair; the session (or the server connection) gets
//! the other end, an ordinary `TcpStream`. The cost (one extra copy through the kernel per
//! direction) is small next to TLS itself, and only TLS connections pay it: plaintext clients
//! and servers are untouched.
//!
//! Client side (`client_tls_sslmode`): before the session starts, the first packet is peeked.
//! An SSLRequest is answered 'S' and the handshake done; a GSSENCRequest is answered 'N'; a
//! plaintext startup is refused with `28000 SSL required` when the mode is `require`; a
//! CancelRequest always passes (libpq sends it in cleartext).
//!
//! Server side (`server_tls_sslmode`, libpq's modes): SSLRequest first; 'S' leads to the
//! handshake (`prefer`/`require` without certificate checks, `verify-ca` against
//! `server_tls_ca_file`, `verify-full` also checking the host name), 'N' to plaintext for
//! `prefer` and to an error otherwise.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClientTlsMode, ConfigError, PoolerSettings, ServerTlsMode};
use crate::error::{PoolerError, Result};
use crate::wire;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(file: &Path, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        file: file.display().to_string(),
        message: message.to_string(),
    }
}

/// The client-facing side: `None` when `client_tls_sslmode = disable`.
pub struct ClientTls {
    pub mode: ClientTlsMode,
    acceptor: TlsAcceptor,
}

impl ClientTls {
    pub fn from_settings(p: &PoolerSettings) -> Result<Option<ClientTls>, ConfigError> {
        if p.client_tls_sslmode == ClientTlsMode::Disable {
            return Ok(None);
        }
        // Validation made sure both are set.
        let (Some(cert_file), Some(key_file)) = (&p.client_tls_cert_file, &p.client_tls_key_file)
        else {
            return Ok(None);
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| invalid(cert_file, format!("client_tls_cert_file: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(cert_file, "client_tls_cert_file: no certificate"));
        }
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| invalid(key_file, format!("client_tls_key_file: {e}")))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(cert_file, e))?;
        let builder = match &p.client_tls_ca_file {
            // Certificates are asked for, checked against the CA when given, and optional:
            // password logins over TLS go on without one; `cert` logins need one.
            Some(ca_file) => {
                let roots = load_roots(ca_file, "client_tls_ca_file")?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                );
                // verify-ca / verify-full: no certificate, no handshake.
                let verifier = if p.client_tls_sslmode.requires_certificate() {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| invalid(ca_file, format!("client_tls_ca_file: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| invalid(key_file, format!("client_tls_key_file: {e}")))?;
        Ok(Some(ClientTls {
            mode: p.client_tls_sslmode,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }))
    }
}

/// The server-facing side: `None` when `server_tls_sslmode = disable`.
pub struct ServerTls {
    pub mode: ServerTlsMode,
    connector: TlsConnector,
}

impl ServerTls {
    pub fn from_settings(p: &PoolerSettings) -> Result<Option<Arc<ServerTls>>, ConfigError> {
        let verifier: Arc<dyn ServerCertVerifier> = match p.server_tls_sslmode {
            ServerTlsMode::Disable => return Ok(None),
            ServerTlsMode::Prefer | ServerTlsMode::Require => Arc::new(NoVerification),
            mode @ (ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull) => {
                let Some(ca_file) = &p.server_tls_ca_file else {
                    return Ok(None);
                };
                let roots = load_roots(ca_file, "server_tls_ca_file")?;
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| invalid(ca_file, format!("server_tls_ca_file: {e}")))?;
                if mode == ServerTlsMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(Path::new("server_tls"), e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Some(Arc::new(ServerTls {
            mode: p.server_tls_sslmode,
            connector: TlsConnector::from(Arc::new(config)),
        })))
    }
}

/// The certificates of a CA file, as trust roots.
fn load_roots(ca_file: &Path, key: &str) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(ca_file, format!("{key}: {e}")))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| invalid(ca_file, format!("{key}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid(ca_file, format!("{key}: no certificate")));
    }
    Ok(roots)
}

/// A client connection after TLS negotiation: the stream the session reads, and what the
/// handshake established.
pub struct Negotiated {
    pub stream: TcpStream,
    pub tls: bool,
    /// The CommonName of the client's certificate, verified against `client_tls_ca_file`.
    pub cert_name: Option<String>,
}

/// `prefer`/`require`: encrypted, not authenticated (libpq's meaning of those modes).
#[derive(Debug)]
struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Looks at the first packet(s): returns the stream the session should use (the plaintext
/// end of a TLS bridge, or the connection itself), or None when the connection was refused.
pub async fn negotiate(tls: &ClientTls, mut stream: TcpStream) -> Result<Option<Negotiated>> {
    loop {
        let code = peek_code(&stream).await?;
        match code {
            Some(SSL_REQUEST) => {
                let mut packet = [0u8; 8];
                stream.read_exact(&mut packet).await?;
                stream.write_all(b"S").await?;
                let tls_stream = tls.acceptor.accept(stream).await?;
                let cert_name = tls_stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| common_name(cert));
                return Ok(Some(Negotiated {
                    stream: bridge(tls_stream).await?,
                    tls: true,
                    cert_name,
                }));
            }
            Some(GSSENC_REQUEST) => {
                let mut packet = [0u8; 8];
                stream.read_exact(&mut packet).await?;
                stream.write_all(b"N").await?;
            }
            Some(code) if code == wire::PROTOCOL_3_0 && tls.mode.requires_tls() => {
                // Read the startup packet so the refusal reaches a client that is listening.
                let _ = wire::read_startup(&mut stream).await;
                let msg = PoolerError::SslRequired.to_fatal();
                let _ = stream.write_all(&msg).await;
                let _ = stream.shutdown().await;
                return Err(PoolerError::SslRequired);
            }
            // Cleartext startups (allow/prefer), cancel requests, and anything malformed,
            // which the session refuses with the right error.
            _ => {
                return Ok(Some(Negotiated {
                    stream,
                    tls: false,
                    cert_name: None,
                }));
            }
        }
    }
}

/// The subject CommonName of a certificate (DER), if it has one in UTF-8 or ASCII.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The request code of the first packet, without consuming it; None if the connection closes
/// or sends something too short to have one.
async fn peek_code(stream: &TcpStream) -> Result<Option<i32>> {
    let mut head = [0u8; 8];
    for _ in 0..100 {
        let n = stream.peek(&mut head).await?;
        if n == 0 {
            return Ok(None);
        }
        if n == head.len() {
            return Ok(Some(i32::from_be_bytes([
                head[4], head[5], head[6], head[7],
            ])));
        }
        // A packet split before its 8th byte: rare; wait for the rest.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(None)
}

/// Moves bytes between a TLS stream (or a Unix socket, see `listener.rs`) and one end of a fresh loopback TCP pair; returns the
/// other end. The bridge ends when the plaintext side closes (the session or server
/// connection is over) or the TLS peer leaves.
pub(crate) async fn bridge<S>(tls: S) -> std::io::Result<TcpStream>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let inner = TcpStream::connect(listener.local_addr()?).await?;
    let expected = inner.local_addr()?;
    let mut outer = None;
    // Anyone on this host could race us to the ephemeral port: accept only our own socket.
    for _ in 0..8 {
        let (s, from) = listener.accept().await?;
        if from == expected {
            outer = Some(s);
            break;
        }
    }
    let Some(outer) = outer else {
        return Err(std::io::Error::other(
            "TLS bridge: could not pair loopback sockets",
        ));
    };
    drop(listener);
    let _ = inner.set_nodelay(true);
    let _ = outer.set_nodelay(true);
    tokio::spawn(async move {
        let (mut tls_read, mut tls_write) = tokio::io::split(tls);
        let (mut plain_read, mut plain_write) = outer.into_split();
        let inbound = async {
            let _ = tokio::io::copy(&mut tls_read, &mut plain_write).await;
            let _ = plain_write.shutdown().await;
            std::future::pending::<()>().await;
        };
        let outbound = async {
            let _ = tokio::io::copy(&mut plain_read, &mut tls_write).await;
            let _ = tls_write.shutdown().await;
        };
        tokio::select! {
            _ = outbound => {}
            _ = inbound => {}
        }
    });
    Ok(inner)
}

/// Negotiates TLS with Postgres on a fresh connection, per `server_tls_sslmode`; returns the
/// stream the server connection should use.
pub async fn connect_server(
    mut stream: TcpStream,
    tls: &ServerTls,
    host: &str,
) -> Result<TcpStream> {
    let mut request = BytesMut::with_capacity(8);
    request.put_i32(8);
    request.put_i32(SSL_REQUEST);
    stream.write_all(&request).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let name = ServerName::try_from(host.to_string()).map_err(|e| {
                PoolerError::ServerConnect(format!("{host}: not a valid TLS server name: {e}"))
            })?;
            let tls_stream = tls.connector.connect(name, stream).await.map_err(|e| {
                PoolerError::ServerConnect(format!("TLS handshake with {host} failed: {e}"))
            })?;
            Ok(bridge(tls_stream).await?)
        }
        b'N' if tls.mode == ServerTlsMode::Prefer => Ok(stream),
        b'N' => Err(PoolerError::ServerConnect(format!(
            "{host} does not support SSL (server_tls_sslmode = {})",
            tls.mode.as_str()
        ))),
        other => Err(PoolerError::ServerProtocol(format!(
            "unexpected answer to SSLRequest: {:?}",
            other as char
        ))),
    }
}
