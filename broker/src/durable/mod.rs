//! Persistent sessions on disk: no acknowledged message is lost to a crash.
//!
//! Data flow. Every change to a persistent session (clean session 0 / session expiry > 0) is an
//! [`Op`] queued, in order, to one writer thread ([`writer`]) that groups whatever is waiting
//! into one redb transaction in `storage.dir/sessions.redb` and commits it (fsync'd), then
//! advances the store's watermark: the number of the last op on disk ([`SessionStore::done`]).
//!
//! * The fan-out ([`crate::fanout`]) is the only place that knows which sessions a message
//!   matches: for each persistent session it queues the delivery (QoS 1/2 only) before pushing it
//!   into the session's inbox, then tells the message's publisher, by the message's node
//!   sequence number, which op it must see on disk ([`SessionStore::resolve`]). A publisher
//!   registered the sequence before handing the message to the core ([`SessionStore::expect`])
//!   and sends PUBACK/PUBREC (HTTP: 200) only once the watermark passed it ([`Waiter::wait`]).
//!   A message no persistent session wants is resolved at once.
//! * A session queues its own changes and holds what it writes to its client until they are on
//!   disk (its *barrier*): the session record on CONNECT, SUBSCRIBE, UNSUBSCRIBE and disconnect;
//!   a QoS 2 message's packet id before the PUBLISH goes out; a PUBREC'd message's release
//!   before PUBREL; the client's own QoS 2 packet ids before PUBREC and PUBCOMP. Messages the
//!   client acknowledged are removed (batched with everything else, nobody waits for those).
//! * At startup, [`recover`] puts every stored session back into the registry's offline map, its
//!   subscriptions into the index and its messages into its inbox and in-flight map, before
//!   any client can connect.
//!
//! A commit that fails (disk full, I/O error) is counted; every publisher waiting on an op at
//! or before it is refused (MQTT 5 0x80, 3.1.1 connection closed, HTTP 503), and the database is
//! reopened for the next batch, as the retained store does.

pub(crate) mod record;
mod recover;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use std::sync::mpsc;

use tokio::sync::{oneshot, watch, Notify};

pub use recover::recover;

use crate::codec::QoS;
use crate::inbox::{Delivery, Inbox};
use crate::session::state::SessionState;

/// How long a publisher (or a session's barrier) waits for the store before giving up.
pub const WAIT: Duration = Duration::from_secs(10);
/// Bytes queued for the writer past which the fan-out waits (and so, through the core,
/// publishers): the store's write rate is then what the node accepts.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// One change, in the order they are made.
pub(crate) enum Op {
    /// The will of session `key` was published (or is no longer due).
    ClearWill {
        client_id: String,
        key: u64,
    },
    PutSession {
        client_id: String,
        record: Vec<u8>,
    },
    /// Ends session `key` under `client_id` (its record only if it is still that session's).
    DeleteSession {
        client_id: String,
        key: u64,
    },
    Enqueue {
        key: u64,
        seq: u64,
        record: Vec<u8>,
        /// Its session is connected and takes it at QoS 1: the client's PUBACK may well come
        /// before the writer's next commit (see [`writer`]'s linger).
        quick: bool,
    },
    State {
        key: u64,
        seq: u64,
        state: record::State,
    },
    Remove {
        key: u64,
        seq: u64,
    },
    /// The client's own QoS 2 packet id, received (`true`) or released.
    Inbound {
        key: u64,
        pkid: u16,
        add: bool,
    },
}

impl Op {
    fn weight(&self) -> usize {
        match self {
            Op::PutSession { record, .. } | Op::Enqueue { record, .. } => record.len() + 64,
            _ => 64,
        }
    }
}

/// How far the writer got.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Every op numbered up to this one has been handled (committed, or its batch failed).
    pub done: u64,
    /// Batches that failed so far.
    pub failures: u64,
}

/// Why a wait for the store ended badly.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the session store could not write")]
    Failed,
    #[error("the session store did not write in time")]
    Timeout,
}

struct Queue {
    next: u64,
    /// To the writer thread (std's channel: the writer blocks on it with a timeout).
    tx: mpsc::Sender<(u64, Op)>,
}

