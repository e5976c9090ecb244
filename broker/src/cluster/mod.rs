//! Several nodes, one broker: the node's link to NATS.
//!
//! The link is one more in-process link at the seam where messages enter the node
//! ([`crate::Edge::route`]). Data flow:
//! * Out: a message accepted on this node ([`Scope::All`]) is published on NATS, on the subject
//!   its topic maps to ([`subject`]), as this node's boot id followed by its frame
//!   ([`crate::message`]); the local fan-out then delivers it here with [`Scope::Plain`]
//!   (share groups get their copy through NATS). QoS 1/2 messages are acknowledged to their
//!   publisher once the NATS client has written them to the server's socket (a flush); retained
//!   ones once the JetStream bucket has them ([`retained`]).
//! * In: the node subscribes on NATS to the subjects of the union of its local filters, and only
//!   those (interest-based routing): the first local subscription to a filter subscribes, the
//!   last to go unsubscribes ([`Cluster::interest`], counted from the edge's index). A shared
//!   subscription `$share/{group}/{filter}` is a NATS queue subscription, so each message goes
//!   to one node of the group and one member there. What arrives enters through
//!   [`crate::Edge::route`] like any publish, marked [`Scope::Plain`] or [`Scope::Group`], which
//!   is never published again (no loops); this node's own messages coming back and second
//!   copies through overlapping filters are dropped ([`link`], [`dedupe`]).
//! * Flow control: a node whose link falls behind asks the others to hold their publishers
//!   until it catches up (`pressure.rs`).
//! * Lost NATS: the client reconnects and resubscribes by itself; meanwhile the node serves its
//!   own clients alone (messages stay local, counted in `not_sent`), `/readyz` answers 503, and
//!   each loss and return is logged and counted.

pub mod clients;
pub mod config;
mod dedupe;
pub mod handover;
mod link;
pub mod nodes;
mod pressure;
pub mod retained;
pub mod stats;
pub mod subject;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

pub use config::ClusterConfig;
pub use stats::ClusterStats;

use crate::codec::QoS;
use crate::message::{Message, Scope};

/// Longest a publisher waits for the NATS client to take or write its message.
const HAND_OVER: Duration = Duration::from_secs(2);

/// A filter and its share group, as subscribed on NATS.
type Key = (String, Option<String>);

/// What the link task is asked to do.
pub(crate) enum Cmd {
    Subscribe(Key),
    Unsubscribe(Key),
    /// Answer once every command before this one has reached the NATS server.
    Sync(oneshot::Sender<()>),
    /// Answer once every message NATS has delivered so far has entered the node.
    Drain(oneshot::Sender<()>),
}

/// The running link.
pub struct Cluster {
    /// This node's name.
    pub node: String,
    /// This process's id in the cluster (random per start): the origin of its messages.
    pub boot: u64,
    client: async_nats::Client,
    js: jetstream::Context,
    interest: Mutex<HashMap<Key, usize>>,
    cmds: mpsc::UnboundedSender<Cmd>,
    cmd_rx: Mutex<Option<mpsc::UnboundedReceiver<Cmd>>>,
    retained: Mutex<Option<async_nats::jetstream::kv::Store>>,
    nodes: nodes::Nodes,
    held: clients::Held,
    pressure: pressure::Pressure,
    /// `cluster.flow_control`.
    flow_control: bool,
    pub stats: Arc<ClusterStats>,
}

