//! Startup: what the session store holds, read back and put where a running node keeps it.
//!
//! [`load`] runs before the writer starts: it reads every session record and its messages,
//! and removes what must not come back — sessions whose expiry passed while the node was down
//! (with their messages), messages whose MQTT 5 expiry passed, records it cannot read, and
//! messages of sessions that no longer exist. [`recover`] then puts each session into the
//! registry's offline map (its subscriptions into the index, its queued messages into its
//! inbox, its QoS 2 exchanges and packet ids into its in-flight map) with its expiry timer, so a
//! client that reconnects gets `session_present = 1` and everything it is owed. A will still due
//! is published when its delay is over, at once if it passed during the outage (a client that
//! was connected when the node stopped lost its connection then: its will counts from the
//! restart).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use redb::{Database, ReadableTable};

use super::record::{self, SessionRecord, State, StoredDelivery};
use super::writer::{INBOUND, QUEUE, SESSIONS};
use crate::inbox::Delivery;
use crate::message::{self, Message};
use crate::session::state::{Outgoing, SessionState, SubOpts};
use crate::Edge;

/// One session as read from disk.
pub struct LoadedSession {
    client_id: String,
    record: SessionRecord,
    key: u64,
    expires_at: Option<SystemTime>,
    deliveries: Vec<(u64, StoredDelivery)>,
    inbound: Vec<u16>,
}

/// Everything read at startup.
#[derive(Default)]
pub struct Loaded {
    sessions: Vec<LoadedSession>,
    /// Highest node sequence number of a stored message.
    max_seq: u64,
    /// Removed while loading: expired sessions, expired messages.
    expired_sessions: usize,
    expired_messages: usize,
}

/// Reads the store and cleans it (see the module comment).
#[allow(clippy::result_large_err)]
pub(super) fn load(db: &Database, now: SystemTime) -> Result<Loaded, redb::Error> {
    let mut out = Loaded::default();
    let txn = db.begin_write()?;
    {
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut queue = txn.open_table(QUEUE)?;
        let mut inbound = txn.open_table(INBOUND)?;
        let rows: Vec<(String, Vec<u8>)> = sessions
            .iter()?
            .filter_map(|r| r.ok())
            .map(|(k, v)| (k.value().to_string(), v.value().to_vec()))
            .collect();
        let mut keys = HashSet::new();
        for (client_id, bytes) in rows {
            let mut rec = match SessionRecord::decode(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(client_id, error = %e, "dropping unreadable session record");
                    sessions.remove(client_id.as_str())?;
                    continue;
                }
            };
            let expires_at = rec.expires_at(now);
            if expires_at.is_some_and(|t| t <= now) {
                sessions.remove(client_id.as_str())?;
                out.expired_sessions += 1;
                continue; // its messages go with the orphans below
            }
            let key = match rec.key {
                Some(k) => k,
                None => {
                    // Written before sessions had keys (saved at a clean shutdown).
                    let k = rand::random::<u64>() | 1;
                    rec.key = Some(k);
                    sessions.insert(client_id.as_str(), rec.encode().as_slice())?;
                    k
                }
            };
            keys.insert(key);
            let mut deliveries = Vec::new();
            let mut dead = Vec::new();
            for row in queue.range((key, 0)..=(key, u64::MAX))? {
                let (k, v) = row?;
                let seq = k.value().1;
                match record::decode_delivery(v.value()) {
                    Ok(d) if d.state != State::Queued && !matches!(d.state, State::Sent(_)) => {
                        deliveries.push((seq, d))
                    }
                    Ok(d) => match Message::from_frame(d.frame.clone()) {
                        Ok(m) if m.expiry_left(now) == Some(0) => {
                            out.expired_messages += 1;
                            dead.push(seq);
                        }
                        Ok(_) => deliveries.push((seq, d)),
                        Err(e) => {
                            tracing::warn!(client_id, error = %e, "dropping unreadable message");
                            dead.push(seq);
                        }
                    },
                    Err(e) => {
                        tracing::warn!(client_id, error = %e, "dropping unreadable message");
                        dead.push(seq);
                    }
                }
            }
            for seq in dead {
                queue.remove((key, seq))?;
            }
            if let Some((seq, _)) = deliveries.last() {
                out.max_seq = out.max_seq.max(*seq);
            }
            let pkids = inbound
                .range((key, 0)..=(key, u16::MAX))?
                .filter_map(|r| r.ok())
                .map(|(k, _)| k.value().1)
                .collect();
            out.sessions.push(LoadedSession {
                client_id,
                record: rec,
                key,
                expires_at,
                deliveries,
                inbound: pkids,
            });
        }
        // Messages and packet ids of sessions that are gone.
        queue.retain(|(k, _), _| keys.contains(&k))?;
        inbound.retain(|(k, _), _| keys.contains(&k))?;
    }
    txn.commit()?;
    Ok(out)
}

