//! What a session is, apart from its connection: subscriptions, inbox, messages in flight, and
//! QoS 2 exchanges half done. A persistent session's state outlives its connection (the
//! [`crate::registry`] keeps it while the client is away, its subscriptions stay in the index and
//! its inbox keeps filling); a clean session's state ends with its connection.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::codec::{Filter, QoS, RetainForwardRule};
use crate::inbox::{Delivery, Inbox};
use crate::index;
use crate::topic;
use crate::Edge;

/// One subscription as the client made it.
#[derive(Debug, Clone)]
pub struct SubOpts {
    pub qos: QoS,
    pub no_local: bool,
    pub rap: bool,
    pub retain_handling: RetainForwardRule,
    pub id: Option<usize>,
}

impl SubOpts {
    pub fn from_filter(f: &Filter, id: Option<usize>) -> SubOpts {
        SubOpts {
            qos: f.qos,
            no_local: f.nolocal,
            rap: f.preserve_retain,
            retain_handling: f.retain_forward_rule.clone(),
            id,
        }
    }

    pub fn to_filter(&self, path: &str) -> Filter {
        let mut f = Filter::new(path, self.qos);
        f.nolocal = self.no_local;
        f.preserve_retain = self.rap;
        f.retain_forward_rule = self.retain_handling.clone();
        f
    }
}

/// A message sent to the client and not yet acknowledged.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Sent (QoS 1, or QoS 2 before PUBREC): sent again with DUP on resume.
    Sent(Delivery),
    /// QoS 2 after PUBREC: PUBREL sent, PUBCOMP awaited (the message's node sequence number,
    /// its key in the session store).
    Released(u64),
}

/// The state of one session.
pub struct SessionState {
    /// Key of this session in the index (new for every new session).
    pub key: u64,
    /// The identity that created it (its subject; `None` for anonymous clients).
    pub owner: Option<String>,
    /// Subscriptions by filter as the client wrote it (`$share/…` included).
    pub subs: HashMap<String, SubOpts>,
    pub inbox: Arc<Inbox>,
    /// Messages in flight towards the client, by packet id, with their sending order.
    pub out: HashMap<u16, (u64, Outgoing)>,
    pub out_seq: u64,
    /// Packet ids of the client's QoS 2 messages received whose PUBREL has not come.
    pub qos2_in: HashSet<u16>,
    pub next_pkid: u16,
    /// When the session expires while its client is away (`None`: never).
    pub expires_at: Option<SystemTime>,
}

impl SessionState {
    pub fn new(edge: &Edge, client_id: &str, owner: Option<String>) -> SessionState {
        let l = &edge.config.limits;
        SessionState {
            key: rand::random::<u64>() | 1,
            owner,
            subs: HashMap::new(),
            inbox: Inbox::new(client_id, l.max_queued, l.max_queued_bytes),
            out: HashMap::new(),
            out_seq: 0,
            qos2_in: HashSet::new(),
            next_pkid: 0,
            expires_at: None,
        }
    }

    /// The index entry for subscription `opts` of this session.
    pub fn index_sub(&self, opts: &SubOpts, src: u64, internal: bool, since: u64) -> index::Sub {
        index::Sub {
            session: self.key,
            inbox: self.inbox.clone(),
            qos: opts.qos,
            no_local: opts.no_local,
            rap: opts.rap,
            id: opts.id,
            src,
            internal,
            since,
        }
    }

    /// Puts subscription `path` in the index (`$SYS` is served by the session itself).
    pub fn index_insert(&self, edge: &Edge, path: &str, opts: &SubOpts, src: u64, internal: bool) {
        if is_sys(path) {
            return;
        }
        let (filter, group) = split(path);
        if edge.index.insert(
            filter,
            group,
            self.index_sub(opts, src, internal, edge.next_seq()),
        ) {
            if !internal {
                edge.interest(filter, true);
            }
            edge.cluster_interest(filter, group, true);
        }
    }

    /// Takes subscription `path` out of the index.
    pub fn index_remove(&self, edge: &Edge, path: &str, internal: bool) {
        if is_sys(path) {
            return;
        }
        let (filter, group) = split(path);
        if edge.index.remove(filter, group, self.key) {
            if !internal {
                edge.interest(filter, false);
            }
            edge.cluster_interest(filter, group, false);
        }
    }

    /// Ends the session: every subscription out of the index, the inbox emptied.
    pub fn discard(self, edge: &Edge, internal: bool) {
        for path in self.subs.keys() {
            self.index_remove(edge, path, internal);
            edge.stats
                .subscriptions
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        while self.inbox.pop().is_some() {}
        if self.inbox.is_persistent() {
            edge.sessions.mark(&self.inbox, false);
            edge.sessions
                .delete_session(&self.inbox.client_id, self.key);
        }
    }
}

/// `$SYS/…` subscriptions are the session's own (the node's statistics).
pub fn is_sys(path: &str) -> bool {
    path.starts_with("$SYS")
}

/// Filter and share group of a subscription path.
pub fn split(path: &str) -> (&str, Option<&str>) {
    match topic::split_shared(path) {
        Some(Ok((group, filter))) => (filter, Some(group)),
        _ => (path, None),
    }
}
