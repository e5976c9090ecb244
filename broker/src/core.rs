//! The embedded rumqttd, in process: the node's ordered message log. The only module that names
//! rumqttd.
//!
//! Data flow. rumqttd's router runs on its own thread and is reached only through its in-process
//! links (`rumqttd::local`): no sockets, ports or passwords. Every message that enters the node is
//! a frame ([`crate::message`]); [`Core::publish`] queues it and the [`Doorbell`] hands the
//! queue's batch to the ingress link, waking the router once per batch, not per message. One
//! queue and one link keep one order for the whole node: a message appended (and so acknowledged)
//! before another is published is delivered before it, whoever published them, as a
//! single-threaded broker such as Mosquitto does. One egress link subscribes to the
//! node's topic and its [`Egress`] hands every frame, in order, to the edge's fan-out
//! ([`crate::fanout`]), which matches it against the edge's subscription index and queues it for
//! each local session. A link to another node will be one more link here.
//!
//! Why the core carries one topic and not the clients' topics: rumqttd keeps a log for every
//! filter ever subscribed and a cache entry for every topic ever published, for the life of the
//! process (a connect/subscribe/disconnect loop grew it by 1 GB; every RPC reply topic is new), and
//! it keeps per-connection state that made an idle client cost ~30 KB. The edge's own index (a
//! trie that gives memory back when a filter goes) does the matching; rumqttd keeps the one log,
//! bounded by `core.segment_size` × `core.segment_count`, whose every byte it counts.
//!
//! Decoded once. A frame appended with the message it was made from (every message accepted on
//! this node: [`crate::Edge::route`]) comes out of the egress with that message, so the fan-out
//! does not decode what the node just encoded; the message waits beside the frame in a queue of
//! its own, matched by the frame's sequence number.
//!
//! Fences. [`Core::fence`] appends a marker instead of a frame and returns once the egress
//! reaches it, that is once the fan-out has handed every frame appended before it to the
//! sessions' queues (the fan-out takes the next frame only when it is done with the last). A
//! cluster node uses it before it hands a session to another node, so the messages it accepted
//! for that session go with it.
//!
//! Flow control. rumqttd never slows a publisher: a reader that falls more than the log's size
//! behind silently skips what was dropped. So the core counts the bytes published and not yet
//! taken by the egress, and [`Core::publish`] waits while that backlog is over a limit well
//! inside the log: nothing accepted is ever lost in the core. A session whose client reads too
//! slowly loses messages only from its own bounded queue, counted (see [`crate::inbox`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::Notification;
use tokio::sync::{oneshot, Notify};

use crate::config;
use crate::message::{frame_seq, Message};

/// The one topic every frame is appended under.
const NODE_TOPIC: &str = "rtw/node";
/// How long a publisher waits for room in the core before the core is declared stuck.
const STUCK: Duration = Duration::from_secs(10);
/// The payload of a fence's marker (a frame starts with its format, 1).
const FENCE: &[u8] = &[0];

/// Why the core did not take a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoreError {
    #[error("the broker core is gone")]
    Gone,
    #[error("the broker core did not make room in {0:?}")]
    Stuck(Duration),
}

/// The running core.
pub struct Core {
    /// Frames appended and not yet handed to rumqttd, in the order they were appended. The lock is
    /// held only to push a frame or to swap the queue out.
    queue: Mutex<VecDeque<Bytes>>,
    /// The messages of the frames on their way that came with one, in the frames' order: pushed
    /// with the frame, under the queue's lock.
    decoded: Mutex<VecDeque<Arc<Message>>>,
    /// The fences whose markers are on their way, in the markers' order: pushed with the marker,
    /// under the queue's lock.
    fences: Mutex<VecDeque<oneshot::Sender<()>>>,
    /// Rung when the queue stops being empty: the [`Doorbell`] hands it over.
    bell: Notify,
    /// Bytes appended and not yet taken by the egress.
    backlog: AtomicUsize,
    /// Most bytes the backlog may hold before publishers wait.
    limit: usize,
    room: Notify,
    up: AtomicBool,
}