/// Puts the loaded sessions back (before any client can connect).
pub fn recover(edge: &Arc<Edge>, loaded: super::recover::Loaded) {
    let store = &edge.sessions;
    edge.seq.fetch_max(loaded.max_seq + 1, Ordering::AcqRel);
    let (mut sessions, mut messages) = (0, 0);
    let mut wills = Vec::new();
    for s in loaded.sessions {
        let filters = match s.record.filters() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(client_id = s.client_id, error = %e, "dropping session");
                store.delete_session(&s.client_id, s.key);
                continue;
            }
        };
        let mut state = SessionState::new(edge, s.client_id.as_str(), s.record.owner.clone());
        state.key = s.key;
        state.inbox.set_online(false);
        state.expires_at = s.expires_at;
        let src = message::client_hash(&s.client_id);
        for (f, id) in &filters {
            let opts = SubOpts::from_filter(f, *id);
            state.restore_sub(edge, f.path.clone(), opts, src, edge.next_seq());
        }
        for (seq, d) in s.deliveries {
            let (pkid, msg) = match d.state {
                State::Released(pkid) => {
                    state.out_seq += 1;
                    state
                        .out
                        .insert(pkid, (state.out_seq, Outgoing::Released(seq)));
                    state.next_pkid = state.next_pkid.max(pkid);
                    continue;
                }
                State::Sent(pkid) => (Some(pkid), Message::from_frame(d.frame)),
                State::Queued => (None, Message::from_frame(d.frame)),
            };
            let Ok(msg) = msg else { continue };
            let delivery = Delivery {
                msg: Arc::new(msg),
                qos: d.qos,
                retain: d.retain,
                ids: d.ids,
            };
            messages += 1;
            match pkid {
                Some(pkid) => {
                    state.out_seq += 1;
                    state
                        .out
                        .insert(pkid, (state.out_seq, Outgoing::Sent(delivery)));
                    state.next_pkid = state.next_pkid.max(pkid);
                }
                None => {
                    if !state.inbox.push(delivery, &edge.stats) {
                        store.remove(s.key, seq);
                    }
                }
            }
        }
        state.qos2_in.extend(s.inbound);
        store.mark(&state.inbox, true);
        if let Some(t) = s.expires_at {
            let left = t
                .duration_since(SystemTime::now())
                .unwrap_or(std::time::Duration::ZERO);
            let purge = edge.purge_timer(&s.client_id, left);
            edge.registry.set_purge(&s.client_id, purge);
        }
        let will = s.record.will.clone().and_then(|w| {
            let due = w.due(SystemTime::now());
            let m = Message::from_frame(bytes::Bytes::from(w.frame)).ok()?;
            Some((due, m.publish))
        });
        if s.record.online {
            // Its client was connected when the node stopped: from now on it is away, and its
            // will is due after its delay.
            let expiry = s.record.expiry_secs.unwrap_or(u32::MAX);
            let due = s.record.will.clone().map(|mut w| {
                w.due_ms = Some(crate::message::unix_ms(w.due(SystemTime::now())));
                w
            });
            store.put_session(&s.client_id, &state, expiry, false, due);
        }
        if let Some((due, publish)) = will {
            wills.push((s.client_id.clone(), s.key, src, due, publish));
        }
        edge.registry.store_offline(&s.client_id, state);
        sessions += 1;
    }
    // Wills are armed once every session is back: one due now must reach the subscriptions of
    // sessions recovered after its own (they were lost when published mid-recovery).
    for (id, key, src, due, publish) in wills {
        let left = due
            .duration_since(SystemTime::now())
            .unwrap_or(std::time::Duration::ZERO);
        let (edge2, id2) = (edge.clone(), id.clone());
        let timer = tokio::spawn(async move {
            tokio::time::sleep(left).await;
            crate::session::publish_will(&edge2, publish, src).await;
            edge2.sessions.clear_will(&id2, key);
            edge2
                .registry
                .timer_fired(&id2, crate::registry::Timer::Will);
        });
        edge.registry.set_will(&id, timer);
    }
    if sessions > 0 || loaded.expired_sessions > 0 {
        tracing::info!(
            sessions,
            messages,
            expired_sessions = loaded.expired_sessions,
            expired_messages = loaded.expired_messages,
            "persistent sessions recovered"
        );
    }
}
