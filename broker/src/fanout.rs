//! The fan-out: every message out of the core, to every local session that wants it.
//!
//! Data flow: one task reads the core's egress ([`crate::core::Egress`]) in order, takes each
//! frame's `Arc<Message>` (the one it was made from, or the frame decoded when none came with
//! it), looks its topic up in the subscription index
//! ([`crate::index`]) and pushes one [`Delivery`] per matching session into that session's
//! bounded inbox ([`crate::inbox`]). A session matched by several of its filters gets one copy,
//! at the highest of their QoS, with every subscription identifier (MQTT 5 §3.3.4); a share
//! group's copy comes on its own (§4.8.2: a second copy may go to a client that also holds a
//! plain subscription). The task
//! never waits for a session: a full inbox drops the message for that session only, counted.

use std::sync::Arc;

use crate::codec::{qmax, qmin, QoS};
use crate::core::Egress;
use crate::inbox::{Delivery, Inbox};
use crate::message::{Message, Scope};
use crate::Edge;

struct Hit {
    session: u64,
    /// A share group's copy: delivered on its own (MQTT 5 §4.8.2), not merged with the
    /// session's other matches.
    shared: bool,
    inbox: Arc<Inbox>,
    qos: QoS,
    rap: bool,
    id: Option<usize>,
}

/// Runs until the core is gone.
pub async fn run(edge: Arc<Edge>, mut egress: Egress) {
    let mut hits = Vec::new();
    while let Some((frame, decoded)) = egress.next().await {
        edge.sessions.room().await;
        let msg = match decoded {
            Some(m) => Ok(m),
            None => Message::from_frame(frame.clone()).map(Arc::new),
        };
        match msg {
            Ok(m) => {
                let op = deliver(&edge, m.clone(), &frame, &mut hits);
                if m.qos() != QoS::AtMostOnce {
                    edge.sessions.resolve(m.seq, op);
                }
            }
            Err(e) => tracing::error!(error = %e, "dropping a message the core returned"),
        }
    }
    tracing::error!("the broker core stopped: no more messages are delivered");
}

/// Hands `msg` to every matching session; returns the last session-store op it took (0: none).
fn deliver(edge: &Edge, msg: Arc<Message>, frame: &[u8], hits: &mut Vec<Hit>) -> u64 {
    if msg.expiry_left_now() == Some(0) {
        return 0;
    }
    let mut op = 0;
    let topic = msg.topic();
    let reply = topic.starts_with(crate::REPLY_PREFIX);
    hits.clear();
    let mut hit = |s: &crate::index::Sub, shared: bool| {
        // A share group's copy of a message from the cluster comes on its own (Scope::Group).
        if shared && msg.scope == Scope::Plain {
            return;
        }
        // Replies to the bridge's requests are for the bridge alone, whatever the filter.
        if (reply && !s.internal) || (s.no_local && s.src == msg.src) || msg.seq < s.since {
            return;
        }
        hits.push(Hit {
            session: s.session,
            shared,
            inbox: s.inbox.clone(),
            qos: s.qos,
            rap: s.rap,
            id: s.id,
        });
    };
    match &msg.scope {
        Scope::Group(path) => {
            let (filter, group) = crate::session::state::split(path);
            if let Some(g) = group.filter(|_| crate::topic::matches(filter, topic)) {
                edge.index.for_group(filter, g, msg.qos(), hit);
            }
        }
        _ => edge.index.for_each_match(topic, msg.qos(), &mut hit),
    }
    if hits.len() > 1 {
        hits.sort_unstable_by_key(|h| (h.session, h.shared));
    }
    let mut i = 0;
    while i < hits.len() {
        let mut j = i + 1;
        let (mut qos, mut rap) = (hits[i].qos, hits[i].rap);
        let mut ids: Vec<usize> = hits[i].id.into_iter().collect();
        while j < hits.len()
            && !hits[i].shared
            && hits[j].session == hits[i].session
            && !hits[j].shared
        {
            qos = qmax(qos, hits[j].qos);
            rap |= hits[j].rap;
            if let Some(id) = hits[j].id {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            j += 1;
        }
        let d = Delivery {
            msg: msg.clone(),
            qos: qmin(msg.qos(), qos),
            retain: msg.publish.retain && rap,
            ids,
        };
        let inbox = &hits[i].inbox;
        if d.qos != QoS::AtMostOnce && inbox.is_persistent() && inbox.fits(&d) {
            // On disk before any session can send it (and so before its PUBACK can remove it).
            let key = hits[i].session;
            op = edge.sessions.enqueue(key, &d, frame, inbox.is_online());
            if !inbox.push(d, &edge.stats) {
                edge.sessions.remove(key, msg.seq);
            }
        } else {
            inbox.push(d, &edge.stats);
        }
        i = j;
    }
    hits.clear();
    op
}
