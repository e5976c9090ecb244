//! Persistent sessions across a restart: their subscriptions, written at shutdown and restored
//! at startup.
//!
//! Sessions live in the edge's memory. On SIGTERM, after every client has been disconnected, the
//! edge writes the sessions that outlive their connections (clean start 0 / session expiry > 0)
//! to `storage.dir/sessions.redb`: client id, owner, subscriptions with their options and
//! identifiers, and when the session expires. At the next start, before any client can connect,
//! each one that has not expired goes back into the registry and its subscriptions into the
//! index, so messages published from then on queue for it. The file is emptied once read. Messages that were queued at shutdown, in-flight packet ids, and sessions of a
//! process that was killed are not kept (docs/guarantees.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Filter, RetainForwardRule};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// A disconnected persistent session, as the registry keeps it.
#[derive(Debug, Clone)]
pub struct SavedSession {
    pub client_id: String,
    /// The identity (subject) that created it: only it may resume it.
    pub owner: Option<String>,
    /// Subscriptions with their options and subscription identifier.
    pub subs: Vec<(Filter, Option<usize>)>,
    /// `None`: never expires (3.1.1 clean session 0, MQTT 5 expiry 0xFFFFFFFF).
    pub expires_at: Option<SystemTime>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    owner: Option<String>,
    subs: Vec<SubRecord>,
    /// Milliseconds since the Unix epoch.
    expires_at_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct SubRecord {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    /// MQTT 5 retain handling: 0 send on subscribe, 1 only if new, 2 never.
    retain_handling: u8,
    id: Option<usize>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join("sessions.redb")
}

fn encode(s: &SavedSession) -> anyhow::Result<Vec<u8>> {
    let r = Record {
        owner: s.owner.clone(),
        subs: s
            .subs
            .iter()
            .map(|(f, id)| SubRecord {
                filter: f.path.clone(),
                qos: f.qos as u8,
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                retain_handling: match f.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => 0,
                    RetainForwardRule::OnNewSubscribe => 1,
                    RetainForwardRule::Never => 2,
                },
                id: *id,
            })
            .collect(),
        expires_at_ms: s.expires_at.map(|t| {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis() as u64
        }),
    };
    Ok(serde_json::to_vec(&r)?)
}

fn decode(client_id: &str, bytes: &[u8]) -> anyhow::Result<SavedSession> {
    let r: Record = serde_json::from_slice(bytes)?;
    let mut subs = Vec::with_capacity(r.subs.len());
    for s in r.subs {
        let Some(qos) = codec::qos(s.qos) else {
            bail!("bad QoS {} for {}", s.qos, s.filter);
        };
        let mut f = Filter::new(s.filter, qos);
        f.nolocal = s.no_local;
        f.preserve_retain = s.retain_as_published;
        f.retain_forward_rule = match s.retain_handling {
            0 => RetainForwardRule::OnEverySubscribe,
            1 => RetainForwardRule::OnNewSubscribe,
            _ => RetainForwardRule::Never,
        };
        subs.push((f, s.id));
    }
    Ok(SavedSession {
        client_id: client_id.to_string(),
        owner: r.owner,
        subs,
        expires_at: r
            .expires_at_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
    })
}

/// Writes `sessions` to `dir/sessions.redb`, replacing what was there.
pub fn save(dir: &Path, sessions: &[SavedSession]) -> anyhow::Result<()> {
    let file = path(dir);
    let db = Database::create(&file).with_context(|| format!("cannot open {}", file.display()))?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(TABLE)?;
        table.retain(|_, _| false)?;
        for s in sessions {
            table.insert(s.client_id.as_str(), encode(s)?.as_slice())?;
        }
    }
    txn.commit()
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

/// Reads and forgets the sessions saved in `dir` (none if there is no file). A record that
/// cannot be read is skipped with a warning.
pub fn take(dir: &Path) -> anyhow::Result<Vec<SavedSession>> {
    let file = path(dir);
    if !file.exists() {
        return Ok(Vec::new());
    }
    let db = Database::create(&file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut out = Vec::new();
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(TABLE)?;
        for row in table.iter()? {
            let (k, v) = row?;
            match decode(k.value(), v.value()) {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::warn!(client_id = k.value(), error = %e, "skipping saved session")
                }
            }
        }
        table.retain(|_, _| false)?;
    }
    txn.commit()
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(out)
}
