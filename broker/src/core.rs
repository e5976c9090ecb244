//! The embedded rumqttd, in process: the node's ordered message log. The only module that names
//! rumqttd.
//!
//! Data flow. rumqttd's router runs on its own thread and is reached only through its in-process
//! links (`rumqttd::local`): no sockets, ports or passwords. Every message that enters the node is
//! a frame ([`crate::message`]); [`Core::publish`] appends it through one of a few ingress links
//! (a publisher always uses the same one, so its order is kept). One egress link subscribes to the
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
//! Flow control. rumqttd never slows a publisher: a reader that falls more than the log's size
//! behind silently skips what was dropped. So the core counts the bytes published and not yet
//! taken by the egress, and [`Core::publish`] waits while that backlog is over a limit well
//! inside the log: nothing accepted is ever lost in the core. A session whose client reads too
//! slowly loses messages only from its own bounded queue, counted (see [`crate::inbox`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::Notification;
use tokio::sync::Notify;

use crate::config;

/// The one topic every frame is appended under.
const NODE_TOPIC: &str = "rtw/node";
/// Ingress links: publishers are spread over them (by connection) so they rarely wait on each
/// other's lock.
const INGRESS: usize = 4;
/// How long a publisher waits for room in the core before the core is declared stuck.
const STUCK: Duration = Duration::from_secs(10);

/// Why the core did not take a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoreError {
    #[error("the broker core is gone")]
    Gone,
    #[error("the broker core did not make room in {0:?}")]
    Stuck(Duration),
}

struct Ingress {
    tx: LinkTx,
    /// The last append could not wake the router: the next one must.
    owed: bool,
}

/// The running core.
pub struct Core {
    ingress: Vec<Mutex<Ingress>>,
    /// Bytes appended and not yet taken by the egress.
    backlog: AtomicUsize,
    /// Most bytes the backlog may hold before publishers wait.
    limit: usize,
    room: Notify,
    up: AtomicBool,
}

/// The reading end: every frame appended to the core, in order.
pub struct Egress {
    rx: LinkRx,
    _tx: LinkTx,
    core: Arc<Core>,
}

impl Core {
    /// Starts rumqttd's router and links its ingress and egress.
    pub fn start(cfg: &config::BrokerConfig) -> anyhow::Result<(Arc<Core>, Egress)> {
        let max_frame = cfg.limits.max_packet_size as usize + 1024;
        let segment_count = cfg.core.segment_count.max(2);
        // A frame never fills a segment on its own.
        let segment_size = cfg.core.segment_size.max(2 * max_frame);
        let router = rumqttd::Router::new(
            0,
            rumqttd::RouterConfig {
                max_connections: INGRESS + 16,
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
        let mut ingress = Vec::with_capacity(INGRESS);
        for i in 0..INGRESS {
            let (tx, _rx, _) = LinkBuilder::new(&format!("rtw-ingress-{i}"), router_tx.clone())
                .dynamic_filters(true)
                .build()
                .context("cannot link to the core")?;
            // Nothing comes back on an ingress link (QoS 0 appends are not acknowledged).
            drop(_rx);
            ingress.push(Mutex::new(Ingress { tx, owed: false }));
        }
        let limit = (segment_size * (segment_count - 1)).saturating_sub(max_frame) / 2;
        if limit < max_frame {
            bail!("core.segment_size is too small for limits.max_packet_size");
        }
        let core = Arc::new(Core {
            ingress,
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
        Ok((core, egress))
    }

    /// Is the core running?
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Appends a frame through ingress link `lane` (any number: it is taken modulo the links),
    /// waiting (bounded) while the core's backlog is over its limit.
    pub async fn publish(&self, lane: usize, frame: Bytes) -> Result<(), CoreError> {
        if !self.is_up() {
            return Err(CoreError::Gone);
        }
        if self.backlog.load(Ordering::Acquire) >= self.limit {
            self.wait_for_room().await?;
        }
        self.backlog.fetch_add(frame.len(), Ordering::AcqRel);
        let mut ing = self.ingress[lane % self.ingress.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // rumqttd's router takes a link's whole buffer when woken, so one wake per empty →
        // non-empty change is enough; a wake per frame would fill its event channel. A
        // non-empty buffer has a wake pending: the frame joins it under the buffer's lock, so
        // the router cannot take the buffer between the check and the push.
        if !ing.owed {
            let mut buf = ing.tx.buffer();
            if !buf.is_empty() {
                let p = Publish::new(Bytes::from_static(NODE_TOPIC.as_bytes()), frame, false);
                buf.push_back(Packet::Publish(p, None));
                return Ok(());
            }
        }
        // Empty (only the router takes from it, and this lane's lock keeps other publishers
        // out), or a wake is owed: append and wake.
        match ing
            .tx
            .try_publish(Bytes::from_static(NODE_TOPIC.as_bytes()), frame)
        {
            Ok(_) => ing.owed = false,
            // The frame is in the buffer; the router was not told. The next append tells it.
            Err(LinkError::TrySend(_)) => ing.owed = true,
            Err(e) => {
                self.up.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "the broker core is gone");
                return Err(CoreError::Gone);
            }
        }
        Ok(())
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

    /// Bytes waiting in the core for the fan-out.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
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

    /// The next frame appended to the core; `None` when the core is gone.
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            let n = match self.rx.next().await {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    self.core.up.store(false, Ordering::Relaxed);
                    self.core.room.notify_waiters();
                    tracing::error!(error = %e, "the broker core is gone");
                    return None;
                }
            };
            match n {
                Notification::Forward(f) => {
                    let frame = f.publish.payload;
                    let before = self.core.backlog.fetch_sub(frame.len(), Ordering::AcqRel);
                    if before >= self.core.limit && before - frame.len() < self.core.limit {
                        self.core.room.notify_waiters();
                    }
                    return Some(frame);
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