impl Cluster {
    /// Connects to NATS: a server that cannot be reached is a startup error.
    pub async fn connect(cfg: &ClusterConfig) -> anyhow::Result<Arc<Cluster>> {
        let node = cfg.node_name();
        let urls = cfg.nats.list();
        anyhow::ensure!(!urls.is_empty(), "cluster.nats names no server");
        let stats = Arc::new(ClusterStats::default());
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("realtime-web {node}"))
            .connection_timeout(Duration::from_secs(5))
            .subscription_capacity(64 * 1024)
            .client_capacity(16 * 1024)
            .max_reconnects(None)
            .event_callback({
                let stats = stats.clone();
                let node = node.clone();
                move |ev| {
                    let stats = stats.clone();
                    let node = node.clone();
                    async move { on_event(&node, &stats, ev) }
                }
            });
        if let Some(f) = &cfg.credentials {
            opts = opts
                .credentials_file(f)
                .await
                .with_context(|| format!("cluster.credentials {}", f.display()))?;
        }
        if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &cfg.token {
            opts = opts.token(t.clone());
        }
        if let Some(ca) = &cfg.ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        } else if cfg.tls {
            opts = opts.require_tls(true);
        }
        let addrs: Vec<async_nats::ServerAddr> = urls
            .iter()
            .map(|u| {
                u.parse()
                    .with_context(|| format!("cluster.nats: bad URL {u}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let client = opts
            .connect(addrs)
            .await
            .with_context(|| format!("cannot reach NATS at {} (cluster.nats)", urls.join(", ")))?;
        let js = jetstream::new(client.clone());
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        tracing::info!(node, nats = urls.join(","), "joined the cluster");
        Ok(Arc::new(Cluster {
            node,
            boot: rand::random::<u64>() | 1,
            client,
            js,
            interest: Mutex::new(HashMap::new()),
            cmds,
            cmd_rx: Mutex::new(Some(cmd_rx)),
            retained: Mutex::new(None),
            nodes: Default::default(),
            held: Default::default(),
            pressure: Default::default(),
            flow_control: cfg.flow_control,
            stats,
        }))
    }

    /// Loads the cluster's retained messages into the node and starts the link's tasks. Runs
    /// before the node accepts clients.
    pub async fn start(self: &Arc<Self>, edge: &Arc<crate::Edge>) -> anyhow::Result<()> {
        let kv = retained::open(&self.js).await?;
        retained::sync(&self.js, kv.clone(), edge, self.stats.clone()).await?;
        *self.retained.lock().unwrap_or_else(|e| e.into_inner()) = Some(kv);
        let kv = nodes::open(&self.js).await?;
        tokio::spawn(nodes::announce(self.clone(), edge.clone(), kv.clone()));
        tokio::spawn(nodes::follow(self.clone(), edge.clone(), kv));
        let rx = self
            .cmd_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .context("cluster link started twice")?;
        tokio::spawn(link::run(self.clone(), edge.clone(), rx));
        if self.flow_control {
            tokio::spawn(pressure::run(self.clone(), edge.clone()));
        }
        Ok(())
    }

    /// Is the NATS connection up?
    pub fn is_up(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// A local subscription to `filter` (in share group `group`) appeared (`add`) or went.
    pub(crate) fn interest(&self, filter: &str, group: Option<&str>, add: bool) {
        let key = (filter.to_string(), group.map(String::from));
        let mut m = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        let cmd = if add {
            let n = m.entry(key.clone()).or_default();
            *n += 1;
            (*n == 1).then_some(Cmd::Subscribe(key))
        } else {
            match m.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    None
                }
                Some(_) => {
                    m.remove(&key);
                    Some(Cmd::Unsubscribe(key))
                }
                None => None,
            }
        };
        // Sent under the lock, so the link sees subscribe and unsubscribe in their order.
        if let Some(c) = cmd {
            let _ = self.cmds.send(c);
        }
    }

    /// Filters (with share group) this node is subscribed to on NATS.
    pub fn filters(&self) -> usize {
        self.interest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Waits (bounded) until the subscriptions asked for so far are known to the NATS server.
    pub async fn sync(&self) {
        if !self.is_up() {
            // Renewed with every other subscription when the link is back.
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Sync(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// Waits (bounded) until the messages NATS has delivered to this node so far have entered
    /// it ([`crate::Edge::route`]).
    pub(crate) async fn drain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Drain(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// Hands a message accepted on this node to the cluster; returns the frame the node
    /// delivers locally (marked [`Scope::Plain`] when the cluster took the message), and
    /// whether it is a QoS 1/2 message that NATS's client holds and has not yet written to the
    /// server: its publisher is acknowledged after [`Cluster::flush`].
    pub(crate) async fn outbound(&self, msg: &Message, frame: Bytes) -> (Bytes, bool) {
        if msg.scope != Scope::All {
            return (frame, false);
        }
        if self.pressure.throttling() {
            // Boxed: the wait's state is there only while a node is behind.
            Box::pin(self.pressure.wait(&self.stats)).await;
        }
        let subject = subject::topic(msg.topic());
        if !self.is_up() || subject.len() > subject::MAX_SUBJECT {
            ClusterStats::inc(&self.stats.not_sent);
            return (frame, false);
        }
        let mut payload = BytesMut::with_capacity(8 + frame.len());
        payload.put_u64(self.boot);
        payload.put_slice(&frame);
        // Bounded: a link that just went down holds writes until it is back.
        match tokio::time::timeout(HAND_OVER, self.client.publish(subject, payload.freeze())).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "message not handed to NATS: kept on this node");
                ClusterStats::inc(&self.stats.not_sent);
                return (frame, false);
            }
            Err(_) => {
                ClusterStats::inc(&self.stats.not_sent);
                return (frame, false);
            }
        }
        if msg.publish.retain {
            // Boxed: JetStream's put is a ~4 KB future, which would otherwise make every
            // message's routing future that large (and copied per message).
            Box::pin(self.put_retained(msg)).await;
        }
        ClusterStats::inc(&self.stats.published);
        let mut local = BytesMut::from(&frame[..]);
        local[crate::message::SCOPE_AT] = crate::message::SCOPE_PLAIN;
        (local.freeze(), msg.qos() != QoS::AtMostOnce)
    }

    /// Waits (bounded) until NATS's client has written every message handed to it so far to
    /// the server's socket: one flush covers them all.
    pub(crate) async fn flush(&self) {
        match tokio::time::timeout(HAND_OVER, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "NATS flush failed"),
            Err(_) => ClusterStats::inc(&self.stats.flush_timeouts),
        }
    }

    async fn put_retained(&self, msg: &Message) {
        let kv = self
            .retained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(kv) = kv {
            if let Err(e) = retained::put(&kv, msg).await {
                ClusterStats::inc(&self.stats.retained_errors);
                tracing::warn!(error = %e, topic = msg.topic(), "retained change not stored in the cluster");
            }
        }
    }
}

/// Opens the JetStream key-value bucket `name` (file storage, one value per key, entries older
/// than `max_age` dropped by NATS, none when zero), creating it on first use. `description` is
/// the stream's; `what` names the bucket in errors.
async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    what: &str,
    max_age: Duration,
) -> anyhow::Result<jetstream::kv::Store> {
    // Nodes starting together on a fresh NATS race to create the bucket, and the loser's
    // create can fail ("subjects overlap"): it finds the winner's bucket on a later attempt.
    let mut attempt = 0;
    loop {
        if let Ok(kv) = js.get_key_value(name).await {
            return Ok(kv);
        }
        match create_bucket_stream(js, name, description, max_age).await {
            Ok(()) => break,
            Err(e) if attempt >= 3 => {
                return Err(e).with_context(|| {
                    format!("cannot create the {what} bucket (is JetStream on? nats-server -js)")
                });
            }
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
        }
    }
    js.get_key_value(name)
        .await
        .with_context(|| format!("cannot open the {what} bucket"))
}

/// The bucket's stream, as `create_key_value` makes it (that call asks for account fields
/// nats-server 2.9 does not send).
async fn create_bucket_stream(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
) -> anyhow::Result<()> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await?;
    Ok(())
}

