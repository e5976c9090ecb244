//! How a persistent session and its queued messages look on disk.
//!
//! A session is one JSON record under its client id ([`SessionRecord`]): its key (new for every
//! new session, so records of an ended session are never taken for a later one's), the identity
//! that owns it, its subscriptions with their options and identifiers, and its expiry. A message
//! waiting for it is one binary record under `(session key, node sequence)`
//! ([`encode_delivery`]): its state (queued, sent under a packet id, or — QoS 2 — released),
//! the QoS and retain flag it goes out with, the subscription identifiers it matched, and the
//! message's frame exactly as it crossed the core ([`crate::message`]), so recovery decodes it
//! like the fan-out does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Filter, QoS};
use crate::message::unix_ms;
use crate::session::state::{SessionState, SubOpts};

/// A session as stored under its client id.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's key (`None` in files written before sessions had one).
    #[serde(default)]
    pub key: Option<u64>,
    #[serde(default)]
    pub owner: Option<String>,
    pub subs: Vec<SubRecord>,
    /// When the session expires, in ms since the Unix epoch; `None` while its client is
    /// connected (then `expiry_secs` counts from the restart) or when it never expires.
    pub expires_at_ms: Option<u64>,
    /// The session expiry interval (`None`: never expires).
    #[serde(default)]
    pub expiry_secs: Option<u32>,
    /// The client was connected when this was written.
    #[serde(default)]
    pub online: bool,
    /// The will still to be published, if any.
    #[serde(default)]
    pub will: Option<WillRecord>,
}

/// A will message kept with its session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WillRecord {
    /// The will as a message frame ([`crate::message::Message::frame`]).
    pub frame: Vec<u8>,
    /// The will delay interval, in seconds (already capped by the session expiry).
    pub delay_secs: u32,
    /// When it is due, in ms since the Unix epoch: set once the connection ended; `None`
    /// while it is connected (then due `delay_secs` after the restart).
    pub due_ms: Option<u64>,
}

impl WillRecord {
    /// The will `publish` of client `src`, delayed `delay_secs`, due at `due` if its
    /// connection has ended.
    pub fn new(
        publish: &crate::codec::Publish,
        src: u64,
        delay_secs: u32,
        due: Option<SystemTime>,
    ) -> Option<WillRecord> {
        let frame = crate::message::Message::new(publish.clone(), src)
            .frame(0)
            .ok()?;
        Some(WillRecord {
            frame: frame.to_vec(),
            delay_secs,
            due_ms: due.map(unix_ms),
        })
    }

    /// When it is due, seen from `now`.
    pub fn due(&self, now: SystemTime) -> SystemTime {
        match self.due_ms {
            Some(ms) => UNIX_EPOCH + Duration::from_millis(ms),
            None => now + Duration::from_secs(self.delay_secs as u64),
        }
    }
}

/// A subscription as stored (and, under other names, handed to another node:
/// [`crate::cluster::clients`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct SubRecord {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// MQTT 5 retain handling: 0 send on subscribe, 1 only if new, 2 never.
    pub retain_handling: u8,
    pub id: Option<usize>,
}

impl SubRecord {
    /// The record of the subscription to `path` with options `o`.
    pub fn of(path: &str, o: &SubOpts) -> SubRecord {
        SubRecord {
            filter: path.to_string(),
            qos: o.qos as u8,
            no_local: o.no_local,
            retain_as_published: o.rap,
            retain_handling: codec::retain_handling_code(&o.retain_handling),
            id: o.id,
        }
    }

    /// The subscription's options (`None`: not a QoS).
    pub fn opts(&self) -> Option<SubOpts> {
        Some(SubOpts {
            qos: codec::qos(self.qos)?,
            no_local: self.no_local,
            rap: self.retain_as_published,
            retain_handling: codec::retain_handling(self.retain_handling),
            id: self.id,
        })
    }
}

