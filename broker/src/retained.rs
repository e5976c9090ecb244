//! The retained-message store: one message per topic, in memory and on disk.
//!
//! The edge keeps retained messages itself (rumqttd never sees a retain flag), so they are
//! delivered on every subscribe as the spec says and cleared only by an empty *retained* publish.
//! Reads come from an in-memory ordered map (a filter's literal prefix bounds the scan). Writes
//! update the map at once and go to a writer thread that commits them to a redb database in
//! batches; [`RetainedStore::set`] returns when its write is durable, so a publisher is only
//! acknowledged for what survives a crash.
//!
//! Beside the map, a [`TopicIndex`] holds the same topics by level, changed with the map, so
//! operators can browse the store a level at a time ([`RetainedStore::browse`]) without a scan.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, Packet, Publish, QoS};
use crate::topic;
use crate::topic_index::{Listing, TopicIndex};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
/// Writes waiting for the writer thread before publishers are told the store is busy.
const WRITE_QUEUE: usize = 4096;

/// A retained message and when it was stored (for message expiry).
#[derive(Debug, Clone)]
pub struct Retained {
    pub publish: Publish,
    pub stored_at: SystemTime,
}

impl Retained {
    /// A record for `publish`, stored now, without per-delivery fields.
    pub fn new(publish: &Publish) -> Retained {
        let mut p = publish.clone();
        // The wire format wants a packet id for QoS 1/2; it means nothing at rest.
        p.pkid = if p.qos == QoS::AtMostOnce { 0 } else { 1 };
        p.dup = false;
        p.retain = true;
        if let Some(props) = p.properties.as_mut() {
            props.topic_alias = None;
            props.subscription_identifiers.clear();
        }
        Retained {
            publish: p,
            stored_at: SystemTime::now(),
        }
    }

    /// The message with its expiry interval reduced by the time it has waited; `None` if expired.
    pub fn live(&self, now: SystemTime) -> Option<Publish> {
        let mut p = self.publish.clone();
        if let Some(props) = p.properties.as_mut() {
            if let Some(exp) = props.message_expiry_interval {
                let waited = now
                    .duration_since(self.stored_at)
                    .unwrap_or(Duration::ZERO)
                    .as_secs();
                if waited >= exp as u64 {
                    return None;
                }
                props.message_expiry_interval = Some(exp - waited as u32);
            }
        }
        Some(p)
    }

    fn encode(&self) -> anyhow::Result<Vec<u8>> {
        let mut b = BytesMut::new();
        b.put_u64(crate::message::unix_ms(self.stored_at));
        Packet::Publish(self.publish.clone())
            .write(&mut b, None)
            .map_err(|e| anyhow::anyhow!("encode retained: {e}"))?;
        Ok(b.to_vec())
    }

    fn decode(bytes: &[u8]) -> anyhow::Result<Retained> {
        anyhow::ensure!(bytes.len() > 8, "short record");
        let ms = u64::from_be_bytes(bytes[..8].try_into()?);
        let mut b = BytesMut::from(&bytes[8..]);
        match codec::read_v5(&mut b, u32::MAX) {
            Ok(Some(Packet::Publish(publish))) => Ok(Retained {
                publish,
                stored_at: UNIX_EPOCH + Duration::from_millis(ms),
            }),
            other => anyhow::bail!("bad retained record: {other:?}"),
        }
    }
}

enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

struct Write {
    op: Op,
    done: oneshot::Sender<Result<(), String>>,
}

/// Why a retained write failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the retained store is busy")]
    Busy,
    #[error("the retained store failed: {0}")]
    Failed(String),
}

/// What readers see, and what a failed write needs to undo itself.
#[derive(Default)]
struct Memory {
    map: BTreeMap<String, Arc<Retained>>,
    /// Numbers every write, so a failed one can tell whether a later write replaced it.
    seq: u64,
    /// Deletes not yet on disk, by topic: the latest one's number. A failed put can compare its
    /// own record with the map; a failed delete left nothing there to compare, so it needs this.
    /// Bounded by the write queue.
    deleting: HashMap<String, u64>,
    /// The map's topics by level.
    index: TopicIndex,
    /// Counts changes to the map (what a browser polls to know it must refresh).
    changes: u64,
}

