//! A client id is unique across the cluster, and a persistent session follows its client.
//!
//! Data flow: while a node holds a client id (its session is live, or kept for a persistent
//! client that is away) it listens on the id's subject ([`super::subject::client`]). A CONNECT
//! on another node first asks that subject ([`Cluster::claim`]): nobody there is NATS's
//! immediate "no responders" and the connect goes on; otherwise the holder first lets every
//! message NATS delivered to it before the claim reach the session (its link drains, then a
//! fence through its core: a message acknowledged elsewhere before the client came back is not
//! left behind), closes the live connection (MQTT 5 DISCONNECT 0x8E, session taken over), takes
//! the session out of its registry and answers with a [`Handover`]: the owner, the
//! subscriptions and the messages queued or in flight (up to [`MAX_QUEUED_BYTES`] of them; the
//! rest are dropped, counted). The new node resumes the session from it (session present) when
//! the client asked to resume.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{subject, Cluster, ClusterStats};
use crate::codec::QoS;
use crate::durable::record::SubRecord;
use crate::inbox::Delivery;
use crate::message::Message;
use crate::session::state::{Outgoing, SessionState};
use crate::Edge;

/// Most bytes of queued messages a handover carries (NATS's default payload limit is 1 MiB).
pub const MAX_QUEUED_BYTES: usize = 512 * 1024;
/// How long a connect waits for the node that holds its client id.
const CLAIM_WAIT: Duration = Duration::from_secs(8);

/// A subscription in a handover: the session record's [`SubRecord`], under the handover's own
/// (shorter) names.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SubRecord")]
struct SubRec {
    #[serde(rename = "path")]
    filter: String,
    qos: u8,
    #[serde(rename = "nl")]
    no_local: bool,
    #[serde(rename = "rap")]
    retain_as_published: bool,
    #[serde(rename = "rh")]
    retain_handling: u8,
    id: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Sub(#[serde(with = "SubRec")] SubRecord);

#[derive(Debug, Serialize, Deserialize)]
struct Queued {
    frame: Vec<u8>,
    qos: u8,
    retain: bool,
    ids: Vec<usize>,
}

/// A session handed from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handover {
    pub owner: Option<String>,
    subs: Vec<Sub>,
    queued: Vec<Queued>,
    /// Queued messages left behind (over [`MAX_QUEUED_BYTES`]).
    dropped: usize,
}

fn qos(n: u8) -> QoS {
    match n {
        2 => QoS::ExactlyOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::AtMostOnce,
    }
}

impl Handover {
    fn from_state(mut s: SessionState) -> (Handover, SessionState) {
        let subs = s
            .subs
            .iter()
            .map(|(path, o)| Sub(SubRecord::of(path, o)))
            .collect();
        // In flight first (in their sending order), then the queue.
        let mut out: Vec<(u64, Delivery)> = s
            .out
            .drain()
            .filter_map(|(_, (n, o))| match o {
                Outgoing::Sent(d) => Some((n, d)),
                Outgoing::Released(_) => None,
            })
            .collect();
        out.sort_by_key(|(n, _)| *n);
        let mut all: Vec<Delivery> = out.into_iter().map(|(_, d)| d).collect();
        while let Some(d) = s.inbox.pop() {
            all.push(d);
        }
        let (mut queued, mut bytes, mut dropped) = (Vec::new(), 0, 0);
        for d in all {
            match d.msg.frame(0) {
                Ok(f) if bytes + f.len() <= MAX_QUEUED_BYTES => {
                    bytes += f.len();
                    queued.push(Queued {
                        frame: f.to_vec(),
                        qos: d.qos as u8,
                        retain: d.retain,
                        ids: d.ids,
                    });
                }
                _ => dropped += 1,
            }
        }
        let h = Handover {
            owner: s.owner.clone(),
            subs,
            queued,
            dropped,
        };
        (h, s)
    }

    /// The session state on this node: subscriptions (put in the index when the session
    /// resumes) and the queued messages.
    pub fn into_state(self, edge: &Edge, client_id: &str) -> SessionState {
        let st = SessionState::new(edge, client_id, self.owner);
        let mut st = st;
        for Sub(s) in self.subs {
            let Some(opts) = s.opts() else { continue };
            // In the index (and so subscribed on NATS) before the CONNACK; the session's
            // resume checks them against the client's rights.
            st.index_insert(
                edge,
                &s.filter,
                &opts,
                crate::message::client_hash(client_id),
                false,
            );
            if st.subs.insert(s.filter, opts).is_none() {
                edge.stats
                    .subscriptions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        for q in self.queued {
            if let Ok(m) = Message::from_frame(Bytes::from(q.frame)) {
                let d = Delivery {
                    msg: Arc::new(m),
                    qos: qos(q.qos),
                    retain: q.retain,
                    ids: q.ids,
                };
                st.inbox.push(d, &edge.stats);
            }
        }
        st
    }
}

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
/// over and stops holding the id.
async fn respond(
    c: Arc<Cluster>,
    edge: Arc<Edge>,
    client_id: String,
    mut sub: async_nats::Subscriber,
) {
    while let Some(m) = sub.next().await {
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
        let handover = match state {
            Some(s) => {
                let (h, s) = Handover::from_state(s);
                s.discard(&edge, false);
                h
            }
            None => Handover {
                owner,
                subs: Vec::new(),
                queued: Vec::new(),
                dropped: 0,
            },
        };
        drop(claim);
        edge.registry.release(&client_id, conn, None, None);
        ClusterStats::inc(&c.stats.takeovers);
        tracing::info!(client_id, "session taken over by another node");
        if let (Some(reply), Ok(body)) = (m.reply, serde_json::to_vec(&handover)) {
            let _ = c.client.publish(reply, body.into()).await;
            let _ = c.client.flush().await;
        }
        break;
    }
    c.held
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&client_id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handed_over_subscription_keeps_its_wire_names() {
        let json = r#"{"path":"a/+","qos":1,"nl":true,"rap":false,"rh":2,"id":7}"#;
        let Sub(s) = serde_json::from_str(json).unwrap();
        assert_eq!((s.filter.as_str(), s.qos, s.retain_handling), ("a/+", 1, 2));
        assert!(s.no_local && !s.retain_as_published);
        assert_eq!(serde_json::to_string(&Sub(s)).unwrap(), json);
    }
}