impl SessionRecord {
    /// The record of `state`; `online` while its client is connected.
    pub fn of(
        state: &SessionState,
        expiry_secs: u32,
        online: bool,
        will: Option<WillRecord>,
    ) -> SessionRecord {
        SessionRecord {
            key: Some(state.key),
            owner: state.owner.clone(),
            subs: state
                .subs
                .iter()
                .map(|(path, o)| SubRecord::of(path, o))
                .collect(),
            expires_at_ms: if online {
                None
            } else {
                state.expires_at.map(unix_ms)
            },
            expiry_secs: (expiry_secs != u32::MAX).then_some(expiry_secs),
            online,
            will,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> anyhow::Result<SessionRecord> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// When the session expires, seen from `now` (a session whose client was connected when
    /// the process ended is taken as disconnected now).
    pub fn expires_at(&self, now: SystemTime) -> Option<SystemTime> {
        match (self.expires_at_ms, self.online, self.expiry_secs) {
            (Some(ms), _, _) => Some(UNIX_EPOCH + Duration::from_millis(ms)),
            (None, true, Some(secs)) => Some(now + Duration::from_secs(secs as u64)),
            _ => None,
        }
    }

    /// The subscriptions as filters with their identifiers.
    pub fn filters(&self) -> anyhow::Result<Vec<(Filter, Option<usize>)>> {
        let mut out = Vec::with_capacity(self.subs.len());
        for s in &self.subs {
            let Some(opts) = s.opts() else {
                bail!("bad QoS {} for {}", s.qos, s.filter);
            };
            out.push((opts.to_filter(&s.filter), s.id));
        }
        Ok(out)
    }
}

/// Where a stored message is in its exchange with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting to be sent (or sent at QoS 1: resent under a new packet id).
    Queued,
    /// QoS 2, sent under this packet id: sent again with DUP under it.
    Sent(u16),
    /// QoS 2, PUBREC received: PUBREL under this packet id is owed; the message itself is gone.
    Released(u16),
}

const FORMAT: u8 = 1;
/// format, state, qos, retain, packet id (2), identifier count.
const HEAD: usize = 7;

/// A delivery record: header, subscription identifiers, then the message's frame.
pub fn encode_delivery(qos: QoS, retain: bool, ids: &[usize], frame: &[u8]) -> Vec<u8> {
    let n = ids.len().min(255);
    let mut v = Vec::with_capacity(HEAD + 4 * n + frame.len());
    v.extend_from_slice(&[FORMAT, 0, qos as u8, retain as u8, 0, 0, n as u8]);
    for id in &ids[..n] {
        v.extend_from_slice(&(*id as u32).to_be_bytes());
    }
    v.extend_from_slice(frame);
    v
}

/// `record` with its state changed (a released message keeps no payload).
pub fn with_state(record: &[u8], state: State) -> Vec<u8> {
    let (code, pkid) = match state {
        State::Queued => (0, 0),
        State::Sent(p) => (1, p),
        State::Released(p) => (2, p),
    };
    let mut v = match state {
        State::Released(_) => record.get(..HEAD).unwrap_or_default().to_vec(),
        _ => record.to_vec(),
    };
    if v.len() < HEAD {
        v.resize(HEAD, 0);
        v[0] = FORMAT;
    }
    v[1] = code;
    v[4..6].copy_from_slice(&pkid.to_be_bytes());
    if matches!(state, State::Released(_)) {
        v[6] = 0;
    }
    v
}

/// A delivery record read back.
pub struct StoredDelivery {
    pub state: State,
    pub qos: QoS,
    pub retain: bool,
    pub ids: Vec<usize>,
    /// The message's frame (empty once released).
    pub frame: Bytes,
}

pub fn decode_delivery(v: &[u8]) -> anyhow::Result<StoredDelivery> {
    ensure!(v.len() >= HEAD && v[0] == FORMAT, "unknown delivery record");
    let pkid = u16::from_be_bytes([v[4], v[5]]);
    let state = match v[1] {
        0 => State::Queued,
        1 => State::Sent(pkid),
        2 => State::Released(pkid),
        s => bail!("unknown delivery state {s}"),
    };
    let Some(qos) = codec::qos(v[2]) else {
        bail!("bad QoS {}", v[2]);
    };
    let n = v[6] as usize;
    ensure!(v.len() >= HEAD + 4 * n, "short delivery record");
    let ids = (0..n)
        .map(|i| {
            let at = HEAD + 4 * i;
            u32::from_be_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]) as usize
        })
        .collect();
    Ok(StoredDelivery {
        state,
        qos,
        retain: v[3] != 0,
        ids,
        frame: Bytes::copy_from_slice(&v[HEAD + 4 * n..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_records_round_trip() {
        let r = encode_delivery(QoS::ExactlyOnce, true, &[3, 70000], b"frame");
        let d = decode_delivery(&r).unwrap();
        assert_eq!(d.state, State::Queued);
        assert_eq!(d.qos, QoS::ExactlyOnce);
        assert!(d.retain);
        assert_eq!(d.ids, vec![3, 70000]);
        assert_eq!(&d.frame[..], b"frame");
        let s = decode_delivery(&with_state(&r, State::Sent(9))).unwrap();
        assert_eq!(s.state, State::Sent(9));
        assert_eq!(&s.frame[..], b"frame");
        let rel = decode_delivery(&with_state(&r, State::Released(9))).unwrap();
        assert_eq!(rel.state, State::Released(9));
        assert!(rel.frame.is_empty() && rel.ids.is_empty());
        assert!(decode_delivery(b"\x01\x07").is_err());
    }
}