impl Memory {
    /// Every change to `map` goes through here and [`Memory::remove`], to keep `index` in step.
    fn insert(&mut self, topic: String, r: Arc<Retained>) -> Option<Arc<Retained>> {
        self.changes += 1;
        if !self.map.contains_key(&topic) {
            self.index.insert(&topic);
        }
        self.map.insert(topic, r)
    }

    fn remove(&mut self, topic: &str) -> Option<Arc<Retained>> {
        self.changes += 1;
        let previous = self.map.remove(topic);
        if previous.is_some() {
            self.index.remove(topic);
        }
        previous
    }
}

/// What the topic browser shows of a retained message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ValueInfo {
    /// The first bytes of the payload: text when they are UTF-8, else hexadecimal.
    pub preview: String,
    pub encoding: &'static str,
    /// The preview is shorter than the payload.
    pub truncated: bool,
    pub content_type: Option<String>,
    /// Payload bytes.
    pub size: usize,
    pub qos: u8,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// Its message expiry interval has passed (it is no longer delivered).
    pub expired: bool,
}

/// Bytes of payload a preview shows.
const PREVIEW: usize = 96;

impl ValueInfo {
    fn of(r: &Retained, now: SystemTime) -> ValueInfo {
        let p = &r.publish.payload;
        let mut cut = p.len().min(PREVIEW);
        let text = match std::str::from_utf8(&p[..cut]) {
            Ok(t) => Some(t),
            // Cut inside a multi-byte character: show the whole characters before it.
            Err(e) if e.error_len().is_none() && cut < p.len() => {
                cut = e.valid_up_to();
                std::str::from_utf8(&p[..cut]).ok()
            }
            Err(_) => None,
        };
        let (preview, encoding) = match text {
            Some(t) => (t.to_string(), "utf8"),
            None => {
                cut = p.len().min(PREVIEW / 2);
                let hex = p[..cut].iter().map(|b| format!("{b:02x}")).collect();
                (hex, "hex")
            }
        };
        ValueInfo {
            preview,
            encoding,
            truncated: cut < p.len(),
            content_type: r
                .publish
                .properties
                .as_ref()
                .and_then(|pr| pr.content_type.clone()),
            size: p.len(),
            qos: r.publish.qos as u8,
            updated_ms: crate::message::unix_ms(r.stored_at),
            expired: r.live(now).is_none(),
        }
    }
}

/// Shared handle to the store.
pub struct RetainedStore {
    mem: RwLock<Memory>,
    writes: mpsc::Sender<Write>,
}

impl RetainedStore {
    /// Opens (or creates) `dir/retained.redb` and loads it. Fails if the directory is not writable.
    pub fn open(dir: &Path) -> anyhow::Result<Arc<RetainedStore>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create storage directory {}", dir.display()))?;
        let path = dir.join("retained.redb");
        let db = Database::create(&path)
            .with_context(|| format!("cannot open retained store {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(TABLE)?;
        txn.commit()
            .with_context(|| format!("cannot write to {}", path.display()))?;
        let mut mem = Memory::default();
        {
            let rtxn = db.begin_read()?;
            let table = rtxn.open_table(TABLE)?;
            for row in table.iter()? {
                let (k, v) = row?;
                match Retained::decode(v.value()) {
                    Ok(r) => {
                        mem.insert(k.value().to_string(), Arc::new(r));
                    }
                    Err(e) => tracing::warn!(topic = k.value(), error = %e, "skipping record"),
                }
            }
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("retained-writer".into())
            .spawn(move || writer(path, db, rx))?;
        Ok(Arc::new(RetainedStore {
            mem: RwLock::new(mem),
            writes: tx,
        }))
    }

    /// Stores `publish` as the retained message of its topic (an empty payload clears it) and
    /// returns once the change is on disk.
    pub async fn set(&self, publish: &Publish) -> Result<(), StoreError> {
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let (done, wait) = oneshot::channel();
        let (record, previous, seq) = {
            let mut mem = self.mem.write().unwrap_or_else(|e| e.into_inner());
            let record = if publish.payload.is_empty() {
                None
            } else {
                Some(Arc::new(Retained::new(publish)))
            };
            let op = match &record {
                None => Op::Delete(topic.clone()),
                Some(r) => Op::Put(
                    topic.clone(),
                    r.encode().map_err(|e| StoreError::Failed(e.to_string()))?,
                ),
            };
            // Queue under the lock so that disk order is memory order.
            self.writes
                .try_send(Write { op, done })
                .map_err(|_| StoreError::Busy)?;
            mem.seq += 1;
            let seq = mem.seq;
            let previous = match &record {
                None => {
                    mem.deleting.insert(topic.clone(), seq);
                    mem.remove(&topic)
                }
                Some(r) => {
                    mem.deleting.remove(&topic);
                    mem.insert(topic.clone(), r.clone())
                }
            };
            (record, previous, seq)
        };
        let result = match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Failed(e)),
            Err(_) => Err(StoreError::Failed("writer stopped".into())),
        };
        let mut mem = self.mem.write().unwrap_or_else(|e| e.into_inner());
        // Is this write still the latest for its topic?
        let latest = match &record {
            None => mem.deleting.get(&topic) == Some(&seq),
            Some(mine) => mem
                .map
                .get(&topic)
                .is_some_and(|cur| Arc::ptr_eq(cur, mine)),
        };
        if record.is_none() && latest {
            mem.deleting.remove(&topic);
        }
        // Not on disk, so not what is served either: put back what was there, unless a later
        // write replaced this one in the meantime.
        if result.is_err() && latest {
            match previous {
                Some(p) => mem.insert(topic, p),
                None => mem.remove(&topic),
            };
        }
        result
    }

