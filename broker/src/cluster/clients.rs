//! A client id is unique across the cluster, and a persistent session follows its client.
//!
//! Data flow: while a node holds a client id (its session is live, or kept for a persistent
//! client that is away) it listens on the id's subject ([`super::subject::client`]). A CONNECT
//! on another node first asks that subject ([`Cluster::claim`]): nobody there is NATS's
//! immediate "no responders" and the connect goes on; otherwise the holder first lets every
//! message NATS delivered to it before the claim reach the session (its link drains, then a
//! fence through its core: a message acknowledged elsewhere before the client came back is not
//! left behind), closes the live connection (MQTT 5 DISCONNECT 0x8E, session taken over), takes
//! the session out of its registry and answers with a [`Handover`] ([`super::handover`]): the
//! owner, the subscriptions and the messages queued or in flight (up to
//! [`super::handover::MAX_QUEUED_BYTES`] of them; the rest are dropped, counted). The new node
//! resumes the session from it (session present) when the client asked to resume.
//!
//! The tail: messages published while the session moves. Until the new node's subscriptions
//! are live on NATS, matching messages reach only the old node. So before it answers, the old
//! node puts a collector in its index under the session's subscriptions, and the handover names
//! a subject to ask for what it collects. The new node indexes the subscriptions, waits until
//! NATS has them ([`Cluster::sync`]), then asks ([`Cluster::tail`]); the old node lets what NATS
//! delivered before that question reach the collector (drain and fence, as for the claim),
//! takes it out of the index and answers with its messages. Each message is known by its
//! cluster-wide id ([`crate::message::Message::identity`]): one that also reached the new node
//! directly is kept once, and the tail goes after the handover's messages and before those that
//! arrived directly, so order holds ([`super::handover::merge`]). The collector gives up after
//! [`TAIL_WAIT`] (a new node that starts a clean session does not ask).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use super::handover::{carried, collector, Handover, Tail, TailRequest};
use super::{subject, Cluster, ClusterStats};
use crate::session::state::SessionState;
use crate::Edge;