fn on_event(node: &str, stats: &ClusterStats, ev: async_nats::Event) {
    match ev {
        async_nats::Event::Disconnected => {
            ClusterStats::inc(&stats.disconnects);
            tracing::error!(
                node,
                "lost NATS: serving this node's clients alone until it is back"
            );
        }
        async_nats::Event::Connected => {
            if stats
                .connects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                > 0
            {
                stats.back.notify_waiters();
                tracing::warn!(node, "NATS is back: subscriptions renewed");
            }
        }
        async_nats::Event::SlowConsumer(_) => {
            ClusterStats::inc(&stats.slow_consumer);
        }
        other => tracing::warn!(node, event = %other, "NATS"),
    }
}

/// The edge's side of the link (no-ops when the node is not in a cluster).
impl crate::Edge {
    /// Is the node's link to NATS up (always, when there is no cluster)?
    pub fn cluster_ready(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.is_up())
    }

    pub(crate) fn cluster_interest(&self, filter: &str, group: Option<&str>, add: bool) {
        if let Some(c) = &self.cluster {
            c.interest(filter, group, add);
        }
    }

    /// Waits until this node's subscriptions so far are active cluster-wide.
    pub(crate) async fn cluster_sync(&self) {
        if let Some(c) = &self.cluster {
            c.sync().await;
        }
    }
}