    /// Retained messages whose topics match `filter` (not a shared subscription).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Retained>> {
        let prefix = topic::literal_prefix(filter);
        let mem = self.mem.read().unwrap_or_else(|e| e.into_inner());
        mem.map
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| topic::matches(filter, k))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The retained message of one topic.
    pub fn get(&self, topic: &str) -> Option<Arc<Retained>> {
        let mem = self.mem.read().unwrap_or_else(|e| e.into_inner());
        mem.map.get(topic).cloned()
    }

    pub fn len(&self) -> usize {
        self.mem.read().map(|m| m.map.len()).unwrap_or(0)
    }

    /// A number that changes whenever the stored messages do (for pollers).
    pub fn version(&self) -> u64 {
        self.mem.read().map(|m| m.changes).unwrap_or(0)
    }

    /// The levels under topic `prefix` (`None`: the top), `depth` levels deep, at most `budget`
    /// entries, each retained message described by a [`ValueInfo`]; `None` when nothing is
    /// stored under `prefix`. Walks only the levels listed (see [`TopicIndex`]).
    pub fn browse(
        &self,
        prefix: Option<&str>,
        depth: usize,
        budget: usize,
    ) -> Option<Listing<ValueInfo>> {
        let mem = self.mem.read().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        let mut value = |t: &str| mem.map.get(t).map(|r| ValueInfo::of(r, now));
        mem.index.list(prefix, depth, budget, &mut value)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until every write queued so far is on disk.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self
            .writes
            .send(Write {
                op: Op::Delete(String::new()),
                done,
            })
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }
}

/// The writer thread: commits queued writes in batches, one transaction per batch.
///
/// After a failed commit redb refuses every later write on the same handle (`PreviousIo`), so
/// the database is closed and opened again for the next batch: once the fault clears (disk space
/// freed, file writable again), writes succeed again without a restart.
fn writer(path: PathBuf, db: Database, mut rx: mpsc::Receiver<Write>) {
    let mut db = Some(db);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        if db.is_none() {
            match Database::create(&path) {
                Ok(d) => {
                    tracing::info!(path = %path.display(), "retained store reopened");
                    db = Some(d);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot reopen retained store")
                }
            }
        }
        let result = match &db {
            Some(d) => commit(d, &batch).map_err(|e| e.to_string()),
            None => Err(format!("cannot open {}", path.display())),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "retained store write failed");
            db = None;
        }
        for w in batch {
            let _ = w.done.send(result.clone());
        }
    }
}

/// Writes one batch in one transaction.
// redb's error type is large; it is built once per failed batch, never on a hot path.
#[allow(clippy::result_large_err)]
fn commit(db: &Database, batch: &[Write]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(TABLE)?;
        for w in batch {
            match &w.op {
                Op::Put(k, v) => {
                    table.insert(k.as_str(), v.as_slice())?;
                }
                Op::Delete(k) if k.is_empty() => {}
                Op::Delete(k) => {
                    table.remove(k.as_str())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Payload bytes of a retained message (for the HTTP bridge).
pub fn payload(r: &Retained) -> Bytes {
    r.publish.payload.clone()
}