/// How long a connect waits for the node that holds its client id.
const CLAIM_WAIT: Duration = Duration::from_secs(8);
/// How long the old node's collector waits to be asked for the tail.
const TAIL_WAIT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Claims `client_id` for this node: the node holding it (if any) closes its connection and
    /// hands its session over. Returns that session.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        edge: &Arc<Edge>,
        client_id: &str,
    ) -> Option<Handover> {
        if self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(client_id)
        {
            return None;
        }
        let subject = subject::client(client_id);
        if subject.len() > subject::MAX_SUBJECT {
            return None;
        }
        // NATS down: nobody can be asked; the id is held from here once the link is back.
        let asked = if !self.is_up() {
            Ok(Err(async_nats::RequestError::new(
                async_nats::RequestErrorKind::NoResponders,
            )))
        } else {
            tokio::time::timeout(
                CLAIM_WAIT,
                self.client.request(
                    subject.clone(),
                    Bytes::copy_from_slice(&self.boot.to_be_bytes()),
                ),
            )
            .await
        };
        let handover = match asked {
            Ok(Ok(m)) => match serde_json::from_slice::<Handover>(&m.payload) {
                Ok(h) => {
                    ClusterStats::inc(&self.stats.takeovers);
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(client_id, error = %e, "bad session handover");
                    None
                }
            },
            // No responders: nobody holds the id.
            Ok(Err(_)) => None,
            Err(_) => {
                tracing::warn!(client_id, "the node holding this client id did not answer");
                None
            }
        };
        self.hold(edge, client_id).await;
        // The server knows this node holds the id before the client hears CONNACK, so a
        // connect elsewhere after that asks here.
        self.sync().await;
        handover
    }

    /// Asks the node that handed a session over for the messages it collected since, and puts
    /// them in `state`'s queue: after the handed messages, before those that reached this node
    /// directly, once each. Call it once the session's subscriptions are live on NATS.
    pub(crate) async fn tail(
        &self,
        edge: &Edge,
        client_id: &str,
        ask: TailRequest,
        state: &SessionState,
    ) {
        let asked = tokio::time::timeout(
            CLAIM_WAIT,
            self.client.request(ask.subject.clone(), Bytes::new()),
        )
        .await;
        let tail = match asked {
            Ok(Ok(m)) => match serde_json::from_slice::<Tail>(&m.payload) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(client_id, error = %e, "bad session tail");
                    return;
                }
            },
            _ => {
                tracing::warn!(client_id, "the moved session's tail did not come");
                return;
            }
        };
        if tail.dropped > 0 {
            tracing::warn!(
                client_id,
                dropped = tail.dropped,
                "moved session's tail cut"
            );
        }
        // A message in the tail may have come here straight too, ahead of the answer on this
        // node's NATS connection: it reaches the queue before the two are compared.
        self.drain().await;
        if let Err(e) = edge.fence().await {
            tracing::warn!(client_id, error = %e, "tail merged without waiting for the core");
        }
        let (handed, tail, direct) = super::handover::merge(&state.inbox, ask, tail, self.boot);
        tracing::debug!(
            client_id,
            handed,
            tail,
            direct,
            "moved session's tail merged"
        );
    }

    /// Listens on `client_id`'s subject: this node holds the id (see [`Cluster::claim`]).
    pub(crate) async fn hold(self: &Arc<Self>, edge: &Arc<Edge>, client_id: &str) {
        match self.client.subscribe(subject::client(client_id)).await {
            Ok(sub) => {
                let task = tokio::spawn(respond(
                    self.clone(),
                    edge.clone(),
                    client_id.to_string(),
                    sub,
                ));
                if let Some(old) = self
                    .held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client_id.to_string(), task)
                {
                    old.abort();
                }
            }
            Err(e) => {
                tracing::warn!(client_id, error = %e, "cannot hold the client id cluster-wide")
            }
        }
    }

    /// Holds the ids of the persistent sessions restored at start (they wait here for their
    /// clients, wherever those reconnect).
    pub(crate) async fn hold_restored(self: &Arc<Self>, edge: &Arc<Edge>) {
        for client_id in edge.registry.offline_ids() {
            self.hold(edge, &client_id).await;
        }
    }

    /// This node no longer holds `client_id`.
    pub(crate) fn release(&self, client_id: &str) {
        if let Some(t) = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(client_id)
        {
            t.abort();
        }
    }
}

/// Answers another node's claim of `client_id`: closes the connection here, hands the session
/// over, stops holding the id, and then collects the session's tail until the new node asks for
/// it (see the module's documentation).
async fn respond(
    c: Arc<Cluster>,
    edge: Arc<Edge>,
    client_id: String,
    mut sub: async_nats::Subscriber,
) {
    let mut tail = None;
    while let Some(m) = sub.next().await {
        let mut collecting = None;
        if m.payload.as_ref() == c.boot.to_be_bytes() {
            continue;
        }
        // NATS delivers in order on this node's connection: what it delivered before the claim
        // (messages acknowledged to their publishers before the client came back elsewhere)
        // enters the node and reaches the session's queue before the session is handed over.
        c.drain().await;
        if let Err(e) = edge.fence().await {
            tracing::warn!(client_id, error = %e, "session handed over without waiting for the core");
        }
        let conn = edge.conn_id();
        let claim = edge
            .registry
            .claim(&client_id, conn, crate::registry::Line::new())
            .await;
        let state = edge.registry.take_offline(&client_id);
        let owner = state.as_ref().and_then(|s| s.owner.clone());
        let mut handover = match state {
            Some(s) => {
                // In the index before the session leaves it: no message falls between them.
                collecting = Some(collector(&edge, &client_id, &s));
                let (h, s) = Handover::from_state(s, c.boot);
                s.discard(&edge, false);
                h
            }
            None => Handover::empty(owner),
        };
        drop(claim);
        edge.registry.release(&client_id, conn, None, None);
        ClusterStats::inc(&c.stats.takeovers);
        tracing::info!(
            client_id,
            queued = handover.queued.len(),
            dropped = handover.dropped,
            "session taken over by another node"
        );
        // Subscribed before the handover names it, on the same connection: a question sent
        // after the handover arrived finds it.
        let asks = match &collecting {
            Some(_) => {
                let subject = c.client.new_inbox();
                match c.client.subscribe(subject.clone()).await {
                    Ok(asks) => {
                        handover.tail = Some(subject);
                        Some(asks)
                    }
                    Err(e) => {
                        tracing::warn!(client_id, error = %e, "no tail for the moved session");
                        None
                    }
                }
            }
            None => None,
        };
        if let (Some(reply), Ok(body)) = (m.reply, serde_json::to_vec(&handover)) {
            let _ = c.client.publish(reply, body.into()).await;
            let _ = c.client.flush().await;
        }
        match (collecting, asks) {
            (Some(collecting), Some(asks)) => tail = Some((collecting, asks)),
            (Some(collecting), None) => collecting.discard(&edge, false),
            _ => {}
        }
        break;
    }
    c.held
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&client_id);
    if let Some((collecting, asks)) = tail {
        hand_tail(&c, &edge, &client_id, collecting, asks).await;
    }
}

