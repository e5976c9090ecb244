//! realtime-web's HTTP side: one listener (8080, and 8443 with TLS) for the HTTP bridge and for
//! MQTT over WebSocket at `/mqtt`.
//!
//! Data flow: [`Bridge::start`] binds the listeners; each accepted socket gets its own task
//! (TLS handshake under the connect timeout, then hyper's HTTP/1.1 + HTTP/2 server). Requests
//! go to an axum router ([`routes`] wires the handlers; they share [`AppState`] and refuse with
//! [`ApiError`]). A WebSocket upgrade on `/mqtt` is handed to the broker's
//! edge as one more client byte stream, so browsers get exactly what TCP clients get.

pub mod access;
pub mod body;
pub mod charts;
pub mod clients;
pub mod cluster_view;
pub mod cookies;
pub mod error;
pub mod feed;
pub mod fuzzing;
pub mod history;
pub mod hub;
pub mod latency;
pub mod mercure;
pub mod ops;
pub mod routes;
pub mod rpc;
pub mod settings;
pub mod sse;
pub mod state;
pub mod stream;
pub mod topics;
pub mod tree;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use broker::config::{Listener, TlsListener};
use broker::Edge;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

pub use error::ApiError;
pub use settings::BridgeSettings;
pub use state::{AppState, Peer};

/// `[http]`, `[https]`, `[bridge]` and `[rpc]`, and the security the bridge shares with the edge.
#[derive(Clone)]
pub struct BridgeConfig {
    pub http: Listener,
    pub https: TlsListener,
    pub bridge: BridgeSettings,
    pub rpc: rpc::RpcSettings,
    pub mercure: mercure::MercureSettings,
    pub security: Arc<broker::security::Security>,
}

