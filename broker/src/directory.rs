//! Who is connected, for operators: one [`ClientInfo`] per live client connection, kept in a
//! [`Directory`] sorted by client id (the dashboard's clients table and `/api/clients`).
//!
//! Data flow. A session registers its client once it is accepted ([`Directory::register`]) and
//! keeps the returned [`Handle`]; dropping the handle (the session ends) unregisters it. While it
//! runs, the session writes what changes into its `ClientInfo`: subscriptions as they are made
//! and removed, and once per batch of packets its in-flight and queued counts and its drops
//! (atomics, so readers never wait for a session). Readers page through the ordered map without
//! copying it ([`Directory::page`]) and turn the entries they keep into [`ClientSnapshot`]s.
//! An operator disconnects a client through the session's control channel
//! ([`Directory::kick`], the registry's `Control::Kick`), so the session ends as on any other
//! kick: MQTT 5 clients get DISCONNECT with the reason code given (0x98, administrative action).
//!
//! The node's own in-process sessions (the HTTP bridge's) are not clients: their handles are
//! detached and nothing is listed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::registry::Line;
use crate::transport::Transport;

/// One live client connection.
pub struct ClientInfo {
    /// Shared with the session's inbox and the directory's key: one copy per client.
    pub client_id: Arc<str>,
    /// "3.1.1" or "5".
    pub version: &'static str,
    pub transport: Transport,
    pub peer: SocketAddr,
    /// The user name the client gave at CONNECT, if any.
    pub username: Option<String>,
    /// The authenticated subject (token `sub`, password-file user), if any.
    pub subject: Option<String>,
    pub connected_at: SystemTime,
    line: Arc<Line>,
    /// Filter (as the client wrote it, `$share/…` included) → granted QoS, in filter order.
    /// (A sorted vector: a client holds few filters, and a map's node would cost more.)
    subscriptions: Mutex<Vec<(Box<str>, u8)>>,
    inflight: AtomicU64,
    queued: AtomicU64,
    /// Drops the session counted itself, and those at its queue's bounds (counted there).
    drops: AtomicU64,
    queue_drops: AtomicU64,
}

/// A `ClientInfo` read at one moment, for serializing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientSnapshot {
    pub client_id: String,
    pub protocol_version: &'static str,
    pub transport: &'static str,
    pub peer: String,
    pub username: Option<String>,
    pub subject: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub connected_since_ms: u64,
    pub subscriptions: Vec<SubscriptionSnapshot>,
    pub inflight: u64,
    pub queued: u64,
    pub drops: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriptionSnapshot {
    pub filter: String,
    pub qos: u8,
}

impl ClientInfo {
    /// A client accepted just now; `control` is its session's control channel.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client_id: Arc<str>,
        version: &'static str,
        transport: Transport,
        peer: SocketAddr,
        username: Option<String>,
        subject: Option<String>,
        line: Arc<Line>,
    ) -> ClientInfo {
        ClientInfo {
            client_id,
            version,
            transport,
            peer,
            username,
            subject,
            connected_at: SystemTime::now(),
            line,
            subscriptions: Mutex::new(Vec::new()),
            inflight: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            queue_drops: AtomicU64::new(0),
        }
    }

    /// Does `needle` (lower case) occur in the client id, user name, subject or peer address?
    fn matches(&self, needle: &str) -> bool {
        let has = |s: &str| s.to_lowercase().contains(needle);
        has(&self.client_id)
            || self.username.as_deref().is_some_and(has)
            || self.subject.as_deref().is_some_and(has)
            || has(&self.peer.to_string())
    }

    pub fn snapshot(&self) -> ClientSnapshot {
        let subscriptions = self
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(f, q)| SubscriptionSnapshot {
                filter: f.to_string(),
                qos: *q,
            })
            .collect();
        ClientSnapshot {
            client_id: self.client_id.to_string(),
            protocol_version: self.version,
            transport: self.transport.label(),
            peer: self.peer.to_string(),
            username: self.username.clone(),
            subject: self.subject.clone(),
            connected_since_ms: crate::message::unix_ms(self.connected_at),
            subscriptions,
            inflight: self.inflight.load(Relaxed),
            queued: self.queued.load(Relaxed),
            drops: self.drops.load(Relaxed) + self.queue_drops.load(Relaxed),
        }
    }
}

/// The live clients, by client id.
#[derive(Default)]
pub struct Directory {
    clients: RwLock<BTreeMap<Arc<str>, Arc<ClientInfo>>>,
}

/// A session's entry in the [`Directory`]; unregisters it when dropped. Detached (a no-op) for
/// the node's own sessions.
pub struct Handle {
    entry: Option<(Arc<Directory>, Arc<ClientInfo>)>,
}

impl Handle {
    fn info(&self) -> Option<&ClientInfo> {
        self.entry.as_ref().map(|(_, i)| i.as_ref())
    }

    /// The client holds `filter` now, at `qos` (new, or replaced by a new SUBSCRIBE).
    pub fn subscribed(&self, filter: &str, qos: u8) {
        if let Some(i) = self.info() {
            let mut subs = i.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
            match subs.binary_search_by(|(f, _)| (**f).cmp(filter)) {
                Ok(at) => subs[at].1 = qos,
                Err(at) => {
                    let n = subs.len();
                    if n == subs.capacity() {
                        subs.reserve_exact(n.max(1));
                    }
                    subs.insert(at, (filter.into(), qos));
                }
            }
        }
    }

