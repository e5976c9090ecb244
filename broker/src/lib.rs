//! realtime-web's broker half: the MQTT edge, with rumqttd in process as its message log.
//!
//! Data flow: a listener ([`listener`]) accepts a TCP or TLS socket (the bridge hands over
//! WebSocket ones) and spawns [`session::serve`], which reads CONNECT, authenticates through
//! [`auth`], claims the client id in the [`registry`] and serves the MQTT session itself
//! (3.1.1 or 5, see [`codec`]): subscriptions go into the edge's [`index`], packet ids and the
//! receive window are the session's. A message a client publishes is checked, authorized, kept
//! in the [`retained`] store if retained, and handed to the core ([`Edge::route`], the one seam
//! where messages enter the node); the [`fanout`] takes every message out of the core in order
//! and queues it in the bounded [`inbox`] of each matching session. The HTTP bridge publishes
//! and subscribes through the same seam ([`client::LocalClient`]), with no MQTT encoding.

// The public API, what the bridge and an embedding application use: the [`Edge`] (with the
// retained store's read side, the counters and the client directory behind accessors),
// [`client::LocalClient`] for in-process publish and subscribe, [`Broker`] to start and stop
// it, and the types those speak (codec, config, auth, security, topic, transport).
pub mod auth;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod directory;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod listener;
pub mod retained;
pub mod security;
pub mod stats;
pub mod topic;
pub mod transport;

// The machinery behind it.
mod alias;
mod conformance;
mod core;
mod durable;
mod fanout;
mod inbox;
mod index;
mod message;
mod password;
mod quickack;
mod registry;
mod session;
mod topic_index;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

pub use crate::config::BrokerConfig;
use crate::core::Core;
pub use crate::core::CoreError;
use crate::message::Message;

/// Topics under this prefix carry replies to the HTTP bridge's requests: any client may publish
/// there (a responder needs the 128-bit correlation id to be heard), only the bridge receives.
pub const REPLY_PREFIX: &str = "rtw/replies/";

/// Would `filter` see the reply namespace (it names it, or a wildcard could match into it)?
pub fn reserved_filter(filter: &str) -> bool {
    filter == "rtw/replies" || filter.starts_with(REPLY_PREFIX)
}

/// The address a caller's failures and shares count against: IPv4 as is, IPv6 by its /64 (one
/// host's share).
pub use password::ip_key;

/// Is `name` a user property the broker keeps for itself (a client may not set it)?
pub fn reserved_user_property(name: &str) -> bool {
    name == session::STAMP_KEY
}

/// State shared by every session.
pub struct Edge {
    /// TLS certificates in use (reloaded on SIGHUP or when their files change).
    certs: std::sync::Mutex<Vec<Arc<listener::CertStore>>>,
    /// Open client connections per peer address.
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Filters clients (not the bridge) are subscribed to, with how many subscriptions each.
    interest: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Bumped each time a filter enters or leaves `interest` (see [`Edge::subscriptions_changed`]).
    interest_changed: watch::Sender<u64>,
    pub config: BrokerConfig,
    core: Arc<Core>,
    /// The link to the other nodes, when the node is in a cluster ([`cluster`]).
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Who subscribes to what: the fan-out's index.
    index: index::Index,
    /// The next accepted message's sequence number.
    seq: AtomicU64,
    pub(crate) retained: Arc<retained::RetainedStore>,
    /// Persistent sessions and their queues on disk.
    pub(crate) sessions: Arc<durable::SessionStore>,
    pub(crate) registry: registry::Registry,
    /// Live clients, for operators (the dashboard's clients table).
    pub(crate) directory: Arc<directory::Directory>,
    pub(crate) stats: stats::Stats,
    pub(crate) authenticator: Arc<dyn auth::Authenticator>,
    pub(crate) authorizer: Arc<dyn auth::Authorizer>,
    sys: watch::Receiver<Arc<Vec<(String, String)>>>,
    connections: Arc<Semaphore>,
    next_conn: AtomicU64,
    pub(crate) shutdown: CancellationToken,
}

impl Edge {
    /// The retained store: what `GET /topics/…` and the dashboard's topic tree read.
    pub fn retained(&self) -> &retained::RetainedStore {
        &self.retained
    }

    /// The node's counters (the `$SYS` tree, `/metrics`, `/api/stats`).
    pub fn stats(&self) -> &stats::Stats {
        &self.stats
    }

    /// The live clients, for operators.
    pub fn directory(&self) -> &directory::Directory {
        &self.directory
    }

    /// Cancelled when the broker shuts down: tasks that live as long as the broker wait on it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

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
        drop(m);
        self.interest_changed
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes each time a client subscription appears or goes away: wait on it, then ask
    /// [`Edge::has_subscriber`] (the HTTP bridge's requests that wait for a responder).
    pub fn subscriptions_changed(&self) -> watch::Receiver<u64> {
        self.interest_changed.subscribe()
    }

    /// Is the core running (what `/readyz` reports)?
    pub fn core_ready(&self) -> bool {
        self.core.is_up()
    }

    /// Hands a message to the core: the seam where every message enters the node. Messages keep
    /// the order in which their `route` returned. Waits (bounded) while the fan-out catches up.
    pub async fn route(&self, msg: Message) -> Result<(), CoreError> {
        self.route_durable(msg).await.map(|_| ())
    }