/// Hands what publishers appended to rumqttd's router, a batch at a time.
///
/// Waking the router is a futex wake of its thread (and, on its way out, one of the egress): a
/// wake per message cost more than the rest of an HTTP publish. Publishers only queue their
/// frame and ring; the doorbell first lets the runtime finish the round of tasks that are ready
/// (so their frames join the batch), then moves the queue into its link's buffer and wakes the
/// router once.
pub struct Doorbell {
    core: Arc<Core>,
    link: LinkTx,
    /// The queue swapped in while the frames are handed over (keeps its capacity).
    spare: VecDeque<Bytes>,
}

/// The reading end: every frame appended to the core, in order.
pub struct Egress {
    rx: LinkRx,
    _tx: LinkTx,
    core: Arc<Core>,
}

impl Core {
    /// Starts rumqttd's router and links its ingress and egress. The [`Doorbell`] must be run
    /// (spawned) for appended frames to reach the router.
    pub fn start(cfg: &config::BrokerConfig) -> anyhow::Result<(Arc<Core>, Doorbell, Egress)> {
        let max_frame = cfg.limits.max_packet_size as usize + 1024;
        let segment_count = cfg.core.segment_count.max(2);
        // A frame never fills a segment on its own.
        let segment_size = cfg.core.segment_size.max(2 * max_frame);
        let router = rumqttd::Router::new(
            0,
            rumqttd::RouterConfig {
                max_connections: 16,
                max_outgoing_packet_count: 256,
                max_segment_size: segment_size,
                max_segment_count: segment_count,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
        );
        let router_tx = router.spawn();
        // The links' set-up waits on the router thread; it answers at once.
        let (mut etx, erx, _) = LinkBuilder::new("rtw-egress", router_tx.clone())
            .build()
            .context("cannot link to the core")?;
        etx.subscribe(NODE_TOPIC).context("core subscribe")?;
        let (link, _rx, _) = LinkBuilder::new("rtw-ingress", router_tx.clone())
            .dynamic_filters(true)
            .build()
            .context("cannot link to the core")?;
        // Nothing comes back on the ingress link (QoS 0 appends are not acknowledged).
        drop(_rx);
        let limit = (segment_size * (segment_count - 1)).saturating_sub(max_frame) / 2;
        if limit < max_frame {
            bail!("core.segment_size is too small for limits.max_packet_size");
        }
        let core = Arc::new(Core {
            queue: Mutex::new(VecDeque::new()),
            decoded: Mutex::new(VecDeque::new()),
            fences: Mutex::new(VecDeque::new()),
            bell: Notify::new(),
            backlog: AtomicUsize::new(0),
            limit,
            room: Notify::new(),
            up: AtomicBool::new(true),
        });
        let mut egress = Egress {
            rx: erx,
            _tx: etx,
            core: core.clone(),
        };
        egress.await_suback()?;
        tracing::debug!(segment_size, segment_count, limit, "core ready");
        let doorbell = Doorbell {
            core: core.clone(),
            link,
            spare: VecDeque::new(),
        };
        Ok((core, doorbell, egress))
    }

    /// Is the core running?
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Appends a frame (with the message it was made from, if it is at hand) after every frame
    /// appended before it returned, waiting (bounded) while the core's backlog is over its limit.
    pub async fn publish(&self, frame: Bytes, msg: Option<Arc<Message>>) -> Result<(), CoreError> {
        if !self.is_up() {
            return Err(CoreError::Gone);
        }
        if self.backlog.load(Ordering::Acquire) >= self.limit {
            self.wait_for_room().await?;
        }
        self.append(frame, msg, None);
        Ok(())
    }

    /// Returns once every frame appended before it has been handed to the fan-out's sessions
    /// (bounded: the core is stuck past [`STUCK`]).
    pub async fn fence(&self) -> Result<(), CoreError> {
        if !self.is_up() {
            return Err(CoreError::Gone);
        }
        let (tx, rx) = oneshot::channel();
        self.append(Bytes::from_static(FENCE), None, Some(tx));
        match tokio::time::timeout(STUCK, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CoreError::Gone),
            Err(_) => Err(CoreError::Stuck(STUCK)),
        }
    }

