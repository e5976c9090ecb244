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

/// A session's subscriptions by filter as the client wrote it (`$share/…` included), sorted.
///
/// A sorted vector rather than a map: most clients hold one or a few filters, and an idle
/// client's map alone (four buckets at least) cost more than the rest of its subscription.
#[derive(Debug, Clone, Default)]
pub struct Subs(Vec<(String, SubOpts)>);

impl Subs {
    fn find(&self, path: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(p, _)| p.as_str().cmp(path))
    }

    pub fn get(&self, path: &str) -> Option<&SubOpts> {
        self.find(path).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, path: &str) -> bool {
        self.find(path).is_ok()
    }

    /// Adds or replaces; returns the options it replaced.
    pub fn insert(&mut self, path: String, opts: SubOpts) -> Option<SubOpts> {
        match self.find(&path) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, opts)),
            Err(i) => {
                // Exact for the first few (the common case), doubling beyond.
                if self.0.len() < 4 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (path, opts));
                None
            }
        }
    }

    pub fn remove(&mut self, path: &str) -> Option<SubOpts> {
        let i = self.find(path).ok()?;
        let (_, opts) = self.0.remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(opts)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(p, _)| p)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &SubOpts)> {
        self.0.iter().map(|(p, o)| (p, o))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

/// The state of one session.
pub struct SessionState {
    /// Key of this session in the index (new for every new session).
    pub key: u64,
    /// The identity that created it (its subject; `None` for anonymous clients).
    pub owner: Option<String>,
    /// Subscriptions by filter as the client wrote it (`$share/…` included).
    pub subs: Subs,
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
    pub fn new(edge: &Edge, client_id: impl Into<Arc<str>>, owner: Option<String>) -> SessionState {
        let l = &edge.config.limits;
        SessionState {
            key: rand::random::<u64>() | 1,
            owner,
            subs: Subs::default(),
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
        self.index_insert_since(edge, path, opts, src, internal, edge.next_seq());
    }

    /// [`SessionState::index_insert`], for messages from sequence number `since` on (those
    /// accepted before it but not yet fanned out included, when it is lower).
    pub fn index_insert_since(
        &self,
        edge: &Edge,
        path: &str,
        opts: &SubOpts,
        src: u64,
        internal: bool,
        since: u64,
    ) {
        if is_sys(path) {
            return;
        }
        let (filter, group) = split(path);
        if edge
            .index
            .insert(filter, group, self.index_sub(opts, src, internal, since))
        {
            if !internal {
                edge.interest(filter, true);
            }
            edge.cluster_interest(filter, group, true);
        }
    }

    /// Adds subscription `path` of a session made again elsewhere (restored from disk, handed
    /// over by another node, the tail's collector): in the index for messages from sequence
    /// number `since` on, in the session, and counted.
    pub fn restore_sub(&mut self, edge: &Edge, path: String, opts: SubOpts, src: u64, since: u64) {
        self.index_insert_since(edge, &path, &opts, src, false, since);
        if self.subs.insert(path, opts).is_none() {
            edge.stats
                .subscriptions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
