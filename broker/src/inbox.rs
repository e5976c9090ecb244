//! A session's bounded queue of messages to deliver: what the fan-out hands over and the session
//! sends when its client has room.
//!
//! Data flow: the fan-out ([`crate::fanout`]) pushes a [`Delivery`] (the shared message, the QoS
//! it goes out at, the subscription identifiers) and wakes the session; the session takes them in
//! order as its client's receive window allows. The inbox belongs to the session, not to the
//! connection: a persistent session's inbox keeps filling while its client is offline and the
//! next connection drains it.
//!
//! Bounds, like Mosquitto's `max_queued_messages` / `max_queued_bytes`: at most
//! `limits.max_queued` QoS 1/2 messages and `limits.max_queued_bytes` bytes in all. Past either,
//! the newest message is dropped (QoS 0 messages are queued for an offline client too, within the
//! byte bound). Every drop is counted (the session's own count, and the node's `messages_dropped`), and logged at most
//! once a minute per session.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::codec::QoS;
use crate::message::Message;
use crate::stats::Stats;

/// One message for one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// The QoS it goes out at: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// The retain flag it goes out with (retain-as-published).
    pub retain: bool,
    /// Identifiers of the subscriptions it matched.
    pub ids: Vec<usize>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
    /// QoS 1/2 messages among `items`.
    acked: usize,
    last_warn: Option<Instant>,
}

/// The queue, shared by the fan-out (pushes) and the session (takes).
pub struct Inbox {
    q: Mutex<Queue>,
    wake: Notify,
    online: AtomicBool,
    /// The session outlives its connection: the fan-out writes its deliveries to the session
    /// store ([`crate::durable`]) before queuing them here.
    persistent: AtomicBool,
    /// Messages dropped at this inbox's bounds.
    pub dropped: AtomicU64,
    max_acked: usize,
    max_bytes: usize,
    /// For the drop log.
    pub client_id: Arc<str>,
}

impl Inbox {
    pub fn new(client_id: impl Into<Arc<str>>, max_acked: usize, max_bytes: usize) -> Arc<Inbox> {
        Arc::new(Inbox {
            q: Mutex::new(Queue::default()),
            wake: Notify::new(),
            online: AtomicBool::new(true),
            persistent: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            max_acked,
            max_bytes,
            client_id: client_id.into(),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `d` for the session; false (and counted) when a bound drops it.
    pub fn push(&self, d: Delivery, stats: &Stats) -> bool {
        let weight = d.msg.weight();
        let mut q = self.queue();
        let acked = d.qos != QoS::AtMostOnce;
        let full = (acked && q.acked >= self.max_acked) || q.bytes + weight > self.max_bytes;
        if full {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
            stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            if q.last_warn
                .is_none_or(|t| now - t >= Duration::from_secs(60))
            {
                q.last_warn = Some(now);
                tracing::warn!(
                    client_id = &*self.client_id,
                    queued = q.items.len(),
                    dropped = self.dropped.load(Ordering::Relaxed),
                    "session queue full: dropping new messages"
                );
            }
            return false;
        }
        q.bytes += weight;
        q.acked += acked as usize;
        let was_empty = q.items.is_empty();
        q.items.push_back(d);
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Puts `d` back at the head (a message the session could not send yet).
    pub fn unshift(&self, d: Delivery) {
        let mut q = self.queue();
        q.bytes += d.msg.weight();
        q.acked += (d.qos != QoS::AtMostOnce) as usize;
        q.items.push_front(d);
    }

    /// Takes the next message, if any.
    pub fn pop(&self) -> Option<Delivery> {
        let mut q = self.queue();
        let d = q.items.pop_front()?;
        q.bytes = q.bytes.saturating_sub(d.msg.weight());
        q.acked -= (d.qos != QoS::AtMostOnce) as usize;
        if q.items.is_empty() && q.items.capacity() > 64 {
            q.items = VecDeque::new();
        }
        Some(d)
    }

    /// Keeps only the messages `keep` approves, in order.
    pub fn retain(&self, mut keep: impl FnMut(&Delivery) -> bool) {
        let mut q = self.queue();
        q.items.retain(|d| keep(d));
        q.bytes = q.items.iter().map(|d| d.msg.weight()).sum();
        q.acked = q.items.iter().filter(|d| d.qos != QoS::AtMostOnce).count();
    }

    /// Is the next message QoS 1/2 (needs a slot in the client's window)?
    pub fn peek_needs_slot(&self) -> Option<bool> {
        self.queue().items.front().map(|d| d.qos != QoS::AtMostOnce)
    }

    pub fn len(&self) -> usize {
        self.queue().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until a push finds the inbox empty (or one happened since the last wait).
    pub async fn wait(&self) {
        self.wake.notified().await
    }

    /// Marks whether a connection is draining this inbox (share groups prefer online members).
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Sets whether the session is persistent; returns what it was.
    pub fn set_persistent(&self, on: bool) -> bool {
        self.persistent.swap(on, Ordering::AcqRel)
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Acquire)
    }

    /// Would [`Inbox::push`] take `d` now?
    pub fn fits(&self, d: &Delivery) -> bool {
        let q = self.queue();
        let acked = d.qos != QoS::AtMostOnce;
        !((acked && q.acked >= self.max_acked) || q.bytes + d.msg.weight() > self.max_bytes)
    }

    /// Does a QoS `qos` message fit now (for choosing a shared-subscription member)?
    pub fn has_room(&self, qos: QoS) -> bool {
        let q = self.queue();
        if qos == QoS::AtMostOnce {
            q.bytes < self.max_bytes
        } else {
            q.acked < self.max_acked && q.bytes < self.max_bytes
        }
    }
}
