//! What a session carries when it moves to another node ([`super::clients`]): its wire form
//! (JSON over NATS) and the conversions to and from this node's session state.
//!
//! A [`Handover`] holds the owner, the subscriptions (under short names) and the messages
//! queued or in flight, each as its frame with its cluster-wide id; a [`Tail`] holds the
//! messages the old node collected while the session moved, which [`merge`] puts in order
//! among those the new node already has.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::QoS;
use crate::durable::record::SubRecord;
use crate::inbox::{Delivery, Inbox};
use crate::message::Message;
use crate::session::state::{Outgoing, SessionState};
use crate::Edge;

/// Most bytes of queued messages a handover carries (NATS's default payload limit is 1 MiB).
pub const MAX_QUEUED_BYTES: usize = 512 * 1024;

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
pub(super) struct Queued {
    frame: Vec<u8>,
    qos: u8,
    retain: bool,
    ids: Vec<usize>,
    /// The message's cluster-wide id ([`Message::identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<(u64, u64)>,
}

/// A session handed from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handover {
    pub owner: Option<String>,
    subs: Vec<Sub>,
    pub(super) queued: Vec<Queued>,
    /// Queued messages left behind (over [`MAX_QUEUED_BYTES`]).
    pub(super) dropped: usize,
    /// Where to ask for the messages that arrive at the old node during the move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tail: Option<String>,
}

/// The old node's answer to [`Handover::tail`]'s question: the messages its collector took.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Tail {
    pub queued: Vec<Queued>,
    pub dropped: usize,
}

/// Where a resumed session asks for its tail, and the ids of the messages it was handed.
pub struct TailRequest {
    pub(super) subject: String,
    handed: HashSet<(u64, u64)>,
}

fn qos(n: u8) -> QoS {
    match n {
        2 => QoS::ExactlyOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::AtMostOnce,
    }
}

/// Deliveries as a handover carries them, up to [`MAX_QUEUED_BYTES`]; how many did not fit.
pub(super) fn carried(all: impl IntoIterator<Item = Delivery>, boot: u64) -> (Vec<Queued>, usize) {
    let (mut queued, mut bytes, mut dropped) = (Vec::new(), 0, 0);
    for d in all {
        match d.msg.frame(0) {
            Ok(f) if bytes + f.len() <= MAX_QUEUED_BYTES => {
                bytes += f.len();
                queued.push(Queued {
                    frame: f.to_vec(),
                    qos: d.qos as u8,
                    retain: d.retain,
                    origin: Some(d.msg.identity(boot)),
                    ids: d.ids,
                });
            }
            _ => dropped += 1,
        }
    }
    (queued, dropped)
}

/// A carried message as a delivery on this node, with its cluster-wide id.
fn delivery(q: Queued) -> Option<Delivery> {
    let mut m = Message::from_frame(Bytes::from(q.frame)).ok()?;
    m.origin = q.origin;
    Some(Delivery {
        msg: Arc::new(m),
        qos: qos(q.qos),
        retain: q.retain,
        ids: q.ids,
    })
}

impl Handover {
    /// The handover of a client id with no session kept.
    pub(super) fn empty(owner: Option<String>) -> Handover {
        Handover {
            owner,
            subs: Vec::new(),
            queued: Vec::new(),
            dropped: 0,
            tail: None,
        }
    }

    pub(super) fn from_state(mut s: SessionState, boot: u64) -> (Handover, SessionState) {
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
        let (queued, dropped) = carried(all, boot);
        let h = Handover {
            owner: s.owner.clone(),
            subs,
            queued,
            dropped,
            tail: None,
        };
        (h, s)
    }

    /// Where to ask for the tail once the session is resumed here (`None`: the old node
    /// offers none).
    pub fn tail_request(&self) -> Option<TailRequest> {
        Some(TailRequest {
            subject: self.tail.clone()?,
            handed: self.queued.iter().filter_map(|q| q.origin).collect(),
        })
    }

    /// The session state on this node: subscriptions (put in the index when the session
    /// resumes) and the queued messages.
    pub fn into_state(self, edge: &Edge, client_id: &str) -> SessionState {
        let mut st = SessionState::new(edge, client_id, self.owner);
        let src = crate::message::client_hash(client_id);
        for Sub(s) in self.subs {
            let Some(opts) = s.opts() else { continue };
            // In the index (and so subscribed on NATS) before the CONNACK; the session's
            // resume checks them against the client's rights.
            st.restore_sub(edge, s.filter, opts, src, edge.next_seq());
        }
        for d in self.queued.into_iter().filter_map(delivery) {
            st.inbox.push(d, &edge.stats);
        }
        st
    }
}

