//! TCP and TLS listeners for MQTT (1883, 8883), and TLS set-up shared with the HTTP side.
//!
//! The accept loop only accepts: every TLS handshake runs in the new connection's own task with
//! the connect timeout, so a client that opens a socket and sends nothing holds up nobody else.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::transport::Transport;
use crate::Edge;

/// Binds `addr`; an empty address means the listener is disabled.
pub async fn bind_tcp(addr: &str) -> anyhow::Result<Option<TcpListener>> {
    if addr.trim().is_empty() {
        return Ok(None);
    }
    let sock: SocketAddr = addr
        .parse()
        .with_context(|| format!("invalid listen address {addr:?} (want IP:PORT)"))?;
    let l = TcpListener::bind(sock)
        .await
        .with_context(|| format!("cannot listen on {sock}"))?;
    Ok(Some(l))
}

/// Loads a certificate chain and private key from PEM files into a rustls server config
/// (TLS 1.2 and 1.3 only, as rustls supports), with the given ALPN protocols.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = {
        let data =
            std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
        rustls_pemfile::certs(&mut data.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("bad certificate PEM in {}", cert.display()))?
    };
    if certs.is_empty() {
        bail!("no certificate in {}", cert.display());
    }
    let key = {
        let data = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
        rustls_pemfile::private_key(&mut data.as_slice())
            .with_context(|| format!("bad key PEM in {}", key.display()))?
            .with_context(|| format!("no private key in {}", key.display()))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A TLS acceptor for the MQTT TLS listener (ALPN `mqtt`).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(server_config(cert, key, &[b"mqtt"])?))
}

/// Accepts MQTT clients until the listener task is aborted.
pub async fn accept_loop(edge: Arc<Edge>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let edge = edge.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => edge.serve(Box::new(stream), peer, Transport::Tcp).await,
                Some(acceptor) => {
                    let timeout = edge.config.limits.connect_timeout();
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => edge.serve(Box::new(s), peer, Transport::Tls).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}