    /// Queues `frame` (with its message, or a fence's marker with its `fence`) and rings if the
    /// queue was empty.
    fn append(&self, frame: Bytes, msg: Option<Arc<Message>>, fence: Option<oneshot::Sender<()>>) {
        self.backlog.fetch_add(frame.len(), Ordering::AcqRel);
        let first = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = msg {
                self.decoded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(m);
            }
            if let Some(f) = fence {
                self.fences
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(f);
            }
            q.push_back(frame);
            q.len() == 1
        };
        // A queue that was not empty has rung already and not been handed over yet.
        if first {
            self.bell.notify_one();
        }
    }

    fn gone(&self, e: &LinkError) {
        self.up.store(false, Ordering::Relaxed);
        self.room.notify_waiters();
        // Their waiters learn it at once.
        self.fences
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        tracing::error!(error = %e, "the broker core is gone");
    }

    async fn wait_for_room(&self) -> Result<(), CoreError> {
        let wait = async {
            loop {
                let notified = self.room.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.backlog.load(Ordering::Acquire) < self.limit || !self.is_up() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(STUCK, wait)
            .await
            .map_err(|_| CoreError::Stuck(STUCK))?;
        if self.is_up() {
            Ok(())
        } else {
            Err(CoreError::Gone)
        }
    }

    /// The message that came with `frame`, if any. Frames leave in the order they came with
    /// their messages; one whose frame never came out (none should) is passed over.
    fn decoded_of(&self, frame: &[u8]) -> Option<Arc<Message>> {
        let seq = frame_seq(frame);
        let mut d = self.decoded.lock().unwrap_or_else(|e| e.into_inner());
        let at = d.iter().position(|m| m.seq == seq)?;
        d.drain(..at);
        d.pop_front()
    }

    /// Bytes waiting in the core for the fan-out.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }
}

impl Doorbell {
    /// Runs until the core is gone.
    pub async fn run(mut self) {
        while self.core.is_up() {
            self.core.bell.notified().await;
            // Let the tasks that are ready now append too: one wake for all of them.
            tokio::task::yield_now().await;
            if let Err(e) = self.hand_over().await {
                self.core.gone(&e);
                return;
            }
        }
    }

    /// Moves the queued frames into the link's buffer and wakes the router for them.
    async fn hand_over(&mut self) -> Result<(), LinkError> {
        std::mem::swap(
            &mut *self.core.queue.lock().unwrap_or_else(|e| e.into_inner()),
            &mut self.spare,
        );
        let Some(last) = self.spare.pop_back() else {
            return Ok(());
        };
        let packet = |frame| {
            let p = Publish::new(Bytes::from_static(NODE_TOPIC.as_bytes()), frame, false);
            Packet::Publish(p, None)
        };
        let link = &mut self.link;
        if !self.spare.is_empty() {
            // rumqttd's router takes a link's whole buffer when woken: the frames before the
            // last one need no wake of their own.
            link.buffer().extend(self.spare.drain(..).map(packet));
        }
        // Appends the last frame and wakes the router.
        let topic = Bytes::from_static(NODE_TOPIC.as_bytes());
        let mut frame = last;
        let since = std::time::Instant::now();
        loop {
            match link.try_publish(topic.clone(), frame) {
                Ok(_) => return Ok(()),
                // The router's event channel is full (it has a thousand wakes to read): the
                // frame is in the buffer, the router was not told. Tell it once there is room,
                // with an empty frame (the egress skips those), as long as the core is not stuck.
                Err(LinkError::TrySend(e)) if since.elapsed() < STUCK => {
                    tracing::debug!(error = %e, "the core's router is busy");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    frame = Bytes::new();
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Egress {
    fn await_suback(&mut self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.rx.recv_deadline(deadline) {
                Ok(Some(Notification::DeviceAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => bail!("the core did not acknowledge its subscription: {e}"),
            }
        }
    }

    /// The next frame appended to the core, with the message it was made from if that came
    /// along; `None` when the core is gone.
    pub async fn next(&mut self) -> Option<(Bytes, Option<Arc<Message>>)> {
        loop {
            let n = match self.rx.next().await {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    self.core.gone(&e);
                    return None;
                }
            };
            match n {
                // A wake-up with no message (see `Doorbell::hand_over`).
                Notification::Forward(f) if f.publish.payload.is_empty() => {}
                Notification::Forward(f) => {
                    let frame = f.publish.payload;
                    let before = self.core.backlog.fetch_sub(frame.len(), Ordering::AcqRel);
                    if before >= self.core.limit && before - frame.len() < self.core.limit {
                        self.core.room.notify_waiters();
                    }
                    if frame.as_ref() == FENCE {
                        // The fan-out is done with every frame before it.
                        let fence = self
                            .core
                            .fences
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .pop_front();
                        if let Some(f) = fence {
                            let _ = f.send(());
                        }
                        continue;
                    }
                    let msg = self.core.decoded_of(&frame);
                    return Some((frame, msg));
                }
                // The router paused this link because its buffer was full: it is drained now.
                Notification::Unschedule if self.rx.wake().await.is_err() => {
                    self.core.up.store(false, Ordering::Relaxed);
                    return None;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A core with its doorbell running, as the node starts it.
    fn started() -> (Arc<Core>, Egress) {
        let cfg = config::BrokerConfig::local(
            "127.0.0.1:0".parse().expect("address"),
            std::env::temp_dir(),
        );
        let (core, doorbell, egress) = Core::start(&cfg).expect("core");
        tokio::spawn(doorbell.run());
        (core, egress)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fence_returns_once_every_frame_before_it_was_taken() {
        let (core, mut egress) = started();
        // A slow reader: each frame takes a little while to hand on.
        let taken = Arc::new(AtomicU64::new(0));
        let counter = taken.clone();
        tokio::spawn(async move {
            while let Some((frame, msg)) = egress.next().await {
                assert_eq!((frame.len(), msg.is_none()), (100, true));
                tokio::time::sleep(Duration::from_micros(200)).await;
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        for _ in 0..300 {
            core.publish(Bytes::from(vec![1u8; 100]), None)
                .await
                .expect("publish");
        }
        core.fence().await.expect("fence");
        assert_eq!(taken.load(Ordering::SeqCst), 300);
        // Fences keep their order among frames too.
        core.publish(Bytes::from(vec![1u8; 100]), None)
            .await
            .expect("publish");
        core.fence().await.expect("fence");
        assert_eq!(taken.load(Ordering::SeqCst), 301);
        assert_eq!(core.backlog(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_comes_out_with_the_message_it_was_made_from() {
        let (core, mut egress) = started();
        let mut sent = Vec::new();
        for seq in 1..=50u64 {
            let p = crate::codec::Publish::new(
                format!("t/{seq}"),
                crate::codec::QoS::AtLeastOnce,
                vec![seq as u8; 10],
                None,
            );
            let msg = Message::new(p, 7);
            let frame = msg.frame(seq).expect("frame");
            // Every third one without its message: the fan-out decodes those.
            let decoded =
                (seq % 3 != 0).then(|| Arc::new(msg.routed(&frame, seq).expect("routed")));
            sent.push(decoded.clone());
            core.publish(frame, decoded).await.expect("publish");
        }
        for (i, want) in sent.into_iter().enumerate() {
            let (frame, got) = egress.next().await.expect("frame");
            assert_eq!(frame_seq(&frame), i as u64 + 1);
            match (want, got) {
                (Some(w), Some(g)) => {
                    assert!(Arc::ptr_eq(&w, &g));
                    // Topic and payload live in the frame.
                    let range = frame.as_ptr_range();
                    assert!(range.contains(&g.publish.topic.as_ptr()));
                    assert!(range.contains(&g.publish.payload.as_ptr()));
                }
                (None, None) => {}
                (w, g) => panic!("frame {}: sent {w:?}, got {g:?}", i + 1),
            }
        }
    }
}
