//! Flow control between nodes: a node whose NATS link falls behind asks the others to slow
//! their publishers down until it has caught up.
//!
//! NATS (core) has no flow control: a node that reads its subscriptions more slowly than the
//! other nodes publish to them loses what overflows its client's buffer, QoS 0 and QoS 1/2
//! alike. So the link watches its own backlog ([`Backlog`]: turn after turn finding a full
//! batch of messages waiting, for [`BEHIND_AFTER`]) and, while it is behind, says so on
//! [`SUBJECT`]: at once, again every [`REFRESH`] while it lasts, and "caught up" on its first
//! turn that empties what was waiting (or when nothing comes for a moment). Every node keeps the set of peers that are behind, each until its word expires
//! ([`TTL`]: a node that dies while behind throttles nobody for long). While that set is not
//! empty, a message accepted on this node waits before it goes to NATS ([`Pressure::wait`],
//! at most [`MAX_WAIT`] per message); its publisher's session is not reading meanwhile, so TCP
//! carries the backpressure to the client, as on one node when the fan-out falls behind.
//!
//! Like HiveMQ's cluster overload protection it is global: one node behind slows every
//! publisher of the cluster, whatever the topic (a node does not know which topics the others
//! want). Written here because NATS core and async-nats offer no such thing (JetStream's flow
//! control would put every message through a stream's storage).
//!
//! Data flow: link task → [`Backlog::turn`] → [`Pressure::set_local`] → watch → [`run`] → NATS `rtw.pressure` →
//! [`run`] on the other nodes → their [`Pressure`] set → [`Pressure::wait`] in
//! [`super::Cluster::outbound`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::{Cluster, ClusterStats};
use crate::Edge;

/// Where nodes say they are behind (payload: boot id, then 1 = behind, 0 = caught up).
const SUBJECT: &str = "rtw.pressure";
/// How long the link must find a full batch waiting, turn after turn, to be "behind".
const BEHIND_AFTER: Duration = Duration::from_millis(2);
/// How often a node that is behind says so again.
const REFRESH: Duration = Duration::from_millis(50);
/// How long a peer's word counts without being said again.
const TTL: Duration = Duration::from_millis(1000);
/// Longest one message waits for the peers to catch up.
const MAX_WAIT: Duration = Duration::from_secs(2);
/// Most peers remembered as behind (a word from one more is ignored until some expire).
const MAX_PEERS: usize = 1024;

pub(crate) struct Pressure {
    /// Peers (boot ids) that said they are behind, each until its word expires.
    peers: Mutex<HashMap<u64, Instant>>,
    /// `peers.len()`, read without the lock on every message.
    behind: AtomicUsize,
    /// Rung when `behind` drops to zero.
    caught_up: Notify,
    /// This node's own link: behind or not (read by [`run`]).
    local: watch::Sender<bool>,
}

/// The link's view of its own backlog (the link task's alone).
#[derive(Default)]
pub(super) struct Backlog {
    /// Since when every turn of the link has ended with more waiting.
    since: Option<Instant>,
}

impl Backlog {
    /// The link ended a turn, `full` when it stopped at its batch size with more waiting;
    /// returns whether it is behind.
    pub(super) fn turn(&mut self, full: bool) -> bool {
        if !full {
            self.since = None;
            return false;
        }
        let now = Instant::now();
        now - *self.since.get_or_insert(now) >= BEHIND_AFTER
    }

    /// Did the link's last turn end full?
    pub(super) fn in_streak(&self) -> bool {
        self.since.is_some()
    }
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure {
            peers: Mutex::new(HashMap::new()),
            behind: AtomicUsize::new(0),
            caught_up: Notify::new(),
            local: watch::channel(false).0,
        }
    }
}

impl Pressure {
    /// Sets whether this node's link is behind ([`Backlog::turn`]).
    pub(super) fn set_local(&self, behind: bool) {
        self.local
            .send_if_modified(|b| std::mem::replace(b, behind) != behind);
    }

    /// Is some other node behind (so messages for NATS should wait)?
    pub(super) fn throttling(&self) -> bool {
        self.behind.load(Ordering::Acquire) > 0
    }

