//! The session store's writer thread: ops, in the order they were queued, grouped into one redb
//! transaction per batch, then the watermark advanced.
//!
//! A batch is whatever is waiting when the previous commit ends (up to [`BATCH`] ops), so the
//! busier the node, the more each fsync covers; and a message its session's client acknowledged
//! within the same batch is never written (see [`plan`]). A QoS 1 delivery to a connected
//! session waits up to [`LINGER`] for its PUBACK before it is committed: what comes before the
//! oldest one still owed is committed without it (the removals of its deliveries taken along),
//! so while subscribers keep up, a message every persistent session already acknowledged never
//! needs an fsync before its publisher's PUBACK; a delivery past its linger is fsync'd with what
//! precedes it, the younger ones go on waiting. While one waits, the writer sleeps on its channel
//! until the next op or the end of the linger (no polling). After a failed commit redb refuses every later
//! write on the same handle, so the database is closed and opened again for the next batch:
//! once the fault clears (disk space freed), writes succeed again without a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::collections::{HashMap, HashSet};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::sync::mpsc;

use tokio::sync::{watch, Notify};

use super::record::{self, SessionRecord};
use super::{Op, Progress};

pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// `(session key, node sequence)` → delivery record.
pub(super) const QUEUE: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("queue");
/// `(session key, packet id)`: the client's QoS 2 messages received and not yet released.
pub(super) const INBOUND: TableDefinition<(u64, u16), ()> = TableDefinition::new("inbound");

/// Most ops in one transaction.
const BATCH: usize = 8192;

/// Longest a delivery to a connected session waits for its PUBACK before it is written.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// redb's page cache for the store: it holds pages the writer touched (1 GiB by default, which
/// 10,000 sessions written once grew by ~60 MB); recovery and the writer read little.
const CACHE: usize = 16 * 1024 * 1024;

/// Opens (or creates) the database file.
pub(super) fn open(path: &std::path::Path) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new().set_cache_size(CACHE).create(path)
}

// redb's error type is large; it is built once per failed batch, never on a hot path.
#[allow(clippy::result_large_err)]
pub(super) fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(SESSIONS)?;
    txn.open_table(QUEUE)?;
    txn.open_table(INBOUND)?;
    txn.commit()?;
    Ok(())
}

pub(super) struct Writer {
    pub path: PathBuf,
    pub db: Option<Database>,
    pub rx: mpsc::Receiver<(u64, Op)>,
    pub progress: watch::Sender<Progress>,
    pub queued_bytes: Arc<AtomicUsize>,
    pub room: Arc<Notify>,
}

/// Ops received and not yet committed, in order, with the QoS 1 deliveries to connected
/// sessions among them whose PUBACK has not come (and since when they wait).
#[derive(Default)]
struct Pending {
    ops: std::collections::VecDeque<(u64, Op)>,
    owed: HashMap<(u64, u64), std::time::Instant>,
    /// Only deliveries and their removals: a prefix may be committed alone.
    plain: bool,
}

impl Pending {
    fn push(&mut self, (n, op): (u64, Op)) {
        match &op {
            Op::Enqueue {
                key,
                seq,
                quick: true,
                ..
            } => {
                self.owed.insert((*key, *seq), std::time::Instant::now());
            }
            Op::Enqueue { .. } => {}
            Op::Remove { key, seq } => {
                self.owed.remove(&(*key, *seq));
            }
            _ => self.plain = false,
        }
        self.ops.push_back((n, op));
    }

    /// How long the oldest delivery still owed its PUBACK may go on waiting.
    fn linger_left(&self) -> std::time::Duration {
        let first = self.ops.iter().find_map(|(_, op)| match op {
            Op::Enqueue { key, seq, .. } => self.owed.get(&(*key, *seq)),
            _ => None,
        });
        first.map_or(std::time::Duration::ZERO, |t| {
            LINGER.saturating_sub(t.elapsed())
        })
    }

