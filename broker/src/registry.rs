//! Who is connected under which client id, and what is due when they are gone.
//!
//! A new CONNECT claims its client id here: a live session with the same id is told to close
//! (MQTT 5 reason 0x8E) and the new one waits until it has, so the old session's state is back
//! here before the new one takes it. Persistent sessions whose client is away wait here too.
//! Delayed will messages and session-expiry purges are timers kept per client id; a reconnect
//! under that id cancels them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::session::state::SessionState;

/// The broker's line to one running session: a request to close, one way, and "it has ended",
/// the other. (A few atomics and two wake-ups: every connection has one.)
#[derive(Default)]
pub struct Line {
    /// The MQTT 5 reason code to close with (0x8E takeover, 0x8B shutdown, 0x98 by an
    /// operator…); 0 while nobody asked. The first request wins.
    kick: AtomicU8,
    kicked: Notify,
    ended: AtomicBool,
    on_end: Notify,
}

impl Line {
    pub fn new() -> Arc<Line> {
        Arc::new(Line::default())
    }

    /// Asks the session to close with `reason`.
    pub fn kick(&self, reason: u8) {
        if self
            .kick
            .compare_exchange(0, reason.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.kicked.notify_one();
        }
    }

    /// Resolves once the session is asked to close, with the reason.
    pub async fn kicked(&self) -> u8 {
        loop {
            let code = self.kick.load(Ordering::Acquire);
            if code != 0 {
                return code;
            }
            self.kicked.notified().await;
        }
    }

    /// Resolves once the session has ended (its [`Claim`] dropped).
    async fn ended(&self) {
        while !self.ended.load(Ordering::Acquire) {
            self.on_end.notified().await;
        }
    }
}

/// The timers kept per client id.
#[derive(Debug, Clone, Copy)]
pub enum Timer {
    Will,
    Purge,
}

struct Live {
    conn_id: u64,
    line: Arc<Line>,
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
    line: Arc<Line>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.line.ended.store(true, Ordering::Release);
        self.line.on_end.notify_one();
    }
}

impl Registry {
    /// Claims `client_id` for connection `conn_id`: cancels pending timers, closes any live
    /// session under the id and waits (bounded) until it has finished.
    pub async fn claim(&self, client_id: &str, conn_id: u64, line: Arc<Line>) -> Claim {
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
                line: line.clone(),
            })
        };
        if let Some(old) = previous {
            old.line.kick(0x8E);
            let _ = tokio::time::timeout(Duration::from_secs(5), old.line.ended()).await;
        }
        Claim { line }
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

    /// Client ids of the persistent sessions whose client is away.
    pub fn offline_ids(&self) -> Vec<String> {
        let m = self.offline.lock().unwrap_or_else(|e| e.into_inner());
        m.keys().cloned().collect()
    }

    /// Arms the delayed will of a session restored at start.
    pub fn set_will(&self, client_id: &str, will: JoinHandle<()>) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(client_id.to_string()).or_default().will = Some(will);
    }

    /// Arms the expiry timer of a session restored at start.
    pub fn set_purge(&self, client_id: &str, purge: JoinHandle<()>) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(client_id.to_string()).or_default().purge = Some(purge);
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
                l.line.kick(reason);
            }
        }
    }

    /// Live sessions.
    pub fn live(&self) -> usize {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|e| e.live.is_some()).count()
    }
}
