//! Who is connected under which client id, and what is due when they are gone.
//!
//! A new CONNECT claims its client id here: a live session with the same id is told to close
//! (MQTT 5 reason 0x8E) and the new one waits until it has, so the old session's state is back
//! here before the new one takes it. Persistent sessions whose client is away wait here too.
//! Delayed will messages and session-expiry purges are timers kept per client id; a reconnect
//! under that id cancels them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::persistence::SavedSession;
use crate::session::state::SessionState;

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

/// Client ids and their sessions.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<String, Entry>>,
    /// Persistent sessions whose client is away: their subscriptions stay in the index and their
    /// inboxes keep filling until the client resumes or the session expires.
    offline: Mutex<HashMap<String, SessionState>>,
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

    /// Keeps a persistent session while its client is away.
    pub fn store_offline(&self, client_id: &str, state: SessionState) {
        let mut m = self.offline.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(client_id.to_string(), state);
    }

    /// Is `client_id` connected, or its session kept, here?
    pub fn holds(&self, client_id: &str) -> bool {
        let live = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client_id)
            .is_some_and(|e| e.live.is_some());
        live || self
            .offline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(client_id)
    }

    /// Takes the session `client_id` left, if any.
    pub fn take_offline(&self, client_id: &str) -> Option<SessionState> {
        let mut m = self.offline.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(client_id)
    }

    /// Every persistent session whose client is away (to save at shutdown).
    pub fn saved_sessions(&self) -> Vec<SavedSession> {
        let m = self.offline.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|(id, s)| SavedSession {
                client_id: id.clone(),
                owner: s.owner.clone(),
                subs: crate::session::state::saved_subs(s),
                expires_at: s.expires_at,
            })
            .collect()
    }

    /// Arms the expiry timer of a session restored at start.
    pub fn set_purge(&self, client_id: &str, purge: JoinHandle<()>) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(client_id.to_string()).or_default().purge = Some(purge);
    }

    /// Persistent sessions whose client is away.
    pub fn offline_count(&self) -> usize {
        self.offline.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Called by a timer task when it has fired: forgets it, and the id once nothing is left.
    pub fn timer_fired(&self, client_id: &str, timer: Timer) {
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