/// A running HTTP side.
pub struct Bridge {
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Bridge {
    pub async fn start(edge: Arc<Edge>, cfg: BridgeConfig) -> anyhow::Result<Bridge> {
        let hub = hub::Hub::start(&edge, cfg.bridge.clone())
            .await
            .map_err(|e| anyhow::anyhow!("the bridge cannot open its broker session: {e}"))?;
        let rpc = rpc::Rpc::start(&edge, cfg.rpc.clone(), &hub.epoch).await?;
        let mercure = mercure::Mercure::start(cfg.mercure.clone(), &hub).await?;
        let state = AppState::new(state::Services {
            edge: edge.clone(),
            client: hub.client().clone(),
            hub,
            rpc,
            mercure,
            security: cfg.security.clone(),
            settings: cfg.bridge.clone(),
            history: Default::default(),
        });
        charts::start(state.clone());
        let app = routes::App::new(state);
        let per_ip = Arc::new(PerIp::new(cfg.bridge.max_connections_per_ip));
        let mut tasks = Vec::new();
        let mut http_addr = None;
        let mut https_addr = None;
        if let Some(l) = broker::listener::bind_tcp(&cfg.http.listen).await? {
            http_addr = Some(l.local_addr()?);
            tasks.push(tokio::spawn(accept_loop(
                edge.clone(),
                l,
                None,
                app.clone(),
                per_ip.clone(),
            )));
        }
        if let Some((addr, cert, key)) = cfg.https.enabled() {
            let store = broker::listener::CertStore::load(cert, key)?;
            edge.add_cert(store.clone());
            let tls = broker::listener::server_config(store, &[b"h2", b"http/1.1"])?;
            if let Some(l) = broker::listener::bind_tcp(addr).await? {
                https_addr = Some(l.local_addr()?);
                tasks.push(tokio::spawn(accept_loop(
                    edge.clone(),
                    l,
                    Some(TlsAcceptor::from(tls)),
                    app.clone(),
                    per_ip.clone(),
                )));
            }
        }
        Ok(Bridge {
            http_addr,
            https_addr,
            tasks,
        })
    }

    /// Stops accepting HTTP connections.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// HTTP connections open per client address (both listeners together), bounded.
struct PerIp {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One counted connection; counted out when dropped.
struct IpSlot(Arc<PerIp>, std::net::IpAddr);

impl PerIp {
    fn new(max: usize) -> PerIp {
        PerIp {
            max,
            open: Default::default(),
        }
    }

    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// Answers a plain-HTTP connection over the per-address limit with 429 and closes it.
async fn refuse_http(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body =
        r#"{"error":{"status":429,"message":"too many HTTP connections from this address"}}"#;
    let head = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    broker::transport::close_gently(&mut stream).await;
}

async fn accept_loop(
    edge: Arc<Edge>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: routes::App,
    per_ip: Arc<PerIp>,
) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let timeout = edge.config.limits.connect_timeout();
        let Some(slot) = per_ip.enter(addr.ip()) else {
            edge.stats()
                .connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if tls.is_none() {
                tokio::spawn(refuse_http(stream));
            }
            continue;
        };
        let peer = Peer {
            addr,
            tls: tls.is_some(),
        };
        // One task per connection holding only what its transport needs: a plain connection's
        // task is hyper's connection itself, a TLS one's holds the handshake, then (boxed) the
        // connection. (One future for both kept every phase side by side: 8 KiB per stream.)
        match tls {
            None => {
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Some(h2) = h2_prior_knowledge(&stream, HEADER_READ_TIMEOUT).await {
                        serve_http(stream, peer, app, h2).await
                    }
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                            Box::pin(serve_http(s, peer, app, h2)).await
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// How long a connection may take to send its request head (and, on a plain connection, its
/// first bytes, which tell HTTP/1 from HTTP/2).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a plain connection speaks HTTP/2 with prior knowledge: its first bytes are the
/// preface `PRI * HTTP/2.0…` (no HTTP/1 method starts with `PRI`). The bytes are peeked, not
/// read, so an HTTP/1 connection goes straight to hyper's HTTP/1 server. (hyper-util's
/// automatic server reads them and replays them through a rewind buffer: every connection's
/// read buffer then grew to 16 KiB and its state to 8 KiB more, most of an SSE stream's cost.)
/// `None`: nothing came in time, or the peer left.
async fn h2_prior_knowledge(
    stream: &tokio::net::TcpStream,
    wait: std::time::Duration,
) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI";
    let look = async {
        let mut buf = [0u8; 3];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != PREFACE[..n] {
                return Some(false);
            }
            if n == PREFACE.len() {
                return Some(true);
            }
            // A prefix of the preface so far: peek returns at once while those bytes wait.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(wait, look).await.ok().flatten()
}

/// The router's answer to one request, boxed (see [`serve_http`]).
type RouterFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>>
            + Send,
    >,
>;

async fn serve_http<S>(stream: S, peer: Peer, app: routes::App, h2: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    // The request's future is boxed: hyper keeps a box the size of the service's future for the
    // connection's whole life (for an open stream too), and the router's future is ~300 bytes.
    // Boxed, that box holds a pointer, and the router's future is freed once it has answered.
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer);
        let fut: RouterFuture = match app.admit(&req) {
            Some(refusal) => Box::pin(std::future::ready(Ok(refusal))),
            None => Box::pin(app.router.clone().oneshot(req)),
        };
        fut
    });
    let io = TokioIo::new(stream);
    // Each builder is dropped before its connection is awaited: a builder held across the
    // await would sit in every connection's task for its whole life.
    let result = if h2 {
        let conn = {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new());
            b.serve_connection(io, svc)
        };
        // Boxed: the HTTP/1 connections (nearly all) do not carry HTTP/2's state in their task.
        Box::pin(conn).await
    } else {
        let conn = {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                // One write buffer that responses are copied into, rather than a queue of
                // their chunks kept per connection: an open SSE stream then holds no queue of
                // its own (the bridge's responses and events are small).
                .writev(false)
                .header_read_timeout(HEADER_READ_TIMEOUT);
            b.serve_connection(io, svc).with_upgrades()
        };
        conn.await
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer.addr, error = %e, "HTTP connection ended with an error");
    }
}
