//! Persistent sessions across a restart: their subscriptions, written at shutdown and restored
//! at startup.
//!
//! The core (rumqttd) keeps sessions in memory only. On SIGTERM, after every client has been
//! disconnected, the edge writes the sessions that outlive their connections (clean start 0 /
//! session expiry > 0) to `storage.dir/sessions.redb`: client id, subscriptions with their
//! options and identifiers, and when the session expires. At the next start, before any client
//! can connect, each one that has not expired is recreated in the core (an internal connection
//! under its client id that subscribes and closes), so messages published from then on queue for
//! it, and its edge half goes back into the registry with its expiry timer. The file is emptied
//! once read. Messages that were queued at shutdown, in-flight packet ids, and sessions of a
//! process that was killed are not kept (docs/guarantees.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::BytesMut;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::codec::{self, Filter, Packet, RetainForwardRule, Subscribe, SubscribeProperties};
use crate::core::{Core, UpstreamConnect};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// A disconnected persistent session, as the registry keeps it.
#[derive(Debug, Clone)]
pub struct SavedSession {
    pub client_id: String,
    /// Subscriptions with their options and subscription identifier.
    pub subs: Vec<(Filter, Option<usize>)>,
    /// `None`: never expires (3.1.1 clean session 0, MQTT 5 expiry 0xFFFFFFFF).
    pub expires_at: Option<SystemTime>,
}

#[derive(Serialize, Deserialize)]
struct Record {
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

/// Recreates `s` in the core: an internal connection under its client id without clean start,
/// its subscriptions (those the core routes; `$SYS` is the edge's), then the close.
pub(crate) async fn restore_in_core(core: &Core, s: &SavedSession) -> anyhow::Result<()> {
    let req = UpstreamConnect {
        client_id: s.client_id.clone(),
        clean_start: false,
        receive_maximum: 1,
    };
    let (mut link, ack, mut buf) = core.connect(&req).await?;
    if ack.code != codec::ConnectReturnCode::Success {
        bail!("core refused the session: {:?}", ack.code);
    }
    // One SUBSCRIBE per subscription identifier (a SUBSCRIBE carries at most one).
    let mut groups: Vec<(Option<usize>, Vec<Filter>)> = Vec::new();
    for (f, id) in &s.subs {
        // `$SYS` is the edge's; shared subscriptions are joined again when the client resumes
        // (see `session::serve`): rumqttd keeps no offline member in a share group.
        if f.path.starts_with("$SYS") || crate::topic::split_shared(&f.path).is_some() {
            continue;
        }
        let core_filter = Filter::new(f.path.clone(), f.qos);
        match groups.iter_mut().find(|(gid, _)| gid == id) {
            Some((_, fs)) => fs.push(core_filter),
            None => groups.push((*id, vec![core_filter])),
        }
    }
    let mut out = BytesMut::new();
    for (i, (id, filters)) in groups.iter().enumerate() {
        Packet::Subscribe(Subscribe {
            pkid: i as u16 + 1,
            filters: filters.clone(),
            properties: id.map(|id| SubscribeProperties {
                id: Some(id),
                user_properties: Vec::new(),
            }),
        })
        .write(&mut out, None)?;
    }
    link.write_all(&out).await?;
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while acked < groups.len() {
            loop {
                match codec::read_v5(&mut buf, core.max_packet()) {
                    Ok(Some(Packet::SubAck(_))) => acked += 1,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => bail!("core sent a bad packet: {e}"),
                }
            }
            if acked < groups.len() && link.read_buf(&mut buf).await? == 0 {
                bail!("core closed the link before SUBACK");
            }
        }
        Ok(())
    })
    .await
    .context("core SUBACK timed out")??;
    crate::core::close_link(&mut link).await;
    Ok(())
}
