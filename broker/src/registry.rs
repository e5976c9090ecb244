//! Who is connected under which client id, and what is due when they are gone.
//!
//! A new CONNECT claims its client id here: a live session with the same id is told to close
//! (MQTT 5 reason 0x8E) and the new one waits until it has, so the core sees the old session end
//! before the new one resumes it. Delayed will messages and session-expiry purges are timers
//! kept per client id; a reconnect under that id cancels them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::codec::{Filter, Publish};
use crate::persistence::SavedSession;

/// Messages a session's control channel carries.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Close with this MQTT 5 reason code (0x8E takeover, 0x8B shutdown, 0x87 token expired…).
    Kick(u8),
}

/// The timers kept per client id.
#[derive(Debug, Clone, Copy)]
pub enum Timer {
    Will,
    Purge,
}

struct Live {
    conn_id: u64,
    control: mpsc::Sender<Control>,
    alive: watch::Receiver<()>,
}

#[derive(Default)]
struct Entry {
    live: Option<Live>,
    will: Option<JoinHandle<()>>,
    purge: Option<JoinHandle<()>>,
}

/// A disconnected session's subscriptions: filter (with options) and subscription identifier.
type SavedSubs = Vec<(Filter, Option<usize>)>;

/// Client ids and their sessions.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<String, Entry>>,
    /// The subscriptions (with their options and identifier) of sessions that outlive their
    /// connection: the core keeps its half of the session, these are the edge's half.
    /// With when the session expires (`None`: never), for saving it across a restart.
    saved: Mutex<HashMap<String, (SavedSubs, Option<SystemTime>)>>,
    /// Stamps (source, sequence) of the QoS 1/2 messages such a session had sent its client
    /// without an acknowledgement: sent again on resume, they carry DUP (MQTT-3.3.1-1).
    unacked: Mutex<HashMap<String, HashSet<(u64, u64)>>>,
    /// The client packet ids of such a session's QoS 2 deliveries in flight (see [`ResumeIds`]).
    ids: Mutex<HashMap<String, ResumeIds>>,
    /// Such a session's QoS 1/2 messages from the edge itself (see [`LocalPending`]).
    local: Mutex<HashMap<String, LocalPending>>,
}

/// A disconnected session's QoS 1/2 messages that came from the edge, not the core (retained
/// messages sent on subscribe, `$SYS`): the core never saw them, so it cannot send them again;
/// the edge keeps them until the session resumes or expires. Bounded by the session's receive
/// window and `limits.max_queued`.
#[derive(Debug, Default)]
pub struct LocalPending {
    /// Sent and not acknowledged, with their packet ids: sent again with DUP (MQTT-4.4.0-1).
    pub sent: Vec<Publish>,
    /// QoS 2 messages the client has (PUBREC) whose PUBCOMP is outstanding: PUBREL again.
    pub released: Vec<u16>,
    /// Waiting for room in the client's receive window when the connection ended.
    pub queued: Vec<Publish>,
}

impl LocalPending {
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty() && self.released.is_empty() && self.queued.is_empty()
    }
}

/// A disconnected session's QoS 2 deliveries in flight, by the packet id the client knows them
/// by. The client may hold those ids until it gets PUBREL (MQTT-4.3.3), so on resume the same
/// message must come again under the same id, and no other message may take it meanwhile. The
/// core cannot help: it re-sends unacknowledged messages under new ids, and re-sends PUBREL
/// under an id it may already have given to another message.
#[derive(Debug, Default, Clone)]
pub struct ResumeIds {
    /// Core packet id of a PUBREL the core will send again → client packet id.
    pub rel: HashMap<u16, u16>,
    /// Stamp (source, sequence) of a message the core will send again → client packet id.
    pub stamps: HashMap<(u64, u64), u16>,
}

/// Held by a session while it runs; dropping it tells a waiting successor that it is gone.
pub struct Claim {
    _alive: watch::Sender<()>,
}