/// The store's handle, shared by the fan-out, the sessions and the local clients.
pub struct SessionStore {
    queue: Mutex<Queue>,
    progress: watch::Receiver<Progress>,
    /// Publishers waiting to learn their message's op, by node sequence number.
    waiters: Mutex<HashMap<u64, oneshot::Sender<u64>>>,
    /// Sessions marked persistent (online or not): none, and publishers need not wait.
    persistent: AtomicUsize,
    queued_bytes: Arc<AtomicUsize>,
    room: Arc<Notify>,
    /// Messages written for sessions (for the operators' counters).
    pub written: AtomicU64,
}

/// A publisher's claim on its message's durability (see [`SessionStore::expect`]).
pub struct Waiter {
    rx: oneshot::Receiver<u64>,
    seq: u64,
    failures: u64,
}

impl SessionStore {
    /// Opens (or creates) `dir/sessions.redb`, reads what it holds (dropping what expired) and
    /// starts the writer. The caller then runs [`recover`] before clients connect.
    pub fn open(dir: &Path) -> anyhow::Result<(Arc<SessionStore>, recover::Loaded)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create storage directory {}", dir.display()))?;
        let path = dir.join("sessions.redb");
        let db = writer::open(&path)
            .with_context(|| format!("cannot open session store {}", path.display()))?;
        writer::create_tables(&db)
            .with_context(|| format!("cannot write to {}", path.display()))?;
        let loaded = recover::load(&db, SystemTime::now())
            .with_context(|| format!("cannot read {}", path.display()))?;
        let (tx, rx) = mpsc::channel();
        let (ptx, prx) = watch::channel(Progress::default());
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let room = Arc::new(Notify::new());
        let store = Arc::new(SessionStore {
            queue: Mutex::new(Queue { next: 1, tx }),
            progress: prx,
            waiters: Mutex::new(HashMap::new()),
            persistent: AtomicUsize::new(0),
            queued_bytes: queued_bytes.clone(),
            room: room.clone(),
            written: AtomicU64::new(0),
        });
        let w = writer::Writer {
            path,
            db: Some(db),
            rx,
            progress: ptx,
            queued_bytes,
            room,
        };
        std::thread::Builder::new()
            .name("session-writer".into())
            .spawn(move || w.run())?;
        Ok((store, loaded))
    }

    /// Queues `op`; returns its number.
    fn push(&self, op: Op) -> u64 {
        self.queued_bytes.fetch_add(op.weight(), Ordering::AcqRel);
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.next;
        q.next += 1;
        if q.tx.send((n, op)).is_err() {
            tracing::error!("the session store's writer is gone");
        }
        n
    }

    /// The number of the last op queued (0: none).
    pub fn last(&self) -> u64 {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).next - 1
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Waits until op `n` is handled; `Err` if a batch failed since `failures` was read.
    pub async fn wait_done(&self, n: u64, failures: u64) -> Result<(), StoreError> {
        let mut rx = self.progress.clone();
        let p = tokio::time::timeout(WAIT, rx.wait_for(|p| p.done >= n))
            .await
            .map_err(|_| StoreError::Timeout)?
            .map(|p| *p)
            .map_err(|_| StoreError::Failed)?;
        if p.failures != failures {
            return Err(StoreError::Failed);
        }
        Ok(())
    }

    /// Waits (bounded) until everything queued so far is on disk (shutdown).
    pub async fn flush(&self) {
        let n = self.last();
        let f = self.progress().failures;
        if let Err(e) = self.wait_done(n, f).await {
            tracing::error!(error = %e, "session store not flushed");
        }
    }

    // ---- persistence flag ------------------------------------------------------------------

    /// Marks `inbox`'s session persistent or not (the fan-out writes deliveries for those).
    pub fn mark(&self, inbox: &Inbox, on: bool) {
        if inbox.set_persistent(on) != on {
            if on {
                self.persistent.fetch_add(1, Ordering::AcqRel);
            } else {
                self.persistent.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Persistent sessions, online or not.
    pub fn persistent_count(&self) -> usize {
        self.persistent.load(Ordering::Acquire)
    }

    // ---- sessions ----------------------------------------------------------------------------

    /// Writes the record of session `state` (`online`: its client is connected) with the
    /// will still due, if any.
    pub fn put_session(
        &self,
        client_id: &str,
        state: &SessionState,
        expiry_secs: u32,
        online: bool,
        will: Option<record::WillRecord>,
    ) -> u64 {
        let record = record::SessionRecord::of(state, expiry_secs, online, will).encode();
        self.push(Op::PutSession {
            client_id: client_id.to_string(),
            record,
        })
    }

    /// The will of session `key` is no longer due.
    pub fn clear_will(&self, client_id: &str, key: u64) -> u64 {
        self.push(Op::ClearWill {
            client_id: client_id.to_string(),
            key,
        })
    }

    /// Removes session `key` of `client_id` and everything queued for it.
    pub fn delete_session(&self, client_id: &str, key: u64) -> u64 {
        self.push(Op::DeleteSession {
            client_id: client_id.to_string(),
            key,
        })
    }

    // ---- deliveries --------------------------------------------------------------------------

    /// Queues delivery `d` of message `frame` for session `key` (called by the fan-out before
    /// the delivery enters the session's inbox; `online`: the session's client is connected).
    pub fn enqueue(&self, key: u64, d: &Delivery, frame: &[u8], online: bool) -> u64 {
        self.written.fetch_add(1, Ordering::Relaxed);
        self.push(Op::Enqueue {
            key,
            seq: d.msg.seq,
            record: record::encode_delivery(d.qos, d.retain, &d.ids, frame),
            quick: online && d.qos == QoS::AtLeastOnce,
        })
    }

    /// A QoS 2 delivery sent under `pkid` (0 seq: not a stored message, nothing to do).
    pub fn sent(&self, key: u64, seq: u64, pkid: u16) -> Option<u64> {
        self.set_state(key, seq, record::State::Sent(pkid))
    }

    /// A QoS 2 delivery PUBREC'd: only its PUBREL under `pkid` is owed.
    pub fn released(&self, key: u64, seq: u64, pkid: u16) -> Option<u64> {
        self.set_state(key, seq, record::State::Released(pkid))
    }

    /// A stored delivery's new `state` (0 seq: not a stored message, nothing to do).
    fn set_state(&self, key: u64, seq: u64, state: record::State) -> Option<u64> {
        (seq != 0).then(|| self.push(Op::State { key, seq, state }))
    }

    /// A delivery done with (acknowledged, expired, dropped).
    pub fn remove(&self, key: u64, seq: u64) {
        if seq != 0 {
            self.push(Op::Remove { key, seq });
        }
    }

    /// The client's QoS 2 packet id `pkid` received (`add`) or released.
    pub fn inbound(&self, key: u64, pkid: u16, add: bool) -> u64 {
        self.push(Op::Inbound { key, pkid, add })
    }

    // ---- publishers --------------------------------------------------------------------------

    /// Registers a QoS 1/2 message about to enter the core as `seq`: `None` when no session is
    /// persistent (nothing to wait for).
    pub fn expect(&self, seq: u64, qos: QoS) -> Option<Waiter> {
        if qos == QoS::AtMostOnce || self.persistent_count() == 0 {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let failures = self.progress().failures;
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, tx);
        Some(Waiter { rx, seq, failures })
    }

    /// The message `seq` did not enter the core after all.
    pub fn cancel(&self, w: Waiter) {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&w.seq);
    }

    /// The fan-out is done with message `seq`: its publisher waits for op `op` (0: nothing).
    pub fn resolve(&self, seq: u64, op: u64) {
        let tx = {
            let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            if w.is_empty() {
                return;
            }
            w.remove(&seq)
        };
        if let Some(tx) = tx {
            let _ = tx.send(op);
        }
    }

    /// Waits while the writer is far behind (the fan-out, before handling a message).
    pub async fn room(&self) {
        if self.queued_bytes.load(Ordering::Acquire) < MAX_QUEUED_BYTES {
            return;
        }
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.queued_bytes.load(Ordering::Acquire) < MAX_QUEUED_BYTES {
                return;
            }
            notified.await;
        }
    }
}

impl Waiter {
    /// Waits until the message is on disk for every persistent session it matched.
    pub async fn wait(self, store: &SessionStore) -> Result<(), StoreError> {
        let op = tokio::time::timeout(WAIT, self.rx)
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(|_| StoreError::Failed)?;
        if op == 0 {
            return Ok(());
        }
        store.wait_done(op, self.failures).await
    }
}
