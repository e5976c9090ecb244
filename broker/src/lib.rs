//! realtime-web's broker half: the MQTT edge in front of an embedded rumqttd.
//!
//! Data flow: a listener ([`listener`]) accepts a TCP or TLS socket (the bridge hands over
//! WebSocket ones) and spawns [`session::serve`], which reads CONNECT, authenticates through
//! [`auth`], claims the client id in the [`registry`], and opens the client's own MQTT 5
//! connection to the [`core`] (rumqttd on loopback). From then on the session translates both
//! ways: client packets (3.1.1 or 5, see [`codec`]) are checked, authorized and forwarded;
//! messages from the core are fixed up (QoS, retain, no-local) and delivered. Retained messages
//! never reach the core: the session keeps them in the [`retained`] store and delivers them on
//! subscribe. [`Edge::ingress`] is the seam where messages enter the node.

pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
mod core;
pub mod fuzzing;
pub mod limits;
pub mod listener;
pub mod password;
pub mod persistence;
pub mod registry;
pub mod retained;
pub mod security;
pub mod session;
pub mod stats;
pub mod topic;
pub mod transport;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::codec::{Packet, PingReq, Publish};
pub use crate::config::BrokerConfig;
use crate::core::{Core, UpstreamConnect};

/// Topics under this prefix carry replies to the HTTP bridge's requests: any client may publish
/// there (a responder needs the 128-bit correlation id to be heard), only the bridge receives.
pub const REPLY_PREFIX: &str = "rtw/replies/";

/// Would `filter` see the reply namespace (it names it, or a wildcard could match into it)?
pub fn reserved_filter(filter: &str) -> bool {
    filter == "rtw/replies" || filter.starts_with(REPLY_PREFIX)
}

/// State shared by every session.
pub struct Edge {
    /// The node's own link to the core is up (what `/readyz` reports).
    core_up: std::sync::atomic::AtomicBool,
    /// TLS certificates in use (reloaded on SIGHUP or when their files change).
    certs: std::sync::Mutex<Vec<Arc<listener::CertStore>>>,
    /// Open client connections per peer address.
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Filters clients (not the bridge) are subscribed to, with how many subscriptions each.
    interest: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    pub config: BrokerConfig,
    core: Core,
    pub retained: Arc<retained::RetainedStore>,
    pub registry: registry::Registry,
    pub stats: stats::Stats,
    pub authenticator: Arc<dyn auth::Authenticator>,
    pub authorizer: Arc<dyn auth::Authorizer>,
    sys: watch::Receiver<Arc<Vec<(String, String)>>>,
    injector: mpsc::Sender<Publish>,
    connections: Arc<Semaphore>,
    next_conn: AtomicU64,
    pub shutdown: CancellationToken,
}

impl Edge {
    /// Records a client subscription appearing (`true`) or going away.
    pub(crate) fn interest(&self, filter: &str, add: bool) {
        let mut m = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        if add {
            *m.entry(filter.to_string()).or_default() += 1;
        } else if let Some(n) = m.get_mut(filter) {
            *n -= 1;
            if *n == 0 {
                m.remove(filter);
            }
        }
    }

    /// Is the core reachable (the node's own internal link is connected)?
    pub fn core_ready(&self) -> bool {
        self.core_up.load(Ordering::Relaxed)
    }

    /// Registers another reloadable certificate (the HTTPS listener's).
    pub fn add_cert(&self, store: Arc<listener::CertStore>) {
        self.certs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(store);
    }

