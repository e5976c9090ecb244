//! The session store's writer thread: ops, in the order they were queued, grouped into one redb
//! transaction per batch, then the watermark advanced.
//!
//! A batch is whatever is waiting when the previous commit ends (up to [`BATCH`] ops), so the
//! busier the node, the more each fsync covers; and a message its session's client acknowledged
//! within the same batch is never written (see [`plan`]). A batch holding QoS 1 deliveries to
//! connected sessions waits up to [`LINGER`] for their PUBACKs before it is planned: a message
//! every persistent session already acknowledged needs no fsync before its publisher's PUBACK
//! (group commit; the wait is shorter than the fsync it usually saves). After a failed commit redb refuses every later
//! write on the same handle, so the database is closed and opened again for the next batch:
//! once the fault clears (disk space freed), writes succeed again without a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::collections::{HashMap, HashSet};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, watch, Notify};

use super::record::{self, SessionRecord};
use super::{Op, Progress};

pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// `(session key, node sequence)` → delivery record.
pub(super) const QUEUE: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("queue");
/// `(session key, packet id)`: the client's QoS 2 messages received and not yet released.
pub(super) const INBOUND: TableDefinition<(u64, u16), ()> = TableDefinition::new("inbound");

/// Most ops in one transaction.
const BATCH: usize = 8192;

/// Longest a batch waits for the acknowledgements of its deliveries to connected sessions.
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
    pub rx: mpsc::UnboundedReceiver<(u64, Op)>,
    pub progress: watch::Sender<Progress>,
    pub queued_bytes: Arc<AtomicUsize>,
    pub room: Arc<Notify>,
}

impl Writer {
    fn drain(&mut self, batch: &mut Vec<(u64, Op)>) {
        while batch.len() < BATCH {
            match self.rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
    }

    /// Waits (at most [`LINGER`]) while the batch holds a delivery to a connected session whose
    /// acknowledgement has not come, gathering what else arrives.
    fn linger(&mut self, batch: &mut Vec<(u64, Op)>) {
        let deadline = std::time::Instant::now() + LINGER;
        let mut owed: HashSet<(u64, u64)> = HashSet::new();
        let mut seen = 0;
        loop {
            for (_, op) in &batch[seen..] {
                match op {
                    Op::Enqueue {
                        key,
                        seq,
                        quick: true,
                        ..
                    } => {
                        owed.insert((*key, *seq));
                    }
                    Op::Remove { key, seq } => {
                        owed.remove(&(*key, *seq));
                    }
                    _ => {}
                }
            }
            seen = batch.len();
            if owed.is_empty() || seen >= BATCH || std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
            self.drain(batch);
        }
    }

    pub fn run(mut self) {
        let mut batch = Vec::with_capacity(256);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            self.drain(&mut batch);
            self.linger(&mut batch);
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
            let last = batch.last().map(|(n, _)| *n).unwrap_or(0);
            if let Err(e) = &result {
                tracing::error!(error = %e, ops = batch.len(), "session store write failed");
                self.db = None;
            }
            let weight: usize = batch.iter().map(|(_, op)| op.weight()).sum();
            batch.clear();
            self.progress.send_modify(|p| {
                p.done = last;
                p.failures += result.is_err() as u64;
            });
            self.queued_bytes.fetch_sub(weight, Ordering::AcqRel);
            self.room.notify_waiters();
        }
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
