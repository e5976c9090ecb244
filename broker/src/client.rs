//! An in-process client of the edge, for the HTTP bridge and for applications that embed the
//! broker: publish and subscribe from code, with no socket and no MQTT encoding.
//!
//! Data flow: [`LocalClient::publish`] checks a message as a session would (topic, payload
//! format, size), keeps it in the retained store if it is retained, and hands it to the core
//! through the same seam as every client ([`Edge::route`]); it returns once the node has
//! accepted it. [`LocalClient::subscribe`] puts a filter in the edge's index under this client's
//! own inbox; a task moves what arrives there, in order, to the owner's channel, so a slow owner
//! fills the (bounded, counted) inbox and never holds up the fan-out. The bridge authorizes each
//! HTTP caller itself; a local client may subscribe to the reply namespace `rtw/replies/`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::codec::*;
use crate::inbox::Inbox;
use crate::message::{client_hash, Message};
use crate::session::state::{self, SessionState, SubOpts};
use crate::Edge;

/// Why a request through the local client failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("the broker is unavailable")]
    Closed,
    #[error("refused by the broker: {0}")]
    Refused(String),
    #[error("timed out waiting for the broker")]
    Timeout,
}

/// A message for one of a local client's subscriptions.
#[derive(Debug)]
pub struct Received {
    pub publish: Publish,
    /// The node's sequence number of the message: it was accepted before any message with a
    /// higher one (compare with [`LocalClient::next_seq`]).
    pub seq: u64,
}

/// Most messages (and bytes) waiting for a local client's owner.
const INBOX_MESSAGES: usize = 65_536;
const INBOX_BYTES: usize = 64 * 1024 * 1024;

struct Inner {
    edge: Arc<Edge>,
    state: Mutex<SessionState>,
    inbox: Arc<Inbox>,
    src: u64,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.pump.abort();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let paths: Vec<String> = st.subs.keys().cloned().collect();
        for p in paths {
            st.index_remove(&self.edge, &p, true);
        }
        st.subs.clear();
    }
}

/// A handle to an in-process client; cheap to clone.
#[derive(Clone)]
pub struct LocalClient {
    inner: Arc<Inner>,
}

impl LocalClient {
    /// A client named `client_id` (for logs); messages for its subscriptions go to `inbox`.
    pub async fn connect(
        edge: &Arc<Edge>,
        client_id: &str,
        inbox: mpsc::Sender<Received>,
    ) -> Result<LocalClient, ClientError> {
        LocalClient::start(edge, client_id, |queue| tokio::spawn(pump(queue, inbox)))
    }

    /// A client whose messages are handed, in order, to `sink`, called on the client's own
    /// task (one hop fewer than a channel to a task of the owner's). `sink` must not block: it
    /// holds up only this client's messages, which wait in its bounded inbox meanwhile.
    pub async fn connect_sink(
        edge: &Arc<Edge>,
        client_id: &str,
        sink: impl FnMut(Received) + Send + 'static,
    ) -> Result<LocalClient, ClientError> {
        LocalClient::start(edge, client_id, |queue| {
            tokio::spawn(pump_to_sink(queue, sink))
        })
    }

    fn start(
        edge: &Arc<Edge>,
        client_id: &str,
        pump: impl FnOnce(Arc<Inbox>) -> tokio::task::JoinHandle<()>,
    ) -> Result<LocalClient, ClientError> {
        if !edge.core_ready() {
            return Err(ClientError::Closed);
        }
        let mut st = SessionState::new(edge, client_id, None);
        st.inbox = Inbox::new(client_id, INBOX_MESSAGES, INBOX_BYTES);
        let queue = st.inbox.clone();
        let pump = pump(queue.clone());
        Ok(LocalClient {
            inner: Arc::new(Inner {
                edge: edge.clone(),
                state: Mutex::new(st),
                inbox: queue,
                src: client_hash(client_id),
                pump,
            }),
        })
    }

    /// Is the broker unavailable?
    pub fn is_closed(&self) -> bool {
        !self.inner.edge.core_ready() || self.inner.pump.is_finished()
    }

    /// The sequence number the next accepted message gets: every message received later with
    /// a lower one was accepted before this call.
    pub fn next_seq(&self) -> u64 {
        self.inner.edge.next_seq()
    }