    /// Reloads every TLS certificate from its files (SIGHUP).
    pub fn reload_certs(&self) {
        for c in self.certs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Err(e) = c.reload() {
                tracing::warn!(error = %e, "TLS certificate reload failed; keeping the old one");
            }
        }
    }

    /// Takes a connection slot for `ip`; `false` when it already has `max_connections_per_ip`.
    pub(crate) fn ip_enter(&self, ip: std::net::IpAddr) -> bool {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= self.config.limits.max_connections_per_ip {
            return false;
        }
        *n += 1;
        true
    }

    pub(crate) fn ip_leave(&self, ip: std::net::IpAddr) {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    /// Is any connected client subscribed to a filter matching `topic`?
    pub fn has_subscriber(&self, topic: &str) -> bool {
        let m = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        m.keys().any(|f| topic::matches(f, topic))
    }

    fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Publishes a message on behalf of the node (wills): stamped like a client's, QoS 0 on the
    /// internal link (the stamp carries the real QoS, the core delivers at subscription QoS).
    pub(crate) fn inject(&self, publish: Publish) {
        if self.injector.try_send(publish).is_err() {
            self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("injector queue full: message dropped");
        }
    }

    /// Expires the session of `client_id` after `after`, unless a reconnect cancels the timer
    /// (the registry keeps it).
    pub(crate) fn purge_timer(
        self: &Arc<Self>,
        client_id: &str,
        after: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let edge = self.clone();
        let id = client_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            edge.purge_session(&id).await;
            edge.registry.timer_fired(&id, registry::Timer::Purge);
        })
    }

    /// Ends a session in the core (session expiry): a clean connect under its id, then DISCONNECT.
    pub(crate) async fn purge_session(&self, client_id: &str) {
        let req = UpstreamConnect {
            client_id: client_id.to_string(),
            clean_start: true,
            receive_maximum: 1,
        };
        match self.core.connect(&req).await {
            Ok((mut s, _, _)) => core::close_link(&mut s).await,
            Err(e) => tracing::warn!(client_id, error = %e, "could not expire session"),
        }
    }

    /// Serves one client connection on any transport until it ends.
    pub async fn serve(
        self: &Arc<Self>,
        io: Box<dyn transport::Io>,
        peer: SocketAddr,
        t: transport::Transport,
    ) {
        session::serve(self.clone(), io, peer, t).await
    }
}

/// A running broker.
pub struct Broker {
    pub edge: Arc<Edge>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    pub mqtt_addr: Option<SocketAddr>,
    pub mqtts_addr: Option<SocketAddr>,
}

impl Broker {
    /// Starts the core, opens the store, binds the MQTT listeners. Every failure here is a
    /// startup error (a listener that cannot bind, an unwritable storage directory, bad TLS files).
    pub async fn start(
        config: BrokerConfig,
        authenticator: Arc<dyn auth::Authenticator>,
        authorizer: Arc<dyn auth::Authorizer>,
    ) -> anyhow::Result<Broker> {
        let retained = retained::RetainedStore::open(&config.storage.dir)?;
        let core = Core::start(&config).await?;
        let stats = stats::Stats::default();
        let (sys_tx, sys_rx) = watch::channel(stats.sys_tree(retained.len()));
        let (inj_tx, inj_rx) = mpsc::channel(4096);
        let shutdown = CancellationToken::new();
        let mqtt = listener::bind_tcp(&config.mqtt.listen).await?;
        let mut certs = Vec::new();
        let mqtts = match config.mqtts.enabled() {
            Some((addr, cert, key)) => {
                let store = listener::CertStore::load(cert, key)?;
                let acceptor = listener::tls_acceptor(store.clone())?;
                certs.push(store);
                listener::bind_tcp(addr).await?.map(|l| (l, acceptor))
            }
            None => None,
        };
        let edge = Arc::new(Edge {
            interest: Default::default(),
            core_up: std::sync::atomic::AtomicBool::new(false),
            certs: std::sync::Mutex::new(certs),
            per_ip: Default::default(),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            config,
            core,
            retained,
            registry: registry::Registry::default(),
            stats,
            authenticator,
            authorizer,
            sys: sys_rx,
            injector: inj_tx,
            next_conn: AtomicU64::new(1),
            shutdown,
        });
        restore_sessions(&edge).await;
        tokio::spawn(run_injector(edge.clone(), inj_rx));
        tokio::spawn(run_sys(edge.clone(), sys_tx));
        tokio::spawn(watch_certs(edge.clone()));
        let mut listeners = Vec::new();
        let mut mqtt_addr = None;
        let mut mqtts_addr = None;
        if let Some(l) = mqtt {
            mqtt_addr = Some(l.local_addr()?);
            listeners.push(tokio::spawn(listener::accept_loop(edge.clone(), l, None)));
        }
        if let Some((l, acceptor)) = mqtts {
            mqtts_addr = Some(l.local_addr()?);
            listeners.push(tokio::spawn(listener::accept_loop(
                edge.clone(),
                l,
                Some(acceptor),
            )));
        }
        Ok(Broker {
            edge,
            listeners,
            mqtt_addr,
            mqtts_addr,
        })
    }

