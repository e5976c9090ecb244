//! One stream's feed: the bounded queue between the hub, which fills it and never waits, and
//! the SSE, long-poll or Mercure stream that drains it.
//!
//! The hub's loop calls [`Sender::try_send`] for every stream a message is for; a full feed
//! refuses (the hub counts the loss and tells the stream with a gap event). The stream takes
//! with [`Receiver::try_recv`] / [`Receiver::recv`]; dropping the sender (the hub forgetting
//! the stream) ends `recv` once the feed is empty.
//!
//! Written here rather than taken from tokio: a `tokio::sync::mpsc` channel costs ~550 bytes
//! per stream before its first message (two cache-padded halves and a 32-slot block), a third
//! of what the bridge adds to hyper's own connection for an idle stream; this feed is a
//! mutex-guarded deque that holds no buffer while empty, and one wake-up.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

struct Inner<T> {
    items: VecDeque<T>,
    /// The sender is gone: nothing more will come.
    closed: bool,
}

struct Shared<T> {
    inner: Mutex<Inner<T>>,
    ready: Notify,
    cap: usize,
    /// Items refused since the reader last reported a loss (see [`Sender::lagged`]).
    lagged: AtomicU64,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The hub's end.
pub struct Sender<T>(Arc<Shared<T>>);

/// The stream's end.
pub struct Receiver<T>(Arc<Shared<T>>);

/// The feed is empty (it may still be filled later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

/// A feed holding at most `cap` (at least 1) items.
pub fn feed<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            items: VecDeque::new(),
            closed: false,
        }),
        ready: Notify::new(),
        cap: cap.max(1),
        lagged: AtomicU64::new(0),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// The feed's loss count, which the two ends share: the hub adds what it could not queue
    /// (and queues nothing more while it is not zero); the stream reports and clears it.
    pub fn lagged(&self) -> &AtomicU64 {
        &self.0.lagged
    }

    /// Queues `item`, or gives it back when the feed is full.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        {
            let mut q = self.0.lock();
            if q.items.len() >= self.0.cap {
                return Err(item);
            }
            q.items.push_back(item);
        }
        self.0.ready.notify_one();
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_one();
    }
}

impl<T> Receiver<T> {
    /// The loss count (see [`Sender::lagged`]).
    pub fn lagged(&self) -> &AtomicU64 {
        &self.0.lagged
    }

    /// The oldest item, if one is queued.
    pub fn try_recv(&mut self) -> Result<T, Empty> {
        pop(&mut self.0.lock()).ok_or(Empty)
    }

    /// The oldest item, waiting for one; `None` once the sender is gone and the feed empty.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                // Emptiness and the sender's leaving, read under one lock.
                let mut q = self.0.lock();
                if let Some(item) = pop(&mut q) {
                    return Some(item);
                }
                if q.closed {
                    return None;
                }
            }
            // A push after the check above stored a permit in `ready`: the wait ends at once.
            self.0.ready.notified().await;
        }
    }
}

fn pop<T>(q: &mut Inner<T>) -> Option<T> {
    let item = q.items.pop_front()?;
    if q.items.is_empty() && q.items.capacity() > 64 {
        // A burst is over: give its buffer back.
        q.items = VecDeque::new();
    }
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_in_order_and_ends_with_its_sender() {
        let (tx, mut rx) = feed(2);
        assert_eq!(rx.try_recv(), Err(Empty));
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert_eq!(tx.try_send(3), Err(3));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Ok(2));
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx.recv().await)
        });
        tokio::task::yield_now().await;
        assert!(tx.try_send(4).is_ok());
        drop(tx);
        assert_eq!(waiting.await.ok(), Some((Some(4), None)));
    }
}