    /// What to commit now, if anything: everything, or (while connected sessions' PUBACKs
    /// are due within [`LINGER`]) the ops before the oldest delivery still waiting for one, with
    /// the removals of the deliveries among them. A delivery whose linger is over is written
    /// with that prefix; the younger ones behind it go on waiting.
    fn take(&mut self, closed: bool) -> Vec<(u64, Op)> {
        let owed = &self.owed;
        let now = std::time::Instant::now();
        // Deliveries are marked as they arrive, so the owed ones are in the order of their
        // marks: the scan stops at the first whose linger is not over.
        let waiting = if closed || !self.plain || self.ops.len() >= BATCH {
            None
        } else {
            self.ops.iter().position(|(_, op)| match op {
                Op::Enqueue { key, seq, .. } => owed
                    .get(&(*key, *seq))
                    .is_some_and(|t| now.duration_since(*t) < LINGER),
                _ => false,
            })
        };
        let Some(cut) = waiting else {
            self.owed.clear();
            self.plain = true;
            return self.ops.drain(..).collect();
        };
        let mut batch: Vec<(u64, Op)> = self.ops.drain(..cut).collect();
        let queued: HashSet<(u64, u64)> = batch
            .iter()
            .filter_map(|(_, op)| match op {
                Op::Enqueue { key, seq, .. } => Some((*key, *seq)),
                _ => None,
            })
            .collect();
        // Those whose linger ran out are written now.
        self.owed.retain(|k, _| !queued.contains(k));
        if !queued.is_empty() {
            // Their removals come later in the order; taken along, the pair is never written.
            let (along, rest): (Vec<_>, Vec<_>) = self.ops.drain(..).partition(
                |(_, op)| matches!(op, Op::Remove { key, seq } if queued.contains(&(*key, *seq))),
            );
            batch.extend(along);
            self.ops = rest.into();
        }
        batch
    }
}