    /// Stops accepting, disconnects every client (MQTT 5 reason 0x8B), waits (bounded) for the
    /// sessions to end and flushes the retained store.
    pub async fn shutdown(self) {
        for l in &self.listeners {
            l.abort();
        }
        self.edge.shutdown.cancel();
        self.edge.registry.kick_all(0x8B);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.edge.registry.live() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.edge.retained.flush().await;
        let sessions = self.edge.registry.saved_sessions();
        match persistence::save(&self.edge.config.storage.dir, &sessions) {
            Ok(()) => tracing::info!(sessions = sessions.len(), "persistent sessions saved"),
            Err(e) => tracing::error!(error = %e, "could not save persistent sessions"),
        }
    }
}

/// Brings back the persistent sessions saved at the last shutdown (see [`persistence`]), before
/// any client can connect. A session that cannot be restored is logged and dropped: its client
/// finds `session_present = 0`, as after a crash.
async fn restore_sessions(edge: &Arc<Edge>) {
    let saved = match persistence::take(&edge.config.storage.dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not read saved sessions");
            return;
        }
    };
    let now = std::time::SystemTime::now();
    let mut restored = 0;
    for s in saved {
        let left = match s.expires_at {
            Some(t) => match t.duration_since(now) {
                Ok(d) if !d.is_zero() => Some(d),
                _ => continue,
            },
            None => None,
        };
        if let Err(e) = persistence::restore_in_core(&edge.core, &s).await {
            tracing::warn!(client_id = s.client_id, error = %e, "could not restore session");
            continue;
        }
        let purge = left.map(|d| edge.purge_timer(&s.client_id, d));
        edge.registry.restore(s, purge);
        restored += 1;
    }
    if restored > 0 {
        tracing::info!(sessions = restored, "persistent sessions restored");
    }
}

/// Reloads certificates whose files changed (checked every few seconds).
async fn watch_certs(edge: Arc<Edge>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = edge.shutdown.cancelled() => return,
        }
        let stores = edge.certs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for s in stores {
            s.reload_if_changed();
        }
    }
}

/// Refreshes the `$SYS` snapshot every `[sys] interval_secs`.
async fn run_sys(edge: Arc<Edge>, tx: watch::Sender<Arc<Vec<(String, String)>>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(edge.config.sys.interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = edge.shutdown.cancelled() => return,
        }
        let _ = tx.send(edge.stats.sys_tree(edge.retained.len()));
    }
}

/// Keeps one internal connection for messages the node publishes itself, reconnecting as needed.
async fn run_injector(edge: Arc<Edge>, mut rx: mpsc::Receiver<Publish>) {
    let id = format!("rtw-node-{}", edge.conn_id());
    let mut pending: Option<Publish> = None;
    loop {
        let req = UpstreamConnect {
            client_id: id.clone(),
            clean_start: true,
            receive_maximum: 1,
        };
        let mut stream = match edge.core.connect(&req).await {
            Ok((s, _, _)) => {
                edge.core_up.store(true, Ordering::Relaxed);
                s
            }
            Err(e) => {
                edge.core_up.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "injector cannot reach the core");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut ping = tokio::time::interval(Duration::from_secs(30));
        let mut out = BytesMut::new();
        let mut sink = [0u8; 1024];
        loop {
            if let Some(p) = pending.take() {
                out.clear();
                if Packet::Publish(p.clone()).write(&mut out, None).is_ok()
                    && stream.write_all(&out).await.is_err()
                {
                    pending = Some(p);
                    break;
                }
            }
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => pending = Some(p),
                    None => return,
                },
                _ = ping.tick() => {
                    out.clear();
                    let _ = Packet::PingReq(PingReq).write(&mut out, None);
                    if stream.write_all(&out).await.is_err() { break; }
                }
                r = stream.read(&mut sink) => if matches!(r, Ok(0) | Err(_)) { break },
            }
        }
        edge.core_up.store(false, Ordering::Relaxed);
        tracing::error!("the node's link to the core broke; reconnecting");
    }
}
