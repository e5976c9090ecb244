//! The session store's writer thread: ops, in the order they were queued, grouped into one redb
//! transaction per batch, then the watermark advanced.
//!
//! A batch is whatever is waiting when the previous commit ends (up to [`BATCH`] ops), so the
//! busier the node, the more each fsync covers. After a failed commit redb refuses every later
//! write on the same handle, so the database is closed and opened again for the next batch:
//! once the fault clears (disk space freed), writes succeed again without a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};
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
    pub fn run(mut self) {
        let mut batch = Vec::with_capacity(256);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if self.db.is_none() {
                match Database::create(&self.path) {
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

/// Writes one batch in one transaction.
#[allow(clippy::result_large_err)]
fn commit(db: &Database, batch: &[(u64, Op)]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
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
                Op::Enqueue { key, seq, record } => {
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