    /// The client no longer holds `filter`.
    pub fn unsubscribed(&self, filter: &str) {
        if let Some(i) = self.info() {
            let mut subs = i.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(at) = subs.binary_search_by(|(f, _)| (**f).cmp(filter)) {
                subs.remove(at);
            }
        }
    }

    /// Once per batch: messages in flight towards the client, queued behind them, drops the
    /// session made since the last call, and the drops its queue has counted in all.
    pub fn update(&self, inflight: usize, queued: usize, dropped: u64, queue_dropped: u64) {
        if let Some(i) = self.info() {
            i.inflight.store(inflight as u64, Relaxed);
            i.queued.store(queued as u64, Relaxed);
            if dropped > 0 {
                i.drops.fetch_add(dropped, Relaxed);
            }
            i.queue_drops.store(queue_dropped, Relaxed);
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some((dir, info)) = self.entry.take() {
            let mut map = dir.clients.write().unwrap_or_else(|e| e.into_inner());
            // A newer connection under the same id may have taken the entry over.
            if map
                .get(&info.client_id)
                .is_some_and(|c| Arc::ptr_eq(c, &info))
            {
                map.remove(&info.client_id);
            }
        }
    }
}

/// One page of clients.
pub struct Page {
    /// Clients matching the search, over all pages.
    pub total: usize,
    pub clients: Vec<Arc<ClientInfo>>,
}

impl Directory {
    /// Lists `info` until the returned handle is dropped; an older connection under the same
    /// client id (still closing after a takeover) is replaced.
    pub fn register(self: &Arc<Self>, info: ClientInfo) -> Handle {
        if info.transport == Transport::Internal {
            return Handle { entry: None };
        }
        let info = Arc::new(info);
        let mut map = self.clients.write().unwrap_or_else(|e| e.into_inner());
        map.insert(info.client_id.clone(), info.clone());
        Handle {
            entry: Some((self.clone(), info)),
        }
    }

    /// Clients connected now.
    pub fn len(&self) -> usize {
        self.clients.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<ClientInfo>> {
        let map = self.clients.read().unwrap_or_else(|e| e.into_inner());
        map.get(client_id).cloned()
    }

    /// Up to `limit` clients from position `offset`, in client-id order, of those whose id, user
    /// name, subject or peer address contains `search` (case-insensitive; empty: all). Walks the
    /// map in place: only the page's entries are cloned (`Arc`s).
    pub fn page(&self, search: &str, offset: usize, limit: usize) -> Page {
        let map = self.clients.read().unwrap_or_else(|e| e.into_inner());
        let needle = search.trim().to_lowercase();
        if needle.is_empty() {
            return Page {
                total: map.len(),
                clients: map.values().skip(offset).take(limit).cloned().collect(),
            };
        }
        let mut total = 0;
        let mut clients = Vec::new();
        for c in map.values().filter(|c| c.matches(&needle)) {
            if total >= offset && clients.len() < limit {
                clients.push(c.clone());
            }
            total += 1;
        }
        Page { total, clients }
    }

    /// Tells the session of `client_id` to close with `reason` (MQTT 5 DISCONNECT reason code);
    /// the client found, or `None`.
    pub fn kick(&self, client_id: &str, reason: u8) -> Option<Arc<ClientInfo>> {
        let c = self.get(client_id)?;
        c.line.kick(reason);
        Some(c)
    }

    /// Is this very connection still listed (not ended, not replaced)?
    pub fn is_listed(&self, info: &Arc<ClientInfo>) -> bool {
        let map = self.clients.read().unwrap_or_else(|e| e.into_inner());
        map.get(&info.client_id)
            .is_some_and(|c| Arc::ptr_eq(c, info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, t: Transport) -> ClientInfo {
        ClientInfo::new(
            id.into(),
            "5",
            t,
            "127.0.0.1:1".parse().unwrap(),
            Some(format!("user-{id}")),
            None,
            crate::registry::Line::new(),
        )
    }

    #[test]
    fn register_page_search_and_unregister() {
        let dir = Arc::new(Directory::default());
        let handles: Vec<Handle> = (0..25)
            .map(|i| dir.register(info(&format!("c{i:02}"), Transport::Tcp)))
            .collect();
        let internal = dir.register(info("bridge", Transport::Internal));
        assert_eq!(dir.len(), 25);
        let p = dir.page("", 20, 10);
        assert_eq!(p.total, 25);
        let ids: Vec<&str> = p.clients.iter().map(|c| &*c.client_id).collect();
        assert_eq!(ids, ["c20", "c21", "c22", "c23", "c24"]);
        let p = dir.page("USER-C1", 0, 3);
        assert_eq!(p.total, 10);
        assert_eq!(p.clients.len(), 3);
        assert_eq!(&*p.clients[0].client_id, "c10");
        handles[3].subscribed("a/#", 1);
        handles[3].update(2, 5, 1, 2);
        let s = dir.get("c03").unwrap().snapshot();
        assert_eq!(s.subscriptions[0].filter, "a/#");
        assert_eq!((s.inflight, s.queued, s.drops), (2, 5, 3));
        drop(internal);
        drop(handles);
        assert!(dir.is_empty());
    }

    #[test]
    fn a_replaced_connection_does_not_unregister_its_successor() {
        let dir = Arc::new(Directory::default());
        let old = dir.register(info("same", Transport::Tcp));
        let new = dir.register(info("same", Transport::Ws));
        drop(old);
        assert_eq!(dir.get("same").unwrap().transport, Transport::Ws);
        drop(new);
        assert!(dir.get("same").is_none());
    }
}
