//! Requests that wait for a responder: a bounded queue in arrival order, drained by one task
//! whenever client subscriptions change.
//!
//! Data flow: a call whose request topic has no subscriber (or has requests for it already
//! waiting) takes a [`Ticket`] (none when `rpc.max_waiting` are waiting: the caller gets 429)
//! and waits on it with its own deadline. [`dispatch`] wakes on [`broker::Edge::
//! subscriptions_changed`] and on each new ticket, takes the oldest ticket whose topic now has a
//! subscriber and releases it, then waits (bounded) until that call has published its first
//! message before releasing the next: so a responder that comes back receives the waiting
//! requests in the order they arrived, and shared responders (`$share/…`) each take the next one
//! as the core hands them out. A ticket dropped (timeout, caller gone) leaves the queue at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

/// Longest the dispatcher waits for a released call to publish before releasing the next.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// Tells the dispatcher a released call has published (or given up, when dropped).
pub type Published = oneshot::Sender<()>;

struct Entry {
    id: u64,
    /// The request topic without the correlation level (what arrival order is kept per).
    topic: String,
    /// The topic the request is published on (what a responder's filter must match).
    publish_topic: String,
    go: oneshot::Sender<Published>,
}

/// The waiting requests, oldest first.
pub struct WaitQueue {
    entries: Mutex<VecDeque<Entry>>,
    next_id: AtomicU64,
    max: usize,
    added: Notify,
}

/// A place in the queue; leaves it when dropped.
pub struct Ticket {
    queue: Arc<WaitQueue>,
    id: u64,
    go: Option<oneshot::Receiver<Published>>,
}

impl WaitQueue {
    pub fn new(max: usize) -> WaitQueue {
        WaitQueue {
            entries: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
            max,
            added: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Are requests for `topic` waiting (a new one must queue behind them)?
    pub fn queued_for(&self, topic: &str) -> bool {
        self.lock().iter().any(|e| e.topic == topic)
    }

    /// Joins the queue; `None` when it is full.
    pub fn enter(self: &Arc<Self>, topic: &str, publish_topic: &str) -> Option<Ticket> {
        let (go, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.lock();
            if q.len() >= self.max {
                return None;
            }
            q.push_back(Entry {
                id,
                topic: topic.to_string(),
                publish_topic: publish_topic.to_string(),
                go,
            });
        }
        self.added.notify_one();
        Some(Ticket {
            queue: self.clone(),
            id,
            go: Some(rx),
        })
    }
}

impl Ticket {
    /// Resolves when a responder is there and it is this request's turn; the caller publishes,
    /// then sends on (or drops) what it got.
    pub async fn released(&mut self) -> Option<Published> {
        self.go.as_mut()?.await.ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queue.lock().retain(|e| e.id != self.id);
    }
}

/// Releases waiting requests in arrival order as responders subscribe.
pub async fn dispatch(queue: Arc<WaitQueue>, edge: Arc<broker::Edge>) {
    let mut changes = edge.subscriptions_changed();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = queue.added.notified() => {}
            _ = edge.shutdown_token().cancelled() => return,
        }
        loop {
            let next = {
                let mut q = queue.lock();
                let i = q.iter().position(|e| edge.has_subscriber(&e.publish_topic));
                i.and_then(|i| q.remove(i))
            };
            let Some(entry) = next else { break };
            let (done, published) = oneshot::channel();
            if entry.go.send(done).is_ok() {
                let _ = tokio::time::timeout(PUBLISH_WAIT, published).await;
            }
        }
    }
}
