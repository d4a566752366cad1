//! The connection loop: HTTP/1.1 with upgrades (the WebSocket) on each accepted connection,
//! inside TLS (rustls) when a certificate is configured.
//!
//! Written out rather than `axum::serve` for one reason: a client must not hold a connection
//! by sending its request slowly. Here a client that has not sent a request's headers within
//! the read timeout is disconnected (hyper's header timeout needs a timer, which `axum::serve`
//! does not give it); bodies are bounded in time by the body extractors.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// The server's certificate and key, read from their PEM files at start and again on
/// [`TlsCertificate::reload`] (the `sealpost server` command reloads on SIGHUP): a renewed
/// certificate is taken without a restart, for the handshakes that follow. A reload that fails
/// keeps the certificate in use.
#[derive(Debug)]
pub struct TlsCertificate {
    certificate: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl TlsCertificate {
    /// Reads the certificate chain and key; an error names the file and what is wrong.
    fn open(certificate: &Path, key: &Path) -> Result<TlsCertificate, String> {
        Ok(TlsCertificate {
            certificate: certificate.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(load(certificate, key)?)),
        })
    }

    /// Reads the files again and serves what they hold from the next handshake on; on an error
    /// (a file missing, damaged, or a key that is not the certificate's) nothing changes.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = Arc::new(load(&self.certificate, &self.key)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }
}

impl ResolvesServerCert for TlsCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(certificate: &Path, key: &Path) -> Result<CertifiedKey, String> {
    if certificate.as_os_str().is_empty() || key.as_os_str().is_empty() {
        return Err("TLS needs both tls_certificate and tls_key".into());
    }
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot read the TLS certificate {}: {e}",
                certificate.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "no certificate in {} (expected PEM)",
            certificate.display()
        ));
    }
    let unusable = |e: rustls::Error| format!("unusable TLS certificate or key: {e}");
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the TLS key {}: {e}", key.display()))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(unusable)?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        format!(
            "the TLS key {} is not the key of the certificate {}: {e}",
            key.display(),
            certificate.display()
        )
    })?;
    Ok(certified)
}

/// TLS 1.2 and 1.3 with the certificate chain and key in these PEM files, and the handle that
/// reloads them.
pub fn tls_acceptor(
    certificate: &Path,
    key: &Path,
) -> Result<(TlsAcceptor, Arc<TlsCertificate>), String> {
    let certificate = Arc::new(TlsCertificate::open(certificate, key)?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), certificate))
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets the requests in
/// progress finish. `read_timeout`: the most a client may take for its TLS handshake, and
/// then for a request's headers.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or memory: wait, rather than spin on it.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |request: hyper::Request<Incoming>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            })
            .map_err(|e: Infallible| match e {});
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, service, read_timeout, shutdown).await,
                Some(tls) => match tokio::time::timeout(read_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        serve_connection(stream, service, read_timeout, shutdown).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake too slow"),
                },
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// One connection, plain or inside TLS.
async fn serve_connection<I, S>(
    io: I,
    service: S,
    read_timeout: Duration,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            hyper::Request<Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended");
            }
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