    /// [`Edge::route`], and for a QoS 1/2 message that persistent sessions may want, what its
    /// publisher waits on before acknowledging it ([`durable::Waiter::wait`]). Returns once the
    /// cluster, if any, has the message.
    pub(crate) async fn route_durable(
        &self,
        msg: Message,
    ) -> Result<Option<durable::Waiter>, CoreError> {
        let (waiter, unflushed) = self.route_held(msg).await?;
        if unflushed {
            self.flush_cluster().await;
        }
        Ok(waiter)
    }

    /// [`Edge::route_durable`] without waiting for NATS to have the message: when the second
    /// value is true, the publisher is acknowledged only after [`Edge::flush_cluster`], and one
    /// flush covers every message routed before it (a session flushes once per read).
    pub(crate) async fn route_held(
        &self,
        msg: Message,
    ) -> Result<(Option<durable::Waiter>, bool), CoreError> {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel);
        let mut frame = msg.frame(seq).map_err(|e| {
            tracing::warn!(error = %e, "message not encodable");
            CoreError::Gone
        })?;
        let mut unflushed = false;
        if let Some(c) = &self.cluster {
            (frame, unflushed) = c.outbound(&msg, frame).await;
        }
        let waiter = self.sessions.expect(seq, msg.qos());
        let decoded = msg.routed(&frame, seq).map(Arc::new);
        match self.core.publish(frame, decoded).await {
            Ok(()) => Ok((waiter, unflushed)),
            Err(e) => {
                if let Some(w) = waiter {
                    self.sessions.cancel(w);
                }
                Err(e)
            }
        }
    }

    /// Waits (bounded) until the cluster's NATS client has written what [`Edge::route_held`]
    /// handed it to the server.
    pub(crate) async fn flush_cluster(&self) {
        if let Some(c) = &self.cluster {
            c.flush().await;
        }
    }

    /// Returns once every message routed before it is in the queues of the sessions it is for
    /// (see [`Core::fence`]).
    pub(crate) async fn fence(&self) -> Result<(), CoreError> {
        self.core.fence().await
    }

    /// The sequence number the next accepted message gets: a subscription made now sees
    /// messages from it on.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Bytes of messages waiting in the core for the fan-out.
    pub fn core_backlog(&self) -> usize {
        self.core.backlog()
    }

    /// Subscriptions in the fan-out's index (one per session and filter).
    pub fn index_len(&self) -> usize {
        self.index.count()
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

    /// Is any connected client (on any node of the cluster) subscribed to a filter matching
    /// `topic`?
    pub fn has_subscriber(&self, topic: &str) -> bool {
        let m = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        m.keys().any(|f| topic::matches(f, topic))
            || self
                .cluster
                .as_ref()
                .is_some_and(|c| c.remote_subscriber(topic))
    }

    pub(crate) fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
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

    /// Ends a session whose client is away (session expiry).
    pub(crate) async fn purge_session(&self, client_id: &str) {
        if let Some(s) = self.registry.take_offline(client_id) {
            s.discard(self, false);
        }
        self.cluster_release(client_id);
    }

    /// Serves one client connection on any transport until it ends.
    pub fn serve(
        self: &Arc<Self>,
        io: Box<dyn transport::Io>,
        peer: SocketAddr,
        t: transport::Transport,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        session::serve(self.clone(), io, peer, t)
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
        let cluster = match &config.cluster {
            Some(c) => Some(cluster::Cluster::connect(c).await?),
            None => None,
        };
        let retained = retained::RetainedStore::open(&config.storage.dir)?;
        let (sessions, loaded) = durable::SessionStore::open(&config.storage.dir)?;
        let (core, doorbell, egress) = tokio::task::block_in_place(|| Core::start(&config))?;
        tokio::spawn(doorbell.run());
        let stats = stats::Stats::default();
        let (sys_tx, sys_rx) = watch::channel(stats.sys_tree(retained.len()));
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
            index: index::Index::default(),
            interest_changed: watch::channel(0).0,
            seq: AtomicU64::new(1),
            certs: std::sync::Mutex::new(certs),
            per_ip: Default::default(),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            config,
            core,
            cluster,
            retained,
            sessions,
            registry: registry::Registry::default(),
            directory: Default::default(),
            stats,
            authenticator,
            authorizer,
            sys: sys_rx,
            next_conn: AtomicU64::new(1),
            shutdown,
        });
        tokio::spawn(fanout::run(edge.clone(), egress));
        if let Some(c) = &edge.cluster {
            c.start(&edge).await?;
        }
        durable::recover(&edge, loaded);
        if let Some(c) = &edge.cluster {
            c.hold_restored(&edge).await;
        }
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
    /// sessions to end and flushes the retained and session stores.
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
        self.edge.sessions.flush().await;
        tracing::info!(
            sessions = self.edge.registry.offline_ids().len(),
            "persistent sessions stored"
        );
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
        let mut tree = edge.stats.sys_tree(edge.retained.len());
        if let Some(c) = &edge.cluster {
            Arc::make_mut(&mut tree).extend(c.sys_entries(&edge));
        }
        let _ = tx.send(tree);
    }
}