/// A session state holding `of`'s subscriptions and nothing else: the old node's collector of
/// the tail, in the index beside the session it copies until that one is discarded. It takes
/// every message fanned out from now on, those accepted earlier included: `of` is offline, so
/// any of them it gets too stays in its queue and goes with the handover, where the new node
/// finds it twice and keeps it once.
pub(super) fn collector(edge: &Edge, client_id: &str, of: &SessionState) -> SessionState {
    let mut st = SessionState::new(edge, client_id, of.owner.clone());
    let src = crate::message::client_hash(client_id);
    for (path, opts) in of.subs.iter() {
        st.restore_sub(edge, path.clone(), opts.clone(), src, 0);
    }
    st
}

/// Puts a moved session's tail into its queue on the new node, which holds (in order) the
/// messages handed over, then those that came straight here since its subscriptions were made:
/// the handed ones first, then the tail, then the direct ones, each message once (by
/// [`Message::identity`]). Put back at the head of the queue, so whatever the fan-out adds
/// meanwhile stays behind them. Returns how many of each it kept.
pub(super) fn merge(
    inbox: &Inbox,
    ask: TailRequest,
    tail: Tail,
    boot: u64,
) -> (usize, usize, usize) {
    let mut here = Vec::new();
    while let Some(d) = inbox.pop() {
        here.push(d);
    }
    let seen: HashSet<(u64, u64)> = here.iter().map(|d| d.msg.identity(boot)).collect();
    let (handed, direct): (Vec<Delivery>, Vec<Delivery>) = here
        .into_iter()
        .partition(|d| ask.handed.contains(&d.msg.identity(boot)));
    let late: Vec<Delivery> = tail
        .queued
        .into_iter()
        .filter_map(delivery)
        .filter(|d| !seen.contains(&d.msg.identity(boot)))
        .collect();
    let counts = (handed.len(), late.len(), direct.len());
    for d in handed.into_iter().chain(late).chain(direct).rev() {
        inbox.unshift(d);
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Publish;

    /// A QoS 1 delivery of message `n` that came from node 7 (its sequence number there: `n`).
    fn from_node_7(n: u64) -> Delivery {
        let p = Publish::new("t", QoS::AtLeastOnce, format!("m{n}"), None);
        let mut m = Message::new(p, 1);
        m.origin = Some((7, n));
        Delivery {
            msg: Arc::new(m),
            qos: QoS::AtLeastOnce,
            retain: false,
            ids: Vec::new(),
        }
    }

    fn payloads(inbox: &Inbox) -> Vec<String> {
        std::iter::from_fn(|| inbox.pop())
            .map(|d| String::from_utf8_lossy(&d.msg.publish.payload).into_owned())
            .collect()
    }

    #[test]
    fn a_tail_goes_between_the_handed_and_the_direct_messages_each_once() {
        let inbox = Inbox::new("c", 100, 1 << 20);
        let stats = crate::stats::Stats::default();
        // Handed over: 1, 2. Came straight here since: 4, 5.
        for n in [1, 2, 4, 5] {
            inbox.push(from_node_7(n), &stats);
        }
        let ask = TailRequest {
            subject: String::new(),
            handed: [(7, 1), (7, 2)].into_iter().collect(),
        };
        // The old node collected 2 (handed too), 3 and 4 (which also came straight here).
        let (queued, dropped) = carried([2, 3, 4].map(from_node_7), 9);
        let counts = merge(&inbox, ask, Tail { queued, dropped }, 9);
        assert_eq!(counts, (2, 1, 2));
        assert_eq!(payloads(&inbox), ["m1", "m2", "m3", "m4", "m5"]);
    }

    #[test]
    fn a_handed_over_subscription_keeps_its_wire_names() {
        let json = r#"{"path":"a/+","qos":1,"nl":true,"rap":false,"rh":2,"id":7}"#;
        let Sub(s) = serde_json::from_str(json).unwrap();
        assert_eq!((s.filter.as_str(), s.qos, s.retain_handling), ("a/+", 1, 2));
        assert!(s.no_local && !s.retain_as_published);
        assert_eq!(serde_json::to_string(&Sub(s)).unwrap(), json);
    }
}
