//! TCP and TLS listeners for MQTT (1883, 8883), and TLS set-up shared with the HTTP side.
//!
//! The accept loop only accepts: every TLS handshake runs in the new connection's own task with
//! the connect timeout, so a client that opens a socket and sends nothing holds up nobody else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use std::time::SystemTime;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::transport::Transport;
use crate::Edge;

/// Pending connections the kernel may queue per listener (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr`; an empty address means the listener is disabled.
pub async fn bind_tcp(addr: &str) -> anyhow::Result<Option<TcpListener>> {
    if addr.trim().is_empty() {
        return Ok(None);
    }
    let sock: SocketAddr = addr
        .parse()
        .with_context(|| format!("invalid listen address {addr:?} (want IP:PORT)"))?;
    let socket = if sock.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(sock)
        .with_context(|| format!("cannot listen on {sock}"))?;
    // A deep accept queue: a storm of connections waits in the kernel instead of being dropped.
    let l = socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {sock}"))?;
    Ok(Some(l))
}

/// A certificate and key loaded from PEM files, swappable while the server runs: `reload`
/// (on SIGHUP, or when the files change) affects new handshakes only, so no connection drops.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .finish()
    }
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let c = std::fs::metadata(cert).and_then(|m| m.modified()).ok()?;
    let k = std::fs::metadata(key).and_then(|m| m.modified()).ok()?;
    Some((c, k))
}

fn load_certified(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
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
    let key_der = {
        let data = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
        rustls_pemfile::private_key(&mut data.as_slice())
            .with_context(|| format!("bad key PEM in {}", key.display()))?
            .with_context(|| format!("no private key in {}", key.display()))?
    };
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .with_context(|| format!("unsupported private key in {}", key.display()))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match()
        .context("certificate and key do not match")?;
    Ok(ck)
}

impl CertStore {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertStore>> {
        let ck = load_certified(cert, key)?;
        Ok(Arc::new(CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(ck)),
            stamp: Mutex::new(mtimes(cert, key)),
        }))
    }

    /// Loads the files again; on error the old certificate stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let ck = load_certified(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = mtimes(&self.cert, &self.key);
        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Reloads if the files changed since the last load.
    pub fn reload_if_changed(&self) {
        let now = mtimes(&self.cert, &self.key);
        let before = *self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != before {
            if let Err(e) = self.reload() {
                tracing::warn!(error = %e, "TLS certificate reload failed; keeping the old one");
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A rustls server config over a reloadable certificate (TLS 1.2 and 1.3 only), with the given
/// ALPN protocols.
pub fn server_config(
    store: Arc<CertStore>,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A TLS acceptor for the MQTT TLS listener (ALPN `mqtt`).
pub fn tls_acceptor(store: Arc<CertStore>) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(server_config(store, &[b"mqtt"])?))
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
        let stream = crate::quickack::QuickAck(stream);
        let edge = edge.clone();
        let tls = tls.clone();
        // One task per connection, holding only what its transport needs.
        match tls {
            None => {
                let serve = edge.serve(Box::new(stream), peer, Transport::Tcp);
                tokio::spawn(serve);
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let timeout = edge.config.limits.connect_timeout();
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => Box::pin(edge.serve(Box::new(s), peer, Transport::Tls)).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}