    /// Publishes; returns once the node has accepted the message (and stored it, if retained;
    /// and, at QoS 1/2, written it for every persistent session it matched).
    pub async fn publish(&self, mut p: Publish) -> Result<(), ClientError> {
        let edge = &self.inner.edge;
        let max = edge.config.limits.max_packet_size as usize;
        let size = p.size() + 2;
        if size > max {
            return Err(ClientError::Refused(format!(
                "PacketTooLarge: {size} bytes, over the broker's maximum packet size of {max}"
            )));
        }
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            return Err(ClientError::Refused("TopicNameInvalid: not UTF-8".into()));
        };
        if crate::topic::validate_topic(topic).is_err() || topic.starts_with('$') {
            return Err(ClientError::Refused(format!("TopicNameInvalid: {topic}")));
        }
        let utf8_declared = p
            .properties
            .as_ref()
            .is_some_and(|pr| pr.payload_format_indicator == Some(1));
        if utf8_declared && std::str::from_utf8(&p.payload).is_err() {
            return Err(ClientError::Refused(
                "PayloadFormatInvalid: the payload is not UTF-8".into(),
            ));
        }
        if p.retain && topic.starts_with(crate::REPLY_PREFIX) {
            p.retain = false;
        }
        if p.retain {
            if let Err(e) = edge.retained.set(&p).await {
                return Err(ClientError::Refused(match e {
                    crate::retained::StoreError::Busy => format!("QuotaExceeded: {e}"),
                    crate::retained::StoreError::Failed(_) => format!("UnspecifiedError: {e}"),
                }));
            }
        }
        edge.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        let waiter = edge
            .route_durable(Message::new(p, self.inner.src))
            .await
            .map_err(|e| match e {
                crate::CoreError::Gone => ClientError::Closed,
                crate::CoreError::Stuck(_) => ClientError::Timeout,
            })?;
        // Acknowledged only once on disk for every persistent session it matched.
        match waiter {
            None => Ok(()),
            Some(w) => w.wait(&edge.sessions).await.map_err(|e| {
                tracing::warn!(error = %e, "message not stored: refused");
                ClientError::Refused(format!("StoreUnavailable: {e}"))
            }),
        }
    }

    /// Subscribes to one filter (`$share/…` included); returns the reason code.
    pub async fn subscribe(
        &self,
        filter: &str,
        qos: QoS,
    ) -> Result<SubscribeReasonCode, ClientError> {
        if crate::topic::validate_filter(filter).is_err() || state::is_sys(filter) {
            return Ok(SubscribeReasonCode::TopicFilterInvalid);
        }
        let mut f = Filter::new(filter, qos);
        f.retain_forward_rule = RetainForwardRule::Never;
        let opts = SubOpts::from_filter(&f, None);
        {
            let mut st = self.lock();
            st.index_insert(&self.inner.edge, filter, &opts, self.inner.src, true);
            st.subs.insert(filter.to_string(), opts);
        }
        self.inner.edge.cluster_sync().await;
        Ok(SubscribeReasonCode::Success(qos))
    }

    pub async fn unsubscribe(&self, filter: &str) -> Result<(), ClientError> {
        let mut st = self.lock();
        if st.subs.remove(filter).is_some() {
            st.index_remove(&self.inner.edge, filter, true);
        }
        Ok(())
    }

    /// Filters subscribed.
    pub fn subscriptions(&self) -> HashSet<String> {
        self.lock().subs.keys().cloned().collect()
    }

    /// Messages dropped because the owner did not take them in time.
    pub fn dropped(&self) -> u64 {
        self.inner.inbox.dropped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The next message of the inbox as its owner gets it (`None`: none left now).
fn next_received(inbox: &Inbox) -> Option<Received> {
    while let Some(d) = inbox.pop() {
        let left = d.msg.expiry_left_now();
        if left == Some(0) {
            continue;
        }
        let seq = d.msg.seq;
        // The last holder of the message (nobody else matched it) takes it without a copy.
        let mut p = Arc::try_unwrap(d.msg).map_or_else(|m| m.publish.clone(), |m| m.publish);
        p.qos = d.qos;
        p.retain = d.retain;
        if let (Some(l), Some(props)) = (left, p.properties.as_mut()) {
            props.message_expiry_interval = Some(l);
        }
        return Some(Received { publish: p, seq });
    }
    None
}

/// Moves messages from the client's inbox to its owner, in order.
async fn pump(inbox: Arc<Inbox>, out: mpsc::Sender<Received>) {
    loop {
        while let Some(r) = next_received(&inbox) {
            if out.send(r).await.is_err() {
                return;
            }
        }
        inbox.wait().await;
    }
}

/// Hands messages from the client's inbox to its owner's `sink`, in order.
async fn pump_to_sink(inbox: Arc<Inbox>, mut sink: impl FnMut(Received)) {
    /// Messages handed over before the task lets others run (the inbox may never be empty).
    const BATCH: usize = 256;
    loop {
        let mut n = 0;
        while let Some(r) = next_received(&inbox) {
            sink(r);
            n += 1;
            if n == BATCH {
                n = 0;
                tokio::task::yield_now().await;
            }
        }
        inbox.wait().await;
    }
}