/// Waits (at most [`TAIL_WAIT`]) for the new node to ask for the tail and answers with what the
/// collector took; the collector leaves the index either way.
async fn hand_tail(
    c: &Cluster,
    edge: &Edge,
    client_id: &str,
    collecting: SessionState,
    mut asks: async_nats::Subscriber,
) {
    let asked = tokio::time::timeout(TAIL_WAIT, asks.next()).await;
    let Ok(Some(ask)) = asked else {
        tracing::debug!(client_id, "the moved session's tail was not asked for");
        collecting.discard(edge, false);
        return;
    };
    // What NATS delivered before the question (published before the new node's subscriptions
    // were live) reaches the collector first.
    c.drain().await;
    if let Err(e) = edge.fence().await {
        tracing::warn!(client_id, error = %e, "tail handed over without waiting for the core");
    }
    let mut all = Vec::new();
    while let Some(d) = collecting.inbox.pop() {
        all.push(d);
    }
    collecting.discard(edge, false);
    let (queued, dropped) = carried(all, c.boot);
    tracing::debug!(
        client_id,
        messages = queued.len(),
        dropped,
        "moved session's tail handed over"
    );
    if let (Some(reply), Ok(body)) = (ask.reply, serde_json::to_vec(&Tail { queued, dropped })) {
        let _ = c.client.publish(reply, body.into()).await;
        let _ = c.client.flush().await;
    }
}

/// Client ids held, with the task answering claims for each.
pub type Held = std::sync::Mutex<HashMap<String, tokio::task::JoinHandle<()>>>;

impl Edge {
    /// Claims `client_id` cluster-wide (see [`Cluster::claim`]); `None` alone.
    pub(crate) async fn cluster_claim(self: &Arc<Self>, client_id: &str) -> Option<Handover> {
        match &self.cluster {
            Some(c) => c.claim(self, client_id).await,
            None => None,
        }
    }

    /// Fetches a moved session's tail into `state` (see [`Cluster::tail`]); nothing alone.
    pub(crate) async fn cluster_tail(
        &self,
        client_id: &str,
        ask: TailRequest,
        state: &SessionState,
    ) {
        if let Some(c) = &self.cluster {
            c.tail(self, client_id, ask, state).await;
        }
    }

    /// Called when a session ends or expires: stop holding the id unless the node still keeps
    /// the client's session.
    pub(crate) fn cluster_release(&self, client_id: &str) {
        if let Some(c) = &self.cluster {
            if !self.registry.holds(client_id) {
                c.release(client_id);
            }
        }
    }
}
