//! TLS to the source database, with libpq's `sslmode` meanings: `disable`, `prefer` (TLS when
//! the server offers it, no certificate check), `require` (TLS, no certificate check),
//! `verify-ca` (the chain must lead to a trusted root) and `verify-full` (and the certificate
//! must name the host). Trusted roots come from `sslrootcert` (a PEM file), else from the
//! Mozilla set the replication connection uses too.
//!
//! Ordinary sessions (catalog queries, COPY) run on tokio-postgres through the connector below,
//! built on rustls; the replication connection has its own rustls client in pgwire-replication
//! and gets the same mode and roots.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::error::{Error, Result};

/// How the connections to the source use TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never.
    Disable,
    /// When the server offers it, without checking its certificate (libpq's default).
    #[default]
    Prefer,
    /// Always, without checking the server's certificate.
    Require,
    /// Always; the server's certificate must chain to a trusted root.
    VerifyCa,
    /// Always; the certificate must chain to a trusted root and name the host.
    VerifyFull,
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

impl SslMode {
    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The TLS settings of the source connections.
#[derive(Debug, Clone)]
pub struct SourceTls {
    mode: SslMode,
    root_cert: Option<PathBuf>,
    client: Option<ClientCertificate>,
    config: Arc<ClientConfig>,
}

/// The certificate lakewriter shows the server (`sslcert`, `sslkey`), for `cert`
/// authentication in `pg_hba.conf`.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// PEM file of the certificate, and of its intermediates if any.
    pub cert: PathBuf,
    /// PEM file of its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl ClientCertificate {
    fn read(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| {
                tls_error(format!(
                    "cannot read source.sslcert {}: {e}",
                    self.cert.display()
                ))
            })?;
        if chain.is_empty() {
            return Err(tls_error(format!(
                "source.sslcert {} holds no certificate",
                self.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            tls_error(format!(
                "cannot read a private key from source.sslkey {}: {e}",
                self.key.display()
            ))
        })?;
        Ok((chain, key))
    }
}

impl SourceTls {
    /// Builds the client configuration once (reading `root_cert`, if given); an unreadable or
    /// empty certificate file is an error that names it.
    pub fn new(
        mode: SslMode,
        root_cert: Option<&Path>,
        client: Option<ClientCertificate>,
    ) -> Result<SourceTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(format!("no TLS protocol version available: {e}")))?;
        let chain = if mode.verifies() {
            let roots = Arc::new(roots(root_cert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| tls_error(format!("cannot check certificates: {e}")))?;
            Some(webpki)
        } else {
            None
        };
        let verifier: Arc<dyn ServerCertVerifier> = match chain {
            Some(webpki) if mode == SslMode::VerifyFull => webpki,
            chain => Arc::new(Relaxed { chain, provider }),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &client {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let (chain, key) = client.read()?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    tls_error(format!(
                        "source.sslcert {} and source.sslkey {} do not go together: {e}",
                        client.cert.display(),
                        client.key.display()
                    ))
                })?
            }
        };
        Ok(SourceTls {
            mode,
            root_cert: root_cert.map(Path::to_path_buf),
            client,
            config: Arc::new(config),
        })
    }

    /// tokio-postgres's share of the mode: whether TLS is tried, and whether it is required.
    pub fn pg_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// The connector for tokio-postgres.
    pub fn connector(&self) -> Connector {
        Connector {
            config: self.config.clone(),
        }
    }

    /// The same settings for the replication connection to `host`.
    pub fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        let root = self.root_cert.clone();
        let tls = match self.mode {
            SslMode::Disable => pgwire_replication::TlsConfig::disabled(),
            SslMode::Prefer => pgwire_replication::TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..pgwire_replication::TlsConfig::disabled()
            },
            SslMode::Require => pgwire_replication::TlsConfig::require(),
            SslMode::VerifyCa => pgwire_replication::TlsConfig::verify_ca(root),
            // an address is checked against the certificate's IP names, as libpq does (the
            // client refuses an address unless it is also given as the name to check)
            SslMode::VerifyFull if host.parse::<std::net::IpAddr>().is_ok() => {
                pgwire_replication::TlsConfig::verify_full(root).with_sni_hostname(host)
            }
            SslMode::VerifyFull => pgwire_replication::TlsConfig::verify_full(root),
        };
        match &self.client {
            Some(client) if self.mode != SslMode::Disable => {
                tls.with_client_cert(client.cert.clone(), client.key.clone())
            }
            _ => tls,
        }
    }
}

fn tls_error(message: String) -> Error {
    Error::Source {
        message: format!("TLS to the source: {message}"),
    }
}

/// The trusted roots: the certificates of `path`, or the Mozilla set.
fn roots(path: Option<&Path>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let Some(path) = path else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            tls_error(format!(
                "cannot read source.sslrootcert {}: {e}",
                path.display()
            ))
        })?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            tls_error(format!(
                "source.sslrootcert {} is not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    let (added, _) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(tls_error(format!(
            "source.sslrootcert {} holds no usable certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// The modes that check less than `verify-full`: `verify-ca` (`chain` set) checks the chain and
/// not the name; `prefer` and `require` (no `chain`) accept any certificate, as libpq does in
/// these modes. The handshake's signatures are always checked, so the session is encrypted
/// with the key of the certificate the server showed.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // webpki checks the name only once the chain is valid
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// tokio-postgres's TLS connector over rustls.
#[derive(Debug, Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Handshake;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Handshake> {
        let name = ServerName::try_from(domain.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{domain:?} is not a host name TLS can check: {e}"),
            )
        })?;
        Ok(Handshake {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
#[derive(Debug)]
pub struct Handshake {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Handshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let stream = connector.connect(self.name, stream).await?;
            Ok(TlsStream(stream))
        })
    }
}

/// A TLS session to the source.
#[derive(Debug)]
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding, as with libpq's `channel_binding=prefer` when the
        // client offers none
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_libpq_spells_them() {
        #[derive(Deserialize)]
        struct Holder {
            sslmode: SslMode,
        }
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let holder: Holder =
                toml::from_str(&format!("sslmode = \"{text}\"")).expect("a valid mode");
            assert_eq!(holder.sslmode, mode);
        }
        assert!(toml::from_str::<Holder>("sslmode = \"verify\"").is_err());
    }

    #[test]
    fn a_root_certificate_file_that_is_missing_or_empty_is_named() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("missing.pem");
        let err = SourceTls::new(SslMode::VerifyFull, Some(&missing), None).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let err = SourceTls::new(SslMode::VerifyCa, Some(&empty), None).expect_err("empty");
        assert!(err.to_string().contains("no usable certificate"), "{err}");
        // modes that check nothing need no roots
        SourceTls::new(SslMode::Require, Some(&missing), None)
            .expect("require checks no certificate");
    }
}
