//! One stream's feed: the bounded queue between the hub, which fills it and never waits, and
//! the SSE, long-poll or Mercure stream that drains it.
//!
//! The hub's loop calls [`Sender::try_send`] for every stream a message is for; a full feed
//! refuses (the hub counts the loss and tells the stream with a gap event). The hub's one
//! heartbeat clock calls [`Sender::beat`] on every feed. The stream takes with
//! [`Receiver::poll_next`] (an item, else a heartbeat that rang while the feed was empty, else
//! it waits), [`Receiver::try_recv`] or [`Receiver::recv`]; dropping the sender (the hub
//! forgetting the stream) ends the feed once it is empty.
//!
//! Written here rather than taken from tokio: a `tokio::sync::mpsc` channel costs ~550 bytes
//! per stream before its first message (two cache-padded halves and a 32-slot block), a third
//! of what the bridge adds to hyper's own connection for an idle stream; this feed is a
//! mutex-guarded deque that holds no buffer while empty, and the waker of the one task that
//! reads it (a poll function, so an SSE body can read it without a future of its own).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct Inner<T> {
    items: VecDeque<T>,
    /// The sender is gone: nothing more will come.
    closed: bool,
    /// A heartbeat rang and no item has gone out since.
    beat: bool,
    /// The reader, waiting for an item (or a heartbeat).
    waker: Option<Waker>,
}

struct Shared<T> {
    inner: Mutex<Inner<T>>,
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

/// What [`Receiver::poll_next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    Item(T),
    /// The feed is empty and a heartbeat rang since the last item.
    Beat,
    /// The sender is gone and the feed empty.
    Closed,
}

/// A feed holding at most `cap` (at least 1) items.
pub fn feed<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            items: VecDeque::new(),
            closed: false,
            beat: false,
            waker: None,
        }),
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
        let waker = {
            let mut q = self.0.lock();
            if q.items.len() >= self.0.cap {
                return Err(item);
            }
            q.items.push_back(item);
            q.waker.take()
        };
        wake(waker);
        Ok(())
    }

    /// A heartbeat: the reader is told when it next finds the feed empty (an item sent before
    /// then makes it moot).
    pub fn beat(&self) {
        let waker = {
            let mut q = self.0.lock();
            q.beat = true;
            q.waker.take()
        };
        wake(waker);
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut q = self.0.lock();
            q.closed = true;
            q.waker.take()
        };
        wake(waker);
    }
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
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

    /// The oldest item; else, once the sender is gone, [`Next::Closed`]; else a heartbeat
    /// that rang since the last item ([`Next::Beat`], once); else `Pending`, and `cx` is woken
    /// by the next item, heartbeat or the sender's leaving. All read under one lock, so nothing
    /// pushed in between is missed.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next<T>> {
        let mut q = self.0.lock();
        if let Some(item) = pop(&mut q) {
            return Poll::Ready(Next::Item(item));
        }
        if q.closed {
            return Poll::Ready(Next::Closed);
        }
        if std::mem::take(&mut q.beat) {
            return Poll::Ready(Next::Beat);
        }
        match &q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => q.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The oldest item, waiting for one (heartbeats are skipped); `None` once the sender is
    /// gone and the feed empty.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| loop {
            match self.poll_next(cx) {
                Poll::Ready(Next::Item(item)) => return Poll::Ready(Some(item)),
                Poll::Ready(Next::Closed) => return Poll::Ready(None),
                Poll::Ready(Next::Beat) => continue,
                Poll::Pending => return Poll::Pending,
            }
        })
        .await
    }
}

fn pop<T>(q: &mut Inner<T>) -> Option<T> {
    let item = q.items.pop_front()?;
    // An item goes out: the connection is not idle, a pending heartbeat is moot.
    q.beat = false;
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

    /// What `poll_next` says now (without waiting).
    fn next(rx: &mut Receiver<u32>) -> impl std::future::Future<Output = Poll<Next<u32>>> + '_ {
        std::future::poll_fn(move |cx| Poll::Ready(rx.poll_next(cx)))
    }

    #[tokio::test]
    async fn a_heartbeat_is_told_once_and_only_while_empty() {
        let (tx, mut rx) = feed(4);
        assert_eq!(next(&mut rx).await, Poll::Pending);
        tx.beat();
        assert_eq!(next(&mut rx).await, Poll::Ready(Next::Beat));
        assert_eq!(next(&mut rx).await, Poll::Pending);
        // An item after the beat makes it moot.
        tx.beat();
        assert!(tx.try_send(1).is_ok());
        assert_eq!(next(&mut rx).await, Poll::Ready(Next::Item(1)));
        assert_eq!(next(&mut rx).await, Poll::Pending);
        // A waiting reader is woken by the beat; `recv` skips it and waits on.
        let waiting = tokio::spawn(async move {
            let got = std::future::poll_fn(|cx| rx.poll_next(cx)).await;
            (got, rx)
        });
        tokio::task::yield_now().await;
        tx.beat();
        let (got, mut rx) = waiting.await.expect("reader");
        assert_eq!(got, Next::Beat);
        tx.beat();
        let recv = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        assert!(tx.try_send(2).is_ok());
        assert_eq!(recv.await.ok(), Some(Some(2)));
    }
}