impl Writer {
    /// Moves what has arrived into `pending`; false once every sender is gone.
    fn drain(&mut self, pending: &mut Pending) -> bool {
        while pending.ops.len() < BATCH {
            match self.rx.try_recv() {
                Ok(op) => pending.push(op),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    pub fn run(mut self) {
        let mut pending = Pending {
            plain: true,
            ..Default::default()
        };
        loop {
            if pending.ops.is_empty() {
                match self.rx.recv() {
                    Ok(op) => pending.push(op),
                    Err(_) => return,
                }
            }
            let open = self.drain(&mut pending);
            let batch = pending.take(!open);
            if batch.is_empty() {
                // The oldest op waits for a connected session's PUBACK: until the next op
                // arrives (that PUBACK, maybe) or its linger ends. A closed channel is seen by
                // the next drain.
                if let Ok(op) = self.rx.recv_timeout(pending.linger_left()) {
                    pending.push(op);
                }
                continue;
            }
            self.commit_batch(batch, &pending);
        }
    }

    fn commit_batch(&mut self, batch: Vec<(u64, Op)>, pending: &Pending) {
        if self.db.is_none() {
            match open(&self.path) {
                Ok(d) => {
                    tracing::info!(path = %self.path.display(), "session store reopened");
                    self.db = Some(d);
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot reopen session store")
                }
            }
        }
        let result = match &self.db {
            Some(d) => commit(d, &batch).map_err(|e| e.to_string()),
            None => Err(format!("cannot open {}", self.path.display())),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, ops = batch.len(), "session store write failed");
            self.db = None;
        }
        // Every op before the first one still pending is handled (removals taken along from
        // further on are done early, which nobody waits for).
        let last = match pending.ops.front() {
            Some((n, _)) => n.saturating_sub(1),
            None => batch.iter().map(|(n, _)| *n).max().unwrap_or(0),
        };
        let weight: usize = batch.iter().map(|(_, op)| op.weight()).sum();
        self.progress.send_modify(|p| {
            p.done = p.done.max(last);
            p.failures += result.is_err() as u64;
        });
        self.queued_bytes.fetch_sub(weight, Ordering::AcqRel);
        self.room.notify_waiters();
    }
}

/// What a batch needs written: deliveries queued and done with in the same batch (the client
/// acknowledged them before they reached the disk) are not written at all; a batch that only
/// removes deliveries is committed without waiting for the disk (a removal lost to a crash
/// means a duplicate, which QoS 1 allows and QoS 2 answers with PUBREL again); anything else is
/// fsync'd.
struct Plan {
    skip: HashSet<(u64, u64)>,
    /// Something other than a delivery's removal is written.
    durable: bool,
    /// Anything is written.
    any: bool,
}

fn plan(batch: &[(u64, Op)]) -> Plan {
    // (key, seq) -> (times queued in this batch, removed after being queued)
    let mut seen: HashMap<(u64, u64), (u32, bool)> = HashMap::new();
    for (_, op) in batch {
        match op {
            Op::Enqueue { key, seq, .. } => seen.entry((*key, *seq)).or_default().0 += 1,
            Op::Remove { key, seq } => {
                if let Some(e) = seen.get_mut(&(*key, *seq)) {
                    e.1 = e.0 > 0;
                }
            }
            _ => {}
        }
    }
    let skip: HashSet<(u64, u64)> = seen
        .into_iter()
        .filter(|(_, (n, removed))| *n == 1 && *removed)
        .map(|(k, _)| k)
        .collect();
    let mut p = Plan {
        skip,
        durable: false,
        any: false,
    };
    for (_, op) in batch {
        let (key, seq, lazy) = match op {
            Op::Enqueue { key, seq, .. } | Op::State { key, seq, .. } => (*key, *seq, false),
            Op::Remove { key, seq } => (*key, *seq, true),
            _ => {
                p.any = true;
                p.durable = true;
                continue;
            }
        };
        if !p.skip.contains(&(key, seq)) {
            p.any = true;
            p.durable |= !lazy;
        }
    }
    p
}

/// Writes one batch in one transaction.
#[allow(clippy::result_large_err)]
fn commit(db: &Database, batch: &[(u64, Op)]) -> Result<(), redb::Error> {
    let plan = plan(batch);
    if !plan.any {
        return Ok(());
    }
    let mut txn = db.begin_write()?;
    if !plan.durable {
        txn.set_durability(Durability::None);
    }
    {
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut queue = txn.open_table(QUEUE)?;
        let mut inbound = txn.open_table(INBOUND)?;
        for (_, op) in batch {
            match op {
                Op::PutSession { client_id, record } => {
                    sessions.insert(client_id.as_str(), record.as_slice())?;
                }
                Op::ClearWill { client_id, key } => {
                    let record = sessions
                        .get(client_id.as_str())?
                        .and_then(|v| SessionRecord::decode(v.value()).ok())
                        .filter(|r| r.key == Some(*key) && r.will.is_some());
                    if let Some(mut r) = record {
                        r.will = None;
                        sessions.insert(client_id.as_str(), r.encode().as_slice())?;
                    }
                }
                Op::DeleteSession { client_id, key } => {
                    let current = sessions
                        .get(client_id.as_str())?
                        .and_then(|v| SessionRecord::decode(v.value()).ok())
                        .and_then(|r| r.key);
                    if current == Some(*key) {
                        sessions.remove(client_id.as_str())?;
                    }
                    queue.retain_in((*key, 0)..=(*key, u64::MAX), |_, _| false)?;
                    inbound.retain_in((*key, 0)..=(*key, u16::MAX), |_, _| false)?;
                }
                Op::Enqueue { key, seq, .. }
                | Op::State { key, seq, .. }
                | Op::Remove { key, seq }
                    if plan.skip.contains(&(*key, *seq)) => {}
                Op::Enqueue {
                    key, seq, record, ..
                } => {
                    queue.insert((*key, *seq), record.as_slice())?;
                }
                Op::State { key, seq, state } => {
                    let now = queue
                        .get((*key, *seq))?
                        .map(|v| record::with_state(v.value(), *state));
                    if let Some(v) = now {
                        queue.insert((*key, *seq), v.as_slice())?;
                    }
                }
                Op::Remove { key, seq } => {
                    queue.remove((*key, *seq))?;
                }
                Op::Inbound { key, pkid, add } => {
                    if *add {
                        inbound.insert((*key, *pkid), ())?;
                    } else {
                        inbound.remove((*key, *pkid))?;
                    }
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enqueue(seq: u64) -> Op {
        Op::Enqueue {
            key: 7,
            seq,
            record: vec![1],
            quick: true,
        }
    }

    fn numbers(batch: &[(u64, Op)]) -> Vec<u64> {
        batch.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn deliveries_to_connected_sessions_wait_for_their_pubacks() {
        let mut p = Pending {
            plain: true,
            ..Default::default()
        };
        p.push((1, enqueue(1)));
        p.push((2, enqueue(2)));
        // Neither acknowledged yet: nothing to commit.
        assert!(p.take(false).is_empty());
        p.push((3, Op::Remove { key: 7, seq: 1 }));
        // The first is acknowledged: it and its removal go (never written), the second waits.
        let b = p.take(false);
        assert_eq!(numbers(&b), vec![1, 3]);
        assert!(!plan(&b).any);
        assert_eq!(p.ops.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![2]);
        // Past its linger, it is committed (and fsync'd); a younger one goes on waiting.
        std::thread::sleep(LINGER);
        p.push((6, enqueue(6)));
        assert!(p.linger_left() == std::time::Duration::ZERO);
        let b = p.take(false);
        assert_eq!(numbers(&b), vec![2]);
        assert!(plan(&b).durable);
        assert_eq!(p.ops.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![6]);
        assert!(p.linger_left() > std::time::Duration::ZERO);
        // Its PUBACK came: it goes with its removal, never written.
        p.push((7, Op::Remove { key: 7, seq: 6 }));
        let b = p.take(false);
        assert_eq!(numbers(&b), vec![6, 7]);
        assert!(!plan(&b).any);
        // Anything but deliveries and removals is committed at once, with what precedes it.
        p.push((4, enqueue(4)));
        p.push((
            5,
            Op::Inbound {
                key: 7,
                pkid: 1,
                add: true,
            },
        ));
        assert_eq!(numbers(&p.take(false)), vec![4, 5]);
    }

    #[test]
    fn a_delivery_acknowledged_in_its_batch_is_not_written() {
        let batch = vec![(1, enqueue(1)), (2, Op::Remove { key: 7, seq: 1 })];
        let p = plan(&batch);
        assert!(!p.any && p.skip.contains(&(7, 1)));
        // Another delivery still queued: written, fsync'd.
        let batch = vec![
            (1, enqueue(1)),
            (2, enqueue(2)),
            (3, Op::Remove { key: 7, seq: 1 }),
        ];
        let p = plan(&batch);
        assert!(p.any && p.durable);
        // Only removals of deliveries written earlier: written, not waited for.
        let p = plan(&[(1, Op::Remove { key: 7, seq: 9 })]);
        assert!(p.any && !p.durable);
        // A removal before its enqueue (cannot happen) cancels nothing.
        let batch = vec![(1, Op::Remove { key: 7, seq: 3 }), (2, enqueue(3))];
        let p = plan(&batch);
        assert!(p.durable && p.skip.is_empty());
        // The client's QoS 2 ids are always fsync'd.
        let p = plan(&[(
            1,
            Op::Inbound {
                key: 7,
                pkid: 1,
                add: false,
            },
        )]);
        assert!(p.durable);
    }
}