impl Registry {
    /// Claims `client_id` for connection `conn_id`: cancels pending timers, closes any live
    /// session under the id and waits (bounded) until it has finished.
    pub async fn claim(
        &self,
        client_id: &str,
        conn_id: u64,
        control: mpsc::Sender<Control>,
    ) -> Claim {
        let (alive_tx, alive_rx) = watch::channel(());
        let previous = {
            let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let e = map.entry(client_id.to_string()).or_default();
            if let Some(w) = e.will.take() {
                w.abort();
            }
            if let Some(p) = e.purge.take() {
                p.abort();
            }
            e.live.replace(Live {
                conn_id,
                control,
                alive: alive_rx,
            })
        };
        if let Some(mut old) = previous {
            let _ = old.control.try_send(Control::Kick(0x8E));
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while old.alive.changed().await.is_ok() {}
            })
            .await;
        }
        Claim { _alive: alive_tx }
    }

    /// Forgets connection `conn_id` (if it still holds its id) and arms the given timers.
    pub fn release(
        &self,
        client_id: &str,
        conn_id: u64,
        will: Option<JoinHandle<()>>,
        purge: Option<JoinHandle<()>>,
    ) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = map.get_mut(client_id) else {
            will.inspect(|w| w.abort());
            purge.inspect(|p| p.abort());
            return;
        };
        if e.live.as_ref().is_some_and(|l| l.conn_id != conn_id) {
            // A newer connection owns the id: nothing of ours may fire.
            will.inspect(|w| w.abort());
            purge.inspect(|p| p.abort());
            return;
        }
        e.live = None;
        e.will = will;
        e.purge = purge;
        if e.will.is_none() && e.purge.is_none() {
            map.remove(client_id);
        }
    }

    /// Keeps a disconnected session's subscriptions until it resumes or expires (at
    /// `expires_at`; `None`: never).
    pub fn save_subscriptions(
        &self,
        client_id: &str,
        subs: Vec<(Filter, Option<usize>)>,
        expires_at: Option<SystemTime>,
    ) {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        saved.insert(client_id.to_string(), (subs, expires_at));
    }

    /// The subscriptions saved for `client_id`, forgetting them.
    pub fn take_subscriptions(&self, client_id: &str) -> Vec<(Filter, Option<usize>)> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        saved.remove(client_id).map(|(s, _)| s).unwrap_or_default()
    }

    /// Every disconnected session that outlives its connection (to save at shutdown).
    pub fn saved_sessions(&self) -> Vec<SavedSession> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        saved
            .iter()
            .map(|(id, (subs, expires_at))| SavedSession {
                client_id: id.clone(),
                subs: subs.clone(),
                expires_at: *expires_at,
            })
            .collect()
    }

    /// Takes back a session saved before a restart, with its expiry timer.
    pub fn restore(&self, s: SavedSession, purge: Option<JoinHandle<()>>) {
        if let Some(p) = purge {
            let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(s.client_id.clone()).or_default().purge = Some(p);
        }
        self.save_subscriptions(&s.client_id, s.subs, s.expires_at);
    }

    /// Keeps the stamps of a disconnected session's unacknowledged deliveries.
    pub fn save_unacked(&self, client_id: &str, stamps: HashSet<(u64, u64)>) {
        let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        if stamps.is_empty() {
            unacked.remove(client_id);
        } else {
            unacked.insert(client_id.to_string(), stamps);
        }
    }

    /// The unacknowledged deliveries saved for `client_id`, forgetting them.
    pub fn take_unacked(&self, client_id: &str) -> HashSet<(u64, u64)> {
        let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        unacked.remove(client_id).unwrap_or_default()
    }

    /// Keeps a disconnected session's client packet ids of QoS 2 deliveries in flight.
    pub fn save_ids(&self, client_id: &str, ids: ResumeIds) {
        let mut all = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.rel.is_empty() && ids.stamps.is_empty() {
            all.remove(client_id);
        } else {
            all.insert(client_id.to_string(), ids);
        }
    }

    /// The packet ids saved for `client_id`, forgetting them.
    pub fn take_ids(&self, client_id: &str) -> ResumeIds {
        let mut all = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        all.remove(client_id).unwrap_or_default()
    }

    /// Keeps a disconnected session's messages from the edge.
    pub fn save_local(&self, client_id: &str, pending: LocalPending) {
        let mut all = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if pending.is_empty() {
            all.remove(client_id);
        } else {
            all.insert(client_id.to_string(), pending);
        }
    }

    /// The messages from the edge saved for `client_id`, forgetting them.
    pub fn take_local(&self, client_id: &str) -> LocalPending {
        let mut all = self.local.lock().unwrap_or_else(|e| e.into_inner());
        all.remove(client_id).unwrap_or_default()
    }

    /// Called by a timer task when it has fired: forgets it, and the id once nothing is left.
    pub fn timer_fired(&self, client_id: &str, timer: Timer) {
        if let Timer::Purge = timer {
            self.take_subscriptions(client_id);
            self.take_unacked(client_id);
            self.take_ids(client_id);
            self.take_local(client_id);
        }
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(client_id) {
            match timer {
                Timer::Will => e.will = None,
                Timer::Purge => e.purge = None,
            }
            if e.live.is_none() && e.will.is_none() && e.purge.is_none() {
                map.remove(client_id);
            }
        }
    }

    /// Tells every live session to close with `reason`.
    pub fn kick_all(&self, reason: u8) {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for e in map.values() {
            if let Some(l) = &e.live {
                let _ = l.control.try_send(Control::Kick(reason));
            }
        }
    }

    /// Live sessions.
    pub fn live(&self) -> usize {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|e| e.live.is_some()).count()
    }
}