    /// Waits until no other node is behind, at most [`MAX_WAIT`].
    pub(super) async fn wait(&self, stats: &ClusterStats) {
        ClusterStats::inc(&stats.throttled);
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            // Made before the check: a catch-up between the two still wakes it.
            let caught_up = self.caught_up.notified();
            if !self.throttling() {
                return;
            }
            if tokio::time::timeout_at(deadline, caught_up).await.is_err() {
                ClusterStats::inc(&stats.throttle_timeouts);
                return;
            }
        }
    }

    /// Peer `boot` said it is behind (`on`) or caught up.
    fn peer(&self, boot: u64, on: bool) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            if peers.len() >= MAX_PEERS && !peers.contains_key(&boot) {
                return;
            }
            peers.insert(boot, Instant::now() + TTL);
        } else {
            peers.remove(&boot);
        }
        self.publish_count(peers.len());
    }

    /// Forgets the peers whose word expired; returns when the next one expires.
    fn expire(&self) -> Option<Instant> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        peers.retain(|_, until| *until > now);
        self.publish_count(peers.len());
        peers.values().min().copied()
    }

    fn publish_count(&self, n: usize) {
        let before = self.behind.swap(n, Ordering::AcqRel);
        if n == 0 && before > 0 {
            self.caught_up.notify_waiters();
        }
    }
}

/// The node's side of the exchange: says when its link is behind, and follows what the other
/// nodes say. Runs for the node's life.
pub(super) async fn run(c: Arc<Cluster>, edge: Arc<Edge>) {
    let mut sub = match c.client.subscribe(SUBJECT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "NATS subscribe failed: this node follows no flow control");
            return;
        }
    };
    let mut local = c.pressure.local.subscribe();
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_expiry: Option<Instant> = None;
    let shutdown = edge.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        let expiry = async {
            match next_expiry {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            changed = local.changed() => {
                if changed.is_err() {
                    return;
                }
                let behind = *local.borrow_and_update();
                if behind {
                    ClusterStats::inc(&c.stats.pressure);
                    tracing::debug!("NATS link behind: asking the other nodes to slow down");
                }
                if !behind {
                    tracing::debug!("NATS link caught up");
                }
                say(&c, behind).await;
            }
            _ = refresh.tick() => {
                if *local.borrow() {
                    say(&c, true).await;
                }
            }
            Some(m) = sub.next() => {
                let p = &m.payload;
                if p.len() == 9 {
                    let boot = u64::from_be_bytes(p[0..8].try_into().unwrap_or_default());
                    if boot != c.boot {
                        tracing::trace!(boot, behind = p[8] == 1, "flow-control word");
                        c.pressure.peer(boot, p[8] == 1);
                        next_expiry = c.pressure.expire();
                    }
                }
            }
            _ = expiry => next_expiry = c.pressure.expire(),
        }
    }
}

async fn say(c: &Cluster, behind: bool) {
    let mut p = BytesMut::with_capacity(9);
    p.put_u64(c.boot);
    p.put_u8(behind as u8);
    let sent = tokio::time::timeout(REFRESH, c.client.publish(SUBJECT, Bytes::from(p))).await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!("flow-control word not handed to NATS");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_peer_behind_holds_messages_until_it_catches_up_or_its_word_expires() {
        let p = Pressure::default();
        let stats = ClusterStats::default();
        assert!(!p.throttling());
        p.wait(&stats).await;
        p.peer(7, true);
        assert!(p.throttling());
        // Caught up: the waiter goes on at once.
        let t0 = Instant::now();
        let waiting = p.wait(&stats);
        tokio::pin!(waiting);
        assert!(futures_util::FutureExt::now_or_never(waiting.as_mut()).is_none());
        p.peer(7, false);
        waiting.await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // A word not said again expires after TTL.
        p.peer(8, true);
        tokio::time::advance(TTL + Duration::from_millis(1)).await;
        assert_eq!(p.expire(), None);
        assert!(!p.throttling());
        // A peer that stays behind holds a message at most MAX_WAIT.
        p.peer(9, true);
        let t0 = Instant::now();
        p.wait(&stats).await;
        assert_eq!(t0.elapsed(), MAX_WAIT);
        assert_eq!(ClusterStats::get(&stats.throttle_timeouts), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_link_is_behind_after_full_turns_for_a_while_and_caught_up_at_the_first_short_one()
    {
        let mut b = Backlog::default();
        assert!(!b.turn(true));
        assert!(b.in_streak());
        tokio::time::advance(BEHIND_AFTER / 2).await;
        assert!(!b.turn(true));
        tokio::time::advance(BEHIND_AFTER / 2).await;
        assert!(b.turn(true));
        assert!(!b.turn(false));
        assert!(!b.in_streak());
        // A new streak starts from its own first full turn.
        assert!(!b.turn(true));
    }
}
